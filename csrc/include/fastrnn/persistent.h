// The persistent forward recurrence: one launch covers all T steps of a layer and direction.
// Each block owns `U` consecutive hidden units with all G of their gates, keeps its slice of
// W_hh on chip for the whole sequence, and per step (1) computes its gates' recurrent products
// from the full h_{s-1} (double-buffered in global memory), (2) runs the cell math of
// cell_math.h for its units, (3) waits for every block at a grid-wide barrier. The input
// projection (all steps, one GEMM) is the plan's, as in the step loop, and the kernel writes
// `saved` in the step loop's layout, so the step-loop backward differentiates it.
//
// Everything here is host-callable: the phases are functions of (block, thread), so
// cpu/persistent_emulation.cpp runs them block by block, phase by phase, on the host, and the
// tests compare that with the step loop and the reference (docs/DESIGN.md, "How to add a
// kernel"). cuda/persistent.cu launches them cooperatively.
#pragma once

#include <cstdint>

#include "fastrnn/cell_traits.h"
#include "fastrnn/steps.h"

namespace fastrnn {

// How a layer call is split over blocks. blocks * units >= H; the last block may own fewer.
struct PersistentPartition {
  int64_t blocks = 0;
  int64_t units = 0;       // U: hidden units per block
  int64_t threads = 256;   // per block
  int64_t smem_bytes = 0;  // dynamic shared memory per block: W_hh slice + recurrent products
};

// Shared memory of one block: its W_hh slice [P, G*U] (element type, column gu = g*U + u) and
// the recurrent products of one step [B, G*U] (the opmath type: double for float64, else float).
C10_HOST_DEVICE inline int64_t persistent_weight_bytes(int64_t G, int64_t U, int64_t P, int64_t elem) {
  return ((G * U * P * elem + 15) / 16) * 16;
}
C10_HOST_DEVICE inline int64_t persistent_smem_bytes(int64_t G, int64_t U, int64_t P, int64_t B, int64_t elem) {
  return persistent_weight_bytes(G, U, P, elem) + G * U * B * (elem == 8 ? 8 : 4);
}

// One block per SM at most (every block must be resident at once for the barrier): U is the
// fewest units that spread H over `sms` blocks. Returns nullptr, or why the call does not fit.
inline const char* plan_persistent(int64_t G, int64_t H, int64_t P, int64_t B, int64_t elem, int64_t sms,
                                   int64_t smem_limit, PersistentPartition& out) {
  if (sms < 1) return "no multiprocessors";
  out.units = (H + sms - 1) / sms;
  out.blocks = (H + out.units - 1) / out.units;
  out.smem_bytes = persistent_smem_bytes(G, out.units, P, B, elem);
  if (out.smem_bytes > smem_limit) {
    return "the W_hh slice and products of a block need more shared memory than one block may have";
  }
  return nullptr;
}

// Loads of h written by other blocks since the last barrier: they must not come from this
// SM's (incoherent) L1, so the device reads them at L2 (ld.global.cg).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE at::opmath_type<T> load_shared_state(const T* p) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 2) {
    unsigned short bits;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(bits) : "l"(p));
    T v;
    v.x = bits;
    return static_cast<at::opmath_type<T>>(v);
  } else {
    return __ldcg(p);
  }
#else
  return static_cast<at::opmath_type<T>>(*p);
#endif
}

template <typename scalar_t>
struct PersistentForwardArgs : StepCommon {  // units = H; s, rows unused (rows = B)
  using scalar_type = scalar_t;
  int64_t G;                   // gates: LstmCell::kGates or GruCell::kGates (which cell it is)
  int64_t U;                   // units per block (PersistentPartition::units)
  const scalar_t* w_hh;        // [G*H, H] row-major
  const scalar_t* xproj;       // [T, B, G*H] input projection with its biases (positions xstride apart)
  int64_t xstride;
  const scalar_t* b_hn;        // GRU: [H] or nullptr
  scalar_t* h[2];              // [B, H] by row, double-buffered: h[s % 2] is h_{s-1} at iteration s
                               //        (h[0] starts as h0); h_n ends in h[T % 2]
  scalar_t* c;                 // [B, H] by row (LSTM): c0 in, c_n out
  scalar_t* y;                 // [T, B, H]  outputs, time order
  scalar_t* saved;             // [T, B, W]  the step loop's saved-activation layout, or nullptr
};

// Phase 0, once: the block's W_hh slice into shared memory w [H, G*U], transposed so that the
// threads of a warp, which take consecutive gate-units, read consecutive words.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void persistent_load_weights(const PersistentForwardArgs<T>& a, int64_t block,
                                                            int64_t tid, int64_t nthreads, T* w) {
  const int64_t H = a.units, GU = a.G * a.U;
  for (int64_t i = tid; i < GU * H; i += nthreads) {
    const int64_t gu = i % GU, k = i / GU;
    const int64_t g = gu / a.U, j = block * a.U + gu % a.U;
    w[i] = j < H ? a.w_hh[(g * H + j) * H + k] : T(0);
  }
}

// Phase 1 of iteration s: pre[r, gu] = h_{s-1}[r] . W_hh[g*H + j] for the block's gate-units of
// every active row.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void persistent_products(const PersistentForwardArgs<T>& a, int64_t s, int64_t tid,
                                                        int64_t nthreads, const T* w, at::opmath_type<T>* pre) {
  using acc_t = at::opmath_type<T>;
  const int64_t H = a.units, GU = a.G * a.U;
  const T* h_prev = (s & 1) ? a.h[1] : a.h[0];  // a select, not a dynamic index into the parameters
  for (int64_t i = tid; i < a.B * GU; i += nthreads) {
    const int64_t gu = i % GU, r = i / GU;
    int64_t t;
    if (!step_time(s, seq_length(a.lengths, entry_of(a.order, r), a.T), a.reverse, t)) continue;
    acc_t acc = 0;
    const T* hr = h_prev + r * H;
    for (int64_t k = 0; k < H; ++k) acc += static_cast<acc_t>(w[k * GU + gu]) * load_shared_state(hr + k);
    pre[i] = acc;
  }
}

// Phase 2 of iteration s: the cell update of the block's units for every row, into h_s.
// Finished entries carry their state into the other buffer and write nothing else.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void persistent_update(const PersistentForwardArgs<T>& a, int64_t s, int64_t block,
                                                      int64_t tid, int64_t nthreads, const at::opmath_type<T>* pre) {
  using V = at::opmath_type<T>;
  const int64_t H = a.units, U = a.U, GU = a.G * U;
  const T* h_prev = (s & 1) ? a.h[1] : a.h[0];
  T* h_next = (s & 1) ? a.h[0] : a.h[1];
  for (int64_t i = tid; i < a.B * U; i += nthreads) {
    const int64_t u = i % U, r = i / U, j = block * U + u;
    if (j >= H) continue;
    StepCommon step = a;
    step.s = s;
    Position p;
    if (!locate(step, r, j, p)) {
      // each (row, unit) stays with one thread over the whole sequence, so this thread wrote
      // h_prev here itself: no cross-block read
      h_next[r * H + j] = h_prev[r * H + j];
      continue;
    }
    const T* xp = a.xproj + p.tb * a.xstride + j;
    const V* hp = pre + r * GU + u;  // gate g at hp[g * U]
    if (a.G == LstmCell::kGates) {
      using C = LstmCell;
      const auto v = lstm_cell_forward<V>(V(xp[C::kI * H]) + V(hp[C::kI * U]), V(xp[C::kF * H]) + V(hp[C::kF * U]),
                                          V(xp[C::kG * H]) + V(hp[C::kG * U]), V(xp[C::kO * H]) + V(hp[C::kO * U]),
                                          V(a.c[p.k]));
      a.c[p.k] = T(v.c);
      h_next[p.k] = T(v.h);
      a.y[p.tb * H + j] = T(v.h);
      if (a.saved != nullptr) C::store_saved(a.saved + p.tb * C::saved_width(H, false) + j, H, v, false);
    } else {
      using C = GruCell;
      const V hn = a.b_hn != nullptr ? V(hp[C::kN * U]) + V(a.b_hn[j]) : V(hp[C::kN * U]);
      const auto v = gru_cell_forward<V>(V(xp[C::kR * H]) + V(hp[C::kR * U]), V(xp[C::kZ * H]) + V(hp[C::kZ * U]),
                                         V(xp[C::kN * H]), hn, V(h_prev[r * H + j]));
      h_next[p.k] = T(v.h);
      a.y[p.tb * H + j] = T(v.h);
      if (a.saved != nullptr) C::store_saved(a.saved + p.tb * C::saved_width(H) + j, H, v);
    }
  }
}

}  // namespace fastrnn
