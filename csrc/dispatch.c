/* dispatch.c: pick an ISA once, check arguments, run the work items on threads.
 *
 * Like NumPy's SIMD dispatch: the baseline (scalar) path is always there, each ISA-specific path is compiled
 * in its own file with its own target flags, the CPU is asked once which it can run, and any path can be
 * forced by name (cl_isa_lookup + the isa argument) so tests and notebooks can compare them.
 *
 * Threads: POSIX threads over the work items (batch x query head x query tile), handed out through an atomic
 * counter. Each item is computed by one thread from start to end, so results do not depend on the count.
 * POSIX threads rather than OpenMP: they exist wherever the kernels build (macOS's clang ships no OpenMP
 * runtime), and one mechanism everywhere keeps the thread behaviour the same on every machine.
 * The threads are a persistent pool, created on first use and kept (as OpenMP, OpenVINO and ONNX Runtime
 * keep theirs): a call wakes them instead of creating threads. Idle workers sleep on a condition variable and
 * never spin, so they take no core from whatever runs next. One call uses the pool at a time; a concurrent
 * call (another Python thread: cffi releases the GIL) creates its own threads as before. After fork() the
 * child starts with an empty pool.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "simd_internal.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

static const char *const ISA_NAMES[] = {"avx512", "avx2", "neon", "scalar"};
#define N_ISA 4

static const cl_isa_impl *impl_of(int isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
    case 0: return &cl_impl_avx512;
    case 1: return &cl_impl_avx2;
#endif
#if defined(__aarch64__)
    case 2: return &cl_impl_neon;
#endif
    case 3: return &cl_impl_scalar;
    default: return NULL;
    }
}

int cl_isa_count(void) { return N_ISA; }
const char *cl_isa_name(int isa) { return isa >= 0 && isa < N_ISA ? ISA_NAMES[isa] : "unknown"; }
int cl_isa_compiled(int isa) { return impl_of(isa) != NULL; }

int cl_isa_lookup(const char *name) {
    for (int i = 0; i < N_ISA; i++)
        if (name && strcmp(name, ISA_NAMES[i]) == 0) return i;
    return -1;
}

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* F16C (the avx2 path's float16 loads): CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports lacks "f16c"). */
static int has_f16c(void) {
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx >> 29 & 1);
}
#endif

/* x86: AVX512_BF16, CPUID leaf 7, subleaf 1, EAX bit 5 (with AVX-512F, whose OS support the builtin checks).
 * aarch64: the BF16 extension (Linux: HWCAP2_BF16; macOS: hw.optional.arm.FEAT_BF16), and a BFDOT kernel built. */
int cl_bf16_dot_supported(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax >> 5 & 1);
#elif defined(__aarch64__) && defined(__linux__)
    return cl_neon_bf16_compiled() && (getauxval(AT_HWCAP2) & (1UL << 14)) != 0; /* HWCAP2_BF16 */
#elif defined(__aarch64__) && defined(__APPLE__)
    int has = 0;
    size_t size = sizeof has;
    return cl_neon_bf16_compiled() && sysctlbyname("hw.optional.arm.FEAT_BF16", &has, &size, NULL, 0) == 0 && has;
#else
    return 0;
#endif
}

int cl_isa_supported(int isa) {
    if (!impl_of(isa)) return 0;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    if (isa == 0) return !!__builtin_cpu_supports("avx512f");
    if (isa == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c() ? 1 : 0;
#endif
    return 1;
}

static int best_isa = -1;

int cl_isa_best(void) {
    if (best_isa < 0) {
        int best = 3;
        for (int i = 0; i < N_ISA; i++)
            if (cl_isa_supported(i)) { best = i; break; }
        best_isa = best;
    }
    return best_isa;
}

__attribute__((constructor)) static void detect_at_load(void) { (void)cl_isa_best(); }

int cl_default_threads(void) {
#if defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------------------------ primitives */

#define IMPL_OR_SCALAR(isa) (impl_of(isa) ? impl_of(isa) : &cl_impl_scalar)
float cl_dot(int isa, const float *a, const float *b, int64_t n) { return IMPL_OR_SCALAR(isa)->dot(a, b, n); }
void cl_axpy(int isa, float alpha, const float *x, float *y, int64_t n) { IMPL_OR_SCALAR(isa)->axpy(alpha, x, y, n); }
void cl_scale(int isa, float *x, float alpha, int64_t n) { IMPL_OR_SCALAR(isa)->scale(x, alpha, n); }
float cl_max(int isa, const float *x, int64_t n) { return IMPL_OR_SCALAR(isa)->max(x, n); }
void cl_exp(int isa, const float *x, float *y, int64_t n) { IMPL_OR_SCALAR(isa)->exp(x, y, n); }
void cl_exp2(int isa, const float *x, float *y, int64_t n) { IMPL_OR_SCALAR(isa)->exp2(x, y, n); }

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cl_time_primitive(int isa, int op, int64_t n, int64_t iters, int rounds) {
    if (!cl_isa_supported(isa) || n < 1 || iters < 1 || rounds < 1 || rounds > 1000 || op < 0 || op > 2) return -1;
    const cl_isa_impl *impl = impl_of(isa);
    float *a = (float *)malloc((size_t)n * sizeof(float)), *b = (float *)malloc((size_t)n * sizeof(float));
    double *times = (double *)malloc((size_t)rounds * sizeof(double));
    if (!a || !b || !times) { free(a); free(b); free(times); return -1; }
    for (int64_t i = 0; i < n; i++) { a[i] = (float)(i % 7) * 0.125f - 0.3f; b[i] = (float)(i % 5) * 0.25f - 0.5f; }
    volatile float sink = 0.0f;
    for (int r = 0; r < rounds; r++) {
        const double t0 = now_ns();
        for (int64_t it = 0; it < iters; it++) {
            if (op == 0) sink += impl->dot(a, b, n);
            else if (op == 1) impl->axpy(1e-9f, a, b, n);
            else impl->exp(a, b, n);
        }
        times[r] = (now_ns() - t0) / (double)iters;
    }
    qsort(times, (size_t)rounds, sizeof(double), cmp_double);
    const double median = times[rounds / 2];
    free(a); free(b); free(times);
    (void)sink;
    return median;
}

/* ------------------------------------------------------------------ scratch */

static cl_alloc_hook alloc_hook = NULL;
void cl_set_alloc_hook(cl_alloc_hook hook) { alloc_hook = hook; }

#define ALIGN_FLOATS 16 /* 64 bytes */

typedef struct { int64_t qt, st, acc, vpad, kconv, vec3; } scratch_layout; /* sizes in floats */

static scratch_layout layout_for(int lanes, int64_t D, int block_q, int block_k) {
    const int64_t ldq = cl_round_up(block_q, lanes), dp = cl_round_up(D, lanes);
    scratch_layout s;
    s.qt = cl_round_up(D * ldq, ALIGN_FLOATS);
    s.st = cl_round_up((int64_t)block_k * ldq, ALIGN_FLOATS);
    s.acc = cl_round_up((int64_t)block_q * dp, ALIGN_FLOATS);
    s.vpad = cl_round_up((int64_t)block_k * dp, ALIGN_FLOATS);   /* padded or converted V tiles */
    s.kconv = cl_round_up((int64_t)block_k * D, ALIGN_FLOATS);   /* converted K tiles (16-bit inputs) */
    s.vec3 = cl_round_up(ldq, ALIGN_FLOATS);
    return s;
}

static int64_t layout_floats(scratch_layout s) { return s.qt + s.st + s.acc + s.vpad + s.kconv + 3 * s.vec3; }

int64_t cl_scratch_bytes_per_thread(int isa, int64_t head_dim, int block_q, int block_k) {
    const cl_isa_impl *impl = IMPL_OR_SCALAR(isa);
    return layout_floats(layout_for(impl->lanes, head_dim, block_q, block_k)) * (int64_t)sizeof(float);
}

static cl_scratch carve(float *base, scratch_layout s) {
    cl_scratch out;
    out.qt = base;
    out.st = out.qt + s.qt;
    out.acc = out.st + s.st;
    out.vpad = out.acc + s.acc;
    out.kconv = out.vpad + s.vpad;
    out.m = out.kconv + s.kconv;
    out.l = out.m + s.vec3;
    out.alpha = out.l + s.vec3;
    return out;
}

/* ------------------------------------------------------------------ threads */

enum { JOB_FORWARD, JOB_FORWARD_BF16DOT, JOB_BACKWARD_DKV, JOB_BACKWARD_DQ, JOB_DECODE, JOB_READ };

typedef struct {
    const cl_attention_args *args;
    const cl_isa_impl *impl;
    int64_t n_items;
    int64_t next; /* atomic */
    int kind;
    const cl_backward_args *grads;
    const cl_decode_args *dargs; /* JOB_DECODE: its arguments and the splits' partial results */
    float *part;
    const float *buf;            /* JOB_READ: item i sums buf[i * slice ..], into sums[i] */
    int64_t slice, total;
    double *sums;
} job_t;

typedef struct {
    job_t *job;
    cl_scratch scratch;
    cl_bscratch bscratch;
    float *dscratch;
    pthread_t tid; /* when the pool is busy: the thread of its own that runs this worker */
} worker_t;

static void *work(void *p) {
    worker_t *w = (worker_t *)p;
    const job_t *job = w->job;
    for (;;) {
        const int64_t item = __atomic_fetch_add(&w->job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->n_items) break;
        if (job->kind == JOB_FORWARD_BF16DOT)
            cl_attention_item_bf16dot(job->args, item, &w->scratch);
        else if (job->kind == JOB_DECODE)
            job->impl->decode_item(job->dargs, item, w->dscratch, job->part);
        else if (job->kind == JOB_READ) {
            const int64_t start = item * job->slice;
            const int64_t n = start + job->slice < job->total ? job->slice : job->total - start;
            job->sums[item] = job->impl->sum(job->buf + start, n);
        } else if (job->kind == JOB_BACKWARD_DKV)
            job->impl->backward_dkv_item(job->args, job->grads, item, &w->bscratch);
        else if (job->kind == JOB_BACKWARD_DQ)
            job->impl->backward_dq_item(job->args, job->grads, item, &w->bscratch);
        else if (job->args->algorithm == CL_ALGO_ROWWISE)
            job->impl->attention_item_rowwise(job->args, item, &w->scratch);
        else
            job->impl->attention_item(job->args, item, &w->scratch);
    }
    return NULL;
}

/* The pool. Worker i (1-based; the caller is worker 0) runs workers[i] of a job when i < wanted. */
#define POOL_MAX 256
static struct {
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    int64_t generation; /* bumped for every job */
    int size;           /* pool threads alive */
    int wanted, remaining;
    worker_t *workers;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL};
static pthread_mutex_t pool_in_use = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    int index;
    int64_t seen; /* the generation before the job it was created for */
} pool_arg;

static void *pool_main(void *p) {
    pool_arg arg = *(pool_arg *)p;
    free(p);
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.generation == arg.seen) pthread_cond_wait(&pool.start, &pool.lock);
        arg.seen = pool.generation;
        if (arg.index < pool.wanted) {
            worker_t *w = &pool.workers[arg.index];
            pthread_mutex_unlock(&pool.lock);
            work(w);
            pthread_mutex_lock(&pool.lock);
            if (--pool.remaining == 0) pthread_cond_signal(&pool.done);
        }
    }
    return NULL;
}

static void pool_reset_in_child(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.start, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&pool_in_use, NULL);
    pool.size = pool.wanted = pool.remaining = 0;
    pool.workers = NULL;
}

__attribute__((constructor)) static void pool_at_load(void) { pthread_atfork(NULL, NULL, pool_reset_in_child); }

/* Run workers[0 .. threads) with the pool (the caller is worker 0); 0 when the pool is busy with another call. */
static int run_in_pool(worker_t *workers, int64_t threads) {
    if (pthread_mutex_trylock(&pool_in_use) != 0) return 0;
    pthread_mutex_lock(&pool.lock);
    while (pool.size < threads - 1 && pool.size < POOL_MAX) {
        pool_arg *arg = (pool_arg *)malloc(sizeof *arg);
        pthread_t tid;
        if (!arg) break;
        arg->index = pool.size + 1;
        arg->seen = pool.generation;
        if (pthread_create(&tid, NULL, pool_main, arg) != 0) { free(arg); break; }
        pthread_detach(tid);
        pool.size++;
    }
    const int helpers = (int)(threads - 1 < pool.size ? threads - 1 : pool.size);
    pool.workers = workers;
    pool.wanted = helpers + 1;
    pool.remaining = helpers;
    pool.generation++;
    pthread_cond_broadcast(&pool.start);
    pthread_mutex_unlock(&pool.lock);
    work(&workers[0]); /* the items of any helper that could not be created go to the others */
    pthread_mutex_lock(&pool.lock);
    while (pool.remaining > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pool.workers = NULL;
    pool.wanted = 0;
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool_in_use);
    return 1;
}

/* The same with threads of its own, created for this call (when the pool is busy). */
static void run_with_new_threads(worker_t *workers, int64_t threads) {
    int64_t started = 1;
    for (; started < threads; started++)
        if (pthread_create(&workers[started].tid, NULL, work, &workers[started]) != 0) break;
    work(&workers[0]); /* the calling thread works too, and takes over the items of any thread that failed to start */
    for (int64_t t = 1; t < started; t++) pthread_join(workers[t].tid, NULL);
}

/* Run workers[0 .. n) on the current job: alone, with the pool, or (pool busy) with threads of their own. */
static void run_workers(worker_t *workers, int64_t n) {
    if (n == 1)
        work(&workers[0]);
    else if (!run_in_pool(workers, n))
        run_with_new_threads(workers, n);
}

/* The checks the forward and the backward share: shapes, tiles, inputs. */
static int problem_ok(const cl_attention_args *a) {
    return a->batch >= 1 && a->heads_q >= 1 && a->heads_kv >= 1 && a->len_q >= 1 && a->len_k >= 1 &&
           a->head_dim >= 1 && a->heads_q % a->heads_kv == 0 && a->block_q >= 1 && a->block_k >= 1 &&
           a->block_q <= (1 << 20) && a->block_k <= (1 << 20) && (a->mask_kind == CL_MASK_NONE || a->mask) &&
           a->q && a->k && a->v && a->lse;
}

/* The window and causal rule as bounds on j - i (written into the args: every kernel reads vis_lo, vis_hi). */
static void set_visibility(cl_attention_args *a) {
    const int64_t off = a->len_k - a->len_q;
    a->vis_lo = a->window && a->window_left >= 0 ? off - a->window_left : -CL_UNBOUNDED;
    a->vis_hi = a->window && a->window_right >= 0 ? off + a->window_right : CL_UNBOUNDED;
    if (a->causal && a->vis_hi > off) a->vis_hi = off;
}

static int variants_ok(const cl_attention_args *a) {
    if (a->softcap < 0.0f || a->softcap != a->softcap) return 0;
    if (a->bm_kinds && (!a->bm_index || !a->bm_tiles)) return 0;
    return 1;
}

static int has_variants(const cl_attention_args *a) {
    return a->window || a->alibi || a->softcap > 0.0f || a->bm_kinds;
}

/* Per-call scratch, reported to the allocation hook (tracemalloc, from Python). */
static float *scratch_alloc(cl_attention_args *a, size_t total) {
    float *base = (float *)aligned_alloc(64, total);
    if (base && alloc_hook) alloc_hook(base, total, 0);
    if (base) a->scratch_bytes = (int64_t)total;
    return base;
}

static void scratch_free(float *base, size_t total) {
    if (alloc_hook) alloc_hook(base, total, 1);
    free(base);
}

int cl_attention(int isa, cl_attention_args *a) {
    if (!cl_isa_supported(isa)) return CL_ERR_ISA;
    if (!problem_ok(a) || !variants_ok(a) || !a->out || a->half_path < CL_HALF_AUTO || a->half_path > CL_HALF_DOT ||
        (a->algorithm != CL_ALGO_BLOCKED && a->algorithm != CL_ALGO_ROWWISE) ||
        (a->algorithm == CL_ALGO_ROWWISE && (has_variants(a) || a->dtype != CL_KV_F32)) || a->dtype < CL_KV_F32 ||
        a->dtype > CL_KV_BF16)
        return CL_ERR_ARGS;
    set_visibility(a);
    const cl_isa_impl *impl = impl_of(isa);
    job_t job = {.args = a, .impl = impl, .n_items = a->batch * a->heads_q * ((a->len_q + a->block_q - 1) / a->block_q),
                 .kind = JOB_FORWARD};
    /* bfloat16 inputs: the dot-product path where it can run (auto), or where it was asked for */
#if defined(__aarch64__)
    const int dot_isa = 2; /* neon */
#else
    const int dot_isa = 0; /* avx512 */
#endif
    const int dot_ok = a->dtype == CL_KV_BF16 && isa == dot_isa && cl_bf16_dot_supported();
    if (a->half_path == CL_HALF_DOT) {
        if (!dot_ok) return CL_ERR_ISA;
        if (a->head_dim % 2 || a->algorithm != CL_ALGO_BLOCKED) return CL_ERR_ARGS;
    }
    if (dot_ok && a->half_path != CL_HALF_CONVERT && a->head_dim % 2 == 0 && a->algorithm == CL_ALGO_BLOCKED)
        job.kind = JOB_FORWARD_BF16DOT;
    int64_t threads = a->threads > 0 ? a->threads : cl_default_threads();
    if (threads > job.n_items) threads = job.n_items;

    const scratch_layout lay = layout_for(impl->lanes, a->head_dim, a->block_q, a->block_k);
    const size_t per_thread = (size_t)layout_floats(lay) * sizeof(float);
    const size_t total = per_thread * (size_t)threads;
    float *base = scratch_alloc(a, total);
    if (!base) return CL_ERR_NOMEM;

    worker_t *workers = (worker_t *)calloc((size_t)threads, sizeof(worker_t));
    int rc = CL_OK;
    if (!workers) {
        rc = CL_ERR_NOMEM;
    } else {
        for (int64_t t = 0; t < threads; t++) {
            workers[t].job = &job;
            workers[t].scratch = carve(base + (size_t)t * (per_thread / sizeof(float)), lay);
        }
        run_workers(workers, threads);
    }
    free(workers);
    scratch_free(base, total);
    return rc;
}

/* ------------------------------------------------------------------ backward */

static int64_t bscratch_floats(int lanes, int64_t D, int block_q, int block_k, int64_t *part) {
    const int64_t ldq = cl_round_up(block_q, lanes), dp = cl_round_up(D, lanes);
    const int64_t wide = ldq > block_k ? ldq : block_k;
    /* each part rounded to 16 floats, so that every region starts 64-byte aligned */
    part[0] = cl_round_up(D * ldq, 16);       /* qt, dot */
    part[1] = cl_round_up(block_k * ldq, 16); /* st, ds, dcap */
    part[2] = cl_round_up(ldq * dp, 16);      /* rows */
    part[3] = cl_round_up(block_k * dp, 16);  /* kpad */
    part[4] = cl_round_up(wide * dp, 16);     /* acc, acc2 */
    part[5] = cl_round_up(wide, 16);          /* lse, drow, ones */
    return 2 * part[0] + 3 * part[1] + part[2] + part[3] + 2 * part[4] + 3 * part[5];
}

static cl_bscratch bcarve(float *base, const int64_t *part, int64_t wide) {
    cl_bscratch s;
    s.qt = base;
    s.dot = s.qt + part[0];
    s.st = s.dot + part[0];
    s.ds = s.st + part[1];
    s.dcap = s.ds + part[1];
    s.rows = s.dcap + part[1];
    s.kpad = s.rows + part[2];
    s.acc = s.kpad + part[3];
    s.acc2 = s.acc + part[4];
    s.lse = s.acc2 + part[4];
    s.drow = s.lse + part[5];
    s.ones = s.drow + part[5];
    for (int64_t i = 0; i < wide; i++) s.ones[i] = 1.0f;
    return s;
}

int cl_attention_backward(int isa, cl_attention_args *a, const cl_backward_args *g) {
    if (!cl_isa_supported(isa)) return CL_ERR_ISA;
    if (!problem_ok(a) || !variants_ok(a) || a->dtype != CL_KV_F32 || !g || !g->dout || !g->drow || !g->dq || !g->dk ||
        !g->dv)
        return CL_ERR_ARGS;
    set_visibility(a);
    const cl_isa_impl *impl = impl_of(isa);
    const int64_t n_kt = (a->len_k + a->block_k - 1) / a->block_k, n_qt = (a->len_q + a->block_q - 1) / a->block_q;
    job_t jobs[2] = {{.args = a, .impl = impl, .n_items = a->batch * a->heads_kv * n_kt, .kind = JOB_BACKWARD_DKV,
                      .grads = g},
                     {.args = a, .impl = impl, .n_items = a->batch * a->heads_q * n_qt, .kind = JOB_BACKWARD_DQ,
                      .grads = g}};
    int64_t threads = a->threads > 0 ? a->threads : cl_default_threads();
    const int64_t most = jobs[0].n_items > jobs[1].n_items ? jobs[0].n_items : jobs[1].n_items;
    if (threads > most) threads = most;

    int64_t part[6];
    const int64_t ldq = cl_round_up(a->block_q, impl->lanes);
    const int64_t wide = ldq > a->block_k ? ldq : a->block_k;
    const size_t per_thread = (size_t)bscratch_floats(impl->lanes, a->head_dim, a->block_q, a->block_k, part) *
                              sizeof(float);
    const size_t total = per_thread * (size_t)threads;
    float *base = scratch_alloc(a, total);
    if (!base) return CL_ERR_NOMEM;
    worker_t *workers = (worker_t *)calloc((size_t)threads, sizeof(worker_t));
    int rc = CL_OK;
    if (!workers) {
        rc = CL_ERR_NOMEM;
    } else {
        for (int64_t t = 0; t < threads; t++)
            workers[t].bscratch = bcarve(base + (size_t)t * (per_thread / sizeof(float)), part, wide);
        for (int j = 0; j < 2; j++) { /* pass A (dK, dV), then pass B (dQ) */
            for (int64_t t = 0; t < threads; t++) workers[t].job = &jobs[j];
            run_workers(workers, threads < jobs[j].n_items ? threads : jobs[j].n_items);
        }
    }
    free(workers);
    scratch_free(base, total);
    return rc;
}

/* ------------------------------------------------------------------ decode (chapter 10) */

int cl_decode(int isa, cl_decode_args *a) {
    if (!cl_isa_supported(isa)) return CL_ERR_ISA;
    if (!a || !a->q || !a->out || !a->lse || !a->k || !a->v || !a->lengths || a->batch < 1 || a->heads_q < 1 ||
        a->heads_kv < 1 || a->heads_q % a->heads_kv != 0 || a->len_q < 1 || a->head_dim < 1 || a->splits < 1 ||
        a->kv_dtype < CL_KV_F32 || a->kv_dtype > CL_KV_BF16 || a->softcap < 0.0f || a->softcap != a->softcap)
        return CL_ERR_ARGS;
    for (int64_t b = 0; b < a->batch; b++) {
        const int64_t len = a->lengths[b];
        const int64_t room = a->block_table ? a->pages_per_seq * a->page_size : a->capacity;
        if (len < a->len_q || len > room) return CL_ERR_ARGS;
    }
    if (a->block_table) { /* every page a sequence's keys use must be a page of the pool */
        if (a->page_size < 1 || a->num_pages < 1) return CL_ERR_ARGS;
        for (int64_t b = 0; b < a->batch; b++)
            for (int64_t p = 0; p < (a->lengths[b] + a->page_size - 1) / a->page_size; p++) {
                const int32_t page = a->block_table[b * a->pages_per_seq + p];
                if (page < 0 || page >= a->num_pages) return CL_ERR_ARGS;
            }
    }
    const cl_isa_impl *impl = impl_of(isa);
    const int64_t D = a->head_dim, rows = a->batch * a->heads_q * a->len_q;
    const int64_t R = a->heads_q / a->heads_kv * a->len_q;
    job_t job;
    memset(&job, 0, sizeof job);
    job.impl = impl;
    job.kind = JOB_DECODE;
    job.dargs = a;
    job.n_items = a->batch * a->heads_kv * a->splits;
    int64_t threads = a->threads > 0 ? a->threads : cl_default_threads();
    if (threads > job.n_items) threads = job.n_items;
    const int64_t per_thread = cl_round_up(cl_decode_scratch_floats(impl->lanes, D, R), 16);
    const int64_t part_floats = rows * a->splits * (D + 2);
    const size_t total = (size_t)(per_thread * threads + part_floats) * sizeof(float);
    float *base = (float *)aligned_alloc(64, cl_round_up((int64_t)total, 64));
    if (!base) return CL_ERR_NOMEM;
    if (alloc_hook) alloc_hook(base, total, 0);
    a->scratch_bytes = (int64_t)total;
    job.part = base + per_thread * threads;
    worker_t *workers = (worker_t *)calloc((size_t)threads, sizeof(worker_t));
    int rc = CL_OK;
    if (!workers) {
        rc = CL_ERR_NOMEM;
    } else {
        for (int64_t t = 0; t < threads; t++) {
            workers[t].job = &job;
            workers[t].dscratch = base + t * per_thread;
        }
        run_workers(workers, threads);
        /* merge the splits of every row by their log-sum-exp (chapter 2's merge_states) */
        for (int64_t r = 0; r < rows; r++) {
            const float *p = job.part + r * a->splits * (D + 2);
            float m = -INFINITY;
            for (int s = 0; s < a->splits; s++) m = p[s * (D + 2) + D] > m ? p[s * (D + 2) + D] : m;
            float *o = a->out + r * D;
            memset(o, 0, (size_t)D * sizeof(float));
            if (m == -INFINITY) {
                a->lse[r] = -INFINITY;
                continue;
            }
            float l = 0.0f;
            for (int s = 0; s < a->splits; s++) {
                const float *ps = p + s * (D + 2);
                if (ps[D] == -INFINITY) continue;
                const float w = expf(ps[D] - m);
                l += w * ps[D + 1];
                for (int64_t d = 0; d < D; d++) o[d] += w * ps[d];
            }
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            for (int64_t d = 0; d < D; d++) o[d] *= inv;
            a->lse[r] = l > 0.0f ? m + logf(l) : -INFINITY;
        }
    }
    free(workers);
    scratch_free(base, total);
    return rc;
}

/* One read of x[0 .. n) by `threads` workers (slices of one job); Σ x in double. */
static double read_once(const cl_isa_impl *impl, const float *x, int64_t n, int threads, double *sums,
                        worker_t *workers) {
    job_t job;
    memset(&job, 0, sizeof job);
    job.impl = impl;
    job.kind = JOB_READ;
    job.slice = (n + threads - 1) / threads;
    job.n_items = (n + job.slice - 1) / job.slice;
    job.buf = x;
    job.total = n;
    job.sums = sums;
    for (int t = 0; t < threads; t++) workers[t].job = &job;
    run_workers(workers, threads < job.n_items ? threads : job.n_items);
    double s = 0.0;
    for (int64_t t = 0; t < job.n_items; t++) s += sums[t];
    return s;
}

double cl_read_bandwidth(int isa, int64_t bytes, int threads, int rounds) {
    if (!cl_isa_supported(isa) || bytes < 4096 || rounds < 1 || rounds > 1000) return -1.0;
    const cl_isa_impl *impl = impl_of(isa);
    const int64_t n = bytes / (int64_t)sizeof(float);
    if (threads <= 0) threads = cl_default_threads();
    float *buf = (float *)aligned_alloc(64, (size_t)cl_round_up(n * (int64_t)sizeof(float), 64));
    double *sums = (double *)calloc((size_t)threads, sizeof(double));
    worker_t *workers = (worker_t *)calloc((size_t)threads, sizeof(worker_t));
    if (!buf || !sums || !workers) {
        free(buf); free(sums); free(workers);
        return -1.0;
    }
    for (int64_t i = 0; i < n; i++) buf[i] = (float)(i & 7); /* touch every page before timing */
    double best = 1e300;
    volatile double sink = 0.0;
    for (int r = 0; r < rounds; r++) {
        const double t0 = now_ns();
        sink += read_once(impl, buf, n, threads, sums, workers);
        const double dt = now_ns() - t0;
        if (dt < best) best = dt;
    }
    (void)sink;
    free(buf); free(sums); free(workers);
    return (double)n * sizeof(float) / best; /* bytes per ns = GB/s */
}

double cl_read_sum(int isa, const float *x, int64_t n, int threads) {
    if (!cl_isa_supported(isa) || !x || n < 1) return NAN;
    if (threads <= 0) threads = cl_default_threads();
    double *sums = (double *)calloc((size_t)threads, sizeof(double));
    worker_t *workers = (worker_t *)calloc((size_t)threads, sizeof(worker_t));
    double s = NAN;
    if (sums && workers) s = read_once(impl_of(isa), x, n, threads, sums, workers);
    free(sums); free(workers);
    return s;
}
