// How a CUDA layer call runs its recurrence: the one decision point (recurrence.cpp), and the
// only code that reads the FASTRNN_RECURRENCE override. docs/DESIGN.md ("Backends and
// dispatch") has the rules and how a new implementation joins them.
#pragma once

#include <c10/core/ScalarType.h>

#include "fastrnn/layer_plan.h"

namespace fastrnn {
namespace cuda {

enum class Recurrence {
  kStepLoop,    // per step one cuBLAS GEMM + one fused pointwise kernel (step_loop.h)
  kPersistent,  // one launch per layer and direction over all steps (not built yet)
};

const char* recurrence_name(Recurrence r);

// What the choice depends on: the call's sizes, dtype and lengths, and its direction in time.
struct RecurrenceQuery {
  int64_t gates;          // 4 (LSTM) or 3 (GRU)
  Dims d;
  at::ScalarType dtype;
  bool masked;            // lengths given
  bool backward;
};

inline RecurrenceQuery recurrence_query(const LayerPlan& p, bool backward) {
  return {p.G, p.d, p.x.scalar_type(), p.masked(), backward};
}

// FASTRNN_RECURRENCE=auto (or unset) picks the fastest implementation validated on a GPU for the
// call; step and persistent force one, and a forced one that cannot run the call raises
// NotImplementedError naming the reason. Any other value raises ValueError.
Recurrence choose_recurrence(const RecurrenceQuery& q);

}  // namespace cuda
}  // namespace fastrnn
