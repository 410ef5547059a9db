// Decode attention straight from the paged KV cache (bf16) for AVX-512 BF16 CPUs.
//
// One query token per sequence, or a verification's few tokens of one sequence. Gathering
// every sequence's K and V into a padded batch before attention copies the whole context once
// per layer and step; reading the cache slots in place halves the memory traffic and skips the
// padding. Tasks are (sequence, KV head) pairs; each handles the query heads of its group (of
// every row of the sequence): scores with bf16 dot products, 16 keys to a vector, a float32
// softmax, then the weighted sum of V rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lane_sums.h"
#include "thread_pool.h"

namespace {

inline __m512 widen_bf16(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
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

// Slots are scattered over the cache: fetch the K and V rows of the key block after next.
constexpr int64_t kBlocksAhead = 2;

inline void prefetch_row(const uint16_t* cache, const int64_t* slots, int64_t t, int64_t len, int64_t KVH,
                         int64_t kvh, int64_t D) {
  if (t >= len) return;
  const char* row = reinterpret_cast<const char*>(cache + (slots[t] * KVH + kvh) * D);
  for (int64_t b = 0; b < D * 2; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
}

// Keys scored together: one vector of scores per query head and block.
constexpr int64_t kKeyBlock = qthink::kLanes;
// Rows of one sequence taken as one task (a verification's k + 1 tokens).
constexpr int64_t kMaxRunRows = 16;

struct DecodeAttention {
  const uint16_t* q;  // [B, H, D]
  const uint16_t* k;  // [S, KVH, D]
  const uint16_t* v;  // [S, KVH, D]
  const int64_t* slots;  // [B, W]
  const int64_t* lens;   // [B]
  uint16_t* out;         // [B, H, D]
  int64_t H, KVH, D, W;
  float scale;

  // acc[g0 + i][d0 .. d0 + 16 C) = sum over t of scores[(g0 + i) * stride + t] * V[t][d0 ..), for
  // i < G: the G x C sums stay in registers while the V rows stream past (the same FMAs in the
  // same order as one row at a time through memory).
  template <int G, int C>
  void weighted_values_block(int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                             const float* scores, int64_t stride, float* acc) const {
    __m512 sums[G][C];
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) sums[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const uint16_t* value = v + (seq_slots[t] * KVH + kvh) * D + d0;
      __m512 rows[C];
      for (int c = 0; c < C; ++c) rows[c] = widen_bf16(value + 16 * c);
      for (int i = 0; i < G; ++i) {
        const __m512 weight = _mm512_set1_ps(scores[(g0 + i) * stride + t]);
        for (int c = 0; c < C; ++c) sums[i][c] = _mm512_fmadd_ps(weight, rows[c], sums[i][c]);
      }
    }
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + (g0 + i) * D + d0 + 16 * c, sums[i][c]);
  }

  template <int C>
  void weighted_values_of(int64_t groups, int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                          const float* scores, int64_t stride, float* acc) const {
    switch (groups) {
      case 1: return weighted_values_block<1, C>(g0, d0, len, kvh, seq_slots, scores, stride, acc);
      case 2: return weighted_values_block<2, C>(g0, d0, len, kvh, seq_slots, scores, stride, acc);
      case 3: return weighted_values_block<3, C>(g0, d0, len, kvh, seq_slots, scores, stride, acc);
      default: return weighted_values_block<4, C>(g0, d0, len, kvh, seq_slots, scores, stride, acc);
    }
  }

  // Up to 4 query heads from g0, 64 (or the last 32) values from d0.
  void weighted_values(int64_t g0, int64_t d0, int64_t len, int64_t kvh, const int64_t* seq_slots,
                       const float* scores, int64_t stride, float* acc) const {
    const int64_t groups = std::min<int64_t>(H / KVH - g0, 4);
    if (D - d0 >= 64)
      weighted_values_of<4>(groups, g0, d0, len, kvh, seq_slots, scores, stride, acc);
    else
      weighted_values_of<2>(groups, g0, d0, len, kvh, seq_slots, scores, stride, acc);
  }

  // scores[i * stride + t0 ..] for the `queries` query heads at `qs` (D apart) and the keys at
  // slots t0 .. t0 + 15 (fewer at the end: `count`): each loaded key chunk serves every head.
  void score_block(const uint16_t* qs, int64_t queries, int64_t t0, int64_t count, int64_t kvh,
                   const int64_t* seq_slots, float* scores, int64_t stride) const {
    // Key j is summed in accumulator transposed(j), so the sum tree puts its score in lane j.
    const uint16_t* keys[kKeyBlock];
    for (int64_t j = 0; j < kKeyBlock; ++j)
      keys[qthink::transposed(j)] = k + (seq_slots[t0 + std::min(j, count - 1)] * KVH + kvh) * D;
    const __mmask16 mask = count >= 16 ? 0xFFFF : (1u << count) - 1;
    const __m512 scaled = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < queries; ++i) {
      __m512 acc[kKeyBlock];
      for (__m512& a : acc) a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 32) {
        const __m512bh x = reinterpret_cast<__m512bh>(_mm512_loadu_si512(qs + i * D + d));
        for (int64_t j = 0; j < kKeyBlock; ++j)
          acc[j] = _mm512_dpbf16_ps(acc[j], reinterpret_cast<__m512bh>(_mm512_loadu_si512(keys[j] + d)), x);
      }
      _mm512_mask_storeu_ps(scores + i * stride + t0, mask, _mm512_mul_ps(qthink::transpose_sums(acc), scaled));
    }
  }

  // Rows b0 .. b0 + R - 1 (one sequence: row r attends to the first lens[b0 + r] slots of the
  // last row's table) against KV head kvh: the keys are read once for all of them.
  void operator()(int64_t b0, int64_t R, int64_t kvh, std::vector<float>& scores, std::vector<float>& acc) const {
    const int64_t group = H / KVH, longest = lens[b0 + R - 1], queries = R * group;
    scores.resize(queries * longest);
    acc.resize(group * D);  // every value is written by weighted_values
    const int64_t* seq_slots = slots + (b0 + R - 1) * W;
    const uint16_t* qs = q + (b0 * H + kvh * group) * D;  // row r's heads start H * D later
    for (int64_t t0 = 0; t0 < longest; t0 += kKeyBlock) {
      for (int64_t t = t0 + kKeyBlock * kBlocksAhead; t < t0 + kKeyBlock * (kBlocksAhead + 1); ++t) {
        prefetch_row(k, seq_slots, t, longest, KVH, kvh, D);
        prefetch_row(v, seq_slots, t, longest, KVH, kvh, D);
      }
      const int64_t count = std::min(kKeyBlock, longest - t0);
      for (int64_t r = 0; r < R; ++r)
        if (t0 < lens[b0 + r])
          score_block(qs + r * H * D, group, t0, count, kvh, seq_slots, scores.data() + r * group * longest, longest);
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t len = lens[b0 + r];
      float* row_scores = scores.data() + r * group * longest;
      for (int64_t g = 0; g < group; ++g) softmax(row_scores + g * longest, len);
      for (int64_t g = 0; g < group; g += 4)
        for (int64_t d = 0; d < D; d += D - d >= 64 ? 64 : 32)
          weighted_values(g, d, len, kvh, seq_slots, row_scores, longest, acc.data());
      for (int64_t g = 0; g < group; ++g) {
        uint16_t* o = out + ((b0 + r) * H + kvh * group + g) * D;
        for (int64_t d = 0; d < D; d += 16) {
          const __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(acc.data() + g * D + d));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + d), reinterpret_cast<const __m256i&>(packed));
        }
      }
    }
  }
};

// The first row of each run of rows that belong to one sequence (lengths one apart, the same
// slots before each), then B: a verification's k + 1 rows read the context once.
std::vector<int64_t> sequence_runs(const int64_t* slots, const int64_t* lens, int64_t B, int64_t W) {
  std::vector<int64_t> starts;
  for (int64_t b = 0; b < B; ++b) {
    const bool continues = b > 0 && b - starts.back() < kMaxRunRows && lens[b] == lens[b - 1] + 1 &&
                           std::equal(slots + (b - 1) * W, slots + (b - 1) * W + lens[b - 1], slots + b * W);
    if (!continues) starts.push_back(b);
  }
  starts.push_back(B);
  return starts;
}

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
  const std::vector<int64_t> runs = sequence_runs(slots.data_ptr<int64_t>(), len, B, slots.size(1));
  const int64_t num_runs = static_cast<int64_t>(runs.size()) - 1;
  qthink::parallel_for(num_runs * KVH, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores, acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t run = task % num_runs;
      kernel(runs[run], runs[run + 1] - runs[run], task / num_runs, scores, acc);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) { m.impl("decode_attention", &decode_attention); }
