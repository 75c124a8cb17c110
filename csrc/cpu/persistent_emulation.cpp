// Host emulation of the persistent forward (fastrnn/persistent.h), for tests: the kernel's own
// phase functions run block by block and thread by thread, with the barriers as the boundaries
// between loops, so the partition, the indexing, the double-buffered state and the saved
// layout are checked against the step loop and the reference without a GPU. Not a fast path.
//
//   torch.ops.fastrnn._persistent_forward_emulated(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
//                                                  reverse, save, sms, threads, blockwise)
//     -> (y, h_n, c_n, saved): the outputs of lstm_forward / gru_forward (c0 None: a GRU, and
//        c_n is empty); sms: the multiprocessors to partition H over. Two schedules a GPU may
//        run: blockwise=False, every block's products before any block's update; True, each
//        block's products and update in turn, blocks in a shuffled order at every step.
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "fastrnn/persistent_host.h"

namespace fastrnn {
namespace {

template <typename T>
void emulate(const PersistentForwardArgs<T>& a, const PersistentPartition& part, bool blockwise) {
  const int64_t GU = a.G * a.U, H = a.units, n = part.threads;
  std::vector<std::vector<T>> w(part.blocks, std::vector<T>(GU * H));
  std::vector<std::vector<at::opmath_type<T>>> pre(part.blocks, std::vector<at::opmath_type<T>>(a.B * GU));
  for (int64_t blk = 0; blk < part.blocks; ++blk) {
    for (int64_t tid = 0; tid < n; ++tid) persistent_load_weights(a, blk, tid, n, w[blk].data());
  }
  const auto products = [&](int64_t s, int64_t blk) {  // then __syncthreads
    for (int64_t tid = 0; tid < n; ++tid) persistent_products(a, s, tid, n, w[blk].data(), pre[blk].data());
  };
  const auto update = [&](int64_t s, int64_t blk) {  // then the grid barrier
    for (int64_t tid = 0; tid < n; ++tid) persistent_update(a, s, blk, tid, n, pre[blk].data());
  };
  std::vector<int64_t> order(part.blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(1234);
  for (int64_t s = 0; s < a.T; ++s) {
    if (blockwise) {
      std::shuffle(order.begin(), order.end(), rng);
      for (const int64_t blk : order) {
        products(s, blk);
        update(s, blk);
      }
    } else {
      for (int64_t blk = 0; blk < part.blocks; ++blk) products(s, blk);
      for (int64_t blk = 0; blk < part.blocks; ++blk) update(s, blk);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> persistent_forward_emulated(
    const Tensor& x, const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool reverse, bool save, int64_t sms,
    int64_t threads, bool blockwise) {
  const CellInfo& cell = c0.has_value() ? kLstmCell : kGruCell;
  ForwardPlan p(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse, save);
  TORCH_CHECK_VALUE(threads >= 1, "threads must be >= 1, got ", threads);
  PersistentPartition part;
  part.threads = threads;
  const char* why = plan_persistent(p.G, p.d.H, p.d.P, p.d.B, int64_t(x.element_size()), sms,
                                    std::numeric_limits<int64_t>::max(), part);
  TORCH_CHECK_VALUE(why == nullptr, "cannot partition: ", why);
  run_persistent_forward(p, part, "cpu.persistent_emulation",
                         [blockwise](const auto& args, const PersistentPartition& pt) -> const char* {
                           emulate(args, pt, blockwise);
                           return nullptr;
                         });
  const Tensor c_n = cell.has_cell_state() ? p.sched.to_batch(p.c) : at::empty({0}, x.options());
  return {p.y, p.sched.to_batch(p.h), c_n, p.saved};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_persistent_forward_emulated(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths, bool reverse, bool save, int sms, int threads, bool blockwise) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("_persistent_forward_emulated", &persistent_forward_emulated); }

}  // namespace fastrnn
