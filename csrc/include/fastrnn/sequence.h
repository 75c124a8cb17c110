// The sequence loops behind every op: input checks, the big GEMMs, and per step one recurrent
// GEMM plus one fused pointwise launch. Written once for every device: GEMMs go through ATen
// (MKL/oneDNN on CPU, cuBLAS on CUDA, on the current stream), and `Launch` is a policy with
//   using Gemm = ...;  // the per-step recurrent GEMM (AtenGemm, or the CPU's packed version)
//   static constexpr int64_t kGradChunkBytes = ...;  // backward gate grads in chunks (GradChunks)
//   template <typename scalar_t> static void lstm_forward(const LstmForwardStep<scalar_t>&);
//   ... lstm_backward, lstm_proj_commit, lstm_proj_backward, gru_forward, gru_backward likewise,
// each running the matching *_point function of cell_math.h over a step's rows x H pairs, and
//   template <typename scalar_t> static bool lstm_single_step(const LstmForwardStep<scalar_t>&,
//                                                             const SingleStepProducts<scalar_t>&);
//   ... gru_single_step likewise: a whole one-step sequence fused, or false to take the general path.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "fastrnn/cell_math.h"

namespace fastrnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The two products of a single step (T = 1 and no projection, i.e. a cell call), for a Launch
// that computes them together with the pointwise in one pass instead of two GEMVs and a launch:
//   xproj[b, m] = x[b] . w_ih[m] + b_ih[m] + (m < b_hh_rows ? b_hh[m] : 0)   (into the step's xproj)
//   hproj[r, m] = h0[order[r]] . w_hh[m]                                        (into its hproj)
// for m < G*H. h0 is read only: the step writes the new state into its own buffers.
template <typename scalar_t>
struct SingleStepProducts {
  const scalar_t* x;     // [B, I]   the step's input, by batch entry
  const scalar_t* h0;    // [B, H]   the previous hidden state, by batch entry
  const scalar_t* w_ih;  // [G*H, I] row-major
  const scalar_t* w_hh;  // [G*H, H] row-major
  const scalar_t* b_ih;  // [G*H] or nullptr
  const scalar_t* b_hh;  // [G*H] or nullptr; only its first b_hh_rows entries join xproj (GRU
                         //        keeps b_hn apart)
  int64_t b_hh_rows;
  int64_t I, G;
};

namespace detail {

inline void check_same(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " to have dtype ",
              x.scalar_type(), " (the dtype of x), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on device ", x.device(),
              " (the device of x), got ", t.device());
}

inline void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": expected ", name, " of shape ", want, ", got ", t.sizes());
}

struct Dims {
  int64_t T, B, I, H;
  int64_t P;  // width of the hidden state h: H, or proj_size with a projection
};

// Validates x [T, B, I], w_ih [G*H, I], w_hh [G*H, P], biases [G*H] and the optional projection
// w_hr [P, H] (P = H without one); returns the sizes.
inline Dims check_layer(const char* op, int64_t G, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr = std::nullopt) {
  TORCH_CHECK(x.dim() == 3, op, ": expected x of shape [T, B, I] (3-D), got ", x.dim(),
              "-D with shape ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), op, ": expected a floating point x, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1, op, ": expected T >= 1 and B >= 1, got x of shape ",
              x.sizes());
  const char* state = w_hr.has_value() ? "P" : "H";
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % G == 0 && w_hh.size(0) >= G, op, ": expected w_hh of shape [",
              G, "*H, ", state, "], got ", w_hh.sizes());
  const int64_t H = w_hh.size(0) / G;
  int64_t P = H;
  if (w_hr.has_value()) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H && w_hr->size(0) >= 1, op,
                ": expected w_hr of shape [P, H=", H, "], got ", w_hr->sizes());
    P = w_hr->size(0);
    check_same(op, "w_hr", *w_hr, x);
  }
  const Dims d{x.size(0), x.size(1), x.size(2), H, P};
  check_shape(op, "w_hh", w_hh, {G * H, P});
  check_shape(op, "w_ih", w_ih, {G * H, d.I});
  check_same(op, "w_ih", w_ih, x);
  check_same(op, "w_hh", w_hh, x);
  for (const auto& [name, bias] : {std::pair{"b_ih", &b_ih}, std::pair{"b_hh", &b_hh}}) {
    if (bias->has_value()) {
      check_shape(op, name, **bias, {G * H});
      check_same(op, name, **bias, x);
    }
  }
  return d;
}

inline void check_state(const char* op, const char* name, const Tensor& t, const Tensor& x, int64_t B,
                        int64_t width) {
  check_shape(op, name, t, {B, width});
  check_same(op, name, t, x);
}

// Lengths: int64 [B] with every value in [1, T], on the CPU or on x's device.
struct CheckedLengths {
  Tensor device;  // on x's device for the kernels; undefined when no lengths were given
  Tensor host;    // the same on the CPU when the caller gave them there (free to read), else undefined
};

// CPU lengths are checked here on the host; lengths already on a GPU are checked asynchronously
// (no host sync), and the kernels clamp them so that nothing is read out of bounds even before
// that check reports.
inline CheckedLengths check_lengths(const char* op, const OptTensor& lengths, const Tensor& x, const Dims& d) {
  if (!lengths.has_value()) return {};
  const Tensor& l = *lengths;
  TORCH_CHECK_TYPE(l.scalar_type() == at::kLong, op, ": expected lengths of dtype int64, got ",
                   l.scalar_type());
  TORCH_CHECK_VALUE(l.dim() == 1 && l.size(0) == d.B, op, ": expected lengths of shape [", d.B,
                    "] (one per batch entry), got ", l.sizes());
  TORCH_CHECK(l.device().is_cpu() || l.device() == x.device(), op,
              ": expected lengths on the CPU or on ", x.device(), ", got ", l.device());
  if (l.device().is_cpu()) {
    const Tensor lc = l.contiguous();
    const int64_t* p = lc.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < d.B; ++b) {
      TORCH_CHECK_VALUE(p[b] >= 1 && p[b] <= d.T, op, ": expected every length in [1, T=", d.T,
                        "], got lengths[", b, "] = ", p[b]);
    }
    return {lc.to(x.device(), /*non_blocking=*/true), lc};
  }
  at::_assert_async(at::logical_and(l >= 1, l <= d.T).all(),
                    "fastrnn: every length must lie in [1, T]");
  return {l.contiguous(), Tensor()};
}

// Which rows each step runs. With lengths on the host, rows are entries sorted by length
// (longest first) and step s runs only the active prefix; otherwise every step runs all B rows
// in batch order (device lengths would need a sync to count).
struct Schedule {
  Tensor order;                 // [B] int64 on x's device: row -> batch entry; undefined = identity
  std::vector<int64_t> active;  // [T] rows active at each iteration; empty = all B

  Schedule(const CheckedLengths& l, const Dims& d, const Tensor& x) {
    if (!l.host.defined()) return;
    const Tensor sorted_order = std::get<1>(at::sort(l.host, /*stable=*/true, /*dim=*/0, /*descending=*/true));
    const int64_t* len = l.host.const_data_ptr<int64_t>();
    active.assign(d.T, 0);
    for (int64_t b = 0; b < d.B; ++b) active[len[b] - 1] += 1;  // entries finishing after step L-1
    for (int64_t s = d.T - 2; s >= 0; --s) active[s] += active[s + 1];
    order = sorted_order.to(x.device(), /*non_blocking=*/true);
  }
  int64_t rows(int64_t s, int64_t B) const { return active.empty() ? B : active[s]; }
  const int64_t* order_ptr() const { return order.defined() ? order.const_data_ptr<int64_t>() : nullptr; }
  // [B, ...] in batch order -> by row (a fresh contiguous tensor either way).
  Tensor to_rows(const Tensor& t) const { return order.defined() ? t.index_select(0, order) : t.contiguous().clone(); }
  // By row -> batch order.
  Tensor to_batch(const Tensor& t) const {
    return order.defined() ? at::empty_like(t).index_copy_(0, order, t) : t;
  }
};

template <typename Step>
void set_common(Step& a, const CheckedLengths& l, const Schedule& sched, const Dims& d, int64_t width, bool reverse) {
  a.lengths = l.device.defined() ? l.device.const_data_ptr<int64_t>() : nullptr;
  a.order = sched.order_ptr();
  a.s = 0;
  a.rows = d.B;
  a.T = d.T;
  a.B = d.B;
  a.H = width;
  a.reverse = reverse;
}

inline Tensor zeros_if(bool zero, at::IntArrayRef size, const Tensor& like) {
  return zero ? at::zeros(size, like.options()) : at::empty(size, like.options());
}

// y holds zeros at padded positions; nothing else must be zeroed.
inline Tensor alloc_outputs(const CheckedLengths& l, const Dims& d, const Tensor& x) {
  return zeros_if(l.device.defined(), {d.T, d.B, d.P}, x);
}

inline Tensor first_rows(const Tensor& t, int64_t n) { return t.narrow(0, 0, n); }

// Backward inputs shared by both cells: dy and y [T, B, P], and the activations the forward saved.
inline void check_backward(const char* op, const Tensor& dy, const Tensor& y, const Tensor& ws, const Tensor& x,
                           const Dims& d, int64_t ws_width) {
  check_shape(op, "dy", dy, {d.T, d.B, d.P});
  check_same(op, "dy", dy, x);
  check_shape(op, "y", y, {d.T, d.B, d.P});
  TORCH_CHECK(ws.numel() != 0, op, ": the forward saved no activations (it ran with save=False, ",
              "e.g. under torch.no_grad()), so there is nothing to differentiate");
  check_shape(op, "ws", ws, {d.T, d.B, ws_width});
}

// For the recurrent weight grad: the gate grads dg [n, B, W] of the steps [t0, t0 + n) that are
// not an entry's first, [m*B, W], next to the h_prev they multiply, [m*B, P] — the neighbouring
// output in time (padded neighbours are zero and meet zero grads). The first steps' h_prev is
// h0, handled apart. Undefined tensors when no step of the range has a previous output.
inline std::pair<Tensor, Tensor> grads_and_prev_outputs(const Tensor& dg, const Tensor& y, int64_t t0, bool reverse) {
  const int64_t T = y.size(0), n = dg.size(0), B = y.size(1);
  const int64_t first = reverse ? t0 : std::max<int64_t>(t0, 1), end = reverse ? std::min(t0 + n, T - 1) : t0 + n;
  const int64_t m = end - first;
  if (m <= 0) return {};
  return {dg.narrow(0, first - t0, m).reshape({m * B, dg.size(2)}),
          y.narrow(0, reverse ? first + 1 : first - 1, m).reshape({m * B, y.size(2)})};
}

// The backward's gate grads reach dx and the parameter grads only through sums over steps, so a
// Launch may keep just a chunk of steps of them (Launch::kGradChunkBytes; 0 = all T steps) and
// fold each chunk into those sums as soon as it is complete. On the CPU a whole [T, B, G*H]
// buffer is tens of MB of fresh pages from the OS at every call: page faults took ~15% of the
// CPU time of a charrnn-sized fwd+bwd. Chunks are runs of iterations; they are runs of time
// indices when every entry reads the same time at an iteration — forward (t = s), or reverse
// without lengths (t = T-1-s) — so reverse with lengths keeps all T steps. Half and bfloat16
// keep all steps too: summing chunk results in those types would round once per chunk.
struct GradChunks {
  static constexpr int64_t kMinRows = 512;  // rows of the chunk GEMMs, for their efficiency
  int64_t steps, T;
  bool reverse, masked;
  GradChunks(int64_t budget_bytes, const Dims& d, bool reverse, bool masked, int64_t width, const Tensor& x)
      : steps(d.T), T(d.T), reverse(reverse), masked(masked) {
    if (budget_bytes > 0 && !(reverse && masked) && !at::isReducedFloatingType(x.scalar_type())) {
      const int64_t min_steps = std::min(d.T, (kMinRows + d.B - 1) / d.B);
      steps = std::clamp(budget_bytes / (d.B * width * int64_t(x.element_size())), min_steps, d.T);
    }
  }
  int64_t lo(int64_t s) const { return s / steps * steps; }  // the chunk's last iteration
  int64_t length(int64_t s) const { return std::min(steps, T - lo(s)); }
  bool starts(int64_t s) const { return s == lo(s) + length(s) - 1; }  // iterations run downwards
  bool ends(int64_t s) const { return s == lo(s); }
  int64_t t0(int64_t s) const { return reverse ? T - lo(s) - length(s) : lo(s); }  // its first time index
  // Before iteration s: where a new chunk starts, point the step at it and clear the buffer of
  // the previous chunk's grads where padded positions will not overwrite them.
  template <typename Step>
  void enter(int64_t s, Step& a, Tensor& buffer) const {
    if (!starts(s)) return;
    a.dgates_t0 = t0(s);
    if (masked && s != T - 1) buffer.zero_();
  }
};

// The input projection of all steps, x W_ih^T + bias, as one GEMM. When activations are saved it
// is written straight into the gate columns of ws ([T, B, width]), where each step then
// overwrites its pre-activations with the activations: no separate [T, B, G*H] buffer.
// projection_buffer returns that [T*B, G*H] matrix (row stride = width when it lives in ws);
// project_input fills it.
inline Tensor projection_buffer(const Dims& d, int64_t gates, const Tensor& ws, int64_t width, const Tensor& x) {
  return ws.numel() != 0 ? ws.view({d.T * d.B, width}).narrow(1, 0, gates) : at::empty({d.T * d.B, gates}, x.options());
}

inline void project_input(Tensor out, const Tensor& x, const Tensor& w_ih, const Tensor& bias) {
  const Tensor x2d = x.view({x.size(0) * x.size(1), x.size(2)});
  if (bias.defined()) {
    at::addmm_out(out, bias, x2d, w_ih.t());
  } else {
    at::mm_out(out, x2d, w_ih.t());
  }
}

// The operands of a single step (T = 1, no projection: cell calls) for backends that compute
// both products with the pointwise in one pass; see SingleStepProducts.
template <typename scalar_t>
SingleStepProducts<scalar_t> single_step_products(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                  const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh,
                                                  int64_t b_hh_rows) {
  SingleStepProducts<scalar_t> p{};
  p.x = x.const_data_ptr<scalar_t>();
  p.h0 = h0.const_data_ptr<scalar_t>();
  p.w_ih = w_ih.const_data_ptr<scalar_t>();
  p.w_hh = w_hh.const_data_ptr<scalar_t>();
  p.b_ih = b_ih.defined() ? b_ih.const_data_ptr<scalar_t>() : nullptr;
  p.b_hh = b_hh.defined() ? b_hh.const_data_ptr<scalar_t>() : nullptr;
  p.b_hh_rows = b_hh_rows;
  p.I = x.size(2);
  p.G = w_ih.size(0) / w_hh.size(1);
  return p;
}

inline Tensor contiguous_or_undefined(const OptTensor& t) { return t.has_value() ? t->contiguous() : Tensor(); }

}  // namespace detail

// The recurrent GEMMs: out[:n] (+)= a[:n] @ op(w), op(w) = w^T when `transpose`, into a
// preallocated buffer (no allocation per step). w is fixed for the whole sequence, so a backend
// may prepare it once per call: Launch::Gemm is this plain ATen version on CUDA, and on the CPU
// a version that packs w for MKL once instead of at every step (cpu/packed_gemm.h).
struct AtenGemm {
  Tensor wop;  // op(w), a view
  // max_rows: the most rows a call will pass; uses: how many calls the sequence will make.
  AtenGemm(const Tensor& w, bool transpose, int64_t /*max_rows*/, int64_t /*uses*/) : wop(transpose ? w.t() : w) {}
  void operator()(const Tensor& out, const Tensor& a, int64_t n, bool accumulate) const {
    Tensor o = detail::first_rows(out, n);
    if (accumulate) {
      o.addmm_(detail::first_rows(a, n), wop);
    } else {
      at::mm_out(o, detail::first_rows(a, n), wop);
    }
  }
};

namespace detail {

}  // namespace detail

// ---------------------------------------------------------------------------------------------

template <class Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_, const Tensor& h0, const Tensor& c0, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr_, const OptTensor& lengths_,
    bool reverse, bool save) {
  constexpr const char* op = "fastrnn::lstm_forward";
  const auto d = detail::check_layer(op, 4, x_, w_ih_, w_hh_, b_ih, b_hh, w_hr_);
  detail::check_state(op, "h0", h0, x_, d.B, d.P);
  detail::check_state(op, "c0", c0, x_, d.B, d.H);
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const auto lengths = detail::check_lengths(op, lengths_, x_, d);
  const detail::Schedule sched(lengths, d, x_);
  const Tensor x = x_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const bool proj = w_hr_.has_value();

  Tensor y = detail::alloc_outputs(lengths, d, x);
  Tensor h = sched.to_rows(h0), c = sched.to_rows(c0);
  // Padded positions of ws are never written by the steps; zero them so every output is
  // deterministic (and hfull, read there by the projection's weight grad times a zero grad, is
  // finite).
  const int64_t width = lstm_ws_width(d.H, proj);
  Tensor ws = save ? detail::zeros_if(lengths.device.defined(), {d.T, d.B, width}, x) : at::empty({0}, x.options());
  const Tensor xproj = detail::projection_buffer(d, 4 * d.H, ws, width, x);
  Tensor hproj = at::empty({d.B, 4 * d.H}, x.options());
  Tensor hfull, hnew;
  std::optional<typename Launch::Gemm> gemm_hr;
  if (proj) {
    hfull = at::zeros({d.B, d.H}, x.options());
    hnew = at::empty({d.B, d.P}, x.options());
    gemm_hr.emplace(w_hr_->contiguous(), /*transpose=*/true, d.B, d.T);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_forward", [&] {
    LstmForwardStep<scalar_t> a{};
    detail::set_common(a, lengths, sched, d, d.H, reverse);
    a.xproj = xproj.data_ptr<scalar_t>();
    a.xstride = xproj.stride(0);
    a.hproj = hproj.const_data_ptr<scalar_t>();
    a.h = h.mutable_data_ptr<scalar_t>();
    a.c = c.mutable_data_ptr<scalar_t>();
    a.y = y.mutable_data_ptr<scalar_t>();
    a.ws = save ? ws.mutable_data_ptr<scalar_t>() : nullptr;
    a.hfull = proj ? hfull.mutable_data_ptr<scalar_t>() : nullptr;
    const Tensor bi = detail::contiguous_or_undefined(b_ih), bh = detail::contiguous_or_undefined(b_hh);
    if (d.T == 1 && !proj) {
      const Tensor h_prev = h0.contiguous();
      if (Launch::template lstm_single_step<scalar_t>(
              a, detail::single_step_products<scalar_t>(x, h_prev, w_ih, w_hh, bi, bh, 4 * d.H))) {
        return;
      }
    }
    // Both biases fold into the one input GEMM.
    detail::project_input(xproj, x, w_ih, bi.defined() && bh.defined() ? bi + bh : (bi.defined() ? bi : bh));
    const typename Launch::Gemm gemm_hh(w_hh, /*transpose=*/true, d.B, d.T);
    LstmProjCommitStep<scalar_t> pc{};
    if (proj) {
      detail::set_common(pc, lengths, sched, d, d.P, reverse);
      pc.hnew = hnew.const_data_ptr<scalar_t>();
      pc.h = a.h;
      pc.y = a.y;
    }
    for (int64_t s = 0; s < d.T; ++s) {
      const int64_t n = sched.rows(s, d.B);
      gemm_hh(hproj, h, n, false);
      a.s = s;
      a.rows = n;
      Launch::template lstm_forward<scalar_t>(a);
      if (proj) {
        (*gemm_hr)(hnew, hfull, n, false);
        pc.s = s;
        pc.rows = n;
        Launch::template lstm_proj_commit<scalar_t>(pc);
      }
    }
  });
  return {y, sched.to_batch(h), sched.to_batch(c), ws};
}

template <class Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& dy_, const Tensor& dh_n_, const Tensor& dc_n_, const Tensor& x_, const Tensor& h0_,
    const Tensor& c0_, const Tensor& w_ih_, const Tensor& w_hh_, const OptTensor& w_hr_, const Tensor& y_,
    const Tensor& ws_, const OptTensor& lengths_, bool reverse, bool has_bias) {
  constexpr const char* op = "fastrnn::lstm_backward";
  const auto d = detail::check_layer(op, 4, x_, w_ih_, w_hh_, std::nullopt, std::nullopt, w_hr_);
  const bool proj = w_hr_.has_value();
  detail::check_state(op, "h0", h0_, x_, d.B, d.P);
  detail::check_state(op, "c0", c0_, x_, d.B, d.H);
  detail::check_state(op, "dh_n", dh_n_, x_, d.B, d.P);
  detail::check_state(op, "dc_n", dc_n_, x_, d.B, d.H);
  detail::check_backward(op, dy_, y_, ws_, x_, d, lstm_ws_width(d.H, proj));
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const auto lengths = detail::check_lengths(op, lengths_, x_, d);
  const detail::Schedule sched(lengths, d, x_);
  const Tensor dy = dy_.contiguous(), dh_n = dh_n_.contiguous(), dc_n = dc_n_.contiguous();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), y = y_.contiguous(), ws = ws_.contiguous();
  const bool masked = lengths.device.defined();

  // Padded positions are never written by the steps; their grads must read as zero.
  const detail::GradChunks chunks(Launch::kGradChunkBytes, d, reverse, masked, 4 * d.H, x);
  Tensor dgates = detail::zeros_if(masked, {chunks.steps, d.B, 4 * d.H}, x);
  Tensor dx = at::empty({d.T, d.B, d.I}, x.options());
  Tensor dw_ih = at::zeros({4 * d.H, d.I}, x.options()), dw_hh = at::zeros({4 * d.H, d.P}, x.options());
  Tensor db = has_bias ? at::zeros({4 * d.H}, x.options()) : at::empty({0}, x.options());
  // Folds the gate grads of the steps [t0, t0 + n), held in dgates, into dx and the sums.
  const auto add_chunk = [&](int64_t t0, int64_t n) {
    const Tensor dg = dgates.narrow(0, 0, n), dg2d = dg.view({n * d.B, 4 * d.H});
    Tensor dx_chunk = dx.narrow(0, t0, n).view({n * d.B, d.I});
    at::mm_out(dx_chunk, dg2d, w_ih);
    dw_ih.addmm_(dg2d.t(), x.narrow(0, t0, n).view({n * d.B, d.I}));
    if (has_bias) db.add_(dg2d.sum(0));
    const auto [dgp, hp] = detail::grads_and_prev_outputs(dg, y, t0, reverse);
    if (dgp.defined()) dw_hh.addmm_(dgp.t(), hp);
  };
  Tensor dgates_step = at::empty({d.B, 4 * d.H}, x.options());
  Tensor dh = at::zeros({d.B, d.P}, x.options());
  Tensor dc = at::zeros({d.B, d.H}, x.options());
  const typename Launch::Gemm gemm_hh(w_hh, /*transpose=*/false, d.B, d.T);
  Tensor dp, dp_step, dh_full, w_hr;
  std::optional<typename Launch::Gemm> gemm_hr;
  if (proj) {
    w_hr = w_hr_->contiguous();
    gemm_hr.emplace(w_hr, /*transpose=*/false, d.B, d.T);
    dp = detail::zeros_if(masked, {d.T, d.B, d.P}, x);
    dp_step = at::empty({d.B, d.P}, x.options());
    dh_full = at::empty({d.B, d.H}, x.options());
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_backward", [&] {
    LstmBackwardStep<scalar_t> a{};
    detail::set_common(a, lengths, sched, d, d.H, reverse);
    a.dy = dy.const_data_ptr<scalar_t>();
    a.dh_n = dh_n.const_data_ptr<scalar_t>();
    a.dc_n = dc_n.const_data_ptr<scalar_t>();
    a.ws = ws.const_data_ptr<scalar_t>();
    a.c0 = c0.const_data_ptr<scalar_t>();
    a.dh = dh.const_data_ptr<scalar_t>();
    a.dh_full = proj ? dh_full.const_data_ptr<scalar_t>() : nullptr;
    a.dc = dc.mutable_data_ptr<scalar_t>();
    a.dgates = dgates.mutable_data_ptr<scalar_t>();
    a.dgates_step = dgates_step.mutable_data_ptr<scalar_t>();
    LstmProjBackwardStep<scalar_t> pb{};
    if (proj) {
      detail::set_common(pb, lengths, sched, d, d.P, reverse);
      pb.dy = a.dy;
      pb.dh_n = a.dh_n;
      pb.dh = a.dh;
      pb.dp = dp.mutable_data_ptr<scalar_t>();
      pb.dp_step = dp_step.mutable_data_ptr<scalar_t>();
    }
    for (int64_t s = d.T - 1; s >= 0; --s) {
      const int64_t n = sched.rows(s, d.B);
      chunks.enter(s, a, dgates);
      if (proj) {
        pb.s = s;
        pb.rows = n;
        Launch::template lstm_proj_backward<scalar_t>(pb);
        (*gemm_hr)(dh_full, dp_step, n, false);
      }
      a.s = s;
      a.rows = n;
      Launch::template lstm_backward<scalar_t>(a);
      gemm_hh(dh, dgates_step, n, false);
      if (chunks.ends(s)) add_chunk(chunks.t0(s), chunks.length(s));
    }
  });

  // Iteration 0 is every entry's first step (all rows active), whose h_prev is h0.
  dw_hh.addmm_(dgates_step.t(), sched.to_rows(h0));
  Tensor db_ih = db;
  Tensor db_hh = db.clone();
  Tensor dw_hr = proj ? at::mm(dp.view({d.T * d.B, d.P}).t(),
                               ws.view({d.T * d.B, 6 * d.H}).narrow(1, 5 * d.H, d.H))
                      : at::empty({0}, x.options());
  return {dx, sched.to_batch(dh), sched.to_batch(dc), dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

// ---------------------------------------------------------------------------------------------

template <class Launch>
std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_, const Tensor& h0, const Tensor& w_ih_, const Tensor& w_hh_,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths_, bool reverse, bool save) {
  constexpr const char* op = "fastrnn::gru_forward";
  const auto d = detail::check_layer(op, 3, x_, w_ih_, w_hh_, b_ih, b_hh);
  detail::check_state(op, "h0", h0, x_, d.B, d.H);
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const auto lengths = detail::check_lengths(op, lengths_, x_, d);
  const detail::Schedule sched(lengths, d, x_);
  const Tensor x = x_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();

  // b_hn stays apart from the input GEMM, inside r * (W_hn h + b_hn).
  const Tensor b_hn = b_hh.has_value() ? b_hh->narrow(0, 2 * d.H, d.H).contiguous() : Tensor();
  Tensor y = detail::alloc_outputs(lengths, d, x);
  Tensor h = sched.to_rows(h0);
  Tensor ws = save ? detail::zeros_if(lengths.device.defined(), {d.T, d.B, 4 * d.H}, x)  // see lstm_forward
                   : at::empty({0}, x.options());
  const Tensor xproj = detail::projection_buffer(d, 3 * d.H, ws, 4 * d.H, x);
  Tensor hproj = at::empty({d.B, 3 * d.H}, x.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gru_forward", [&] {
    GruForwardStep<scalar_t> a{};
    detail::set_common(a, lengths, sched, d, d.H, reverse);
    a.xproj = xproj.data_ptr<scalar_t>();
    a.xstride = xproj.stride(0);
    a.hproj = hproj.const_data_ptr<scalar_t>();
    a.h = h.mutable_data_ptr<scalar_t>();
    a.y = y.mutable_data_ptr<scalar_t>();
    a.ws = save ? ws.mutable_data_ptr<scalar_t>() : nullptr;
    a.b_hn = b_hn.defined() ? b_hn.const_data_ptr<scalar_t>() : nullptr;
    const Tensor bi = detail::contiguous_or_undefined(b_ih), bh = detail::contiguous_or_undefined(b_hh);
    if (d.T == 1) {
      const Tensor h_prev = h0.contiguous();
      if (Launch::template gru_single_step<scalar_t>(
              a, detail::single_step_products<scalar_t>(x, h_prev, w_ih, w_hh, bi, bh, 2 * d.H))) {
        return;
      }
    }
    // b_hr and b_hz fold into the input GEMM.
    Tensor bias = bi;
    if (bh.defined()) {
      bias = at::cat({bh.narrow(0, 0, 2 * d.H), at::zeros({d.H}, bh.options())});
      if (bi.defined()) bias = bias + bi;
    }
    detail::project_input(xproj, x, w_ih, bias);
    const typename Launch::Gemm gemm_hh(w_hh, /*transpose=*/true, d.B, d.T);
    for (int64_t s = 0; s < d.T; ++s) {
      const int64_t n = sched.rows(s, d.B);
      gemm_hh(hproj, h, n, false);
      a.s = s;
      a.rows = n;
      Launch::template gru_forward<scalar_t>(a);
    }
  });
  return {y, sched.to_batch(h), ws};
}

template <class Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& dy_, const Tensor& dh_n_, const Tensor& x_, const Tensor& h0_, const Tensor& w_ih_,
    const Tensor& w_hh_, const Tensor& y_, const Tensor& ws_, const OptTensor& lengths_, bool reverse,
    bool has_bias) {
  constexpr const char* op = "fastrnn::gru_backward";
  const auto d = detail::check_layer(op, 3, x_, w_ih_, w_hh_, std::nullopt, std::nullopt);
  detail::check_state(op, "h0", h0_, x_, d.B, d.H);
  detail::check_state(op, "dh_n", dh_n_, x_, d.B, d.H);
  detail::check_backward(op, dy_, y_, ws_, x_, d, 4 * d.H);
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const auto lengths = detail::check_lengths(op, lengths_, x_, d);
  const detail::Schedule sched(lengths, d, x_);
  const Tensor dy = dy_.contiguous(), dh_n = dh_n_.contiguous(), x = x_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), y = y_.contiguous(), ws = ws_.contiguous();

  const bool masked = lengths.device.defined();
  const int64_t H = d.H;
  const detail::GradChunks chunks(Launch::kGradChunkBytes, d, reverse, masked, 4 * H, x);
  Tensor dgates = detail::zeros_if(masked, {chunks.steps, d.B, 4 * H}, x);  // see lstm_backward
  Tensor dgates_step = at::empty({d.B, 3 * d.H}, x.options());
  Tensor dx = at::empty({d.T, d.B, d.I}, x.options());
  Tensor dw_ih = at::zeros({3 * H, d.I}, x.options()), dw_hh = at::zeros({3 * H, H}, x.options());
  Tensor sums = has_bias ? at::zeros({4 * H}, x.options()) : Tensor();
  // dgates columns: [dr, dz, dn] is the input side, [dr, dz, dn*r] (cols 0:2H and 3H:4H) the hidden side.
  const auto add_chunk = [&](int64_t t0, int64_t n) {
    const Tensor dg = dgates.narrow(0, 0, n), dg2d = dg.view({n * d.B, 4 * H}), dgx = dg2d.narrow(1, 0, 3 * H);
    Tensor dx_chunk = dx.narrow(0, t0, n).view({n * d.B, d.I});
    at::mm_out(dx_chunk, dgx, w_ih);
    dw_ih.addmm_(dgx.t(), x.narrow(0, t0, n).view({n * d.B, d.I}));
    if (has_bias) sums.add_(dg2d.sum(0));
    const auto [dgp, hp] = detail::grads_and_prev_outputs(dg, y, t0, reverse);
    if (dgp.defined()) {
      dw_hh.narrow(0, 0, 2 * H).addmm_(dgp.narrow(1, 0, 2 * H).t(), hp);
      dw_hh.narrow(0, 2 * H, H).addmm_(dgp.narrow(1, 3 * H, H).t(), hp);
    }
  };
  Tensor dh = at::zeros({d.B, d.H}, x.options());
  const typename Launch::Gemm gemm_hh(w_hh, /*transpose=*/false, d.B, d.T);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gru_backward", [&] {
    GruBackwardStep<scalar_t> a{};
    detail::set_common(a, lengths, sched, d, d.H, reverse);
    a.dy = dy.const_data_ptr<scalar_t>();
    a.dh_n = dh_n.const_data_ptr<scalar_t>();
    a.ws = ws.const_data_ptr<scalar_t>();
    a.h0 = h0.const_data_ptr<scalar_t>();
    a.y = y.const_data_ptr<scalar_t>();
    a.dh = dh.mutable_data_ptr<scalar_t>();
    a.dgates = dgates.mutable_data_ptr<scalar_t>();
    a.dgates_step = dgates_step.mutable_data_ptr<scalar_t>();
    for (int64_t s = d.T - 1; s >= 0; --s) {
      const int64_t n = sched.rows(s, d.B);
      chunks.enter(s, a, dgates);
      a.s = s;
      a.rows = n;
      Launch::template gru_backward<scalar_t>(a);
      // dh_{s-1} = z * dh_s + [dr, dz, dn*r] W_hh
      gemm_hh(dh, dgates_step, n, true);
      if (chunks.ends(s)) add_chunk(chunks.t0(s), chunks.length(s));
    }
  });

  dw_hh.addmm_(dgates_step.t(), sched.to_rows(h0));  // iteration 0: h_prev = h0 (see lstm_backward)
  Tensor db_ih, db_hh;
  if (has_bias) {
    db_ih = sums.narrow(0, 0, 3 * H).clone();
    db_hh = at::cat({sums.narrow(0, 0, 2 * H), sums.narrow(0, 3 * H, H)});
  } else {
    db_ih = at::empty({0}, x.options());
    db_hh = at::empty({0}, x.options());
  }
  return {dx, sched.to_batch(dh), dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace fastrnn
