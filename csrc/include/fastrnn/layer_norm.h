// The input norm's backward with ATen, for the layer_norm option (docs/DESIGN.md, "Layer norm"):
// over all positions at once, after the loop. It computes in the opmath type (float for half and
// bfloat16), whatever the tensors' dtype.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

namespace fastrnn {

// The backward of a layer norm without bias over the rows of x, LN(x) * w: g [M, N] the grad of
// its output, x [M, N] its input (any strides), mean and rstd [M] its statistics. Returns
// (dx [M, N] in the opmath type, dw [N] or undefined unless want_dw).
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
