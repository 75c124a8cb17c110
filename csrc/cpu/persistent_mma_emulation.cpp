// Host emulation of the tensor-core persistent forward and backward (fastrnn/persistent_mma.h,
// persistent_mma_bwd.h), for tests: the
// kernel's own host-callable pieces (weight fragments, per-lane fragment loads and stores through
// mma_layout.h's maps, the reduction, the cell update) run CTA by CTA with a warp-level MMA
// emulated through the same maps, and the CTAs are interleaved at the granularity of the kernel's
// phases under the step-counter protocol, in an order the test picks:
//
//   lockstep  every CTA's phase before any CTA's next phase (what a grid barrier would allow)
//   random    a uniformly random runnable CTA at each phase
//   ahead     the runnable CTA furthest along (a CTA races ahead as far as the protocol allows)
//
// A shadow array records which step's h each element of the two state buffers holds; a CTA that
// reads anything but h_{s-1} at iteration s raises, naming the element, and a schedule in which
// no CTA can run raises as a deadlock. `wait_slack` > 0 weakens the wait (n_CTA * s - slack),
// which the tests use to show that the check catches a broken protocol.
//
//   torch.ops.fastrnn._persistent_mma_forward_emulated(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
//       reverse, save, split, order, seed, wait_slack) -> (y, h_n, c_n, saved)
//
//   torch.ops.fastrnn._persistent_mma_backward_emulated(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, ws,
//       lengths, reverse, has_bias, split, ctas, order, seed, wait_slack)
//       -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
//
// As in lstm_forward / gru_forward and their backwards (c0 None: a GRU, c_n / dc0 empty; ctas:
// the resident CTAs the backward's partition may use, which sets its batch groups; the same
// protocol per batch group, with its own counter). float64 multiplies exactly (the fragments'
// plumbing against the step loop at 1e-12); float32 rounds the operands to TF32, split hi/lo
// when `split`; bfloat16 / float16 multiply as stored, accumulating in float.
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fastrnn/persistent_host.h"
#include "fastrnn/persistent_mma.h"
#include "fastrnn/persistent_mma_bwd.h"

namespace fastrnn {
namespace {

enum class Order { kLockstep, kRandom, kAhead };

// Runs n CTAs, each through `iterations` iterations of four phases — 0: wait, 1-3: run(c, i,
// phase) — interleaved in `order`. CTA c may leave phase 0 of iteration i > 0 only when
// ready(c, i) (the counter protocol). Raises when no CTA can run and not all have finished.
// One lane's operand values as the MMAs take them: their hi parts, and for the fp32 split their lo
// parts (zeros otherwise, so the cross terms add nothing).
template <typename T, typename Acc, size_t N>
void split_operand(const T (&v)[N], bool split, Acc (&hi)[N], Acc (&lo)[N]) {
  using Op = MmaOperand<T>;
  for (size_t i = 0; i < N; ++i) {
    const T h = Op::hi(v[i]);
    hi[i] = Acc(h);
    lo[i] = sizeof(T) == 4 && split ? Acc(Op::lo(v[i], h)) : Acc(0);
  }
}

template <class Ready, class Run>
void interleave(const char* what, int64_t n, int64_t iterations, Order order, int64_t seed, Ready&& ready, Run&& run) {
  std::vector<int64_t> step(n, 0), phase(n, 0);
  const auto runnable = [&](int64_t c) {
    if (step[c] >= iterations) return false;
    return phase[c] != 0 || step[c] == 0 || bool(ready(c, step[c]));
  };
  std::mt19937_64 rng{static_cast<uint64_t>(seed)};
  std::vector<int64_t> ready_ctas;
  for (;;) {
    ready_ctas.clear();
    for (int64_t c = 0; c < n; ++c) {
      if (runnable(c)) ready_ctas.push_back(c);
    }
    if (ready_ctas.empty()) {
      const bool done = std::all_of(step.begin(), step.end(), [&](int64_t s) { return s >= iterations; });
      TORCH_CHECK(done, "emulated persistent ", what, ": deadlock (no CTA can run, not all finished)");
      return;
    }
    int64_t c = ready_ctas[0];
    if (order == Order::kRandom) {
      c = ready_ctas[std::uniform_int_distribution<size_t>(0, ready_ctas.size() - 1)(rng)];
    } else {
      // lockstep: the least advanced first (lowest index among equals); ahead: the most advanced,
      // ties broken at random so that every CTA gets to be the one racing ahead
      std::shuffle(ready_ctas.begin(), ready_ctas.end(), rng);
      const auto key = [&](int64_t x) { return step[x] * 4 + phase[x]; };
      for (const int64_t x : ready_ctas) {
        const bool better = order == Order::kAhead ? key(x) > key(c)
                                                   : (key(x) < key(c) || (key(x) == key(c) && x < c));
        if (better) c = x;
      }
    }
    if (phase[c] > 0) run(c, step[c], int(phase[c]));
    if (++phase[c] == 4) {
      phase[c] = 0;
      ++step[c];
    }
  }
}

template <typename T>
void emulate(const PersistentMmaArgs<T>& a, const MmaPartition& part, Order order, int64_t seed, int64_t slack) {
  using Acc = at::opmath_type<T>;
  using S = MmaShape<T>;
  constexpr int kBytes = sizeof(T) == 2 ? 2 : 4;
  const int64_t n = part.ctas, nthreads = part.threads, H = a.units, GU = a.G * a.U;
  const int64_t nw = a.ktiles * 32 * S::kA;  // weight fragment elements (one copy)
  std::vector<std::vector<T>> wf(n, std::vector<T>(sizeof(T) == 4 ? 2 * nw : nw));
  std::vector<std::vector<Acc>> partial(n, std::vector<Acc>(a.kslices * a.ntiles * mma::kN * mma::kM));
  std::vector<std::vector<Acc>> pre(n, std::vector<Acc>(a.B * GU));
  std::vector<std::vector<T>> stage(n, std::vector<T>(a.B * a.ldh));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t tid = 0; tid < nthreads; ++tid) {
      mma_load_weights(a, c, tid, nthreads, wf[c].data());
      mma_zero_stage(a, tid, nthreads, stage[c].data());
    }
  }
  std::vector<int64_t> version[2] = {std::vector<int64_t>(a.B * H, -1), std::vector<int64_t>(a.B * H, -2)};
  uint64_t counter = 0;

  // Phase 1 of CTA c at iteration s: the staging copy of h_{s-1}, then every warp's items
  // k-tile by k-tile, in the device's accumulator chains (dh by k-tile parity: hi * hi; dx: the
  // fp32 split's cross terms, lo * hi then hi * lo).
  const auto products = [&](int64_t c, int64_t s) {
    const std::vector<int64_t>& v = version[s & 1];
    for (int64_t i = 0; i < a.B * H; ++i) {
      TORCH_CHECK(v[i] == s - 1, "emulated persistent forward: CTA ", c, " read h[", i / H, ", ", i % H,
                  "] of step ", v[i], " at iteration ", s, " (it needs step ", s - 1,
                  "): the step protocol let it read too early or let another CTA overwrite it");
    }
    T* hs = stage[c].data();
    for (int64_t tid = 0; tid < nthreads; ++tid) mma_stage_h(a, (s & 1) ? a.h[1] : a.h[0], tid, nthreads, hs);
    const T* w = wf[c].data();
    for (int64_t warp = 0; warp < kMmaWarps; ++warp) {
      for (int64_t item = warp; item < a.ntiles * a.kslices; item += kMmaWarps) {
        const int64_t nt = item % a.ntiles, ks = item / a.ntiles;
        int64_t kt0, kt1;
        mma_slice(a.ktiles, a.kslices, ks, kt0, kt1);
        Acc dh[2][32][mma::kC] = {}, dx[2][32][mma::kC] = {};
        for (int64_t kt = kt0; kt < kt1; ++kt) {
          const int64_t par = (kt - kt0) & 1;
          Acc ah[32][S::kA], al[32][S::kA], bh[32][S::kB], bl[32][S::kB];
          for (int lane = 0; lane < 32; ++lane) {
            for (int i = 0; i < S::kA; ++i) {
              ah[lane][i] = Acc(w[(kt * 32 + lane) * S::kA + i]);
              al[lane][i] = sizeof(T) == 4 ? Acc(w[nw + (kt * 32 + lane) * S::kA + i]) : Acc(0);
            }
            T b[S::kB];
            mma_load_b(a, hs, nt, kt, lane, b);
            split_operand(b, a.split, bh[lane], bl[lane]);
          }
          if (sizeof(T) == 4 && a.split) {
            mma::emulate_warp_mma<kBytes, Acc>(al, bh, dx[par]);
            mma::emulate_warp_mma<kBytes, Acc>(ah, bl, dx[par]);
          }
          mma::emulate_warp_mma<kBytes, Acc>(ah, bh, dh[par]);
        }
        for (int lane = 0; lane < 32; ++lane) {
          Acc d[mma::kC];
          for (int i = 0; i < mma::kC; ++i) d[i] = (dh[0][lane][i] + dh[1][lane][i]) + (dx[0][lane][i] + dx[1][lane][i]);
          mma_store_partial(a.ntiles, nt, ks, lane, d, partial[c].data());
        }
      }
    }
  };
  // Phase 2: the reduction and the cell update; the state buffer then holds step s in c's units.
  const auto update = [&](int64_t c, int64_t s) {
    for (int64_t tid = 0; tid < nthreads; ++tid) mma_reduce(a, tid, nthreads, partial[c].data(), pre[c].data());
    for (int64_t tid = 0; tid < nthreads; ++tid) persistent_update(a, s, c, tid, nthreads, pre[c].data());
    std::vector<int64_t>& v = version[(s + 1) & 1];
    for (int64_t r = 0; r < a.B; ++r) {
      for (int64_t j = c * a.U; j < std::min((c + 1) * a.U, H); ++j) v[r * H + j] = s;
    }
  };

  // Phases: 0 wait for h_{s-1}, 1 products, 2 reduce + update, 3 publish (counter += 1).
  interleave("forward", n, a.T, order, seed, [&](int64_t, int64_t s) { return int64_t(counter) >= n * s - slack; },
             [&](int64_t c, int64_t s, int phase) {
               if (phase == 1) products(c, s);
               if (phase == 2) update(c, s);
               if (phase == 3) ++counter;
             });
}

Order parse_order(c10::string_view order) {
  TORCH_CHECK_VALUE(order == "lockstep" || order == "random" || order == "ahead",
                    "order must be 'lockstep', 'random' or 'ahead', got '", order, "'");
  return order == "lockstep" ? Order::kLockstep : (order == "random" ? Order::kRandom : Order::kAhead);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> persistent_mma_forward_emulated(
    const Tensor& x, const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool reverse, bool save, bool split,
    c10::string_view order, int64_t seed, int64_t wait_slack) {
  const CellInfo& cell = c0.has_value() ? kLstmCell : kGruCell;
  ForwardPlan p(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse, save);
  const int64_t G = p.G;
  const Order o = parse_order(order);
  MmaPartition mp;
  const int64_t big = std::numeric_limits<int32_t>::max();
  const char* why = plan_persistent_mma(G, p.d.H, p.d.B, int64_t(x.element_size()), big, 1, big, mp);
  TORCH_CHECK_VALUE(why == nullptr, "cannot partition: ", why);
  run_persistent_forward(p, as_persistent_partition(mp), "cpu.persistent_mma_emulation",
                         [&](const auto& args, const PersistentPartition&) -> const char* {
                           using T = typename std::decay_t<decltype(args)>::scalar_type;
                           const PersistentMmaArgs<T> m = mma_args(args, mp, split, nullptr);
                           emulate(m, mp, o, seed, wait_slack);
                           return nullptr;
                         });
  const Tensor c_n = cell.has_cell_state() ? p.sched.to_batch(p.c) : at::empty({0}, x.options());
  return {p.y, p.sched.to_batch(p.h), c_n, p.saved};
}

// The backward (fastrnn/persistent_mma_bwd.h): CTA c is unit group c % unit_groups of batch group
// c / unit_groups; iteration q runs s = T - 1 - q, and q = T is the final products (dh0). The
// shadow record holds, per element of the two [B, G*H] grad buffers, the iteration that wrote it;
// a CTA reading anything but iteration s + 1's grads at iteration s raises.
template <typename T>
void emulate_backward(const PersistentMmaBwdArgs<T>& a, const MmaBwdPartition& part, Order order, int64_t seed,
                      int64_t slack) {
  using Acc = at::opmath_type<T>;
  using S = MmaShape<T>;
  constexpr int kBytes = sizeof(T) == 2 ? 2 : 4;
  const int64_t n = part.ctas, nthreads = part.threads, B = a.common.B, steps = a.common.T, K = a.G * a.H;
  const int64_t ugs = a.unit_groups, rows = a.tiles * mma::kN, nw = a.ktiles * 32 * S::kA;
  std::vector<std::vector<T>> wf(n, std::vector<T>(nw));
  std::vector<std::vector<Acc>> partial(n, std::vector<Acc>(a.kslices * rows * mma::kM));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t tid = 0; tid < nthreads; ++tid) mma_bwd_load_weights(a, c % ugs, tid, nthreads, wf[c].data());
  }
  std::vector<int64_t> version[2] = {std::vector<int64_t>(B * K, steps + 1), std::vector<int64_t>(B * K, steps + 2)};
  std::vector<uint64_t> counters(part.batch_groups, 0);

  // Phase 1: every warp's items k-tile by k-tile in the device's accumulator chains (as the
  // forward's; fp32 splits both operands at the MMA), then the reduction into dh.
  const auto products = [&](int64_t c, int64_t s) {
    const int64_t ug = c % ugs, gb = c / ugs;
    const T* src = ((s + 1) & 1) ? a.dstep[1] : a.dstep[0];
    const std::vector<int64_t>& v = version[(s + 1) & 1];
    const T* w = wf[c].data();
    for (int64_t warp = 0; warp < kMmaWarps; ++warp) {
      for (int64_t item = warp; item < a.tiles * a.kslices; item += kMmaWarps) {
        const int64_t lt = item % a.tiles, ks = item / a.tiles, nt = gb * a.tiles + lt;
        if (nt >= a.ntiles || !mma_bwd_tile_needed(a, s, nt)) continue;
        for (int64_t r = nt * mma::kN; r < std::min((nt + 1) * mma::kN, B); ++r) {
          for (int64_t k = 0; k < K; ++k) {
            TORCH_CHECK(v[r * K + k] == s + 1, "emulated persistent backward: CTA ", c, " read dgates[", r, ", ", k,
                        "] of iteration ", v[r * K + k], " at iteration ", s, " (it needs iteration ", s + 1,
                        "): the step protocol let it read too early or let another CTA overwrite it");
          }
        }
        int64_t kt0, kt1;
        mma_slice(a.ktiles, a.kslices, ks, kt0, kt1);
        Acc dh[2][32][mma::kC] = {}, dx[2][32][mma::kC] = {};
        for (int64_t kt = kt0; kt < kt1; ++kt) {
          const int64_t par = (kt - kt0) & 1;
          Acc ah[32][S::kA], al[32][S::kA], bh[32][S::kB], bl[32][S::kB];
          for (int lane = 0; lane < 32; ++lane) {
            T x[S::kA];
            for (int i = 0; i < S::kA; ++i) x[i] = w[(kt * 32 + lane) * S::kA + i];
            split_operand(x, a.split, ah[lane], al[lane]);
            T b[S::kB];
            mma_bwd_load_b(a, src, nt, kt, lane, b);
            split_operand(b, a.split, bh[lane], bl[lane]);
          }
          if (sizeof(T) == 4 && a.split) {
            mma::emulate_warp_mma<kBytes, Acc>(al, bh, dx[par]);
            mma::emulate_warp_mma<kBytes, Acc>(ah, bl, dx[par]);
          }
          mma::emulate_warp_mma<kBytes, Acc>(ah, bh, dh[par]);
        }
        for (int lane = 0; lane < 32; ++lane) {
          Acc d[mma::kC];
          for (int i = 0; i < mma::kC; ++i) d[i] = (dh[0][lane][i] + dh[1][lane][i]) + (dx[0][lane][i] + dx[1][lane][i]);
          mma_store_partial(a.tiles, lt, ks, lane, d, partial[c].data());
        }
      }
    }
    for (int64_t tid = 0; tid < nthreads; ++tid) mma_bwd_reduce(a, s, ug, gb, tid, nthreads, partial[c].data());
  };
  // Phase 2: the cell backward; the grad buffer of iteration s then holds s in c's rows and units.
  const auto update = [&](int64_t c, int64_t s) {
    const int64_t ug = c % ugs, gb = c / ugs;
    for (int64_t tid = 0; tid < nthreads; ++tid) mma_bwd_update(a, s, ug, gb, tid, nthreads);
    std::vector<int64_t>& v = version[s & 1];
    for (int64_t r = gb * rows; r < std::min((gb + 1) * rows, B); ++r) {
      for (int64_t j = ug * mma::kM; j < std::min((ug + 1) * mma::kM, a.H); ++j) {
        for (int64_t g = 0; g < a.G; ++g) v[r * K + g * a.H + j] = s;
      }
    }
  };
  // Phases: 0 wait for iteration s + 1 of the batch group, 1 products (none at the first
  // iteration), 2 cell backward, 3 publish; the final iteration (s = -1) only multiplies.
  interleave("backward", n, steps + 1, order, seed,
             [&](int64_t c, int64_t q) { return int64_t(counters[c / ugs]) >= ugs * q - slack; },
             [&](int64_t c, int64_t q, int phase) {
               const int64_t s = steps - 1 - q;
               if (phase == 1 && q > 0) products(c, s);
               if (phase == 2 && s >= 0) update(c, s);
               if (phase == 3 && s >= 0) ++counters[c / ugs];
             });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> persistent_mma_backward_emulated(
    const Tensor& dy, const Tensor& dh_n, const OptTensor& dc_n, const Tensor& x, const Tensor& h0, const OptTensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& y, const Tensor& ws, const OptTensor& lengths, bool reverse,
    bool has_bias, bool split, int64_t ctas, c10::string_view order, int64_t seed, int64_t wait_slack) {
  const CellInfo& cell = c0.has_value() ? kLstmCell : kGruCell;
  BackwardPlan p(cell, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, std::nullopt, y, ws, lengths,
                 reverse, has_bias);
  const Order o = parse_order(order);
  MmaBwdPartition mp;
  const int64_t big = std::numeric_limits<int32_t>::max();
  const char* why = plan_persistent_mma_bwd(p.G, p.d.H, p.d.B, int64_t(x.element_size()), ctas, 1, big, mp);
  TORCH_CHECK_VALUE(why == nullptr, "cannot partition: ", why);
  run_persistent_backward(p, mp, split, "cpu.persistent_mma_emulation", [&](const auto& args) -> const char* {
    emulate_backward(args, mp, o, seed, wait_slack);
    return nullptr;
  });
  const auto [db_ih, db_hh] = p.bias_grads();
  const Tensor dc0 = cell.has_cell_state() ? p.sched.to_batch(p.dc) : at::empty({0}, x.options());
  return {p.dx, p.sched.to_batch(p.dh), dc0, p.dw_ih, p.dw_hh, db_ih, db_hh};
}

// The backward's partition for a device of `ctas` resident CTAs: (unit groups, batch groups,
// tiles a CTA, k-slices), for the tests.
std::vector<int64_t> mma_backward_partition(c10::string_view cell, int64_t H, int64_t B, at::ScalarType dtype,
                                            int64_t ctas) {
  const CellInfo* info = find_cell(std::string(cell).c_str());
  TORCH_CHECK_VALUE(info != nullptr, "cell must be 'lstm' or 'gru', got '", cell, "'");
  MmaBwdPartition mp;
  const char* why = plan_persistent_mma_bwd(info->gates, H, B, int64_t(c10::elementSize(dtype)), ctas, 1,
                                            std::numeric_limits<int32_t>::max(), mp);
  TORCH_CHECK_VALUE(why == nullptr, "cannot partition: ", why);
  return {mp.unit_groups, mp.batch_groups, mp.tiles, mp.kslices};
}

// The fragment maps of mma_layout.h as a [32, elements, 2] tensor of (row, col) by lane and
// element, for the tests to hold against the PTX ISA's tables.
Tensor mma_fragment_map(c10::string_view which) {
  mma::RowCol (*f)(int, int) = nullptr;
  int n = 0;
  if (which == "a_m16n8k16") f = mma::a_m16n8k16, n = 8;
  if (which == "b_m16n8k16") f = mma::b_m16n8k16, n = 4;
  if (which == "a_m16n8k8") f = mma::a_m16n8k8, n = 4;
  if (which == "b_m16n8k8") f = mma::b_m16n8k8, n = 2;
  if (which == "c_m16n8") f = mma::c_m16n8, n = 4;
  TORCH_CHECK_VALUE(f != nullptr, "unknown fragment '", which, "'");
  Tensor out = at::empty({32, n, 2}, at::kLong);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < n; ++i, o += 2) {
      const mma::RowCol rc = f(lane, i);
      o[0] = rc.row;
      o[1] = rc.col;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_mma_fragment_map(str which) -> Tensor", &mma_fragment_map);
  m.def("_persistent_mma_forward_emulated(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths, bool reverse, bool save, bool split, str order, int seed, int wait_slack) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_persistent_mma_backward_emulated(Tensor dy, Tensor dh_n, Tensor? dc_n, Tensor x, Tensor h0, Tensor? c0, "
        "Tensor w_ih, Tensor w_hh, Tensor y, Tensor ws, Tensor? lengths, bool reverse, bool has_bias, bool split, "
        "int ctas, str order, int seed, int wait_slack) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_persistent_mma_backward_partition(str cell, int H, int B, ScalarType dtype, int ctas) -> int[]",
        &mma_backward_partition);
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("_persistent_mma_forward_emulated", &persistent_mma_forward_emulated);
  m.impl("_persistent_mma_backward_emulated", &persistent_mma_backward_emulated);
}

}  // namespace fastrnn
