// Greedy output layer for AVX-512 BF16 CPUs: each row's argmax of x w^T, without the logits.
//
// Greedy decoding with no logprobs, penalties or constraints needs only each row's best
// token. Finding it inside the output layer's one pass over the weights skips writing the
// [M, vocab] logits and the passes that widen them to float32 and search them: on a small
// model with a large vocabulary that is most of a decode step, and k + 1 times as much in a
// verification step. The scores are linear_bf16's bit for bit (the same bf16 dot products in
// the same order, the same pairwise horizontal sum, rounded to bf16 as torch rounds), and ties
// go to the lowest token id, as torch's max; a row with a NaN score gets its first NaN's id.

#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "bf16_vectors.h"
#include "lane_sums.h"
#include "linear_bf16_amx.h"
#include "thread_pool.h"

namespace {

using qthink::kLanes;
using qthink::transpose_sums;
using qthink::transposed;

// Weight bytes per task of the thread pool: the passes after a chunk's first find it in L2.
constexpr int64_t kChunkBytes = 128 << 10;

// Weight rows per task on AMX tiles (1.3 MB at K = 2,560, in L2 for each group of 16 rows).
constexpr int64_t kAmxChunkRows = 256;

// The best score and token so far of each lane: a lane sees one activation row and every NB-th
// weight row, in increasing order, so a strictly greater score keeps the earliest of equals.
struct RowBest;

struct LaneBest {
  __m512 score = _mm512_set1_ps(-INFINITY);
  __m512i token = _mm512_set1_epi32(-1);      // -1: no score yet
  __m512i first_nan = _mm512_set1_epi32(INT_MAX);

  void update(__m512 sums, __m512i tokens, __mmask16 valid) {
    const __mmask16 nan = _mm512_cmp_ps_mask(sums, sums, _CMP_UNORD_Q) & valid;
    first_nan = _mm512_mask_min_epi32(first_nan, nan, first_nan, tokens);
    const __m512 rounded = qthink::widen(qthink::narrow(sums));
    const __mmask16 none = _mm512_cmp_epi32_mask(token, _mm512_setzero_si512(), _MM_CMPINT_LT);
    const __mmask16 better = (_mm512_cmp_ps_mask(rounded, score, _CMP_GT_OQ) | (none & ~nan)) & valid & ~nan;
    score = _mm512_mask_mov_ps(score, better, rounded);
    token = _mm512_mask_mov_epi32(token, better, tokens);
  }

  // Into best[l / lanes_per_row] for each lane l; a row's lanes in any order: equal scores keep
  // the lower token.
  void fold(int lanes_per_row, RowBest* best) const;
};

// A row's best over some weight rows: the score, its lowest token (-1: none), its first NaN.
struct RowBest {
  float score = -INFINITY;
  int64_t token = -1;
  int64_t first_nan = INT64_MAX;

  void merge(const RowBest& other) {  // other covers later weight rows than *this
    first_nan = std::min(first_nan, other.first_nan);
    if (other.token >= 0 && (token < 0 || other.score > score)) {
      score = other.score;
      token = other.token;
    }
  }

  int64_t result() const { return first_nan != INT64_MAX ? first_nan : std::max<int64_t>(token, 0); }
};

void LaneBest::fold(int lanes_per_row, RowBest* best) const {
  alignas(64) float scores[kLanes];
  alignas(64) int32_t tokens[kLanes], first_nans[kLanes];
  _mm512_store_ps(scores, score);
  _mm512_store_si512(tokens, token);
  _mm512_store_si512(first_nans, first_nan);
  for (int l = 0; l < kLanes; ++l) {
    RowBest& row = best[l / lanes_per_row];
    if (first_nans[l] != INT_MAX) row.first_nan = std::min<int64_t>(row.first_nan, first_nans[l]);
    const bool better = scores[l] > row.score || (scores[l] == row.score && tokens[l] < row.token);
    if (tokens[l] >= 0 && (row.token < 0 || better)) {
      row.score = scores[l];
      row.token = tokens[l];
    }
  }
}

struct GreedyHead {
  const uint16_t* w;  // [N, K] bf16
  const uint16_t* x;  // [M, K] bf16
  int64_t M, N, K;

  // Lane i * NB + j: x row m + i . w row n + j, as linear_bf16's Bf16Kernel::block computes it
  // (accumulator a sits at transposed(a), so the sum tree puts it back in lane a; weight rows
  // past N repeat the last one, and their lanes are masked off by the caller).
  template <int MB, int NB>
  __m512 scores(int64_t n, int64_t m) const {
    const uint16_t* rows[NB];
    for (int j = 0; j < NB; ++j) rows[j] = w + std::min(n + j, N - 1) * K;
    __m512 acc[kLanes];
    for (auto& a : acc) a = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512i wv[NB];
      for (int j = 0; j < NB; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(rows[j] + NB * K + k), _MM_HINT_T0);
        wv[j] = _mm512_loadu_si512(rows[j] + k);
      }
      for (int i = 0; i < MB; ++i) {
        const __m512i xv = _mm512_loadu_si512(x + (m + i) * K + k);
        for (int j = 0; j < NB; ++j)
          acc[transposed(i * NB + j)] = _mm512_dpbf16_ps(acc[transposed(i * NB + j)], reinterpret_cast<__m512bh>(wv[j]),
                                                         reinterpret_cast<__m512bh>(xv));
      }
    }
    if (k < K) {
      const __mmask32 mask = (1u << (K - k)) - 1;
      for (int j = 0; j < NB; ++j) {
        const __m512i wv = _mm512_maskz_loadu_epi16(mask, rows[j] + k);
        for (int i = 0; i < MB; ++i) {
          const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + (m + i) * K + k);
          acc[transposed(i * NB + j)] = _mm512_dpbf16_ps(acc[transposed(i * NB + j)], reinterpret_cast<__m512bh>(wv),
                                                         reinterpret_cast<__m512bh>(xv));
        }
      }
    }
    return transpose_sums(acc);
  }

  // One pass of MB activation rows from m over weight rows [begin, end), NB = 16 / MB at a time.
  template <int MB>
  void pass(int64_t begin, int64_t end, int64_t m, RowBest* best) const {
    constexpr int NB = kLanes / MB;
    alignas(64) int32_t offsets[kLanes];
    for (int l = 0; l < kLanes; ++l) offsets[l] = l % NB;  // lane i * NB + j: weight row n + j
    const __m512i lane_rows = _mm512_load_si512(offsets);
    LaneBest lanes;
    for (int64_t n = begin; n < end; n += NB) {
      const __m512i tokens = _mm512_add_epi32(lane_rows, _mm512_set1_epi32(static_cast<int32_t>(n)));
      const __mmask16 valid = _mm512_cmp_epi32_mask(tokens, _mm512_set1_epi32(static_cast<int32_t>(end)), _MM_CMPINT_LT);
      lanes.update(scores<MB, NB>(n, m), tokens, valid);
    }
    lanes.fold(NB, best);
  }

  // Activation rows m .. m + x.M over weight rows [begin, end) (whole tiles) on the calling
  // thread's AMX tiles: the scores of linear_bf16's AMX path.
  void run_tiles(const qthink::AmxActivations& x, int64_t m, int64_t begin, int64_t end, RowBest* best) const {
    constexpr int64_t kStep = 2 * qthink::kAmxRows;
    alignas(64) float scores[qthink::kAmxRows][kStep];
    const qthink::Output out{scores, false, kStep, nullptr};
    const __m512i lane_ids = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    LaneBest lanes[qthink::kAmxRows];
    for (int64_t n = begin; n < end; n += kStep) {
      const int64_t rows = std::min(kStep, end - n);
      qthink::multiply_tiles(x, w, n, rows, out);
      for (int64_t i = 0; i < x.M; ++i)
        for (int64_t r = 0; r < rows; r += kLanes)
          lanes[i].update(_mm512_load_ps(&scores[i][r]), _mm512_add_epi32(lane_ids, _mm512_set1_epi32(n + r)), 0xFFFF);
    }
    for (int64_t i = 0; i < x.M; ++i) lanes[i].fold(kLanes, best + m + i);
  }

  // Every activation row over weight rows [begin, end): passes of 4, 2 or 1 rows.
  void run(int64_t begin, int64_t end, RowBest* best) const {
    for (int64_t m = 0; m < M;) {
      if (M - m >= 4) {
        pass<4>(begin, end, m, best + m);
        m += 4;
      } else if (M - m >= 2) {
        pass<2>(begin, end, m, best + m);
        m += 2;
      } else {
        pass<1>(begin, end, m, best + m);
        m += 1;
      }
    }
  }
};

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

// The token greedy sampling takes from each row of linear_bf16(x, w, None): int64 [M].
at::Tensor greedy_head(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.is_contiguous(),
              "w must be a contiguous bf16 CPU tensor [N, K]");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.size(1) == w.size(1),
              "x must be a bf16 CPU tensor [M, K] with w's K");
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(N > 0 && N < INT_MAX && K > 0, "w must have 1 to 2^31 - 2 rows and at least one column");
  const at::Tensor xc = x.contiguous();
  const GreedyHead head{bits(w), bits(xc), M, N, K};
  const bool amx = qthink::amx_bf16_usable(K);
  // On AMX tiles: whole tiles of weight rows; the rest (fewer than 16 rows) on AVX-512, last.
  const int64_t tiled = amx ? N / qthink::kAmxRows * qthink::kAmxRows : 0;
  const int64_t chunk_rows = amx ? kAmxChunkRows : std::max<int64_t>(kLanes, kChunkBytes / (2 * K) / kLanes * kLanes);
  const int64_t tile_chunks = (tiled + chunk_rows - 1) / chunk_rows;
  const int64_t chunks = tile_chunks + (N - tiled + chunk_rows - 1) / chunk_rows;
  std::vector<RowBest> partial(chunks * M);  // each chunk's best per row, merged in order below
  std::vector<qthink::AmxActivations> groups;  // activation rows in groups of up to 16
  for (int64_t m = 0; amx && m < M; m += qthink::kAmxRows)
    groups.emplace_back(head.x + m * K, std::min(qthink::kAmxRows, M - m), K);
  qthink::parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (c >= tile_chunks) {
        const int64_t first = tiled + (c - tile_chunks) * chunk_rows;
        head.run(first, std::min(N, first + chunk_rows), &partial[c * M]);
        continue;
      }
      for (int64_t g = 0; g < static_cast<int64_t>(groups.size()); ++g) {
        const qthink::AmxTiles tiles = qthink::bf16_tiles(groups[g].M);
        head.run_tiles(groups[g], g * qthink::kAmxRows, c * chunk_rows, std::min(tiled, (c + 1) * chunk_rows),
                       &partial[c * M]);
      }
    }
  });
  at::Tensor out = at::empty({M}, x.options().dtype(at::kLong));
  int64_t* tokens = out.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m) {
    RowBest best;
    for (int64_t c = 0; c < chunks; ++c) best.merge(partial[c * M + m]);
    tokens[m] = best.result();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) { m.def("greedy_head(Tensor x, Tensor w) -> Tensor"); }

TORCH_LIBRARY_IMPL(qthink_kernels, CPU, m) { m.impl("greedy_head", &greedy_head); }
