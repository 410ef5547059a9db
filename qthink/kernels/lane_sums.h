// Sixteen horizontal sums at once: a tree of 128-bit shuffles and unpacks over 16 vectors.
#pragma once

#include <immintrin.h>

namespace qthink {

constexpr int kLanes = 16;

// The lane of transpose_sums' result that holds input a's sum (and the input whose sum lane l
// holds): the tree below transposes a 4 x 4 grid.
constexpr int transposed(int a) { return 4 * (a % 4) + a / 4; }

// Lane transposed(a) = the sum of a[a]'s 16 lanes, paired as _mm512_reduce_add_ps pairs them
// (lane i with i + 8, then i + 4, i + 2, i + 1), so each sum is the same float: 16 horizontal
// sums in 30 instructions instead of about 120.
inline __m512 transpose_sums(const __m512 (&a)[kLanes]) {
  __m512 halves[8], quarters[4], eighths[2];
  for (int p = 0; p < 8; ++p)
    halves[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int q = 0; q < 4; ++q)
    quarters[q] = _mm512_add_ps(_mm512_shuffle_f32x4(halves[2 * q], halves[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(halves[2 * q], halves[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int s = 0; s < 2; ++s) {
    const __m512d x = _mm512_castps_pd(quarters[2 * s]), y = _mm512_castps_pd(quarters[2 * s + 1]);
    eighths[s] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

}  // namespace qthink
