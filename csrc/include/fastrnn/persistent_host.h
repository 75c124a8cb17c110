// Host side of the persistent forward (persistent.h): the arguments for a plan, shared by the
// CUDA launch (cuda/ops_cuda.cpp) and the host emulation (cpu/persistent_emulation.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "fastrnn/layer_plan.h"
#include "fastrnn/path_log.h"
#include "fastrnn/persistent.h"

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

}  // namespace fastrnn
