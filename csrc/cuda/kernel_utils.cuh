// One thread per (row, j) pair of a step; the grid covers the step's rows x H.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace fastrnn {
namespace cuda {

constexpr int kThreads = 256;

template <typename Args, void (*Point)(const Args&, int64_t, int64_t)>
__global__ void __launch_bounds__(kThreads) step_kernel(const Args a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.H) Point(a, i / a.H, i % a.H);
}

template <typename Args, void (*Point)(const Args&, int64_t, int64_t)>
void launch_step(const Args& a) {
  const int64_t n = a.rows * a.H;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  step_kernel<Args, Point><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastrnn
