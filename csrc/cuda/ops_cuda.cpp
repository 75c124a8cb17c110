// The CUDA backend: each layer call asks the recurrence dispatch (recurrence.cpp) how to run,
// then runs it. The step loop's GEMMs go through ATen/cuBLAS on the current stream, its
// pointwise steps are the kernels of lstm.cu / gru.cu. Kept in a .cpp so nvcc only compiles
// the small kernel files.
#include <torch/library.h>

#include "fastrnn/backend.h"
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

// Every entry asks the dispatch first; only the step loop exists so far (a forced persistent
// recurrence has already raised in choose_recurrence).
template <class Plan>
void check_step_loop(const Plan& p, bool backward) {
  const cuda::Recurrence r = cuda::choose_recurrence(cuda::recurrence_query(p, backward));
  TORCH_INTERNAL_ASSERT(r == cuda::Recurrence::kStepLoop, "fastrnn: unhandled recurrence ", cuda::recurrence_name(r));
}

struct CudaBackend {
  static void lstm_forward(ForwardPlan& p) {
    check_step_loop(p, false);
    Loop::lstm_forward(p);
  }
  static void gru_forward(ForwardPlan& p) {
    check_step_loop(p, false);
    Loop::gru_forward(p);
  }
  static void lstm_backward(BackwardPlan& p) {
    check_step_loop(p, true);
    Loop::lstm_backward(p);
  }
  static void gru_backward(BackwardPlan& p) {
    check_step_loop(p, true);
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
