// Host side of the persistent forward (persistent.h), the persistent backward
// (persistent_mma_bwd.h) and the fused single step (single_step.h): the arguments for a plan and
// what runs around the launch, shared by the CUDA launches (cuda/ops_cuda.cpp) and the host
// emulations (cpu/persistent_emulation.cpp, cpu/persistent_mma_emulation.cpp,
// cpu/single_step_emulation.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "fastrnn/layer_plan.h"
#include "fastrnn/path_log.h"
#include "fastrnn/persistent.h"
#include "fastrnn/persistent_mma_bwd.h"
#include "fastrnn/single_step.h"
#include "fastrnn/step_loop.h"

namespace fastrnn {

// Runs a persistent forward of plan p (no projection) with `launch(args, part)` for the
// recurrence: the input projection first (the plan's GEMM), then the launch, then h_n into
// p.h. launch is called with PersistentForwardArgs<scalar_t> for the plan's dtype and returns
// nullptr, or why the device refused to run it; then this returns that reason and leaves the
// plan's states untouched (only the projection, which the step loop rewrites, has been written).
template <class Launch>
const char* run_persistent_forward(ForwardPlan& p, const PersistentPartition& part, const char* path,
                                   Launch&& launch) {
  TORCH_INTERNAL_ASSERT(!p.projected(), "the persistent forward has no projection");
  const Tensor xproj = p.input_projection_buffer();
  p.project_input(xproj, p.input_bias());
  const Tensor b_hn = p.hidden_n_bias();
  Tensor h_other = at::empty_like(p.h);
  const char* refused = nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "persistent_forward", [&] {
    PersistentForwardArgs<scalar_t> a{};
    p.fill_common(a, p.d.H);
    a.G = p.G;
    a.U = part.units;
    a.w_hh = p.w_hh.const_data_ptr<scalar_t>();
    a.xproj = xproj.const_data_ptr<scalar_t>();
    a.xstride = xproj.stride(0);
    a.b_hn = b_hn.defined() ? b_hn.const_data_ptr<scalar_t>() : nullptr;
    a.h[0] = p.h.mutable_data_ptr<scalar_t>();
    a.h[1] = h_other.mutable_data_ptr<scalar_t>();
    a.c = p.cell.has_cell_state() ? p.c.mutable_data_ptr<scalar_t>() : nullptr;
    a.y = p.y.mutable_data_ptr<scalar_t>();
    a.saved = p.save ? p.saved.mutable_data_ptr<scalar_t>() : nullptr;
    refused = launch(a, part);
  });
  if (refused != nullptr) return refused;
  if (p.d.T % 2 == 1) p.h.copy_(h_other);  // h_n is in h[T % 2]
  PathLog::record(p.op, path);
  return nullptr;
}

// Runs a persistent backward of plan p (no projection) with `launch(args)` for the recurrence,
// then the step loop's folds (all T steps of gate grads at once). launch is called with
// PersistentMmaBwdArgs<scalar_t> for the plan's dtype (counters unset: the launcher owns them)
// and returns nullptr, or why the device refused to run it; then this returns that reason and
// leaves the plan untouched.
template <class Launch>
const char* run_persistent_backward(BackwardPlan& p, const MmaBwdPartition& part, bool split, const char* path,
                                    Launch&& launch) {
  TORCH_INTERNAL_ASSERT(!p.projected(), "the persistent backward has no projection");
  const Dims& d = p.d;
  const auto opts = p.x.options();
  // Padded positions are never written; their grads must read as zero (as in the step loop).
  const Tensor dgates = detail::zeros_if(p.masked(), {d.T, d.B, p.dgates_width}, p.x);
  // Every (row, unit) pair writes its hidden-side grads at every iteration: no zeroing needed.
  const Tensor dstep[2] = {at::empty({d.B, p.G * d.H}, opts), at::empty({d.B, p.G * d.H}, opts)};
  const Tensor dh = at::zeros({d.B, d.H}, opts);
  const Tensor dc = p.cell.has_cell_state() ? at::zeros({d.B, d.H}, opts) : Tensor();
  const char* refused = nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "persistent_backward", [&] {
    PersistentMmaBwdArgs<scalar_t> a{};
    p.fill_common(a.common, d.H);
    a.G = p.G;
    a.H = d.H;
    a.w_hh = p.w_hh.const_data_ptr<scalar_t>();
    a.dstep[0] = dstep[0].mutable_data_ptr<scalar_t>();
    a.dstep[1] = dstep[1].mutable_data_ptr<scalar_t>();
    a.dh = dh.mutable_data_ptr<scalar_t>();
    fill_mma_bwd_partition(a, part, split);
    if (p.cell.has_cell_state()) {
      auto& l = a.lstm;
      p.fill_common(l, d.H);
      l.dy = p.dy.const_data_ptr<scalar_t>();
      l.dh_n = p.dh_n.const_data_ptr<scalar_t>();
      l.dc_n = p.dc_n.const_data_ptr<scalar_t>();
      l.saved = p.saved.const_data_ptr<scalar_t>();
      l.c0 = p.c0.const_data_ptr<scalar_t>();
      l.dh = a.dh;
      l.dh_full = nullptr;
      l.dc = dc.mutable_data_ptr<scalar_t>();
      l.dgates = dgates.mutable_data_ptr<scalar_t>();
      l.dgates_t0 = 0;
    } else {
      auto& g = a.gru;
      p.fill_common(g, d.H);
      g.dy = p.dy.const_data_ptr<scalar_t>();
      g.dh_n = p.dh_n.const_data_ptr<scalar_t>();
      g.saved = p.saved.const_data_ptr<scalar_t>();
      g.h0 = p.h0.const_data_ptr<scalar_t>();
      g.y = p.y.const_data_ptr<scalar_t>();
      g.dh = a.dh;
      g.dgates = dgates.mutable_data_ptr<scalar_t>();
      g.dgates_t0 = 0;
    }
    refused = launch(a);
  });
  if (refused != nullptr) return refused;
  p.dh = dh;
  p.dc = dc;
  p.fold_gate_grads(dgates, 0);
  p.fold_first_step(dstep[0]);  // iteration 0's hidden-side grads, by row
  PathLog::record(p.op, path, /*grad_chunks=*/1);
  return nullptr;
}

// Runs plan p (single_step_fits) as one fused single step with `launch(args)`
// (SingleStepArgs<scalar_t> for the plan's dtype): the products into the plan's input-projection
// buffer and a [B, G*H] hproj, then the step loop's forward point.
template <class Launch>
void run_single_step(ForwardPlan& p, const char* path, Launch&& launch) {
  TORCH_INTERNAL_ASSERT(single_step_fits(p.d.T, p.d.B, p.projected()), "not a single step");
  const Tensor xproj = p.input_projection_buffer();
  const Tensor hproj = at::empty({p.d.B, p.G * p.d.H}, p.x.options());
  const Tensor b_hn = p.hidden_n_bias();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "single_step", [&] {
    SingleStepArgs<scalar_t> a{};
    a.x = p.x.const_data_ptr<scalar_t>();
    a.h0 = p.h0.const_data_ptr<scalar_t>();
    a.w_ih = p.w_ih.const_data_ptr<scalar_t>();
    a.w_hh = p.w_hh.const_data_ptr<scalar_t>();
    a.b_ih = p.b_ih.defined() ? p.b_ih.const_data_ptr<scalar_t>() : nullptr;
    a.b_hh = p.b_hh.defined() ? p.b_hh.const_data_ptr<scalar_t>() : nullptr;
    a.b_hh_rows = p.cell.hh_bias_input_blocks * p.d.H;
    a.G = p.G;
    a.I = p.d.I;
    a.hproj = hproj.mutable_data_ptr<scalar_t>();
    if (p.cell.has_cell_state()) {
      a.lstm = lstm_forward_step<scalar_t>(p, xproj, hproj, Tensor());
    } else {
      a.gru = gru_forward_step<scalar_t>(p, xproj, hproj, b_hn);
    }
    launch(a);
  });
  PathLog::record(p.op, path);
}

}  // namespace fastrnn
