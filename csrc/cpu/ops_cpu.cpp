// CPU kernels: the cell_math.h step functions over all B x H pairs with at::parallel_for, and
// the shared sequence loops of sequence.h registered for the CPU dispatch key.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrnn/cell_math.h"
#include "fastrnn/sequence.h"

namespace fastrnn {
namespace {

// Each pair costs a few transcendentals: split finer than ATen's default grain.
constexpr int64_t kGrain = 2048;

template <typename Args, typename Fn>
void for_each_pair(const Args& a, Fn fn) {
  at::parallel_for(0, a.B * a.H, kGrain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / a.H, j = begin % a.H;
    for (int64_t i = begin; i < end; ++i) {
      fn(a, b, j);
      if (++j == a.H) j = 0, ++b;
    }
  });
}

struct CpuLaunch {
  template <typename T> static void lstm_forward(const LstmForwardStep<T>& a) { for_each_pair(a, lstm_forward_point<T>); }
  template <typename T> static void lstm_backward(const LstmBackwardStep<T>& a) { for_each_pair(a, lstm_backward_point<T>); }
  template <typename T> static void lstm_proj_commit(const LstmProjCommitStep<T>& a) { for_each_pair(a, lstm_proj_commit_point<T>); }
  template <typename T> static void lstm_proj_backward(const LstmProjBackwardStep<T>& a) { for_each_pair(a, lstm_proj_backward_point<T>); }
  template <typename T> static void gru_forward(const GruForwardStep<T>& a) { for_each_pair(a, gru_forward_point<T>); }
  template <typename T> static void gru_backward(const GruBackwardStep<T>& a) { for_each_pair(a, gru_backward_point<T>); }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLaunch>);
  m.impl("lstm_backward", &lstm_backward<CpuLaunch>);
  m.impl("gru_forward", &gru_forward<CpuLaunch>);
  m.impl("gru_backward", &gru_backward<CpuLaunch>);
}

}  // namespace fastrnn
