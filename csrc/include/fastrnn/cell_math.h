// Pointwise LSTM / GRU cell math, forward and backward, written once.
//
// Each `*_point` function is the whole work of one fused step kernel for one (row r, hidden
// unit j) pair. The CUDA kernels call it from one thread per pair; the CPU code calls it over
// the same index space with at::parallel_for. Nothing here touches shared memory or
// synchronises, so the CPU build runs exactly the GPU indexing.
//
// The point functions are templates over V, the value type the math runs on: the opmath scalar
// (float for half / bfloat16, else the scalar type) on CUDA, or a CPU SIMD vector of
// consecutive j (at::vec::Vectorized, see cpu/ops_cpu.cpp) — the same formulas either way.
//
// Conventions shared by every step:
//   - T time steps, B batch entries, H hidden units; tensors are row-major and time-major.
//   - Iteration s (0 <= s < T) is the s-th step the recurrence takes. Entry b, with length L
//     (T when no lengths are given), is active for s < L and then reads time index
//     t = s (forward) or t = L - 1 - s (reverse). Finished entries keep their state and
//     write nothing, so padded outputs keep the zeros they were allocated with.
//   - Running per-step buffers (states, GEMM results, grads of this step) are indexed by row r;
//     row r holds batch entry b = order[r]. With lengths known on the host the driver sorts
//     rows by length, longest first, so the active rows of every step are a prefix `rows` long
//     and finished entries cost nothing. Everything the caller sees (x, y, h0, c0, dy, dh_n,
//     saved activations, time-order grads) stays in batch-entry order and is indexed by b.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Everything here is forced inline: the CPU launcher compiles its row loop once per ISA
// (ops_cpu.cpp), and only code inlined into it is built for that ISA.
#if defined(__CUDACC__)
#define FASTRNN_INLINE __forceinline__
#elif defined(__GNUC__)
#define FASTRNN_INLINE inline __attribute__((always_inline))
#else
#define FASTRNN_INLINE inline
#endif

namespace fastrnn {

C10_HOST_DEVICE FASTRNN_INLINE float exp_(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE FASTRNN_INLINE double exp_(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE FASTRNN_INLINE float tanh_(float x) {
#ifdef __CUDA_ARCH__
  return tanhf(x);
#else
  return std::tanh(x);
#endif
}
C10_HOST_DEVICE FASTRNN_INLINE double tanh_(double x) {
#ifdef __CUDA_ARCH__
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

// Loads, stores and transcendentals for a value type V. This primary template is one lane
// (V = float or double); the CPU code specialises it for SIMD vectors.
template <typename V>
struct Lanes {
  static constexpr int64_t width = 1;
  template <typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static V load(const T* p) { return V(*p); }
  template <typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void store(T* p, V v) { *p = T(v); }
  C10_HOST_DEVICE FASTRNN_INLINE static V exp(V x) { return exp_(x); }
  C10_HOST_DEVICE FASTRNN_INLINE static V tanh(V x) { return tanh_(x); }
};

template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V sigmoid_v(V x) {
  return V(1) / (V(1) + Lanes<V>::exp(V(0) - x));
}

// Batch entry held by row r.
C10_HOST_DEVICE FASTRNN_INLINE int64_t entry_of(const int64_t* order, int64_t r) {
  return order == nullptr ? r : order[r];
}

// Length of entry b; the clamp keeps a bad length from ever indexing out of bounds
// (host code rejects such lengths before launching; this is the last line of defence).
C10_HOST_DEVICE FASTRNN_INLINE int64_t seq_length(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : L);
}

// Time index read by entry b (length L) at iteration s; false once the entry has finished.
C10_HOST_DEVICE FASTRNN_INLINE bool step_time(int64_t s, int64_t L, bool reverse, int64_t& t) {
  if (s >= L) return false;
  t = reverse ? L - 1 - s : s;
  return true;
}

// Fields every step shares: where it is in the sequence and which rows it covers.
struct StepCommon {
  const int64_t* lengths;  // [B] or nullptr (every entry has length T)
  const int64_t* order;    // [B] row -> batch entry, or nullptr (identity)
  int64_t s;               // iteration
  int64_t rows;            // rows launched this step (B, or the active prefix when sorted)
  int64_t T, B;
  int64_t H;               // hidden units: the launch covers rows x H pairs
  bool reverse;
};

// ---------------------------------------------------------------------------------------------
// LSTM, gate order i, f, g, o (torch.nn's).

// Saved activations per (t, b): i, f, g, o, c, plus o * tanh(c) when projecting.
C10_HOST_DEVICE FASTRNN_INLINE int64_t lstm_ws_width(int64_t H, bool proj) { return (proj ? 6 : 5) * H; }

template <typename scalar_t>
struct LstmForwardStep : StepCommon {
  scalar_t* xproj;         // [T, B, 4H] x_t W_ih^T + b_ih + b_hh, time order, rows xstride apart;
                           //            when it lives in ws, the step overwrites it with i, f, g, o
  int64_t xstride;
  const scalar_t* hproj;   // [rows, 4H] h_{s-1} W_hh^T for this iteration
  scalar_t* h;             // [B, H]     running hidden state by row, updated in place
  scalar_t* c;             // [B, H]     running cell state by row, updated in place
  scalar_t* y;             // [T, B, H]  outputs, time order
  scalar_t* ws;            // [T, B, 5H] saved i, f, g, o, c for backward (6H with projection:
                           //            adds o * tanh(c)); nullptr: save nothing
  scalar_t* hfull;         // [B, H] by row, with projection: o * tanh(c), the input of the
                           //            projection GEMM (h, y are then written by
                           //            lstm_proj_commit_point); nullptr without projection
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void lstm_forward_point(const LstmForwardStep<scalar_t>& a, int64_t r, int64_t j) {
  using L = Lanes<V>;
  const int64_t b = entry_of(a.order, r);
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t H = a.H;
  const int64_t row = t * a.B + b;
  const scalar_t* xp = a.xproj + row * a.xstride + j;
  const scalar_t* hp = a.hproj + r * 4 * H + j;
  const V i = sigmoid_v(L::load(xp) + L::load(hp));
  const V f = sigmoid_v(L::load(xp + H) + L::load(hp + H));
  const V g = L::tanh(L::load(xp + 2 * H) + L::load(hp + 2 * H));
  const V o = sigmoid_v(L::load(xp + 3 * H) + L::load(hp + 3 * H));
  const int64_t k = r * H + j;
  const V c = f * L::load(a.c + k) + i * g;
  const V h = o * L::tanh(c);
  L::store(a.c + k, c);
  if (a.hfull != nullptr) {
    L::store(a.hfull + k, h);
  } else {
    L::store(a.h + k, h);
    L::store(a.y + row * H + j, h);
  }
  if (a.ws != nullptr) {
    scalar_t* w = a.ws + row * lstm_ws_width(H, a.hfull != nullptr) + j;
    L::store(w, i);
    L::store(w + H, f);
    L::store(w + 2 * H, g);
    L::store(w + 3 * H, o);
    L::store(w + 4 * H, c);
    if (a.hfull != nullptr) L::store(w + 5 * H, h);
  }
}

template <typename scalar_t>
struct LstmBackwardStep : StepCommon {
  const scalar_t* dy;      // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;    // [B, H]     grad of the final hidden state
  const scalar_t* dc_n;    // [B, H]     grad of the final cell state
  const scalar_t* ws;      // [T, B, 5H] what the forward saved (6H with projection)
  const scalar_t* c0;      // [B, H]     initial cell state
  const scalar_t* dh;      // [B, H]     by row: dL/dh_s through the recurrence (iteration s+1's GEMM)
  const scalar_t* dh_full; // [B, H]     by row, with projection: the complete dL/d(o * tanh(c))
                           //            of this iteration (dy, dh_n, dh then unused); else nullptr
  scalar_t* dc;            // [B, H]     by row; in: dL/dc_s from iteration s+1; out: dL/dc_{s-1}
  scalar_t* dgates;        // [T, B, 4H] pre-activation gate grads, time order (or only the steps
                           //            from time dgates_t0 on, when the driver works in chunks)
  int64_t dgates_t0;
  scalar_t* dgates_step;   // [B, 4H]    by row: the same for this iteration, zero for finished
                           //            entries; the next GEMM computes dh_{s-1} from it
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void lstm_backward_point(const LstmBackwardStep<scalar_t>& a, int64_t r, int64_t j) {
  using L = Lanes<V>;
  const int64_t H = a.H;
  scalar_t* dstep = a.dgates_step + r * 4 * H + j;
  const int64_t b = entry_of(a.order, r);
  const int64_t len = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, len, a.reverse, t)) {
    for (int q = 0; q < 4; ++q) L::store(dstep + q * H, V(0));
    return;
  }
  const int64_t k = r * H + j;   // running buffers
  const int64_t kb = b * H + j;  // caller's [B, H] tensors
  const int64_t row = t * a.B + b;
  // The entry's last step gets the final-state grads; earlier ones what the recurrence carried.
  const bool last = a.s == len - 1;
  const V dh = a.dh_full != nullptr ? L::load(a.dh_full + k)
                                    : (last ? L::load(a.dh_n + kb) : L::load(a.dh + k)) + L::load(a.dy + row * H + j);
  V dc = last ? L::load(a.dc_n + kb) : L::load(a.dc + k);

  const int64_t width = lstm_ws_width(H, a.dh_full != nullptr);
  const scalar_t* w = a.ws + row * width + j;
  const V i = L::load(w), f = L::load(w + H), g = L::load(w + 2 * H), o = L::load(w + 3 * H);
  const V c = L::load(w + 4 * H);
  const V c_prev = a.s == 0 ? L::load(a.c0 + kb)
                            : L::load(a.ws + ((a.reverse ? t + 1 : t - 1) * a.B + b) * width + 4 * H + j);
  const V one(1);
  const V tc = L::tanh(c);
  dc = dc + dh * o * (one - tc * tc);
  const V di = dc * g * i * (one - i);
  const V df = dc * c_prev * f * (one - f);
  const V dg = dc * i * (one - g * g);
  const V d_o = dh * tc * o * (one - o);
  L::store(a.dc + k, dc * f);

  scalar_t* dt = a.dgates + ((t - a.dgates_t0) * a.B + b) * 4 * H + j;
  const V grads[4] = {di, df, dg, d_o};
  for (int q = 0; q < 4; ++q) {
    L::store(dt + q * H, grads[q]);
    L::store(dstep + q * H, grads[q]);
  }
}

// Projection (nn.LSTM's proj_size = P): after the GEMM hnew = hfull W_hr^T, active entries take
// hnew as their state and output; finished ones keep theirs.
template <typename scalar_t>
struct LstmProjCommitStep : StepCommon {  // H is the projected width P here
  const scalar_t* hnew;    // [rows, P]  projected hidden state of this iteration
  scalar_t* h;             // [B, P]     running hidden state by row, updated in place
  scalar_t* y;             // [T, B, P]  outputs, time order
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void lstm_proj_commit_point(const LstmProjCommitStep<scalar_t>& a, int64_t r, int64_t p) {
  using L = Lanes<V>;
  const int64_t b = entry_of(a.order, r);
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t k = r * a.H + p;
  const V h = L::load(a.hnew + k);
  L::store(a.h + k, h);
  L::store(a.y + (t * a.B + b) * a.H + p, h);
}

// Backward through the projection: the grad of this iteration's projected state, to be
// multiplied by W_hr (per step) into the grad of o * tanh(c), and by hfull (after the loop)
// into dW_hr.
template <typename scalar_t>
struct LstmProjBackwardStep : StepCommon {  // H is the projected width P here
  const scalar_t* dy;      // [T, B, P]  grad of outputs, time order
  const scalar_t* dh_n;    // [B, P]     grad of the final hidden state
  const scalar_t* dh;      // [B, P]     by row: dL/dh_s through the recurrence (iteration s+1's GEMM)
  scalar_t* dp;            // [T, B, P]  dL/dh_s in full, time order
  scalar_t* dp_step;       // [B, P]     by row: the same for this iteration, zero for finished entries
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void lstm_proj_backward_point(const LstmProjBackwardStep<scalar_t>& a, int64_t r, int64_t p) {
  using L = Lanes<V>;
  const int64_t k = r * a.H + p;
  const int64_t b = entry_of(a.order, r);
  const int64_t len = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, len, a.reverse, t)) {
    L::store(a.dp_step + k, V(0));
    return;
  }
  const int64_t row = t * a.B + b;
  const V d = (a.s == len - 1 ? L::load(a.dh_n + b * a.H + p) : L::load(a.dh + k)) + L::load(a.dy + row * a.H + p);
  L::store(a.dp + row * a.H + p, d);
  L::store(a.dp_step + k, d);
}

// ---------------------------------------------------------------------------------------------
// GRU, gate order r, z, n (torch.nn's): n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1-z) n + z h.

template <typename scalar_t>
struct GruForwardStep : StepCommon {
  scalar_t* xproj;         // [T, B, 3H] x_t W_ih^T + b_ih + (b_hr, b_hz, 0), time order, rows
                           //            xstride apart; in ws, overwritten with r, z, n
  int64_t xstride;
  const scalar_t* hproj;   // [rows, 3H] h_{s-1} W_hh^T for this iteration
  const scalar_t* b_hn;    // [H] or nullptr: the part of b_hh that sits inside the reset product
  scalar_t* h;             // [B, H]     running hidden state by row, updated in place
  scalar_t* y;             // [T, B, H]  outputs, time order
  scalar_t* ws;            // [T, B, 4H] saved r, z, n, W_hn h + b_hn; nullptr: save nothing
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void gru_forward_point(const GruForwardStep<scalar_t>& a, int64_t r, int64_t j) {
  using L = Lanes<V>;
  const int64_t b = entry_of(a.order, r);
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t H = a.H;
  const int64_t row = t * a.B + b;
  const scalar_t* xp = a.xproj + row * a.xstride + j;
  const scalar_t* hp = a.hproj + r * 3 * H + j;
  const V rg = sigmoid_v(L::load(xp) + L::load(hp));
  const V z = sigmoid_v(L::load(xp + H) + L::load(hp + H));
  const V hn = a.b_hn != nullptr ? L::load(hp + 2 * H) + L::load(a.b_hn + j) : L::load(hp + 2 * H);
  const V n = L::tanh(L::load(xp + 2 * H) + rg * hn);
  const int64_t k = r * H + j;
  const V h = (V(1) - z) * n + z * L::load(a.h + k);
  L::store(a.h + k, h);
  L::store(a.y + row * H + j, h);
  if (a.ws != nullptr) {
    scalar_t* w = a.ws + row * 4 * H + j;
    L::store(w, rg);
    L::store(w + H, z);
    L::store(w + 2 * H, n);
    L::store(w + 3 * H, hn);
  }
}

template <typename scalar_t>
struct GruBackwardStep : StepCommon {
  const scalar_t* dy;      // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;    // [B, H]     grad of the final hidden state
  const scalar_t* ws;      // [T, B, 4H] what the forward saved
  const scalar_t* h0;      // [B, H]     initial hidden state
  const scalar_t* y;       // [T, B, H]  forward outputs: h_{s-1} for s > 0
  scalar_t* dh;            // [B, H]     by row; in: dL/dh_s through the recurrence (iteration
                           //            s+1); out: the direct part z * dL/dh_s of dL/dh_{s-1}
  scalar_t* dgates;        // [T, B, 4H] time order: dr, dz, dn (input side), dn * r (hidden n);
                           //            from time dgates_t0 on (see LstmBackwardStep)
  int64_t dgates_t0;
  scalar_t* dgates_step;   // [B, 3H]    by row: hidden-side dr, dz, dn * r of this iteration,
                           //            zero for finished entries; the next GEMM adds it times
                           //            W_hh to dh
};

template <typename scalar_t, typename V = at::opmath_type<scalar_t>>
C10_HOST_DEVICE FASTRNN_INLINE void gru_backward_point(const GruBackwardStep<scalar_t>& a, int64_t r, int64_t j) {
  using L = Lanes<V>;
  const int64_t H = a.H;
  scalar_t* dstep = a.dgates_step + r * 3 * H + j;
  const int64_t b = entry_of(a.order, r);
  const int64_t len = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, len, a.reverse, t)) {
    for (int q = 0; q < 3; ++q) L::store(dstep + q * H, V(0));
    return;
  }
  const int64_t k = r * H + j;
  const int64_t kb = b * H + j;
  const int64_t row = t * a.B + b;
  const bool last = a.s == len - 1;
  const V dh = (last ? L::load(a.dh_n + kb) : L::load(a.dh + k)) + L::load(a.dy + row * H + j);

  const scalar_t* w = a.ws + row * 4 * H + j;
  const V rg = L::load(w), z = L::load(w + H), n = L::load(w + 2 * H), hn = L::load(w + 3 * H);
  const V h_prev = a.s == 0 ? L::load(a.h0 + kb) : L::load(a.y + ((a.reverse ? t + 1 : t - 1) * a.B + b) * H + j);
  const V one(1);
  const V dn = dh * (one - z) * (one - n * n);
  const V dz = dh * (h_prev - n) * z * (one - z);
  const V dr = dn * hn * rg * (one - rg);
  const V dn_h = dn * rg;
  L::store(a.dh + k, dh * z);

  scalar_t* dt = a.dgates + ((t - a.dgates_t0) * a.B + b) * 4 * H + j;
  L::store(dt, dr);
  L::store(dt + H, dz);
  L::store(dt + 2 * H, dn);
  L::store(dt + 3 * H, dn_h);
  L::store(dstep, dr);
  L::store(dstep + H, dz);
  L::store(dstep + 2 * H, dn_h);
}

}  // namespace fastrnn
