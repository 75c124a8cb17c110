// The CUDA recurrence dispatch (see recurrence.h). `auto` runs the step loop everywhere until the
// persistent kernels have passed the CUDA suite on a GPU and measured faster.
#include "recurrence.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda.h>  // driver types only: the entry points are fetched through the runtime
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fastrnn/recurrence_mode.h"
#include "launch.h"

namespace fastrnn {
namespace cuda {
namespace {

using Mode = RecurrenceMode;

// Why no persistent forward can run this call (nullptr when one can); fills the choice: the
// tensor-core kernel where it fits, else (when `scalar` allows) the scalar one. The reason
// reported is the tensor-core kernel's unless it is one both share. prefer-persistent leaves the
// scalar kernel out: by the estimate in docs/DESIGN.md ("Per-step performance model") it is
// slower than the step loop everywhere, which would only slow the suite and the benchmarks.
const char* persistent_unavailable(const RecurrenceQuery& q, bool scalar, RecurrenceChoice& c) {
  if (q.projected) return "it has no projection (proj_size)";
  if (q.dtype == at::kDouble) return "float64 stays on the step loop";
  const int64_t elem = int64_t(c10::elementSize(q.dtype));
  const char* mma_why =
      q.probe_device
          ? AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.dtype, "persistent_mma_unavailable",
                                            [&] { return persistent_mma_unavailable<scalar_t>(q.cell->gates, q.d.H, q.d.B,
                                                                                             q.sms, c.mma); })
          : plan_persistent_mma(q.cell->gates, q.d.H, q.d.B, elem, q.sms, q.blocks_per_sm, q.smem_limit, c.mma);
  if (mma_why == nullptr) {
    c.kind = Recurrence::kPersistentMma;
    c.split = !(q.dtype == at::kFloat && q.allow_tf32);
    return nullptr;
  }
  if (!scalar) return mma_why;
  const char* why = plan_persistent(q.cell->gates, q.d.H, q.d.P, q.d.B, elem, q.sms, q.smem_limit, c.part);
  if (why == nullptr && q.probe_device) {
    why = AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.dtype, "persistent_unavailable",
                                          [&] { return persistent_forward_unavailable<scalar_t>(c.part, q.sms); });
  }
  if (why == nullptr) {
    c.kind = Recurrence::kPersistent;
    return nullptr;
  }
  return mma_why;
}

// Why the persistent backward cannot run this call (nullptr when it can); fills the choice. The
// backward of any forward path: both save the step loop's activations.
const char* persistent_backward_unavailable(const RecurrenceQuery& q, RecurrenceChoice& c) {
  if (q.projected) return "it has no projection (proj_size)";
  if (q.dtype == at::kDouble) return "float64 stays on the step loop";
  const char* why =
      q.probe_device
          ? AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.dtype, "persistent_mma_bwd_unavailable",
                                            [&] {
                                              return persistent_mma_bwd_unavailable<scalar_t>(q.cell->gates, q.d.H,
                                                                                              q.d.B, q.sms, c.mma_bwd);
                                            })
          : plan_persistent_mma_bwd(q.cell->gates, q.d.H, q.d.B, int64_t(c10::elementSize(q.dtype)), q.sms,
                                    q.blocks_per_sm, q.smem_limit, c.mma_bwd);
  if (why != nullptr) return why;
  c.kind = Recurrence::kPersistentMma;
  c.split = !(q.dtype == at::kFloat && q.allow_tf32);
  return nullptr;
}

// Driver entry points, fetched once through the runtime (no link against libcuda).
struct DriverContextApi {
  CUresult (*get_current)(CUcontext*) = nullptr;
  CUresult (*get_resource)(CUcontext, CUdevResource*, CUdevResourceType) = nullptr;

  DriverContextApi() {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12050
    cudaDriverEntryPointQueryResult found;
    void* f = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &f, 12040, cudaEnableDefault, &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      get_current = reinterpret_cast<decltype(get_current)>(f);
    }
    f = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuCtxGetDevResource", &f, 12040, cudaEnableDefault, &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      get_resource = reinterpret_cast<decltype(get_resource)>(f);
    }
#endif
    (void)cudaGetLastError();  // an old driver's "not found" must not surface in a later check
  }
};

}  // namespace

bool prefer_persistent() { return recurrence_mode_from_env() == Mode::kPrefer; }

// The persistent kernels need every block resident at once, so residency is counted against the
// SMs this process can use, not the device's. cudaDevAttrMultiProcessorCount describes the whole
// device; a green context (cuGreenCtxCreate, made current through cuCtxFromGreenCtx) owns a
// partition of it, which cuCtxGetDevResource reports for the current context. Under MPS an
// active-thread percentage provisions a client with a share of the SMs; what that client's
// context reports here has not been checked on a GPU, so the cooperative launch stays the last
// word: it refuses a grid that cannot be co-resident (cudaErrorCooperativeLaunchTooLarge), and
// prefer-persistent then falls back to the step loop for that call (ops_cuda.cpp).
int64_t usable_sms(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  static const DriverContextApi api;
  CUcontext ctx = nullptr;
  if (api.get_current != nullptr && api.get_resource != nullptr && api.get_current(&ctx) == CUDA_SUCCESS &&
      ctx != nullptr) {
    CUdevResource r{};
    if (api.get_resource(ctx, &r, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS && r.sm.smCount > 0) {
      sms = std::min(sms, int(r.sm.smCount));
    }
  }
  return sms;
}

const char* recurrence_name(Recurrence r) {
  switch (r) {
    case Recurrence::kPersistent: return "persistent";
    case Recurrence::kPersistentMma: return "persistent_mma";
    case Recurrence::kSingleStep: return "single_step";
    default: return "step";
  }
}

RecurrenceQuery recurrence_query(const LayerPlan& p, bool backward) {
  RecurrenceQuery q{&p.cell, p.d, p.x.scalar_type(), p.masked(), backward, p.projected(), 0, 0, true, 0,
                    at::globalContext().allowTF32CuBLAS(), p.unsupported_option()};
  const Mode mode = recurrence_mode_from_env();
  if (mode == Mode::kPersistent || mode == Mode::kPrefer) {  // the device's limits only when they matter
    q.sms = usable_sms(c10::cuda::current_device());
    q.smem_limit = int64_t(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  }
  return q;
}

RecurrenceChoice choose_recurrence(const RecurrenceQuery& q) {
  RecurrenceChoice c{Recurrence::kStepLoop, {}};
  const Mode mode = recurrence_mode_from_env();
  if (mode == Mode::kAuto || mode == Mode::kStepLoop) return c;
  // Options only the step loop runs (layer norm, zoneout, recurrent dropout) rule out every other
  // kernel, the fused single step included.
  const char* why = q.unsupported_option;
  // A cell call runs as one fused kernel: the persistent kernels' T = 1 is the same work behind a
  // projection GEMM and a cooperative launch.
  if (why == nullptr && !q.backward && single_step_fits(q.d.T, q.d.B, q.projected)) {
    c.kind = Recurrence::kSingleStep;
    return c;
  }
  if (why == nullptr) {
    why = q.backward ? persistent_backward_unavailable(q, c) : persistent_unavailable(q, mode == Mode::kPersistent, c);
  }
  if (mode == Mode::kPrefer) {
    c.fallback = why;
    return c;
  }
  TORCH_CHECK_NOT_IMPLEMENTED(why == nullptr, "FASTRNN_RECURRENCE=persistent, but the persistent recurrence ",
                              "cannot run this call (", q.cell->display, " T=", q.d.T, " B=", q.d.B,
                              " H=", q.d.H, ", ", q.dtype, "): ", why);
  return c;
}

namespace {

// Test hook: the choice for a hypothetical call on a device with `sms` usable multiprocessors and
// `smem_limit` bytes of shared memory per block, each SM taken to hold `blocks_per_sm` CTAs of the
// tensor-core kernel (on a GPU the occupancy calculator says), without a GPU. cell is "lstm" or "gru". Returns
// the path's name, then " (fallback: <why>)" when a persistent path was asked for and not taken.
std::string recurrence_for(c10::string_view cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                           at::ScalarType dtype, bool masked, bool backward, int64_t sms, int64_t smem_limit,
                           int64_t blocks_per_sm) {
  const CellInfo* info = find_cell(std::string(cell).c_str());
  TORCH_CHECK_VALUE(info != nullptr, "cell must be 'lstm' or 'gru', got '", cell, "'");
  const RecurrenceQuery q{info, Dims{T, B, I, H, P}, dtype, masked, backward, P != H,
                          sms, smem_limit, false, blocks_per_sm, false};
  const RecurrenceChoice c = choose_recurrence(q);
  std::string out = recurrence_name(c.kind);
  if (c.fallback != nullptr) out += std::string(" (fallback: ") + c.fallback + ")";
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_cuda_recurrence(str cell, int T, int B, int I, int H, int P, ScalarType dtype, bool masked, "
        "bool backward, int sms=132, int smem_limit=232448, int blocks_per_sm=1) -> str",
        &recurrence_for);
}

}  // namespace cuda
}  // namespace fastrnn
