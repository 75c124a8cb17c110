// The CPU recurrent GEMM: float weights packed once per call for MKL's packed GEMM
// (cblas_sgemm_pack / cblas_sgemm_compute), so the T per-step GEMMs stop re-packing the same
// 4H x H matrix (measured: about 30% off a B=64, H=512 step). The MKL functions are looked up at
// run time in the process (torch's x86 wheels link MKL and export them); where they are missing,
// and for other dtypes, it is AtenGemm.
#pragma once

#include <dlfcn.h>

#include <ATen/ATen.h>

#include "fastrnn/gemm.h"

namespace fastrnn {
namespace cpu {

struct MklPackApi {
  // MKL's CBLAS enums and LP64 MKL_INT (int).
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
  using GetSize = size_t (*)(int identifier, int m, int n, int k);
  using Pack = void (*)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                        int ld, float* dest);
  using Compute = void (*)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                           const float* b, int ldb, float beta, float* c, int ldc);
  GetSize get_size = nullptr;
  Pack pack = nullptr;
  Compute compute = nullptr;

  static const MklPackApi* get() {
    static const MklPackApi api = [] {
      MklPackApi a;
      a.get_size = reinterpret_cast<GetSize>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack_get_size"));
      a.pack = reinterpret_cast<Pack>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack"));
      a.compute = reinterpret_cast<Compute>(dlsym(RTLD_DEFAULT, "cblas_sgemm_compute"));
      return a;
    }();
    return api.get_size && api.pack && api.compute ? &api : nullptr;
  }
};

struct PackedGemm : AtenGemm {
  const MklPackApi* mkl = nullptr;
  Tensor packed;  // opaque MKL buffer holding op(w)
  int64_t n_cols = 0, k = 0;

  // Packing reads and writes w once; it pays from a few uses on (a single GEMV, as in
  // cell-by-cell generation, is cheaper without it).
  static constexpr int64_t kMinUses = 4;

  PackedGemm(const Tensor& w, bool transpose, int64_t max_rows, int64_t uses) : AtenGemm(w, transpose, max_rows, uses) {
    const auto limit = std::numeric_limits<int>::max();
    if (uses < kMinUses || w.scalar_type() != at::kFloat || !w.is_contiguous() || w.numel() >= limit ||
        max_rows >= limit) {
      return;
    }
    mkl = MklPackApi::get();
    if (mkl == nullptr) return;
    n_cols = wop.size(1);
    k = wop.size(0);
    // w is row-major [rows(w), cols(w)]; op(w) = w^T is w read transposed.
    const size_t bytes = mkl->get_size(MklPackApi::kBMatrix, int(max_rows), int(n_cols), int(k));
    packed = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, w.options());
    mkl->pack(MklPackApi::kRowMajor, MklPackApi::kBMatrix, transpose ? MklPackApi::kTrans : MklPackApi::kNoTrans,
              int(max_rows), int(n_cols), int(k), 1.0f, w.const_data_ptr<float>(), int(w.size(1)),
              packed.mutable_data_ptr<float>());
  }

  void operator()(const Tensor& out, const Tensor& a, int64_t n, bool accumulate) const {
    if (!packed.defined() || n == 0) return AtenGemm::operator()(out, a, n, accumulate);
    // out and a are contiguous [*, n_cols] / [*, k] buffers of the sequence loop.
    mkl->compute(MklPackApi::kRowMajor, MklPackApi::kNoTrans, MklPackApi::kPacked, int(n), int(n_cols), int(k),
                 a.const_data_ptr<float>(), int(k), packed.const_data_ptr<float>(), 0, accumulate ? 1.0f : 0.0f,
                 out.mutable_data_ptr<float>(), int(n_cols));
  }
};

}  // namespace cpu
}  // namespace fastrnn
