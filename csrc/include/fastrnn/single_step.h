// The fused single step on CUDA (docs/DESIGN.md, "The fused single step on CUDA"): a forward of
// T = 1 (a cell call: generation, decoding) with at most kSingleStepMaxRows rows as one kernel,
// both products and the cell math, instead of the step loop's input GEMM, recurrent GEMM and
// pointwise launch. The CUDA twin of the CPU's single step (cpu/ops_cpu.cpp).
//
// A CTA owns kSingleStepUnits consecutive units. Its warps take (product, gate row) tasks: the
// dot products of one row of W_ih (with x) or W_hh (with h0) with every batch row, k strided over
// the lanes (each weight read once, coalesced, and used for every batch row), then summed over
// the lanes by a butterfly (xor 16, 8, 4, 2, 1). The results go to the step's xproj (plus the
// biases that join it) and hproj, which the step loop's own forward point then reads for the
// CTA's (row, unit) pairs: the cell math of cell_math.h, y, h, c and `saved` as the step loop
// writes them.
//
// Everything but the lane exchange is host-callable: cpu/single_step_emulation.cpp runs the lane
// partial sums and the same butterfly on the host, CTA by CTA, and cuda/single_step.cu on the
// device. The host set-up is run_single_step (persistent_host.h).
#pragma once

#include <cstdint>

#include "fastrnn/cell_traits.h"
#include "fastrnn/steps.h"

namespace fastrnn {

constexpr int64_t kSingleStepMaxRows = 4;  // accumulators a lane; beyond this a GEMM reuses weights better
constexpr int64_t kSingleStepUnits = 4;    // units a CTA: 16 (LSTM) or 12 (GRU) gate rows, 2 products
constexpr int64_t kSingleStepWarps = 8;

// Whether a forward fits the fused single step: a cell call (T = 1, no projection) of at most
// kSingleStepMaxRows rows.
inline bool single_step_fits(int64_t T, int64_t B, bool projected) {
  return T == 1 && B <= kSingleStepMaxRows && !projected;
}

// The products of a single step (T = 1, no projection), as the CPU's:
//   xproj[b, m] = x[b] . w_ih[m] + b_ih[m] + (m < b_hh_rows ? b_hh[m] : 0)
//   hproj[r, m] = h0[order[r]] . w_hh[m]
// for m < G*H; written in the storage type, as the step loop's GEMM outputs are.
template <typename scalar_t>
struct SingleStepArgs {
  using scalar_type = scalar_t;
  const scalar_t* x;     // [B, I]   by batch entry
  const scalar_t* h0;    // [B, H]   by batch entry
  const scalar_t* w_ih;  // [G*H, I] row-major
  const scalar_t* w_hh;  // [G*H, H] row-major
  const scalar_t* b_ih;  // [G*H] or nullptr
  const scalar_t* b_hh;  // [G*H] or nullptr; its first b_hh_rows entries join xproj
  int64_t b_hh_rows;
  int64_t G, I;
  scalar_t* hproj;                 // [B, G*H] by row: the recurrent products (the points read it)
  LstmForwardStep<scalar_t> lstm;  // G = 4: the step loop's point arguments (s = 0, rows = B);
  GruForwardStep<scalar_t> gru;    // G = 3:  xproj [B, G*H] and hproj [B, G*H] among them
};

template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE const StepCommon& single_step_common(const SingleStepArgs<T>& a) {
  if (a.G == LstmCell::kGates) return a.lstm;
  return a.gru;
}

// Tasks of CTA c: 2 products x G gates x kSingleStepUnits units; task q is product q / (G U),
// gate (q / U) % G, unit c U + q % U.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE int64_t single_step_tasks(const SingleStepArgs<T>& a) {
  return 2 * a.G * kSingleStepUnits;
}

// Lane `lane`'s partial sums of task q of CTA c, one per batch row (rows past B: zero), k = lane,
// lane + 32, ... Returns false when the task's unit is past H (nothing to do).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE bool single_step_partial(const SingleStepArgs<T>& a, int64_t c, int64_t q, int lane,
                                                        at::opmath_type<T> (&acc)[kSingleStepMaxRows]) {
  using Acc = at::opmath_type<T>;
  const StepCommon& s = single_step_common(a);
  const int64_t H = s.units, U = kSingleStepUnits;
  const int64_t product = q / (a.G * U), g = (q / U) % a.G, j = c * U + q % U;
  if (j >= H) return false;
  const int64_t n = product == 0 ? a.I : H, m = g * H + j;
  const T* w = (product == 0 ? a.w_ih : a.w_hh) + m * n;
  for (int64_t r = 0; r < kSingleStepMaxRows; ++r) acc[r] = Acc(0);
  for (int64_t k = lane; k < n; k += 32) {
    const Acc wk = Acc(w[k]);
    for (int64_t r = 0; r < kSingleStepMaxRows; ++r) {
      if (r >= s.B) break;
      const T* v = product == 0 ? a.x + r * a.I : a.h0 + entry_of(s.order, r) * H;
      acc[r] += wk * Acc(v[k]);
    }
  }
  return true;
}

// After the butterfly: lane 0 stores task q's sums (every lane holds them).
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void single_step_store(const SingleStepArgs<T>& a, int64_t c, int64_t q,
                                                      const at::opmath_type<T> (&sum)[kSingleStepMaxRows]) {
  using Acc = at::opmath_type<T>;
  const ForwardStep<T>& s = a.G == LstmCell::kGates ? static_cast<const ForwardStep<T>&>(a.lstm)
                                                     : static_cast<const ForwardStep<T>&>(a.gru);
  const int64_t H = s.units, U = kSingleStepUnits;  // xproj: [B, G*H] by entry, xstride apart
  const int64_t product = q / (a.G * U), g = (q / U) % a.G, m = g * H + c * U + q % U;
  for (int64_t r = 0; r < s.B && r < kSingleStepMaxRows; ++r) {
    if (product == 0) {  // by batch entry, as the plan's projection
      const Acc bias = (a.b_ih != nullptr ? Acc(a.b_ih[m]) : Acc(0)) +
                       (a.b_hh != nullptr && m < a.b_hh_rows ? Acc(a.b_hh[m]) : Acc(0));
      s.xproj[r * s.xstride + m] = T(sum[r] + bias);
    } else {  // by row
      a.hproj[r * a.G * H + m] = T(sum[r]);
    }
  }
}

// After the products: the step loop's forward point over the CTA's (row, unit) pairs.
template <typename T>
C10_HOST_DEVICE FASTRNN_INLINE void single_step_update(const SingleStepArgs<T>& a, int64_t c, int64_t tid,
                                                       int64_t nthreads) {
  using V = at::opmath_type<T>;
  const StepCommon& s = single_step_common(a);
  for (int64_t i = tid; i < s.B * kSingleStepUnits; i += nthreads) {
    const int64_t r = i / kSingleStepUnits, j = c * kSingleStepUnits + i % kSingleStepUnits;
    if (j >= s.units) continue;
    if (a.G == LstmCell::kGates) {
      LstmForwardPoint::run<V>(a.lstm, r, j);
    } else {
      GruForwardPoint::run<V>(a.gru, r, j);
    }
  }
}

}  // namespace fastrnn
