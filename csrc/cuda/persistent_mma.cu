// The tensor-core persistent kernels, forward (fastrnn/persistent_mma.h) and backward
// (fastrnn/persistent_mma_bwd.h): one cooperative launch per layer and direction (cooperative
// only for its guarantee that every CTA is resident, which the spin-waits need; there is no
// grid.sync), per step warp-level mma.sync products, the shared cell math, and monotonic step
// counters instead of a grid barrier. Selected only by FASTRNN_RECURRENCE=persistent /
// prefer-persistent (recurrence.cpp); not yet run on a GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <mutex>
#include <type_traits>

#include "fastrnn/persistent_mma.h"
#include "fastrnn/persistent_mma_bwd.h"
#include "launch.h"
#include "smem_optin.cuh"

namespace fastrnn {
namespace cuda {
namespace {

// d += a b on one m16n8 tile, a warp-wide instruction (every lane of the warp calls it).
// 16-bit: a 8 elements = 4 registers, b 4 elements = 2 registers; fp32 as TF32: a 4, b 2.
template <typename T>
__device__ __forceinline__ void warp_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // the dispatch never launches this below sm_80
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t bits16(T v) {
  return uint32_t(v.x);
}

// Wait until every CTA has published step s - 1: the counter reaches target. One thread spins;
// the acquire load orders this CTA's later reads after the producers' releases (bar.sync then
// extends that to the other threads, as in cooperative groups' grid barrier).
__device__ __forceinline__ void wait_counter(const unsigned long long* counter, unsigned long long target) {
  unsigned long long v;
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
    if (v >= target) return;
    __nanosleep(32);
  }
}

__device__ __forceinline__ void publish(unsigned long long* counter) {
  asm volatile("red.release.gpu.global.add.u64 [%0], %1;" ::"l"(counter), "l"(1ull) : "memory");
}

// The 16-bit B fragment as two 32-bit words: elements (b0, b1) and (b2, b3) are adjacent k of
// one batch row (checked here against the map), so each pair is one shared load.
constexpr bool b_pairs_adjacent() {
  for (int lane = 0; lane < 32; ++lane) {
    for (int w = 0; w < 2; ++w) {
      const mma::RowCol lo = mma::b_m16n8k16(lane, 2 * w), hi = mma::b_m16n8k16(lane, 2 * w + 1);
      if (hi.row != lo.row + 1 || hi.col != lo.col || lo.row % 2 != 0) return false;
    }
  }
  return true;
}
static_assert(b_pairs_adjacent(), "m16n8k16 B fragment pairs must be adjacent in k");

template <typename T>
__global__ void __launch_bounds__(kMmaWarps * 32) persistent_mma_kernel(const PersistentMmaArgs<T> a) {
  using S = MmaShape<T>;
  using Op = MmaOperand<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const MmaSmem sm = mma_smem(sizeof(T), a.ktiles, a.ntiles, a.kslices, a.B, a.G * a.U);
  T* wf = reinterpret_cast<T*>(smem + sm.weights);
  T* hs = reinterpret_cast<T*>(smem + sm.hstage);
  float* partial = reinterpret_cast<float*>(smem + sm.partial);
  float* pre = reinterpret_cast<float*>(smem + sm.pre);
  const int64_t nw = a.ktiles * 32 * S::kA;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  mma_load_weights(a, blockIdx.x, tid, blockDim.x, wf);
  mma_zero_stage(a, tid, blockDim.x, hs);
  __syncthreads();
  // One k-tile of an item into the accumulators of its parity (dh: hi * hi, dx: fp32 cross terms).
  const auto k_tile = [&](int64_t nt, int64_t kt, float (&dh)[4], float (&dx)[4]) {
    const uint4 ah = *reinterpret_cast<const uint4*>(wf + (kt * 32 + lane) * S::kA);
    const uint32_t a_hi[4] = {ah.x, ah.y, ah.z, ah.w};
    if constexpr (sizeof(T) == 2) {
      const int64_t r = nt * mma::kN + mma::b_m16n8k16(lane, 0).col;
      const T* row = hs + r * a.ldh + kt * S::kK;
      const uint32_t bf[2] = {r < a.B ? *reinterpret_cast<const uint32_t*>(row + mma::b_m16n8k16(lane, 0).row) : 0u,
                              r < a.B ? *reinterpret_cast<const uint32_t*>(row + mma::b_m16n8k16(lane, 2).row) : 0u};
      warp_mma<T>(dh, a_hi, bf);
    } else {
      T b[S::kB];
      mma_load_b(a, hs, nt, kt, lane, b);
      const float b0 = Op::hi(b[0]), b1 = Op::hi(b[1]);
      const uint32_t b_hi[2] = {__float_as_uint(b0), __float_as_uint(b1)};
      if (a.split) {
        const uint4 al = *reinterpret_cast<const uint4*>(wf + nw + (kt * 32 + lane) * S::kA);
        const uint32_t a_lo[4] = {al.x, al.y, al.z, al.w};
        const uint32_t b_lo[2] = {__float_as_uint(Op::lo(b[0], b0)), __float_as_uint(Op::lo(b[1], b1))};
        warp_mma<T>(dx, a_lo, b_hi);
        warp_mma<T>(dx, a_hi, b_lo);
      }
      warp_mma<T>(dh, a_hi, b_hi);
    }
  };
  for (int64_t s = 0; s < a.T; ++s) {
    if (s > 0) {
      if (tid == 0) wait_counter(a.counter, static_cast<unsigned long long>(gridDim.x) * s);
      __syncthreads();
    }
    mma_stage_h(a, (s & 1) ? a.h[1] : a.h[0], tid, blockDim.x, hs);
    __syncthreads();
    for (int64_t item = warp; item < a.ntiles * a.kslices; item += kMmaWarps) {
      const int64_t nt = item % a.ntiles, ks = item / a.ntiles;
      int64_t kt0, kt1;
      mma_slice(a.ktiles, a.kslices, ks, kt0, kt1);
      float dh0[4] = {}, dh1[4] = {}, dx0[4] = {}, dx1[4] = {};
      for (int64_t kt = kt0; kt < kt1; kt += 2) {
        k_tile(nt, kt, dh0, dx0);
        if (kt + 1 < kt1) k_tile(nt, kt + 1, dh1, dx1);
      }
      float d[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) d[i] = (dh0[i] + dh1[i]) + (dx0[i] + dx1[i]);
      mma_store_partial(a.ntiles, nt, ks, lane, d, partial);
    }
    __syncthreads();
    mma_reduce(a, tid, blockDim.x, partial, pre);
    __syncthreads();
    persistent_update(a, s, blockIdx.x, tid, blockDim.x, pre);
    __syncthreads();  // every thread's h_s stores precede thread 0's release
    if (tid == 0) publish(a.counter);
  }
}

// The backward (persistent_mma_bwd.h). CTA blockIdx.x: unit group blockIdx.x % unit_groups of
// batch group blockIdx.x / unit_groups, whose counter it waits on and advances. Iteration q runs
// s = T - 1 - q; q = T multiplies iteration 0's grads into dh0 and publishes nothing.
template <typename T>
__global__ void __launch_bounds__(kMmaWarps * 32) persistent_mma_bwd_kernel(const PersistentMmaBwdArgs<T> a) {
  using S = MmaShape<T>;
  using Op = MmaOperand<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const MmaBwdSmem sm = mma_bwd_smem(sizeof(T), a.ktiles, a.tiles, a.kslices);
  T* wf = reinterpret_cast<T*>(smem + sm.weights);
  float* partial = reinterpret_cast<float*>(smem + sm.partial);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t ug = blockIdx.x % a.unit_groups, gb = blockIdx.x / a.unit_groups, steps = a.common.T;
  unsigned long long* counter = a.counters + gb;
  mma_bwd_load_weights(a, ug, tid, blockDim.x, wf);
  __syncthreads();
  // One k-tile's MMAs from its B fragment into the accumulators of its parity (dh: hi * hi, dx:
  // the fp32 split's cross terms).
  const auto k_tile = [&](const T (&b)[S::kB], int64_t kt, float (&dh)[4], float (&dx)[4]) {
    if constexpr (sizeof(T) == 2) {
      const uint4 av = *reinterpret_cast<const uint4*>(wf + (kt * 32 + lane) * S::kA);
      const uint32_t af[4] = {av.x, av.y, av.z, av.w};
      // element 2w in the low half of register w (b_pairs_adjacent: adjacent k of one row)
      const uint32_t bf[2] = {bits16(b[0]) | (bits16(b[1]) << 16), bits16(b[2]) | (bits16(b[3]) << 16)};
      warp_mma<T>(dh, af, bf);
    } else {
      const float4 av = *reinterpret_cast<const float4*>(wf + (kt * 32 + lane) * S::kA);
      const float w[4] = {av.x, av.y, av.z, av.w};
      uint32_t a_hi[4], a_lo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float h = Op::hi(w[i]);
        a_hi[i] = __float_as_uint(h);
        a_lo[i] = __float_as_uint(Op::lo(w[i], h));
      }
      const float b0 = Op::hi(b[0]), b1 = Op::hi(b[1]);
      const uint32_t b_hi[2] = {__float_as_uint(b0), __float_as_uint(b1)};
      if (a.split) {
        const uint32_t b_lo[2] = {__float_as_uint(Op::lo(b[0], b0)), __float_as_uint(Op::lo(b[1], b1))};
        warp_mma<T>(dx, a_lo, b_hi);
        warp_mma<T>(dx, a_hi, b_lo);
      }
      warp_mma<T>(dh, a_hi, b_hi);
    }
  };
  // The B fragments come from L2 in chunks of kChunk k-tiles, all loads of a chunk issued before
  // its MMAs: one L2 round trip a chunk instead of one a k-tile.
  constexpr int kChunk = 8;
  for (int64_t q = 0; q <= steps; ++q) {
    const int64_t s = steps - 1 - q;
    if (q > 0) {
      if (tid == 0) wait_counter(counter, static_cast<unsigned long long>(a.unit_groups) * q);
      __syncthreads();
      const T* src = ((s + 1) & 1) ? a.dstep[1] : a.dstep[0];
      for (int64_t item = warp; item < a.tiles * a.kslices; item += kMmaWarps) {
        const int64_t lt = item % a.tiles, ks = item / a.tiles, nt = gb * a.tiles + lt;
        if (nt >= a.ntiles || !mma_bwd_tile_needed(a, s, nt)) continue;  // warp-uniform
        int64_t kt0, kt1;
        mma_slice(a.ktiles, a.kslices, ks, kt0, kt1);
        float dh0[4] = {}, dh1[4] = {}, dx0[4] = {}, dx1[4] = {};
        for (int64_t kc = kt0; kc < kt1; kc += kChunk) {
          T b[kChunk][S::kB];
#pragma unroll
          for (int c = 0; c < kChunk; ++c) {
            if (kc + c < kt1) mma_bwd_load_b(a, src, nt, kc + c, lane, b[c]);
          }
#pragma unroll
          for (int c = 0; c < kChunk; c += 2) {  // kChunk even: parity (kt - kt0) & 1 = c & 1
            if (kc + c < kt1) k_tile(b[c], kc + c, dh0, dx0);
            if (kc + c + 1 < kt1) k_tile(b[c + 1], kc + c + 1, dh1, dx1);
          }
        }
        float d[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) d[i] = (dh0[i] + dh1[i]) + (dx0[i] + dx1[i]);
        mma_store_partial(a.tiles, lt, ks, lane, d, partial);
      }
      __syncthreads();
      mma_bwd_reduce(a, s, ug, gb, tid, blockDim.x, partial);
      __syncthreads();
    }
    if (s < 0) break;
    mma_bwd_update(a, s, ug, gb, tid, blockDim.x);
    __syncthreads();  // every thread's grad stores precede thread 0's release
    if (tid == 0) publish(counter);
  }
}

// What both tensor-core kernels need of the current device (compute capability 8.0 or newer,
// cooperative launch), or why it cannot run them; sets device and optin (the opt-in shared
// memory per block).
const char* mma_device_unavailable(int& device, int& optin) {
  int cooperative = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) return "the tensor-core kernel needs compute capability 8.0 or newer (mma.sync with bf16 / tf32)";
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  if (!cooperative) return "the device cannot launch cooperative kernels";
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return nullptr;
}

// One cooperative launch on the current stream. A device that cannot hold all CTAs at once
// refuses it although the residency check passed (MPS shares, see docs/DESIGN.md): that is
// returned as the reason (the dispatch falls back or raises); any other error throws.
const char* launch_cooperative(const void* kernel, int64_t ctas, int64_t threads, void** kargs, int64_t smem) {
  const cudaError_t err = cudaLaunchCooperativeKernel(kernel, dim3(unsigned(ctas)), dim3(unsigned(threads)), kargs,
                                                      size_t(smem), c10::cuda::getCurrentCUDAStream());
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();
    return "the device refused the cooperative launch: its CTAs cannot all be resident";
  }
  C10_CUDA_CHECK(err);
  return nullptr;
}

}  // namespace

template <typename T>
const char* persistent_mma_unavailable(int64_t G, int64_t H, int64_t B, int64_t sms, MmaPartition& part) {
  if constexpr (std::is_same_v<T, double>) {
    return "float64 stays on the step loop";
  } else {
    int device = 0, optin = 0, per_sm = 0;
    if (const char* why = mma_device_unavailable(device, optin)) return why;
    // The shared-memory need first (occupancy is asked for that size)
    const char* why = plan_persistent_mma(G, H, B, int64_t(sizeof(T)), sms, 1 << 20, optin, part);
    if (why != nullptr) return why;
    allow_all_shared_memory<persistent_mma_kernel<T>>(device);
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_mma_kernel<T>,
                                                                 int(part.threads), part.smem_bytes));
    return plan_persistent_mma(G, H, B, int64_t(sizeof(T)), sms, per_sm, optin, part);
  }
}

template <typename T>
const char* launch_persistent_mma_forward(const PersistentForwardArgs<T>& args, const MmaPartition& part, bool split) {
  if constexpr (std::is_same_v<T, double>) {
    TORCH_INTERNAL_ASSERT(false, "fastrnn: no float64 tensor-core kernel");
    return nullptr;
  } else {
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    allow_all_shared_memory<persistent_mma_kernel<T>>(device);
    // The step counter: zeroed on the current stream, so the kernel sees it zero.
    const at::Tensor counter = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, device));
    PersistentMmaArgs<T> a =
        mma_args(args, part, split, reinterpret_cast<unsigned long long*>(counter.mutable_data_ptr<int64_t>()));
    void* kargs[] = {&a};
    return launch_cooperative(reinterpret_cast<const void*>(persistent_mma_kernel<T>), part.ctas, part.threads, kargs,
                              part.smem_bytes);
  }
}

template <typename T>
const char* persistent_mma_bwd_unavailable(int64_t G, int64_t H, int64_t B, int64_t sms, MmaBwdPartition& part) {
  if constexpr (std::is_same_v<T, double>) {
    return "float64 stays on the step loop";
  } else {
    int device = 0, optin = 0, per_sm = 0;
    if (const char* why = mma_device_unavailable(device, optin)) return why;
    allow_all_shared_memory<persistent_mma_bwd_kernel<T>>(device);
    // The shared memory depends on the tiles a CTA takes, which depend on the residency: plan for
    // one tile a CTA, ask the occupancy for that size, plan again, and once more if the size grew.
    const int64_t elem = int64_t(sizeof(T));
    const char* why = plan_persistent_mma_bwd(G, H, B, elem, sms, 1 << 20, optin, part);
    if (why != nullptr) return why;
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t bytes = part.smem_bytes;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_mma_bwd_kernel<T>,
                                                                   int(part.threads), bytes));
      why = plan_persistent_mma_bwd(G, H, B, elem, sms, per_sm, optin, part);
      if (why != nullptr || part.smem_bytes <= bytes) return why;
    }
    return why;
  }
}

template <typename T>
const char* launch_persistent_mma_backward(const PersistentMmaBwdArgs<T>& args, const MmaBwdPartition& part) {
  if constexpr (std::is_same_v<T, double>) {
    TORCH_INTERNAL_ASSERT(false, "fastrnn: no float64 tensor-core kernel");
    return nullptr;
  } else {
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    allow_all_shared_memory<persistent_mma_bwd_kernel<T>>(device);
    // One step counter a batch group, zeroed on the current stream.
    const at::Tensor counters =
        at::zeros({part.batch_groups}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, device));
    PersistentMmaBwdArgs<T> a = args;
    a.counters = reinterpret_cast<unsigned long long*>(counters.mutable_data_ptr<int64_t>());
    void* kargs[] = {&a};
    return launch_cooperative(reinterpret_cast<const void*>(persistent_mma_bwd_kernel<T>), part.ctas, part.threads,
                              kargs, part.smem_bytes);
  }
}

#define FASTRNN_INSTANTIATE_PERSISTENT_MMA(T)                                                         \
  template const char* persistent_mma_unavailable<T>(int64_t, int64_t, int64_t, int64_t, MmaPartition&); \
  template const char* launch_persistent_mma_forward<T>(const PersistentForwardArgs<T>&, const MmaPartition&, bool); \
  template const char* persistent_mma_bwd_unavailable<T>(int64_t, int64_t, int64_t, int64_t, MmaBwdPartition&);      \
  template const char* launch_persistent_mma_backward<T>(const PersistentMmaBwdArgs<T>&, const MmaBwdPartition&);
FASTRNN_INSTANTIATE_PERSISTENT_MMA(float)
FASTRNN_INSTANTIATE_PERSISTENT_MMA(double)
FASTRNN_INSTANTIATE_PERSISTENT_MMA(c10::Half)
FASTRNN_INSTANTIATE_PERSISTENT_MMA(c10::BFloat16)
#undef FASTRNN_INSTANTIATE_PERSISTENT_MMA

}  // namespace cuda
}  // namespace fastrnn
