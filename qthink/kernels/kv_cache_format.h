// The KV cache's formats, as the decode kernels check and read them: bf16, or 8 bits (int8, fp8
// e4m3) with a float32 scale per slot and head.
#pragma once

#include <ATen/ATen.h>

namespace qthink {

enum class CacheFormat { kBf16, kInt8, kFp8 };

// The format of `cache` [S, KVH, D], after checking that the scales [S, KVH] come with an 8-bit
// cache and only with one.
inline CacheFormat cache_format(const at::Tensor& cache, const c10::optional<at::Tensor>& k_scale,
                                const c10::optional<at::Tensor>& v_scale) {
  const at::ScalarType type = cache.scalar_type();
  TORCH_CHECK(type == at::kBFloat16 || type == at::kChar || type == at::kFloat8_e4m3fn,
              "the KV cache must be bf16, int8 or float8_e4m3fn");
  const bool eight_bit = type != at::kBFloat16;
  TORCH_CHECK(k_scale.has_value() == eight_bit && v_scale.has_value() == eight_bit,
              "an int8 or fp8 cache needs k_scale and v_scale, a bf16 cache neither");
  if (!eight_bit) return CacheFormat::kBf16;
  for (const at::Tensor* t : {&*k_scale, &*v_scale})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(0) == cache.size(0) &&
                    t->size(1) == cache.size(1),
                "k_scale and v_scale must be contiguous float32 [S, KVH]");
  return type == at::kChar ? CacheFormat::kInt8 : CacheFormat::kFp8;
}

}  // namespace qthink
