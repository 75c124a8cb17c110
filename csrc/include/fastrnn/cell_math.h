// LSTM / GRU cell math on values, forward and backward: the one place the formulas live.
//
// Each function maps gate pre-activations, saved activations and states (values, not memory) to
// new values. Nothing here indexes memory, so every kernel shape reuses it: the per-step point
// functions of steps.h (one (row, unit) pair per CUDA thread, or a SIMD vector of units on the
// CPU), and kernels that hold their gates in registers across a whole sequence.
//
// V is the value type the math runs on: the opmath scalar (float for half / bfloat16, else the
// scalar type), or a CPU SIMD vector of consecutive units (cpu/simd.h specialises Lanes for it).
// See docs/DESIGN.md ("Cell math") for how a new cell type plugs in.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Everything here is forced inline: the CPU launcher compiles its loops once per ISA
// (cpu/ops_cpu.cpp), and only code inlined into them is built for that ISA.
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

C10_HOST_DEVICE FASTRNN_INLINE float sqrt_(float x) {
#ifdef __CUDA_ARCH__
  return sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
C10_HOST_DEVICE FASTRNN_INLINE double sqrt_(double x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);
#else
  return std::sqrt(x);
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

// ---------------------------------------------------------------------------------------------
// LSTM, gate order i, f, g, o (torch.nn's): c' = f c + i g, h' = o tanh(c').

template <typename V>
struct LstmActivations {
  V i, f, g, o;  // gate activations
  V c;           // new cell state
  V h;           // new hidden state o * tanh(c) (before any projection)
};

// pre_*: the gate pre-activations x W_ih^T + h W_hh^T + biases of one unit.
// The new cell state from the gate activations: c' = f c + i g (the backward recomputes it under
// zoneout, where the saved state is the zoned one).
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V lstm_new_cell(V i, V f, V g, V c_prev) {
  return f * c_prev + i * g;
}

template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE LstmActivations<V> lstm_cell_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev) {
  using L = Lanes<V>;
  LstmActivations<V> a;
  a.i = sigmoid_v(pre_i);
  a.f = sigmoid_v(pre_f);
  a.g = L::tanh(pre_g);
  a.o = sigmoid_v(pre_o);
  a.c = lstm_new_cell(a.i, a.f, a.g, c_prev);
  a.h = a.o * L::tanh(a.c);
  return a;
}

template <typename V>
struct LstmGateGrads {
  V di, df, dg, d_o;  // grads of the gate pre-activations
  V dc_prev;          // grad of the previous cell state
};

// dh, dc: the complete grads of this step's h (before projection) and c from everything
// downstream; i, f, g, o, c: this step's saved activations; c_prev: the previous cell state.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE LstmGateGrads<V> lstm_cell_backward(V dh, V dc, V i, V f, V g, V o, V c, V c_prev) {
  const V one(1);
  const V tc = Lanes<V>::tanh(c);
  dc = dc + dh * o * (one - tc * tc);
  LstmGateGrads<V> d;
  d.di = dc * g * i * (one - i);
  d.df = dc * c_prev * f * (one - f);
  d.dg = dc * i * (one - g * g);
  d.d_o = dh * tc * o * (one - o);
  d.dc_prev = dc * f;
  return d;
}

// Layer norm (fastrnn's layer_norm option; docs/DESIGN.md, "Layer norm"): LN(v; w, b) =
// (v - mean(v)) * rstd * w + b over one row, rstd = 1 / sqrt(var(v) + eps), variance biased.
// The row reductions are steps.h's row points (or ATen, layer_norm.h, over whole sequences);
// these are the per-element pieces around them.
inline constexpr double kLayerNormEps = 1e-5;

// sum over i < n of f(i) in A. A single chain of dependent additions runs at one add per FP
// latency: on the CPU (OpenMP builds) the loop is a SIMD reduction, elsewhere four independent
// partial sums.
template <typename A, typename F>
C10_HOST_DEVICE FASTRNN_INLINE A row_sum(int64_t n, F&& f) {
#if !defined(__CUDA_ARCH__) && defined(_OPENMP)
  A s(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += f(i);
  return s;
#else
  A s0(0), s1(0), s2(0), s3(0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += f(i);
    s1 += f(i + 1);
    s2 += f(i + 2);
    s3 += f(i + 3);
  }
  for (; i < n; ++i) s0 += f(i);
  return (s0 + s1) + (s2 + s3);
#endif
}

// Mean and rstd of the n values x[0..n) in the accumulation type A (two passes: the variance from
// the centred values).
template <typename A, typename T>
C10_HOST_DEVICE FASTRNN_INLINE void layer_norm_stats(const T* x, int64_t n, A& mean, A& rstd) {
  const A m = row_sum<A>(n, [&](int64_t i) { return A(x[i]); }) / A(n);
  const A sq = row_sum<A>(n, [&](int64_t i) {
    const A d = A(x[i]) - m;
    return d * d;
  });
  mean = m;
  rstd = A(1) / sqrt_(sq / A(n) + A(kLayerNormEps));
}

template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V layer_norm_value(V x, V mean, V rstd, V w) {
  return (x - mean) * rstd * w;
}
//
// LSTM with a normalised cell: h = o tanh(cn), cn = LN(c; w_c, b_c); c stays the state.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V lstm_ln_hidden(V o, V cn) {
  return o * Lanes<V>::tanh(cn);
}

template <typename V>
struct LstmLnOutGrads {
  V d_o;  // grad of o's pre-activation
  V dcn;  // grad of cn
};

// dh: the complete grad of h (before any projection); o: the activation; cn: the normalised cell.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE LstmLnOutGrads<V> lstm_ln_out_backward(V dh, V o, V cn) {
  const V one(1);
  const V tc = Lanes<V>::tanh(cn);
  return {dh * tc * o * (one - o), dh * o * (one - tc * tc)};
}

// The grad of one input element of a row's layer norm: gw = grad of the output times w, xhat the
// normalised element, mean_gw and mean_gwx the row means of gw and gw * xhat.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V layer_norm_input_grad(V gw, V xhat, V rstd, V mean_gw, V mean_gwx) {
  return rstd * (gw - mean_gw - xhat * mean_gwx);
}

// The LSTM cell backward when dc is already complete (the normalised path added): di, df, dg and
// dc_prev; d_o comes from lstm_ln_out_backward.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE LstmGateGrads<V> lstm_ln_cell_backward(V dc, V i, V f, V g, V c_prev) {
  const V one(1);
  LstmGateGrads<V> d;
  d.di = dc * g * i * (one - i);
  d.df = dc * c_prev * f * (one - f);
  d.dg = dc * i * (one - g * g);
  d.d_o = V(0);
  d.dc_prev = dc * f;
  return d;
}

// ---------------------------------------------------------------------------------------------
// GRU, gate order r, z, n (torch.nn's): n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1-z) n + z h.

template <typename V>
struct GruActivations {
  V r, z, n;  // gate activations
  V hn;       // W_hn h + b_hn, the hidden part of n before the reset gate (backward needs it)
  V h;        // new hidden state
};

// pre_r, pre_z: the full pre-activations of r and z; x_n: the input part of n (x W_in^T + b_in);
// hn: W_hn h_prev + b_hn.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE GruActivations<V> gru_cell_forward(V pre_r, V pre_z, V x_n, V hn, V h_prev) {
  GruActivations<V> a;
  a.r = sigmoid_v(pre_r);
  a.z = sigmoid_v(pre_z);
  a.hn = hn;
  a.n = Lanes<V>::tanh(x_n + a.r * hn);
  a.h = (V(1) - a.z) * a.n + a.z * h_prev;
  return a;
}

template <typename V>
struct GruGateGrads {
  V dr, dz, dn;  // grads of the pre-activations of r, z and of n's input part
  V dn_h;        // grad of hn = W_hn h_prev + b_hn: dn * r
  V dh_direct;   // the part of dL/dh_prev that does not go through W_hh: z * dh
};

template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE GruGateGrads<V> gru_cell_backward(V dh, V r, V z, V n, V hn, V h_prev) {
  const V one(1);
  GruGateGrads<V> d;
  d.dn = dh * (one - z) * (one - n * n);
  d.dz = dh * (h_prev - n) * z * (one - z);
  d.dr = d.dn * hn * r * (one - r);
  d.dn_h = d.dn * r;
  d.dh_direct = dh * z;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Zoneout (Krueger et al. 2016), on any state after the cell: s_t = z s_{t-1} + (1 - z) s~_t with
// z the keep weight (a 0/1 draw in training, the rate p in eval); docs/DESIGN.md, "Options beyond
// torch.nn".

template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE V zoneout_blend(V keep, V prev, V fresh) {
  return keep * prev + (V(1) - keep) * fresh;
}

template <typename V>
struct ZoneoutGrads {
  V fresh;  // grad of the cell's own new state s~_t: (1 - z) ds
  V prev;   // the direct part of the grad of s_{t-1}: z ds
};

// ds: the complete grad of the zoned state s_t.
template <typename V>
C10_HOST_DEVICE FASTRNN_INLINE ZoneoutGrads<V> zoneout_backward(V keep, V ds) {
  return {(V(1) - keep) * ds, keep * ds};
}

}  // namespace fastrnn
