// The tensor-core persistent backward (docs/DESIGN.md, "The persistent backward"): one cooperative
// launch per layer and direction covers all T iterations of the backward recurrence. Per
// iteration s (from T - 1 down to 0) each CTA computes the recurrent part of dL/dh_s for its
// units and batch rows, dh_rec = dgates_{s+1} W_hh (K = G*H), with warp-level MMAs, runs the
// step loop's own backward point (steps.h: LstmBackwardPoint / GruBackwardPoint, i.e. the cell
// backward of cell_math.h) on them, which writes the gate grads of the step into the [T, B, W]
// buffer the folds read and the hidden-side grads of the step into the other of two global
// [B, G*H] buffers, and publishes them with the forward's counter protocol. A last phase
// (s = -1) multiplies iteration 0's grads into dh0. The folds (dx, dW_ih, dW_hh, bias grads)
// stay large GEMMs after the launch, as in the step loop (layer_plan.h, fold_gate_grads).
//
// Everything but the MMA instruction and the counter's atomics is host-callable, so
// cpu/persistent_mma_emulation.cpp runs these phase functions with an emulated warp MMA under the
// counter protocol in adversarial CTA orders, and cuda/persistent_mma.cu on the device.
//
// Partition. The backward's rows do not interact (dh of row r needs only the grads of row r), so
// the grid is split over batch groups x unit groups: a CTA owns 16 consecutive units (one m16
// tile of W_hh^T rows: A[m][k] = W_hh[k, 16 ug + m]) and `tiles` n8 batch tiles, and ingests
// only its rows of dgates_{s+1} (at fastrnns, B = 64 on 132 SMs: 32 unit groups x 4 batch groups,
// each a quarter of dgates). Each batch group has its own step counter, which its unit_groups
// CTAs advance. Within a CTA the 8 warps take (tile, k-slice) items as in the forward (K split
// 8 / tiles ways, partial tiles summed in slice order: deterministic).
//
// Memory. The W_hh^T slice sits in shared memory as A fragments in fragment order, one copy of
// the storage type (16 units x G*H: fastrnns LSTM 64 KiB bf16, 128 KiB fp32); fp32 is split into
// TF32 hi / lo parts at the MMA, not stored twice, so that fp32 fits. The B fragments come
// straight from global memory at L2 (ld.global.cg: other CTAs wrote them): for both shapes the
// 4 lanes of a group read one row's 32 consecutive bytes of a k-tile, a whole sector, so staging
// them in shared memory would save no L2 traffic. dh, dc and the GRU's direct term z * dh live
// in [B, H] global buffers that only their owning CTA touches.
//
// Skipping. Row r needs dh_rec at iteration s only while s < L_r - 1 (at its last step it takes
// dh_n instead; after it, nothing); a batch tile none of whose rows needs it runs no MMAs, so
// with host-sorted lengths finished rows cost nothing but their zero grads.
#pragma once

#include <cstdint>

#include "fastrnn/persistent_mma.h"

namespace fastrnn {

struct MmaBwdPartition {
  int64_t unit_groups = 0;   // ceil(H / 16): a CTA owns 16 units
  int64_t batch_groups = 0;  // ceil(ntiles / tiles)
  int64_t ctas = 0;          // unit_groups * batch_groups; CTA c: unit group c % unit_groups,
                             // batch group c / unit_groups
  int64_t threads = kMmaWarps * 32;
  int64_t ntiles = 0;        // batch tiles of 8 rows: ceil(B / 8)
  int64_t tiles = 0;         // batch tiles a CTA owns (the last group may own fewer real rows)
  int64_t kslices = 0;       // slices K is split into across warps
  int64_t ktiles = 0;        // k-tiles of the MMA shape over K = G*H
  int64_t smem_bytes = 0;
};

// Shared memory of a CTA: the W_hh^T fragments [ktiles, 32 lanes, kA] of the storage type, then
// the partial tiles [kslices, tiles * 8, 16] (opmath type) by (slice, local batch row, unit).
struct MmaBwdSmem {
  int64_t weights, partial, total;  // byte offsets, total size
};
C10_HOST_DEVICE inline MmaBwdSmem mma_bwd_smem(int64_t elem, int64_t ktiles, int64_t tiles, int64_t kslices) {
  const int64_t kA = elem == 2 ? 8 : 4, acc = elem == 8 ? 8 : 4;
  const auto up16 = [](int64_t n) { return (n + 15) / 16 * 16; };
  MmaBwdSmem m{};
  m.weights = 0;
  m.partial = up16(ktiles * 32 * kA * elem);
  m.total = m.partial + up16(kslices * tiles * mma::kN * mma::kM * acc);
  return m;
}

// The partition of a backward call (elem 2, 4, or 8 for the fp64 host emulation): as many batch
// groups as the resident CTAs allow (each CTA then ingests fewer rows of the grads), at most one
// a batch tile. Returns nullptr, or why the call does not fit.
inline const char* plan_persistent_mma_bwd(int64_t G, int64_t H, int64_t B, int64_t elem, int64_t sms,
                                           int64_t blocks_per_sm, int64_t smem_limit, MmaBwdPartition& out) {
  if (sms < 1) return "no multiprocessors";
  const int64_t capacity = sms * blocks_per_sm, kK = elem == 2 ? 16 : 8;
  out.unit_groups = (H + mma::kM - 1) / mma::kM;
  out.ntiles = (B + mma::kN - 1) / mma::kN;
  out.ktiles = (G * H + kK - 1) / kK;
  int64_t groups = capacity / out.unit_groups;
  groups = groups < 1 ? 1 : (groups > out.ntiles ? out.ntiles : groups);
  out.tiles = (out.ntiles + groups - 1) / groups;
  out.batch_groups = (out.ntiles + out.tiles - 1) / out.tiles;
  out.ctas = out.unit_groups * out.batch_groups;
  out.kslices = out.tiles >= kMmaWarps ? 1 : kMmaWarps / out.tiles;
  out.kslices = out.kslices < out.ktiles ? out.kslices : out.ktiles;
  out.smem_bytes = mma_bwd_smem(elem, out.ktiles, out.tiles, out.kslices).total;
  if (out.smem_bytes > smem_limit) {
    return "the persistent backward's W_hh^T slice (16 units x G*H) needs more shared memory than a CTA may have";
  }
  if (out.ctas > capacity) {
    return "the persistent backward's CTAs (16 units each) cannot all be resident on the SMs this process can use";
  }
  return nullptr;
}

template <typename scalar_t>
struct PersistentMmaBwdArgs {
  using scalar_type = scalar_t;
  StepCommon common;               // units = H; s, rows unused (all B rows every iteration)
  LstmBackwardStep<scalar_t> lstm; // G = 4: the step loop's point arguments; s and dgates_step
  GruBackwardStep<scalar_t> gru;   // G = 3:  are set per iteration (dgates_t0 = 0: all T at once)
  int64_t G, H;
  const scalar_t* w_hh;            // [G*H, H] row-major
  scalar_t* dstep[2];              // [B, G*H] by row: the hidden-side gate grads of iteration s in
                                   //           dstep[s % 2] (dW_hh's row order)
  scalar_t* dh;                    // [B, H] by row: dL/dh_s through the recurrence (GRU: plus the
                                   //         direct z * dh the point leaves there); dh0 at the end
  int64_t unit_groups, tiles, ntiles, kslices, ktiles;
  bool split;                      // fp32: 3xTF32 when true, plain TF32 when false
  unsigned long long* counters;    // [batch_groups] monotonic step counters, zero at launch
};

template <typename T>
void fill_mma_bwd_partition(PersistentMmaBwdArgs<T>& a, const MmaBwdPartition& part, bool split) {
  a.unit_groups = part.unit_groups;
  a.tiles = part.tiles;
  a.ntiles = part.ntiles;
  a.kslices = part.kslices;
  a.ktiles = part.ktiles;
  a.split = split;
}

// Whether row r needs dh_rec at iteration s (s = -1: the final products, dh0, for every row).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE bool mma_bwd_row_needs(const PersistentMmaBwdArgs<T>& a, int64_t s, int64_t r) {
  if (r >= a.common.B) return false;
  return s < seq_length(a.common.lengths, entry_of(a.common.order, r), a.common.T) - 1;
}
// Whether batch tile nt (global index) runs its MMAs at iteration s.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE bool mma_bwd_tile_needed(const PersistentMmaBwdArgs<T>& a, int64_t s, int64_t nt) {
  for (int64_t r = nt * mma::kN; r < (nt + 1) * mma::kN; ++r) {
    if (mma_bwd_row_needs(a, s, r)) return true;
  }
  return false;
}

// Phase 0, once: unit group ug's W_hh^T slice as A fragments, wf[(kt * 32 + lane) * kA + i] =
// element i of `lane` in k-tile kt = W_hh[k, j] with (j - 16 ug, k - kt kK) from the map; units
// past H and k past G*H are zero. Stored as is (fp32 is split at the MMA).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_bwd_load_weights(const PersistentMmaBwdArgs<T>& a, int64_t ug, int64_t tid,
                                                         int64_t nthreads, T* wf) {
  using S = MmaShape<T>;
  const int64_t H = a.H, K = a.G * a.H, n = a.ktiles * 32 * S::kA;
  for (int64_t idx = tid; idx < n; idx += nthreads) {
    const int64_t i = idx % S::kA, lane = (idx / S::kA) % 32, kt = idx / (32 * S::kA);
    const mma::RowCol rc = S::a(int(lane), int(i));
    const int64_t j = ug * mma::kM + rc.row, k = kt * S::kK + rc.col;
    wf[idx] = j < H && k < K ? a.w_hh[k * H + j] : T(0);
  }
}

// A lane's B fragment of batch tile nt (global index), k-tile kt: element (k, n) of the map is
// src[r, k] with r = 8 nt + n, read at L2 (other CTAs wrote it); rows past B and k past G*H are
// zero. src: dstep of the iteration before, [B, G*H].
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_bwd_load_b(const PersistentMmaBwdArgs<T>& a, const T* src, int64_t nt,
                                                   int64_t kt, int lane, T (&b)[MmaShape<T>::kB]) {
  using S = MmaShape<T>;
  const int64_t K = a.G * a.H;
  for (int i = 0; i < S::kB; ++i) {
    const mma::RowCol rc = S::b(lane, i);
    const int64_t k = kt * S::kK + rc.row, r = nt * mma::kN + rc.col;
    b[i] = r < a.common.B && k < K ? T(load_shared_state(src + r * K + k)) : T(0);
  }
}

// After the MMAs of iteration s: for the rows that need it, dh[r, j] = the sum over slices, in
// slice order, of the partial tiles (GRU: added to the direct term the point left there, as the
// step loop's accumulating GEMM does), rounded to the storage type as the step loop's GEMM
// output is.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_bwd_reduce(const PersistentMmaBwdArgs<T>& a, int64_t s, int64_t ug, int64_t gb,
                                                   int64_t tid, int64_t nthreads, const at::opmath_type<T>* partial) {
  using Acc = at::opmath_type<T>;
  const int64_t rows = a.tiles * mma::kN, H = a.H;
  for (int64_t idx = tid; idx < rows * mma::kM; idx += nthreads) {
    const int64_t lr = idx / mma::kM, m = idx % mma::kM, r = gb * rows + lr, j = ug * mma::kM + m;
    if (j >= H || !mma_bwd_row_needs(a, s, r)) continue;
    Acc sum = a.G == GruCell::kGates ? Acc(a.dh[r * H + j]) : Acc(0);
    for (int64_t ks = 0; ks < a.kslices; ++ks) sum += partial[(ks * rows + lr) * mma::kM + m];
    a.dh[r * H + j] = T(sum);
  }
}

// Iteration s's cell backward of the CTA's (row, unit) pairs: the step loop's point function,
// writing the gate grads, dc (LSTM) or the direct term into dh (GRU), and the hidden-side grads
// into dstep[s % 2] (zeros for finished entries).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void mma_bwd_update(const PersistentMmaBwdArgs<T>& a, int64_t s, int64_t ug, int64_t gb,
                                                   int64_t tid, int64_t nthreads) {
  using V = at::opmath_type<T>;
  const int64_t rows = a.tiles * mma::kN;
  T* dstep = (s & 1) ? a.dstep[1] : a.dstep[0];  // a select, not a dynamic index into the parameters
  for (int64_t idx = tid; idx < rows * mma::kM; idx += nthreads) {
    const int64_t r = gb * rows + idx / mma::kM, j = ug * mma::kM + idx % mma::kM;
    if (r >= a.common.B || j >= a.H) continue;
    if (a.G == LstmCell::kGates) {
      LstmBackwardStep<T> step = a.lstm;
      step.s = s;
      step.dgates_step = dstep;
      LstmBackwardPoint::run<V>(step, r, j);
    } else {
      GruBackwardStep<T> step = a.gru;
      step.s = s;
      step.dgates_step = dstep;
      GruBackwardPoint::run<V>(step, r, j);
    }
  }
}

}  // namespace fastrnn
