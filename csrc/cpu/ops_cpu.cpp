// CPU kernels: the cell_math.h step functions over the rows x H pairs of each step with
// at::parallel_for, and the shared sequence loops of sequence.h registered for the CPU key.
//
// For float the math runs on 16-wide SIMD lanes (simd.h: consecutive hidden units of one row),
// the remainder of a row and the other types one unit at a time: the same point functions
// either way, only the value type changes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "fastrnn/cell_math.h"
#include "fastrnn/sequence.h"
#include "packed_gemm.h"
#include "simd.h"

// The row loops are compiled three times, for the baseline ISA, AVX2 + FMA and AVX-512, and picked at load
// time by the CPU (GCC function multiversioning); elsewhere, or with FASTRNN_NO_CPU_CLONES
// defined (to test one ISA: build with e.g. CFLAGS="-DFASTRNN_NO_CPU_CLONES -march=x86-64-v3"), once.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(FASTRNN_NO_CPU_CLONES)
#define FASTRNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
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

// ---- A single step in one pass (cell calls: generation at batch 1 and the like).
//
// Each task owns a chunk of hidden units: for every unit it computes the G gate rows of both
// products, then runs the pointwise over the chunk. One fork/join per call instead of three
// (two MKL GEMVs and the pointwise) and no bias allocation. A GEMV is bound by the weight
// traffic, so the loop is shaped for streaming: the G gate rows of a unit are read together
// (G concurrent sequential streams per matrix, which run clearly faster here than one row at a
// time), consecutive units continue those streams, and each row is reused from L1 for every
// batch row.
constexpr int64_t kSingleStepMaxRows = 4;          // beyond this a GEMM reuses weights better
constexpr int64_t kSingleStepChunk = 32;           // units per task: a multiple of the SIMD width
constexpr int64_t kSingleStepGrainFloats = 65536;  // weight floats per thread at least (~256 KiB)

// out[g] = w[g * gate_stride, :n] . v[:n] for g < G: the G gate rows of one unit.
template <int G>
FASTRNN_INLINE void gate_dots(const float* w, int64_t gate_stride, const float* v, int64_t n, float* out) {
  using V = cpu::f32x8;
  V s[G] = {}, t[G] = {};  // two accumulators per row hide the FMA latency
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const V v0 = cpu::load8(v + k), v1 = cpu::load8(v + k + 8);
    for (int g = 0; g < G; ++g) {
      s[g] += cpu::load8(w + g * gate_stride + k) * v0;
      t[g] += cpu::load8(w + g * gate_stride + k + 8) * v1;
    }
  }
  for (; k + 8 <= n; k += 8) {
    const V v0 = cpu::load8(v + k);
    for (int g = 0; g < G; ++g) s[g] += cpu::load8(w + g * gate_stride + k) * v0;
  }
  for (int g = 0; g < G; ++g) {
    const V u = s[g] + t[g];
    float sum = ((u[0] + u[1]) + (u[2] + u[3])) + ((u[4] + u[5]) + (u[6] + u[7]));
    for (int64_t kk = k; kk < n; ++kk) sum += w[g * gate_stride + kk] * v[kk];
    out[g] = sum;
  }
}

template <int G, template <typename, typename> class Point, typename Args>
FASTRNN_CPU_CLONES void single_step_units(const Args& a, const SingleStepProducts<float>& p, float* hproj,
                                          int64_t j_begin, int64_t j_end) {
  const int64_t H = a.H, I = p.I;
  float xo[G], ho[G];
  for (int64_t j = j_begin; j < j_end; ++j) {
    for (int64_t r = 0; r < a.rows; ++r) {
      const int64_t b = entry_of(a.order, r);
      gate_dots<G>(p.w_ih + j * I, H * I, p.x + b * I, I, xo);
      gate_dots<G>(p.w_hh + j * H, H * H, p.h0 + b * H, H, ho);
      for (int g = 0; g < G; ++g) {
        const int64_t m = g * H + j;
        const float bias = (p.b_ih != nullptr ? p.b_ih[m] : 0.f) + (p.b_hh != nullptr && m < p.b_hh_rows ? p.b_hh[m] : 0.f);
        a.xproj[b * a.xstride + m] = xo[g] + bias;
        hproj[r * G * H + m] = ho[g];
      }
    }
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    int64_t j = j_begin;
    for (; j + Lanes<cpu::VecF>::width <= j_end; j += Lanes<cpu::VecF>::width) Point<float, cpu::VecF>::run(a, r, j);
    for (; j < j_end; ++j) Point<float, float>::run(a, r, j);
  }
}

template <typename scalar_t, template <typename, typename> class Point, int G, typename Args>
bool single_step(const Args& a, const SingleStepProducts<scalar_t>& p) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    return false;
  } else {
    if (a.rows > kSingleStepMaxRows) return false;
    TORCH_INTERNAL_ASSERT(p.G == G);
    const int64_t chunks = (a.H + kSingleStepChunk - 1) / kSingleStepChunk;
    const int64_t weights = G * a.H * (p.I + a.H);
    const int64_t tasks = std::clamp<int64_t>(weights / kSingleStepGrainFloats, 1, std::min<int64_t>(at::get_num_threads(), chunks));
    float* hproj = const_cast<float*>(a.hproj);  // the step reads it; here it is produced
    // Chunks are handed out from a shared counter rather than split in equal halves: a call
    // takes ~100 us, and a thread that wakes up late (common on shared VMs) would otherwise
    // leave the others waiting for its half.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
        single_step_units<G, Point>(a, p, hproj, c * kSingleStepChunk, std::min(a.H, (c + 1) * kSingleStepChunk));
      }
    });
    return true;
  }
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
  // The backward keeps its gate grads in chunks of at most this many bytes (sequence.h:
  // GradChunks): smaller buffers come back from the heap instead of as fresh pages.
  static constexpr int64_t kGradChunkBytes = int64_t{8} << 20;
  template <typename T> static void lstm_forward(const LstmForwardStep<T>& a) { for_each_pair<T, lstm_forward_point_p>(a); }
  template <typename T> static void lstm_backward(const LstmBackwardStep<T>& a) { for_each_pair<T, lstm_backward_point_p>(a); }
  template <typename T> static void lstm_proj_commit(const LstmProjCommitStep<T>& a) { for_each_pair<T, lstm_proj_commit_point_p>(a); }
  template <typename T> static void lstm_proj_backward(const LstmProjBackwardStep<T>& a) { for_each_pair<T, lstm_proj_backward_point_p>(a); }
  template <typename T> static void gru_forward(const GruForwardStep<T>& a) { for_each_pair<T, gru_forward_point_p>(a); }
  template <typename T> static void gru_backward(const GruBackwardStep<T>& a) { for_each_pair<T, gru_backward_point_p>(a); }
  template <typename T> static bool lstm_single_step(const LstmForwardStep<T>& a, const SingleStepProducts<T>& p) {
    return single_step<T, lstm_forward_point_p, 4>(a, p);
  }
  template <typename T> static bool gru_single_step(const GruForwardStep<T>& a, const SingleStepProducts<T>& p) {
    return single_step<T, gru_forward_point_p, 3>(a, p);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLaunch>);
  m.impl("lstm_backward", &lstm_backward<CpuLaunch>);
  m.impl("gru_forward", &gru_forward<CpuLaunch>);
  m.impl("gru_backward", &gru_backward<CpuLaunch>);
}

}  // namespace fastrnn
