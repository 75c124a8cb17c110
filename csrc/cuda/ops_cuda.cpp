// The CUDA backend: each layer call asks the recurrence dispatch (recurrence.cpp) how to run,
// then runs it: the step loop (GEMMs through ATen/cuBLAS on the current stream, pointwise steps
// from lstm.cu / gru.cu) or the persistent forward (persistent.cu). Kept in a .cpp so nvcc only
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
};

using Loop = StepLoop<CudaKernels>;

// Forwards run what the dispatch chooses; backwards run the step loop (there is no persistent
// backward yet; choose_recurrence still validates FASTRNN_RECURRENCE for them).
template <class StepLoopForward>
void forward(ForwardPlan& p, StepLoopForward&& step_loop) {
  const cuda::RecurrenceChoice c = cuda::choose_recurrence(cuda::recurrence_query(p, false));
  if (c.kind == cuda::Recurrence::kPersistent) {
    run_persistent_forward(p, c.part, "cuda.persistent",
                           [](const auto& args, const PersistentPartition& part) { cuda::launch_persistent_forward(args, part); });
  } else {
    step_loop(p);
  }
}

void check_backward(const BackwardPlan& p) {
  const cuda::RecurrenceChoice c = cuda::choose_recurrence(cuda::recurrence_query(p, true));
  TORCH_INTERNAL_ASSERT(c.kind == cuda::Recurrence::kStepLoop, "fastrnn: no persistent backward");
}

struct CudaBackend {
  static void lstm_forward(ForwardPlan& p) { forward(p, Loop::lstm_forward); }
  static void gru_forward(ForwardPlan& p) { forward(p, Loop::gru_forward); }
  static void lstm_backward(BackwardPlan& p) {
    check_backward(p);
    Loop::lstm_backward(p);
  }
  static void gru_backward(BackwardPlan& p) {
    check_backward(p);
    Loop::gru_backward(p);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward<CudaBackend>);
  m.impl("lstm_backward", &lstm_backward<CudaBackend>);
  m.impl("gru_forward", &gru_forward<CudaBackend>);
  m.impl("gru_backward", &gru_backward<CudaBackend>);
}

}  // namespace fastrnn
