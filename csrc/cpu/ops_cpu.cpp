// The CPU backend: the step loop (step_loop.h) with the point functions of steps.h run over each
// step's rows x units pairs by at::parallel_for, MKL-packed recurrent GEMMs, and, for single
// steps (cell calls) of few rows, a fused pass that computes both products and the pointwise
// together. Registered for the CPU dispatch key.
//
// For float the math runs on 16-wide SIMD lanes (simd.h: consecutive hidden units of one row),
// the remainder of a row and the other types one unit at a time: the same point functions
// either way, only the value type changes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "fastrnn/backend.h"
#include "fastrnn/step_loop.h"
#include "packed_gemm.h"
#include "persistent_cpu.h"
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

// Work items are (row, tile of kTileUnits units): rows alone are too coarse when the batch is
// small (B = 1 in generation, 8 rows of 256 units in the small config ran on one thread). A
// pair costs a few transcendentals, ~5-10 ns, so kGrainPairs pairs (~5 us) per task keeps the
// fork/join (~1-2 us) paying for itself.
constexpr int64_t kTileUnits = 64;  // a multiple of the SIMD width: only a row's last tile has a tail
constexpr int64_t kGrainPairs = 1024;

// Pairs (r, j) of the items [begin, end): SIMD vectors of consecutive units for float, one unit
// at a time for the tail and the other types.
template <class Point, class Step>
FASTRNN_CPU_CLONES void run_items(const Step& a, int64_t tiles_per_row, int64_t begin, int64_t end) {
  using T = typename Step::scalar_type;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t r = item / tiles_per_row;
    const int64_t j_end = std::min(a.units, (item % tiles_per_row + 1) * kTileUnits);
    int64_t j = (item % tiles_per_row) * kTileUnits;
    if constexpr (std::is_same_v<T, float>) {
      for (; j + Lanes<cpu::VecF>::width <= j_end; j += Lanes<cpu::VecF>::width) Point::template run<cpu::VecF>(a, r, j);
    }
    for (; j < j_end; ++j) Point::template run<at::opmath_type<T>>(a, r, j);
  }
}

// The generic launch: Point over a step's rows x units pairs.
template <class Point, class Step>
void for_each_pair(const Step& a) {
  const int64_t tiles_per_row = (a.units + kTileUnits - 1) / kTileUnits;
  const int64_t grain = std::max<int64_t>(1, kGrainPairs / std::min(a.units, kTileUnits));
  at::parallel_for(0, a.rows * tiles_per_row, grain, [&](int64_t begin, int64_t end) {
    run_items<Point>(a, tiles_per_row, begin, end);
  });
}

// ---- A single step in one pass (cell calls: generation at batch 1 and the like).
//
// Each task owns a tile of units: for every unit it computes the G gate rows of both products,
// then runs the pointwise over the tile. One fork/join per call instead of three (two MKL GEMVs
// and the pointwise) and no bias allocation. A GEMV is bound by the weight traffic, so the loop
// is shaped for streaming: the G gate rows of a unit are read together (G concurrent sequential
// streams per matrix, which run clearly faster here than one row at a time), consecutive units
// continue those streams, and each row is reused from L1 for every batch row.
constexpr int64_t kSingleStepMaxRows = 4;          // beyond this a GEMM reuses weights better
constexpr int64_t kSingleStepTileUnits = 32;       // units per task: a multiple of the SIMD width
constexpr int64_t kSingleStepGrainFloats = 65536;  // weight floats per thread at least (~256 KiB)

// The operands of the two products of a single step (T = 1, no projection):
//   xproj[b, m] = x[b] . w_ih[m] + b_ih[m] + (m < b_hh_rows ? b_hh[m] : 0)   (into the step's xproj)
//   hproj[r, m] = h0[order[r]] . w_hh[m]                                        (into its hproj)
// for m < G*H. h0 is read only: the step writes the new state into the plan's buffers.
struct SingleStepProducts {
  const float* x;     // [B, I]   the step's input, by batch entry
  const float* h0;    // [B, H]   the previous hidden state, by batch entry
  const float* w_ih;  // [G*H, I] row-major
  const float* w_hh;  // [G*H, H] row-major
  const float* b_ih;  // [G*H] or nullptr
  const float* b_hh;  // [G*H] or nullptr; only its first b_hh_rows entries join xproj (GRU
                      //        keeps b_hn apart)
  int64_t b_hh_rows;
  int64_t I;
};

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

// Units [j_begin, j_end) of a single step: both products, then Point over the tile.
template <int G, class Point, class Step>
FASTRNN_CPU_CLONES void single_step_units(const Step& a, const SingleStepProducts& p, float* hproj, int64_t j_begin,
                                          int64_t j_end) {
  const int64_t H = a.units, I = p.I;
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
    for (; j + Lanes<cpu::VecF>::width <= j_end; j += Lanes<cpu::VecF>::width) Point::template run<cpu::VecF>(a, r, j);
    for (; j < j_end; ++j) Point::template run<float>(a, r, j);
  }
}

// Whether a forward call runs as one fused pass: a float cell call (T = 1, no projection, no
// layer norm, zoneout or recurrent dropout) of at most kSingleStepMaxRows rows.
inline bool single_step_fits(const ForwardPlan& p) {
  return p.d.T == 1 && !p.projected() && p.x.scalar_type() == at::kFloat && p.d.B <= kSingleStepMaxRows &&
         p.unsupported_option() == nullptr;
}

// Runs a single step in one pass. G: the cell's gates; b_hh_rows: how much of b_hh joins xproj.
template <int G, class Point, class Step>
void single_step(ForwardPlan& plan, Step& a, const Tensor& hproj, int64_t b_hh_rows) {
  const SingleStepProducts p{plan.x.const_data_ptr<float>(),
                             plan.h0.const_data_ptr<float>(),
                             plan.w_ih.const_data_ptr<float>(),
                             plan.w_hh.const_data_ptr<float>(),
                             plan.b_ih.defined() ? plan.b_ih.const_data_ptr<float>() : nullptr,
                             plan.b_hh.defined() ? plan.b_hh.const_data_ptr<float>() : nullptr,
                             b_hh_rows,
                             plan.d.I};
  const int64_t tiles = (a.units + kSingleStepTileUnits - 1) / kSingleStepTileUnits;
  const int64_t weights = G * a.units * (p.I + a.units);
  const int64_t tasks = std::clamp<int64_t>(weights / kSingleStepGrainFloats, 1, std::min<int64_t>(at::get_num_threads(), tiles));
  float* hp = hproj.mutable_data_ptr<float>();
  // Tiles are handed out from a shared counter rather than split in equal halves: a call takes
  // ~100 us, and a thread that wakes up late (common on shared VMs) would otherwise leave the
  // others waiting for its half.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < tiles; c = next.fetch_add(1)) {
      single_step_units<G, Point>(a, p, hp, c * kSingleStepTileUnits, std::min(a.units, (c + 1) * kSingleStepTileUnits));
    }
  });
}

struct CpuKernels {
  static constexpr const char* kStepLoopPath = "cpu.step_loop";
  using Gemm = cpu::PackedGemm;
  // The backward keeps its gate grads in chunks of at most this many bytes (GradChunks):
  // smaller buffers come back from the heap instead of as fresh pages.
  static constexpr int64_t kGradChunkBytes = int64_t{8} << 20;
  template <class Point, class Step>
  static void run(const Step& a) {
    for_each_pair<Point>(a);
  }
  // A chain of points over one iteration's rows (step_loop.h, run_stages): one parallel pass over
  // rows, each running every stage on its row while the row is in L1, instead of one pass and
  // fork/join per stage. row_units: the widest stage's units, for the grain.
  static constexpr bool kRowStages = true;
  template <class F>
  static void for_rows(int64_t rows, int64_t row_units, F&& f) {
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainPairs / std::max<int64_t>(row_units, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t r = begin; r < end; ++r) f(r);
                     });
  }
  template <class Point, class Step>
  static void run_row(const Step& a, int64_t r) {
    const int64_t tiles_per_row = (a.units + kTileUnits - 1) / kTileUnits;
    run_items<Point>(a, tiles_per_row, r * tiles_per_row, (r + 1) * tiles_per_row);
  }
};

struct CpuBackend {
  // The recurrence dispatch (persistent_cpu.h) first; the fused single step and the step loop are
  // its step-loop side.
  static bool persistent(ForwardPlan& p) {
    if (cpu::choose_cpu_recurrence(cpu::cpu_recurrence_query(p, false)) != cpu::CpuRecurrence::kPersistent) return false;
    cpu::persistent_forward(p);
    return true;
  }
  static void lstm_forward(ForwardPlan& p) {
    if (persistent(p)) return;
    if (!single_step_fits(p)) return StepLoop<CpuKernels>::lstm_forward(p);
    const Tensor xproj = p.input_projection_buffer(), hproj = at::empty({p.d.B, p.G * p.d.H}, p.x.options());
    auto a = lstm_forward_step<float>(p, xproj, hproj, Tensor());
    single_step<LstmCell::kGates, LstmForwardPoint>(p, a, hproj, LstmCell::kHhBiasInputBlocks * p.d.H);
    PathLog::record(p.op, "cpu.single_step");
  }
  static void gru_forward(ForwardPlan& p) {
    if (persistent(p)) return;
    if (!single_step_fits(p)) return StepLoop<CpuKernels>::gru_forward(p);
    const Tensor xproj = p.input_projection_buffer(), hproj = at::empty({p.d.B, p.G * p.d.H}, p.x.options());
    auto a = gru_forward_step<float>(p, xproj, hproj, p.hidden_n_bias());
    single_step<GruCell::kGates, GruForwardPoint>(p, a, hproj, GruCell::kHhBiasInputBlocks * p.d.H);
    PathLog::record(p.op, "cpu.single_step");
  }
  // No persistent backward yet: the choice only checks FASTRNN_RECURRENCE's value.
  static void lstm_backward(BackwardPlan& p) {
    cpu::choose_cpu_recurrence(cpu::cpu_recurrence_query(p, true));
    StepLoop<CpuKernels>::lstm_backward(p);
  }
  static void gru_backward(BackwardPlan& p) {
    cpu::choose_cpu_recurrence(cpu::cpu_recurrence_query(p, true));
    StepLoop<CpuKernels>::gru_backward(p);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuBackend>);
  m.impl("lstm_backward", &lstm_backward<CpuBackend>);
  m.impl("gru_forward", &gru_forward<CpuBackend>);
  m.impl("gru_backward", &gru_backward<CpuBackend>);
}

}  // namespace fastrnn
