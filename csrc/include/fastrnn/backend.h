// The four ops (csrc/ops.cpp has their schemas) over a Backend: each op builds the plan of its
// layer call (layer_plan.h: checks, schedule, outputs) and hands it to the backend, which runs
// the whole recurrence however it likes. A Backend is a class with
//   static void lstm_forward(ForwardPlan&);   static void lstm_backward(BackwardPlan&);
//   static void gru_forward(ForwardPlan&);    static void gru_backward(BackwardPlan&);
// The forward entries fill plan.y, plan.saved (when plan.save) and the running states plan.h,
// plan.c; the backward ones produce the gate grads, fold them with plan.fold_gate_grads /
// fold_first_step and set plan.dh (and dc, dw_hr). StepLoop<Kernels> (step_loop.h) implements
// all four; cpu/ops_cpu.cpp and cuda/ops_cuda.cpp define the device backends and register them.
// docs/DESIGN.md ("Backends and dispatch") says how to add one.
#pragma once

#include <c10/core/DeviceGuard.h>

#include "fastrnn/layer_plan.h"

namespace fastrnn {

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                        const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                        const OptTensor& b_hh, const OptTensor& w_hr,
                                                        const OptTensor& lengths, bool reverse, bool save,
                                                        const OptTensor& ln_ih, const OptTensor& ln_hh,
                                                        const OptTensor& ln_c_w, const OptTensor& ln_c_b,
                                                        const OptTensor& zoneout_h, const OptTensor& zoneout_c,
                                                        const OptTensor& rec_mask) {
  const c10::OptionalDeviceGuard guard(device_of(x));
  ForwardPlan plan(kLstmCell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, ln_ih.has_value());
  plan.options(ln_ih, ln_hh, ln_c_w, ln_c_b, zoneout_h, zoneout_c, rec_mask);
  Backend::lstm_forward(plan);
  return plan.lstm_outputs();
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& x, const Tensor& h0,
              const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
              const Tensor& ws, const OptTensor& lengths, bool reverse, bool has_bias, const OptTensor& ln_ih,
              const OptTensor& ln_hh, const OptTensor& ln_c_w, const OptTensor& ln_c_b, const OptTensor& zoneout_h,
              const OptTensor& zoneout_c, const OptTensor& rec_mask, const OptTensor& b_ih, const OptTensor& b_hh) {
  const c10::OptionalDeviceGuard guard(device_of(x));
  BackwardPlan plan(kLstmCell, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, ws, lengths, reverse,
                    has_bias, ln_ih.has_value());
  plan.options(ln_ih, ln_hh, ln_c_w, ln_c_b, zoneout_h, zoneout_c, rec_mask);
  Backend::lstm_backward(plan);
  return plan.lstm_outputs();
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                               const OptTensor& lengths, bool reverse, bool save,
                                               const OptTensor& ln_ih, const OptTensor& ln_hh,
                                               const OptTensor& zoneout_h, const OptTensor& rec_mask) {
  const c10::OptionalDeviceGuard guard(device_of(x));
  ForwardPlan plan(kGruCell, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths,
                   reverse, save, ln_ih.has_value());
  plan.options(ln_ih, ln_hh, std::nullopt, std::nullopt, zoneout_h, std::nullopt, rec_mask);
  Backend::gru_forward(plan);
  return plan.gru_outputs();
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& dy, const Tensor& dh_n, const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& y, const Tensor& ws, const OptTensor& lengths, bool reverse, bool has_bias, const OptTensor& ln_ih,
    const OptTensor& ln_hh, const OptTensor& zoneout_h, const OptTensor& rec_mask, const OptTensor& b_ih,
    const OptTensor& b_hh) {
  const c10::OptionalDeviceGuard guard(device_of(x));
  BackwardPlan plan(kGruCell, dy, dh_n, std::nullopt, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                    std::nullopt, y, ws, lengths, reverse, has_bias, ln_ih.has_value());
  plan.options(ln_ih, ln_hh, std::nullopt, std::nullopt, zoneout_h, std::nullopt, rec_mask);
  Backend::gru_backward(plan);
  return plan.gru_outputs();
}

}  // namespace fastrnn
