// Decode attention straight from the paged KV cache for AVX-512 BF16 CPUs: a bf16 cache, or an
// 8-bit one (int8 or fp8 e4m3, a scale per slot and head) whose rows are widened to bf16 block by
// block, exactly, the scales folded into the scores and the weights.
//
// One query token per sequence, or a verification's few tokens of one sequence. Gathering
// every sequence's K and V into a padded batch before attention copies the whole context once
// per layer and step; reading the cache slots in place halves the memory traffic and skips the
// padding. The context is cut into fixed chunks of slots (flash-decoding), so a long context
// spreads over every thread even at batch 1; a task is one sequence's chunk (its KV heads split
// too when there are few chunks). A task walks its chunk one block of 16 keys at a time, every
// head at once, with an online softmax: scores from bf16 dot products, float32 exponentials, V
// rows added two at a time with bf16 pair dot products, the next block's K and V rows fetched
// meanwhile; each block is read once, in cache-row order. The chunks' sums are then rescaled to
// one peak and added in chunk order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kv_cache_format.h"
#include "lane_sums.h"
#include "thread_pool.h"

namespace {

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

// A task's keys: up to kChunk slots of one sequence. Chunk bounds are fixed positions, so a row's
// sums do not depend on the batch or the thread count; the chunks' partial sums are combined in
// chunk order.
constexpr int64_t kChunk = 256;
// Key blocks fetched ahead: the K and V rows of the task's heads (one block is 64 KB at the 4B
// shape; measured on one thread at 8,192 positions: 1 ahead 4.6 ms a layer, 2 ahead 4.8, none 6.1).
constexpr int64_t kBlocksAhead = 1;

// Keys scored together: one vector of scores per query head and block.
constexpr int64_t kKeyBlock = qthink::kLanes;
// Rows of one sequence taken as one task (a verification's k + 1 tokens).
constexpr int64_t kMaxRunRows = 16;

using qthink::CacheFormat;

// 32 int8 values as bf16 (exact: every int8 is a bf16).
inline __m512i widen_int8(const uint8_t* p) {
  const __m512 low = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  const __m512 high =
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(high, low));
}

// 16 fp8 e4m3 values / 256 as floats: the bits moved into a half's place (sign, then the 4-bit
// exponent in the low bits of the half's 5-bit one, then the mantissa), which reads as the value
// times 2^-8, subnormals included; the factor goes into the slot's scale.
inline __m512 fp8_over_256(const uint8_t* p) {
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
  const __m256i rest = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7F)), 7);
  return _mm512_cvtph_ps(_mm256_or_si256(sign, rest));
}

// 32 fp8 values / 256 as bf16 (exact: 3 mantissa bits, exponents well inside bf16's).
inline __m512i widen_fp8(const uint8_t* p) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(fp8_over_256(p + 16), fp8_over_256(p)));
}

// Up to 16 keys of one KV head, as bf16 rows: in the cache, or widened from an 8-bit cache
// into scratch rows. Rows past `count` repeat the last one. With an 8-bit cache each key's and
// value's scale (times 256 for fp8) is applied to its score and to its weight.
struct KeyBlock {
  const uint16_t* keys[kKeyBlock];
  const uint16_t* values[kKeyBlock];
  float key_scales[kKeyBlock];
  float value_scales[kKeyBlock];
  bool scaled;
};

// Each row's, chunk's and head's running attention (online softmax): the weighted sum of V rows
// with unnormalised weights e^(score - peak) (D floats), then the peak and the weights' sum.
struct Partials {
  float* data;
  const int64_t* first;  // [B]: the index of row b's first chunk
  int64_t H, D;
  float* at(int64_t b, int64_t c, int64_t h) const { return data + ((first[b] + c) * H + h) * (D + 2); }
};

struct DecodeAttention {
  const uint16_t* q;     // [B, H, D]
  const uint8_t* k;      // [S, KVH, D] of `format`
  const uint8_t* v;      // [S, KVH, D]
  const float* k_scale;  // [S, KVH] for an 8-bit cache
  const float* v_scale;
  CacheFormat format;
  const int64_t* slots;  // [B, W]
  const int64_t* lens;   // [B]
  uint16_t* out;         // [B, H, D]
  int64_t H, KVH, D, W;
  float scale;

  // out[(g0 + i) * out_stride + d0 .. + 32 C) += sum over t < len of weights[(g0 + i) * stride + t]
  // * V[t][d0 ..), for i < G: bf16 dot products over pairs of keys (two V rows interleaved, their
  // two weights as one bf16 pair), so one instruction adds two keys' terms; the G x 2C float sums
  // stay in registers while the V rows stream past. `weights` has a zero after an odd length.
  template <int G, int C>
  void weighted_values_block(int64_t g0, int64_t d0, int64_t len, const KeyBlock& block, const uint16_t* weights,
                             int64_t stride, float* out, int64_t out_stride) const {
    __m512 low[G][C], high[G][C];  // d = 8 L + (0..3), 8 L + (4..7) of each 128-bit lane L
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) low[i][c] = high[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; t += 2) {
      const uint16_t* first = block.values[t] + d0;
      const uint16_t* second = block.values[std::min(t + 1, len - 1)] + d0;
      __m512bh low_pairs[C], high_pairs[C];
      for (int c = 0; c < C; ++c) {
        const __m512i a = _mm512_loadu_si512(first + 32 * c), b = _mm512_loadu_si512(second + 32 * c);
        low_pairs[c] = reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(a, b));
        high_pairs[c] = reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(a, b));
      }
      for (int i = 0; i < G; ++i) {
        int32_t pair;
        std::memcpy(&pair, weights + (g0 + i) * stride + t, sizeof pair);
        const __m512bh w = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
        for (int c = 0; c < C; ++c) {
          low[i][c] = _mm512_dpbf16_ps(low[i][c], low_pairs[c], w);
          high[i][c] = _mm512_dpbf16_ps(high[i][c], high_pairs[c], w);
        }
      }
    }
    const __m512i front = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i back = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int i = 0; i < G; ++i)
      for (int c = 0; c < C; ++c) {
        float* o = out + (g0 + i) * out_stride + d0 + 32 * c;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_permutex2var_ps(low[i][c], front, high[i][c])));
        _mm512_storeu_ps(o + 16,
                         _mm512_add_ps(_mm512_loadu_ps(o + 16), _mm512_permutex2var_ps(low[i][c], back, high[i][c])));
      }
  }

  template <int C>
  void weighted_values_of(int64_t groups, int64_t g0, int64_t d0, int64_t len, const KeyBlock& block,
                          const uint16_t* weights, int64_t stride, float* out, int64_t out_stride) const {
    switch (groups) {
      case 1: return weighted_values_block<1, C>(g0, d0, len, block, weights, stride, out, out_stride);
      case 2: return weighted_values_block<2, C>(g0, d0, len, block, weights, stride, out, out_stride);
      case 3: return weighted_values_block<3, C>(g0, d0, len, block, weights, stride, out, out_stride);
      default: return weighted_values_block<4, C>(g0, d0, len, block, weights, stride, out, out_stride);
    }
  }

  // Up to 4 query heads from g0, 64 (or the last 32) values from d0.
  void weighted_values(int64_t g0, int64_t d0, int64_t len, const KeyBlock& block, const uint16_t* weights,
                       int64_t stride, float* out, int64_t out_stride) const {
    const int64_t groups = std::min<int64_t>(H / KVH - g0, 4);
    if (D - d0 >= 64)
      weighted_values_of<2>(groups, g0, d0, len, block, weights, stride, out, out_stride);
    else
      weighted_values_of<1>(groups, g0, d0, len, block, weights, stride, out, out_stride);
  }

  // The block's K and V rows of KV head kvh for the slots block_slots[0 .. count - 1].
  void load_block(const int64_t* block_slots, int64_t count, int64_t kvh, KeyBlock& block) const {
    block.scaled = format != CacheFormat::kBf16;
    if (!block.scaled) {
      for (int64_t j = 0; j < kKeyBlock; ++j) {
        const int64_t row = (block_slots[std::min(j, count - 1)] * KVH + kvh) * D;
        block.keys[j] = reinterpret_cast<const uint16_t*>(k) + row;
        block.values[j] = reinterpret_cast<const uint16_t*>(v) + row;
      }
      return;
    }
    thread_local std::vector<uint16_t> widened;
    widened.resize(2 * kKeyBlock * D);
    const float factor = format == CacheFormat::kFp8 ? 256.0f : 1.0f;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      if (j >= count) {
        block.keys[j] = block.keys[count - 1], block.values[j] = block.values[count - 1];
        block.key_scales[j] = block.value_scales[j] = 0.0f;
        continue;
      }
      const int64_t head = block_slots[j] * KVH + kvh;
      uint16_t* key = widened.data() + j * D;
      uint16_t* value = key + kKeyBlock * D;
      for (int64_t d = 0; d < D; d += 32) {
        const bool fp8 = format == CacheFormat::kFp8;
        _mm512_storeu_si512(key + d, fp8 ? widen_fp8(k + head * D + d) : widen_int8(k + head * D + d));
        _mm512_storeu_si512(value + d, fp8 ? widen_fp8(v + head * D + d) : widen_int8(v + head * D + d));
      }
      block.keys[j] = key, block.values[j] = value;
      block.key_scales[j] = k_scale[head] * factor, block.value_scales[j] = v_scale[head] * factor;
    }
  }

  // scores[16 i ..] for the `queries` query heads at `qs` (D apart) and the block's first
  // `count` keys (the rest -inf): each loaded key chunk serves every head.
  void score_block(const uint16_t* qs, int64_t queries, const KeyBlock& block, int64_t count, float* scores) const {
    // Key j is summed in accumulator transposed(j), so the sum tree puts its score in lane j.
    const uint16_t* keys[kKeyBlock];
    for (int64_t j = 0; j < kKeyBlock; ++j) keys[qthink::transposed(j)] = block.keys[j];
    const __mmask16 mask = count >= 16 ? 0xFFFF : (1u << count) - 1;
    const __m512 scaled = block.scaled ? _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(block.key_scales))
                                       : _mm512_set1_ps(scale);
    for (int64_t i = 0; i < queries; ++i) {
      __m512 acc[kKeyBlock];
      for (__m512& a : acc) a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 32) {
        const __m512bh x = reinterpret_cast<__m512bh>(_mm512_loadu_si512(qs + i * D + d));
        for (int64_t j = 0; j < kKeyBlock; ++j)
          acc[j] = _mm512_dpbf16_ps(acc[j], reinterpret_cast<__m512bh>(_mm512_loadu_si512(keys[j] + d)), x);
      }
      _mm512_storeu_ps(scores + kKeyBlock * i,
                       _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), mask, qthink::transpose_sums(acc), scaled));
    }
  }

  // A running sum's next block: scores (masked keys -inf) become bf16 weights e^(score - peak)
  // against the new peak (times each value's scale, for an 8-bit cache), and the sums so far are
  // rescaled to it.
  void rescale(float* part, const float* scores, const KeyBlock& block, uint16_t* weights) const {
    const __m512 s = _mm512_loadu_ps(scores);
    const float peak = std::max(part[D], _mm512_reduce_max_ps(s));
    const __mmask16 keys = _mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(keys, exp_nonpositive(_mm512_sub_ps(s, _mm512_set1_ps(peak))));
    const float shrink = part[D] == peak ? 1.0f : std::exp(part[D] - peak);
    part[D] = peak;
    part[D + 1] = part[D + 1] * shrink + _mm512_reduce_add_ps(e);
    if (shrink != 1.0f)
      for (int64_t d = 0; d < D; d += 16)
        _mm512_storeu_ps(part + d, _mm512_mul_ps(_mm512_loadu_ps(part + d), _mm512_set1_ps(shrink)));
    const __m256bh packed = _mm512_cvtneps_pbh(block.scaled ? _mm512_mul_ps(e, _mm512_loadu_ps(block.value_scales)) : e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(weights), reinterpret_cast<const __m256i&>(packed));
  }

  // Rows b0 .. b0 + R - 1 (one sequence: row r attends to the first lens[b0 + r] slots of the
  // last row's table) against chunk c's keys of KV heads kv0 .. kv1 - 1, one block of keys at a
  // time (each block's K and V read once for all rows and heads): each row's and head's running
  // sums in `parts`.
  void operator()(int64_t b0, int64_t R, int64_t c, int64_t kv0, int64_t kv1, const Partials& parts) const {
    const int64_t group = H / KVH, c0 = c * kChunk, c1 = std::min(c0 + kChunk, lens[b0 + R - 1]);
    const int64_t* table = slots + (b0 + R - 1) * W;
    thread_local std::vector<float> scores;
    thread_local std::vector<uint16_t> weights;
    scores.resize(group * kKeyBlock);
    weights.resize(group * kKeyBlock);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t h = kv0 * group; h < kv1 * group && lens[b0 + r] > c0; ++h) {  // else no chunk c
        float* part = parts.at(b0 + r, c, h);
        std::fill_n(part, D, 0.0f);
        part[D] = -INFINITY;
        part[D + 1] = 0.0f;
      }
    KeyBlock block;
    for (int64_t t0 = c0; t0 < c1; t0 += kKeyBlock) {
      prefetch_block(table, t0 + kKeyBlock * kBlocksAhead, c1, kv0, kv1);
      for (int64_t kvh = kv0; kvh < kv1; ++kvh) {
        load_block(table + t0, std::min(kKeyBlock, c1 - t0), kvh, block);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t count = std::min(kKeyBlock, lens[b0 + r] - t0);
          if (count <= 0) continue;
          float* part = parts.at(b0 + r, c, kvh * group);  // the group's heads are D + 2 apart
          score_block(q + ((b0 + r) * H + kvh * group) * D, group, block, count, scores.data());
          for (int64_t g = 0; g < group; ++g)
            rescale(part + g * (D + 2), scores.data() + g * kKeyBlock, block, weights.data() + g * kKeyBlock);
          for (int64_t g = 0; g < group; g += 4)
            for (int64_t d = 0; d < D; d += D - d >= 64 ? 64 : 32)
              weighted_values(g, d, count, block, weights.data(), kKeyBlock, part, D + 2);
        }
      }
    }
  }

  // Fetch the K and V rows of KV heads kv0 .. kv1 - 1 for the slots at t .. t + 15 (below end).
  void prefetch_block(const int64_t* table, int64_t t, int64_t end, int64_t kv0, int64_t kv1) const {
    const int64_t bytes = format == CacheFormat::kBf16 ? 2 : 1;
    for (int64_t i = t; i < std::min(t + kKeyBlock, end); ++i) {
      const char* kr = reinterpret_cast<const char*>(k + (table[i] * KVH + kv0) * D * bytes);
      const char* vr = reinterpret_cast<const char*>(v + (table[i] * KVH + kv0) * D * bytes);
      for (int64_t byte = 0; byte < (kv1 - kv0) * D * bytes; byte += 64) {
        _mm_prefetch(kr + byte, _MM_HINT_T0);
        _mm_prefetch(vr + byte, _MM_HINT_T0);
      }
    }
  }

  // Row b's output: its chunks' partial sums rescaled to one peak and added in chunk order.
  void combine(int64_t b, const Partials& parts) const {
    const int64_t chunks = (lens[b] + kChunk - 1) / kChunk;
    thread_local std::vector<float> weights;
    weights.resize(chunks);
    for (int64_t h = 0; h < H; ++h) {
      float peak = -INFINITY, total = 0.0f;
      for (int64_t c = 0; c < chunks; ++c) peak = std::max(peak, parts.at(b, c, h)[D]);
      for (int64_t c = 0; c < chunks; ++c) {
        weights[c] = std::exp(parts.at(b, c, h)[D] - peak);
        total += weights[c] * parts.at(b, c, h)[D + 1];
      }
      const __m512 inverse = _mm512_set1_ps(1.0f / total);
      uint16_t* o = out + (b * H + h) * D;
      for (int64_t d = 0; d < D; d += 16) {
        __m512 sum = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; ++c)
          sum = _mm512_fmadd_ps(_mm512_set1_ps(weights[c]), _mm512_loadu_ps(parts.at(b, c, h) + d), sum);
        const __m256bh packed = _mm512_cvtneps_pbh(_mm512_mul_ps(sum, inverse));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + d), reinterpret_cast<const __m256i&>(packed));
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
                            const at::Tensor& slots, const at::Tensor& lens, double scale,
                            const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kBFloat16 && q.dim() == 3 && q.is_contiguous(),
              "q must be a contiguous bf16 CPU tensor [B, H, D]");
  for (const at::Tensor* t : {&k_cache, &v_cache})
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 3 && t->is_contiguous() && t->scalar_type() == k_cache.scalar_type(),
                "k_cache and v_cache must be contiguous CPU tensors [S, KVH, D] of one type");
  const CacheFormat format = qthink::cache_format(k_cache, k_scale, v_scale);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k_cache.size(1);
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.size(2) == D && D % 32 == 0 && H % KVH == 0,
              "shapes: q [B, H, D], caches [S, KVH, D] with D a multiple of 32 and H a multiple of KVH");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 2 && slots.size(0) == B && slots.is_contiguous() &&
                  lens.scalar_type() == at::kLong && lens.numel() == B && lens.is_contiguous(),
              "slots must be int64 [B, W] and lens int64 [B]");
  const int64_t* len = lens.data_ptr<int64_t>();  // a loop, not two reductions through the dispatcher
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(len[b] > 0 && len[b] <= slots.size(1), "every length must be in 1..W");
  at::Tensor out = at::empty_like(q);
  const bool eight_bit = format != CacheFormat::kBf16;
  const DecodeAttention kernel{bits(q),
                               static_cast<const uint8_t*>(k_cache.data_ptr()),
                               static_cast<const uint8_t*>(v_cache.data_ptr()),
                               eight_bit ? k_scale->data_ptr<float>() : nullptr,
                               eight_bit ? v_scale->data_ptr<float>() : nullptr,
                               format,
                               slots.data_ptr<int64_t>(),
                               lens.data_ptr<int64_t>(),
                               reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()),
                               H,
                               KVH,
                               D,
                               slots.size(1),
                               static_cast<float>(scale)};
  std::vector<int64_t> first(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) first[b + 1] = first[b] + (len[b] + kChunk - 1) / kChunk;
  at::Tensor buffer = at::empty({first[B] * H * (D + 2)}, q.options().dtype(at::kFloat));
  const Partials parts{buffer.data_ptr<float>(), first.data(), H, D};
  const std::vector<int64_t> runs = sequence_runs(slots.data_ptr<int64_t>(), len, B, slots.size(1));
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (run, chunk)
  for (size_t run = 0; run + 1 < runs.size(); ++run)
    for (int64_t c = 0; c * kChunk < len[runs[run + 1] - 1]; ++c) chunks.emplace_back(run, c);
  // Short contexts: split the KV heads too, so every thread has work (it changes no sums).
  int64_t splits = 1;
  const int64_t wanted = 2 * qthink::pool_threads();
  while (static_cast<int64_t>(chunks.size()) * splits < wanted && KVH % (2 * splits) == 0) splits *= 2;
  const int64_t heads = KVH / splits;
  qthink::parallel_for(static_cast<int64_t>(chunks.size()) * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto [run, c] = chunks[i / splits];
      const int64_t kv0 = i % splits * heads;
      kernel(runs[run], runs[run + 1] - runs[run], c, kv0, kv0 + heads, parts);
    }
  });
  qthink::parallel_for(B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) kernel.combine(b, parts);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lens, float scale, "
      "Tensor? k_scale=None, Tensor? v_scale=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) { m.impl("decode_attention", &decode_attention); }
