// FASTRNN_RECURRENCE, the one override of how a layer call runs its time loop; read by each
// device's decision point (cpu/persistent_cpu.cpp, cuda/recurrence.cpp). docs/DESIGN.md
// ("Backends and dispatch") has what each value does per device.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace fastrnn {

enum class RecurrenceMode {
  kAuto,        // the measured choice per call (unset or "auto")
  kStepLoop,    // "step": the step loop
  kPersistent,  // "persistent": a persistent recurrence, or NotImplementedError with the reason
  kPrefer,      // "prefer-persistent": a persistent recurrence where one can run, else the step loop
};

// Read at every call (a getenv is ~100 ns next to a layer call) so that a process can switch, and
// tests can force each path.
inline RecurrenceMode recurrence_mode_from_env() {
  const char* v = std::getenv("FASTRNN_RECURRENCE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return RecurrenceMode::kAuto;
  if (std::strcmp(v, "step") == 0) return RecurrenceMode::kStepLoop;
  if (std::strcmp(v, "persistent") == 0) return RecurrenceMode::kPersistent;
  if (std::strcmp(v, "prefer-persistent") == 0) return RecurrenceMode::kPrefer;
  TORCH_CHECK_VALUE(false, "FASTRNN_RECURRENCE must be one of auto, step, persistent, prefer-persistent; got '", v,
                    "'");
}

}  // namespace fastrnn
