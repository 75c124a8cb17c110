// The plan of one layer call (one layer, one direction, a whole sequence), shared by every
// backend: argument checks, sizes, the length schedule, the outputs and their layout, the input
// projection, and the folding of gate gradients into dx and the parameter grads. A backend
// receives a plan and runs the recurrence however it likes (backend.h); the plan owns
// everything around it. docs/DESIGN.md ("Op contract", "Workspace", "Lengths") is the long form.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "fastrnn/cell_traits.h"
#include "fastrnn/layer_norm.h"
#include "fastrnn/steps.h"

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

inline void check_state(const char* op, const char* name, const Tensor& t, const Tensor& x, int64_t B,
                        int64_t width) {
  check_shape(op, name, t, {B, width});
  check_same(op, name, t, x);
}

inline Tensor zeros_if(bool zero, at::IntArrayRef size, const Tensor& like) {
  return zero ? at::zeros(size, like.options()) : at::empty(size, like.options());
}

inline Tensor contiguous_or_undefined(const OptTensor& t) { return t.has_value() ? t->contiguous() : Tensor(); }

}  // namespace detail

struct Dims {
  int64_t T, B, I, H;
  int64_t P;  // width of the hidden state h: H, or proj_size with a projection
};

// Validates x [T, B, I], w_ih [G*H, I], w_hh [G*H, P], biases [G*H] and the optional projection
// w_hr [P, H] (P = H without one); returns the sizes.
inline Dims check_layer(const char* op, int64_t G, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  using detail::check_same;
  using detail::check_shape;
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
              ": expected lengths on the CPU or on the device of x (", x.device(), "), got ", l.device());
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

// Which rows each iteration runs. With lengths on the host, rows are entries sorted by length
// (longest first) and iteration s runs only the active prefix; otherwise every iteration runs
// all B rows in batch order (device lengths would need a sync to count).
struct Schedule {
  Tensor order;                 // [B] int64 on x's device: row -> batch entry; undefined = identity
  std::vector<int64_t> active;  // [T] rows active at each iteration; empty = all B

  Schedule() = default;
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

// The layer_norm option's parameters (docs/DESIGN.md, "Layer norm"), contiguous; all undefined
// when it is off.
struct LayerNormArgs {
  Tensor w_ih;  // [G*H] weight of LN(x W_ih^T)
  Tensor w_hh;  // [G*H] weight of LN(h W_hh^T)
  Tensor w_c;   // [H]   LSTM: weight of LN(c)
  Tensor b_c;   // [H]   LSTM: bias of LN(c)
  bool on() const { return w_ih.defined(); }
};

// ln_ih, ln_hh (and for a cell with a cell state ln_c_w, ln_c_b): all given or all None, each of
// its shape, x's dtype and device.
inline LayerNormArgs check_layer_norm(const char* op, const CellInfo& cell, const Dims& d, const Tensor& x,
                                      const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& ln_c_w,
                                      const OptTensor& ln_c_b) {
  const bool lstm = cell.has_cell_state();
  if (!(ln_ih.has_value() || ln_hh.has_value() || ln_c_w.has_value() || ln_c_b.has_value())) return {};
  TORCH_CHECK(ln_ih.has_value() && ln_hh.has_value() && (!lstm || (ln_c_w.has_value() && ln_c_b.has_value())), op,
              ": expected the layer-norm parameters ", lstm ? "ln_ih, ln_hh, ln_c_w and ln_c_b" : "ln_ih and ln_hh",
              " all given or all None");
  const int64_t GH = cell.gates * d.H;
  for (const auto& [name, t, n] : {std::tuple{"ln_ih", &ln_ih, GH}, std::tuple{"ln_hh", &ln_hh, GH},
                                   std::tuple{"ln_c_w", &ln_c_w, d.H}, std::tuple{"ln_c_b", &ln_c_b, d.H}}) {
    if (!t->has_value()) continue;
    detail::check_shape(op, name, **t, {n});
    detail::check_same(op, name, **t, x);
  }
  return {ln_ih->contiguous(), ln_hh->contiguous(), detail::contiguous_or_undefined(ln_c_w),
          detail::contiguous_or_undefined(ln_c_b)};
}

// Zoneout and recurrent dropout (docs/DESIGN.md, "Options beyond torch.nn"): the masks of one
// layer call, drawn by the caller. The backward op receives the forward's.
struct Regularisers {
  Tensor zoneout_h;  // [T, B, P] keep weights of h in time order, or 0-dim: one keep weight for
                     // every position (eval: the rate); undefined: off
  Tensor zoneout_c;  // [T, B, H] the same for c (LSTM), or 0-dim, or undefined
  Tensor rec_mask;   // [B, P] batch order: recurrent dropout's mask on h_{t-1} where it enters
                     // W_hh (values 0 or 1/(1-p)); undefined: off
  Tensor rec_rows;   // [B, P] the same by row

  // Checks them against x [T, B, ...] (dtype, device, shapes).
  Regularisers(const char* op, const Dims& d, const Tensor& x, const OptTensor& zh, const OptTensor& zc,
               const OptTensor& rec, const Schedule& sched) {
    zoneout_h = keep_weights(op, "zoneout_h", zh, x, {d.T, d.B, d.P});
    zoneout_c = keep_weights(op, "zoneout_c", zc, x, {d.T, d.B, d.H});
    if (rec.has_value()) {
      detail::check_shape(op, "rec_mask", *rec, {d.B, d.P});
      detail::check_same(op, "rec_mask", *rec, x);
      rec_mask = rec->contiguous();
      rec_rows = sched.to_rows(rec_mask);
    }
  }
  Regularisers() = default;

  // Why a kernel without these options cannot run the call (a string literal), or nullptr.
  const char* unsupported() const {
    if (zoneout_h.defined()) return "it does not run zoneout yet";
    if (zoneout_c.defined()) return "it does not run zoneout_cell yet";
    if (rec_mask.defined()) return "it does not run recurrent_dropout yet";
    return nullptr;
  }

  template <typename T>
  static KeepWeights<T> keep(const Tensor& z) {
    return {z.defined() ? z.const_data_ptr<T>() : nullptr, z.defined() && z.dim() == 0};
  }

 private:
  static Tensor keep_weights(const char* op, const char* name, const OptTensor& z, const Tensor& x,
                             at::IntArrayRef want) {
    if (!z.has_value()) return Tensor();
    TORCH_CHECK(z->dim() == 0 || z->sizes() == want, op, ": expected ", name, " of shape ", want,
                " or [] (one keep weight for every position), got ", z->sizes());
    detail::check_same(op, name, *z, x);
    return z->contiguous();
  }
};

// What every plan has: the checked sizes, the schedule and the contiguous weights.
struct LayerPlan {
  const CellInfo& cell;  // the cell's table (cell_traits.h)
  const char* op;        // the qualified op name, the prefix of every check message
  int64_t G;             // cell.gates
  Dims d;
  bool reverse;
  CheckedLengths lengths;
  Schedule sched;
  Tensor x;               // [T, B, I] contiguous
  Tensor w_ih;            // [G*H, I]  contiguous
  Tensor w_hh;            // [G*H, P]  contiguous
  Tensor w_hr;            // [P, H]    contiguous, or undefined (no projection)
  Tensor b_ih, b_hh;      // [G*H]     contiguous, or undefined (a backward receives them only with layer norm)
  LayerNormArgs ln;       // the layer_norm option (undefined: off)
  Regularisers reg;       // zoneout, recurrent dropout (options())
  int64_t saved_width;    // W: per (t, b) of the saved activations (ws), cell.saved_width(H, projected(),
                          // layer norm)

  LayerPlan(const CellInfo& cell, const char* op, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
            const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool reverse)
      : cell(cell), op(op), G(cell.gates), d(check_layer(op, G, x, w_ih, w_hh, b_ih, b_hh, w_hr)), reverse(reverse),
        x(x.contiguous()),
        w_ih(w_ih.contiguous()), w_hh(w_hh.contiguous()), w_hr(detail::contiguous_or_undefined(w_hr)),
        b_ih(detail::contiguous_or_undefined(b_ih)), b_hh(detail::contiguous_or_undefined(b_hh)) {}

  // After the other checks (so that a bad call reports its first problem in argument order).
  void schedule(const OptTensor& lengths_) {
    lengths = check_lengths(op, lengths_, x, d);
    sched = Schedule(lengths, d, x);
  }

  // After schedule (rec_rows is by row), in the schemas' order: the layer-norm parameters, then
  // the zoneout and recurrent-dropout masks (zc: LSTM only). docs/DESIGN.md, "Options beyond
  // torch.nn".
  void options(const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& ln_c_w, const OptTensor& ln_c_b,
               const OptTensor& zh, const OptTensor& zc, const OptTensor& rec) {
    ln = check_layer_norm(op, cell, d, x, ln_ih, ln_hh, ln_c_w, ln_c_b);
    reg = Regularisers(op, d, x, zh, zc, rec, sched);
    // Layer norm of c reads the cell's own c~, which zoneout_cell replaces by the zoned state.
    TORCH_CHECK_NOT_IMPLEMENTED(!(ln.on() && reg.zoneout_c.defined()), op,
                                ": layer norm with zoneout_cell is not implemented yet");
  }

  // Why a kernel without the options (the persistent ones, the CPU's fused single step) cannot
  // run the call (a string literal), or nullptr.
  const char* unsupported_option() const { return ln.on() ? "it has no layer_norm" : reg.unsupported(); }

  bool masked() const { return lengths.device.defined(); }
  bool projected() const { return w_hr.defined(); }
  // Layer norm: ws's column where the raw products h_prev W_hh^T start.
  int64_t ln_raw_hh_col() const { return cell.ln_raw_hh_col(d.H, projected()); }
  // [T*B, n] view of the columns [col, col + n) of ws [T, B, saved_width].
  Tensor ws_columns(const Tensor& ws, int64_t col, int64_t n) const {
    return ws.view({d.T * d.B, saved_width}).narrow(1, col, n);
  }

  // The bias the input projection adds: b_ih plus the leading cell.hh_bias_input_blocks blocks
  // of b_hh (LSTM b_ih + b_hh; GRU b_ih + (b_hr, b_hz, 0): b_hn stays inside the reset product,
  // see hidden_n_bias).
  Tensor input_bias() const {
    if (!cell.has_hidden_bias()) return b_ih.defined() && b_hh.defined() ? b_ih + b_hh : (b_ih.defined() ? b_ih : b_hh);
    if (!b_hh.defined()) return b_ih;
    const int64_t joined = cell.hh_bias_input_blocks * d.H;
    const Tensor bias = at::cat({b_hh.narrow(0, 0, joined), at::zeros({G * d.H - joined}, b_hh.options())});
    return b_ih.defined() ? bias + b_ih : bias;
  }
  // The rest of b_hh, which the cell adds itself (GRU: b_hn [H]), contiguous; undefined when the
  // cell has none or there is no b_hh.
  Tensor hidden_n_bias() const {
    if (!cell.has_hidden_bias() || !b_hh.defined()) return Tensor();
    const int64_t joined = cell.hh_bias_input_blocks * d.H;
    return b_hh.narrow(0, joined, G * d.H - joined).contiguous();
  }

  // The fields of StepCommon for a launch over `units` per row; s and rows are the loop's.
  template <typename Step>
  void fill_common(Step& a, int64_t units) const {
    a.lengths = masked() ? lengths.device.const_data_ptr<int64_t>() : nullptr;
    a.order = sched.order_ptr();
    a.s = 0;
    a.rows = d.B;
    a.T = d.T;
    a.B = d.B;
    a.units = units;
    a.ws_width = saved_width;
    a.reverse = reverse;
  }
};

// A forward call. The plan allocates the outputs; a backend fills y, saved and the running
// states h and c (which start as h0, c0 by row and end as h_n, c_n by row).
struct ForwardPlan : LayerPlan {
  bool save;
  Tensor h0;              // [B, P] the caller's, contiguous, batch order
  Tensor y;               // [T, B, P]  zeros where padded
  Tensor saved;           // [T, B, saved_width] activations for backward ([0] when !save); zeros where padded
  Tensor h;               // [B, P] by row
  Tensor c;               // [B, H] by row (LSTM), undefined (GRU)

  ForwardPlan(const CellInfo& cell, const Tensor& x, const Tensor& h0_, const OptTensor& c0, const Tensor& w_ih,
              const Tensor& w_hh, const OptTensor& b_ih_, const OptTensor& b_hh_, const OptTensor& w_hr,
              const OptTensor& lengths, bool reverse, bool save, bool layer_norm = false)
      : LayerPlan(cell, cell.forward_op, x, w_ih, w_hh, b_ih_, b_hh_, w_hr, reverse), save(save) {
    detail::check_state(op, "h0", h0_, x, d.B, d.P);
    if (c0.has_value()) detail::check_state(op, "c0", *c0, x, d.B, d.H);
    schedule(lengths);
    saved_width = cell.saved_width(d.H, projected(), layer_norm);
    h0 = h0_.contiguous();
    // Padded positions are never written by the steps; zero them so every output is
    // deterministic (and the saved o * tanh(c), read there by the projection's weight grad
    // times a zero grad, is finite).
    y = detail::zeros_if(masked(), {d.T, d.B, d.P}, x);
    saved = save ? detail::zeros_if(masked(), {d.T, d.B, saved_width}, x) : at::empty({0}, x.options());
    h = sched.to_rows(h0);
    if (c0.has_value()) c = sched.to_rows(*c0);
  }

  // The input projection of all steps, [T*B, G*H] (positions xproj.stride(0) apart). When
  // activations are saved it is a view of the gate columns of `saved`, where each step then
  // overwrites its pre-activations with the activations: no separate [T, B, G*H] buffer. Without
  // saving, [steps*B, G*H] for a chunk of that many steps.
  Tensor input_projection_buffer(std::optional<int64_t> steps = std::nullopt) const {
    const int64_t gates = G * d.H;
    return save ? ws_columns(saved, 0, gates) : at::empty({steps.value_or(d.T) * d.B, gates}, x.options());
  }

  // out = x W_ih^T + bias, as one GEMM over the n steps of times [t0, t0 + n) (default: all).
  // With layer norm only x W_ih^T: the steps read it through the norm and add the bias after it
  // (ForwardStep::ln).
  void project_input(Tensor out, const Tensor& bias, int64_t t0 = 0, std::optional<int64_t> n_ = std::nullopt) const {
    const int64_t n = n_.value_or(d.T);
    const Tensor x2d = x.narrow(0, t0, n).view({n * d.B, d.I});
    if (bias.defined() && !ln.on()) {
      at::addmm_out(out, bias, x2d, w_ih.t());
    } else {
      at::mm_out(out, x2d, w_ih.t());
    }
  }

  std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_outputs() const {
    return {y, sched.to_batch(h), sched.to_batch(c), saved};
  }
  std::tuple<Tensor, Tensor, Tensor> gru_outputs() const { return {y, sched.to_batch(h), saved}; }
};

// A backward call. The plan allocates the parameter grads; a backend runs the recurrence
// backwards, producing the pre-activation gate grads of every step, and hands them to
// fold_gate_grads in runs of time steps (all T at once, or chunks), plus the first iteration's
// hidden-side gate grads to fold_first_step. It leaves dh0 (and dc0) by row.
//
// Gate-grad layout, [n, B, dgates_width] time order (cell_traits.h): LSTM di, df, dg, do (both
// the input and the hidden side); GRU dr, dz, dn (the input side) then dn * r (the hidden side
// is dr, dz, dn * r: cell.hidden).
struct BackwardPlan : LayerPlan {
  bool has_bias;
  int64_t dgates_width;   // cell.grad_width(H)
  Tensor dy;              // [T, B, P] contiguous
  Tensor dh_n, dc_n;      // [B, P], [B, H] contiguous (dc_n undefined for GRU)
  Tensor h0, c0;          // [B, P], [B, H] contiguous, batch order (c0 undefined for GRU)
  Tensor y;               // [T, B, P] the forward's outputs
  Tensor saved;           // [T, B, saved_width] the forward's saved activations
  Tensor dx;              // [T, B, I]  written by fold_gate_grads
  Tensor dw_ih, dw_hh;    // [G*H, I], [G*H, P] accumulated
  Tensor bias_sums;       // [dgates_width] column sums of the gate grads, or undefined (no bias)
  // Set by the backend:
  Tensor dh, dc;          // [B, P], [B, H] by row: dL/dh0, dL/dc0 (dc undefined for GRU)
  Tensor dw_hr;           // [P, H] with a projection (projection_grad)
  Tensor d_ln_ih, d_ln_hh, d_ln_c_w, d_ln_c_b;  // layer norm: the norms' parameter grads (else undefined)

  BackwardPlan(const CellInfo& cell, const Tensor& dy_, const Tensor& dh_n_, const OptTensor& dc_n_,
               const Tensor& x, const Tensor& h0_, const OptTensor& c0_, const Tensor& w_ih, const Tensor& w_hh,
               const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y_,
               const Tensor& saved_, const OptTensor& lengths, bool reverse, bool has_bias, bool layer_norm = false)
      : LayerPlan(cell, cell.backward_op, x, w_ih, w_hh, b_ih, b_hh, w_hr, reverse),
        has_bias(has_bias) {
    using detail::check_shape;
    detail::check_state(op, "h0", h0_, x, d.B, d.P);
    if (c0_.has_value()) detail::check_state(op, "c0", *c0_, x, d.B, d.H);
    detail::check_state(op, "dh_n", dh_n_, x, d.B, d.P);
    if (dc_n_.has_value()) detail::check_state(op, "dc_n", *dc_n_, x, d.B, d.H);
    check_shape(op, "dy", dy_, {d.T, d.B, d.P});
    detail::check_same(op, "dy", dy_, x);
    check_shape(op, "y", y_, {d.T, d.B, d.P});
    detail::check_same(op, "y", y_, x);
    TORCH_CHECK(saved_.numel() != 0, op, ": the forward saved no activations (it ran with save=False, ",
                "e.g. under torch.no_grad()), so there is nothing to differentiate");
    saved_width = cell.saved_width(d.H, projected(), layer_norm);
    check_shape(op, "ws", saved_, {d.T, d.B, saved_width});
    detail::check_same(op, "ws", saved_, x);
    schedule(lengths);
    dgates_width = cell.grad_width(d.H);
    dy = dy_.contiguous();
    dh_n = dh_n_.contiguous();
    h0 = h0_.contiguous();
    if (c0_.has_value()) {
      c0 = c0_->contiguous();
      dc_n = dc_n_->contiguous();
    }
    y = y_.contiguous();
    saved = saved_.contiguous();
    dx = at::empty({d.T, d.B, d.I}, x.options());
    dw_ih = at::zeros({G * d.H, d.I}, x.options());
    dw_hh = at::zeros({G * d.H, d.P}, x.options());
    if (has_bias) bias_sums = at::zeros({dgates_width}, x.options());
  }

  // Folds the gate grads dg [n, B, dgates_width] of the times [t0, t0 + n) into dx, dW_ih, the
  // bias sums and dW_hh (except each entry's first step, whose h_prev is h0: fold_first_step).
  void fold_gate_grads(const Tensor& dg, int64_t t0) const {
    const int64_t n = dg.size(0), in_cols = G * d.H;
    const Tensor dg2d = dg.view({n * d.B, dgates_width}), dgx = dg2d.narrow(1, 0, in_cols);
    Tensor dx_part = dx.narrow(0, t0, n).view({n * d.B, d.I});
    at::mm_out(dx_part, dgx, w_ih);
    dw_ih.addmm_(dgx.t(), x.narrow(0, t0, n).view({n * d.B, d.I}));
    if (has_bias) bias_sums.add_(dg2d.sum(0));
    // For dW_hh: the grads of the steps of the range that are not an entry's first, next to
    // the h_prev they multiply — the neighbouring output in time (padded neighbours are zero
    // and meet zero grads); with recurrent dropout the product's input was rec_mask * h_prev.
    const int64_t first = reverse ? t0 : std::max<int64_t>(t0, 1), end = reverse ? std::min(t0 + n, d.T - 1) : t0 + n;
    const int64_t m = end - first;
    if (m <= 0) return;
    const Tensor dgp = dg.narrow(0, first - t0, m).reshape({m * d.B, dgates_width});
    Tensor h_prev = y.narrow(0, reverse ? first + 1 : first - 1, m);
    h_prev = (reg.rec_mask.defined() ? h_prev * reg.rec_mask : h_prev).reshape({m * d.B, d.P});
    for_each_hidden_block([&](int64_t col, int64_t row, int64_t len) {
      dw_hh.narrow(0, row, len).addmm_(dgp.narrow(1, col, len).t(), h_prev);
    });
  }

  // ---- Layer norm (docs/DESIGN.md, "Layer norm"). The norms' inputs are in ws: x W_ih^T in the
  // gate blocks, h_prev W_hh^T from ln_raw_hh_col; the backend computes their row statistics.

  // [T*B, G*H] views of them.
  Tensor input_raw() const { return ws_columns(saved, 0, G * d.H); }
  Tensor hidden_raw() const { return ws_columns(saved, ln_raw_hh_col(), G * d.H); }

  // The hidden side by iteration and row ((s, r) order: row r of iteration s at [s, r]); draw
  // and param hold the iterations of one chunk of the gate grads (GradChunks), [lo, lo + n).
  struct HiddenNorm {
    Tensor h_prev;      // [T, B, P]     the state row r's product read at iteration s (times rec_mask with
                        //               recurrent dropout); zero where inactive
    Tensor stats;       // [T, B, 2]     time order: mean, rstd of the raw products (opmath), by the backend
    Tensor draw;        // [n, B, G*H]   grads of the raw products, written per iteration (zero where inactive)
    Tensor param;       // [n, B, G*H]   the weight grad's terms (opmath), summed per chunk
    Tensor d_ln;        // [G*H]         their sum so far (opmath)
  };

  // steps: the chunk length.
  HiddenNorm hidden_norm(int64_t steps) const {
    HiddenNorm hn;
    const auto lopts = x.options().dtype(at::kLong);
    const Tensor entry = sched.order.defined() ? sched.order : at::arange(d.B, lopts);  // row -> entry
    const Tensor len = masked() ? lengths.device.index_select(0, entry) : at::full({d.B}, d.T, lopts);
    const Tensor s = at::arange(d.T, lopts).unsqueeze(1);                                // [T, 1]
    const Tensor t_prev = (reverse ? len.unsqueeze(0) - s : s - 1).clamp(0, d.T - 1);   // [T, B]
    hn.h_prev = y.view({d.T * d.B, d.P}).index_select(0, (t_prev * d.B + entry.unsqueeze(0)).view({-1}));
    hn.h_prev = hn.h_prev.view({d.T, d.B, d.P});
    hn.h_prev[0].copy_(h0.index_select(0, entry));
    hn.h_prev.mul_((s < len.unsqueeze(0)).unsqueeze(2).to(x.scalar_type()));
    if (reg.rec_rows.defined()) hn.h_prev.mul_(reg.rec_rows);  // recurrent dropout: the product read m * h_prev
    // rows past an iteration's active prefix (host lengths) are never written: zeros there
    const bool partial = !sched.active.empty();
    hn.draw = detail::zeros_if(partial, {steps, d.B, G * d.H}, x);
    const auto aopts = x.options().dtype(at::toOpMathType(x.scalar_type()));
    hn.param = partial ? at::zeros({steps, d.B, G * d.H}, aopts) : at::empty({steps, d.B, G * d.H}, aopts);
    hn.d_ln = at::zeros({G * d.H}, aopts);
    return hn;
  }

  // A chunk of iterations [lo, lo + n) done: dW_hh and the hidden norm's weight grad from its
  // draw and param. (The next chunk's earlier iterations run at least as many rows as this one's
  // at the same slot, so nothing stale survives in the rows they leave: no clearing.)
  void fold_hidden_norm(HiddenNorm& hn, int64_t lo, int64_t n) {
    const int64_t GH = G * d.H;
    dw_hh.addmm_(hn.draw.narrow(0, 0, n).view({n * d.B, GH}).t(), hn.h_prev.narrow(0, lo, n).view({n * d.B, d.P}));
    hn.d_ln.add_(hn.param.narrow(0, 0, n).view({n * d.B, GH}).sum(0));
  }

  // A chunk done: its gate grads dg [n, B, dgates_width] of the times [t0, t0 + n) and the hidden
  // norm's buffers of the iterations [lo, lo + n).
  void fold_layer_norm_chunk(const Tensor& dg, int64_t t0, const Tensor& ih_stats, Tensor& d_ln_ih_sum,
                             HiddenNorm& hn, int64_t lo) {
    fold_gate_grads_layer_norm(dg, t0, ih_stats, d_ln_ih_sum);
    fold_hidden_norm(hn, lo, dg.size(0));
  }

  // After the last chunk: the norms' weight grads from their sums.
  void finish_layer_norm(const Tensor& d_ln_ih_sum, const HiddenNorm& hn) {
    d_ln_ih = d_ln_ih_sum.to(x.scalar_type());
    d_ln_hh = hn.d_ln.to(x.scalar_type());
  }

  // The gate grads dg [n, B, dgates_width] of the times [t0, t0 + n) into dx, dW_ih, the bias sums
  // and the input norm's weight grad, accumulated in d_ln (opmath; dW_hh: fold_hidden_norm);
  // stats [T*B, 2] (opmath): the mean and rstd of input_raw()'s rows.
  void fold_gate_grads_layer_norm(const Tensor& dg, int64_t t0, const Tensor& stats, Tensor& d_ln) {
    const int64_t n = dg.size(0), M = n * d.B, GH = G * d.H;
    const Tensor dg2d = dg.view({M, dgates_width}), x2d = x.narrow(0, t0, n).view({M, d.I});
    const Tensor st = stats.narrow(0, t0 * d.B, M);
    const auto [draw_op, dw] = layer_norm_rows_backward(dg2d.narrow(1, 0, GH), input_raw().narrow(0, t0 * d.B, M),
                                                        st.select(1, 0).contiguous(), st.select(1, 1).contiguous(),
                                                        ln.w_ih, true);
    const Tensor draw = draw_op.to(x.scalar_type());
    Tensor dx_part = dx.narrow(0, t0, n).view({M, d.I});
    at::mm_out(dx_part, draw, w_ih);
    dw_ih.addmm_(draw.t(), x2d);
    if (has_bias) bias_sums.add_(dg2d.sum(0));
    if (d_ln.defined()) {
      d_ln.add_(dw);
    } else {
      d_ln = dw;
    }
  }

  // Iteration 0 is every entry's first step (all rows active), whose h_prev is h0 (times
  // rec_mask with recurrent dropout): dgates_step [B, G*H] by row holds its hidden-side grads in
  // dW_hh's row order.
  void fold_first_step(const Tensor& dgates_step) const {
    dw_hh.addmm_(dgates_step.t(), sched.to_rows(reg.rec_mask.defined() ? h0 * reg.rec_mask : h0));
  }

  // dW_hr = sum over steps of dp^T o tanh(c), from dp [T, B, P] (the full grads of the
  // projected states) and the saved o * tanh(c).
  Tensor projection_grad(const Tensor& dp) const {
    return at::mm(dp.view({d.T * d.B, d.P}).t(),
                  saved.view({d.T * d.B, saved.size(2)}).narrow(1, LstmCell::kHFull * d.H, d.H));
  }

  // (db_ih, db_hh) from the bias sums: LSTM both are the sum of di..do; GRU b_ih takes
  // dr, dz, dn and b_hh dr, dz, dn * r. Empty tensors without biases.
  std::pair<Tensor, Tensor> bias_grads() const {
    if (!has_bias) return {at::empty({0}, x.options()), at::empty({0}, x.options())};
    std::vector<Tensor> hidden;
    for_each_hidden_block([&](int64_t col, int64_t, int64_t len) { hidden.push_back(bias_sums.narrow(0, col, len)); });
    const Tensor db_ih = G * d.H == dgates_width ? bias_sums : bias_sums.narrow(0, 0, G * d.H).clone();
    return {db_ih, at::cat(hidden)};
  }

  // (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr, d_ln_ih, d_ln_hh, d_ln_c_w, d_ln_c_b), batch
  // order; dW_hr empty without projection, the layer-norm grads empty without layer norm.
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
  lstm_outputs() const {
    const auto [db_ih, db_hh] = bias_grads();
    return {dx, sched.to_batch(dh), sched.to_batch(dc), dw_ih, dw_hh, db_ih, db_hh, or_empty(dw_hr),
            or_empty(d_ln_ih), or_empty(d_ln_hh), or_empty(d_ln_c_w), or_empty(d_ln_c_b)};
  }
  // (dx, dh0, dW_ih, dW_hh, db_ih, db_hh, d_ln_ih, d_ln_hh), batch order.
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_outputs() const {
    const auto [db_ih, db_hh] = bias_grads();
    return {dx, sched.to_batch(dh), dw_ih, dw_hh, db_ih, db_hh, or_empty(d_ln_ih), or_empty(d_ln_hh)};
  }

 private:
  Tensor or_empty(const Tensor& t) const { return t.defined() ? t : at::empty({0}, x.options()); }

  // The hidden side of the gate grads as blocks (column in dgates, row in dW_hh, length).
  template <typename F>
  void for_each_hidden_block(F&& f) const {
    for (int64_t i = 0; i < cell.hidden_count; ++i) {
      const HiddenBlock& b = cell.hidden[i];
      f(b.col * d.H, b.row * d.H, b.len * d.H);
    }
  }
};

}  // namespace fastrnn
