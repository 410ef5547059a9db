// Linear kernels for AVX-512 BF16/VNNI CPUs: bf16, int8 and int4 weights.
//
// Batch-1 decode reads every weight once per token, so the small-M kernels (GEMV) are built
// to stream weight rows at memory bandwidth: a few rows at a time, a few activation rows
// reused per loaded weight vector, chunks of rows taken by the threads of thread_pool.h. For
// large M the int4 kernel is a GEMM (up to 6 activation rows per weight load, int8 dot products
// at twice bf16's rate); int8 weights are dequantized tile by tile into torch's GEMM.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "bf16_vectors.h"
#include "linear_bf16_amx.h"
#include "linear_output.h"
#include "thread_pool.h"

namespace {

using qthink::Output;

constexpr int64_t kRowsPerTask = 16;

// 16 bf16 values (raw bits) widened to float32.
inline __m512 bf16x16_to_floats(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

template <typename V, int MB, int NB>
inline void set_all(V (&values)[MB][NB], V value) {
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) values[i][j] = value;
}

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh>(v); }

// Runs kernel.block<NB, MB>(n, m, res) over all rows and activation rows: NB weight rows
// share each activation load, MB activation rows share each weight load.
template <int NB, int MB_MAX, typename Kernel>
void run_blocks(const Kernel& kernel, int64_t M, int64_t N, const Output& out) {
  const int64_t tasks = (N + NB - 1) / NB;
  qthink::parallel_for(tasks, kRowsPerTask / NB, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task * NB;
      const int64_t rows = std::min<int64_t>(NB, N - n);
      for (int64_t m = 0; m < M;) {
        const int64_t left = M - m;
        if (MB_MAX >= 4 && left >= 4) {
          kernel.template run<NB, 4>(n, m, rows, out);
          m += 4;
        } else if (MB_MAX >= 2 && left >= 2) {
          kernel.template run<NB, 2>(n, m, rows, out);
          m += 2;
        } else {
          kernel.template run<NB, 1>(n, m, rows, out);
          m += 1;
        }
      }
    }
  });
}

// Shared dispatch: full blocks of NB rows, the tail row by row.
template <typename Derived>
struct BlockKernel {
  template <int NB, int MB>
  void run(int64_t n, int64_t m, int64_t rows, const Output& out) const {
    const auto& self = static_cast<const Derived&>(*this);
    if (rows == NB) {
      float res[MB][NB];
      self.template block<NB, MB>(n, m, res);
      for (int i = 0; i < MB; ++i)
        for (int j = 0; j < NB; ++j) out.write(m + i, n + j, res[i][j]);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        float res[MB][1];
        self.template block<1, MB>(n + r, m, res);
        for (int i = 0; i < MB; ++i) out.write(m + i, n + r, res[i][0]);
      }
    }
  }
};

struct Bf16Kernel : BlockKernel<Bf16Kernel> {
  const uint16_t* w;  // [N, K] bf16
  const uint16_t* x;  // [M, K] bf16
  int64_t K;

  template <int NB, int MB>
  void block(int64_t n, int64_t m, float (*res)[NB]) const {
    __m512 acc[MB][NB];
    set_all(acc, _mm512_setzero_ps());
    const uint16_t* rows = w + n * K;
    const uint16_t* xs = x + m * K;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512i wv[NB];
      for (int j = 0; j < NB; ++j) {
        _mm_prefetch((const char*)(rows + (j + NB) * K + k), _MM_HINT_T0);
        wv[j] = _mm512_loadu_si512(rows + j * K + k);
      }
      for (int i = 0; i < MB; ++i) {
        const __m512i xv = _mm512_loadu_si512(xs + i * K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(wv[j]), as_bh(xv));
      }
    }
    if (k < K) {
      const __mmask32 mask = (1u << (K - k)) - 1;
      for (int j = 0; j < NB; ++j) {
        const __m512i wv = _mm512_maskz_loadu_epi16(mask, rows + j * K + k);
        for (int i = 0; i < MB; ++i) {
          const __m512i xv = _mm512_maskz_loadu_epi16(mask, xs + i * K + k);
          acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(wv), as_bh(xv));
        }
      }
    }
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) res[i][j] = _mm512_reduce_add_ps(acc[i][j]);
  }
};

// Activation rows of one bf16 pass: every row up to kBf16MaxPassRows (a verification step's
// k + 1 tokens), else the fewest passes of near-equal size. A task's weight rows are read from
// memory once and stay in L1/L2 for its later passes.
constexpr int64_t kBf16MaxPassRows = 8;

// Weight rows per bf16 task: MB * NB accumulators, NB weight vectors and one activation vector
// must fit the 32 zmm registers.
constexpr int bf16_rows_per_block(int64_t pass_rows) { return pass_rows <= 6 ? 4 : 3; }

template <int NB>
void run_bf16_pass(const Bf16Kernel& kernel, int64_t mb, int64_t n, int64_t m, int64_t rows, const Output& out) {
  switch (mb) {
    case 1: return kernel.run<NB, 1>(n, m, rows, out);
    case 2: return kernel.run<NB, 2>(n, m, rows, out);
    case 3: return kernel.run<NB, 3>(n, m, rows, out);
    case 4: return kernel.run<NB, 4>(n, m, rows, out);
    case 5: return kernel.run<NB, 5>(n, m, rows, out);
    case 6: return kernel.run<NB, 6>(n, m, rows, out);
    case 7: return kernel.run<NB, 7>(n, m, rows, out);
    default: return kernel.run<NB, 8>(n, m, rows, out);
  }
}

template <int NB>
void run_bf16_tasks(const Bf16Kernel& kernel, int64_t M, int64_t N, int64_t pass_rows, const Output& out) {
  const int64_t tasks = (N + NB - 1) / NB;
  qthink::parallel_for(tasks, std::max<int64_t>(1, kRowsPerTask / NB), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task * NB;
      const int64_t rows = std::min<int64_t>(NB, N - n);
      for (int64_t m = 0; m < M; m += pass_rows) run_bf16_pass<NB>(kernel, std::min(pass_rows, M - m), n, m, rows, out);
    }
  });
}

// x [M, K] times w [N, K]^T with each weight vector loaded once per pass over up to 8 activation
// rows: for M <= 8 the weights stream once, and M tokens cost little more than one.
void run_bf16_blocks(const Bf16Kernel& kernel, int64_t M, int64_t N, const Output& out) {
  const int64_t passes = (M + kBf16MaxPassRows - 1) / kBf16MaxPassRows;
  const int64_t pass_rows = (M + passes - 1) / passes;
  if (bf16_rows_per_block(pass_rows) == 4) {
    run_bf16_tasks<4>(kernel, M, N, pass_rows, out);
  } else {
    run_bf16_tasks<3>(kernel, M, N, pass_rows, out);
  }
}

// int4 weights in blocks of 32 rows (int4_kernel_layout in qthink/model/quant.py): in the
// block's 64-byte vector t, dword lane r holds weights 4t..4t+3 of row r in its low nibbles and
// of row r + 16 in its high nibbles. One vpdpbusd of a masked vector against an activation
// dword broadcast to every lane makes 4 products for each of 16 rows, so one load, two masks and
// two dot products cover 128 weights, a group's scale and offset apply to 16 rows at once, and
// no horizontal sum is left. The block is one contiguous stream. Scales and offsets are bf16
// [blocks, groups, 32]; a dequantized weight is q * scale + offset.
constexpr int64_t kInt4BlockRows = 32;
// Activation rows per pass over a block: each loaded weight vector meets up to 6 of them (a
// GEMM for large M). More would not leave the accumulators their registers.
constexpr int64_t kInt4MaxPassRows = 6;
// int4 and int8: activation rows from which a pass runs on AMX-INT8 tiles where they are usable
// (one row streams a little faster through VNNI), and the most rows a pass takes then (one
// tile's rows).
constexpr int64_t kTileMinRows = 2;
constexpr int64_t kTileMaxPassRows = 16;
// The most activation rows of one pass over M rows: a tile's on tiles, else vnni_rows.
constexpr int64_t max_pass_rows(bool tiles, int64_t M, int64_t vnni_rows) {
  return tiles && M >= kTileMinRows ? kTileMaxPassRows : vnni_rows;
}
bool int4_tiles_usable(int64_t G) { return G % 64 == 0 && qthink::amx_usable(qthink::AmxProducts::kInt8); }
// For large M a task takes this many blocks of 32 rows (their weights stay in L2) and runs every
// pass of activation rows over them, so the activations are read once per 4 blocks.
constexpr int64_t kLaneBlocksPerTask = 4;

// acc + the dot products of w's 4-byte lanes (unsigned) with the 4 int8 at x (every lane).
inline __m512i dot_broadcast(__m512i acc, __m512i w, const int8_t* x) {
  // The activation dword as an embedded broadcast operand: a plain load, no shuffle.
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(x)));
  return acc;
}

// How far ahead of its loads the int4 and int8 kernels fetch their weights (a block's weights are
// contiguous): the hardware prefetcher alone left one core's stream well short of the bandwidth.
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch_ahead(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0); }

inline __m512i load_vector(const uint8_t* p) {
  __m512i v = _mm512_loadu_si512(p);
  // Keeps the vector in a register: otherwise both masks below load it again from memory, and
  // loads are what this loop runs short of.
  asm("" : "+v"(v));
  return v;
}

struct Int4Kernel {
  const uint8_t* w;        // [blocks * 32, K / 2], int4_kernel_layout
  const uint16_t* scale;   // [blocks, K / G, 32] bf16
  const uint16_t* offset;  // [blocks, K / G, 32] bf16
  const int8_t* xq;        // [M, K]
  const float* x_scale;    // [M, K / G]
  const float* x_sum;      // [M, K / G]
  int64_t K;
  int64_t G;
  bool tiles;  // passes of kTileMinRows rows or more run on AMX tiles (int4_tiles_usable)

  // Rows 32 b .. 32 b + 31 of the output for activation rows m .. m + MB - 1, into `out`.
  template <int MB>
  void block(int64_t b, int64_t m, int64_t N, const Output& out) const {
    // One or two rows: two accumulators per half (even and odd vectors) hide the dot products'
    // latency; from three rows on the rows do, and the registers go to the rows.
    constexpr int S = MB < 3 ? 2 : 1;
    const int64_t groups = K / G, vectors = G / 4;
    const __m512i low = _mm512_set1_epi8(0x0F);
    const uint8_t* weights = w + b * (K / 4) * 64;
    const uint16_t* scales = scale + b * groups * kInt4BlockRows;
    const uint16_t* offsets = offset + b * groups * kInt4BlockRows;
    // Rows 0..15 and 16..31 of the block, per activation row.
    __m512 top[MB], bottom[MB];
    for (int i = 0; i < MB; ++i) top[i] = bottom[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512i lo[MB][S], hi[MB][S];
      set_all(lo, _mm512_setzero_si512());
      set_all(hi, _mm512_setzero_si512());
      const uint8_t* wg = weights + g * vectors * 64;
      const int8_t* xg = xq + m * K + g * G;
      for (int64_t t = 0; t < vectors; t += 2) {
        prefetch_ahead(wg + t * 64);
        prefetch_ahead(wg + t * 64 + 64);
        const __m512i v0 = load_vector(wg + t * 64), v1 = load_vector(wg + t * 64 + 64);
        const __m512i l0 = _mm512_and_si512(v0, low), l1 = _mm512_and_si512(v1, low);
        // The high nibbles stay in place, 16 times their value: one shift per group undoes it.
        const __m512i h0 = _mm512_andnot_si512(low, v0), h1 = _mm512_andnot_si512(low, v1);
        for (int i = 0; i < MB; ++i) {
          const int8_t* x = xg + i * K + t * 4;
          lo[i][0] = dot_broadcast(lo[i][0], l0, x);
          hi[i][0] = dot_broadcast(hi[i][0], h0, x);
          lo[i][S - 1] = dot_broadcast(lo[i][S - 1], l1, x + 4);
          hi[i][S - 1] = dot_broadcast(hi[i][S - 1], h1, x + 4);
        }
      }
      const GroupScales scaled(scales + g * kInt4BlockRows, offsets + g * kInt4BlockRows);
      for (int i = 0; i < MB; ++i) {
        __m512i q_top = lo[i][0], q_bottom = hi[i][0];
        if (S == 2) {
          q_top = _mm512_add_epi32(q_top, lo[i][S - 1]);
          q_bottom = _mm512_add_epi32(q_bottom, hi[i][S - 1]);
        }
        add_group(scaled, m + i, g, q_top, q_bottom, top[i], bottom[i]);
      }
    }
    write_block(b, m, MB, N, top, bottom, out);
  }

  // A group's scales and offsets of the block's rows 0-15 (top) and 16-31 (bottom) as floats.
  struct GroupScales {
    __m512 s_top, s_bottom, o_top, o_bottom;
    GroupScales(const uint16_t* s, const uint16_t* o)
        : s_top(bf16x16_to_floats(s)),
          s_bottom(bf16x16_to_floats(s + 16)),
          o_top(bf16x16_to_floats(o)),
          o_bottom(bf16x16_to_floats(o + 16)) {}
  };

  // Adds group g of activation row m to its float sums: the exact integer dot products with the
  // low nibbles (q_top) and with the high nibbles in place (q_bottom, 16 times theirs), scaled.
  // Both kernels end here, so they agree bit for bit.
  void add_group(const GroupScales& scaled, int64_t m, int64_t g, __m512i q_top, __m512i q_bottom, __m512& top,
                 __m512& bottom) const {
    const int64_t groups = K / G;
    const __m512 step = _mm512_set1_ps(x_scale[m * groups + g]);
    const __m512 sum = _mm512_set1_ps(x_sum[m * groups + g]);
    q_bottom = _mm512_srai_epi32(q_bottom, 4);
    top = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_top), _mm512_mul_ps(scaled.s_top, step), top);
    bottom = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_bottom), _mm512_mul_ps(scaled.s_bottom, step), bottom);
    top = _mm512_fmadd_ps(scaled.o_top, sum, top);
    bottom = _mm512_fmadd_ps(scaled.o_bottom, sum, bottom);
  }

  void write_block(int64_t b, int64_t m, int64_t mb, int64_t N, const __m512* top, const __m512* bottom,
                   const Output& out) const {
    const int64_t n = b * kInt4BlockRows, rows = std::min(kInt4BlockRows, N - n);
    for (int64_t i = 0; i < mb; ++i) {
      out.write16(m + i, n, top[i], rows);
      if (rows > 16) out.write16(m + i, n + 16, bottom[i], rows - 16);
    }
  }

  // block<MB>'s results for mb <= 16 activation rows at once on AMX-INT8 tiles (shaped here, kept
  // for the next pass, released by run_lane_blocks). Per 64 inputs,
  // 16 of the block's vectors are a tile as they are (column r: row r's low nibble plus 16 times
  // row r + 16's) and, masked, a tile of the high nibbles alone; two signed-by-unsigned tile
  // products against the activations give both integer sums, exact, so the float steps after
  // them (add_group) see block's values.
  void block_tiles(int64_t b, int64_t m, int64_t mb, int64_t N, const Output& out) const {
    qthink::shape_tiles({{mb, 64}, {mb, 64}, {mb, 64}, {16, 64}, {16, 64}});  // sums 0-1, x 2, w 3-4
    const int64_t groups = K / G, vectors = G / 4;
    const __m512i high = _mm512_set1_epi8(static_cast<char>(0xF0));
    const uint8_t* weights = w + b * (K / 4) * 64;
    alignas(64) uint8_t masked[16 * 64];
    alignas(64) int32_t raw_sums[qthink::kAmxRows][16], high_sums[qthink::kAmxRows][16];
    __m512 top[qthink::kAmxRows], bottom[qthink::kAmxRows];
    for (int64_t i = 0; i < mb; ++i) top[i] = bottom[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      _tile_zero(0);
      _tile_zero(1);
      for (int64_t t = 0; t < vectors; t += 16) {
        const uint8_t* wv = weights + (g * vectors + t) * 64;
        for (int v = 0; v < 16; ++v) {
          prefetch_ahead(wv + v * 64);
          _mm512_store_si512(masked + v * 64, _mm512_and_si512(_mm512_loadu_si512(wv + v * 64), high));
        }
        _tile_loadd(2, xq + m * K + g * G + t * 4, K);
        _tile_loadd(3, wv, 64);
        _tile_loadd(4, masked, 64);
        _tile_dpbsud(0, 2, 3);
        _tile_dpbsud(1, 2, 4);
      }
      _tile_stored(0, raw_sums, 64);
      _tile_stored(1, high_sums, 64);
      const GroupScales scaled(scale + (b * groups + g) * kInt4BlockRows, offset + (b * groups + g) * kInt4BlockRows);
      for (int64_t i = 0; i < mb; ++i) {
        const __m512i raw = _mm512_load_si512(raw_sums[i]), high_part = _mm512_load_si512(high_sums[i]);
        add_group(scaled, m + i, g, _mm512_sub_epi32(raw, high_part), high_part, top[i], bottom[i]);
      }
    }
    write_block(b, m, mb, N, top, bottom, out);
  }

  void pass(int64_t mb, int64_t b, int64_t m, int64_t N, const Output& out) const {
    if (mb >= kTileMinRows && tiles) return block_tiles(b, m, mb, N, out);
    switch (mb) {
      case 1: return block<1>(b, m, N, out);
      case 2: return block<2>(b, m, N, out);
      case 3: return block<3>(b, m, N, out);
      case 4: return block<4>(b, m, N, out);
      case 5: return block<5>(b, m, N, out);
      default: return block<6>(b, m, N, out);
    }
  }
};

// One weight matrix of a call: its kernel, its output and its number of rows.
template <typename Kernel>
struct LanePart {
  Kernel kernel;
  Output out;
  int64_t N;
};

// Every output row of kernels whose blocks hold `block_rows` rows in vector lanes: tasks of
// blocks taken by the pool's threads, each running passes of near-equal size (at most
// `max_pass_rows` activation rows, kernel.pass) over its blocks. Several matrices that share
// their input (q, k and v; gate and up) are one job: one wake-up and one wait for the threads.
template <typename Kernel>
void run_lane_blocks(const std::vector<LanePart<Kernel>>& parts, int64_t M, int64_t block_rows,
                     int64_t max_pass_rows) {
  const int64_t per_task = M > max_pass_rows ? kLaneBlocksPerTask * kInt4BlockRows / block_rows : 1;
  const int64_t passes = (M + max_pass_rows - 1) / max_pass_rows;
  const int64_t pass_rows = (M + passes - 1) / passes;
  std::vector<int64_t> first_task{0};  // of each part, then the total
  for (const LanePart<Kernel>& part : parts) {
    const int64_t blocks = (part.N + block_rows - 1) / block_rows;
    first_task.push_back(first_task.back() + (blocks + per_task - 1) / per_task);
  }
  qthink::parallel_for(first_task.back(), 1, [&](int64_t begin, int64_t end) {
    size_t p = 0;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[p + 1]) ++p;
      const LanePart<Kernel>& part = parts[p];
      const int64_t blocks = (part.N + block_rows - 1) / block_rows;
      const int64_t first = (task - first_task[p]) * per_task, last = std::min(blocks, first + per_task);
      for (int64_t m = 0; m < M; m += pass_rows)
        for (int64_t b = first; b < last; ++b) part.kernel.pass(std::min(pass_rows, M - m), b, m, part.N, part.out);
    }
    qthink::release_tiles();  // if a pass shaped them
  });
}

// int8 weights in blocks of 16 rows (int8_kernel_layout in qthink/model/quant.py): in the
// block's 64-byte vector t, dword lane r holds weights 4t..4t+3 of row r. As for int4, one
// vpdpbusd against a broadcast activation dword makes 4 products for each of 16 rows and no
// horizontal sum is left; the row scales ([N] bf16) apply to 16 rows at once.
constexpr int64_t kInt8BlockRows = 16;
constexpr int64_t kInt8MaxPassRows = 6;

// The row scales of rows n.. (at most 16, `rows`) as floats.
inline __m512 int8_row_scales(const uint16_t* scale, int64_t n, int64_t rows) {
  const __mmask16 mask = rows >= 16 ? 0xFFFF : (1u << rows) - 1;
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, scale + n)), 16));
}

// int8 weights against int8 activations (one scale per group of G inputs), in one or two
// levels: with two, x ~ s1 q1 + s2 q2 (q2 the rounded remainder x - s1 q1), and each weight
// vector, loaded once, meets both, so the near-exact result costs the same weight bytes.
// vpdpbusd multiplies unsigned by signed bytes, so the weights enter as w + 128 (one XOR) and
// 128 x the int8 activation sum comes off again (x_correction, per activation row, already
// multiplied out by the group scales of every level).
struct Int8Kernel {
  const int8_t* w;            // [blocks * 16, K], int8_kernel_layout
  const uint16_t* scale;      // [N] bf16
  const int8_t* xq[2];         // per level: [M, K]
  const float* x_scale[2];     // per level: [M, K / G]
  const int32_t* x_int_sum[2];  // per level: [M, K / G], the sums of the int8 activations
  const float* x_correction;   // [M]
  int64_t K;
  int64_t G;
  int levels;  // 1 or 2
  bool tiles;  // passes of kTileMinRows rows or more run on AMX tiles

  template <int MB, int L>
  void block(int64_t b, int64_t m, int64_t N, const Output& out) const {
    // Accumulators per level and activation row: enough independent chains to hide the dot
    // products' latency (one dot product per vector, row and level).
    constexpr int S = MB == 1 ? 4 : MB == 2 ? 2 : 1;
    const int64_t groups = K / G, vectors = G / 4;
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const uint8_t* weights = reinterpret_cast<const uint8_t*>(w) + b * (K / 4) * 64;
    __m512 total[MB];
    for (int i = 0; i < MB; ++i) total[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512i acc[L * MB][S];
      set_all(acc, _mm512_setzero_si512());
      const uint8_t* wg = weights + g * vectors * 64;
      for (int64_t t = 0; t < vectors; t += 4) {  // G is 64 or 128: 16 or 32 vectors
        __m512i v[4];
        for (int u = 0; u < 4; ++u) {
          prefetch_ahead(wg + (t + u) * 64);
          v[u] = _mm512_xor_si512(load_vector(wg + (t + u) * 64), flip);
        }
        for (int l = 0; l < L; ++l)
          for (int i = 0; i < MB; ++i) {
            const int8_t* x = xq[l] + (m + i) * K + g * G + t * 4;
            __m512i(&chains)[S] = acc[l * MB + i];
            for (int u = 0; u < 4; ++u) chains[u % S] = dot_broadcast(chains[u % S], v[u], x + u * 4);
          }
      }
      for (int l = 0; l < L; ++l)
        for (int i = 0; i < MB; ++i) {
          __m512i q = acc[l * MB + i][0];
          for (int u = 1; u < S; ++u) q = _mm512_add_epi32(q, acc[l * MB + i][u]);
          const __m512 step = _mm512_set1_ps(x_scale[l][(m + i) * groups + g]);
          total[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), step, total[i]);
        }
    }
    write_block(b, m, MB, N, total, out);
  }

  // block<MB, L>'s results for mb <= 16 activation rows at once on AMX-INT8 tiles (shaped here,
  // kept for the next pass, released by run_lane_blocks). 16 of the block's vectors are a tile as
  // they are, and a signed tile product with the activations gives w . x exactly; adding
  // 128 x sum(x) (exact too) gives block's integer sums, so the float steps after them are block's.
  template <int L>
  void block_tiles(int64_t b, int64_t m, int64_t mb, int64_t N, const Output& out) const {
    qthink::shape_tiles({{mb, 64}, {mb, 64}, {mb, 64}, {16, 64}, {mb, 64}});  // sums 0-1, x 2 and 4, w 3
    const int64_t groups = K / G, vectors = G / 4;
    const uint8_t* weights = reinterpret_cast<const uint8_t*>(w) + b * (K / 4) * 64;
    alignas(64) int32_t sums[L][qthink::kAmxRows][16];
    __m512 total[qthink::kAmxRows];
    for (int64_t i = 0; i < mb; ++i) total[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      _tile_zero(0);
      if constexpr (L == 2) _tile_zero(1);
      for (int64_t t = 0; t < vectors; t += 16) {
        const uint8_t* wv = weights + (g * vectors + t) * 64;
        for (int v = 0; v < 16; ++v) prefetch_ahead(wv + v * 64);
        _tile_loadd(3, wv, 64);
        _tile_loadd(2, xq[0] + m * K + g * G + t * 4, K);
        _tile_dpbssd(0, 2, 3);
        if constexpr (L == 2) {
          _tile_loadd(4, xq[1] + m * K + g * G + t * 4, K);
          _tile_dpbssd(1, 4, 3);
        }
      }
      _tile_stored(0, sums[0], 64);
      if constexpr (L == 2) _tile_stored(1, sums[L - 1], 64);
      for (int l = 0; l < L; ++l)
        for (int64_t i = 0; i < mb; ++i) {
          const int64_t r = (m + i) * groups + g;
          const __m512i q = _mm512_add_epi32(_mm512_load_si512(sums[l][i]), _mm512_set1_epi32(128 * x_int_sum[l][r]));
          total[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(x_scale[l][r]), total[i]);
        }
    }
    write_block(b, m, mb, N, total, out);
  }

  void write_block(int64_t b, int64_t m, int64_t mb, int64_t N, const __m512* total, const Output& out) const {
    const int64_t n = b * kInt8BlockRows, rows = std::min(kInt8BlockRows, N - n);
    const __m512 s = int8_row_scales(scale, n, rows);
    for (int64_t i = 0; i < mb; ++i)
      out.write16(m + i, n, _mm512_mul_ps(_mm512_sub_ps(total[i], _mm512_set1_ps(x_correction[m + i])), s), rows);
  }

  template <int L>
  void pass_levels(int64_t mb, int64_t b, int64_t m, int64_t N, const Output& out) const {
    if (mb >= kTileMinRows && tiles) return block_tiles<L>(b, m, mb, N, out);
    switch (mb) {
      case 1: return block<1, L>(b, m, N, out);
      case 2: return block<2, L>(b, m, N, out);
      case 3: return block<3, L>(b, m, N, out);
      case 4: return block<4, L>(b, m, N, out);
      case 5: return block<5, L>(b, m, N, out);
      default: return block<6, L>(b, m, N, out);
    }
  }

  void pass(int64_t mb, int64_t b, int64_t m, int64_t N, const Output& out) const {
    return levels == 2 ? pass_levels<2>(mb, b, m, N, out) : pass_levels<1>(mb, b, m, N, out);
  }
};

struct QuantizedRows {
  at::Tensor values;    // int8 [M, K]
  at::Tensor scales;    // float [M, K / G]
  at::Tensor sums;      // float [M, K / G]: sums of the activations
  at::Tensor int_sums;  // int32 [M, K / G]: sums of their int8 values
};

inline __m512 load_floats(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load_floats(const at::BFloat16* p) { return bf16x16_to_floats(reinterpret_cast<const uint16_t*>(p)); }

template <typename T>
void quantize_group(const T* values, int64_t G, int8_t* dst, float* scale, float* sum, int32_t* int_sum) {
  __m512 largest = _mm512_setzero_ps(), total = _mm512_setzero_ps();
  for (int64_t k = 0; k < G; k += 16) {
    const __m512 v = load_floats(values + k);
    largest = _mm512_max_ps(largest, _mm512_abs_ps(v));
    total = _mm512_add_ps(total, v);
  }
  const float peak = _mm512_reduce_max_ps(largest);
  *scale = peak / 127.0f;
  *sum = _mm512_reduce_add_ps(total);
  const __m512 inverse = _mm512_set1_ps(peak > 0.0f ? 127.0f / peak : 0.0f);
  __m512i ints = _mm512_setzero_si512();
  for (int64_t k = 0; k < G; k += 16) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(load_floats(values + k), inverse));  // round to nearest
    ints = _mm512_add_epi32(ints, q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtepi32_epi8(q));
  }
  *int_sum = _mm512_reduce_add_epi32(ints);
}

// Activations for the VNNI kernels: symmetric int8 with one scale per row and group of G,
// plus each group's exact float sum (int4 offsets multiply it) and the sum of its int8 values.
QuantizedRows quantize_rows(const at::Tensor& x, int64_t G) {
  const int64_t M = x.size(0), K = x.size(1), groups = K / G;
  const at::Tensor xc = x.contiguous();
  const auto floats = at::TensorOptions().dtype(at::kFloat);
  QuantizedRows rows{at::empty({M, K}, floats.dtype(at::kChar)), at::empty({M, groups}, floats),
                     at::empty({M, groups}, floats), at::empty({M, groups}, floats.dtype(at::kInt))};
  int8_t* dst = rows.values.data_ptr<int8_t>();
  float* scales = rows.scales.data_ptr<float>();
  float* sums = rows.sums.data_ptr<float>();
  int32_t* int_sums = rows.int_sums.data_ptr<int32_t>();
  const bool is_bf16 = xc.scalar_type() == at::kBFloat16;
  const void* values = xc.data_ptr();
  // Many rows (a prefill) are shared among the kernels' threads; a decode row stays on this one.
  qthink::parallel_for(M * groups, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (is_bf16) {
        quantize_group(static_cast<const at::BFloat16*>(values) + r * G, G, dst + r * G, scales + r, sums + r,
                       int_sums + r);
      } else {
        quantize_group(static_cast<const float*>(values) + r * G, G, dst + r * G, scales + r, sums + r,
                       int_sums + r);
      }
    }
  });
  return rows;
}

Output make_output(const at::Tensor& out, const c10::optional<at::Tensor>& bias) {
  const float* bias_data = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out.size(1),
                "bias must be a contiguous float32 vector of ", out.size(1), " values");
    bias_data = bias->data_ptr<float>();
  }
  return Output{out.data_ptr(), out.scalar_type() == at::kBFloat16, out.size(1), bias_data};
}

void check_input(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == K, "x must be a CPU [M, ", K, "] tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
}

const uint16_t* bf16_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.is_contiguous(), "w must be contiguous bf16 [N, K]");
  check_input(x, w.size(1));
  const at::Tensor xb = x.to(at::kBFloat16).contiguous();
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  const Output output = make_output(out, bias);
  Bf16Kernel kernel;
  kernel.w = bf16_bits(w);
  kernel.x = bf16_bits(xb);
  kernel.K = K;
  if (!qthink::amx_bf16_usable(K)) {
    run_bf16_blocks(kernel, M, N, output);
    return out;
  }
  // AMX for whole tiles of 16 weight rows, 16 activation rows at a time; AVX-512 for the rest.
  const int64_t tiled = N / qthink::kAmxRows * qthink::kAmxRows;
  for (int64_t m = 0; m < M; m += qthink::kAmxRows) {
    const int64_t rows = std::min(qthink::kAmxRows, M - m);
    qthink::linear_bf16_amx(kernel.x + m * K, kernel.w, rows, tiled, K, output.from(m, 0));
  }
  if (tiled < N) {
    kernel.w += tiled * K;
    run_bf16_blocks(kernel, M, N - tiled, output.from(0, tiled));
  }
  return out;
}

// Returns N, the number of output rows (the weight has them rounded up to 16).
int64_t check_int8(const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.dim() == 1,
              "scale must be contiguous bf16 [N]");
  const int64_t N = scale.size(0);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous() && w.size(1) % 64 == 0 &&
                  w.size(0) == (N + kInt8BlockRows - 1) / kInt8BlockRows * kInt8BlockRows,
              "w must be contiguous int8 [N rounded up to 16, K] (int8_kernel_layout), K a multiple of 64");
  return N;
}

// The VNNI kernel with int8 activations per group of 128 (or of 64 where 128 does not divide
// K), for any M, over one or more weight matrices that share the input x (rounded once).
// `activation_levels` 2 adds the rounded remainder as a second level, near exact (error ~1/127
// of one level's): the output layer, whose logits are sampled from directly.
std::vector<at::Tensor> int8_linears(const at::Tensor& rows, at::TensorList w, at::TensorList scale,
                                     const std::vector<c10::optional<at::Tensor>>& bias, int64_t activation_levels) {
  const at::Tensor x = rows.contiguous();
  TORCH_CHECK(activation_levels == 1 || activation_levels == 2, "activation_levels must be 1 or 2, got ",
              activation_levels);
  TORCH_CHECK(!w.empty() && scale.size() == w.size() && bias.size() == w.size(),
              "w, scale and bias must be lists of one length");
  const int64_t K = w[0].size(1), M = x.size(0);
  check_input(x, K);
  const int64_t G = K % 128 == 0 ? 128 : 64, groups = K / G;
  std::vector<QuantizedRows> levels{quantize_rows(x, G)};
  if (activation_levels == 2) {
    const QuantizedRows& first = levels[0];
    const at::Tensor rounded = first.values.to(at::kFloat).view({M, groups, G}) * first.scales.unsqueeze(-1);
    levels.push_back(quantize_rows(x.to(at::kFloat).view({M, groups, G}).sub(rounded).view({M, K}), G));
  }
  // 128 x sum over levels and groups of (group scale x sum of the group's int8 activations), per row.
  std::vector<float> correction(M, 0.0f);
  Int8Kernel kernel;
  for (size_t l = 0; l < levels.size(); ++l) {
    const float* scales = levels[l].scales.data_ptr<float>();
    const int32_t* int_sums = levels[l].int_sums.data_ptr<int32_t>();
    for (int64_t r = 0; r < M; ++r)
      for (int64_t g = 0; g < groups; ++g) correction[r] += 128.0f * scales[r * groups + g] * int_sums[r * groups + g];
    kernel.xq[l] = levels[l].values.data_ptr<int8_t>();
    kernel.x_scale[l] = scales;
    kernel.x_int_sum[l] = int_sums;
  }
  kernel.x_correction = correction.data();
  kernel.K = K;
  kernel.G = G;
  kernel.levels = static_cast<int>(activation_levels);
  kernel.tiles = qthink::amx_usable(qthink::AmxProducts::kInt8);
  std::vector<at::Tensor> outs;
  std::vector<LanePart<Int8Kernel>> parts;
  for (size_t p = 0; p < w.size(); ++p) {
    const int64_t N = check_int8(w[p], scale[p]);
    TORCH_CHECK(w[p].size(1) == K, "every w must have K = ", K, " inputs");
    outs.push_back(at::empty({M, N}, x.options()));
    kernel.w = w[p].data_ptr<int8_t>();
    kernel.scale = bf16_bits(scale[p]);
    parts.push_back({kernel, make_output(outs.back(), bias[p]), N});
  }
  run_lane_blocks(parts, M, kInt8BlockRows, max_pass_rows(kernel.tiles, M, kInt8MaxPassRows));
  return outs;
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias, int64_t activation_levels) {
  return int8_linears(x, w, scale, {bias}, activation_levels)[0];
}

// x times each of several int8 weights (one call for q, k and v, or gate and up).
std::vector<at::Tensor> linear_int8_many(const at::Tensor& x, at::TensorList w, at::TensorList scale,
                                         const c10::List<c10::optional<at::Tensor>>& bias,
                                         int64_t activation_levels) {
  return int8_linears(x, w, scale, {bias.begin(), bias.end()}, activation_levels);
}

// int4 weights in int4_kernel_layout for `N` output rows, groups of G (a multiple of 128).
void check_int4(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& offset, int64_t N, int64_t K,
                int64_t G) {
  TORCH_CHECK(G > 0 && G % 128 == 0 && K % G == 0, "int4 needs group_size a multiple of 128 dividing K; got ", G,
              " and K=", K);
  const int64_t blocks = (N + kInt4BlockRows - 1) / kInt4BlockRows;
  TORCH_CHECK(N > 0 && w.scalar_type() == at::kByte && w.dim() == 2 && w.is_contiguous() &&
                  w.size(0) == blocks * kInt4BlockRows,
              "w must be contiguous uint8 [out_features rounded up to 32, K/2] (int4_kernel_layout)");
  for (const at::Tensor* t : {&scale, &offset})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() == 3 && t->size(0) == blocks &&
                    t->size(1) == K / G && t->size(2) == kInt4BlockRows,
                "scale and offset must be contiguous bf16 [out_features / 32 rounded up, K/group_size, 32] "
                "(int4_kernel_layout)");
}

// x times one or more int4 weights that share it (rounded to int8 once), `out_features` rows each.
std::vector<at::Tensor> int4_linears(const at::Tensor& x, at::TensorList w, at::TensorList scale,
                                     at::TensorList offset, int64_t group_size, at::IntArrayRef out_features,
                                     const std::vector<c10::optional<at::Tensor>>& bias) {
  TORCH_CHECK(!w.empty() && scale.size() == w.size() && offset.size() == w.size() &&
                  out_features.size() == w.size() && bias.size() == w.size(),
              "w, scale, offset, out_features and bias must be lists of one length");
  for (const at::Tensor& t : w) TORCH_CHECK(t.dim() == 2, "w must be uint8 [N, K/2]");
  const int64_t K = w[0].size(1) * 2, M = x.size(0);
  for (const at::Tensor& t : w) TORCH_CHECK(t.size(1) * 2 == K, "every w must have K = ", K, " inputs");
  check_input(x, K);
  for (size_t p = 0; p < w.size(); ++p) check_int4(w[p], scale[p], offset[p], out_features[p], K, group_size);
  const QuantizedRows rows = quantize_rows(x, group_size);
  Int4Kernel kernel;
  kernel.xq = rows.values.data_ptr<int8_t>();
  kernel.x_scale = rows.scales.data_ptr<float>();
  kernel.x_sum = rows.sums.data_ptr<float>();
  kernel.K = K;
  kernel.G = group_size;
  kernel.tiles = int4_tiles_usable(group_size);
  std::vector<at::Tensor> outs;
  std::vector<LanePart<Int4Kernel>> parts;
  for (size_t p = 0; p < w.size(); ++p) {
    outs.push_back(at::empty({M, out_features[p]}, x.options()));
    kernel.w = w[p].data_ptr<uint8_t>();
    kernel.scale = bf16_bits(scale[p]);
    kernel.offset = bf16_bits(offset[p]);
    parts.push_back({kernel, make_output(outs.back(), bias[p]), out_features[p]});
  }
  run_lane_blocks(parts, M, kInt4BlockRows, max_pass_rows(kernel.tiles, M, kInt4MaxPassRows));
  return outs;
}

at::Tensor linear_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& offset,
                       int64_t group_size, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  return int4_linears(x, w, scale, offset, group_size, out_features, {bias})[0];
}

std::vector<at::Tensor> linear_int4_many(const at::Tensor& x, at::TensorList w, at::TensorList scale,
                                         at::TensorList offset, int64_t group_size, at::IntArrayRef out_features,
                                         const c10::List<c10::optional<at::Tensor>>& bias) {
  return int4_linears(x, w, scale, offset, group_size, out_features, {bias.begin(), bias.end()});
}

// int8 rows dequantized to bf16, for large M where one GEMM beats many GEMVs.
struct Int8Rows {
  const int8_t* w;  // int8_kernel_layout
  const uint16_t* scale;
  int64_t K;

  void operator()(int64_t n, uint16_t* dst) const {
    const __m512 s = _mm512_set1_ps(qthink::bf16_to_float(scale[n]));
    // Row n's dwords: lane n % 16 of each 64-byte vector of its block.
    const int8_t* base = w + n / kInt8BlockRows * (K / 4) * 64 + n % kInt8BlockRows * 4;
    const __m512i lanes = _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832,
                                            896, 960);
    for (int64_t k = 0; k < K; k += 64) {
      const __m512i bytes = _mm512_i32gather_epi32(lanes, base + k / 4 * 64, 1);  // weights k..k+63
      store_part<0>(bytes, s, dst + k);
      store_part<1>(bytes, s, dst + k);
      store_part<2>(bytes, s, dst + k);
      store_part<3>(bytes, s, dst + k);
    }
  }

  // Weights 16 P .. 16 P + 15 of the 64 in `bytes`, times s, stored as bf16.
  template <int P>
  static void store_part(__m512i bytes, __m512 s, uint16_t* dst) {
    const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, P)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16 * P), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(q, s)));
  }
};

template <typename Rows>
void dequantize_rows(const Rows& rows, int64_t first, int64_t count, int64_t K, at::Tensor& dst) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst.data_ptr<at::BFloat16>());
  for (int64_t r = 0; r < count; ++r) rows(first + r, out + r * K);
}

// Weight tiles this large keep the GEMM efficient and stay in the caches after dequantization.
constexpr int64_t kTileBytes = 4 << 20;

// out = x @ dequantize(W).T + bias. Each thread dequantizes its own tiles of weight rows and
// multiplies them with a single-threaded GEMM: one parallel region per call, because on a
// busy machine every extra barrier waits for a descheduled thread.
template <typename Rows>
at::Tensor tiled_linear(const at::Tensor& x, const Rows& rows, int64_t N, int64_t K,
                        const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == K && x.scalar_type() == at::kBFloat16,
              "x must be a CPU bfloat16 [M, ", K, "] tensor");
  const int64_t per_thread = (N + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t by_size = std::max<int64_t>(16, kTileBytes / (2 * K) / 16 * 16);
  const int64_t tile_rows = std::min({N, by_size, (per_thread + 15) / 16 * 16});
  const int64_t tiles = (N + tile_rows - 1) / tile_rows;
  at::Tensor out_t = at::empty({N, x.size(0)}, x.options());
  const at::Tensor xt = x.t();
  // Worker threads do not inherit the caller's inference mode, and writing into an inference
  // tensor (out_t, under torch.inference_mode) outside it is an error: carry the mode over.
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode guard(inference);
    at::Tensor tile = at::empty({tile_rows, K}, x.options());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile_rows, count = std::min(tile_rows, N - first);
      at::Tensor part = tile.narrow(0, 0, count);
      dequantize_rows(rows, first, count, K, part);
      at::Tensor dst = out_t.narrow(0, first, count);
      at::mm_out(dst, part, xt);
    }
  });
  at::Tensor out = out_t.t().contiguous();
  if (bias.has_value()) out.add_(*bias);
  return out;
}

at::Tensor gemm_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  const int64_t N = check_int8(w, scale);
  return tiled_linear(x, Int8Rows{w.data_ptr<int8_t>(), bf16_bits(scale), w.size(1)}, N, w.size(1), bias);
}

}  // namespace

TORCH_LIBRARY(qthink_kernels, m) {
  m.def("linear_bf16(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor w, Tensor scale, Tensor? bias, int activation_levels=1) -> Tensor");
  m.def(
      "linear_int4(Tensor x, Tensor w, Tensor scale, Tensor offset, int group_size, int out_features, Tensor? bias) "
      "-> Tensor");
  m.def("gemm_int8(Tensor x, Tensor w, Tensor scale, Tensor? bias) -> Tensor");
  m.def(
      "linear_int8_many(Tensor x, Tensor[] w, Tensor[] scale, Tensor?[] bias, int activation_levels=1) -> "
      "Tensor[]");
  m.def(
      "linear_int4_many(Tensor x, Tensor[] w, Tensor[] scale, Tensor[] offset, int group_size, int[] out_features, "
      "Tensor?[] bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_int8", &linear_int8);
  m.impl("linear_int4", &linear_int4);
  m.impl("gemm_int8", &gemm_int8);
  m.impl("linear_int8_many", &linear_int8_many);
  m.impl("linear_int4_many", &linear_int4_many);
}
