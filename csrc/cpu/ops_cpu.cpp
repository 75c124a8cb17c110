// CPU kernels: the cell_math.h step functions over the rows x H pairs of each step with
// at::parallel_for, and the shared sequence loops of sequence.h registered for the CPU key.
//
// For float and double the math runs on at::vec::Vectorized lanes (consecutive hidden units of
// one row, SLEEF transcendentals), the remainder of a row and the 16-bit types one unit at a
// time: the same point functions either way, only the value type changes.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>

#include "fastrnn/cell_math.h"
#include "fastrnn/sequence.h"

namespace fastrnn {

template <typename S>
struct Lanes<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static constexpr int64_t width = V::size();
  static V load(const S* p) { return V::loadu(p); }
  static void store(S* p, const V& v) { v.store(p); }
  static V exp(const V& x) { return x.exp(); }
  static V tanh(const V& x) { return x.tanh(); }
};

namespace {

// Each pair costs a few transcendentals: split much finer than ATen's default grain.
constexpr int64_t kGrain = 4096;

template <typename scalar_t, template <typename, typename> class Point, typename Args>
void for_each_pair(const Args& a) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool vectorize = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t H = a.H;
  at::parallel_for(0, a.rows, std::max<int64_t>(1, kGrain / H), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t j = 0;
      if constexpr (vectorize) {
        for (; j + Vec::size() <= H; j += Vec::size()) Point<scalar_t, Vec>::run(a, r, j);
      }
      for (; j < H; ++j) Point<scalar_t, acc_t>::run(a, r, j);
    }
  });
}

// Adapters so a point function template can be passed as a template template argument.
#define FASTRNN_POINT(name)                                                      \
  template <typename T, typename V>                                              \
  struct name##_p {                                                              \
    template <typename Args>                                                     \
    static void run(const Args& a, int64_t r, int64_t j) { name<T, V>(a, r, j); } \
  };
FASTRNN_POINT(lstm_forward_point)
FASTRNN_POINT(lstm_backward_point)
FASTRNN_POINT(lstm_proj_commit_point)
FASTRNN_POINT(lstm_proj_backward_point)
FASTRNN_POINT(gru_forward_point)
FASTRNN_POINT(gru_backward_point)
#undef FASTRNN_POINT

struct CpuLaunch {
  template <typename T> static void lstm_forward(const LstmForwardStep<T>& a) { for_each_pair<T, lstm_forward_point_p>(a); }
  template <typename T> static void lstm_backward(const LstmBackwardStep<T>& a) { for_each_pair<T, lstm_backward_point_p>(a); }
  template <typename T> static void lstm_proj_commit(const LstmProjCommitStep<T>& a) { for_each_pair<T, lstm_proj_commit_point_p>(a); }
  template <typename T> static void lstm_proj_backward(const LstmProjBackwardStep<T>& a) { for_each_pair<T, lstm_proj_backward_point_p>(a); }
  template <typename T> static void gru_forward(const GruForwardStep<T>& a) { for_each_pair<T, gru_forward_point_p>(a); }
  template <typename T> static void gru_backward(const GruBackwardStep<T>& a) { for_each_pair<T, gru_backward_point_p>(a); }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward<CpuLaunch>);
  m.impl("lstm_backward", &lstm_backward<CpuLaunch>);
  m.impl("gru_forward", &gru_forward<CpuLaunch>);
  m.impl("gru_backward", &gru_backward<CpuLaunch>);
}

}  // namespace fastrnn
