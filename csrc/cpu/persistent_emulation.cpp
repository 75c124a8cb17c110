// Host emulation of the persistent forward (fastrnn/persistent.h), for tests: the kernel's own
// phase functions run block by block and thread by thread, with the barriers as the boundaries
// between loops, so the partition, the indexing, the double-buffered state and the saved
// layout are checked against the step loop and the reference without a GPU. Not a fast path.
//
//   torch.ops.fastrnn._persistent_forward_emulated(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
//                                                  reverse, sms, threads)
//     -> (y, h_n, c_n, saved): the shapes of lstm_forward / gru_forward with save=True
//        (c0 None: a GRU, and c_n is empty); sms: the multiprocessors to partition H over.
#include <torch/library.h>

#include <limits>
#include <vector>

#include "fastrnn/persistent_host.h"

namespace fastrnn {
namespace {

template <typename T>
void emulate(const PersistentForwardArgs<T>& a, const PersistentPartition& part) {
  const int64_t GU = a.G * a.U, H = a.units, n = part.threads;
  std::vector<std::vector<T>> w(part.blocks, std::vector<T>(GU * H));
  std::vector<std::vector<at::opmath_type<T>>> pre(part.blocks, std::vector<at::opmath_type<T>>(a.B * GU));
  for (int64_t blk = 0; blk < part.blocks; ++blk) {
    for (int64_t tid = 0; tid < n; ++tid) persistent_load_weights(a, blk, tid, n, w[blk].data());
  }
  for (int64_t s = 0; s < a.T; ++s) {
    for (int64_t blk = 0; blk < part.blocks; ++blk) {  // then __syncthreads
      for (int64_t tid = 0; tid < n; ++tid) persistent_products(a, s, tid, n, w[blk].data(), pre[blk].data());
    }
    for (int64_t blk = 0; blk < part.blocks; ++blk) {  // then the grid barrier
      for (int64_t tid = 0; tid < n; ++tid) persistent_update(a, s, blk, tid, n, pre[blk].data());
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> persistent_forward_emulated(
    const Tensor& x, const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool reverse, int64_t sms,
    int64_t threads) {
  const int64_t G = c0.has_value() ? 4 : 3;
  ForwardPlan p(G == 4 ? "fastrnn::lstm_forward" : "fastrnn::gru_forward", G, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                std::nullopt, lengths, reverse, /*save=*/true);
  TORCH_CHECK_VALUE(threads >= 1, "threads must be >= 1, got ", threads);
  PersistentPartition part;
  part.threads = threads;
  const char* why = plan_persistent(G, p.d.H, p.d.P, p.d.B, int64_t(x.element_size()), sms,
                                    std::numeric_limits<int64_t>::max(), part);
  TORCH_CHECK_VALUE(why == nullptr, "cannot partition: ", why);
  run_persistent_forward(p, part, "cpu.persistent_emulation",
                         [](const auto& args, const PersistentPartition& pt) { emulate(args, pt); });
  const Tensor c_n = G == 4 ? p.sched.to_batch(p.c) : at::empty({0}, x.options());
  return {p.y, p.sched.to_batch(p.h), c_n, p.saved};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_persistent_forward_emulated(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths, bool reverse, int sms, int threads) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("_persistent_forward_emulated", &persistent_forward_emulated); }

}  // namespace fastrnn
