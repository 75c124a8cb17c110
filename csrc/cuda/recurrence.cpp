// The CUDA recurrence dispatch (see recurrence.h). Until the persistent kernels exist and have
// passed the CUDA suite on a GPU, `auto` runs the step loop everywhere.
#include "recurrence.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

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

// Why the persistent kernel cannot run this call; nullptr when it can.
const char* persistent_unavailable(const RecurrenceQuery&) {
  return "this build of fastrnn has no persistent recurrent kernel yet (only the step loop)";
}

}  // namespace

const char* recurrence_name(Recurrence r) { return r == Recurrence::kPersistent ? "persistent" : "step"; }

Recurrence choose_recurrence(const RecurrenceQuery& q) {
  switch (mode_from_env()) {
    case Mode::kStepLoop:
      return Recurrence::kStepLoop;
    case Mode::kPersistent: {
      const char* why = persistent_unavailable(q);
      TORCH_CHECK_NOT_IMPLEMENTED(why == nullptr, "FASTRNN_RECURRENCE=persistent, but the persistent recurrence ",
                                  "cannot run this call (", q.gates == 4 ? "LSTM" : "GRU", " T=", q.d.T, " B=", q.d.B,
                                  " H=", q.d.H, ", ", q.dtype, "): ", why);
      return Recurrence::kPersistent;
    }
    case Mode::kAuto:
      break;
  }
  return Recurrence::kStepLoop;
}

namespace {

// Test hook: the choice for a hypothetical call, without a GPU. cell is "lstm" or "gru".
std::string recurrence_for(c10::string_view cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                           at::ScalarType dtype, bool masked, bool backward) {
  TORCH_CHECK_VALUE(cell == "lstm" || cell == "gru", "cell must be 'lstm' or 'gru', got '", cell, "'");
  const RecurrenceQuery q{cell == "lstm" ? 4 : 3, Dims{T, B, I, H, P}, dtype, masked, backward};
  return recurrence_name(choose_recurrence(q));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_cuda_recurrence(str cell, int T, int B, int I, int H, int P, ScalarType dtype, bool masked, bool backward) -> str",
        &recurrence_for);
}

}  // namespace cuda
}  // namespace fastrnn
