/* chordlab_simd.h: the public C interface of the SIMD attention kernels (step 4).
 *
 * One baseline path (scalar) plus one file per ISA (isa_avx2.c, isa_avx512.c, isa_neon.c), each compiled
 * with its own target attributes. dispatch.c detects the CPU once and picks the best path; every path can
 * be forced by name so tests and notebooks can compare them.
 *
 * Python reaches this through cffi (csrc/build_ffi.py); the C test driver (csrc/test_driver.c) uses it
 * directly, for the sanitizer build and for NEON under qemu.
 */
#ifndef CHORDLAB_SIMD_H
#define CHORDLAB_SIMD_H

#include <stddef.h>
#include <stdint.h>

/* mask_kind */
#define CL_MASK_NONE 0
#define CL_MASK_BOOL 1     /* uint8: nonzero = attend */
#define CL_MASK_ADDITIVE 2 /* float32 added to the scores; -inf hides */

/* half_path */
#define CL_HALF_AUTO 0
#define CL_HALF_CONVERT 1
#define CL_HALF_DOT 2

/* algorithm */
#define CL_ALGO_BLOCKED 0 /* query tiles x key tiles through register-blocked micro-kernels */
#define CL_ALGO_ROWWISE 1 /* the seed's design: per query row, one dot product per key and an axpy */

/* return codes */
#define CL_OK 0
#define CL_ERR_ISA -1      /* the requested ISA is not compiled in or the CPU lacks it */
#define CL_ERR_ARGS -2     /* a size or block size out of range */
#define CL_ERR_NOMEM -3    /* scratch allocation failed */

typedef struct {
    const float *q;   /* [B, Hq, Lq, D]  C-contiguous */
    const float *k;   /* [B, Hkv, Lk, D] */
    const float *v;   /* [B, Hkv, Lk, D] */
    float *out;       /* [B, Hq, Lq, D]  written */
    float *lse;       /* [B, Hq, Lq]     written (natural log; -inf for a row with no visible key) */
    int64_t batch, heads_q, heads_kv, len_q, len_k, head_dim;
    float scale;
    int causal;       /* key j visible to query i iff j <= i + (len_k - len_q) */
    int mask_kind;
    const void *mask; /* element [b, h, i, j] at b*mask_sb + h*mask_sh + i*mask_si + j*mask_sj (0 = broadcast) */
    int64_t mask_sb, mask_sh, mask_si, mask_sj;
    int block_q, block_k;
    int threads;      /* <= 0: one per available core */
    int algorithm;    /* CL_ALGO_BLOCKED (the micro-kernels) or CL_ALGO_ROWWISE (the seed's design) */
    int dtype;        /* the element type of q, k and v (forward): CL_KV_F32 (0), CL_KV_F16 or CL_KV_BF16 (chapter 12:
                         converted to float32 as the tiles are loaded; the backward takes float32 only) */
    int half_path;    /* 16-bit inputs: CL_HALF_AUTO (the fastest this CPU has), CL_HALF_CONVERT (float32 products of
                         converted tiles, every ISA) or CL_HALF_DOT (bfloat16 products by AVX512-BF16's vdpbf16ps:
                         bfloat16, even head dim, isa avx512 and a CPU with AVX512_BF16, else CL_ERR_ISA / CL_ERR_ARGS) */
    /* chapter 11's variants (a zeroed struct has none of them) */
    int window;       /* 1: key j visible to query i iff i + off - window_left <= j <= i + off + window_right,
                         off = len_k - len_q; a side < 0 is unbounded (causal still applies: right <= 0) */
    int64_t window_left, window_right;
    const float *alibi; /* NULL, or the slopes: -alibi[b * alibi_sb + h] * |i + off - j| is added to the score */
    int64_t alibi_sb;
    float softcap;    /* > 0: the scaled score s becomes softcap * tanh(s / softcap), before bias and masks */
    /* block mask (block_q x block_k tiles, the kernel's own): kinds 0 empty (never visited), 1 full (no mask),
       2 partial (bm_tiles[bm_index[..]], [block_q][block_k], 1 = attend). Tile (qt, kt) of (b, h) at
       b * bm_sb + h * bm_sh + qt * n_kt + kt (strides 0 = broadcast); NULL: no block mask. */
    const uint8_t *bm_kinds;
    const int32_t *bm_index;
    const uint8_t *bm_tiles;
    int64_t bm_sb, bm_sh;
    /* written by the call: the bytes of scratch it allocated (all threads), and the visibility bounds it used
       (window and causal together: query i sees keys i + vis_lo .. i + vis_hi) */
    int64_t scratch_bytes;
    int64_t vis_lo, vis_hi;
} cl_attention_args;

/* ISA names, in order of preference on their architecture: "avx512", "avx2", "neon", "scalar". */
int cl_isa_count(void);
const char *cl_isa_name(int isa);
int cl_isa_compiled(int isa);   /* the code for it is in this build */
int cl_isa_supported(int isa);  /* compiled in and the CPU has the instructions */
int cl_isa_best(void);          /* detected once at load */
int cl_isa_lookup(const char *name); /* -1 if unknown */
int cl_default_threads(void);
int cl_bf16_dot_supported(void); /* the AVX512-BF16 dot-product path is compiled in and this CPU runs it */

/* Bytes of scratch one thread uses for these sizes (the backend's memory prediction uses it). */
int64_t cl_scratch_bytes_per_thread(int isa, int64_t head_dim, int block_q, int block_k);

/* The FlashAttention forward. Returns CL_OK or a CL_ERR_* code. */
int cl_attention(int isa, cl_attention_args *args);

/* The backward pass (FlashAttention-2's, chapter 9). args are the forward's, with args->lse read (the
 * forward's lse); args->out is not used. Deterministic: a first pass over (batch, kv head, key tile) owns each
 * tile's dK and dV, a second over (batch, query head, query tile) owns each tile's dQ, so no two threads add
 * into the same number and results are bit-identical for any thread count (no atomics). */
typedef struct {
    const float *dout; /* [B, Hq, Lq, D] the gradient of the output */
    const float *drow; /* [B, Hq, Lq]    D = rowsum(dout * out), computed by the caller */
    float *dq;         /* [B, Hq, Lq, D]  written */
    float *dk, *dv;    /* [B, Hkv, Lk, D] written */
} cl_backward_args;
int cl_attention_backward(int isa, cl_attention_args *args, const cl_backward_args *grads);

/* Decode (chapter 10): a few new queries per sequence against its KV cache, split-KV (Flash-Decoding). The cached
 * keys of sequence b are 0 .. lengths[b]; query i of Lq sees key j iff j <= i + lengths[b] - Lq (causal, bottom-right)
 * and the window allows it. Work items are (sequence, kv head, split): the visible keys are cut into `splits` equal
 * ranges computed independently (all query heads of a kv head together, so each K/V row is read once) and merged by
 * their log-sum-exp, so a single sequence with few heads still uses every core. Deterministic for any threads. */
#define CL_KV_F32 0
#define CL_KV_F16 1  /* IEEE half, converted on load (F16C, AVX-512F, NEON, or bit operations) */
#define CL_KV_BF16 2 /* bfloat16, converted on load by a 16-bit shift (exactly what AVX512-BF16's vcvtpbh2ps does) */
typedef struct {
    const float *q;          /* [B, Hq, Lq, D] */
    float *out, *lse;        /* [B, Hq, Lq, D], [B, Hq, Lq] written */
    const void *k, *v;       /* contiguous: [B, Hkv, capacity, D]; paged: pages [Hkv, num_pages, page_size, D] */
    int kv_dtype;
    const int64_t *lengths;  /* [B] cached keys per sequence (>= Lq) */
    const int32_t *block_table; /* paged: [B, pages_per_seq] page ids; NULL: contiguous */
    int64_t pages_per_seq, page_size, num_pages, capacity;
    int64_t batch, heads_q, heads_kv, len_q, head_dim;
    float scale;
    int window;              /* as in cl_attention_args, relative to each sequence's own length */
    int64_t window_left, window_right;
    const float *alibi;      /* NULL or slopes, (b, h) at b * alibi_sb + h */
    int64_t alibi_sb;
    float softcap;
    int splits;              /* >= 1 */
    int threads;             /* <= 0: one per available core */
    int64_t scratch_bytes;   /* written */
} cl_decode_args;
int cl_decode(int isa, cl_decode_args *args);

/* Read bandwidth (STREAM-like): `threads` threads sum their slices of a `bytes` buffer, best of `rounds`; GB/s. */
double cl_read_bandwidth(int isa, int64_t bytes, int threads, int rounds);
/* The probe's read once over a caller's buffer: `threads` threads sum their slices of x[0 .. n); Σ x (timed by the
 * caller, so that benchmarks can interleave it with the kernels it is the limit of). NaN on bad arguments. */
double cl_read_sum(int isa, const float *x, int64_t n, int threads);

/* Primitives, per ISA (the seed's dot and weighted add, and the pieces of the softmax). */
float cl_dot(int isa, const float *a, const float *b, int64_t n);
void cl_axpy(int isa, float alpha, const float *x, float *y, int64_t n); /* y += alpha * x */
void cl_scale(int isa, float *x, float alpha, int64_t n);               /* x *= alpha */
float cl_max(int isa, const float *x, int64_t n);                       /* -inf for n == 0 */
void cl_exp(int isa, const float *x, float *y, int64_t n);              /* y = e^x */
void cl_exp2(int isa, const float *x, float *y, int64_t n);             /* y = 2^x, for x <= 0 (the softmax's) */

/* Micro-benchmark of one primitive, timed in C (no Python call overhead): nanoseconds per call, median of
 * `rounds` rounds of `iters` calls on length-n data. op: 0 dot, 1 axpy, 2 exp. Negative on error. */
double cl_time_primitive(int isa, int op, int64_t n, int64_t iters, int rounds);

/* Optional hook told about scratch allocations (Python uses it to report them to tracemalloc). */
typedef void (*cl_alloc_hook)(void *ptr, size_t size, int is_free);
void cl_set_alloc_hook(cl_alloc_hook hook);

#endif
