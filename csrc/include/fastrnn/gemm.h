// The recurrent GEMMs of the step loop: out[:n] (+)= a[:n] @ op(w), op(w) = w^T when
// `transpose`, into a preallocated buffer (no allocation per step). w is fixed for the whole
// sequence, so a backend may prepare it once per call: AtenGemm is the plain ATen version
// (cuBLAS on the current stream on CUDA); the CPU's PackedGemm (cpu/packed_gemm.h) packs w for
// MKL once instead of at every step.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn {

struct AtenGemm {
  at::Tensor wop;  // op(w), a view
  // max_rows: the most rows a call will pass; uses: how many calls the sequence will make.
  AtenGemm(const at::Tensor& w, bool transpose, int64_t /*max_rows*/, int64_t /*uses*/) : wop(transpose ? w.t() : w) {}
  // out [>= n, cols(op(w))], a [>= n, rows(op(w))]: contiguous per-step buffers.
  void operator()(const at::Tensor& out, const at::Tensor& a, int64_t n, bool accumulate) const {
    at::Tensor o = out.narrow(0, 0, n);
    if (accumulate) {
      o.addmm_(a.narrow(0, 0, n), wop);
    } else {
      at::mm_out(o, a.narrow(0, 0, n), wop);
    }
  }
};

}  // namespace fastrnn
