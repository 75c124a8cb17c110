// Fused GRU step kernels: the math is gru_{forward,backward}_point of cell_math.h.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "fastrnn/cell_math.h"
#include "kernel_utils.cuh"
#include "launch.h"

namespace fastrnn {
namespace cuda {

template <typename T>
void launch_gru_forward(const GruForwardStep<T>& a) {
  launch_step<GruForwardStep<T>, gru_forward_point<T, at::opmath_type<T>>>(a);
}

template <typename T>
void launch_gru_backward(const GruBackwardStep<T>& a) {
  launch_step<GruBackwardStep<T>, gru_backward_point<T, at::opmath_type<T>>>(a);
}

#define FASTRNN_INSTANTIATE(T)                                    \
  template void launch_gru_forward<T>(const GruForwardStep<T>&); \
  template void launch_gru_backward<T>(const GruBackwardStep<T>&);
FASTRNN_INSTANTIATE(float)
FASTRNN_INSTANTIATE(double)
FASTRNN_INSTANTIATE(c10::Half)
FASTRNN_INSTANTIATE(c10::BFloat16)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
