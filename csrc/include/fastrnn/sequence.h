// The sequence loops behind every op: input checks, the big GEMMs, and per step one recurrent
// GEMM plus one fused pointwise launch. Written once for every device: GEMMs go through ATen
// (MKL/oneDNN on CPU, cuBLAS on CUDA, on the current stream), and the pointwise step is handed
// to `Launch`, a policy with static members
//   template <typename scalar_t> static void lstm_forward(const LstmForwardStep<scalar_t>&);
//   ... lstm_backward, gru_forward, gru_backward likewise,
// each running the matching *_point function of cell_math.h over all B x H pairs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "fastrnn/cell_math.h"

namespace fastrnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

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

// Lengths: int64 [B] with every value in [1, T], on the CPU or on x's device. Returns them on
// x's device, or an undefined tensor when absent. CPU lengths are checked here on the host;
// lengths already on a GPU are checked asynchronously (no host sync), and the kernels clamp
// them so that nothing is read out of bounds even before that check reports.
inline Tensor check_lengths(const char* op, const OptTensor& lengths, const Tensor& x, const Dims& d) {
  if (!lengths.has_value()) return Tensor();
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
    return lc.to(x.device(), /*non_blocking=*/true);
  }
  at::_assert_async(at::logical_and(l >= 1, l <= d.T).all(),
                    "fastrnn: every length must lie in [1, T]");
  return l.contiguous();
}

inline const int64_t* lengths_ptr(const Tensor& l) {
  return l.defined() ? l.const_data_ptr<int64_t>() : nullptr;
}

inline Tensor zeros_if(bool zero, at::IntArrayRef size, const Tensor& like) {
  return zero ? at::zeros(size, like.options()) : at::empty(size, like.options());
}

// y holds zeros at padded positions; nothing else must be zeroed.
inline Tensor alloc_outputs(const Tensor& lengths, const Dims& d, const Tensor& x) {
  return zeros_if(lengths.defined(), {d.T, d.B, d.P}, x);
}

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
  const Tensor lengths = detail::check_lengths(op, lengths_, x_, d);
  const Tensor x = x_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const bool proj = w_hr_.has_value();

  // Both biases fold into the one input GEMM.
  const Tensor x2d = x.view({d.T * d.B, d.I});
  Tensor xproj;
  if (b_ih.has_value() || b_hh.has_value()) {
    const Tensor bias = b_ih.has_value() && b_hh.has_value() ? *b_ih + *b_hh : (b_ih.has_value() ? *b_ih : *b_hh);
    xproj = at::addmm(bias, x2d, w_ih.t());
  } else {
    xproj = at::mm(x2d, w_ih.t());
  }
  Tensor y = detail::alloc_outputs(lengths, d, x);
  Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();
  // With a projection and lengths, backward reads hfull at padded positions (times a zero grad),
  // so they must hold finite values.
  Tensor ws = save ? detail::zeros_if(proj && lengths.defined(), {d.T, d.B, lstm_ws_width(d.H, proj)}, x)
                   : at::empty({0}, x.options());
  Tensor hproj = at::empty({d.B, 4 * d.H}, x.options());
  const Tensor w_hh_t = w_hh.t();
  Tensor hfull, hnew, w_hr_t;
  if (proj) {
    hfull = at::zeros({d.B, d.H}, x.options());
    hnew = at::empty({d.B, d.P}, x.options());
    w_hr_t = w_hr_->contiguous().t();
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_forward", [&] {
    const int64_t* lens = detail::lengths_ptr(lengths);
    LstmForwardStep<scalar_t> a{xproj.const_data_ptr<scalar_t>(), hproj.const_data_ptr<scalar_t>(),
                                h.mutable_data_ptr<scalar_t>(), c.mutable_data_ptr<scalar_t>(),
                                y.mutable_data_ptr<scalar_t>(), save ? ws.mutable_data_ptr<scalar_t>() : nullptr,
                                proj ? hfull.mutable_data_ptr<scalar_t>() : nullptr, lens, 0, d.T, d.B, d.H, reverse};
    LstmProjCommitStep<scalar_t> pc{};
    if (proj) {
      pc = {hnew.const_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
            lens, 0, d.T, d.B, d.P, reverse};
    }
    for (int64_t s = 0; s < d.T; ++s) {
      at::mm_out(hproj, h, w_hh_t);
      a.s = s;
      Launch::template lstm_forward<scalar_t>(a);
      if (proj) {
        at::mm_out(hnew, hfull, w_hr_t);
        pc.s = s;
        Launch::template lstm_proj_commit<scalar_t>(pc);
      }
    }
  });
  return {y, h, c, ws};
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
  detail::check_shape(op, "dy", dy_, {d.T, d.B, d.P});
  detail::check_same(op, "dy", dy_, x_);
  detail::check_shape(op, "y", y_, {d.T, d.B, d.P});
  TORCH_CHECK(ws_.numel() != 0, op, ": the forward saved no activations (it ran with save=False, ",
              "e.g. under torch.no_grad()), so there is nothing to differentiate");
  detail::check_shape(op, "ws", ws_, {d.T, d.B, lstm_ws_width(d.H, proj)});
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const Tensor lengths = detail::check_lengths(op, lengths_, x_, d);
  const Tensor dy = dy_.contiguous(), dh_n = dh_n_.contiguous(), dc_n = dc_n_.contiguous();
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), y = y_.contiguous(), ws = ws_.contiguous();

  // Padded positions are never written by the steps; their grads must read as zero.
  Tensor dgates = detail::zeros_if(lengths.defined(), {d.T, d.B, 4 * d.H}, x);
  Tensor dgates_step = at::empty({d.B, 4 * d.H}, x.options());
  Tensor dh = at::zeros({d.B, d.P}, x.options());
  Tensor dc = at::zeros({d.B, d.H}, x.options());
  Tensor dp, dp_step, dh_full, w_hr;
  if (proj) {
    w_hr = w_hr_->contiguous();
    dp = detail::zeros_if(lengths.defined(), {d.T, d.B, d.P}, x);
    dp_step = at::empty({d.B, d.P}, x.options());
    dh_full = at::empty({d.B, d.H}, x.options());
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_backward", [&] {
    const int64_t* lens = detail::lengths_ptr(lengths);
    LstmBackwardStep<scalar_t> a{dy.const_data_ptr<scalar_t>(), dh_n.const_data_ptr<scalar_t>(),
                                 dc_n.const_data_ptr<scalar_t>(), ws.const_data_ptr<scalar_t>(),
                                 c0.const_data_ptr<scalar_t>(), dh.const_data_ptr<scalar_t>(),
                                 proj ? dh_full.const_data_ptr<scalar_t>() : nullptr,
                                 dc.mutable_data_ptr<scalar_t>(), dgates.mutable_data_ptr<scalar_t>(),
                                 dgates_step.mutable_data_ptr<scalar_t>(), lens, 0, d.T, d.B, d.H, reverse};
    LstmProjBackwardStep<scalar_t> pb{};
    if (proj) {
      pb = {dy.const_data_ptr<scalar_t>(), dh_n.const_data_ptr<scalar_t>(), dh.const_data_ptr<scalar_t>(),
            dp.mutable_data_ptr<scalar_t>(), dp_step.mutable_data_ptr<scalar_t>(), lens, 0, d.T, d.B, d.P, reverse};
    }
    for (int64_t s = d.T - 1; s >= 0; --s) {
      if (proj) {
        pb.s = s;
        Launch::template lstm_proj_backward<scalar_t>(pb);
        at::mm_out(dh_full, dp_step, w_hr);
      }
      a.s = s;
      Launch::template lstm_backward<scalar_t>(a);
      at::mm_out(dh, dgates_step, w_hh);
    }
  });

  const Tensor dg2d = dgates.view({d.T * d.B, 4 * d.H});
  const Tensor x2d = x.view({d.T * d.B, d.I});
  Tensor dx = at::mm(dg2d, w_ih).view({d.T, d.B, d.I});
  Tensor dw_ih = at::mm(dg2d.t(), x2d);
  // Iteration 0 is every entry's first step, whose h_prev is h0; every other step's h_prev is
  // the neighbouring output in time (padded neighbours are zero and meet zero grads).
  Tensor dw_hh = at::mm(dgates_step.t(), h0);
  if (d.T > 1) {
    const int64_t n = (d.T - 1) * d.B;
    const Tensor dg = (reverse ? dgates.narrow(0, 0, d.T - 1) : dgates.narrow(0, 1, d.T - 1)).reshape({n, 4 * d.H});
    const Tensor hp = (reverse ? y.narrow(0, 1, d.T - 1) : y.narrow(0, 0, d.T - 1)).reshape({n, d.P});
    dw_hh.addmm_(dg.t(), hp);
  }
  Tensor db_ih = has_bias ? dg2d.sum(0) : at::empty({0}, x.options());
  Tensor db_hh = db_ih.clone();
  Tensor dw_hr = proj ? at::mm(dp.view({d.T * d.B, d.P}).t(),
                               ws.view({d.T * d.B, 6 * d.H}).narrow(1, 5 * d.H, d.H))
                      : at::empty({0}, x.options());
  return {dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
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
  const Tensor lengths = detail::check_lengths(op, lengths_, x_, d);
  const Tensor x = x_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();

  // b_hh stays in the recurrent GEMM: b_hn sits inside r * (W_hn h + b_hn).
  const Tensor x2d = x.view({d.T * d.B, d.I});
  const Tensor xproj = b_ih.has_value() ? at::addmm(*b_ih, x2d, w_ih.t()) : at::mm(x2d, w_ih.t());
  Tensor y = detail::alloc_outputs(lengths, d, x);
  Tensor h = h0.contiguous().clone();
  Tensor ws = save ? at::empty({d.T, d.B, 4 * d.H}, x.options()) : at::empty({0}, x.options());
  Tensor hproj = at::empty({d.B, 3 * d.H}, x.options());
  const Tensor w_hh_t = w_hh.t();
  const Tensor bias_hh = b_hh.has_value() ? b_hh->expand({d.B, 3 * d.H}) : Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gru_forward", [&] {
    GruForwardStep<scalar_t> a{xproj.const_data_ptr<scalar_t>(), hproj.const_data_ptr<scalar_t>(),
                               h.mutable_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                               save ? ws.mutable_data_ptr<scalar_t>() : nullptr,
                               detail::lengths_ptr(lengths), 0, d.T, d.B, d.H, reverse};
    for (int64_t s = 0; s < d.T; ++s) {
      if (bias_hh.defined()) {
        at::addmm_out(hproj, bias_hh, h, w_hh_t);
      } else {
        at::mm_out(hproj, h, w_hh_t);
      }
      a.s = s;
      Launch::template gru_forward<scalar_t>(a);
    }
  });
  return {y, h, ws};
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
  detail::check_shape(op, "dy", dy_, {d.T, d.B, d.H});
  detail::check_same(op, "dy", dy_, x_);
  detail::check_shape(op, "y", y_, {d.T, d.B, d.H});
  TORCH_CHECK(ws_.numel() != 0, op, ": the forward saved no activations (it ran with save=False, ",
              "e.g. under torch.no_grad()), so there is nothing to differentiate");
  detail::check_shape(op, "ws", ws_, {d.T, d.B, 4 * d.H});
  const c10::OptionalDeviceGuard guard(device_of(x_));
  const Tensor lengths = detail::check_lengths(op, lengths_, x_, d);
  const Tensor dy = dy_.contiguous(), dh_n = dh_n_.contiguous(), x = x_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(), y = y_.contiguous(), ws = ws_.contiguous();

  Tensor dgates = detail::zeros_if(lengths.defined(), {d.T, d.B, 4 * d.H}, x);
  Tensor dgates_step = at::empty({d.B, 3 * d.H}, x.options());
  Tensor dh = at::zeros({d.B, d.H}, x.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gru_backward", [&] {
    GruBackwardStep<scalar_t> a{dy.const_data_ptr<scalar_t>(), dh_n.const_data_ptr<scalar_t>(),
                                ws.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
                                y.const_data_ptr<scalar_t>(), dh.mutable_data_ptr<scalar_t>(),
                                dgates.mutable_data_ptr<scalar_t>(), dgates_step.mutable_data_ptr<scalar_t>(),
                                detail::lengths_ptr(lengths), 0, d.T, d.B, d.H, reverse};
    for (int64_t s = d.T - 1; s >= 0; --s) {
      a.s = s;
      Launch::template gru_backward<scalar_t>(a);
      dh.addmm_(dgates_step, w_hh);  // dh_{s-1} = z * dh_s + [dr, dz, dn*r] W_hh
    }
  });

  // dgates columns: [dr, dz, dn] is the input side, [dr, dz, dn*r] (cols 0:2H and 3H:4H) the hidden side.
  const int64_t H = d.H;
  const Tensor dg2d = dgates.view({d.T * d.B, 4 * H});
  const Tensor dgx = dg2d.narrow(1, 0, 3 * H);
  const Tensor x2d = x.view({d.T * d.B, d.I});
  Tensor dx = at::mm(dgx, w_ih).view({d.T, d.B, d.I});
  Tensor dw_ih = at::mm(dgx.t(), x2d);
  Tensor dw_hh = at::mm(dgates_step.t(), h0);  // iteration 0: h_prev = h0 (see lstm_backward)
  if (d.T > 1) {
    const int64_t n = (d.T - 1) * d.B;
    const Tensor dg = (reverse ? dgates.narrow(0, 0, d.T - 1) : dgates.narrow(0, 1, d.T - 1)).reshape({n, 4 * H});
    const Tensor hp = (reverse ? y.narrow(0, 1, d.T - 1) : y.narrow(0, 0, d.T - 1)).reshape({n, H});
    dw_hh.narrow(0, 0, 2 * H).addmm_(dg.narrow(1, 0, 2 * H).t(), hp);
    dw_hh.narrow(0, 2 * H, H).addmm_(dg.narrow(1, 3 * H, H).t(), hp);
  }
  Tensor db_ih, db_hh;
  if (has_bias) {
    const Tensor sums = dg2d.sum(0);
    db_ih = sums.narrow(0, 0, 3 * H).clone();
    db_hh = at::cat({sums.narrow(0, 0, 2 * H), sums.narrow(0, 3 * H, H)});
  } else {
    db_ih = at::empty({0}, x.options());
    db_hh = at::empty({0}, x.options());
  }
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace fastrnn
