// RMSNorm and rotary embedding of a few bf16 rows in one call each, for decode steps.
//
// In torch a bf16 RMSNorm is eight element-wise ops (widen, square, mean, add, rsqrt, scale,
// narrow, weight) and RoPE seven: for one token their dispatch costs far more than the work,
// and a decode step of the 4B model runs 144 norms and 72 RoPEs. These compute the same
// things with the same roundings (each bf16 op of torch's formula rounds once to bf16).
// Two fused forms serve the decode layer: the residual add with the norm after it, and the
// query/key norms with RoPE and the KV-cache write.

#include <ATen/ATen.h>
#include <c10/util/Float8_e4m3fn.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "bf16_vectors.h"
#include "kv_cache_format.h"

namespace {

using qthink::narrow;
using qthink::widen;

void norm_row(const uint16_t* x, const uint16_t* w, uint16_t* out, int64_t D, float eps) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 mask = D - d >= 16 ? 0xFFFF : (1u << (D - d)) - 1;
    const __m512 v = widen(_mm256_maskz_loadu_epi16(mask, x + d));
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(D);
  const __m512 inverse = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 mask = D - d >= 16 ? 0xFFFF : (1u << (D - d)) - 1;
    const __m512 normed = _mm512_mul_ps(widen(_mm256_maskz_loadu_epi16(mask, x + d)), inverse);
    const __m512 rounded = widen(narrow(normed));
    const __m512 scaled = _mm512_mul_ps(rounded, widen(_mm256_maskz_loadu_epi16(mask, w + d)));
    _mm256_mask_storeu_epi16(out + d, mask, narrow(scaled));
  }
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() >= 1,
              "x must be a contiguous bf16 CPU tensor");
  const int64_t D = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.numel() == D,
              "weight must be a contiguous bf16 vector of ", D, " values");
  at::Tensor out = at::empty_like(x);
  const auto* xs = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  for (int64_t r = 0; r < x.numel() / std::max<int64_t>(D, 1); ++r)
    norm_row(xs + r * D, w, o + r * D, D, static_cast<float>(eps));
  return out;
}

// Rotate-half RoPE of one head: x * cos + rotate_half(x) * sin, every product and the sum
// rounded to bf16 as torch's bf16 ops do.
void rope_head(const uint16_t* x, const uint16_t* cos, const uint16_t* sin, uint16_t* out, int64_t D) {
  const int64_t half = D / 2;
  const __m512 minus = _mm512_set1_ps(-1.0f);
  for (int64_t d = 0; d < D; d += 16) {
    const __m512 v = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + d)));
    const int64_t partner = d < half ? d + half : d - half;
    __m512 rotated = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + partner)));
    if (d < half) rotated = _mm512_mul_ps(rotated, minus);
    const __m512 c = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cos + d)));
    const __m512 s = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sin + d)));
    const __m512 sum = _mm512_add_ps(widen(narrow(_mm512_mul_ps(v, c))), widen(narrow(_mm512_mul_ps(rotated, s))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), narrow(sum));
  }
}

// x [T, H, D], cos and sin [T, D], all bf16; D a multiple of 32.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() == 3,
              "x must be a contiguous bf16 CPU tensor [T, H, D]");
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2);
  TORCH_CHECK(D % 32 == 0, "head_dim must be a multiple of 32");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() == 2 && t->size(0) == T &&
                    t->size(1) == D,
                "cos and sin must be contiguous bf16 [T, D]");
  at::Tensor out = at::empty_like(x);
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      rope_head(bits(x) + (t * H + h) * D, bits(cos) + t * D, bits(sin) + t * D, o + (t * H + h) * D, D);
  return out;
}

// sum = x + residual (rounded to bf16, as torch's bf16 add) and rms_norm(sum): the residual
// stream's add and the next norm in one pass. Returns (sum, normed).
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  for (const at::Tensor* t : {&x, &residual})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() >= 1,
                "x and residual must be contiguous bf16 CPU tensors");
  TORCH_CHECK(x.sizes() == residual.sizes(), "x and residual must have one shape");
  const int64_t D = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.numel() == D,
              "weight must be a contiguous bf16 vector of ", D, " values");
  at::Tensor sum = at::empty_like(x), normed = at::empty_like(x);
  const auto* a = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* b = reinterpret_cast<const uint16_t*>(residual.data_ptr<at::BFloat16>());
  auto* s = reinterpret_cast<uint16_t*>(sum.data_ptr<at::BFloat16>());
  for (int64_t i = 0; i < x.numel(); i += 16) {
    const __mmask16 mask = x.numel() - i >= 16 ? 0xFFFF : (1u << (x.numel() - i)) - 1;
    const __m512 total = _mm512_add_ps(widen(_mm256_maskz_loadu_epi16(mask, a + i)),
                                       widen(_mm256_maskz_loadu_epi16(mask, b + i)));
    _mm256_mask_storeu_epi16(s + i, mask, narrow(total));
  }
  const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  auto* o = reinterpret_cast<uint16_t*>(normed.data_ptr<at::BFloat16>());
  for (int64_t r = 0; r < x.numel() / std::max<int64_t>(D, 1); ++r)
    norm_row(s + r * D, w, o + r * D, D, static_cast<float>(eps));
  return {sum, normed};
}

// One head: RMSNorm (when a weight is given) then RoPE, into out.
void norm_rope_head(const uint16_t* x, const uint16_t* weight, const uint16_t* cos, const uint16_t* sin,
                    uint16_t* scratch, uint16_t* out, int64_t D, float eps) {
  if (weight != nullptr) {
    norm_row(x, weight, scratch, D, eps);
    x = scratch;
  }
  rope_head(x, cos, sin, out, D);
}

const uint16_t* bf16_bits_or_null(const c10::optional<at::Tensor>& t, int64_t D) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->numel() == D,
              "q and k norm weights must be contiguous bf16 vectors of head_dim values");
  return reinterpret_cast<const uint16_t*>(t->data_ptr<at::BFloat16>());
}

// One head's bf16 row into an 8-bit cache row, as KVCache.write rounds it: scale = max |x| (at
// least 1e-8) / limit, then x / scale clamped to the limit, rounded half to even (int8) or to
// the nearest e4m3 value (fp8, c10's conversion).
void write_8_bit(const uint16_t* x, at::ScalarType type, uint8_t* out, float* scale, int64_t D) {
  const float limit = type == at::kChar ? 127.0f : 448.0f;
  float peak = 0.0f;
  for (int64_t d = 0; d < D; ++d) peak = std::max(peak, std::fabs(qthink::bf16_to_float(x[d])));
  *scale = std::max(peak, 1e-8f) / limit;
  for (int64_t d = 0; d < D; ++d) {
    const float q = std::clamp(qthink::bf16_to_float(x[d]) / *scale, -limit, limit);
    out[d] = type == at::kChar ? static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(q)))
                               : c10::Float8_e4m3fn(q).x;
  }
}

// A decode step's attention inputs: q [T, H * D], k and v [T, KVH * D] straight from their
// projections; the q and k norms (Qwen3; none for Qwen2), RoPE at each token's cos/sin
// [T, D], and k and v written to the caches [S, KVH, D] at slots [T]: bf16, or int8 / fp8 with
// their scales [S, KVH]. Returns q [T, H, D].
at::Tensor qk_norm_rope_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const c10::optional<at::Tensor>& q_weight, const c10::optional<at::Tensor>& k_weight,
                              double eps, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& k_cache,
                              at::Tensor& v_cache, const at::Tensor& slots, const c10::optional<at::Tensor>& k_scale,
                              const c10::optional<at::Tensor>& v_scale) {
  for (const at::Tensor* t : {&q, &k, &v, &cos, &sin})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() == 2,
                "q, k, v, cos and sin must be contiguous bf16 CPU matrices");
  for (const at::Tensor* t : {&k_cache, &v_cache})
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type() && t->is_contiguous() && t->dim() == 3,
                "the caches must be contiguous [S, KVH, D] of one type");
  const at::ScalarType type = k_cache.scalar_type();
  const bool eight_bit = qthink::cache_format(k_cache, k_scale, v_scale) != qthink::CacheFormat::kBf16;
  const int64_t T = q.size(0), D = cos.size(1), S = k_cache.size(0), KVH = k_cache.size(1);
  TORCH_CHECK(D % 32 == 0 && k_cache.size(2) == D && v_cache.sizes() == k_cache.sizes(),
              "head_dim must be a multiple of 32 and the caches [S, KVH, head_dim]");
  TORCH_CHECK(q.size(1) % D == 0 && k.sizes() == v.sizes() && k.size(0) == T && k.size(1) == KVH * D,
              "q must be [T, H * head_dim], k and v [T, KVH * head_dim]");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.size(0) == T, "cos and sin must be [T, head_dim]");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == T,
              "slots must be T int64 cache slots");
  const int64_t H = q.size(1) / D;
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(slot[t] >= 0 && slot[t] < S, "cache slot out of range");
  const uint16_t* qw = bf16_bits_or_null(q_weight, D);
  const uint16_t* kw = bf16_bits_or_null(k_weight, D);
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  const auto out_bits = [](at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); };
  at::Tensor q_out = at::empty({T, H, D}, q.options());
  std::vector<uint16_t> scratch(D), k_row(D);
  auto bytes = [](at::Tensor& cache) { return static_cast<uint8_t*>(cache.data_ptr()); };
  const float e = static_cast<float>(eps);
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t *c = bits(cos) + t * D, *s = bits(sin) + t * D;
    for (int64_t h = 0; h < H; ++h)
      norm_rope_head(bits(q) + (t * H + h) * D, qw, c, s, scratch.data(), out_bits(q_out) + (t * H + h) * D, D, e);
    for (int64_t h = 0; h < KVH; ++h) {
      const int64_t head = slot[t] * KVH + h, row = head * D;
      const uint16_t* value = bits(v) + (t * KVH + h) * D;
      norm_rope_head(bits(k) + (t * KVH + h) * D, kw, c, s, scratch.data(), k_row.data(), D, e);
      if (eight_bit) {
        write_8_bit(k_row.data(), type, bytes(k_cache) + row, k_scale->data_ptr<float>() + head, D);
        write_8_bit(value, type, bytes(v_cache) + row, v_scale->data_ptr<float>() + head, D);
      } else {
        std::memcpy(out_bits(k_cache) + row, k_row.data(), D * sizeof(uint16_t));
        std::memcpy(out_bits(v_cache) + row, value, D * sizeof(uint16_t));
      }
    }
  }
  return q_out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "qk_norm_rope_cache(Tensor q, Tensor k, Tensor v, Tensor? q_weight, Tensor? k_weight, float eps, Tensor cos, "
      "Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor(c!)? k_scale=None, "
      "Tensor(d!)? v_scale=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("qk_norm_rope_cache", &qk_norm_rope_cache);
}
