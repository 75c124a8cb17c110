// The persistent CPU recurrence (persistent_cpu.cpp) and the CPU's recurrence dispatch: how a CPU
// layer call runs its time loop, and the only CPU code that reads FASTRNN_RECURRENCE.
// docs/DESIGN.md ("Backends and dispatch", "The persistent CPU recurrence") has the rules.
#pragma once

#include "fastrnn/layer_plan.h"

namespace fastrnn {
namespace cpu {

enum class CpuRecurrence {
  kStepLoop,    // per step one MKL GEMM + one parallel pointwise pass (step_loop.h), or the fused
                // single step of cell calls (ops_cpu.cpp)
  kPersistent,  // one parallel region over all steps, W_hh packed per thread (persistent_cpu.cpp)
};

// What the choice depends on.
struct CpuRecurrenceQuery {
  const CellInfo* cell;   // the cell's table (cell_traits.h)
  Dims d;
  at::ScalarType dtype;
  bool backward;
  bool projected;         // LSTM with proj_size
  int64_t threads;        // threads the call may use (at::get_num_threads(), 1 inside a parallel region)
  const char* unsupported_option = nullptr;  // LayerPlan::unsupported_option(): an option it lacks
};

CpuRecurrenceQuery cpu_recurrence_query(const LayerPlan& p, bool backward);

// FASTRNN_RECURRENCE (recurrence_mode.h, read at every call): auto (or unset) picks per call by
// the measured crossovers (persistent_preferred); step forces the step loop; persistent forces the
// persistent forward and raises NotImplementedError naming the reason where it cannot run the
// call; prefer-persistent runs it wherever it can and the step loop elsewhere. Backwards run the
// step loop whatever the value (no persistent backward yet). Any other value raises ValueError.
CpuRecurrence choose_cpu_recurrence(const CpuRecurrenceQuery& q);

// Runs a forward plan (LSTM or GRU) on the persistent recurrence; records
// "cpu.persistent" in the path log. Requires choose_cpu_recurrence to have said kPersistent.
void persistent_forward(ForwardPlan& p);

// The micro-kernel a call runs now: "avx512", "avx2" or "baseline" (the CPU's best, or the lower
// one FASTRNN_CPU_KERNEL names).
const char* persistent_kernel_name();

}  // namespace cpu
}  // namespace fastrnn
