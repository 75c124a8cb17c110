// The tensor-core persistent forward (docs/DESIGN.md, "The tensor-core persistent forward"): one
// cooperative launch per layer and direction covers all T steps; per step each CTA multiplies
// its gate rows of W_hh by h_{s-1} with warp-level MMAs (mma.sync m16n8k16 for bf16 / fp16,
// m16n8k8 TF32 for fp32, split 3xTF32 unless torch's matmul TF32 flag allows TF32), runs the cell
// math of its units (persistent_update, shared with the scalar persistent kernel), writes h_s
// into the other of two global state buffers and publishes it by a release increment of a
// monotonic step counter; consumers wait with acquire loads until the counter reaches
// n_CTA * s. No grid-wide barrier.
//
// Everything but the MMA instruction and the counter's atomics is host-callable: the partition,
// the weight fragments, the per-lane fragment loads and stores (through mma_layout.h's maps),
// the reduction and the cell update; cpu/persistent_mma_emulation.cpp runs them with an emulated
// warp MMA and the counter protocol under adversarial CTA orderings, and cuda/persistent_mma.cu
// on the device.
//
// Per step a CTA first copies h_{s-1} [B, H] from global memory (L2: other CTAs wrote it) into
// shared memory with 16-byte loads where rows allow, all threads at once, rows padded so that
// the B-fragment reads of a warp hit distinct banks; the warps then read A (W_hh) and B (h)
// fragments from shared memory. Two accumulator chains per warp (even and odd k-tiles; fp32's
// cross terms two more) halve the dependent-MMA latency.
//
// Partition: a CTA owns U = 16 / G units with all G gates (LSTM 4 units = 16 gate rows; GRU 5
// units = 15 rows and one zero row): one m16 tile, gate row m = g * U + u. n_CTA = ceil(H / U);
// the last CTA may own fewer units (its missing rows are zero). Batch rows go in n8 tiles; the
// 8 warps take (batch tile, k-slice) items: with 8 or more batch tiles each warp takes whole
// tiles over all of K; with fewer (B < 64) K is split into 8 / n_tiles slices and the partial
// tiles are summed in shared memory in a fixed order (deterministic).
#pragma once

#include <cstdint>
#include <cstring>

#include "fastrnn/mma_layout.h"
#include "fastrnn/persistent.h"

namespace fastrnn {

constexpr int64_t kMmaWarps = 8;

struct MmaPartition {
  int64_t units = 0;    // U: hidden units a CTA owns
  int64_t ctas = 0;     // ceil(H / U)
  int64_t threads = kMmaWarps * 32;
  int64_t ntiles = 0;   // batch tiles of 8 rows: ceil(B / 8)
  int64_t kslices = 0;  // slices K is split into across warps (1 when ntiles >= 8)
  int64_t ktiles = 0;   // k-tiles of the MMA shape over H (16 for 16-bit types, else 8)
  int64_t ldh = 0;      // row stride of the staged h_{s-1} in shared memory, elements
  int64_t smem_bytes = 0;
};

// The staged h row stride: every k-tile's columns plus 16 bytes, so a row is a whole number of
// 16-byte vectors and consecutive rows start 4 banks apart (conflict-free B-fragment reads).
C10_HOST_DEVICE inline int64_t mma_ldh(int64_t ktiles, int64_t elem) {
  return ktiles * (elem == 2 ? 16 : 8) + 16 / elem;
}

// Shared memory of a CTA, in this order (each part a multiple of 16 bytes):
//   weight fragments [ktiles, 32 lanes, kA] of the operand type (fp32: hi then lo copies), one
//     16-byte load per lane per k-tile;
//   staged h_{s-1} [B, ldh] of the storage type, columns past H zero;
//   partial tiles [kslices, ntiles * 8, 16] float: the MMA results by (slice, batch row, gate row);
//   pre [B, G*U] opmath: the recurrent products persistent_update reads.
struct MmaSmem {
  int64_t weights, hstage, partial, pre;  // byte offsets
  int64_t total;
};
C10_HOST_DEVICE inline MmaSmem mma_smem(int64_t elem, int64_t ktiles, int64_t ntiles, int64_t kslices, int64_t B,
                                        int64_t GU) {
  const int64_t kA = elem == 2 ? 8 : 4, copies = elem == 4 ? 2 : 1, acc = elem == 8 ? 8 : 4;
  const auto up16 = [](int64_t n) { return (n + 15) / 16 * 16; };
  MmaSmem m{};
  m.weights = 0;
  m.hstage = up16(ktiles * 32 * kA * elem * copies);
  m.partial = m.hstage + up16(B * mma_ldh(ktiles, elem) * elem);
  m.pre = m.partial + up16(kslices * ntiles * 8 * mma::kM * acc);
  m.total = m.pre + up16(B * GU * acc);
  return m;
}

// The partition of a call (elem: 2, 4, or 8 for the fp64 host emulation). blocks_per_sm: CTAs
// one SM can hold (the device's occupancy); sms: those this process can use. Returns nullptr, or
// why the call does not fit.
inline const char* plan_persistent_mma(int64_t G, int64_t H, int64_t B, int64_t elem, int64_t sms,
                                       int64_t blocks_per_sm, int64_t smem_limit, MmaPartition& out) {
  if (sms < 1) return "no multiprocessors";
  out.units = mma::kM / G;
  out.ctas = (H + out.units - 1) / out.units;
  out.ntiles = (B + mma::kN - 1) / mma::kN;
  out.kslices = out.ntiles >= kMmaWarps ? 1 : kMmaWarps / out.ntiles;
  const int64_t kK = elem == 2 ? 16 : 8;
  out.ktiles = (H + kK - 1) / kK;
  out.kslices = out.kslices < out.ktiles ? out.kslices : out.ktiles;
  out.ldh = mma_ldh(out.ktiles, elem);
  out.smem_bytes = mma_smem(elem, out.ktiles, out.ntiles, out.kslices, B, G * out.units).total;
  if (out.smem_bytes > smem_limit) {
    return "the tensor-core kernel's W_hh fragments and staged h need more shared memory than a CTA may have";
  }
  if (out.ctas > sms * blocks_per_sm) {
    return "the tensor-core kernel's CTAs (one per 16 gate rows) cannot all be resident on the SMs this process can use";
  }
  return nullptr;
}

template <typename scalar_t>
struct PersistentMmaArgs : PersistentForwardArgs<scalar_t> {  // U = MmaPartition::units
  int64_t ntiles, kslices, ktiles, ldh;
  bool split;                    // fp32: 3xTF32 (hi/lo parts) when true, plain TF32 when false
  unsigned long long* counter;   // [1] monotonic step counter, zero at launch
};

// The partition in the scalar kernel's terms, which run_persistent_forward (persistent_host.h)
// takes for the state set-up; the launch itself uses the MmaPartition.
inline PersistentPartition as_persistent_partition(const MmaPartition& m) {
  PersistentPartition part;
  part.blocks = m.ctas;
  part.units = m.units;
  part.threads = m.threads;
  part.smem_bytes = m.smem_bytes;
  return part;
}

// The tensor-core kernel's arguments: the persistent forward's common ones and the partition.
// counter: [1] zeroed on the launch's stream (nullptr in the host emulation).
template <typename scalar_t>
PersistentMmaArgs<scalar_t> mma_args(const PersistentForwardArgs<scalar_t>& common, const MmaPartition& part,
                                     bool split, unsigned long long* counter) {
  PersistentMmaArgs<scalar_t> a{};
  static_cast<PersistentForwardArgs<scalar_t>&>(a) = common;
  a.ntiles = part.ntiles;
  a.kslices = part.kslices;
  a.ktiles = part.ktiles;
  a.ldh = part.ldh;
  a.split = split;
  a.counter = counter;
  return a;
}

// ---------------------------------------------------------------------------------------------
// Operand rounding: what the tensor core reads of a value. 16-bit types as stored; fp32 as TF32
// (10 mantissa bits, round to nearest with ties away from zero, as cvt.rna.tf32.f32); fp64 (host
// emulation only) exactly.

C10_HOST_DEVICE FASTRNN_INLINE float to_tf32(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
#elif defined(__CUDA_ARCH__)  // no TF32 below sm_80 (the kernel never runs there): the same rounding
  unsigned bits = __float_as_uint(v);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  return __uint_as_float(bits);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;  // finite: round the magnitude
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
#endif
}

// hi and lo parts of a value as the MMA reads them (lo = 0 where there is no split).
template <typename T>
struct MmaOperand {
  using type = T;  // 16-bit: as stored
  C10_HOST_DEVICE FASTRNN_INLINE static T hi(T v) { return v; }
  C10_HOST_DEVICE FASTRNN_INLINE static T lo(T, T) { return T(0); }
};
template <>
struct MmaOperand<float> {
  using type = float;
  C10_HOST_DEVICE FASTRNN_INLINE static float hi(float v) { return to_tf32(v); }
  C10_HOST_DEVICE FASTRNN_INLINE static float lo(float v, float h) { return to_tf32(v - h); }
};
template <>
struct MmaOperand<double> {
  using type = double;
  C10_HOST_DEVICE FASTRNN_INLINE static double hi(double v) { return v; }
  C10_HOST_DEVICE FASTRNN_INLINE static double lo(double, double) { return 0; }
};

template <typename T>
using MmaShape = mma::Shape<int(sizeof(T) == 2 ? 2 : 4)>;

// Phase 0, once: the CTA's W_hh rows as A fragments, wf[(kt * 32 + lane) * kA + i] = element i
// of `lane` in k-tile kt (fp32: the lo parts follow at wf[ktiles * 32 * kA + ...]). Rows past
// G*U, units past H and k past H are zero.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_load_weights(const PersistentMmaArgs<T>& a, int64_t cta, int64_t tid,
                                                     int64_t nthreads, T* wf) {
  using S = MmaShape<T>;
  using Op = MmaOperand<T>;
  const int64_t H = a.units, n = a.ktiles * 32 * S::kA;
  for (int64_t idx = tid; idx < n; idx += nthreads) {
    const int64_t i = idx % S::kA, lane = (idx / S::kA) % 32, kt = idx / (32 * S::kA);
    const mma::RowCol rc = S::a(int(lane), int(i));
    const int64_t g = rc.row / a.U, u = rc.row % a.U, j = cta * a.U + u, k = kt * S::kK + rc.col;
    const bool inside = rc.row < a.G * a.U && j < H && k < H;
    const T w = inside ? a.w_hh[(g * H + j) * H + k] : T(0);
    const T hi = Op::hi(w);
    wf[idx] = hi;
    if (sizeof(T) == 4) wf[n + idx] = inside && a.split ? Op::lo(w, hi) : T(0);
  }
}

// The k-tiles of slice ks: [begin, end).
C10_HOST_DEVICE FASTRNN_INLINE void mma_slice(int64_t ktiles, int64_t kslices, int64_t ks, int64_t& begin,
                                              int64_t& end) {
  const int64_t per = (ktiles + kslices - 1) / kslices;
  begin = ks * per;
  end = begin + per < ktiles ? begin + per : ktiles;
}

// Copies 16 bytes of h written by other CTAs (device: at L2, ld.global.cg.v4).
C10_HOST_DEVICE FASTRNN_INLINE void copy16_shared_state(const void* src, void* dst) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<uint4*>(dst) = __ldcg(reinterpret_cast<const uint4*>(src));
#else
  std::memcpy(dst, src, 16);
#endif
}

// After the wait, all threads: h_{s-1} [B, H] (global, by row) into hs [B, ldh]. 16-byte
// vectors when rows are whole vectors (h buffers are fresh allocations, 16-byte aligned), else
// element by element. Columns [H, ldh) are never written (zero from mma_zero_stage).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_stage_h(const PersistentMmaArgs<T>& a, const T* h_prev, int64_t tid,
                                                int64_t nthreads, T* hs) {
  const int64_t H = a.units;
  if ((H * int64_t(sizeof(T))) % 16 == 0) {
    const int64_t per_row = H * int64_t(sizeof(T)) / 16;
    for (int64_t i = tid; i < a.B * per_row; i += nthreads) {
      const int64_t r = i / per_row, v = i % per_row;
      copy16_shared_state(reinterpret_cast<const char*>(h_prev + r * H) + 16 * v,
                          reinterpret_cast<char*>(hs + r * a.ldh) + 16 * v);
    }
  } else {
    for (int64_t i = tid; i < a.B * H; i += nthreads) {
      const int64_t r = i / H, k = i % H;
      hs[r * a.ldh + k] = T(load_shared_state(h_prev + r * H + k));
    }
  }
}

// Once, before the first step: the staging area all zero (its padding columns stay so).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_zero_stage(const PersistentMmaArgs<T>& a, int64_t tid, int64_t nthreads,
                                                   T* hs) {
  for (int64_t i = tid; i < a.B * a.ldh; i += nthreads) hs[i] = T(0);
}

// A lane's B fragment of batch tile nt, k-tile kt from the staged h: element (k, row) of the
// map is hs[row, k]; rows past B are zero (k past H reads the zero padding).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_load_b(const PersistentMmaArgs<T>& a, const T* hs, int64_t nt, int64_t kt,
                                               int lane, T (&b)[MmaShape<T>::kB]) {
  using S = MmaShape<T>;
  for (int i = 0; i < S::kB; ++i) {
    const mma::RowCol rc = S::b(lane, i);
    const int64_t k = kt * S::kK + rc.row, r = nt * mma::kN + rc.col;
    b[i] = r < a.B ? hs[r * a.ldh + k] : T(0);
  }
}

// A lane's D fragment of item (nt, ks) into the partial tiles [kslices, ntiles * 8, 16] (the
// forward's and the backward's: ntiles batch tiles, 16 rows of the A operand each).
template <typename Acc>
C10_HOST_DEVICE FASTRNN_INLINE void mma_store_partial(int64_t ntiles, int64_t nt, int64_t ks, int lane,
                                                      const Acc (&d)[mma::kC], Acc* partial) {
  for (int i = 0; i < mma::kC; ++i) {
    const mma::RowCol rc = mma::c_m16n8(lane, i);
    partial[(ks * ntiles * mma::kN + nt * mma::kN + rc.col) * mma::kM + rc.row] = d[i];
  }
}

// After the MMAs: pre[r, m] = sum over slices, in slice order, of the partial tiles, for the
// gate rows m < G*U of every batch row (persistent_update's layout).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_reduce(const PersistentMmaArgs<T>& a, int64_t tid, int64_t nthreads,
                                               const at::opmath_type<T>* partial, at::opmath_type<T>* pre) {
  const int64_t GU = a.G * a.U, NP = a.ntiles * mma::kN;
  for (int64_t idx = tid; idx < a.B * GU; idx += nthreads) {
    const int64_t r = idx / GU, m = idx % GU;
    at::opmath_type<T> sum = 0;
    for (int64_t ks = 0; ks < a.kslices; ++ks) sum += partial[(ks * NP + r) * mma::kM + m];
    pre[idx] = sum;
  }
}

}  // namespace fastrnn
