// Host emulation of the fused single step on CUDA (fastrnn/single_step.h), for tests: the
// kernel's own lane partial sums, the same butterfly over 32 lanes as its xor shuffles, lane 0's
// stores and the step loop's forward point, CTA by CTA (the CTAs do not communicate, so their
// order does not matter).
//
//   torch.ops.fastrnn._single_step_emulated(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
//       save) -> (y, h_n, c_n, saved)
//
// As lstm_forward / gru_forward (c0 None: a GRU, c_n empty), for T = 1, at most
// kSingleStepMaxRows rows and no projection.
#include <torch/library.h>

#include "fastrnn/persistent_host.h"
#include "fastrnn/single_step.h"

namespace fastrnn {
namespace {

template <typename T>
void emulate(const SingleStepArgs<T>& a) {
  using Acc = at::opmath_type<T>;
  const int64_t H = single_step_common(a).units, ctas = (H + kSingleStepUnits - 1) / kSingleStepUnits;
  const int64_t nthreads = kSingleStepWarps * 32;
  for (int64_t c = 0; c < ctas; ++c) {
    for (int64_t q = 0; q < single_step_tasks(a); ++q) {
      Acc lanes[32][kSingleStepMaxRows];
      bool active = false;
      for (int lane = 0; lane < 32; ++lane) active = single_step_partial(a, c, q, lane, lanes[lane]);
      if (!active) continue;
      // __shfl_xor_sync(off) for off = 16, 8, 4, 2, 1: lane l adds lane l ^ off's value
      for (int off = 16; off > 0; off >>= 1) {
        Acc next[32][kSingleStepMaxRows];
        for (int lane = 0; lane < 32; ++lane) {
          for (int64_t r = 0; r < kSingleStepMaxRows; ++r) next[lane][r] = lanes[lane][r] + lanes[lane ^ off][r];
        }
        std::memcpy(lanes, next, sizeof(lanes));
      }
      single_step_store(a, c, q, lanes[0]);
    }
    for (int64_t tid = 0; tid < nthreads; ++tid) single_step_update(a, c, tid, nthreads);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> single_step_emulated(const Tensor& x, const Tensor& h0, const OptTensor& c0,
                                                                 const Tensor& w_ih, const Tensor& w_hh,
                                                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                                                 const OptTensor& lengths, bool reverse, bool save) {
  const CellInfo& cell = c0.has_value() ? kLstmCell : kGruCell;
  ForwardPlan p(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse, save);
  TORCH_CHECK_VALUE(single_step_fits(p.d.T, p.d.B, p.projected()), "not a single step: T=", p.d.T, " B=", p.d.B);
  run_single_step(p, "cpu.single_step_emulation", [](const auto& a) { emulate(a); });
  const Tensor c_n = cell.has_cell_state() ? p.sched.to_batch(p.c) : at::empty({0}, x.options());
  return {p.y, p.sched.to_batch(p.h), c_n, p.saved};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_single_step_emulated(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("_single_step_emulated", &single_step_emulated); }

}  // namespace fastrnn
