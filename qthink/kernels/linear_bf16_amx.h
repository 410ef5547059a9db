// bf16 linear on AMX tiles, where the CPU has them.
#pragma once

#include <cstdint>
#include <vector>

#include "amx_tiles.h"
#include "linear_output.h"

namespace qthink {

// Weight rows that one AMX tile holds; the tile kernels take whole tiles of rows.
constexpr int64_t kAmxRows = 16;

// True when bf16 linears run on AMX tiles for this K: AMX-BF16 is usable and K is a multiple of 32.
bool amx_bf16_usable(int64_t K);

// Up to 16 activation rows x [M, K] (bf16 bits) in the tiles' layout: [K / 2, M] pairs of inputs.
struct AmxActivations {
  AmxActivations(const uint16_t* x, int64_t M, int64_t K);
  std::vector<uint32_t> pairs;
  int64_t M, K;
};

// The calling thread's tiles shaped for multiply_tiles with M activation rows, while this lives.
AmxTiles bf16_tiles(int64_t M);

// out[m, r] = x[m] . w[n + r] for r < rows (a multiple of 16) on the calling thread, which holds
// bf16_tiles(x.M). A result depends only on its own x and w rows, never on M or on n's neighbours.
void multiply_tiles(const AmxActivations& x, const uint16_t* w, int64_t n, int64_t rows, const Output& out);

// out[m, n] = x[m] . w[n] for every m < M <= 16 and n < N / 16 * 16; x [M, K] and w [N, K] bf16
// bits; on the kernels' threads.
void linear_bf16_amx(const uint16_t* x, const uint16_t* w, int64_t M, int64_t N, int64_t K, const Output& out);

}  // namespace qthink
