// The persistent CPU recurrence: one OpenMP parallel region covers all T steps of a forward
// layer call. docs/DESIGN.md ("The persistent CPU recurrence") is the long form.
//
// - Threads split the hidden units in chunks of kUnitChunk; thread k owns units [u0, u0 + U)
//   with all G of their gates, so its cell math needs nothing another thread computes.
// - Each thread packs its G*U rows of W_hh once per call into panels of its micro-kernel (W
//   units x the G gates, k-major) and keeps them, in its own cache, for all T steps.
// - Per step it computes its [rows x G*U] block of h_{s-1} W_hh^T a group of kUnitChunk units at
//   a time with a register-blocked micro-kernel (MR rows x G vectors of accumulators), then runs
//   the cell math (cell_math.h) on that group while it is in L1: pre-activations = the plan's
//   input projection (in `saved`'s gate columns, as the step loop reads it) + the products;
//   writes c, h_s, y and saved exactly as the step loop does. Then one spinning barrier: h_s must
//   be complete before any thread starts step s + 1.
// - h lives in two [B, P] buffers in the opmath type (read s % 2, write the other), so no thread
//   overwrites what another still reads; half / bfloat16 round each h_s to their type before
//   storing it, as the step loop's state is kept in that type.
// - Lengths: the plan's host-sorted schedule, so step s runs only its active prefix of rows.
#include "persistent_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <sched.h>

#include "fastrnn/path_log.h"
#include "fastrnn/recurrence_mode.h"
#include "fastrnn/step_loop.h"
#include "simd.h"

namespace fastrnn {
namespace cpu {
namespace {

// Units are handed to threads in chunks of the pointwise SIMD width, so only a thread's last
// chunk has a scalar tail.
constexpr int64_t kUnitChunk = cpu::kLanes;
// The block of K one pass of the micro-kernel covers (see run_thread).
constexpr int64_t kKBlock = 64;

// ---- Micro-kernels: C[mr, G*W] = A[mr, K] * Panel[K, G*W] for mr <= MR: A rows lda apart, the
// panel k-major (G*W values per k: W consecutive units of each of the G gates), so accumulator
// (r, q) is gate q of W units of row r and the tile holds every gate the cell math of those
// units needs. Vector q of row r is stored at c + r * ldr + q * ldq. Written on GCC vector
// types: they compile to zmm, ymm or xmm registers in the per-ISA entry points below, and GCC
// contracts a * b + c into FMA where the ISA has it.
template <typename A, int Bytes, int G_, int MR_>
struct Micro {
  typedef A V __attribute__((vector_size(Bytes)));
  static constexpr int W = Bytes / int(sizeof(A));
  static constexpr int G = G_, MR = MR_, NR = G_ * W;

  // One k of the product into one set of accumulators.
  template <int mr>
  FASTRNN_INLINE static void fma_k(V (&acc)[mr][G], const A* a, int64_t lda, int64_t k, const A* panel) {
    V b[G];
#pragma GCC unroll 8
    for (int q = 0; q < G; ++q) std::memcpy(&b[q], panel + k * NR + q * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
      const A x = a[r * lda + k];
#pragma GCC unroll 8
      for (int q = 0; q < G; ++q) acc[r][q] += x * b[q];
    }
  }

  // accumulate: add to what c holds (a later block of K) instead of overwriting it.
  // A short tile (one row: G chains) cannot cover the FMA latency (~4 cycles, 2 FMAs a cycle:
  // 8 chains in flight), so it keeps S sets of accumulators on interleaved k, summed at the end.
  template <int mr>
  FASTRNN_INLINE static void tile(const A* a, int64_t lda, int64_t K, const A* panel, A* c, int64_t ldr,
                                  int64_t ldq, bool accumulate) {
    constexpr int S = mr * G >= 8 ? 1 : (8 + mr * G - 1) / (mr * G);
    V acc[S][mr][G];
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
#pragma GCC unroll 8
      for (int q = 0; q < G; ++q) {
        if (accumulate) {
          std::memcpy(&acc[0][r][q], c + r * ldr + q * ldq, sizeof(V));
        } else {
          acc[0][r][q] = V{};
        }
#pragma GCC unroll 8
        for (int t = 1; t < S; ++t) acc[t][r][q] = V{};
      }
    }
    int64_t k = 0;
    if constexpr (S > 1) {
      for (; k + S <= K; k += S) {
#pragma GCC unroll 8
        for (int t = 0; t < S; ++t) fma_k<mr>(acc[t], a, lda, k + t, panel);
      }
    }
    for (; k < K; ++k) fma_k<mr>(acc[0], a, lda, k, panel);
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
#pragma GCC unroll 8
      for (int q = 0; q < G; ++q) {
#pragma GCC unroll 8
        for (int t = 1; t < S; ++t) acc[0][r][q] += acc[t][r][q];
        std::memcpy(c + r * ldr + q * ldq, &acc[0][r][q], sizeof(V));
      }
    }
  }

  FASTRNN_INLINE static void tile_rows(int mr, const A* a, int64_t lda, int64_t K, const A* panel, A* c,
                                       int64_t ldr, int64_t ldq, bool accumulate) {
    static_assert(MR_ <= 8, "tile_rows dispatches up to 8 rows");
    switch (mr) {
#define FASTRNN_TILE_CASE(m) \
  case m: return tile<(MR_ >= m ? m : 1)>(a, lda, K, panel, c, ldr, ldq, accumulate);
      FASTRNN_TILE_CASE(2)
      FASTRNN_TILE_CASE(3)
      FASTRNN_TILE_CASE(4)
      FASTRNN_TILE_CASE(5)
      FASTRNN_TILE_CASE(6)
      FASTRNN_TILE_CASE(7)
      FASTRNN_TILE_CASE(8)
#undef FASTRNN_TILE_CASE
      default: return tile<1>(a, lda, K, panel, c, ldr, ldq, accumulate);
    }
  }
};

// Register blocking per ISA: MR * G accumulators + G panel vectors + 1 broadcast fit the
// registers, MR as large as that allows (each broadcast feeds G FMAs, each panel load MR):
//   AVX-512 (32 zmm): 24 accumulators, 6 rows (LSTM) / 8 rows (GRU) of 16 floats x G gates;
//   AVX2 + FMA (16 ymm): 12, 3 / 4 rows of 8 floats (LSTM needs 17 registers: one panel vector
//     stays a memory operand; 6 rows x 2 gates a pass, which fits, measured no faster);
//   baseline (SSE2, no FMA; 16 xmm): 8 / 6, 2 rows of 4 floats.
template <typename A, int G>
using MicroAvx512 = Micro<A, 64, G, 24 / G>;
template <typename A, int G>
using MicroAvx2 = Micro<A, 32, G, 12 / G>;
template <typename A, int G>
using MicroBase = Micro<A, 16, G, 2>;

// ---- The per-step barrier: a counter and a generation word, spinning (pause) and, past a
// bound, yielding the core (a descheduled partner on a shared machine would otherwise cost a
// whole time slice of spinning). The bound, 2048 pauses, is ~30-100 us (a pause takes 40-140
// cycles depending on the core): longer than a step's imbalance on a quiet machine, shorter than
// a step at the small shapes (a 16k bound made the small config 10x slower on a loaded VM).
struct SpinBarrier {
  alignas(64) std::atomic<int> count{0};
  alignas(64) std::atomic<int> generation{0};
  static constexpr int kSpinsBeforeYield = 1 << 11;

  void wait(int n) {
    if (n == 1) return;
    const int g = generation.load(std::memory_order_relaxed);
    if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count.store(0, std::memory_order_relaxed);  // ordered before the release below
      generation.store(g + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation.load(std::memory_order_acquire) == g; ++spins) {
      if (spins < kSpinsBeforeYield) {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#endif
      } else {
        sched_yield();
      }
    }
  }
};

// A thread's scratch (its packed W_hh slice and gate buffer): 64-byte aligned, allocated by the
// thread itself (first touch on its core) and kept by it for the next call. A fresh buffer per
// call came as fresh pages from the OS: zeroing them took ~18% of the CPU time of a T = 40,
// B = 8, H = 256 LSTM forward. Grows to the largest call's need; a call needing under a quarter
// of what is held gives the rest back. nullptr when the allocation fails.
template <typename A>
A* thread_scratch(int64_t n) {
  struct Held {
    void* p = nullptr;
    size_t bytes = 0;
    ~Held() { std::free(p); }
  };
  thread_local Held held;
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(A) + 63) / 64 * 64;
  if (bytes > held.bytes || bytes < held.bytes / 4) {
    std::free(held.p);
    held.p = std::aligned_alloc(64, bytes);
    held.bytes = held.p != nullptr ? bytes : 0;
  }
  return static_cast<A*>(held.p);
}

// What every thread of a call shares. T: storage type; A: opmath type.
template <typename T>
struct Shared {
  using A = at::opmath_type<T>;
  int64_t G, H, K, B, steps;  // K: width of h (= H, no projection); steps: T
  bool reverse;
  const int64_t* lengths;     // [B] by entry, or nullptr (all T)
  const int64_t* order;       // [B] row -> entry, or nullptr
  const int64_t* active;      // [T] rows active at each step, or nullptr (all B)
  const T* w_hh;              // [G*H, K] row-major
  const T* xproj;             // [T*B, G*H] positions xstride apart: x W_ih^T + input biases
  int64_t xstride;
  const T* b_hn;              // GRU: [H] or nullptr
  T* y;                       // [T, B, H]
  T* saved;                   // [T, B, saved width] or nullptr
  int64_t saved_width;
  T* c;                       // LSTM: [B, H] by row, updated in place
  A* hbuf[2];                 // [B, K] by row: h_{s-1} is hbuf[s % 2], h_s goes to the other
  SpinBarrier* barrier;
  std::atomic<bool>* failed;  // a thread could not allocate its buffers
};

// The units of thread tid of nt.
struct Slice {
  int64_t u0, U;
};
inline Slice slice_of(int64_t H, int tid, int nt) {
  const int64_t chunks = (H + kUnitChunk - 1) / kUnitChunk;
  const int64_t c0 = chunks * tid / nt, c1 = chunks * (tid + 1) / nt;
  const int64_t u0 = std::min(H, c0 * kUnitChunk), u1 = std::min(H, c1 * kUnitChunk);
  return {u0, u1 - u0};
}

// Stores a new h value into the opmath state buffer, rounded to T first (half / bfloat16: the
// state the step loop carries is in T).
template <typename T, typename V>
FASTRNN_INLINE void store_state(at::opmath_type<T>* p, V v) {
  using A = at::opmath_type<T>;
  if constexpr (std::is_same_v<T, A>) {
    Lanes<V>::store(p, v);
  } else {
    *p = static_cast<A>(static_cast<T>(v));
  }
}

// ---- The cell math over one row of a thread's tile. g: the row's gate block (gate q of local
// unit jj at g[q * ld_gate + jj]); h_in / h_out: the row in the state buffers.
// Traits: the cell's table (cell_traits.h): gate blocks, saved layout and store.
struct LstmUnits {
  using Traits = LstmCell;
  static constexpr int G = int(Traits::kGates);
  template <typename V, typename T>
  FASTRNN_INLINE static void unit(const Shared<T>& sh, const at::opmath_type<T>* g, int64_t ld_gate, int64_t r,
                                  int64_t tb, int64_t u, int64_t jj, const at::opmath_type<T>*,
                                  at::opmath_type<T>* h_out) {
    using L = Lanes<V>;
    const int64_t H = sh.H;
    const T* xp = sh.xproj + tb * sh.xstride + u;
    // gate q's pre-activation: its input projection + its recurrent product
    const auto pre = [&](int64_t q) { return L::load(xp + q * H) + L::load(g + q * ld_gate + jj); };
    const auto v = lstm_cell_forward<V>(pre(Traits::kI), pre(Traits::kF), pre(Traits::kG), pre(Traits::kO),
                                        L::load(sh.c + r * H + u));
    L::store(sh.c + r * H + u, v.c);
    store_state<T>(h_out + u, v.h);
    L::store(sh.y + tb * H + u, v.h);
    if (sh.saved != nullptr) {
      Traits::store_saved(sh.saved + tb * sh.saved_width + u, H, v, /*projected=*/false);
    }
  }
};

struct GruUnits {
  using Traits = GruCell;
  static constexpr int G = int(Traits::kGates);
  template <typename V, typename T>
  FASTRNN_INLINE static void unit(const Shared<T>& sh, const at::opmath_type<T>* g, int64_t ld_gate, int64_t,
                                  int64_t tb, int64_t u, int64_t jj, const at::opmath_type<T>* h_in,
                                  at::opmath_type<T>* h_out) {
    using L = Lanes<V>;
    const int64_t H = sh.H;
    const T* xp = sh.xproj + tb * sh.xstride + u;
    using C = Traits;
    const auto pre = [&](int64_t q) { return L::load(xp + q * H) + L::load(g + q * ld_gate + jj); };
    // n's hidden part stays apart (the reset gate multiplies it), with b_hn when there is a bias
    const V hh_n = L::load(g + C::kN * ld_gate + jj);
    const V hn = sh.b_hn != nullptr ? hh_n + L::load(sh.b_hn + u) : hh_n;
    const auto v = gru_cell_forward<V>(pre(C::kR), pre(C::kZ), L::load(xp + C::kN * H), hn, L::load(h_in + u));
    store_state<T>(h_out + u, v.h);
    L::store(sh.y + tb * H + u, v.h);
    if (sh.saved != nullptr) {
      Traits::store_saved(sh.saved + tb * sh.saved_width + u, H, v);
    }
  }
};

// Prefetches into L2 what the cell math of row r will touch for the kUnitChunk units from u at
// step s: the input projection of its G gates and c (read), y and saved (written). run_thread
// issues it while it computes the group's products, so the cell math after them finds its
// operands near: the input projection of a step is B * G * H values that last lived in memory
// when the input GEMM wrote them (before the prefetch, loads of it and of c held ~13% of the
// thread's samples at B = 64, H = 512).
// (A template, not a generic lambda: GCC 12 dropped the prefetches of the lambda form.)
template <int RW, typename T>
FASTRNN_INLINE void prefetch_units(const T* p) {
  for (int64_t off = 0; off < kUnitChunk * int64_t(sizeof(T)); off += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + off, RW, 2);
  }
}

template <int G, typename T>
FASTRNN_INLINE void prefetch_row(const Shared<T>& sh, int64_t s, int64_t r, int64_t u) {
  const int64_t b = entry_of(sh.order, r);
  int64_t t;
  if (!step_time(s, seq_length(sh.lengths, b, sh.steps), sh.reverse, t)) return;
  const int64_t tb = t * sh.B + b, H = sh.H;
  for (int q = 0; q < G; ++q) prefetch_units<0>(sh.xproj + tb * sh.xstride + q * H + u);
  if (sh.c != nullptr) prefetch_units<0>(sh.c + r * H + u);
  prefetch_units<1>(sh.y + tb * H + u);
  if (sh.saved != nullptr) {
    for (int64_t blk = 0; blk < sh.saved_width / H; ++blk) {
      prefetch_units<1>(sh.saved + tb * sh.saved_width + blk * H + u);
    }
  }
}

// One thread's whole call: pack its W_hh slice, then all T steps. Everything is inlined into the
// per-ISA entry points, so the micro-kernel and the cell math compile for that ISA.
//
// The thread's units go in groups of kUnitChunk (the pointwise SIMD width), each group in
// kUnitChunk / W panels of the micro-kernel. Per step and group: the products of all active rows
// go to a [B, G, kUnitChunk] buffer (16 KiB at B = 64, LSTM), K in blocks of kKBlock so that a
// block of the group's panels (16 KiB) and of h (16 KiB at B = 64) stay in L1 while the row
// tiles pass over them; then the cell math runs on the buffer at once.
template <class M, class Cell, typename T>
FASTRNN_INLINE void run_thread(const Shared<T>& sh, int tid, int nt) {
  using A = at::opmath_type<T>;
  constexpr int G = Cell::G;
  constexpr int64_t kSub = kUnitChunk / M::W;  // panels per group
  static_assert(kUnitChunk % M::W == 0, "a group is whole panels");
  const Slice sl = slice_of(sh.H, tid, nt);
  const int64_t U = sl.U, u0 = sl.u0, K = sh.K, H = sh.H;
  const int64_t groups = (U + kUnitChunk - 1) / kUnitChunk;
  const int64_t panel_size = K * M::NR;
  const int64_t packed_size = groups * kSub * panel_size;
  A* const scratch = thread_scratch<A>(packed_size + sh.B * G * kUnitChunk);
  if (scratch == nullptr) sh.failed->store(true);
  A* const packed = scratch;                // [groups * kSub panels of K x NR]
  A* const gates = scratch + packed_size;  // [B, G, kUnitChunk]
  if (!sh.failed->load()) {
    // panel (group gi, sub-panel sp)[k][q * W + w] = W_hh[q * H + unit, k], unit = u0 + gi * kUnitChunk
    // + sp * W + w; zero past the thread's units. K in blocks of kPackBlock, so the block of the
    // panel being written (kPackBlock * NR values, 4 KiB on AVX-512 LSTM) stays in L1 while its
    // G * W source rows pass: each destination line is filled in L1, not re-fetched per row.
    constexpr int64_t kPackBlock = 16;
    for (int64_t pn = 0; pn < groups * kSub; ++pn) {
      for (int64_t k0 = 0; k0 < K; k0 += kPackBlock) {
        const int64_t k1 = std::min(K, k0 + kPackBlock);
        for (int q = 0; q < G; ++q) {
          for (int w = 0; w < M::W; ++w) {
            const int64_t jj = pn * M::W + w;  // local unit
            A* dst = packed + pn * panel_size + q * M::W + w;
            if (jj < U) {
              const T* src = sh.w_hh + (q * H + u0 + jj) * K;
              for (int64_t k = k0; k < k1; ++k) dst[k * M::NR] = static_cast<A>(src[k]);
            } else {
              for (int64_t k = k0; k < k1; ++k) dst[k * M::NR] = A(0);
            }
          }
        }
      }
    }
  }
  sh.barrier->wait(nt);  // every thread sees every allocation's outcome
  if (sh.failed->load()) return;

  constexpr int64_t ldr = G * kUnitChunk;  // the gate buffer: [B, G, kUnitChunk]
  for (int64_t s = 0; s < sh.steps; ++s) {
    const int64_t n = sh.active != nullptr ? sh.active[s] : sh.B;
    const A* h_in = sh.hbuf[s & 1];
    A* h_out = sh.hbuf[(s + 1) & 1];
    // Row tiles of at most MR rows, as even as possible (8 rows: 4 + 4, not 6 + 2): a short tile
    // reloads the panel for few rows.
    const int64_t tiles = (n + M::MR - 1) / M::MR;
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t ug = gi * kUnitChunk, uend = std::min(U, ug + kUnitChunk);  // local units of the group
      const A* gpanels = packed + gi * kSub * panel_size;
      for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
        const int64_t kc = std::min(kKBlock, K - k0);
        for (int64_t ti = 0, r0 = 0; ti < tiles; ++ti) {
          const int mr = int(n / tiles + (ti < n % tiles ? 1 : 0));
          if (k0 == 0) {
            for (int64_t r = r0; r < r0 + mr; ++r) prefetch_row<G>(sh, s, r, u0 + ug);
          }
          for (int64_t sp = 0; sp < kSub; ++sp) {
            M::tile_rows(mr, h_in + r0 * K + k0, K, kc, gpanels + sp * panel_size + k0 * M::NR,
                         gates + r0 * ldr + sp * M::W, ldr, kUnitChunk, k0 > 0);
          }
          r0 += mr;
        }
      }
      for (int64_t r = 0; r < n; ++r) {
        const int64_t b = entry_of(sh.order, r);
        int64_t t;
        if (!step_time(s, seq_length(sh.lengths, b, sh.steps), sh.reverse, t)) continue;  // not in the prefix
        const int64_t tb = t * sh.B + b;
        const A* g = gates + r * ldr - ug;  // indexed by local unit
        const A* hi = h_in + r * K;
        A* ho = h_out + r * K;
        int64_t jj = ug;
        if constexpr (std::is_same_v<T, float>) {
          if (uend - ug == kLanes) {
            Cell::template unit<VecF>(sh, g, kUnitChunk, r, tb, u0 + jj, jj, hi, ho);
            jj = uend;
          }
        }
        for (; jj < uend; ++jj) Cell::template unit<A>(sh, g, kUnitChunk, r, tb, u0 + jj, jj, hi, ho);
      }
    }
    if (s + 1 < sh.steps) sh.barrier->wait(nt);
  }
}

// ---- Per-ISA entry points. With function multiversioning available (the same condition as
// ops_cpu.cpp's clones) three are compiled and one is picked at load time; otherwise (e.g.
// FASTRNN_NO_CPU_CLONES with -march=x86-64-v3 to test one ISA) the build's own ISA decides.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(FASTRNN_NO_CPU_CLONES)
#define FASTRNN_PERSISTENT_MULTI_ISA 1
#define FASTRNN_TARGET(arch) __attribute__((target(arch)))
#else
#define FASTRNN_PERSISTENT_MULTI_ISA 0
#define FASTRNN_TARGET(arch)
#endif

enum class Isa { kBase, kAvx2, kAvx512 };

Isa detect_isa() {
#if FASTRNN_PERSISTENT_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
  return Isa::kBase;
#elif defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
  return Isa::kAvx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return Isa::kAvx2;
#else
  return Isa::kBase;
#endif
}

const char* isa_name(Isa i) {
  switch (i) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

// The micro-kernel a call runs: the CPU's best, or a lower one named by FASTRNN_CPU_KERNEL
// ("avx512", "avx2", "baseline"; read at every call), so that one machine can test and time
// every kernel it can execute. Naming one the CPU (or this build) cannot run is a ValueError.
Isa isa() {
  static const Isa detected = detect_isa();
  const char* env = std::getenv("FASTRNN_CPU_KERNEL");
  if (env == nullptr || *env == '\0') return detected;
  for (Isa i : {Isa::kAvx512, Isa::kAvx2, Isa::kBase}) {
    if (std::strcmp(env, isa_name(i)) == 0) {
      TORCH_CHECK_VALUE(i <= detected, "FASTRNN_CPU_KERNEL=", env, ", but this CPU (or build) runs at most the ",
                        isa_name(detected), " kernel");
      return i;
    }
  }
  TORCH_CHECK_VALUE(false, "FASTRNN_CPU_KERNEL must be one of avx512, avx2, baseline; got '", env, "'");
}

#if FASTRNN_PERSISTENT_MULTI_ISA || (defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512BW__) && \
                                     defined(__AVX512DQ__))
template <class Cell, typename T>
FASTRNN_TARGET("arch=x86-64-v4") void thread_avx512(const Shared<T>& sh, int tid, int nt) {
  run_thread<MicroAvx512<at::opmath_type<T>, Cell::G>, Cell>(sh, tid, nt);
}
#define FASTRNN_HAS_AVX512_KERNEL 1
#endif
#if FASTRNN_PERSISTENT_MULTI_ISA || (defined(__AVX2__) && defined(__FMA__))
template <class Cell, typename T>
FASTRNN_TARGET("arch=x86-64-v3") void thread_avx2(const Shared<T>& sh, int tid, int nt) {
  run_thread<MicroAvx2<at::opmath_type<T>, Cell::G>, Cell>(sh, tid, nt);
}
#define FASTRNN_HAS_AVX2_KERNEL 1
#endif
template <class Cell, typename T>
void thread_base(const Shared<T>& sh, int tid, int nt) {
  run_thread<MicroBase<at::opmath_type<T>, Cell::G>, Cell>(sh, tid, nt);
}

template <class Cell, typename T>
void run_thread_isa(Isa kernel, const Shared<T>& sh, int tid, int nt) {
  switch (kernel) {
#ifdef FASTRNN_HAS_AVX512_KERNEL
    case Isa::kAvx512: return thread_avx512<Cell>(sh, tid, nt);
#endif
#ifdef FASTRNN_HAS_AVX2_KERNEL
    case Isa::kAvx2: return thread_avx2<Cell>(sh, tid, nt);
#endif
    default: return thread_base<Cell>(sh, tid, nt);
  }
}

// Threads for a call: ATen's count (what torch.set_num_threads set), one inside another
// parallel region (no oversubscription in DataLoader / DDP workers or nested calls), and no more
// than there are unit chunks to give out.
int64_t call_threads(int64_t H) {
  const int64_t chunks = (H + kUnitChunk - 1) / kUnitChunk;
  const int64_t n = at::in_parallel_region() ? 1 : at::get_num_threads();
  return std::clamp<int64_t>(std::min(n, chunks), 1, 1024);
}

template <class Cell, typename T>
void forward(ForwardPlan& p) {
  using A = at::opmath_type<T>;
  const Dims& d = p.d;
  const Tensor xproj = p.input_projection_buffer();
  p.project_input(xproj, p.input_bias());
  const Tensor b_hn = p.hidden_n_bias();  // undefined for cells without one
  const auto opts = p.x.options().dtype(c10::CppTypeToScalarType<A>::value);
  Tensor hbuf = at::empty({2, d.B, d.P}, opts);
  hbuf[0].copy_(p.h);  // h0 by row
  SpinBarrier barrier;
  std::atomic<bool> failed{false};
  Shared<T> sh{};
  sh.G = Cell::G;
  sh.H = d.H;
  sh.K = d.P;
  sh.B = d.B;
  sh.steps = d.T;
  sh.reverse = p.reverse;
  sh.lengths = p.masked() ? p.lengths.device.const_data_ptr<int64_t>() : nullptr;
  sh.order = p.sched.order_ptr();
  sh.active = p.sched.active.empty() ? nullptr : p.sched.active.data();
  sh.w_hh = p.w_hh.const_data_ptr<T>();
  sh.xproj = xproj.const_data_ptr<T>();
  sh.xstride = xproj.stride(0);
  sh.b_hn = b_hn.defined() ? b_hn.const_data_ptr<T>() : nullptr;
  sh.y = p.y.mutable_data_ptr<T>();
  sh.saved = p.save ? p.saved.mutable_data_ptr<T>() : nullptr;
  sh.saved_width = Cell::Traits::saved_width(d.H, /*projected=*/false);
  sh.c = p.c.defined() ? p.c.mutable_data_ptr<T>() : nullptr;
  sh.hbuf[0] = hbuf[0].mutable_data_ptr<A>();
  sh.hbuf[1] = hbuf[1].mutable_data_ptr<A>();
  sh.barrier = &barrier;
  sh.failed = &failed;
  const int64_t want = call_threads(d.H);
  const Isa kernel = isa();
#ifdef _OPENMP
  if (want > 1) {
#pragma omp parallel num_threads(int(want))
    run_thread_isa<Cell>(kernel, sh, omp_get_thread_num(), omp_get_num_threads());
  } else {
    run_thread_isa<Cell>(kernel, sh, 0, 1);
  }
#else
  (void)want;
  run_thread_isa<Cell>(kernel, sh, 0, 1);
#endif
  TORCH_CHECK(!failed.load(), p.op, ": the persistent CPU recurrence could not allocate its per-thread buffers");
  // Row r ran L_r steps, so its last state is in hbuf[L_r % 2].
  const int64_t* len = sh.lengths;
  T* h = p.h.mutable_data_ptr<T>();
  for (int64_t r = 0; r < d.B; ++r) {
    const A* src = sh.hbuf[seq_length(len, entry_of(sh.order, r), d.T) & 1] + r * d.P;
    for (int64_t k = 0; k < d.P; ++k) h[r * d.P + k] = static_cast<T>(src[k]);
  }
}

// ---- Dispatch.

using Mode = RecurrenceMode;

// Why the persistent recurrence cannot run this call (nullptr when it can).
const char* persistent_unavailable(const CpuRecurrenceQuery& q) {
  if (q.projected) return "it has no projection (proj_size) yet";
  return q.unsupported_option;
}

// auto: where measurements found the persistent recurrence faster than the step loop, on both
// micro-kernels (AVX-512, and AVX2 with MKL limited to AVX2), interleaved and repeated
// (docs/DESIGN.md, "The persistent CPU recurrence", has the tables): a batch of one on two or
// more threads, float32, T >= 4, 128 <= H <= 2048 (measured: T 4..40, H 128..2048, LSTM and GRU;
// persistent / step loop time 0.2-0.72). There each step is a few microseconds of work, which
// the step loop's parallel regions per step cost as much again. Not at B >= 2 (the AVX2 kernel
// lost at B = 2..64, the AVX-512 one at B >= 16 or 32 by shape), not on one thread (the AVX2
// kernel tied or lost at B = 1), not at H <= 64 (one 16-unit chunk a thread: a step is too
// short for a barrier that a descheduled partner can stall; measured up to 200x slower).
bool persistent_preferred(const CpuRecurrenceQuery& q) {
  return q.d.B == 1 && q.threads >= 2 && q.dtype == at::kFloat && q.d.T >= 4 && q.d.H >= 128 && q.d.H <= 2048;
}

}  // namespace

CpuRecurrenceQuery cpu_recurrence_query(const LayerPlan& p, bool backward) {
  return {&p.cell, p.d, p.x.scalar_type(), backward, p.projected(), call_threads(p.d.H), p.unsupported_option()};
}

CpuRecurrence choose_cpu_recurrence(const CpuRecurrenceQuery& q) {
  const Mode mode = recurrence_mode_from_env();
  if (q.backward || mode == Mode::kStepLoop) return CpuRecurrence::kStepLoop;
  const char* why = persistent_unavailable(q);
  if (mode == Mode::kPersistent) {
    TORCH_CHECK_NOT_IMPLEMENTED(why == nullptr, "FASTRNN_RECURRENCE=persistent, but the persistent CPU recurrence ",
                                "cannot run this call (", q.cell->display, " T=", q.d.T, " B=", q.d.B,
                                " H=", q.d.H, ", ", q.dtype, "): ", why);
    return CpuRecurrence::kPersistent;
  }
  if (mode == Mode::kPrefer) return why == nullptr ? CpuRecurrence::kPersistent : CpuRecurrence::kStepLoop;
  return why == nullptr && persistent_preferred(q) ? CpuRecurrence::kPersistent : CpuRecurrence::kStepLoop;
}

void persistent_forward(ForwardPlan& p) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "persistent_forward", [&] {
    if (&p.cell == &kLstmCell) {
      forward<LstmUnits, scalar_t>(p);
    } else {
      forward<GruUnits, scalar_t>(p);
    }
  });
  PathLog::record(p.op, "cpu.persistent");
}

const char* persistent_kernel_name() { return isa_name(isa()); }

namespace {

// Test hook: the choice for a hypothetical call (cell "lstm" or "gru"; P != H: projection) run
// with `threads` threads, without running it.
std::string cpu_recurrence_for(c10::string_view cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                               at::ScalarType dtype, bool backward, int64_t threads) {
  const CellInfo* info = find_cell(std::string(cell).c_str());
  TORCH_CHECK_VALUE(info != nullptr, "cell must be 'lstm' or 'gru', got '", cell, "'");
  const int64_t chunks = (H + kUnitChunk - 1) / kUnitChunk;
  const CpuRecurrenceQuery q{info, Dims{T, B, I, H, P}, dtype, backward, P != H,
                             std::min(threads, chunks)};
  return choose_cpu_recurrence(q) == CpuRecurrence::kPersistent ? "persistent" : "step";
}

std::string cpu_persistent_kernel() { return persistent_kernel_name(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_cpu_recurrence(str cell, int T, int B, int I, int H, int P, ScalarType dtype, bool backward, "
        "int threads) -> str",
        &cpu_recurrence_for);
  m.def("_cpu_persistent_kernel() -> str", &cpu_persistent_kernel);
}

}  // namespace cpu
}  // namespace fastrnn
