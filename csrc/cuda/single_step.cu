// The fused single step on CUDA (fastrnn/single_step.h): one kernel for a T = 1 forward of at most
// kSingleStepMaxRows rows, both products and the cell math. Selected only by
// FASTRNN_RECURRENCE=persistent / prefer-persistent (recurrence.cpp); not yet run on a GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "fastrnn/single_step.h"
#include "launch.h"

namespace fastrnn {
namespace cuda {
namespace {

// CTA blockIdx.x owns units [kSingleStepUnits * blockIdx.x, ...); each warp takes tasks (a
// product and a gate row), sums its lanes' partials by a butterfly, and lane 0 stores them; after
// the barrier the CTA's pairs run the step loop's point on what the CTA itself stored.
template <typename T>
__global__ void __launch_bounds__(kSingleStepWarps * 32) single_step_kernel(const SingleStepArgs<T> a) {
  using Acc = at::opmath_type<T>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t q = warp; q < single_step_tasks(a); q += kSingleStepWarps) {
    Acc acc[kSingleStepMaxRows];
    if (!single_step_partial(a, blockIdx.x, q, lane, acc)) continue;  // warp-uniform
#pragma unroll
    for (int r = 0; r < kSingleStepMaxRows; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    }
    if (lane == 0) single_step_store(a, blockIdx.x, q, acc);
  }
  __syncthreads();  // the CTA's xproj / hproj stores precede the points' loads
  single_step_update(a, blockIdx.x, threadIdx.x, blockDim.x);
}

}  // namespace

template <typename T>
void launch_single_step(const SingleStepArgs<T>& a) {
  const int64_t H = a.G == LstmCell::kGates ? a.lstm.units : a.gru.units;
  const int64_t ctas = (H + kSingleStepUnits - 1) / kSingleStepUnits;
  single_step_kernel<T><<<dim3(unsigned(ctas)), dim3(unsigned(kSingleStepWarps * 32)), 0,
                          c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_single_step<float>(const SingleStepArgs<float>&);
template void launch_single_step<double>(const SingleStepArgs<double>&);
template void launch_single_step<c10::Half>(const SingleStepArgs<c10::Half>&);
template void launch_single_step<c10::BFloat16>(const SingleStepArgs<c10::BFloat16>&);

}  // namespace cuda
}  // namespace fastrnn
