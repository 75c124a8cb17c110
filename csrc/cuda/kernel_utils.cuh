// The generic step launch: one thread per (row, unit) pair; the grid covers a step's
// rows x units. Included by the .cu files that instantiate launch_step (see launch.h).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "launch.h"

namespace fastrnn {
namespace cuda {

constexpr int kThreads = 256;

template <class Point, class Step>
__global__ void __launch_bounds__(kThreads) step_kernel(const Step a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.units) Point::template run<at::opmath_type<typename Step::scalar_type>>(a, i / a.units, i % a.units);
}

template <class Point, class Step>
void launch_step(const Step& a) {
  const int64_t n = a.rows * a.units;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  step_kernel<Point, Step><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Explicit instantiations of launch_step for one point function and every scalar type.
#define FASTRNN_INSTANTIATE_STEP(Point, Step)                          \
  template void launch_step<Point, Step<float>>(const Step<float>&);   \
  template void launch_step<Point, Step<double>>(const Step<double>&); \
  template void launch_step<Point, Step<c10::Half>>(const Step<c10::Half>&); \
  template void launch_step<Point, Step<c10::BFloat16>>(const Step<c10::BFloat16>&);

}  // namespace cuda
}  // namespace fastrnn
