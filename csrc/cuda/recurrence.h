// How a CUDA layer call runs its recurrence: the one decision point (recurrence.cpp), and the
// only code that reads the FASTRNN_RECURRENCE override. docs/DESIGN.md ("Backends and
// dispatch") has the rules and how a new implementation joins them.
#pragma once

#include <c10/core/ScalarType.h>

#include "fastrnn/layer_plan.h"
#include "fastrnn/persistent.h"

namespace fastrnn {
namespace cuda {

enum class Recurrence {
  kStepLoop,    // per step one cuBLAS GEMM + one fused pointwise kernel (step_loop.h)
  kPersistent,  // one cooperative launch per layer and direction over all steps (persistent.h)
};

const char* recurrence_name(Recurrence r);

// What the choice depends on: the call's sizes, dtype, lengths and direction in time, and the
// device's limits.
struct RecurrenceQuery {
  const CellInfo* cell;   // the cell's table (cell_traits.h)
  Dims d;
  at::ScalarType dtype;
  bool masked;            // lengths given
  bool backward;
  bool projected;         // LSTM with proj_size
  int64_t sms;            // multiprocessors of the device
  int64_t smem_limit;     // bytes of dynamic shared memory one block may opt into
  bool probe_device;      // also ask the device (cooperative launch, residency); off in the test hook
};

// The query for a plan on the current device.
RecurrenceQuery recurrence_query(const LayerPlan& p, bool backward);

struct RecurrenceChoice {
  Recurrence kind;
  PersistentPartition part;  // for kPersistent
};

// FASTRNN_RECURRENCE=auto (or unset) picks the fastest implementation validated on a GPU for the
// call (today: the step loop); step forces the step loop; persistent forces the persistent
// forward (whose backward is the step loop until a persistent backward exists) and raises
// NotImplementedError naming the reason where it cannot run the call. Any other value raises
// ValueError.
RecurrenceChoice choose_recurrence(const RecurrenceQuery& q);

}  // namespace cuda
}  // namespace fastrnn
