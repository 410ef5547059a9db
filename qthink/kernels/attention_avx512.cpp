// Decode attention straight from the paged KV cache (bf16) for AVX-512 BF16 CPUs.
//
// One query token per sequence. Gathering every sequence's K and V into a padded batch
// before attention copies the whole context once per layer and step; reading the cache
// slots in place halves the memory traffic and skips the padding. Tasks are (sequence, KV
// head) pairs; each handles the query heads of its group: scores with bf16 dot products,
// a float32 softmax, then the weighted sum of V rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "thread_pool.h"

namespace {

inline __m512 widen_bf16(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

inline float dot_bf16(const uint16_t* a, const uint16_t* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 32) {
    const __m512i x = _mm512_loadu_si512(a + d);
    const __m512i y = _mm512_loadu_si512(b + d);
    acc = _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(x), reinterpret_cast<__m512bh>(y));
  }
  return _mm512_reduce_add_ps(acc);
}

// e^x for x <= 0 (softmax of max-shifted scores): 2^n * 2^f with n = round(x log2 e) and
// 2^f, |f| <= 1/2, from its degree-6 Taylor polynomial (relative error about 1e-7).
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  static constexpr float kCoefficients[] = {1.5403530393381606e-4f, 1.3333558146428443e-3f, 9.618129107628477e-3f,
                                            5.550410866482158e-2f,  2.402265069591007e-1f,  6.931471805599453e-1f,
                                            1.0f};
  __m512 p = _mm512_set1_ps(kCoefficients[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kCoefficients[i]));
  return _mm512_scalef_ps(p, n);
}

// In place: s[0..len) becomes softmax(s).
inline void softmax(float* s, int64_t len) {
  __m512 peak = _mm512_set1_ps(-INFINITY);
  for (int64_t t = 0; t < len; t += 16) {
    const __mmask16 mask = len - t >= 16 ? 0xFFFF : (1u << (len - t)) - 1;
    peak = _mm512_max_ps(peak, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask, s + t));
  }
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
  __m512 total = _mm512_setzero_ps();
  for (int64_t t = 0; t < len; t += 16) {
    const __mmask16 mask = len - t >= 16 ? 0xFFFF : (1u << (len - t)) - 1;
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + t), shift));
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mask, e));
    _mm512_mask_storeu_ps(s + t, mask, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t t = 0; t < len; t += 16) {
    const __mmask16 mask = len - t >= 16 ? 0xFFFF : (1u << (len - t)) - 1;
    _mm512_mask_storeu_ps(s + t, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, s + t), inverse));
  }
}

// Slots are scattered over the cache: fetch the K and V rows a few positions ahead.
constexpr int64_t kAhead = 8;

inline void prefetch_row(const uint16_t* cache, const int64_t* slots, int64_t t, int64_t len, int64_t KVH,
                         int64_t kvh, int64_t D) {
  if (t >= len) return;
  const char* row = reinterpret_cast<const char*>(cache + (slots[t] * KVH + kvh) * D);
  for (int64_t b = 0; b < D * 2; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
}

struct DecodeAttention {
  const uint16_t* q;  // [B, H, D]
  const uint16_t* k;  // [S, KVH, D]
  const uint16_t* v;  // [S, KVH, D]
  const int64_t* slots;  // [B, W]
  const int64_t* lens;   // [B]
  uint16_t* out;         // [B, H, D]
  int64_t H, KVH, D, W;
  float scale;

  // acc[g0 + i][d0 .. d0 + 16 C) = sum over t of scores[g0 + i][t] * V[t][d0 ..), for i < G: the
  // G x C sums stay in registers while the V rows stream past (the same FMAs in the same order
  // as one row at a time through memory).
  template <int G, int C>
  void weighted_values_block(int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                             const std::vector<float>& scores, std::vector<float>& acc) const {
    __m512 sums[G][C];
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) sums[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const uint16_t* value = v + (seq_slots[t] * KVH + kvh) * D + d0;
      __m512 rows[C];
      for (int c = 0; c < C; ++c) rows[c] = widen_bf16(value + 16 * c);
      for (int i = 0; i < G; ++i) {
        const __m512 weight = _mm512_set1_ps(scores[(g0 + i) * len + t]);
        for (int c = 0; c < C; ++c) sums[i][c] = _mm512_fmadd_ps(weight, rows[c], sums[i][c]);
      }
    }
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc.data() + (g0 + i) * D + d0 + 16 * c, sums[i][c]);
  }

  template <int C>
  void weighted_values_of(int64_t groups, int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                          const std::vector<float>& scores, std::vector<float>& acc) const {
    switch (groups) {
      case 1: return weighted_values_block<1, C>(g0, d0, len, kvh, seq_slots, scores, acc);
      case 2: return weighted_values_block<2, C>(g0, d0, len, kvh, seq_slots, scores, acc);
      case 3: return weighted_values_block<3, C>(g0, d0, len, kvh, seq_slots, scores, acc);
      default: return weighted_values_block<4, C>(g0, d0, len, kvh, seq_slots, scores, acc);
    }
  }

  // Up to 4 query heads from g0, 64 (or the last 32) values from d0.
  void weighted_values(int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                       const std::vector<float>& scores, std::vector<float>& acc) const {
    const int64_t groups = std::min<int64_t>(H / KVH - g0, 4);
    if (D - d0 >= 64)
      weighted_values_of<4>(groups, g0, d0, len, kvh, seq_slots, scores, acc);
    else
      weighted_values_of<2>(groups, g0, d0, len, kvh, seq_slots, scores, acc);
  }

  void operator()(int64_t b, int64_t kvh, std::vector<float>& scores, std::vector<float>& acc) const {
    const int64_t group = H / KVH, len = lens[b];
    scores.resize(group * len);
    acc.resize(group * D);  // every value is written by weighted_values
    const uint16_t* qb = q + (b * H + kvh * group) * D;
    const int64_t* seq_slots = slots + b * W;
    for (int64_t t = 0; t < len; ++t) {
      prefetch_row(k, seq_slots, t + kAhead, len, KVH, kvh, D);
      prefetch_row(v, seq_slots, t + kAhead, len, KVH, kvh, D);
      const uint16_t* key = k + (seq_slots[t] * KVH + kvh) * D;
      for (int64_t g = 0; g < group; ++g) scores[g * len + t] = dot_bf16(qb + g * D, key, D) * scale;
    }
    for (int64_t g = 0; g < group; ++g) softmax(scores.data() + g * len, len);
    for (int64_t g = 0; g < group; g += 4)
      for (int64_t d = 0; d < D; d += D - d >= 64 ? 64 : 32) weighted_values(g, d, len, kvh, seq_slots, scores, acc);
    for (int64_t g = 0; g < group; ++g) {
      uint16_t* o = out + (b * H + kvh * group + g) * D;
      for (int64_t d = 0; d < D; d += 16) {
        const __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(acc.data() + g * D + d));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + d), reinterpret_cast<const __m256i&>(packed));
      }
    }
  }
};

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots, const at::Tensor& lens, double scale) {
  for (const at::Tensor* t : {&q, &k_cache, &v_cache})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->dim() == 3 && t->is_contiguous(),
                "q, k_cache and v_cache must be contiguous bf16 CPU tensors of 3 dimensions");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k_cache.size(1);
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.size(2) == D && D % 32 == 0 && H % KVH == 0,
              "shapes: q [B, H, D], caches [S, KVH, D] with D a multiple of 32 and H a multiple of KVH");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 2 && slots.size(0) == B && slots.is_contiguous() &&
                  lens.scalar_type() == at::kLong && lens.numel() == B && lens.is_contiguous(),
              "slots must be int64 [B, W] and lens int64 [B]");
  const int64_t* len = lens.data_ptr<int64_t>();  // a loop, not two reductions through the dispatcher
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(len[b] > 0 && len[b] <= slots.size(1), "every length must be in 1..W");
  at::Tensor out = at::empty_like(q);
  const DecodeAttention kernel{bits(q), bits(k_cache), bits(v_cache), slots.data_ptr<int64_t>(),
                               lens.data_ptr<int64_t>(), reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()),
                               H, KVH, D, slots.size(1), static_cast<float>(scale)};
  // KV head major: the rows of one sequence (a verification's k + 1 queries, each over its own
  // prefix) run one after another on the same K/V rows, which the first left in cache.
  qthink::parallel_for(B * KVH, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores, acc;
    for (int64_t task = begin; task < end; ++task) kernel(task % B, task / B, scores, acc);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) { m.impl("decode_attention", &decode_attention); }
