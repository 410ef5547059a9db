// Where a linear kernel's float results go: an [M, N] output of float or bf16, plus an optional bias.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>

namespace qthink {

// Writes float results into an [M, N] output of float or bf16, adding an optional bias.
struct Output {
  void* data;
  bool is_bf16;
  int64_t n_cols;
  const float* bias;

  // The same output with row m and column n as its origin.
  Output from(int64_t m, int64_t n) const {
    const int64_t offset = m * n_cols + n;
    void* origin = is_bf16 ? static_cast<void*>(static_cast<at::BFloat16*>(data) + offset)
                           : static_cast<void*>(static_cast<float*>(data) + offset);
    return Output{origin, is_bf16, n_cols, bias ? bias + n : nullptr};
  }

  void write(int64_t m, int64_t n, float value) const {
    if (bias) value += bias[n];
    if (is_bf16) {
      static_cast<at::BFloat16*>(data)[m * n_cols + n] = at::BFloat16(value);
    } else {
      static_cast<float*>(data)[m * n_cols + n] = value;
    }
  }

  // values[0..count) (count <= 16) into row m, columns n..n+count.
  void write16(int64_t m, int64_t n, __m512 values, int64_t count) const {
    const __mmask16 mask = count >= 16 ? 0xFFFF : (1u << count) - 1;
    if (bias) values = _mm512_add_ps(values, _mm512_maskz_loadu_ps(mask, bias + n));
    if (is_bf16) {
      _mm256_mask_storeu_epi16(static_cast<at::BFloat16*>(data) + m * n_cols + n, mask,
                               (__m256i)_mm512_cvtneps_pbh(values));
    } else {
      _mm512_mask_storeu_ps(static_cast<float*>(data) + m * n_cols + n, mask, values);
    }
  }
};

}  // namespace qthink
