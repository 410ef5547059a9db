// The SwiGLU activation of a decode step, silu(gate) * up over bf16 rows, in one call.
//
// torch runs it as two ops (silu, then the product), each a dispatch and a pass over the
// intermediate rows. This rounds as they do: silu in float32, x / (1 + e^-x), rounded to
// bf16; the product of the two bf16 values (exact in float32) rounded to bf16 once.

#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>

#include "bf16_vectors.h"
#include "thread_pool.h"

namespace {

using qthink::narrow;
using qthink::widen;

// Values per task of the thread pool.
constexpr int64_t kChunk = 4096;

// e^x in float32 to about one unit in the last place: x = n ln2 + r with ln2 in two parts
// (Cody-Waite), |r| <= ln2 / 2, e^r from its degree-7 Taylor polynomial, times 2^n.
// Overflows to inf and underflows to 0 as expf does.
inline __m512 exp_ps(__m512 x) {
  const __m512 clamped = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), clamped);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  static constexpr float kCoefficients[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  __m512 p = _mm512_set1_ps(kCoefficients[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kCoefficients[i]));
  return _mm512_scalef_ps(p, n);
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  for (const at::Tensor* t : {&gate, &up})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->is_contiguous(),
                "gate and up must be contiguous bf16 CPU tensors");
  TORCH_CHECK(gate.sizes() == up.sizes(), "gate and up must have one shape");
  at::Tensor out = at::empty_like(gate);
  const auto* g = reinterpret_cast<const uint16_t*>(gate.data_ptr<at::BFloat16>());
  const auto* u = reinterpret_cast<const uint16_t*>(up.data_ptr<at::BFloat16>());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t n = gate.numel();
  const __m512 one = _mm512_set1_ps(1.0f);
  // A verification step's few rows are worth the kernels' threads; chunks of whole vectors.
  qthink::parallel_for((n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * kChunk; i < std::min(n, end * kChunk); i += 16) {
      const __mmask16 mask = n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1;
      const __m512 x = widen(_mm256_maskz_loadu_epi16(mask, g + i));
      const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
      const __m512 product = _mm512_mul_ps(widen(narrow(silu)), widen(_mm256_maskz_loadu_epi16(mask, u + i)));
      _mm256_mask_storeu_epi16(o + i, mask, narrow(product));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) { m.def("silu_mul(Tensor gate, Tensor up) -> Tensor"); }

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) { m.impl("silu_mul", &silu_mul); }
