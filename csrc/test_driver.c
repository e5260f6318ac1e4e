/* test_driver.c: run the C kernels on cases written by the Python tests, outside Python.
 *
 * Used for (1) the AddressSanitizer + UndefinedBehaviorSanitizer build and (2) the aarch64 (NEON) build run
 * under qemu-aarch64. The tests write each case, this program computes it, the tests compare the output with
 * the NumPy reference (tests/test_simd_native.py).
 *
 *   test_driver --isas                 print "name compiled supported" per ISA, then the detected best
 *   test_driver CASE OUT half-f16|half-bf16|half-bf16dot   the forward on q, k, v rounded to float16 or
 *                                      bfloat16 (converted tiles, or AVX512-BF16 dot products), out and lse as below
 *   test_driver CASE OUT [rowwise]     compute CASE (blocked, or the seed's rowwise algorithm), write out
 *                                      [B,Hq,Lq,D] then lse [B,Hq,Lq] (float32) to OUT
 *   test_driver CASE OUT backward      the forward, then the backward for the dO that follows the case's mask:
 *                                      write dq [B,Hq,Lq,D], dk and dv [B,Hkv,Lk,D] (float32) to OUT
 *   test_driver --primitives ISA       self-check dot/axpy/scale/max/exp/exp2 over lengths 0..67 (prints "ok")
 *   test_driver --decode CASE OUT      decode (chapter 10) over a KV cache: write out [B,Hq,Lq,D], lse [B,Hq,Lq]
 *
 * CASE: one text line "chordlab-case B Hq Hkv Lq Lk D causal mask_kind mb mh mq mk block_q block_k threads
 * scale isa [window left right softcap slope doc]", then q, k, v as float32 and the [mb, mh, mq, mk] mask (uint8 or
 * float32) if mask_kind != 0. The optional variants (chapter 11): a window (flag, sides, -1 = unbounded), a softcap
 * (0: none), one ALiBi slope for every head (0: none) and a block mask of documents of `doc` keys (0: none), built
 * here for the kernel's own tiles: query i sees key j iff (i + Lk - Lq) / doc == j / doc.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chordlab_simd.h"

static int read_all(FILE *f, void *dst, size_t bytes) { return fread(dst, 1, bytes, f) == bytes; }

/* float32 to float16 or bfloat16 bits, round to nearest even (finite inputs) */
static uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
static uint16_t to_f16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t sign = (u >> 16) & 0x8000;
    const int exp = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) { /* subnormal half */
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        const int shift = 14 - exp;
        uint32_t h = man >> shift;
        const uint32_t rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13);
    const uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static uint16_t *to_half(const float *x, size_t n, int bf16) {
    uint16_t *h = malloc(n * 2);
    if (h) for (size_t i = 0; i < n; i++) h[i] = bf16 ? to_bf16(x[i]) : to_f16(x[i]);
    return h;
}

static int primitives(const char *isa_name) {
    const int isa = cl_isa_lookup(isa_name);
    if (isa < 0 || !cl_isa_supported(isa)) { fprintf(stderr, "isa %s not supported\n", isa_name); return 2; }
    float a[67], b[67], y[67], e[67];
    for (int n = 0; n <= 67; n++) {
        double dot = 0;
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) {
            a[i] = (float)((i * 37 % 17) - 8) / 4.0f;
            b[i] = (float)((i * 11 % 13) - 6) / 3.0f;
            y[i] = b[i];
            dot += (double)a[i] * b[i];
            if (a[i] > mx) mx = a[i];
        }
        if (fabs(cl_dot(isa, a, b, n) - dot) > 1e-4 * (1 + fabs(dot))) { fprintf(stderr, "dot n=%d\n", n); return 1; }
        cl_axpy(isa, 0.5f, a, y, n);
        for (int i = 0; i < n; i++)
            if (fabsf(y[i] - (b[i] + 0.5f * a[i])) > 1e-6f) { fprintf(stderr, "axpy n=%d\n", n); return 1; }
        cl_scale(isa, y, 2.0f, n);
        if (cl_max(isa, a, n) != mx) { fprintf(stderr, "max n=%d\n", n); return 1; }
        cl_exp(isa, a, e, n);
        for (int i = 0; i < n; i++)
            if (fabs(e[i] - exp((double)a[i])) > 1e-6 * exp((double)a[i])) { fprintf(stderr, "exp n=%d\n", n); return 1; }
        for (int i = 0; i < n; i++) a[i] = -fabsf(a[i]) * 40.0f; /* the softmax's 2^x: x <= 0 */
        cl_exp2(isa, a, e, n);
        for (int i = 0; i < n; i++)
            if (fabs(e[i] - exp2((double)a[i])) > 3e-7 * exp2((double)a[i])) { fprintf(stderr, "exp2 n=%d\n", n); return 1; }
    }
    printf("ok\n");
    return 0;
}

/* DECODE CASE: "chordlab-decode B Hq Hkv Lq D kv_dtype pages(0: contiguous) page_size pages_per_seq capacity
 * splits threads window left right softcap slope isa", then lengths [B] int64, the block table [B, pages_per_seq]
 * int32 (paged), q [B,Hq,Lq,D] float32, then k and v as the cache stores them. */
static int decode_case(const char *path, const char *out_path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 2; }
    long long B, Hq, Hkv, Lq, D, pages, page_size, pps, capacity, left, right;
    int dtype, splits, threads, window;
    float softcap, slope;
    char isa_name[32];
    if (fscanf(f, "chordlab-decode %lld %lld %lld %lld %lld %d %lld %lld %lld %lld %d %d %d %lld %lld %f %f %31s",
               &B, &Hq, &Hkv, &Lq, &D, &dtype, &pages, &page_size, &pps, &capacity, &splits, &threads, &window,
               &left, &right, &softcap, &slope, isa_name) != 18 || fgetc(f) != '\n') {
        fprintf(stderr, "bad decode header\n");
        return 2;
    }
    const size_t esize = dtype == CL_KV_F32 ? 4 : 2;
    const size_t kv_items = (size_t)(pages ? pages * Hkv * page_size * D : B * Hkv * capacity * D);
    const size_t nq = (size_t)(B * Hq * Lq * D), rows = (size_t)(B * Hq * Lq);
    int64_t *lengths = malloc((size_t)B * 8);
    int32_t *table = pages ? malloc((size_t)(B * pps) * 4) : NULL;
    float *q = malloc(nq * 4), *out = malloc(nq * 4), *lse = malloc(rows * 4), *slopes = malloc((size_t)(B * Hq) * 4);
    void *k = malloc(kv_items * esize), *v = malloc(kv_items * esize);
    if (!lengths || (pages && !table) || !q || !out || !lse || !slopes || !k || !v) return 3;
    if (!read_all(f, lengths, (size_t)B * 8) || (pages && !read_all(f, table, (size_t)(B * pps) * 4)) ||
        !read_all(f, q, nq * 4) || !read_all(f, k, kv_items * esize) || !read_all(f, v, kv_items * esize)) {
        fprintf(stderr, "short decode case\n");
        return 2;
    }
    fclose(f);
    for (long long x = 0; x < B * Hq; x++) slopes[x] = slope;
    cl_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = q; a.out = out; a.lse = lse; a.k = k; a.v = v; a.kv_dtype = dtype; a.lengths = lengths;
    a.block_table = table; a.pages_per_seq = pps; a.page_size = page_size; a.num_pages = pages; a.capacity = capacity;
    a.batch = B; a.heads_q = Hq; a.heads_kv = Hkv; a.len_q = Lq; a.head_dim = D;
    a.scale = 1.0f / sqrtf((float)D); a.splits = splits; a.threads = threads;
    a.window = window; a.window_left = left; a.window_right = right; a.softcap = softcap;
    if (slope != 0.0f) { a.alibi = slopes; a.alibi_sb = Hq; }
    const int isa = strcmp(isa_name, "best") == 0 ? cl_isa_best() : cl_isa_lookup(isa_name);
    const int rc = cl_decode(isa, &a);
    if (rc != CL_OK) { fprintf(stderr, "cl_decode failed: %d\n", rc); return 4; }
    FILE *o = fopen(out_path, "wb");
    if (!o || fwrite(out, 4, nq, o) != nq || fwrite(lse, 4, rows, o) != rows) return 5;
    fclose(o);
    free(lengths); free(table); free(q); free(out); free(lse); free(slopes); free(k); free(v);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--isas") == 0) {
        for (int i = 0; i < cl_isa_count(); i++)
            printf("%s %d %d\n", cl_isa_name(i), cl_isa_compiled(i), cl_isa_supported(i));
        printf("best %s\n", cl_isa_name(cl_isa_best()));
        printf("bf16dot %d\n", cl_bf16_dot_supported());
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--primitives") == 0) return primitives(argv[2]);
    if (argc == 4 && strcmp(argv[1], "--decode") == 0) return decode_case(argv[2], argv[3]);
    const int backward = argc == 4 && strcmp(argv[3], "backward") == 0;
    const int half = argc == 4 && strncmp(argv[3], "half-", 5) == 0;
    if (argc != 3 && !(argc == 4 && (strcmp(argv[3], "rowwise") == 0 || backward || half))) {
        fprintf(stderr, "usage: %s CASE OUT [rowwise|backward] | --isas | --primitives ISA\n", argv[0]);
        return 2;
    }

    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    long long B, Hq, Hkv, Lq, Lk, D, mb, mh, mq, mk;
    int causal, mask_kind, bq, bk, threads;
    float scale;
    char isa_name[32];
    int window = 0;
    long long left = -1, right = -1, doc = 0;
    float softcap = 0.0f, slope = 0.0f;
    if (fscanf(f, "chordlab-case %lld %lld %lld %lld %lld %lld %d %d %lld %lld %lld %lld %d %d %d %f %31s", &B, &Hq,
               &Hkv, &Lq, &Lk, &D, &causal, &mask_kind, &mb, &mh, &mq, &mk, &bq, &bk, &threads, &scale, isa_name) != 17) {
        fprintf(stderr, "bad case header\n");
        return 2;
    }
    int c = fgetc(f);
    if (c == ' ') {
        if (fscanf(f, "%d %lld %lld %f %f %lld", &window, &left, &right, &softcap, &slope, &doc) != 6) {
            fprintf(stderr, "bad variants in the case header\n");
            return 2;
        }
        c = fgetc(f);
    }
    if (c != '\n') {
        fprintf(stderr, "bad case header\n");
        return 2;
    }
    const size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D), nm = (size_t)(mb * mh * mq * mk);
    const size_t mask_item = mask_kind == CL_MASK_BOOL ? 1 : 4;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    void *mask = mask_kind ? malloc(nm * mask_item) : NULL;
    float *out = malloc(nq * 4), *lse = malloc((size_t)(B * Hq * Lq) * 4);
    if (!q || !k || !v || !out || !lse || (mask_kind && !mask)) return 3;
    float *dout = backward ? malloc(nq * 4) : NULL;
    if (backward && !dout) return 3;
    if (!read_all(f, q, nq * 4) || !read_all(f, k, nk * 4) || !read_all(f, v, nk * 4) ||
        (mask_kind && !read_all(f, mask, nm * mask_item)) || (backward && !read_all(f, dout, nq * 4))) {
        fprintf(stderr, "short case file\n");
        return 2;
    }
    fclose(f);

    cl_attention_args a;
    memset(&a, 0, sizeof a);
    a.q = q; a.k = k; a.v = v; a.out = out; a.lse = lse;
    a.batch = B; a.heads_q = Hq; a.heads_kv = Hkv; a.len_q = Lq; a.len_k = Lk; a.head_dim = D;
    a.scale = scale; a.causal = causal; a.mask_kind = mask_kind; a.mask = mask;
    a.mask_sb = mb > 1 ? mh * mq * mk : 0;
    a.mask_sh = mh > 1 ? mq * mk : 0;
    a.mask_si = mq > 1 ? mk : 0;
    a.mask_sj = mk > 1 ? 1 : 0;
    a.block_q = bq; a.block_k = bk; a.threads = threads;
    a.algorithm = argc == 4 && !backward && !half ? CL_ALGO_ROWWISE : CL_ALGO_BLOCKED;
    uint16_t *hq = NULL, *hk = NULL, *hv = NULL;
    if (half) { /* the inputs rounded to 16 bits, the kernel given them as they are */
        const int bf16 = strncmp(argv[3], "half-bf16", 9) == 0;
        hq = to_half(q, nq, bf16);
        hk = to_half(k, nk, bf16);
        hv = to_half(v, nk, bf16);
        if (!hq || !hk || !hv) return 3;
        a.q = (const float *)hq; a.k = (const float *)hk; a.v = (const float *)hv;
        a.dtype = bf16 ? CL_KV_BF16 : CL_KV_F16;
        a.half_path = strcmp(argv[3], "half-bf16dot") == 0 ? CL_HALF_DOT : CL_HALF_CONVERT;
    }
    a.window = window; a.window_left = left; a.window_right = right; a.softcap = softcap;
    float *slopes = malloc((size_t)(B * Hq) * 4);
    if (!slopes) return 3;
    for (long long x = 0; x < B * Hq; x++) slopes[x] = slope;
    if (slope != 0.0f) { a.alibi = slopes; a.alibi_sb = Hq; }
    const long long n_qt = (Lq + bq - 1) / bq, n_kt = (Lk + bk - 1) / bk;
    uint8_t *kinds = malloc((size_t)(n_qt * n_kt)), *tiles = calloc((size_t)(n_qt * n_kt * bq * bk), 1);
    int32_t *index = malloc((size_t)(n_qt * n_kt) * 4);
    if (!kinds || !tiles || !index) return 3;
    if (doc > 0) { /* the documents' block mask: kinds per tile, the partial tiles' masks */
        int32_t n_partial = 0;
        for (long long qt = 0; qt < n_qt; qt++)
            for (long long kt = 0; kt < n_kt; kt++) {
                long long seen = 0, valid = 0;
                uint8_t *tile = tiles + (size_t)n_partial * bq * bk;
                for (long long i = qt * bq; i < (qt + 1) * bq && i < Lq; i++)
                    for (long long j = kt * bk; j < (kt + 1) * bk && j < Lk; j++) {
                        const int see = (i + Lk - Lq) / doc == j / doc;
                        tile[(i - qt * bq) * bk + (j - kt * bk)] = (uint8_t)see;
                        seen += see;
                        valid++;
                    }
                const long long at = qt * n_kt + kt;
                kinds[at] = seen == 0 ? 0 : seen == valid ? 1 : 2;
                index[at] = kinds[at] == 2 ? n_partial++ : -1;
                if (kinds[at] != 2) memset(tile, 0, (size_t)(bq * bk));
            }
        a.bm_kinds = kinds; a.bm_index = index; a.bm_tiles = tiles;
    }
    const int isa = strcmp(isa_name, "best") == 0 ? cl_isa_best() : cl_isa_lookup(isa_name);
    const int rc = cl_attention(isa, &a);
    if (rc != CL_OK) { fprintf(stderr, "cl_attention failed: %d\n", rc); return 4; }
    if (backward) {
        const size_t rows = (size_t)(B * Hq * Lq);
        float *drow = malloc(rows * 4), *dq = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4);
        if (!drow || !dq || !dk || !dv) return 3;
        for (size_t r = 0; r < rows; r++) {
            double sum = 0;
            for (long long d = 0; d < D; d++) sum += (double)dout[r * D + d] * out[r * D + d];
            drow[r] = (float)sum;
        }
        const cl_backward_args g = {dout, drow, dq, dk, dv};
        const int brc = cl_attention_backward(isa, &a, &g);
        if (brc != CL_OK) { fprintf(stderr, "cl_attention_backward failed: %d\n", brc); return 4; }
        FILE *o = fopen(argv[2], "wb");
        if (!o || fwrite(dq, 4, nq, o) != nq || fwrite(dk, 4, nk, o) != nk || fwrite(dv, 4, nk, o) != nk) return 5;
        fclose(o);
        free(drow); free(dq); free(dk); free(dv); free(dout);
        free(q); free(k); free(v); free(mask); free(out); free(lse); free(slopes); free(kinds); free(tiles); free(index);
        return 0;
    }

    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, nq, o) != nq || fwrite(lse, 4, (size_t)(B * Hq * Lq), o) != (size_t)(B * Hq * Lq)) return 5;
    fclose(o);
    free(q); free(k); free(v); free(mask); free(out); free(lse); free(slopes); free(kinds); free(tiles); free(index);
    free(hq); free(hk); free(hv);
    return 0;
}
