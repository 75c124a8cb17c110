// The CUDA recurrence dispatch (see recurrence.h). `auto` runs the step loop everywhere until the
// persistent kernel has passed the CUDA suite on a GPU and measured faster.
#include "recurrence.h"

#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "launch.h"

namespace fastrnn {
namespace cuda {
namespace {

enum class Mode { kAuto, kStepLoop, kPersistent };

// Read at every call (a getenv is ~100 ns next to a layer call) so that a process can switch,
// and tests can force each path.
Mode mode_from_env() {
  const char* v = std::getenv("FASTRNN_RECURRENCE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Mode::kAuto;
  if (std::strcmp(v, "step") == 0) return Mode::kStepLoop;
  if (std::strcmp(v, "persistent") == 0) return Mode::kPersistent;
  TORCH_CHECK_VALUE(false, "FASTRNN_RECURRENCE must be one of auto, step, persistent; got '", v, "'");
}

// Why the persistent forward cannot run this call (nullptr when it can); fills its partition.
const char* persistent_unavailable(const RecurrenceQuery& q, PersistentPartition& part) {
  if (q.projected) return "it has no projection (proj_size)";
  if (q.dtype == at::kDouble) return "float64 stays on the step loop";
  const char* why = plan_persistent(q.cell->gates, q.d.H, q.d.P, q.d.B, int64_t(c10::elementSize(q.dtype)), q.sms,
                                    q.smem_limit, part);
  if (why != nullptr || !q.probe_device) return why;
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.dtype, "persistent_unavailable",
                                         [&] { return persistent_forward_unavailable<scalar_t>(part); });
}

}  // namespace

const char* recurrence_name(Recurrence r) { return r == Recurrence::kPersistent ? "persistent" : "step"; }

RecurrenceQuery recurrence_query(const LayerPlan& p, bool backward) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return {&p.cell, p.d, p.x.scalar_type(), p.masked(), backward, p.projected(), prop->multiProcessorCount,
          int64_t(prop->sharedMemPerBlockOptin), true};
}

RecurrenceChoice choose_recurrence(const RecurrenceQuery& q) {
  RecurrenceChoice c{Recurrence::kStepLoop, {}};
  // No persistent backward yet: the backward of a persistent forward is the step loop's
  // (the forward saves the same activations).
  if (mode_from_env() != Mode::kPersistent || q.backward) return c;
  const char* why = persistent_unavailable(q, c.part);
  TORCH_CHECK_NOT_IMPLEMENTED(why == nullptr, "FASTRNN_RECURRENCE=persistent, but the persistent recurrence ",
                              "cannot run this call (", q.cell->display, " T=", q.d.T, " B=", q.d.B,
                              " H=", q.d.H, ", ", q.dtype, "): ", why);
  c.kind = Recurrence::kPersistent;
  return c;
}

namespace {

// Test hook: the choice for a hypothetical call on a device with `sms` multiprocessors and
// `smem_limit` bytes of shared memory per block, without a GPU. cell: a cell's name ("lstm", "gru").
std::string recurrence_for(c10::string_view cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                           at::ScalarType dtype, bool masked, bool backward, int64_t sms, int64_t smem_limit) {
  const CellInfo* info = find_cell(std::string(cell).c_str());
  TORCH_CHECK_VALUE(info != nullptr, "cell must be 'lstm' or 'gru', got '", cell, "'");
  const RecurrenceQuery q{info, Dims{T, B, I, H, P}, dtype, masked, backward, P != H,
                          sms, smem_limit, false};
  return recurrence_name(choose_recurrence(q).kind);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_cuda_recurrence(str cell, int T, int B, int I, int H, int P, ScalarType dtype, bool masked, "
        "bool backward, int sms=132, int smem_limit=232448) -> str",
        &recurrence_for);
}

}  // namespace cuda
}  // namespace fastrnn
