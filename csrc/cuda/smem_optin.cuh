// Shared-memory opt-in for the persistent kernels (persistent.cu, persistent_mma.cu).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <mutex>

namespace fastrnn {
namespace cuda {

// Lets Kernel use all the shared memory a block may opt into, once per (kernel, device): each
// launch's own size then decides what it takes, and setting the limit per call would race between
// host threads launching different sizes.
template <auto Kernel>
void allow_all_shared_memory(int device) {
  constexpr int kMaxDevices = 64;
  static std::once_flag flags[kMaxDevices];
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "fastrnn: device index ", device, " out of range");
  std::call_once(flags[device], [device] {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  });
}

}  // namespace cuda
}  // namespace fastrnn
