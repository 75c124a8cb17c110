// CUDA registration: the shared sequence loops of sequence.h (GEMMs via ATen/cuBLAS on the
// current stream) with the fused step kernels of lstm.cu / gru.cu. Kept in a .cpp so nvcc only
// compiles the small kernel files.
#include <torch/library.h>

#include "fastrnn/sequence.h"
#include "launch.h"

namespace fastrnn {
namespace {

struct CudaLaunch {
  using Gemm = AtenGemm;
  // All T steps of gate grads at once (device memory comes from the caching allocator; one
  // large GEMM per parameter grad).
  static constexpr int64_t kGradChunkBytes = 0;
  template <typename T> static void lstm_forward(const LstmForwardStep<T>& a) { cuda::launch_lstm_forward(a); }
  template <typename T> static void lstm_backward(const LstmBackwardStep<T>& a) { cuda::launch_lstm_backward(a); }
  template <typename T> static void lstm_proj_commit(const LstmProjCommitStep<T>& a) { cuda::launch_lstm_proj_commit(a); }
  template <typename T> static void lstm_proj_backward(const LstmProjBackwardStep<T>& a) { cuda::launch_lstm_proj_backward(a); }
  template <typename T> static void gru_forward(const GruForwardStep<T>& a) { cuda::launch_gru_forward(a); }
  template <typename T> static void gru_backward(const GruBackwardStep<T>& a) { cuda::launch_gru_backward(a); }
  // A single step runs as two cuBLAS GEMVs and the pointwise kernel (no fused GEMV kernel yet).
  template <typename T> static bool lstm_single_step(const LstmForwardStep<T>&, const SingleStepProducts<T>&) { return false; }
  template <typename T> static bool gru_single_step(const GruForwardStep<T>&, const SingleStepProducts<T>&) { return false; }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward<CudaLaunch>);
  m.impl("lstm_backward", &lstm_backward<CudaLaunch>);
  m.impl("gru_forward", &gru_forward<CudaLaunch>);
  m.impl("gru_backward", &gru_backward<CudaLaunch>);
}

}  // namespace fastrnn
