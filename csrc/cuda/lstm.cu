// Fused LSTM step kernels: the math is lstm_{forward,backward}_point of cell_math.h.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "fastrnn/cell_math.h"
#include "kernel_utils.cuh"
#include "launch.h"

namespace fastrnn {
namespace cuda {

template <typename T>
void launch_lstm_forward(const LstmForwardStep<T>& a) {
  launch_step<LstmForwardStep<T>, lstm_forward_point<T, at::opmath_type<T>>>(a);
}

template <typename T>
void launch_lstm_backward(const LstmBackwardStep<T>& a) {
  launch_step<LstmBackwardStep<T>, lstm_backward_point<T, at::opmath_type<T>>>(a);
}

template <typename T>
void launch_lstm_proj_commit(const LstmProjCommitStep<T>& a) {
  launch_step<LstmProjCommitStep<T>, lstm_proj_commit_point<T, at::opmath_type<T>>>(a);
}

template <typename T>
void launch_lstm_proj_backward(const LstmProjBackwardStep<T>& a) {
  launch_step<LstmProjBackwardStep<T>, lstm_proj_backward_point<T, at::opmath_type<T>>>(a);
}

#define FASTRNN_INSTANTIATE(T)                                                \
  template void launch_lstm_forward<T>(const LstmForwardStep<T>&);           \
  template void launch_lstm_backward<T>(const LstmBackwardStep<T>&);         \
  template void launch_lstm_proj_commit<T>(const LstmProjCommitStep<T>&);    \
  template void launch_lstm_proj_backward<T>(const LstmProjBackwardStep<T>&);
FASTRNN_INSTANTIATE(float)
FASTRNN_INSTANTIATE(double)
FASTRNN_INSTANTIATE(c10::Half)
FASTRNN_INSTANTIATE(c10::BFloat16)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
