// How a CUDA layer call runs its recurrence: the one decision point (recurrence.cpp), and the
// only code that reads the FASTRNN_RECURRENCE override. docs/DESIGN.md ("Backends and
// dispatch") has the rules and how a new implementation joins them.
#pragma once

#include <c10/core/ScalarType.h>

#include "fastrnn/layer_plan.h"
#include "fastrnn/persistent.h"
#include "fastrnn/persistent_mma.h"
#include "fastrnn/persistent_mma_bwd.h"

namespace fastrnn {
namespace cuda {

enum class Recurrence {
  kStepLoop,       // per step one cuBLAS GEMM + one fused pointwise kernel (step_loop.h)
  kPersistent,     // one cooperative launch per layer and direction over all steps (persistent.h)
  kPersistentMma,  // the same with tensor-core products and a step counter (persistent_mma.h; a
                   // backward: persistent_mma_bwd.h)
  kSingleStep,     // a cell call (T = 1) as one fused kernel, both products and the cell math
                   // (single_step.h)
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
  int64_t sms;            // multiprocessors this process can use (usable_sms)
  int64_t smem_limit;     // bytes of dynamic shared memory one block may opt into
  bool probe_device;      // also ask the device (cooperative launch, residency); off in the test hook
  int64_t blocks_per_sm;  // without probe_device: CTAs of the tensor-core kernel one SM is taken to hold
  bool allow_tf32;        // torch's matmul TF32 flag: fp32 products may be plain TF32
  const char* unsupported_option = nullptr;  // LayerPlan::unsupported_option(): an option it lacks
};

// The query for a plan on the current device.
RecurrenceQuery recurrence_query(const LayerPlan& p, bool backward);

struct RecurrenceChoice {
  Recurrence kind;
  PersistentPartition part;        // for kPersistent
  MmaPartition mma;                // for kPersistentMma (a forward)
  MmaBwdPartition mma_bwd;         // for kPersistentMma (a backward)
  bool split = true;               // kPersistentMma in fp32: 3xTF32 (else plain TF32)
  const char* fallback = nullptr;  // a string literal: why the preferred persistent path does not
                                   // run this call (FASTRNN_RECURRENCE=prefer-persistent);
                                   // nullptr otherwise
};

// FASTRNN_RECURRENCE=auto (or unset) picks the fastest implementation validated on a GPU for the
// call (today: the step loop); step forces the step loop; persistent forces a persistent
// kernel — a forward: the fused single step for a cell call it fits, else the tensor-core kernel
// where it fits, else the scalar one; a backward: the tensor-core backward — and raises
// NotImplementedError naming the reason where it cannot run the call; prefer-persistent runs the
// fused single step, the tensor-core persistent forward and backward wherever they can and the
// step loop elsewhere, with the reason in `fallback` (so the whole CUDA suite runs with every
// eligible call on them). Any other value raises ValueError.
RecurrenceChoice choose_recurrence(const RecurrenceQuery& q);

// Multiprocessors the current context may run blocks on: the device's count, or fewer under a
// green context (its SM partition). See recurrence.cpp for MPS.
int64_t usable_sms(int device);

// The FASTRNN_RECURRENCE mode is prefer-persistent (a launch the device refuses then falls back).
bool prefer_persistent();

}  // namespace cuda
}  // namespace fastrnn
