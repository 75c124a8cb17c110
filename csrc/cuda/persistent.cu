// The persistent forward kernel (fastrnn/persistent.h): one cooperative launch per layer and
// direction, a grid-wide barrier per step. Selected only by FASTRNN_RECURRENCE=persistent
// until it has passed the CUDA suite on a GPU (recurrence.cpp).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>

#include <mutex>

#include "fastrnn/persistent.h"
#include "launch.h"
#include "smem_optin.cuh"

namespace fastrnn {
namespace cuda {
namespace {

template <typename T>
__global__ void persistent_forward_kernel(const PersistentForwardArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* w = reinterpret_cast<T*>(smem);
  auto* pre = reinterpret_cast<at::opmath_type<T>*>(smem + persistent_weight_bytes(a.G, a.U, a.units, sizeof(T)));
  const int64_t block = blockIdx.x, tid = threadIdx.x, nthreads = blockDim.x;
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  persistent_load_weights(a, block, tid, nthreads, w);
  __syncthreads();
  for (int64_t s = 0; s < a.T; ++s) {
    persistent_products(a, s, tid, nthreads, w, pre);
    __syncthreads();
    persistent_update(a, s, block, tid, nthreads, pre);
    grid.sync();  // h_s complete in global memory before any block reads it
  }
}

}  // namespace

template <typename T>
const char* persistent_forward_unavailable(const PersistentPartition& part, int64_t sms) {
  int device = 0, cooperative = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  if (!cooperative) return "the device cannot launch cooperative kernels";
  allow_all_shared_memory<persistent_forward_kernel<T>>(device);
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_forward_kernel<T>, int(part.threads),
                                                               part.smem_bytes));
  if (int64_t(per_sm) * sms < part.blocks) {
    return "its blocks cannot all be resident at once on the SMs this process can use";
  }
  return nullptr;
}

template <typename T>
const char* launch_persistent_forward(const PersistentForwardArgs<T>& a, const PersistentPartition& part) {
  const auto kernel = persistent_forward_kernel<T>;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  allow_all_shared_memory<persistent_forward_kernel<T>>(device);
  void* args[] = {const_cast<PersistentForwardArgs<T>*>(&a)};
  const cudaError_t err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(part.blocks)),
                                                      dim3(unsigned(part.threads)), args, size_t(part.smem_bytes),
                                                      c10::cuda::getCurrentCUDAStream());
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // not sticky: clear it so the fallback's launches are not blamed
    return "the device refused the cooperative launch: its blocks cannot all be resident";
  }
  C10_CUDA_CHECK(err);
  return nullptr;
}

#define FASTRNN_INSTANTIATE_PERSISTENT(T)                                                   \
  template const char* persistent_forward_unavailable<T>(const PersistentPartition&, int64_t); \
  template const char* launch_persistent_forward<T>(const PersistentForwardArgs<T>&, const PersistentPartition&);
FASTRNN_INSTANTIATE_PERSISTENT(float)
FASTRNN_INSTANTIATE_PERSISTENT(double)
FASTRNN_INSTANTIATE_PERSISTENT(c10::Half)
FASTRNN_INSTANTIATE_PERSISTENT(c10::BFloat16)
#undef FASTRNN_INSTANTIATE_PERSISTENT

}  // namespace cuda
}  // namespace fastrnn
