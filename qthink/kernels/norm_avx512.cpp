// RMSNorm and rotary embedding of a few bf16 rows in one call each, for decode steps.
//
// In torch a bf16 RMSNorm is eight element-wise ops (widen, square, mean, add, rsqrt, scale,
// narrow, weight) and RoPE seven: for one token their dispatch costs far more than the work,
// and a decode step of the 4B model runs 144 norms and 72 RoPEs. These compute the same
// things with the same roundings (each bf16 op of torch's formula rounds once to bf16).

#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>

namespace {

inline __m512 widen(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }

inline __m256i narrow(__m512 v) {
  const __m256bh packed = _mm512_cvtneps_pbh(v);
  return reinterpret_cast<const __m256i&>(packed);
}

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
}
