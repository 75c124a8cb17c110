// The step-loop recurrence: per time step one recurrent GEMM and one fused pointwise launch
// (the point functions of steps.h), backward likewise in reverse with the gate grads folded into
// dx and the parameter grads in runs of steps. One implementation of the backend entry points
// (backend.h) for every device, over a `Kernels` policy:
//   using Gemm = ...;                                  // the recurrent GEMM (gemm.h)
//   static constexpr int64_t kGradChunkBytes = ...;    // backward gate-grad buffer (GradChunks)
//   template <class Point, class Step> static void run(const Step& a);
//                                                      // Point::run over a.rows x a.units pairs
// The CPU backend runs it for everything but its fused single steps; CUDA runs it when the
// recurrence dispatch (cuda/recurrence.cpp) picks the step loop.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <optional>
#include <type_traits>

#include "fastrnn/gemm.h"
#include "fastrnn/layer_plan.h"
#include "fastrnn/path_log.h"

namespace fastrnn {

// The backward's gate grads reach dx and the parameter grads only through sums over steps, so
// the loop may keep just a chunk of steps of them (Kernels::kGradChunkBytes; 0 = all T steps)
// and fold each chunk as soon as it is complete (why: docs/DESIGN.md, "Backends and dispatch").
// Chunks are runs of iterations; they are runs of time indices when every entry reads the same
// time at an iteration — forward (t = s), or reverse without lengths (t = T-1-s) — so reverse
// with lengths keeps all T steps. Half and bfloat16 keep all steps too: summing chunk results in
// those types would round once per chunk. Layer norm's backward keeps its other per-step buffers
// (the hidden norm's grads, the c norm's parameter terms) in the same chunks.
struct GradChunks {
  static constexpr int64_t kMinGemmRows = 512;  // rows (chunk steps x B) of the fold GEMMs
  int64_t steps, T;
  bool reverse, masked;
  // sums: the chunks' results are summed (the backward's parameter grads), which keeps half types
  // unchunked.
  GradChunks(int64_t budget_bytes, const LayerPlan& p, int64_t width, bool sums = true)
      : steps(p.d.T), T(p.d.T), reverse(p.reverse), masked(p.masked()) {
    if (budget_bytes > 0 && !(reverse && masked) && !(sums && at::isReducedFloatingType(p.x.scalar_type()))) {
      const int64_t B = p.d.B;
      const int64_t min_steps = std::min(T, (kMinGemmRows + B - 1) / B);
      steps = std::clamp(budget_bytes / (B * width * int64_t(p.x.element_size())), min_steps, T);
    }
  }
  int64_t count() const { return (T + steps - 1) / steps; }
  int64_t lo(int64_t s) const { return s / steps * steps; }  // the chunk's last iteration
  int64_t length(int64_t s) const { return std::min(steps, T - lo(s)); }
  bool starts(int64_t s) const { return s == lo(s) + length(s) - 1; }  // iterations run downwards
  bool ends(int64_t s) const { return s == lo(s); }
  int64_t t0(int64_t s) const { return reverse ? T - lo(s) - length(s) : lo(s); }  // its first time index
  // Before iteration s: where a new chunk starts, point the step at it and clear the buffers (in
  // time order; undefined: none) of the previous chunk where padded positions will not overwrite
  // them.
  template <typename Step, typename... Buffer>
  void enter(int64_t s, Step& a, Buffer&... buffers) const {
    if (!starts(s)) return;
    a.dgates_t0 = t0(s);
    if (masked && s != T - 1) ((buffers.defined() ? void(buffers.zero_()) : void()), ...);
  }
};

// The arguments of the forward point functions for a plan, before the loop sets s and rows.
// xproj [T*B, G*H] (positions xproj.stride(0) apart), hproj [B, G*H] by row.
template <typename T>
void fill_forward_step(ForwardPlan& p, ForwardStep<T>& a, const Tensor& xproj, const Tensor& hproj) {
  p.fill_common(a, p.d.H);
  a.xproj = xproj.data_ptr<T>();
  a.xstride = xproj.stride(0);
  a.hproj = hproj.const_data_ptr<T>();
  a.h = p.h.mutable_data_ptr<T>();
  a.y = p.y.mutable_data_ptr<T>();
  a.saved = p.save ? p.saved.mutable_data_ptr<T>() : nullptr;
  a.zoneout_h = Regularisers::keep<T>(p.reg.zoneout_h);
}

// Layer norm's input side: xproj holds x W_ih^T alone; the steps read it through the norm (the
// statistics of its rows, x_stats [rows of xproj, 2] alive for the loop) and add bias after it.
// When saving, the steps also keep the raw recurrent products in ws.
template <typename T>
void input_norm(const ForwardPlan& p, ForwardStep<T>& a, const Tensor& x_stats, const Tensor& bias) {
  a.ln.x_stats = x_stats.const_data_ptr<at::opmath_type<T>>();
  a.ln.w_ih = p.ln.w_ih.const_data_ptr<T>();
  a.ln.bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  a.ln.hh = p.save ? p.saved.mutable_data_ptr<T>() + p.ln_raw_hh_col() : nullptr;
}

// hfull [B, H] by row with a projection, else undefined.
template <typename T>
LstmForwardStep<T> lstm_forward_step(ForwardPlan& p, const Tensor& xproj, const Tensor& hproj, const Tensor& hfull) {
  LstmForwardStep<T> a{};
  fill_forward_step<T>(p, a, xproj, hproj);
  a.c = p.c.mutable_data_ptr<T>();
  a.hfull = hfull.defined() ? hfull.mutable_data_ptr<T>() : nullptr;
  a.zoneout_c = Regularisers::keep<T>(p.reg.zoneout_c);
  return a;
}

// b_hn [H], or undefined.
template <typename T>
GruForwardStep<T> gru_forward_step(ForwardPlan& p, const Tensor& xproj, const Tensor& hproj, const Tensor& b_hn) {
  GruForwardStep<T> a{};
  fill_forward_step<T>(p, a, xproj, hproj);
  a.b_hn = b_hn.defined() ? b_hn.const_data_ptr<T>() : nullptr;
  return a;
}

// ---- Layer norm's per-step pieces (docs/DESIGN.md, "Layer norm"): row points of steps.h.

// [rows, 2] opmath (default B rows): a buffer of row statistics (mean, rstd).
inline Tensor layer_norm_row_stats(const LayerPlan& p, std::optional<int64_t> rows = std::nullopt) {
  return at::empty({rows.value_or(p.d.B), 2}, p.x.options().dtype(at::toOpMathType(p.x.scalar_type())));
}

// The statistics of x's rows [B, n] (by row) into stats.
template <typename T>
RowStatsStep<T> row_stats_step(const LayerPlan& p, const Tensor& x, int64_t n, const Tensor& stats) {
  RowStatsStep<T> st{};
  p.fill_common(st, 1);
  st.x = x.const_data_ptr<T>();
  st.n = n;
  st.ld = n;
  st.stats = stats.mutable_data_ptr<at::opmath_type<T>>();
  return st;
}

// The hidden norm of a forward: statistics of hproj's rows, which the forward point reads.
// stats: from layer_norm_row_stats, alive for the loop.
template <typename T>
RowStatsStep<T> hidden_row_stats(const ForwardPlan& p, ForwardStep<T>& a, const Tensor& hproj, const Tensor& stats) {
  const RowStatsStep<T> st = row_stats_step<T>(p, hproj, p.G * p.d.H, stats);
  a.ln.h_stats = st.stats;
  a.ln.w_hh = p.ln.w_hh.const_data_ptr<T>();
  return st;
}

// The statistics of a raw product at every position it holds, x [M, G*H] (rows x.stride(0) apart:
// the input projection, or a raw block of ws), into stats [>= M, 2] (opmath; default: a new
// [M, 2]), mean and rstd, rows in x's order. Padded positions (zeros) get finite values, never read.
template <class Kernels, typename T>
Tensor position_row_stats(const LayerPlan& p, const Tensor& x, Tensor stats = Tensor()) {
  if (!stats.defined()) stats = layer_norm_row_stats(p, x.size(0));
  RowStatsStep<T> st{};
  p.fill_common(st, 1);
  st.rows = x.size(0);
  st.x = x.const_data_ptr<T>();
  st.n = x.size(1);
  st.ld = x.stride(0);
  st.stats = stats.mutable_data_ptr<at::opmath_type<T>>();
  Kernels::template run<RowStatsPoint>(st);
  return stats;
}

// Points run in order over one iteration's rows, where each reads only its own row of what the
// earlier ones wrote (layer norm's row statistics between the cell's points). A backend with
// Kernels::kRowStages (the CPU) runs the whole chain row by row in one parallel pass
// (Kernels::for_rows, Kernels::run_row); the others launch stage after stage (Kernels::run).
// Each step's s and rows must be set.
template <class Point, class Step>
struct Stage {
  using point = Point;
  const Step& step;
};
template <class Point, class Step>
Stage<Point, Step> stage(const Step& step) {
  return {step};
}

template <class Kernels, class... S>
void run_stages(int64_t rows, const S&... stages) {
  if constexpr (Kernels::kRowStages) {
    const int64_t units = std::max({stages.step.units...});
    Kernels::for_rows(rows, units, [&](int64_t r) { (Kernels::template run_row<typename S::point>(stages.step, r), ...); });
  } else {
    (Kernels::template run<typename S::point>(stages.step), ...);
  }
}

// Sets the iteration s and its n rows on each step.
template <class... Step>
void at_iteration(int64_t s, int64_t n, Step&... steps) {
  ((steps.s = s, steps.rows = n), ...);
}

// A backward's view of the norms, to recompute the activations from ws: x_stats [T*B, 2] of
// the raw x W_ih^T, hn.stats of the raw h_prev W_hh^T, bias: input_bias() (or undefined), alive
// for the loop.
template <typename T>
void saved_gates_norm(const BackwardPlan& p, LnGates<T>& g, const BackwardPlan::HiddenNorm& hn, const Tensor& x_stats,
                      const Tensor& bias) {
  using A = at::opmath_type<T>;
  g.x_stats = x_stats.const_data_ptr<A>();
  g.h_stats = hn.stats.const_data_ptr<A>();
  g.w_ih = p.ln.w_ih.const_data_ptr<T>();
  g.w_hh = p.ln.w_hh.const_data_ptr<T>();
  g.bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  g.hh = p.saved.data_ptr<T>() + p.ln_raw_hh_col();  // read only
}

// The hidden norm of a backward: per iteration the hidden-side gate grads dgates_step [B, G*H]
// through the norm into hn.draw (hidden_norm_backward).
template <typename T>
LnBackwardStep<T> hidden_norm_backward_step(const BackwardPlan& p, const BackwardPlan::HiddenNorm& hn,
                                            const Tensor& dgates_step, const Tensor& gmeans) {
  using A = at::opmath_type<T>;
  LnBackwardStep<T> b{};
  p.fill_common(b, 1);
  b.g = dgates_step.const_data_ptr<T>();
  b.w = p.ln.w_hh.const_data_ptr<T>();
  b.gmeans = gmeans.mutable_data_ptr<A>();
  b.n = p.G * p.d.H;
  b.x = p.saved.const_data_ptr<T>() + p.ln_raw_hh_col();  // its input, the raw h_prev W_hh^T
  b.stats = hn.stats.const_data_ptr<A>();
  b.dx = hn.draw.mutable_data_ptr<T>();
  b.param = hn.param.mutable_data_ptr<A>();
  return b;
}

// Its two stages at iteration s over n rows of the chunk from iteration lo: the row means
// (units = 1), then the elements (units = G*H), which write draw[s - lo].
template <typename T>
std::pair<LnBackwardStep<T>, LnBackwardStep<T>> hidden_norm_backward_at(LnBackwardStep<T> b, int64_t s, int64_t n,
                                                                        int64_t lo) {
  const int64_t off = (s - lo) * b.B;  // (s, r) order: iteration s's rows start at row (s - lo) * B
  b.dx += off * b.n;
  b.param += off * b.n;
  at_iteration(s, n, b);
  LnBackwardStep<T> e = b;
  e.units = b.n;
  return {b, e};
}

template <class Kernels>
struct StepLoop {
  static constexpr const char* kPathName = Kernels::kStepLoopPath;
  using Gemm = typename Kernels::Gemm;

  // Recurrent dropout: the recurrent GEMM of iteration s reads rec_mask * h_{s-1} (the first n
  // rows of hm [B, P], made here) instead of h; the state itself stays unmasked.
  static const Tensor& recurrent_input(const LayerPlan& p, const Tensor& h, Tensor& hm, int64_t n) {
    if (!p.reg.rec_rows.defined()) return h;
    if (!hm.defined()) hm = at::empty_like(h);
    Tensor out = hm.narrow(0, 0, n);
    at::mul_out(out, h.narrow(0, 0, n), p.reg.rec_rows.narrow(0, 0, n));
    return hm;
  }

  // dh[:n] = (accumulate ? dh[:n] : 0) + rec_mask * (dgates_step[:n] W_hh): the recurrent
  // product's grad reaches h_{s-1} through recurrent dropout's mask (tmp: a [B, P] buffer).
  static void hidden_grad(const BackwardPlan& p, const Gemm& gemm, const Tensor& dgates_step, int64_t n,
                          bool accumulate, Tensor& tmp) {
    if (!p.reg.rec_rows.defined()) return gemm(p.dh, dgates_step, n, accumulate);
    if (!tmp.defined()) tmp = at::empty_like(p.dh);
    gemm(tmp, dgates_step, n, false);
    Tensor out = p.dh.narrow(0, 0, n);
    const Tensor prod = tmp.narrow(0, 0, n), m = p.reg.rec_rows.narrow(0, 0, n);
    if (accumulate) {
      out.addcmul_(prod, m);
    } else {
      at::mul_out(out, prod, m);
    }
  }

  // The forward's input projection: with saving all T steps in ws; without, a chunk of steps at
  // a time (the backward's chunk sizes), so that its buffer comes back from the heap rather than
  // as fresh pages on every call, and stays in cache.
  static GradChunks input_chunks(const ForwardPlan& p) {
    return GradChunks(p.save ? 0 : Kernels::kGradChunkBytes, p, p.G * p.d.H, /*sums=*/false);
  }
  // Layer norm: the statistics of xproj's rows (opmath), else undefined.
  static Tensor input_stats_buffer(const ForwardPlan& p, const Tensor& xproj) {
    return p.ln.on() ? layer_norm_row_stats(p, xproj.size(0)) : Tensor();
  }
  // Where iteration s starts a chunk: its times' input projection into xproj (with layer norm,
  // their statistics into x_stats), and the step pointed at them.
  template <typename T>
  static void enter_input_chunk(const ForwardPlan& p, const GradChunks& xc, int64_t s, const Tensor& xproj,
                                const Tensor& bias, ForwardStep<T>& a, const Tensor& x_stats) {
    if (s != xc.lo(s)) return;
    const int64_t t0 = xc.t0(s), n = xc.length(s);
    const Tensor part = xproj.narrow(0, 0, n * p.d.B);
    p.project_input(part, bias, t0, n);
    a.xproj_t0 = t0;
    if (p.ln.on()) position_row_stats<Kernels, T>(p, part, x_stats);
  }

  static void lstm_forward(ForwardPlan& p) {
    const Dims& d = p.d;
    const GradChunks xc = input_chunks(p);
    const Tensor xproj = p.input_projection_buffer(xc.steps), bias = p.input_bias();
    const Tensor x_stats = input_stats_buffer(p, xproj);
    Tensor hproj = at::empty({d.B, p.G * d.H}, p.x.options());
    Tensor hfull, hnew;
    std::optional<typename Kernels::Gemm> gemm_hr;
    if (p.projected()) {
      hfull = at::zeros({d.B, d.H}, p.x.options());
      hnew = at::empty({d.B, d.P}, p.x.options());
      gemm_hr.emplace(p.w_hr, /*transpose=*/true, d.B, d.T);
    }
    const typename Kernels::Gemm gemm_hh(p.w_hh, /*transpose=*/true, d.B, d.T);
    const bool ln = p.ln.on();
    const Tensor ln_o = ln ? at::empty({d.B, d.H}, p.x.options()) : Tensor();  // phase 1's o, by row
    const Tensor h_stats = ln ? layer_norm_row_stats(p) : Tensor(), c_stats = ln ? layer_norm_row_stats(p) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "lstm_forward", [&] {
      auto a = lstm_forward_step<scalar_t>(p, xproj, hproj, hfull);
      RowStatsStep<scalar_t> hs{}, cs{};
      if (ln) {
        input_norm<scalar_t>(p, a, x_stats, bias);
        hs = hidden_row_stats<scalar_t>(p, a, hproj, h_stats);
        cs = row_stats_step<scalar_t>(p, p.c, d.H, c_stats);
        a.ln_o = ln_o.mutable_data_ptr<scalar_t>();
        a.ln_c_stats = cs.stats;
        a.ln_c_w = p.ln.w_c.const_data_ptr<scalar_t>();
        a.ln_c_b = p.ln.b_c.const_data_ptr<scalar_t>();
      }
      LstmProjCommitStep<scalar_t> pc{};
      if (p.projected()) {
        p.fill_common(pc, d.P);
        pc.hnew = hnew.const_data_ptr<scalar_t>();
        pc.h = a.h;
        pc.y = a.y;
        pc.zoneout_h = a.zoneout_h;
        a.zoneout_h = {};  // the commit zones the projected state
      }
      Tensor hm;
      for (int64_t s = 0; s < d.T; ++s) {
        const int64_t n = p.sched.rows(s, d.B);
        enter_input_chunk<scalar_t>(p, xc, s, xproj, bias, a, x_stats);
        gemm_hh(hproj, recurrent_input(p, p.h, hm, n), n, false);
        at_iteration(s, n, a);
        if (ln) {  // the product's row statistics, the cell, c's, then h = o tanh(LN(c)) (LstmLnOutPoint)
          at_iteration(s, n, hs, cs);
          run_stages<Kernels>(n, stage<RowStatsPoint>(hs), stage<LstmForwardPoint>(a), stage<RowStatsPoint>(cs),
                              stage<LstmLnOutPoint>(a));
        } else {
          Kernels::template run<LstmForwardPoint>(a);
        }
        if (p.projected()) {
          (*gemm_hr)(hnew, hfull, n, false);
          pc.s = s;
          pc.rows = n;
          Kernels::template run<LstmProjCommitPoint>(pc);
        }
      }
    });
    PathLog::record(p.op, kPathName);
  }

  static void gru_forward(ForwardPlan& p) {
    const Dims& d = p.d;
    const GradChunks xc = input_chunks(p);
    const Tensor xproj = p.input_projection_buffer(xc.steps), bias = p.input_bias();
    const Tensor x_stats = input_stats_buffer(p, xproj);
    const Tensor b_hn = p.hidden_n_bias();
    Tensor hproj = at::empty({d.B, p.G * d.H}, p.x.options());
    const typename Kernels::Gemm gemm_hh(p.w_hh, /*transpose=*/true, d.B, d.T);
    const Tensor h_stats = p.ln.on() ? layer_norm_row_stats(p) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "gru_forward", [&] {
      auto a = gru_forward_step<scalar_t>(p, xproj, hproj, b_hn);
      RowStatsStep<scalar_t> hs{};
      if (p.ln.on()) {
        input_norm<scalar_t>(p, a, x_stats, bias);
        hs = hidden_row_stats<scalar_t>(p, a, hproj, h_stats);
      }
      Tensor hm;
      for (int64_t s = 0; s < d.T; ++s) {
        const int64_t n = p.sched.rows(s, d.B);
        enter_input_chunk<scalar_t>(p, xc, s, xproj, bias, a, x_stats);
        gemm_hh(hproj, recurrent_input(p, p.h, hm, n), n, false);
        at_iteration(s, n, a, hs);
        if (p.ln.on()) {
          run_stages<Kernels>(n, stage<RowStatsPoint>(hs), stage<GruForwardPoint>(a));
        } else {
          Kernels::template run<GruForwardPoint>(a);
        }
      }
    });
    PathLog::record(p.op, kPathName);
  }

  // Elements a step of the backward keeps per row in its chunks (GradChunks): the gate
  // grads, and with layer norm the hidden norm's grads and weight terms and the c norm's terms.
  static int64_t grad_chunk_width(const BackwardPlan& p) {
    if (!p.ln.on()) return p.dgates_width;
    return p.dgates_width + 2 * p.G * p.d.H + (p.cell.has_cell_state() ? 2 * p.d.H : 0);
  }

  static void lstm_backward(BackwardPlan& p) {
    const Dims& d = p.d;
    const auto opts = p.x.options();
    // Padded positions are never written by the steps; their grads must read as zero.
    const GradChunks chunks(Kernels::kGradChunkBytes, p, grad_chunk_width(p));
    Tensor dgates = detail::zeros_if(p.masked(), {chunks.steps, d.B, p.dgates_width}, p.x);
    Tensor dgates_step = at::empty({d.B, p.G * d.H}, opts);  // hidden-side grads, dW_hh's rows
    p.dh = at::zeros({d.B, d.P}, opts);
    p.dc = at::zeros({d.B, d.H}, opts);
    const typename Kernels::Gemm gemm_hh(p.w_hh, /*transpose=*/false, d.B, d.T);
    Tensor dp, dp_step, dh_full;
    std::optional<typename Kernels::Gemm> gemm_hr;
    if (p.projected()) {
      gemm_hr.emplace(p.w_hr, /*transpose=*/false, d.B, d.T);
      dp = detail::zeros_if(p.masked(), {d.T, d.B, d.P}, p.x);
      dp_step = at::empty({d.B, d.P}, opts);
      dh_full = at::empty({d.B, d.H}, opts);
    }
    // Layer norm (docs/DESIGN.md, "Layer norm"): the hidden norm's inputs by row, the statistics
    // of every saved c, and the buffers of the two phases of the c norm's backward.
    const bool ln = p.ln.on();
    BackwardPlan::HiddenNorm hn;
    Tensor c_stats, ih_stats, ln_gw, ln_gw_mean, ln_c_param, h_gmeans, d_ln_ih, d_ln_c;
    const Tensor bias = ln ? p.input_bias() : Tensor();
    if (ln) {
      hn = p.hidden_norm(chunks.steps);
      const auto aopts = opts.dtype(at::toOpMathType(p.x.scalar_type()));
      ln_gw = at::empty({d.B, 2, d.H}, aopts);
      ln_gw_mean = at::empty({d.B, 2}, aopts);
      ln_c_param = detail::zeros_if(p.masked(), {chunks.steps, d.B, 2 * d.H}, ln_gw);
      d_ln_c = at::zeros({2 * d.H}, aopts);
      h_gmeans = at::empty({d.B, 2}, aopts);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "lstm_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (ln) {
        c_stats = position_row_stats<Kernels, scalar_t>(p, p.ws_columns(p.saved, LstmCell::kC * d.H, d.H));
        hn.stats = position_row_stats<Kernels, scalar_t>(p, p.hidden_raw());
        ih_stats = position_row_stats<Kernels, scalar_t>(p, p.input_raw());
      }
      LstmBackwardStep<scalar_t> a{};
      p.fill_common(a, d.H);
      a.dy = p.dy.const_data_ptr<scalar_t>();
      a.dh_n = p.dh_n.const_data_ptr<scalar_t>();
      a.dc_n = p.dc_n.const_data_ptr<scalar_t>();
      a.saved = p.saved.const_data_ptr<scalar_t>();
      a.c0 = p.c0.const_data_ptr<scalar_t>();
      a.dh = p.dh.mutable_data_ptr<scalar_t>();
      a.dh_full = p.projected() ? dh_full.const_data_ptr<scalar_t>() : nullptr;
      a.dc = p.dc.mutable_data_ptr<scalar_t>();
      a.dgates = dgates.mutable_data_ptr<scalar_t>();
      a.dgates_step = dgates_step.mutable_data_ptr<scalar_t>();
      a.zoneout_c = Regularisers::keep<scalar_t>(p.reg.zoneout_c);
      if (!p.projected()) a.zoneout_h = Regularisers::keep<scalar_t>(p.reg.zoneout_h);
      if (ln) {
        a.ln_c_stats = c_stats.const_data_ptr<acc_t>();
        saved_gates_norm<scalar_t>(p, a.ln, hn, ih_stats, bias);
        a.ln_c_w = p.ln.w_c.const_data_ptr<scalar_t>();
        a.ln_c_b = p.ln.b_c.const_data_ptr<scalar_t>();
        a.ln_gw = ln_gw.mutable_data_ptr<acc_t>();
        a.ln_gw_mean = ln_gw_mean.const_data_ptr<acc_t>();
        a.ln_c_param = ln_c_param.mutable_data_ptr<acc_t>();
      }
      RowMeansStep<scalar_t> gm{};
      LnBackwardStep<scalar_t> hb{};
      if (ln) {
        p.fill_common(gm, 1);
        gm.x = ln_gw.const_data_ptr<acc_t>();
        gm.m = 2;
        gm.n = d.H;
        gm.means = ln_gw_mean.mutable_data_ptr<acc_t>();
        hb = hidden_norm_backward_step<scalar_t>(p, hn, dgates_step, h_gmeans);
      }
      LstmProjBackwardStep<scalar_t> pb{};
      if (p.projected()) {
        p.fill_common(pb, d.P);
        pb.dy = a.dy;
        pb.dh_n = a.dh_n;
        pb.dh = a.dh;
        pb.dp = dp.mutable_data_ptr<scalar_t>();
        pb.dp_step = dp_step.mutable_data_ptr<scalar_t>();
        pb.zoneout_h = Regularisers::keep<scalar_t>(p.reg.zoneout_h);
      }
      // With zoneout on h the points leave its direct part z_h dh_s in dh, which the GEMM adds to.
      const bool direct = p.reg.zoneout_h.defined();
      Tensor tmp;
      for (int64_t s = d.T - 1; s >= 0; --s) {
        const int64_t n = p.sched.rows(s, d.B);
        chunks.enter(s, a, dgates, ln_c_param);
        if (p.projected()) {
          pb.s = s;
          pb.rows = n;
          Kernels::template run<LstmProjBackwardPoint>(pb);
          (*gemm_hr)(dh_full, dp_step, n, false);
        }
        a.s = s;
        a.rows = n;
        if (!ln) {
          Kernels::template run<LstmBackwardPoint>(a);
          hidden_grad(p, gemm_hh, dgates_step, n, direct, tmp);
          if (chunks.ends(s)) p.fold_gate_grads(dgates.narrow(0, 0, chunks.length(s)), chunks.t0(s));
          continue;
        }
        at_iteration(s, n, gm);
        const int64_t lo = chunks.lo(s);
        const auto [hb_means, hb_elems] = hidden_norm_backward_at(hb, s, n, lo);
        run_stages<Kernels>(n, stage<LstmLnOutBackwardPoint>(a), stage<RowMeansPoint>(gm),
                            stage<LstmLnCellBackwardPoint>(a), stage<LnGradMeansPoint>(hb_means),
                            stage<LnInputGradPoint>(hb_elems));
        hidden_grad(p, gemm_hh, hn.draw[s - lo], n, direct, tmp);
        if (chunks.ends(s)) {
          const int64_t len = chunks.length(s);
          p.fold_layer_norm_chunk(dgates.narrow(0, 0, len), chunks.t0(s), ih_stats, d_ln_ih, hn, lo);
          d_ln_c.add_(ln_c_param.narrow(0, 0, len).view({len * d.B, 2 * d.H}).sum(0));
        }
      }
    });
    if (ln) {
      p.finish_layer_norm(d_ln_ih, hn);
      const Tensor sums = d_ln_c.to(p.x.scalar_type());
      p.d_ln_c_w = sums.narrow(0, 0, d.H);
      p.d_ln_c_b = sums.narrow(0, d.H, d.H);
    } else {
      p.fold_first_step(dgates_step);
    }
    if (p.projected()) p.dw_hr = p.projection_grad(dp);
    PathLog::record(p.op, kPathName, chunks.count());
  }

  static void gru_backward(BackwardPlan& p) {
    const Dims& d = p.d;
    const auto opts = p.x.options();
    const GradChunks chunks(Kernels::kGradChunkBytes, p, grad_chunk_width(p));
    Tensor dgates = detail::zeros_if(p.masked(), {chunks.steps, d.B, p.dgates_width}, p.x);  // see lstm_backward
    Tensor dgates_step = at::empty({d.B, p.G * d.H}, opts);  // see lstm_backward
    p.dh = at::zeros({d.B, d.H}, opts);
    const typename Kernels::Gemm gemm_hh(p.w_hh, /*transpose=*/false, d.B, d.T);
    const bool ln = p.ln.on();
    BackwardPlan::HiddenNorm hn;
    Tensor h_gmeans, ih_stats, d_ln_ih;
    const Tensor bias = ln ? p.input_bias() : Tensor();
    if (ln) {  // see lstm_backward
      hn = p.hidden_norm(chunks.steps);
      h_gmeans = at::empty({d.B, 2}, opts.dtype(at::toOpMathType(p.x.scalar_type())));
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "gru_backward", [&] {
      if (ln) {
        hn.stats = position_row_stats<Kernels, scalar_t>(p, p.hidden_raw());
        ih_stats = position_row_stats<Kernels, scalar_t>(p, p.input_raw());
      }
      GruBackwardStep<scalar_t> a{};
      p.fill_common(a, d.H);
      a.dy = p.dy.const_data_ptr<scalar_t>();
      a.dh_n = p.dh_n.const_data_ptr<scalar_t>();
      a.saved = p.saved.const_data_ptr<scalar_t>();
      a.h0 = p.h0.const_data_ptr<scalar_t>();
      a.y = p.y.const_data_ptr<scalar_t>();
      a.dh = p.dh.mutable_data_ptr<scalar_t>();
      a.dgates = dgates.mutable_data_ptr<scalar_t>();
      a.dgates_step = dgates_step.mutable_data_ptr<scalar_t>();
      a.zoneout_h = Regularisers::keep<scalar_t>(p.reg.zoneout_h);
      Tensor tmp;
      LnBackwardStep<scalar_t> hb{};
      if (ln) {
        saved_gates_norm<scalar_t>(p, a.ln, hn, ih_stats, bias);
        hb = hidden_norm_backward_step<scalar_t>(p, hn, dgates_step, h_gmeans);
      }
      for (int64_t s = d.T - 1; s >= 0; --s) {
        const int64_t n = p.sched.rows(s, d.B);
        chunks.enter(s, a, dgates);
        a.s = s;
        a.rows = n;
        // dh_{s-1} = z * dh_s (+ zoneout's z_h dh_s) + rec_mask * ([dr, dz, dn*r] W_hh), with layer
        // norm the grads of those products through the norm
        if (!ln) {
          Kernels::template run<GruBackwardPoint>(a);
          hidden_grad(p, gemm_hh, dgates_step, n, true, tmp);
          if (chunks.ends(s)) p.fold_gate_grads(dgates.narrow(0, 0, chunks.length(s)), chunks.t0(s));
          continue;
        }
        const int64_t lo = chunks.lo(s);
        const auto [hb_means, hb_elems] = hidden_norm_backward_at(hb, s, n, lo);
        run_stages<Kernels>(n, stage<GruBackwardPoint>(a), stage<LnGradMeansPoint>(hb_means),
                            stage<LnInputGradPoint>(hb_elems));
        hidden_grad(p, gemm_hh, hn.draw[s - lo], n, true, tmp);
        if (chunks.ends(s)) {
          const int64_t len = chunks.length(s);
          p.fold_layer_norm_chunk(dgates.narrow(0, 0, len), chunks.t0(s), ih_stats, d_ln_ih, hn, lo);
        }
      }
    });
    if (ln) {
      p.finish_layer_norm(d_ln_ih, hn);
    } else {
      p.fold_first_step(dgates_step);
    }
    PathLog::record(p.op, kPathName, chunks.count());
  }
};

}  // namespace fastrnn
