/* orchestr's CPU kernels for the batching engine (bf16 and fp32).
 *
 * 1. orchestr_paged_decode: one query token per sequence attends to that sequence's keys and
 *    values where they lie in the paged pool (slot per position). The torch path gathers
 *    every history out of the pool into a padded batch at every layer of every step, which
 *    cost as much as the attention itself; here each pool row is read once, in place.
 *    orchestr_paged_prefill: the same for a prefill chunk's rows over their history (causal),
 *    row for row the decode's arithmetic.
 * 2. orchestr_rms_norm: RMSNorm in one pass (HF's is eight tensor ops).
 * 3. orchestr_rotary: rotary embedding (rotate-half convention) in place on q and k.
 *
 * Built at run time by orchestr/engine/native.py (cc -O3 -march=native -fopenmp) and called
 * through ctypes. OpenMP's runtime is the one torch already loaded (same soname), so
 * torch.set_num_threads applies here too.
 *
 * Conventions: strides are in elements; the last dimension of every tensor is contiguous.
 * Rounding follows the transformers modules these replace (a bf16 rounding wherever they
 * produce a bf16 tensor), so outputs match them up to the order of float sums.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#if defined(__GLIBC__) && defined(__x86_64__)
/* glibc's libmvec expf on 16 lanes: what -ffast-math used to vectorise the softmax's expf into.
 * Named explicitly because without __FAST_MATH__ (the kernels spell its parts out, see
 * native.py) math.h does not declare the vector variants, and a scalar expf per score made
 * the decode attention ~1.5x slower. */
__m512 _ZGVeN16v_expf(__m512 x);
#define HAVE_VECTOR_EXPF 1
#endif
#endif

typedef uint16_t bf16;

static inline float bf16_to_float(bf16 x) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)x << 16;
    return v.f;
}

static inline bf16 float_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((v.u >> 16) | 0x40u); /* NaN stays NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u); /* round to nearest even, like torch */
    return (bf16)(v.u >> 16);
}

/* element access for either dtype: is_bf16 selects the representation */
static inline float ld(const void *p, int64_t i, int is_bf16) {
    return is_bf16 ? bf16_to_float(((const bf16 *)p)[i]) : ((const float *)p)[i];
}

static inline void st(void *p, int64_t i, float x, int is_bf16) {
    if (is_bf16) ((bf16 *)p)[i] = float_to_bf16(x);
    else ((float *)p)[i] = x;
}

/* what a bf16 tensor op would have stored: the value rounded to bf16 (identity for fp32) */
static inline float rnd(float x, int is_bf16) { return is_bf16 ? bf16_to_float(float_to_bf16(x)) : x; }

/* ------------------------------------------------------------------------ paged decode */

#define MAX_HEAD_DIM 256

/* x[t] = exp(x[t] - max) in place for t < len; returns their sum. The argument is clamped at
 * -87 (exp = 1.6e-38, the smallest normal float): a weight that small is nothing beside the
 * sum (>= 1), and denormal weights would make every FMA of the value pass slow. */
static inline float softmax_exp(float *x, int64_t len, float max) {
    float sum = 0.0f;
    int64_t t = 0;
#if defined(HAVE_VECTOR_EXPF)
    const __m512 m = _mm512_set1_ps(max), lo = _mm512_set1_ps(-87.0f);
    __m512 s16 = _mm512_setzero_ps();
    for (; t + 16 <= len; t += 16) {
        const __m512 e = _ZGVeN16v_expf(_mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(x + t), m), lo));
        _mm512_storeu_ps(x + t, e);
        s16 = _mm512_add_ps(s16, e);
    }
    sum = _mm512_reduce_add_ps(s16);
#endif
    for (; t < len; t++) {
        x[t] = expf(fmaxf(x[t] - max, -87.0f));
        sum += x[t];
    }
    return sum;
}

#if defined(__AVX512F__)
/* Software prefetch of a pool row a few positions ahead: a sequence's rows are contiguous
 * only within a 16-slot block, and the hardware prefetcher restarts at every block jump. */
#define PREFETCH_AHEAD 8
static inline void prefetch_row(const void *p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch((const char *)p + off, _MM_HINT_T0);
}

static inline __m512 load16_bf16(const bf16 *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __m512 load16_f32(const float *p) { return _mm512_loadu_ps(p); }

#if defined(__AVX512BF16__)
/* 16 floats -> 16 bf16 (round to nearest even, as torch) */
static inline void store16_bf16(bf16 *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v)); }
/* the value a bf16 tensor would hold */
static inline __m512 round16_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}
#define HAVE_BF16_VEC 1
#endif

/* The walk both passes of the AVX-512 decode make over a sequence's positions t in POOL (keys,
 * then values): each KV head g's row is loaded into kv[] once, then BODY runs for every query
 * head h of g's group. Uses the decode's locals (len, slots, p_slot, p_head, row_bytes, kv_heads,
 * group, nv, kv). */
#define FOR_EACH_KV_ROW(ELEM, LOAD16, POOL, ...)                                                    \
    for (int64_t t = 0; t < len; t++) {                                                            \
        const ELEM *row = POOL + slots[t] * p_slot;                                                \
        if (t + PREFETCH_AHEAD < len) prefetch_row(POOL + slots[t + PREFETCH_AHEAD] * p_slot, row_bytes); \
        for (int64_t g = 0; g < kv_heads; g++) {                                                   \
            for (int64_t v = 0; v < nv; v++) kv[v] = LOAD16(row + g * p_head + 16 * v);            \
            for (int64_t h = g * group; h < (g + 1) * group; h++) __VA_ARGS__                      \
        }                                                                                          \
    }

/* AVX-512 decode of one sequence for head_dim % 16 == 0, ELEM = bf16 or float. Each key/value
 * row (all KV heads of a position, contiguous in the pool) is read and converted once and
 * used by every query head of its group. Scratch: scores [H, len]. */
#define DEFINE_DECODE_AVX512(NAME, ELEM, LOAD16)                                                  \
static int NAME(const ELEM *q, int64_t q_head, const ELEM *k_pool, const ELEM *v_pool, int64_t p_slot, \
                int64_t p_head, const int64_t *slots, int64_t len, ELEM *out, int64_t o_head,      \
                int64_t heads, int64_t kv_heads, int64_t d, float scale, int is_bf16) {            \
    const int64_t group = heads / kv_heads, nv = d / 16, n = len > 0 ? len : 1;                    \
    const int64_t row_bytes = kv_heads * p_head * (int64_t)sizeof(ELEM);                           \
    float *scores = (float *)malloc(sizeof(float) * (size_t)(heads * n));                           \
    __m512 *qv = (__m512 *)aligned_alloc(64, sizeof(__m512) * (size_t)(2 * heads * nv));           \
    if (!scores || !qv) { free(scores); free(qv); return -2; }                                     \
    __m512 *acc = qv + heads * nv;                                                                 \
    float mx[1024], sum[1024];                                                                     \
    const __m512 sc = _mm512_set1_ps(scale);                                                       \
    for (int64_t h = 0; h < heads; h++) {                                                          \
        for (int64_t v = 0; v < nv; v++) {                                                         \
            qv[h * nv + v] = _mm512_mul_ps(LOAD16(q + h * q_head + 16 * v), sc);                   \
            acc[h * nv + v] = _mm512_setzero_ps();                                                 \
        }                                                                                          \
        mx[h] = -INFINITY;                                                                         \
        sum[h] = 0.0f;                                                                             \
    }                                                                                              \
    __m512 kv[MAX_HEAD_DIM / 16];                                                                  \
    FOR_EACH_KV_ROW(ELEM, LOAD16, k_pool, {                                                       \
        __m512 a = _mm512_mul_ps(qv[h * nv], kv[0]);                                               \
        for (int64_t v = 1; v < nv; v++) a = _mm512_fmadd_ps(qv[h * nv + v], kv[v], a);           \
        const float s = _mm512_reduce_add_ps(a);                                                   \
        scores[h * n + t] = s;                                                                     \
        if (s > mx[h]) mx[h] = s;                                                                  \
    })                                                                                             \
    for (int64_t h = 0; h < heads; h++) sum[h] = softmax_exp(scores + h * n, len, mx[h]);         \
    FOR_EACH_KV_ROW(ELEM, LOAD16, v_pool, {                                                       \
        const __m512 p = _mm512_set1_ps(scores[h * n + t]);                                        \
        for (int64_t v = 0; v < nv; v++) acc[h * nv + v] = _mm512_fmadd_ps(p, kv[v], acc[h * nv + v]); \
    })                                                                                             \
    for (int64_t h = 0; h < heads; h++) {                                                          \
        const float inv = sum[h] > 0.0f ? 1.0f / sum[h] : 0.0f;                                    \
        float tmp[16];                                                                             \
        for (int64_t v = 0; v < nv; v++) {                                                         \
            _mm512_storeu_ps(tmp, _mm512_mul_ps(acc[h * nv + v], _mm512_set1_ps(inv)));            \
            for (int c = 0; c < 16; c++) st(out, h * o_head + 16 * v + c, tmp[c], is_bf16);        \
        }                                                                                          \
    }                                                                                              \
    free(scores);                                                                                  \
    free(qv);                                                                                      \
    return 0;                                                                                      \
}

DEFINE_DECODE_AVX512(decode_one_bf16_avx512, bf16, load16_bf16)
DEFINE_DECODE_AVX512(decode_one_f32_avx512, float, load16_f32)

/* Prefill attention of R consecutive query rows of one sequence's chunk, row i attending to
 * positions [0, len0 + i): each pool row is loaded once for the whole tile, and every query row
 * goes through exactly the operations decode_one_*_avx512 performs for it (same products, same
 * order of sums, same softmax), so a token's attention output is bitwise the same whether it
 * was computed in a prefill chunk of any size or as a decode; that is what makes prefix-cached
 * keys/values (computed in another request's steps) give the same greedy text as a recompute.
 * q rows are q + i * q_tok, out rows out + i * o_tok. Scratch: scores [R, H, len0 + R - 1]. */
#define PREFILL_MAX_ROWS 8
#define DEFINE_PREFILL_AVX512(NAME, ELEM, LOAD16)                                                 \
static int NAME(const ELEM *q, int64_t q_tok, int64_t q_head, const ELEM *k_pool, const ELEM *v_pool, \
                int64_t p_slot, int64_t p_head, const int64_t *slots, int64_t len0, int64_t rows,   \
                ELEM *out, int64_t o_tok, int64_t o_head, int64_t heads, int64_t kv_heads, int64_t d, \
                float scale, int is_bf16) {                                                        \
    const int64_t group = heads / kv_heads, nv = d / 16, n = len0 + rows - 1;                      \
    const int64_t row_bytes = kv_heads * p_head * (int64_t)sizeof(ELEM), hn = heads * nv;          \
    float *scores = (float *)malloc(sizeof(float) * (size_t)(rows * heads * n));                  \
    __m512 *qv = (__m512 *)aligned_alloc(64, sizeof(__m512) * (size_t)(2 * rows * hn));            \
    float *mx = (float *)malloc(sizeof(float) * (size_t)(2 * rows * heads));                      \
    if (!scores || !qv || !mx) { free(scores); free(qv); free(mx); return -2; }                    \
    __m512 *acc = qv + rows * hn;                                                                  \
    float *sum = mx + rows * heads;                                                                \
    const __m512 sc = _mm512_set1_ps(scale);                                                       \
    for (int64_t i = 0; i < rows; i++)                                                             \
        for (int64_t h = 0; h < heads; h++) {                                                      \
            for (int64_t v = 0; v < nv; v++) {                                                     \
                qv[i * hn + h * nv + v] = _mm512_mul_ps(LOAD16(q + i * q_tok + h * q_head + 16 * v), sc); \
                acc[i * hn + h * nv + v] = _mm512_setzero_ps();                                    \
            }                                                                                      \
            mx[i * heads + h] = -INFINITY;                                                         \
        }                                                                                          \
    __m512 kv[MAX_HEAD_DIM / 16];                                                                  \
    for (int64_t t = 0; t < n; t++) {                                                              \
        const ELEM *row = k_pool + slots[t] * p_slot;                                              \
        if (t + PREFETCH_AHEAD < n) prefetch_row(k_pool + slots[t + PREFETCH_AHEAD] * p_slot, row_bytes); \
        const int64_t first = t < len0 ? 0 : t - len0 + 1; /* rows that see position t */         \
        for (int64_t g = 0; g < kv_heads; g++) {                                                   \
            for (int64_t v = 0; v < nv; v++) kv[v] = LOAD16(row + g * p_head + 16 * v);            \
            for (int64_t i = first; i < rows; i++)                                                 \
                for (int64_t h = g * group; h < (g + 1) * group; h++) {                            \
                    const __m512 *qh = qv + i * hn + h * nv;                                       \
                    __m512 a = _mm512_mul_ps(qh[0], kv[0]);                                        \
                    for (int64_t v = 1; v < nv; v++) a = _mm512_fmadd_ps(qh[v], kv[v], a);         \
                    const float s = _mm512_reduce_add_ps(a);                                       \
                    scores[(i * heads + h) * n + t] = s;                                           \
                    if (s > mx[i * heads + h]) mx[i * heads + h] = s;                              \
                }                                                                                  \
        }                                                                                          \
    }                                                                                              \
    for (int64_t i = 0; i < rows; i++)                                                             \
        for (int64_t h = 0; h < heads; h++)                                                        \
            sum[i * heads + h] = softmax_exp(scores + (i * heads + h) * n, len0 + i, mx[i * heads + h]); \
    for (int64_t t = 0; t < n; t++) {                                                              \
        const ELEM *row = v_pool + slots[t] * p_slot;                                              \
        if (t + PREFETCH_AHEAD < n) prefetch_row(v_pool + slots[t + PREFETCH_AHEAD] * p_slot, row_bytes); \
        const int64_t first = t < len0 ? 0 : t - len0 + 1;                                         \
        for (int64_t g = 0; g < kv_heads; g++) {                                                   \
            for (int64_t v = 0; v < nv; v++) kv[v] = LOAD16(row + g * p_head + 16 * v);            \
            for (int64_t i = first; i < rows; i++)                                                 \
                for (int64_t h = g * group; h < (g + 1) * group; h++) {                            \
                    const __m512 p = _mm512_set1_ps(scores[(i * heads + h) * n + t]);              \
                    __m512 *ah = acc + i * hn + h * nv;                                            \
                    for (int64_t v = 0; v < nv; v++) ah[v] = _mm512_fmadd_ps(p, kv[v], ah[v]);     \
                }                                                                                  \
        }                                                                                          \
    }                                                                                              \
    for (int64_t i = 0; i < rows; i++)                                                             \
        for (int64_t h = 0; h < heads; h++) {                                                      \
            const float inv = sum[i * heads + h] > 0.0f ? 1.0f / sum[i * heads + h] : 0.0f;        \
            float tmp[16];                                                                         \
            for (int64_t v = 0; v < nv; v++) {                                                     \
                _mm512_storeu_ps(tmp, _mm512_mul_ps(acc[i * hn + h * nv + v], _mm512_set1_ps(inv))); \
                for (int c = 0; c < 16; c++) st(out + i * o_tok, h * o_head + 16 * v + c, tmp[c], is_bf16); \
            }                                                                                      \
        }                                                                                          \
    free(scores);                                                                                  \
    free(qv);                                                                                      \
    free(mx);                                                                                      \
    return 0;                                                                                      \
}

DEFINE_PREFILL_AVX512(prefill_tile_bf16_avx512, bf16, load16_bf16)
DEFINE_PREFILL_AVX512(prefill_tile_f32_avx512, float, load16_f32)
#endif

/* The walk both passes of the portable decode make (keys, then values): BODY runs for every
 * position t and query head h, with `base` the pool offset of the row of h's KV head. */
#define FOR_EACH_KV_OFFSET(...)                                                                    \
    for (int64_t t = 0; t < len; t++) {                                                            \
        const int64_t row = slots[t] * p_slot;                                                     \
        for (int64_t g = 0; g < kv_heads; g++) {                                                   \
            const int64_t base = row + g * p_head;                                                 \
            for (int64_t j = 0; j < group; j++) {                                                  \
                const int64_t h = g * group + j;                                                   \
                __VA_ARGS__                                                                        \
            }                                                                                      \
        }                                                                                          \
    }

/* Portable decode of one sequence (any head_dim, either dtype). Scratch: scores [H, len] +
 * query and accumulators [H, d]. */
static int decode_one(int is_bf16, const void *q, int64_t q_head, const void *k_pool, const void *v_pool,
                      int64_t p_slot, int64_t p_head, const int64_t *slots, int64_t len, void *out,
                      int64_t o_head, int64_t heads, int64_t kv_heads, int64_t d, float scale) {
    const int64_t group = heads / kv_heads;
    const int64_t n = len > 0 ? len : 1;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(heads * n + 2 * heads * d + 2 * heads));
    if (!scores) return -2;
    float *qf = scores + heads * n, *acc = qf + heads * d, *mx = acc + heads * d, *sum = mx + heads;
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t c = 0; c < d; c++) qf[h * d + c] = ld(q, h * q_head + c, is_bf16) * scale;
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(heads * d));
    FOR_EACH_KV_OFFSET({
        float s = 0.0f;
        for (int64_t c = 0; c < d; c++) s += qf[h * d + c] * ld(k_pool, base + c, is_bf16);
        scores[h * n + t] = s;
        if (s > mx[h]) mx[h] = s;
    })
    for (int64_t h = 0; h < heads; h++) sum[h] = softmax_exp(scores + h * n, len, mx[h]);
    FOR_EACH_KV_OFFSET({
        const float p = scores[h * n + t];
        for (int64_t c = 0; c < d; c++) acc[h * d + c] += p * ld(v_pool, base + c, is_bf16);
    })
    for (int64_t h = 0; h < heads; h++) {
        const float inv = sum[h] > 0.0f ? 1.0f / sum[h] : 0.0f;
        for (int64_t c = 0; c < d; c++) st(out, h * o_head + c, acc[h * d + c] * inv, is_bf16);
    }
    free(scores);
    return 0;
}

/* q [D, H, d], pools [slots, KV, d], slots [D, width] int64, lens [D] int64, out [D, H, d].
 * Grouped-query attention: query head h reads KV head h / (H / KV).
 * Returns 0, -1 for a shape this kernel does not take, -2 when out of memory. */
int orchestr_paged_decode(int is_bf16, const void *q, int64_t q_seq, int64_t q_head,
                          const void *k_pool, const void *v_pool, int64_t p_slot, int64_t p_head,
                          const int64_t *slots, int64_t slots_stride, const int64_t *lens,
                          void *out, int64_t o_seq, int64_t o_head,
                          int64_t num_seqs, int64_t heads, int64_t kv_heads, int64_t head_dim, float scale) {
    if (kv_heads <= 0 || heads % kv_heads != 0 || head_dim > MAX_HEAD_DIM) return -1;
    const int64_t esz = is_bf16 ? 2 : 4;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
    for (int64_t i = 0; i < num_seqs; i++) {
        const int64_t *si = slots + i * slots_stride;
        int rc;
#if defined(__AVX512F__)
        if (head_dim % 16 == 0 && heads <= 1024)
            rc = is_bf16 ? decode_one_bf16_avx512((const bf16 *)q + i * q_seq, q_head, (const bf16 *)k_pool,
                                                  (const bf16 *)v_pool, p_slot, p_head, si, lens[i],
                                                  (bf16 *)out + i * o_seq, o_head, heads, kv_heads, head_dim, scale, 1)
                         : decode_one_f32_avx512((const float *)q + i * q_seq, q_head, (const float *)k_pool,
                                                 (const float *)v_pool, p_slot, p_head, si, lens[i],
                                                 (float *)out + i * o_seq, o_head, heads, kv_heads, head_dim, scale, 0);
        else
#endif
        rc = decode_one(is_bf16, (const char *)q + i * q_seq * esz, q_head, k_pool, v_pool, p_slot, p_head,
                            slots + i * slots_stride, lens[i], (char *)out + i * o_seq * esz, o_head, heads,
                            kv_heads, head_dim, scale);
        failed |= rc != 0;
    }
    return failed ? -2 : 0;
}

/* q [n, H, d] (rows q_tok apart), pools [slots, KV, d], slots [start + n] int64 (one
 * sequence's), out [n, H, d]: query row r attends to positions [0, start + r] (causal over the
 * chunk, the whole history before it). Row for row the same arithmetic as orchestr_paged_decode.
 * Returns 0, -1 for a shape this kernel does not take, -2 when out of memory. */
int orchestr_paged_prefill(int is_bf16, const void *q, int64_t q_tok, int64_t q_head,
                           const void *k_pool, const void *v_pool, int64_t p_slot, int64_t p_head,
                           const int64_t *slots, int64_t start, int64_t n, void *out, int64_t o_tok,
                           int64_t o_head, int64_t heads, int64_t kv_heads, int64_t head_dim, float scale) {
    if (kv_heads <= 0 || heads % kv_heads != 0 || head_dim > MAX_HEAD_DIM) return -1;
    const int64_t esz = is_bf16 ? 2 : 4;
    int failed = 0;
#if defined(__AVX512F__)
    if (head_dim % 16 == 0 && heads <= 1024) {
        const int64_t tiles = (n + PREFILL_MAX_ROWS - 1) / PREFILL_MAX_ROWS;
        /* later tiles see longer histories: dynamic scheduling from the last one balances */
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
        for (int64_t k = tiles - 1; k >= 0; k--) {
            const int64_t r0 = k * PREFILL_MAX_ROWS;
            const int64_t rows = n - r0 < PREFILL_MAX_ROWS ? n - r0 : PREFILL_MAX_ROWS;
            const int rc = is_bf16
                ? prefill_tile_bf16_avx512((const bf16 *)q + r0 * q_tok, q_tok, q_head, (const bf16 *)k_pool,
                                           (const bf16 *)v_pool, p_slot, p_head, slots, start + r0 + 1, rows,
                                           (bf16 *)out + r0 * o_tok, o_tok, o_head, heads, kv_heads, head_dim,
                                           scale, 1)
                : prefill_tile_f32_avx512((const float *)q + r0 * q_tok, q_tok, q_head, (const float *)k_pool,
                                          (const float *)v_pool, p_slot, p_head, slots, start + r0 + 1, rows,
                                          (float *)out + r0 * o_tok, o_tok, o_head, heads, kv_heads, head_dim,
                                          scale, 0);
            failed |= rc != 0;
        }
        return failed ? -2 : 0;
    }
#endif
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
    for (int64_t r = n - 1; r >= 0; r--) {
        const int rc = decode_one(is_bf16, (const char *)q + r * q_tok * esz, q_head, k_pool, v_pool, p_slot, p_head,
                                  slots, start + r + 1, (char *)out + r * o_tok * esz, o_head, heads, kv_heads,
                                  head_dim, scale);
        failed |= rc != 0;
    }
    return failed ? -2 : 0;
}

/* ------------------------------------------------------------------------ RMSNorm */

/* out[t] = w * round(x[t] * rsqrt(mean(x[t]^2) + eps)), x and out [T, n] (row strides). */
#if defined(HAVE_BF16_VEC)
/* bf16 rows, n % 16 == 0: optionally h += delta first (add_rms_norm), then the norm. */
static void rms_row_bf16(bf16 *h, const bf16 *delta, const bf16 *w, bf16 *out, int64_t n, float eps) {
    __m512 ss = _mm512_setzero_ps();
    for (int64_t c = 0; c < n; c += 16) {
        __m512 v = load16_bf16(h + c);
        if (delta) {
            v = round16_bf16(_mm512_add_ps(v, load16_bf16(delta + c)));
            store16_bf16(h + c, v);
        }
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)n + eps));
    for (int64_t c = 0; c < n; c += 16)
        store16_bf16(out + c, _mm512_mul_ps(load16_bf16(w + c), round16_bf16(_mm512_mul_ps(load16_bf16(h + c), r))));
}
#endif

void orchestr_rms_norm(int is_bf16, const void *x, int64_t x_row, const void *w, void *out, int64_t o_row,
                       int64_t rows, int64_t n, float eps) {
    const int64_t esz = is_bf16 ? 2 : 4;
#if defined(HAVE_BF16_VEC)
    if (is_bf16 && n % 16 == 0) {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < rows; t++)
            rms_row_bf16((bf16 *)x + t * x_row, NULL, (const bf16 *)w, (bf16 *)out + t * o_row, n, eps);
        return;
    }
#endif
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        const void *xr = (const char *)x + t * x_row * esz;
        void *orow = (char *)out + t * o_row * esz;
        float ss = 0.0f;
        for (int64_t c = 0; c < n; c++) {
            const float v = ld(xr, c, is_bf16);
            ss += v * v;
        }
        const float r = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t c = 0; c < n; c++)
            st(orow, c, ld(w, c, is_bf16) * rnd(ld(xr, c, is_bf16) * r, is_bf16), is_bf16);
    }
}

/* ------------------------------------------------------------------------ rotary */

/* In place on x [T, heads, d] (strides x_tok, x_head): rotate-half rotary with cos/sin [T, d]
 * (row stride cs_row, already in x's dtype), as transformers' apply_rotary_pos_emb does:
 * out = round(x * cos) + round(rotate_half(x) * sin), rounded. */
void orchestr_rotary(int is_bf16, void *x, int64_t x_tok, int64_t x_head, const void *cos_, const void *sin_,
                     int64_t cs_row, int64_t tokens, int64_t heads, int64_t d) {
    const int64_t half = d / 2;
#if defined(HAVE_BF16_VEC)
    if (is_bf16 && half % 16 == 0) {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < tokens; t++) {
            const bf16 *cr = (const bf16 *)cos_ + t * cs_row, *sr = (const bf16 *)sin_ + t * cs_row;
            for (int64_t h = 0; h < heads; h++) {
                bf16 *xr = (bf16 *)x + t * x_tok + h * x_head;
                for (int64_t c = 0; c < half; c += 16) {
                    const __m512 lo = load16_bf16(xr + c), hi = load16_bf16(xr + half + c);
                    const __m512 c1 = load16_bf16(cr + c), s1 = load16_bf16(sr + c);
                    const __m512 c2 = load16_bf16(cr + half + c), s2 = load16_bf16(sr + half + c);
                    const __m512 new_lo = _mm512_add_ps(round16_bf16(_mm512_mul_ps(lo, c1)),
                                                        round16_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), hi), s1)));
                    const __m512 new_hi = _mm512_add_ps(round16_bf16(_mm512_mul_ps(hi, c2)),
                                                        round16_bf16(_mm512_mul_ps(lo, s2)));
                    store16_bf16(xr + c, new_lo);
                    store16_bf16(xr + half + c, new_hi);
                }
            }
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        float lo[MAX_HEAD_DIM / 2], hi[MAX_HEAD_DIM / 2];
        for (int64_t h = 0; h < heads; h++) {
            const int64_t base = t * x_tok + h * x_head;
            for (int64_t c = 0; c < half; c++) {
                lo[c] = ld(x, base + c, is_bf16);
                hi[c] = ld(x, base + half + c, is_bf16);
            }
            for (int64_t c = 0; c < half; c++) {
                const float c1 = ld(cos_, t * cs_row + c, is_bf16), s1 = ld(sin_, t * cs_row + c, is_bf16);
                const float c2 = ld(cos_, t * cs_row + half + c, is_bf16);
                const float s2 = ld(sin_, t * cs_row + half + c, is_bf16);
                st(x, base + c, rnd(lo[c] * c1, is_bf16) + rnd(-hi[c] * s1, is_bf16), is_bf16);
                st(x, base + half + c, rnd(hi[c] * c2, is_bf16) + rnd(lo[c] * s2, is_bf16), is_bf16);
            }
        }
    }
}

/* ------------------------------------------------------------------------ residual + RMSNorm */

/* h[t] += delta[t] (rounded to h's dtype, as a tensor add would), then out[t] = RMSNorm(h[t]):
 * transformers' `hidden = residual + hidden; hidden = norm(hidden)` in one pass. All [T, n]. */
void orchestr_add_rms_norm(int is_bf16, void *h, int64_t h_row, const void *delta, int64_t d_row, const void *w,
                           void *out, int64_t o_row, int64_t rows, int64_t n, float eps) {
    const int64_t esz = is_bf16 ? 2 : 4;
#if defined(HAVE_BF16_VEC)
    if (is_bf16 && n % 16 == 0) {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < rows; t++)
            rms_row_bf16((bf16 *)h + t * h_row, (const bf16 *)delta + t * d_row, (const bf16 *)w,
                         (bf16 *)out + t * o_row, n, eps);
        return;
    }
#endif
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        void *hr = (char *)h + t * h_row * esz;
        const void *dr = (const char *)delta + t * d_row * esz;
        void *orow = (char *)out + t * o_row * esz;
        float ss = 0.0f;
        for (int64_t c = 0; c < n; c++) {
            const float v = rnd(ld(hr, c, is_bf16) + ld(dr, c, is_bf16), is_bf16);
            st(hr, c, v, is_bf16);
            ss += v * v;
        }
        const float r = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t c = 0; c < n; c++)
            st(orow, c, ld(w, c, is_bf16) * rnd(ld(hr, c, is_bf16) * r, is_bf16), is_bf16);
    }
}

/* ------------------------------------------------------------------------ greedy pick */

/* idx[r] = index of the largest of x[r, :n], the first one on ties (like argmax). NaN logits
 * are not looked for (the build assumes finite math). */
static int64_t argmax_row(int is_bf16, const void *xr, int64_t n) {
    int64_t c = 0, at = 0;
    float best = -INFINITY;
#if defined(__AVX512F__)
    if (n >= 16) {
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        __m512i vidx = _mm512_setzero_si512(), cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                                         14, 15);
        const __m512i step = _mm512_set1_epi32(16);
        for (; c + 16 <= n && c + 16 <= 0x7fffffff; c += 16) {
            const __m512 v = is_bf16 ? load16_bf16((const bf16 *)xr + c) : _mm512_loadu_ps((const float *)xr + c);
            const __mmask16 gt = _mm512_cmp_ps_mask(v, vmax, _CMP_GT_OQ); /* strict: a lane keeps its first max */
            vmax = _mm512_mask_mov_ps(vmax, gt, v);
            vidx = _mm512_mask_mov_epi32(vidx, gt, cur);
            cur = _mm512_add_epi32(cur, step);
        }
        float vals[16];
        int32_t idxs[16];
        _mm512_storeu_ps(vals, vmax);
        _mm512_storeu_si512((void *)idxs, vidx);
        for (int l = 0; l < 16; l++)
            if (vals[l] > best || (vals[l] == best && idxs[l] < at)) { best = vals[l]; at = idxs[l]; }
    }
#endif
    for (; c < n; c++) {
        const float v = ld(xr, c, is_bf16);
        if (v > best) { best = v; at = c; }
    }
    return at;
}

void orchestr_argmax_rows(int is_bf16, const void *x, int64_t x_row, int64_t rows, int64_t n, int64_t *idx) {
    const int64_t esz = is_bf16 ? 2 : 4;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) idx[r] = argmax_row(is_bf16, (const char *)x + r * x_row * esz, n);
}

/* 6. orchestr_int8_linear: out[m, n] = sum_k x[m, k] * q[n, k] * s[n, k / 64] for weight-only
 *    group-wise int8 (groups of 64 inputs, one fp32 scale each; engine/int8_weights.py). fp32
 *    activations and output; K is a multiple of 64. Any M: measured faster than dequantizing
 *    the weight for a oneDNN matmul from 1 row to 512 (and no fp32 copy of the weight exists).
 *    Each output is one sum in a fixed order whatever M and the row's place in it, so a
 *    sequence's result does not depend on what it is batched with.
 *
 *    Register tiles of I8_NB weight rows x up to I8_MB rows of x: each 16 int8 of a weight row
 *    are dequantized in registers (vpmovsxbd, cvt, times the group's scale) once per tile and
 *    used for I8_MB rows of x, and each 16 floats of x loaded once for I8_NB weight rows. The
 *    weights are read as int8 (a quarter of fp32's bytes) and never materialised in full
 *    precision. OpenMP splits the weight rows. */
#define I8_NB 3
#define I8_MB 8
#define I8_MCHUNK 64 /* rows of x per pass over the weights: a chunk stays in L2 (prefill-sized M) */

#if defined(__AVX512F__)
static inline __m512 i8_dequant16(const int8_t *p, __m512 scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))), scale);
}

/* NB weight rows (n0..) x MB rows of x (m0..), all of K; NB/MB are compile-time constants, so
 * the NB * MB accumulators stay in registers. */
#define DEFINE_I8_TILE(NB, MB)                                                                        \
static void i8_tile_##NB##_##MB(const float *x, int64_t x_row, const int8_t *q, const float *s,       \
                                float *out, int64_t o_row, int64_t n0, int64_t m0, int64_t K) {       \
    const int64_t groups = K / 64;                                                                    \
    __m512 acc[NB][MB];                                                                               \
    for (int j = 0; j < NB; j++)                                                                      \
        for (int i = 0; i < MB; i++) acc[j][i] = _mm512_setzero_ps();                                 \
    for (int64_t g = 0; g < groups; g++) {                                                            \
        __m512 sc[NB];                                                                                \
        for (int j = 0; j < NB; j++) sc[j] = _mm512_set1_ps(s[(n0 + j) * groups + g]);                \
        for (int c = 0; c < 4; c++) {                                                                 \
            const int64_t k = g * 64 + 16 * c;                                                        \
            __m512 w[NB];                                                                             \
            for (int j = 0; j < NB; j++) w[j] = i8_dequant16(q + (n0 + j) * K + k, sc[j]);            \
            for (int i = 0; i < MB; i++) {                                                            \
                const __m512 xv = _mm512_loadu_ps(x + (m0 + i) * x_row + k);                         \
                for (int j = 0; j < NB; j++) acc[j][i] = _mm512_fmadd_ps(w[j], xv, acc[j][i]);        \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    for (int j = 0; j < NB; j++)                                                                      \
        for (int i = 0; i < MB; i++) out[(m0 + i) * o_row + n0 + j] = _mm512_reduce_add_ps(acc[j][i]); \
}

#define DEFINE_I8_TILES(NB) DEFINE_I8_TILE(NB, 1) DEFINE_I8_TILE(NB, 2) DEFINE_I8_TILE(NB, 3)          \
    DEFINE_I8_TILE(NB, 4) DEFINE_I8_TILE(NB, 5) DEFINE_I8_TILE(NB, 6) DEFINE_I8_TILE(NB, 7) DEFINE_I8_TILE(NB, 8)
DEFINE_I8_TILES(I8_NB)
DEFINE_I8_TILES(1)

typedef void (*i8_tile_fn)(const float *, int64_t, const int8_t *, const float *, float *, int64_t, int64_t,
                           int64_t, int64_t);
#define I8_TABLE(NB) {i8_tile_##NB##_1, i8_tile_##NB##_2, i8_tile_##NB##_3, i8_tile_##NB##_4, i8_tile_##NB##_5, \
                      i8_tile_##NB##_6, i8_tile_##NB##_7, i8_tile_##NB##_8}
#define I8_TABLE_OF(NB) I8_TABLE(NB)
static const i8_tile_fn i8_tiles[2][8] = {I8_TABLE(1), I8_TABLE_OF(I8_NB)};
#endif

void orchestr_int8_linear(const float *x, int64_t x_row, const int8_t *q, const float *s, float *out,
                          int64_t o_row, int64_t M, int64_t N, int64_t K) {
    const int64_t groups = K / 64;
    const int64_t blocks = (N + I8_NB - 1) / I8_NB;
    for (int64_t c0 = 0; c0 < M; c0 += I8_MCHUNK) {
        const int64_t c1 = M - c0 < I8_MCHUNK ? M : c0 + I8_MCHUNK;
#pragma omp parallel for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t n0 = b * I8_NB, nb = N - n0 < I8_NB ? N - n0 : I8_NB;
#if defined(__AVX512F__)
            for (int64_t m0 = c0; m0 < c1; m0 += I8_MB) {
                const int64_t mb = c1 - m0 < I8_MB ? c1 - m0 : I8_MB;
                if (nb == I8_NB) i8_tiles[1][mb - 1](x, x_row, q, s, out, o_row, n0, m0, K);
                else
                    for (int64_t n = n0; n < n0 + nb; n++) i8_tiles[0][mb - 1](x, x_row, q, s, out, o_row, n, m0, K);
            }
#else
            for (int64_t n = n0; n < n0 + nb; n++) {
                const int8_t *qr = q + n * K;
                const float *sr = s + n * groups;
                for (int64_t m = c0; m < c1; m++) {
                    const float *xr = x + m * x_row;
                    float total = 0.0f;
                    for (int64_t g = 0; g < groups; g++) {
                        float part = 0.0f;
                        for (int k = 0; k < 64; k++) part += xr[g * 64 + k] * (float)qr[g * 64 + k];
                        total += part * sr[g];
                    }
                    out[m * o_row + n] = total;
                }
            }
#endif
        }
    }
    (void)groups;
}
