// CPU kernels: the cell_math.h step functions over the rows x H pairs of each step with
// at::parallel_for, and the shared sequence loops of sequence.h registered for the CPU key.
//
// For float the math runs on 8-wide SIMD lanes (simd.h: consecutive hidden units of one row),
// the remainder of a row and the other types one unit at a time: the same point functions
// either way, only the value type changes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "fastrnn/cell_math.h"
#include "fastrnn/sequence.h"
#include "packed_gemm.h"
#include "simd.h"

// The row loop is compiled twice, for the baseline ISA and for AVX2 + FMA, and picked at load
// time by the CPU (GCC function multiversioning); elsewhere once.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTRNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTRNN_CPU_CLONES
#endif

namespace fastrnn {

namespace {

// Work items are (row, chunk of kChunk hidden units): rows alone are too coarse when the batch
// is small (B = 1 in generation, 8 rows of 256 units in the small config ran on one thread).
// A pair costs a few transcendentals, ~5-10 ns, so kGrainPairs pairs (~5 us) per task keeps
// the fork/join (~1-2 us) paying for itself.
constexpr int64_t kChunk = 64;  // a multiple of the SIMD width: only a row's last chunk has a tail
constexpr int64_t kGrainPairs = 1024;

template <typename scalar_t, template <typename, typename> class Point, typename Args>
FASTRNN_CPU_CLONES void run_items(const Args& a, int64_t chunks_per_row, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t r = item / chunks_per_row;
    const int64_t j_end = std::min(a.H, (item % chunks_per_row + 1) * kChunk);
    int64_t j = (item % chunks_per_row) * kChunk;
    if constexpr (std::is_same_v<scalar_t, float>) {
      for (; j + Lanes<cpu::VecF>::width <= j_end; j += Lanes<cpu::VecF>::width) Point<scalar_t, cpu::VecF>::run(a, r, j);
    }
    for (; j < j_end; ++j) Point<scalar_t, acc_t>::run(a, r, j);
  }
}

template <typename scalar_t, template <typename, typename> class Point, typename Args>
void for_each_pair(const Args& a) {
  const int64_t chunks_per_row = (a.H + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, kGrainPairs / std::min(a.H, kChunk));
  at::parallel_for(0, a.rows * chunks_per_row, grain, [&](int64_t begin, int64_t end) {
    run_items<scalar_t, Point>(a, chunks_per_row, begin, end);
  });
}

// Adapters so a point function template can be passed as a template template argument.
#define FASTRNN_POINT(name)                                                                   \
  template <typename T, typename V>                                                           \
  struct name##_p {                                                                           \
    template <typename Args>                                                                  \
    static inline __attribute__((always_inline)) void run(const Args& a, int64_t r, int64_t j) { \
      name<T, V>(a, r, j);                                                                    \
    }                                                                                         \
  };
FASTRNN_POINT(lstm_forward_point)
FASTRNN_POINT(lstm_backward_point)
FASTRNN_POINT(lstm_proj_commit_point)
FASTRNN_POINT(lstm_proj_backward_point)
FASTRNN_POINT(gru_forward_point)
FASTRNN_POINT(gru_backward_point)
#undef FASTRNN_POINT

struct CpuLaunch {
  using Gemm = cpu::PackedGemm;
  template <typename T> static void lstm_forward(const LstmForwardStep<T>& a) { for_each_pair<T, lstm_forward_point_p>(a); }
  template <typename T> static void lstm_backward(const LstmBackwardStep<T>& a) { for_each_pair<T, lstm_backward_point_p>(a); }
  template <typename T> static void lstm_proj_commit(const LstmProjCommitStep<T>& a) { for_each_pair<T, lstm_proj_commit_point_p>(a); }
  template <typename T> static void lstm_proj_backward(const LstmProjBackwardStep<T>& a) { for_each_pair<T, lstm_proj_backward_point_p>(a); }
  template <typename T> static void gru_forward(const GruForwardStep<T>& a) { for_each_pair<T, gru_forward_point_p>(a); }
  template <typename T> static void gru_backward(const GruBackwardStep<T>& a) { for_each_pair<T, gru_backward_point_p>(a); }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLaunch>);
  m.impl("lstm_backward", &lstm_backward<CpuLaunch>);
  m.impl("gru_forward", &gru_forward<CpuLaunch>);
  m.impl("gru_backward", &gru_backward<CpuLaunch>);
}

}  // namespace fastrnn
