// bf16 linear on AMX tiles (see linear_bf16_amx.h).
//
// The AVX-512 GEMV runs out of bf16 dot products at about 16 activation rows, so 16 decode
// sequences cost twice the weight reads' time; one AMX tile product does 16 x 16 x 32 of them in
// the time AVX-512 does 16 x 32, and on one row it still streams the weights faster. A weight
// tile is 16 rows of w as they are ([N, K], no repacking) and the activations are the other
// operand, packed once per call, so each result is one tile column: its sum runs over K in the
// same order whatever M is, and a sequence gets the same bits alone or beside 15 others (greedy
// verification relies on that).

#include "linear_bf16_amx.h"

#include <immintrin.h>

#include "thread_pool.h"

namespace qthink {
namespace {

// Weight tiles of one task: 32 rows share each load of the activation tile. More rows at once
// (more concurrent row streams) read memory slower.
constexpr int64_t kTilesPerTask = 2;

// A result tile stored as c[weight row][activation row] into out's columns n .. n + 16.
void write_tile(const float (*c)[16], int64_t M, int64_t n, const Output& out) {
  const __m512i column = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(16));
  for (int64_t m = 0; m < M; ++m) {
    const __m512 values = _mm512_i32gather_ps(_mm512_add_epi32(column, _mm512_set1_epi32(m)), &c[0][0], 4);
    out.write16(m, n, values, kAmxRows);
  }
}

// Weight rows n .. n + 16 TILES against every activation row, into out's columns 0 .. 16 TILES
// (the tile intrinsics take their register numbers as literals).
template <int TILES>
void multiply(const AmxActivations& x, const uint16_t* w, int64_t n, const Output& out) {
  const int64_t K = x.K, stride = K * 2;
  const uint16_t* rows = w + n * K;
  _tile_zero(0);
  if constexpr (TILES > 1) _tile_zero(1);
  for (int64_t k = 0; k < K; k += 32) {
    _tile_loadd(2, x.pairs.data() + k / 2 * x.M, x.M * 4);
    _tile_loadd(3, rows + k, stride);
    _tile_dpbf16ps(0, 3, 2);
    if constexpr (TILES > 1) {
      _tile_loadd(4, rows + kAmxRows * K + k, stride);
      _tile_dpbf16ps(1, 4, 2);
    }
  }
  alignas(64) float c[TILES][kAmxRows][16];
  _tile_stored(0, c[0], 64);
  if constexpr (TILES > 1) _tile_stored(1, c[1], 64);
  for (int t = 0; t < TILES; ++t) write_tile(c[t], x.M, t * kAmxRows, out);
}

}  // namespace

bool amx_bf16_usable(int64_t K) { return K % 32 == 0 && amx_usable(AmxProducts::kBf16); }

AmxActivations::AmxActivations(const uint16_t* x, int64_t M, int64_t K) : pairs(K / 2 * M), M(M), K(K) {
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* row = x + m * K;
    for (int64_t p = 0; p < K / 2; ++p) pairs[p * M + m] = row[2 * p] | (static_cast<uint32_t>(row[2 * p + 1]) << 16);
  }
}

// Results in registers 0-1 and activations in 2 (M columns of 4 bytes), weights in 3-4.
AmxTiles bf16_tiles(int64_t M) {
  return AmxTiles{{kAmxRows, M * 4}, {kAmxRows, M * 4}, {kAmxRows, M * 4}, {kAmxRows, 64}, {kAmxRows, 64}};
}

void multiply_tiles(const AmxActivations& x, const uint16_t* w, int64_t n, int64_t rows, const Output& out) {
  constexpr int64_t task_rows = kTilesPerTask * kAmxRows;
  int64_t r = 0;
  for (; r + task_rows <= rows; r += task_rows) multiply<kTilesPerTask>(x, w, n + r, out.from(0, r));
  for (; r < rows; r += kAmxRows) multiply<1>(x, w, n + r, out.from(0, r));
}

void linear_bf16_amx(const uint16_t* x, const uint16_t* w, int64_t M, int64_t N, int64_t K, const Output& out) {
  const AmxActivations activations(x, M, K);
  constexpr int64_t task_rows = kTilesPerTask * kAmxRows;
  const int64_t tiled = N / kAmxRows * kAmxRows;
  parallel_for((tiled + task_rows - 1) / task_rows, 1, [&](int64_t begin, int64_t end) {
    const AmxTiles tiles = bf16_tiles(M);
    const int64_t n = begin * task_rows;
    multiply_tiles(activations, w, n, std::min(tiled, end * task_rows) - n, out.from(0, n));
  });
}

}  // namespace qthink
