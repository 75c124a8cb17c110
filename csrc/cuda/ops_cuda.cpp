// The CUDA backend: each layer call asks the recurrence dispatch (recurrence.cpp) how to run,
// then runs it: the step loop (GEMMs through ATen/cuBLAS on the current stream, pointwise steps
// from lstm.cu / gru.cu), a persistent kernel (persistent_mma.cu: forward and backward;
// persistent.cu: forward) or the fused single step (single_step.cu). Kept in a .cpp so nvcc only
// compiles the kernel files.
#include <torch/library.h>

#include "fastrnn/backend.h"
#include "fastrnn/persistent_host.h"
#include "fastrnn/step_loop.h"
#include "launch.h"
#include "recurrence.h"

namespace fastrnn {
namespace {

struct CudaKernels {
  static constexpr const char* kStepLoopPath = "cuda.step_loop";
  using Gemm = AtenGemm;
  // All T steps of gate grads at once (device memory comes from the caching allocator; one
  // large GEMM per parameter grad).
  static constexpr int64_t kGradChunkBytes = 0;
  template <class Point, class Step>
  static void run(const Step& a) {
    cuda::launch_step<Point>(a);
  }
  static constexpr bool kRowStages = false;  // run_stages: one launch per stage
};

using Loop = StepLoop<CudaKernels>;

// Forwards and backwards run what the dispatch chooses. A fallback reason goes into the path log
// next to the step loop's record.
template <class StepLoopForward>
void forward(ForwardPlan& p, StepLoopForward&& step_loop) {
  cuda::RecurrenceChoice c = cuda::choose_recurrence(cuda::recurrence_query(p, false));
  if (c.kind == cuda::Recurrence::kSingleStep) {
    run_single_step(p, "cuda.single_step", [](const auto& a) { cuda::launch_single_step(a); });
    return;
  }
  const char* refused = nullptr;
  if (c.kind == cuda::Recurrence::kPersistentMma) {
    refused = run_persistent_forward(p, as_persistent_partition(c.mma), "cuda.persistent_mma", [&c](const auto& args, const PersistentPartition&) {
      return cuda::launch_persistent_mma_forward(args, c.mma, c.split);
    });
  } else if (c.kind == cuda::Recurrence::kPersistent) {
    refused = run_persistent_forward(
        p, c.part, "cuda.persistent",
        [](const auto& args, const PersistentPartition& part) { return cuda::launch_persistent_forward(args, part); });
  }
  if (c.kind != cuda::Recurrence::kStepLoop) {
    if (refused == nullptr) return;
    // The residency check passed but the device refused the grid (e.g. fewer SMs under MPS than
    // the context reports): forced, that is an error; preferred, the step loop runs the call.
    TORCH_CHECK_NOT_IMPLEMENTED(cuda::prefer_persistent(), "FASTRNN_RECURRENCE=persistent, but ", refused);
    c.fallback = refused;
  }
  step_loop(p);
  if (c.fallback != nullptr) PathLog::note_fallback(p.op, c.fallback);
}

template <class StepLoopBackward>
void backward(BackwardPlan& p, StepLoopBackward&& step_loop) {
  cuda::RecurrenceChoice c = cuda::choose_recurrence(cuda::recurrence_query(p, true));
  if (c.kind == cuda::Recurrence::kPersistentMma) {
    const char* refused = run_persistent_backward(p, c.mma_bwd, c.split, "cuda.persistent_mma", [&c](const auto& args) {
      return cuda::launch_persistent_mma_backward(args, c.mma_bwd);
    });
    if (refused == nullptr) return;
    TORCH_CHECK_NOT_IMPLEMENTED(cuda::prefer_persistent(), "FASTRNN_RECURRENCE=persistent, but ", refused);
    c.fallback = refused;
  }
  step_loop(p);
  if (c.fallback != nullptr) PathLog::note_fallback(p.op, c.fallback);
}

struct CudaBackend {
  static void lstm_forward(ForwardPlan& p) { forward(p, Loop::lstm_forward); }
  static void gru_forward(ForwardPlan& p) { forward(p, Loop::gru_forward); }
  static void lstm_backward(BackwardPlan& p) { backward(p, Loop::lstm_backward); }
  static void gru_backward(BackwardPlan& p) { backward(p, Loop::gru_backward); }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward<CudaBackend>);
  m.impl("lstm_backward", &lstm_backward<CudaBackend>);
  m.impl("gru_forward", &gru_forward<CudaBackend>);
  m.impl("gru_backward", &gru_backward<CudaBackend>);
}

}  // namespace fastrnn
