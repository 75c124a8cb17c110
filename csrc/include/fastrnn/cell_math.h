// Pointwise LSTM / GRU cell math, forward and backward, written once.
//
// Each `*_point` function is the whole per-thread work of one fused step kernel for one
// (batch entry b, hidden unit j) pair. The CUDA kernels call it from one thread per pair; the
// CPU code calls it over the same index space with at::parallel_for. Nothing here touches
// shared memory or synchronises, so the CPU build runs exactly the GPU indexing.
//
// Conventions shared by every step:
//   - T time steps, B batch entries, H hidden units; tensors are row-major and time-major.
//   - Iteration s (0 <= s < T) is the s-th step the recurrence takes. Entry b, with length L
//     (T when no lengths are given), is active for s < L and then reads time index
//     t = s (forward) or t = L - 1 - s (reverse). Finished entries keep their state and
//     write nothing, so padded outputs keep the zeros they were allocated with.
//   - Arithmetic in opmath (float for half / bfloat16, else the scalar type itself).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace fastrnn {

C10_HOST_DEVICE inline float exp_(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE inline double exp_(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
C10_HOST_DEVICE inline float tanh_(float x) {
#ifdef __CUDA_ARCH__
  return tanhf(x);
#else
  return std::tanh(x);
#endif
}
C10_HOST_DEVICE inline double tanh_(double x) {
#ifdef __CUDA_ARCH__
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}
template <typename T>
C10_HOST_DEVICE inline T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// Length of entry b; the clamp keeps a bad length from ever indexing out of bounds
// (host code rejects such lengths before launching; this is the last line of defence).
C10_HOST_DEVICE inline int64_t seq_length(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : L);
}

// Time index read by entry b (length L) at iteration s; false once the entry has finished.
C10_HOST_DEVICE inline bool step_time(int64_t s, int64_t L, bool reverse, int64_t& t) {
  if (s >= L) return false;
  t = reverse ? L - 1 - s : s;
  return true;
}

// ---------------------------------------------------------------------------------------------
// LSTM, gate order i, f, g, o (torch.nn's).

template <typename scalar_t>
struct LstmForwardStep {
  const scalar_t* xproj;   // [T, B, 4H] x_t W_ih^T + b_ih + b_hh, time order
  const scalar_t* hproj;   // [B, 4H]    h_{s-1} W_hh^T for this iteration
  scalar_t* h;             // [B, H]     running hidden state, updated in place
  scalar_t* c;             // [B, H]     running cell state, updated in place
  scalar_t* y;             // [T, B, H]  outputs, time order
  scalar_t* ws;            // [T, B, 5H] saved i, f, g, o, c for backward (6H with projection:
                           //            adds o * tanh(c)); nullptr: save nothing
  scalar_t* hfull;         // [B, H] with projection: o * tanh(c), the input of the projection
                           //            GEMM (h, y are then written by lstm_proj_commit_point);
                           //            nullptr without projection
  const int64_t* lengths;  // [B] or nullptr (every entry has length T)
  int64_t s, T, B, H;
  bool reverse;
};

// Saved activations per (t, b): i, f, g, o, c, plus o * tanh(c) when projecting.
C10_HOST_DEVICE inline int64_t lstm_ws_width(int64_t H, bool proj) { return (proj ? 6 : 5) * H; }

template <typename scalar_t>
C10_HOST_DEVICE inline void lstm_forward_point(const LstmForwardStep<scalar_t>& a, int64_t b, int64_t j) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t H = a.H;
  const int64_t row = t * a.B + b;
  const scalar_t* xp = a.xproj + row * 4 * H;
  const scalar_t* hp = a.hproj + b * 4 * H;
  const acc_t i = sigmoid_(acc_t(xp[j]) + acc_t(hp[j]));
  const acc_t f = sigmoid_(acc_t(xp[H + j]) + acc_t(hp[H + j]));
  const acc_t g = tanh_(acc_t(xp[2 * H + j]) + acc_t(hp[2 * H + j]));
  const acc_t o = sigmoid_(acc_t(xp[3 * H + j]) + acc_t(hp[3 * H + j]));
  const int64_t k = b * H + j;
  const acc_t c = f * acc_t(a.c[k]) + i * g;
  const acc_t h = o * tanh_(c);
  a.c[k] = scalar_t(c);
  if (a.hfull != nullptr) {
    a.hfull[k] = scalar_t(h);
  } else {
    a.h[k] = scalar_t(h);
    a.y[row * H + j] = scalar_t(h);
  }
  if (a.ws != nullptr) {
    scalar_t* w = a.ws + row * lstm_ws_width(H, a.hfull != nullptr);
    w[j] = scalar_t(i);
    w[H + j] = scalar_t(f);
    w[2 * H + j] = scalar_t(g);
    w[3 * H + j] = scalar_t(o);
    w[4 * H + j] = scalar_t(c);
    if (a.hfull != nullptr) w[5 * H + j] = scalar_t(h);
  }
}

// Projection (nn.LSTM's proj_size = P): after the GEMM hnew = hfull W_hr^T, active entries take
// hnew as their state and output; finished ones keep theirs.
template <typename scalar_t>
struct LstmProjCommitStep {
  const scalar_t* hnew;    // [B, P]    projected hidden state of this iteration
  scalar_t* h;             // [B, P]    running hidden state, updated in place
  scalar_t* y;             // [T, B, P] outputs, time order
  const int64_t* lengths;  // [B] or nullptr
  int64_t s, T, B, H;      // H is the projected width P here (the launch covers B x P)
  bool reverse;
};

template <typename scalar_t>
C10_HOST_DEVICE inline void lstm_proj_commit_point(const LstmProjCommitStep<scalar_t>& a, int64_t b, int64_t p) {
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t k = b * a.H + p;
  a.h[k] = a.hnew[k];
  a.y[(t * a.B + b) * a.H + p] = a.hnew[k];
}

// Backward through the projection: the grad of this iteration's projected state, to be
// multiplied by W_hr (per step) into the grad of o * tanh(c), and by hfull (after the loop)
// into dW_hr.
template <typename scalar_t>
struct LstmProjBackwardStep {
  const scalar_t* dy;      // [T, B, P] grad of outputs, time order
  const scalar_t* dh_n;    // [B, P]    grad of the final hidden state
  const scalar_t* dh;      // [B, P]    dL/dh_s through the recurrence, from iteration s+1's GEMM
  scalar_t* dp;            // [T, B, P] dL/dh_s in full, time order
  scalar_t* dp_step;       // [B, P]    the same for this iteration, zero for finished entries
  const int64_t* lengths;  // [B] or nullptr
  int64_t s, T, B, H;      // H is the projected width P here
  bool reverse;
};

template <typename scalar_t>
C10_HOST_DEVICE inline void lstm_proj_backward_point(const LstmProjBackwardStep<scalar_t>& a, int64_t b, int64_t p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = b * a.H + p;
  const int64_t L = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, L, a.reverse, t)) {
    a.dp_step[k] = scalar_t(0);
    return;
  }
  const int64_t row = t * a.B + b;
  const acc_t d = acc_t(a.s == L - 1 ? a.dh_n[k] : a.dh[k]) + acc_t(a.dy[row * a.H + p]);
  a.dp[row * a.H + p] = a.dp_step[k] = scalar_t(d);
}

template <typename scalar_t>
struct LstmBackwardStep {
  const scalar_t* dy;      // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;    // [B, H]     grad of the final hidden state
  const scalar_t* dc_n;    // [B, H]     grad of the final cell state
  const scalar_t* ws;      // [T, B, 5H] what the forward saved
  const scalar_t* c0;      // [B, H]     initial cell state
  const scalar_t* dh;      // [B, H]     dL/dh_s through the recurrence, from iteration s+1's GEMM
  const scalar_t* dh_full; // [B, H]     with projection: the complete dL/d(o * tanh(c)) of this
                           //            iteration (dy, dh_n, dh then unused); else nullptr
  scalar_t* dc;            // [B, H]     in: dL/dc_s from iteration s+1; out: dL/dc_{s-1}
  scalar_t* dgates;        // [T, B, 4H] pre-activation gate grads, time order
  scalar_t* dgates_step;   // [B, 4H]    the same rows for this iteration, zero for finished
                           //            entries: the next GEMM computes dh_{s-1} from it
  const int64_t* lengths;  // [B] or nullptr
  int64_t s, T, B, H;
  bool reverse;
};

template <typename scalar_t>
C10_HOST_DEVICE inline void lstm_backward_point(const LstmBackwardStep<scalar_t>& a, int64_t b, int64_t j) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = a.H;
  scalar_t* dstep = a.dgates_step + b * 4 * H;
  const int64_t L = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, L, a.reverse, t)) {
    dstep[j] = dstep[H + j] = dstep[2 * H + j] = dstep[3 * H + j] = scalar_t(0);
    return;
  }
  const int64_t k = b * H + j;
  const int64_t row = t * a.B + b;
  // The entry's last step gets the final-state grads; earlier ones what the recurrence carried.
  const bool last = a.s == L - 1;
  const acc_t dh = a.dh_full != nullptr ? acc_t(a.dh_full[k])
                                        : acc_t(last ? a.dh_n[k] : a.dh[k]) + acc_t(a.dy[row * H + j]);
  acc_t dc = acc_t(last ? a.dc_n[k] : a.dc[k]);

  const int64_t width = lstm_ws_width(H, a.dh_full != nullptr);
  const scalar_t* w = a.ws + row * width;
  const acc_t i = acc_t(w[j]), f = acc_t(w[H + j]), g = acc_t(w[2 * H + j]), o = acc_t(w[3 * H + j]);
  const acc_t c = acc_t(w[4 * H + j]);
  acc_t c_prev;
  if (a.s == 0) {
    c_prev = acc_t(a.c0[k]);
  } else {
    const int64_t prev_row = (a.reverse ? t + 1 : t - 1) * a.B + b;
    c_prev = acc_t(a.ws[prev_row * width + 4 * H + j]);
  }
  const acc_t tc = tanh_(c);
  dc += dh * o * (acc_t(1) - tc * tc);
  const acc_t di = dc * g * i * (acc_t(1) - i);
  const acc_t df = dc * c_prev * f * (acc_t(1) - f);
  const acc_t dg = dc * i * (acc_t(1) - g * g);
  const acc_t d_o = dh * tc * o * (acc_t(1) - o);
  a.dc[k] = scalar_t(dc * f);

  scalar_t* dt = a.dgates + row * 4 * H;
  dt[j] = dstep[j] = scalar_t(di);
  dt[H + j] = dstep[H + j] = scalar_t(df);
  dt[2 * H + j] = dstep[2 * H + j] = scalar_t(dg);
  dt[3 * H + j] = dstep[3 * H + j] = scalar_t(d_o);
}

// ---------------------------------------------------------------------------------------------
// GRU, gate order r, z, n (torch.nn's): n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1-z) n + z h.

template <typename scalar_t>
struct GruForwardStep {
  const scalar_t* xproj;   // [T, B, 3H] x_t W_ih^T + b_ih, time order
  const scalar_t* hproj;   // [B, 3H]    h_{s-1} W_hh^T + b_hh for this iteration
  scalar_t* h;             // [B, H]     running hidden state, updated in place
  scalar_t* y;             // [T, B, H]  outputs, time order
  scalar_t* ws;            // [T, B, 4H] saved r, z, n, W_hn h + b_hn; nullptr: save nothing
  const int64_t* lengths;  // [B] or nullptr
  int64_t s, T, B, H;
  bool reverse;
};

template <typename scalar_t>
C10_HOST_DEVICE inline void gru_forward_point(const GruForwardStep<scalar_t>& a, int64_t b, int64_t j) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t t;
  if (!step_time(a.s, seq_length(a.lengths, b, a.T), a.reverse, t)) return;
  const int64_t H = a.H;
  const int64_t row = t * a.B + b;
  const scalar_t* xp = a.xproj + row * 3 * H;
  const scalar_t* hp = a.hproj + b * 3 * H;
  const acc_t r = sigmoid_(acc_t(xp[j]) + acc_t(hp[j]));
  const acc_t z = sigmoid_(acc_t(xp[H + j]) + acc_t(hp[H + j]));
  const acc_t hn = acc_t(hp[2 * H + j]);
  const acc_t n = tanh_(acc_t(xp[2 * H + j]) + r * hn);
  const int64_t k = b * H + j;
  const acc_t h = (acc_t(1) - z) * n + z * acc_t(a.h[k]);
  a.h[k] = scalar_t(h);
  a.y[row * H + j] = scalar_t(h);
  if (a.ws != nullptr) {
    scalar_t* w = a.ws + row * 4 * H;
    w[j] = scalar_t(r);
    w[H + j] = scalar_t(z);
    w[2 * H + j] = scalar_t(n);
    w[3 * H + j] = scalar_t(hn);
  }
}

template <typename scalar_t>
struct GruBackwardStep {
  const scalar_t* dy;      // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;    // [B, H]     grad of the final hidden state
  const scalar_t* ws;      // [T, B, 4H] what the forward saved
  const scalar_t* h0;      // [B, H]     initial hidden state
  const scalar_t* y;       // [T, B, H]  forward outputs: h_{s-1} for s > 0
  scalar_t* dh;            // [B, H]     in: dL/dh_s through the recurrence (iteration s+1);
                           //            out: the direct part z * dL/dh_s of dL/dh_{s-1}
  scalar_t* dgates;        // [T, B, 4H] time order: dr, dz, dn (input side), dn * r (hidden n)
  scalar_t* dgates_step;   // [B, 3H]    hidden-side dr, dz, dn * r of this iteration, zero for
                           //            finished entries: the next GEMM adds it times W_hh to dh
  const int64_t* lengths;  // [B] or nullptr
  int64_t s, T, B, H;
  bool reverse;
};

template <typename scalar_t>
C10_HOST_DEVICE inline void gru_backward_point(const GruBackwardStep<scalar_t>& a, int64_t b, int64_t j) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = a.H;
  scalar_t* dstep = a.dgates_step + b * 3 * H;
  const int64_t L = seq_length(a.lengths, b, a.T);
  int64_t t;
  if (!step_time(a.s, L, a.reverse, t)) {
    dstep[j] = dstep[H + j] = dstep[2 * H + j] = scalar_t(0);
    return;
  }
  const int64_t k = b * H + j;
  const int64_t row = t * a.B + b;
  const bool last = a.s == L - 1;
  const acc_t dh = acc_t(last ? a.dh_n[k] : a.dh[k]) + acc_t(a.dy[row * H + j]);

  const scalar_t* w = a.ws + row * 4 * H;
  const acc_t r = acc_t(w[j]), z = acc_t(w[H + j]), n = acc_t(w[2 * H + j]), hn = acc_t(w[3 * H + j]);
  const acc_t h_prev = a.s == 0 ? acc_t(a.h0[k])
                                : acc_t(a.y[((a.reverse ? t + 1 : t - 1) * a.B + b) * H + j]);
  const acc_t dn = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
  const acc_t dz = dh * (h_prev - n) * z * (acc_t(1) - z);
  const acc_t dr = dn * hn * r * (acc_t(1) - r);
  const acc_t dn_h = dn * r;
  a.dh[k] = scalar_t(dh * z);

  scalar_t* dt = a.dgates + row * 4 * H;
  dt[j] = dstep[j] = scalar_t(dr);
  dt[H + j] = dstep[H + j] = scalar_t(dz);
  dt[2 * H + j] = scalar_t(dn);
  dt[3 * H + j] = dstep[2 * H + j] = scalar_t(dn_h);
}

}  // namespace fastrnn
