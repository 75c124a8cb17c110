// Layer norm over rows with ATen, for the layer_norm option (docs/DESIGN.md, "Layer norm"): the
// row reductions around the point functions of steps.h. Both compute in the opmath type (float
// for half and bfloat16), whatever the tensors' dtype, so the statistics are never rounded to a
// half type.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

#include "fastrnn/cell_math.h"  // kLayerNormEps

namespace fastrnn {

// x [M, N] (any strides), w [N], b [N] or undefined -> (LN(x) * w + b [M, N] contiguous in the
// opmath type, mean [M], rstd [M] in the opmath type).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_rows(const at::Tensor& x, const at::Tensor& w,
                                                                      const at::Tensor& b) {
  const auto op = at::toOpMathType(x.scalar_type());
  const std::optional<at::Tensor> bias = b.defined() ? std::optional<at::Tensor>(b.to(op)) : std::nullopt;
  auto [y, mean, rstd] = at::native_layer_norm(x.to(op).contiguous(), {x.size(1)}, w.to(op), bias, kLayerNormEps);
  return {y, mean.view({-1}), rstd.view({-1})};
}

// Only the statistics of layer_norm_rows: (mean [M], rstd [M]) in the opmath type. (Through the
// norm itself, its output unused: ATen's CPU var_mean over rows measured ~10x slower.)
inline std::tuple<at::Tensor, at::Tensor> layer_norm_stats(const at::Tensor& x) {
  auto [y, mean, rstd] = at::native_layer_norm(x.to(at::toOpMathType(x.scalar_type())).contiguous(), {x.size(1)},
                                               std::nullopt, std::nullopt, kLayerNormEps);
  return {mean.view({-1}), rstd.view({-1})};
}

// The backward of layer_norm_rows: g [M, N] the grad of its output, x [M, N] its input, mean and
// rstd [M] its statistics. Returns (dx [M, N] in the opmath type, dw [N] or undefined unless
// want_dw).
inline std::tuple<at::Tensor, at::Tensor> layer_norm_rows_backward(const at::Tensor& g, const at::Tensor& x,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   const at::Tensor& w, bool want_dw) {
  const auto op = at::toOpMathType(x.scalar_type());
  const int64_t M = x.size(0);
  auto [dx, dw, db] = at::native_layer_norm_backward(g.to(op).contiguous(), x.to(op).contiguous(), {x.size(1)},
                                                     mean.view({M, 1}), rstd.view({M, 1}), w.to(op), std::nullopt,
                                                     {true, want_dw, false});
  return {dx, dw};
}

}  // namespace fastrnn
