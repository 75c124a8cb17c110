// The per-step point functions of the step-loop recurrence: for one (row r, unit j) pair of a
// time step, load what the cell math needs, run it (cell_math.h), store the results.
//
// A step's arguments are a plain struct of pointers and sizes (the `*Step` structs below), and
// each point function is a type with one static member template
//   template <typename V, typename Step> static void run(const Step& a, int64_t r, int64_t j);
// so every backend launches any of them through one generic launcher: the CUDA kernels call it
// from one thread per pair (cuda/kernel_utils.cuh), the CPU over the same index space with
// at::parallel_for and SIMD vectors of consecutive j (cpu/ops_cpu.cpp). Nothing here touches
// shared memory or synchronises, so the CPU build runs exactly the GPU indexing.
//
// Conventions shared by every step (docs/DESIGN.md, "Lengths" and "Workspace"):
//   - T time steps, B batch entries, H hidden units (P: the projected width, proj_size); tensors
//     are row-major and time-major: position (t, b) of a [T, B, W] tensor is element tb * W
//     with tb = t * B + b.
//   - Iteration s (0 <= s < T) is the s-th step the recurrence takes. Entry b, with length L
//     (T when no lengths are given), is active for s < L and then reads time index
//     t = s (forward) or t = L - 1 - s (reverse). Finished entries keep their state and
//     write nothing, so padded outputs keep the zeros they were allocated with.
//   - A *row* is a slot of the running per-step buffers (states, GEMM results, grads of this
//     step); row r holds batch entry b = order[r]. With lengths known on the host the driver sorts
//     rows by length, longest first, so the active rows of every step are a prefix `rows` long
//     and finished entries cost nothing. Everything the caller sees (x, y, h0, c0, dy, dh_n,
//     saved activations, time-order grads) stays in batch-entry order and is indexed by b.
#pragma once

#include "fastrnn/cell_traits.h"

namespace fastrnn {

// Batch entry held by row r.
C10_HOST_DEVICE FASTRNN_INLINE int64_t entry_of(const int64_t* order, int64_t r) {
  return order == nullptr ? r : order[r];
}

// Length of entry b; the clamp keeps a bad length from ever indexing out of bounds
// (host code rejects such lengths before launching; this is the last line of defence).
C10_HOST_DEVICE FASTRNN_INLINE int64_t seq_length(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : L);
}

// Time index read by entry b (length L) at iteration s; false once the entry has finished.
C10_HOST_DEVICE FASTRNN_INLINE bool step_time(int64_t s, int64_t L, bool reverse, int64_t& t) {
  if (s >= L) return false;
  t = reverse ? L - 1 - s : s;
  return true;
}

// Fields every step shares: where it is in the sequence and which pairs it covers.
struct StepCommon {
  const int64_t* lengths;  // [B] or nullptr (every entry has length T)
  const int64_t* order;    // [B] row -> batch entry, or nullptr (identity)
  int64_t s;               // iteration
  int64_t rows;            // rows launched this step (B, or the active prefix when sorted)
  int64_t T, B;
  int64_t units;           // units per row: the launch covers rows x units pairs (H for the cell
                           // steps, P for the projection steps)
  int64_t ws_width;        // W: the width of a position's row of the saved activations (ws)
  bool reverse;
};

// Where the pair (row r, unit j) of a step reads and writes, for an entry active at a.s.
struct Position {
  int64_t b;   // batch entry
  int64_t t;   // time index
  int64_t tb;  // t * B + b: its position in time-major [T, B, ...] tensors
  int64_t k;   // r * units + j: in the running [B, units] buffers (by row)
  int64_t kb;  // b * units + j: in the caller's [B, units] tensors (by entry)
  bool last;   // the entry's last step (it receives the final-state grads)
};

// false when the entry of row r has finished by iteration a.s.
C10_HOST_DEVICE FASTRNN_INLINE bool locate(const StepCommon& a, int64_t r, int64_t j, Position& p) {
  p.b = entry_of(a.order, r);
  const int64_t len = seq_length(a.lengths, p.b, a.T);
  if (!step_time(a.s, len, a.reverse, p.t)) return false;
  p.tb = p.t * a.B + p.b;
  p.k = r * a.units + j;
  p.kb = p.b * a.units + j;
  p.last = a.s == len - 1;
  return true;
}

// Zoneout keep weights of one state (docs/DESIGN.md, "Options beyond torch.nn"): a [T, B, width]
// tensor in time order, the weight applied when the state at time t is made (training: 0 or 1
// per step and element), or one value for every position (eval: the rate p).
template <typename T>
struct KeepWeights {
  const T* p;     // nullptr: zoneout off
  bool constant;  // p points at one value
  C10_HOST_DEVICE FASTRNN_INLINE bool on() const { return p != nullptr; }
  // The weights of units j.. of position tb (t * B + b) of a state `width` wide.
  template <typename V>
  C10_HOST_DEVICE FASTRNN_INLINE V load(int64_t tb, int64_t width, int64_t j) const {
    return constant ? V(static_cast<at::opmath_type<T>>(*p)) : Lanes<V>::load(p + tb * width + j);
  }
};

// Layer norm of the gate inputs (docs/DESIGN.md, "Layer norm"): every gate's pre-activation is
// LN(x W_ih^T; w_ih) + bias + LN(h_prev W_hh^T; w_hh) (the GRU's n: its hidden part inside r * ...).
// With it, ws's gate blocks keep the raw x W_ih^T instead of the activations, and the raw
// h_prev W_hh^T follows the cell's blocks: the backward recomputes the activations from both.
template <typename T>
struct LnGates {
  using A = at::opmath_type<T>;
  const A* x_stats;  // [T, B, 2] time order: mean, rstd of the rows of x W_ih^T (forward: of xproj's
                     // rows, indexed like it); nullptr: no layer norm
  const A* h_stats;  // the same of h_prev W_hh^T: forward [B, 2] by row (this iteration's product),
                     // backward [T, B, 2] time order
  const T* w_ih;     // [G*H] the norms' weights
  const T* w_hh;
  const T* bias;     // [G*H] the biases that join the input side, or nullptr
  T* hh;             // ws from the column of the raw h_prev W_hh^T blocks (position tb's row at
                     // tb * W): the forward writes it when saving (else nullptr), the backward reads it
  C10_HOST_DEVICE FASTRNN_INLINE bool on() const { return x_stats != nullptr; }
};

// v through a norm whose row has statistics stats[0..1] (mean, rstd), weight element *w.
template <typename V, typename T, typename A>
C10_HOST_DEVICE FASTRNN_INLINE V ln_in(V v, const A* stats, const T* w) {
  return layer_norm_value<V>(v, V(stats[0]), V(stats[1]), Lanes<V>::load(w));
}

// The input side of gate block off (q * H), unit j, position tb: LN(raw) w_ih + bias.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V ln_input(const LnGates<T>& g, V raw, int64_t tb, int64_t off_j) {
  const V n = ln_in(raw, g.x_stats + 2 * tb, g.w_ih + off_j);
  return g.bias != nullptr ? n + Lanes<V>::load(g.bias + off_j) : n;
}

// The backward's gate inputs from ws at position tb (w: tb's ws row plus unit j; W: its width),
// block off (q * H): the input side, and the hidden side LN(h_prev W_hh^T) w_hh.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V ln_saved_input(const LnGates<T>& g, const T* w, int64_t tb, int64_t j, int64_t off) {
  return ln_input<V>(g, Lanes<V>::load(w + off), tb, off + j);
}
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V ln_saved_hidden(const LnGates<T>& g, int64_t W, int64_t tb, int64_t j, int64_t off) {
  return ln_in(Lanes<V>::load(g.hh + tb * W + off + j), g.h_stats + 2 * tb, g.w_hh + off + j);
}

// ---------------------------------------------------------------------------------------------
// LSTM

// What both cells' forward steps share.
template <typename scalar_t>
struct ForwardStep : StepCommon {  // units = H
  using scalar_type = scalar_t;
  scalar_t* xproj;            // [T, B, G*H] x_t W_ih^T + the biases that join it (see the cell),
                              //            time order, positions xstride apart; when it lives in
                              //            `saved`'s gate columns, the step overwrites it with the
                              //            activations. With layer norm: x_t W_ih^T alone
  int64_t xstride;
  int64_t xproj_t0;           // the first time index xproj holds (inference keeps a chunk of steps)
  const scalar_t* hproj;      // [rows, G*H] h_{s-1} W_hh^T for this iteration
  scalar_t* h;                // [B, H]     running hidden state by row, updated in place (LSTM
                              //            with projection: lstm_proj_commit writes it)
  scalar_t* y;                // [T, B, H]  outputs, time order (not written by an LSTM step
                              //            with projection)
  scalar_t* saved;            // [T, B, W]  saved activations (docs/DESIGN.md, "Workspace");
                              //            nullptr: save nothing
  KeepWeights<scalar_t> zoneout_h;  // [T, B, H] on h (not used by an LSTM step with projection:
                                    //            lstm_proj_commit zones the projected state)
  LnGates<scalar_t> ln;       // layer norm: xproj is x W_ih^T alone, read through the input norm;
                              // hproj through the hidden norm (h_stats by row, RowStatsPoint)
};

// Element off (block q's q * H) of unit j of the input projection's position xt (xp: its start
// plus j), through the input norm when there is one (its statistics indexed like xproj).
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V input_in(const ForwardStep<T>& a, const T* xp, int64_t xt, int64_t j, int64_t off) {
  const V v = Lanes<V>::load(xp + off);
  return a.ln.on() ? ln_input<V>(a.ln, v, xt, off + j) : v;
}

// With layer norm and saving: the raw recurrent product of unit j (G blocks from hp, the row's
// start plus j) into ws at position tb, where the backward reads it.
template <typename V, int G, typename T>
C10_HOST_DEVICE FASTRNN_INLINE void save_hidden_raw(const ForwardStep<T>& a, const T* hp, int64_t tb, int64_t j) {
  if (a.ln.hh == nullptr) return;
  T* out = a.ln.hh + tb * a.ws_width + j;
  for (int q = 0; q < G; ++q) Lanes<V>::store(out + q * a.units, Lanes<V>::load(hp + q * a.units));
}

// Element off (block q's q * H) of unit j of row r's recurrent product (hp: the row's start plus
// j), through the hidden norm when there is one.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V hidden_in(const ForwardStep<T>& a, const T* hp, int64_t r, int64_t j, int64_t off) {
  const V v = Lanes<V>::load(hp + off);
  return a.ln.on() ? ln_in(v, a.ln.h_stats + 2 * r, a.ln.w_hh + off + j) : v;
}

// xproj = x W_ih^T + b_ih + b_hh; saved: i, f, g, o, c (and o * tanh(c) with projection).
template <typename scalar_t>
struct LstmForwardStep : ForwardStep<scalar_t> {
  scalar_t* c;                // [B, H]     running cell state by row, updated in place
  scalar_t* hfull;            // [B, H]     by row, with projection: o * tanh(c), the input of the
                              //            projection GEMM; nullptr without projection
  KeepWeights<scalar_t> zoneout_c;  // [T, B, H] on c
  // Layer norm of c (docs/DESIGN.md, "Layer norm"): h = o tanh(LN(c)) in two phases around the
  // row statistics of c. Phase 1 (LstmForwardPoint with ln_o set) stores c, o and the saved
  // gates; RowStatsPoint takes c's statistics; phase 2 (LstmLnOutPoint) writes h.
  scalar_t* ln_o;             // [B, H]     by row: phase 1's o; nullptr: no layer norm of c
  const at::opmath_type<scalar_t>* ln_c_stats;  // [B, 2] by row: mean, rstd of the new c
  const scalar_t* ln_c_w;     // [H]        the norm's weight and bias
  const scalar_t* ln_c_b;
};

struct LstmForwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmForwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    Position p;
    if (!locate(a, r, j, p)) return;
    const int64_t H = a.units, tb = p.tb, k = p.k;
    using C = LstmCell;
    const int64_t xt = tb - a.xproj_t0 * a.B;  // position in xproj
    const T* xp = a.xproj + xt * a.xstride + j;
    const T* hp = a.hproj + r * C::kGates * H + j;
    const V c_prev = L::load(a.c + k);
    save_hidden_raw<V, C::kGates>(a, hp, tb, j);
    auto v = lstm_cell_forward<V>(input_in<V>(a, xp, xt, j, C::kI * H) + hidden_in<V>(a, hp, r, j, C::kI * H),
                                  input_in<V>(a, xp, xt, j, C::kF * H) + hidden_in<V>(a, hp, r, j, C::kF * H),
                                  input_in<V>(a, xp, xt, j, C::kG * H) + hidden_in<V>(a, hp, r, j, C::kG * H),
                                  input_in<V>(a, xp, xt, j, C::kO * H) + hidden_in<V>(a, hp, r, j, C::kO * H), c_prev);
    // Zoneout on c: the state (and the saved c) is the zoned one; v.h stays o * tanh(c~).
    if (a.zoneout_c.on()) v.c = zoneout_blend(a.zoneout_c.template load<V>(tb, H, j), c_prev, v.c);
    L::store(a.c + k, v.c);
    if (a.ln_o != nullptr) {  // layer norm of c: h waits for phase 2 (LstmLnOutPoint)
      L::store(a.ln_o + k, v.o);
      if (a.saved != nullptr) C::store_saved_layer_norm(a.saved + tb * a.ws_width + j, H, v);
      return;
    }
    if (a.hfull != nullptr) {
      L::store(a.hfull + k, v.h);
    } else {
      const V h = a.zoneout_h.on() ? zoneout_blend(a.zoneout_h.template load<V>(tb, H, j), L::load(a.h + k), v.h) : v.h;
      L::store(a.h + k, h);
      L::store(a.y + tb * H + j, h);
    }
    if (a.saved != nullptr) {
      const bool projected = a.hfull != nullptr;
      C::store_saved(a.saved + tb * a.ws_width + j, H, v, projected);
    }
  }
};

// Phase 2 of the forward with a layer norm of c: h = o tanh(LN(c)), stored where
// LstmForwardPoint stores h (and o tanh(LN(c)) as the saved projection input).
struct LstmLnOutPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmForwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    using C = LstmCell;
    Position p;
    if (!locate(a, r, j, p)) return;
    const int64_t H = a.units;
    const V cn = layer_norm_value<V>(L::load(a.c + p.k), V(a.ln_c_stats[2 * r]), V(a.ln_c_stats[2 * r + 1]),
                                     L::load(a.ln_c_w + j)) + L::load(a.ln_c_b + j);
    const V h = lstm_ln_hidden<V>(L::load(a.ln_o + p.k), cn);
    if (a.hfull != nullptr) {
      L::store(a.hfull + p.k, h);
      if (a.saved != nullptr) L::store(a.saved + p.tb * a.ws_width + C::kHFull * H + j, h);
    } else {
      const V hz = a.zoneout_h.on() ? zoneout_blend(a.zoneout_h.template load<V>(p.tb, H, j), L::load(a.h + p.k), h) : h;
      L::store(a.h + p.k, hz);
      L::store(a.y + p.tb * H + j, hz);
    }
  }
};

template <typename scalar_t>
struct LstmBackwardStep : StepCommon {  // units = H
  using scalar_type = scalar_t;
  const scalar_t* dy;         // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;       // [B, H]     grad of the final hidden state
  const scalar_t* dc_n;       // [B, H]     grad of the final cell state
  const scalar_t* saved;      // [T, B, W]  what the forward saved (LstmCell::saved_width)
  const scalar_t* c0;         // [B, H]     initial cell state
  scalar_t* dh;               // [B, H]     by row; in: dL/dh_s through the recurrence (iteration s+1's
                              //            GEMM); out, with zoneout on h and no projection: the direct
                              //            part z_h dL/dh_s of dL/dh_{s-1} (the GEMM then adds to it)
  const scalar_t* dh_full;    // [B, H]     by row, with projection: the complete dL/d(o * tanh(c))
                              //            of this iteration (dy, dh_n, dh then unused); else nullptr
  scalar_t* dc;               // [B, H]     by row; in: dL/dc_s from iteration s+1; out: dL/dc_{s-1}
  scalar_t* dgates;           // [n, B, 4H] pre-activation gate grads (LstmCell::kGradBlocks) of the times
                              //            [dgates_t0, dgates_t0 + n), time order
  int64_t dgates_t0;
  scalar_t* dgates_step;      // [B, 4H]    by row: the same for this iteration, zero for finished
                              //            entries; the next GEMM computes dh_{s-1} from it
  KeepWeights<scalar_t> zoneout_h;  // [T, B, H] the forward's, without projection (with one the
                                    //            projection's backward step takes it)
  KeepWeights<scalar_t> zoneout_c;  // [T, B, H] the forward's; the saved c is then the zoned state
                                    //            and the cell's own c~ is recomputed from i, f, g
  // Layer norm of c (docs/DESIGN.md, "Layer norm"): phase A (LstmLnOutBackwardPoint) takes dh
  // through h = o tanh(LN(c)) to d_o and to the grad of LN(c); RowMeansPoint takes the row means of ln_gw;
  // phase B (LstmLnCellBackwardPoint) finishes dc through the norm and runs the cell backward.
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* ln_c_stats;    // [T, B, 2]  time order: mean and rstd of each saved c row
  const scalar_t* ln_c_w;     // [H]        the norm's weight and bias
  const scalar_t* ln_c_b;
  acc_t* ln_gw;               // [B, 2, H]  by row: g * w_c and g * w_c * chat (g: grad of LN(c))
  const acc_t* ln_gw_mean;    // [B, 2]     by row: the row means of both
  acc_t* ln_c_param;          // [n, B, 2H] time order, the times of dgates: g * chat and g, summed into dw_c, db_c
  LnGates<scalar_t> ln;       // the gate inputs' norms (lstm_ln_gates)
};

// dh of this iteration's h (before any projection), as LstmBackwardPoint reads it.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V lstm_step_dh(const LstmBackwardStep<T>& a, const Position& p, int64_t j) {
  using L = Lanes<V>;
  return a.dh_full != nullptr ? L::load(a.dh_full + p.k)
                              : (p.last ? L::load(a.dh_n + p.kb) : L::load(a.dh + p.k)) + L::load(a.dy + p.tb * a.units + j);
}

// The normalised saved c of position p (before w_c, b_c).
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE V lstm_ln_chat(const LstmBackwardStep<T>& a, const Position& p, const T* w) {
  return (Lanes<V>::load(w + LstmCell::kC * a.units) - V(a.ln_c_stats[2 * p.tb])) * V(a.ln_c_stats[2 * p.tb + 1]);
}

// Layer norm: the gate activations of position tb recomputed from ws's raw products (w: tb's ws
// row plus unit j); c and h of the result are not meaningful.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE LstmActivations<V> lstm_ln_gates(const LstmBackwardStep<T>& a, int64_t tb, const T* w,
                                                                int64_t j) {
  using C = LstmCell;
  const int64_t H = a.units;
  V pre[C::kGates];
  for (int q = 0; q < C::kGates; ++q) {
    pre[q] = ln_saved_input<V>(a.ln, w, tb, j, q * H) + ln_saved_hidden<V>(a.ln, a.ws_width, tb, j, q * H);
  }
  return lstm_cell_forward<V>(pre[C::kI], pre[C::kF], pre[C::kG], pre[C::kO], V(0));
}

struct LstmBackwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmBackwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    using C = LstmCell;
    const int64_t H = a.units;
    T* dstep = a.dgates_step + r * C::kGates * H + j;
    Position p;
    if (!locate(a, r, j, p)) {
      for (int q = 0; q < C::kGates; ++q) L::store(dstep + q * H, V(0));
      return;
    }
    // The entry's last step gets the final-state grads; earlier ones what the recurrence carried.
    V dh = lstm_step_dh<V>(a, p, j);
    V dc = p.last ? L::load(a.dc_n + p.kb) : L::load(a.dc + p.k);
    const int64_t width = a.ws_width;
    const T* w = a.saved + p.tb * width + j;
    const V c_prev = a.s == 0 ? L::load(a.c0 + p.kb)
                              : L::load(a.saved + ((a.reverse ? p.t + 1 : p.t - 1) * a.B + p.b) * width + C::kC * H + j);
    const V i = L::load(w + C::kI * H), f = L::load(w + C::kF * H), g = L::load(w + C::kG * H);
    V c = L::load(w + C::kC * H), dc_direct(0);
    if (a.zoneout_c.on()) {
      c = lstm_new_cell(i, f, g, c_prev);  // the saved c is the zoned state; the cell's own is c~
      const auto z = zoneout_backward(a.zoneout_c.template load<V>(p.tb, H, j), dc);
      dc = z.fresh;
      dc_direct = z.prev;
    }
    if (a.zoneout_h.on() && a.dh_full == nullptr) {
      const auto z = zoneout_backward(a.zoneout_h.template load<V>(p.tb, H, j), dh);
      dh = z.fresh;
      L::store(a.dh + p.k, z.prev);
    }
    const auto d = lstm_cell_backward<V>(dh, dc, i, f, g, L::load(w + C::kO * H), c, c_prev);
    L::store(a.dc + p.k, a.zoneout_c.on() ? d.dc_prev + dc_direct : d.dc_prev);
    T* dt = a.dgates + ((p.t - a.dgates_t0) * a.B + p.b) * C::kGradBlocks * H + j;
    static_assert(C::kI == 0 && C::kF == 1 && C::kG == 2 && C::kO == 3, "grads[] lists the gates in block order");
    const V grads[C::kGates] = {d.di, d.df, d.dg, d.d_o};
    for (int q = 0; q < C::kGates; ++q) {
      L::store(dt + q * H, grads[q]);
      L::store(dstep + q * H, grads[q]);
    }
  }
};

// Layer norm of c, phase A: d_o, and the grad g of LN(c) as the row sums need it.
struct LstmLnOutBackwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmBackwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    using C = LstmCell;
    const int64_t H = a.units;
    T* dstep = a.dgates_step + r * C::kGates * H + j;
    auto* gw = a.ln_gw + r * 2 * H + j;
    Position p;
    if (!locate(a, r, j, p)) {
      for (int q = 0; q < C::kGates; ++q) L::store(dstep + q * H, V(0));
      L::store(gw, V(0));
      L::store(gw + H, V(0));
      return;
    }
    const T* w = a.saved + p.tb * a.ws_width + j;
    const V chat = lstm_ln_chat<V>(a, p, w), cw = L::load(a.ln_c_w + j);
    V dh = lstm_step_dh<V>(a, p, j);
    if (a.zoneout_h.on() && a.dh_full == nullptr) {  // as in LstmBackwardPoint
      const auto z = zoneout_backward(a.zoneout_h.template load<V>(p.tb, H, j), dh);
      dh = z.fresh;
      L::store(a.dh + p.k, z.prev);
    }
    const auto d = lstm_ln_out_backward<V>(dh, lstm_ln_gates<V>(a, p.tb, w, j).o, chat * cw + L::load(a.ln_c_b + j));
    L::store(a.dgates + ((p.t - a.dgates_t0) * a.B + p.b) * C::kGradBlocks * H + C::kO * H + j, d.d_o);
    L::store(dstep + C::kO * H, d.d_o);
    L::store(gw, d.dcn * cw);
    L::store(gw + H, d.dcn * cw * chat);
    auto* param = a.ln_c_param + ((p.t - a.dgates_t0) * a.B + p.b) * 2 * H + j;
    L::store(param, d.dcn * chat);
    L::store(param + H, d.dcn);
  }
};

// Layer norm of c, phase B: dc through the norm plus what the recurrence carried, then the cell.
struct LstmLnCellBackwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmBackwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    using C = LstmCell;
    const int64_t H = a.units;
    Position p;
    if (!locate(a, r, j, p)) return;  // phase A zeroed the row's dgates_step
    const int64_t width = a.ws_width;
    const T* w = a.saved + p.tb * width + j;
    const V dc_norm = layer_norm_input_grad<V>(L::load(a.ln_gw + r * 2 * H + j), lstm_ln_chat<V>(a, p, w),
                                               V(a.ln_c_stats[2 * p.tb + 1]), V(a.ln_gw_mean[2 * r]),
                                               V(a.ln_gw_mean[2 * r + 1]));
    const V dc = (p.last ? L::load(a.dc_n + p.kb) : L::load(a.dc + p.k)) + dc_norm;
    const V c_prev = a.s == 0 ? L::load(a.c0 + p.kb)
                              : L::load(a.saved + ((a.reverse ? p.t + 1 : p.t - 1) * a.B + p.b) * width + C::kC * H + j);
    const auto v = lstm_ln_gates<V>(a, p.tb, w, j);
    const auto d = lstm_ln_cell_backward<V>(dc, v.i, v.f, v.g, c_prev);
    L::store(a.dc + p.k, d.dc_prev);
    T* dt = a.dgates + ((p.t - a.dgates_t0) * a.B + p.b) * C::kGradBlocks * H + j;
    T* dstep = a.dgates_step + r * C::kGates * H + j;
    const V grads[3] = {d.di, d.df, d.dg};
    static_assert(C::kI == 0 && C::kF == 1 && C::kG == 2, "grads[] lists the gates in block order");
    for (int q = 0; q < 3; ++q) {
      L::store(dt + q * H, grads[q]);
      L::store(dstep + q * H, grads[q]);
    }
  }
};

// Projection (nn.LSTM's proj_size = P): after the GEMM hnew = hfull W_hr^T, active entries take
// hnew as their state and output; finished ones keep theirs.
template <typename scalar_t>
struct LstmProjCommitStep : StepCommon {  // units = P
  using scalar_type = scalar_t;
  const scalar_t* hnew;       // [rows, P]  projected hidden state of this iteration
  scalar_t* h;                // [B, P]     running hidden state by row, updated in place
  scalar_t* y;                // [T, B, P]  outputs, time order
  KeepWeights<scalar_t> zoneout_h;  // [T, B, P] on the projected state
};

struct LstmProjCommitPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmProjCommitStep<T>& a, int64_t r, int64_t p) {
    using L = Lanes<V>;
    Position at;
    if (!locate(a, r, p, at)) return;
    const V fresh = L::load(a.hnew + at.k);
    const V h = a.zoneout_h.on()
                    ? zoneout_blend(a.zoneout_h.template load<V>(at.tb, a.units, p), L::load(a.h + at.k), fresh)
                    : fresh;
    L::store(a.h + at.k, h);
    L::store(a.y + at.tb * a.units + p, h);
  }
};

// Backward through the projection: the grad of this iteration's projected state, to be
// multiplied by W_hr (per step) into the grad of o * tanh(c), and by hfull (after the loop)
// into dW_hr.
template <typename scalar_t>
struct LstmProjBackwardStep : StepCommon {  // units = P
  using scalar_type = scalar_t;
  const scalar_t* dy;         // [T, B, P]  grad of outputs, time order
  const scalar_t* dh_n;       // [B, P]     grad of the final hidden state
  scalar_t* dh;               // [B, P]     by row; in: dL/dh_s through the recurrence (iteration s+1's
                              //            GEMM); out, with zoneout: the direct part z_h dL/dh_s of
                              //            dL/dh_{s-1} (the GEMM then adds to it)
  scalar_t* dp;               // [T, B, P]  the grad of the projection's output, time order: dL/dh_s in
                              //            full, times (1 - z_h) with zoneout
  scalar_t* dp_step;          // [B, P]     by row: the same for this iteration, zero for finished entries
  KeepWeights<scalar_t> zoneout_h;  // [T, B, P] the forward's
};

struct LstmProjBackwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LstmProjBackwardStep<T>& a, int64_t r, int64_t p) {
    using L = Lanes<V>;
    const int64_t P = a.units;
    Position at;
    if (!locate(a, r, p, at)) {
      L::store(a.dp_step + r * P + p, V(0));
      return;
    }
    V d = (at.last ? L::load(a.dh_n + at.kb) : L::load(a.dh + at.k)) + L::load(a.dy + at.tb * P + p);
    if (a.zoneout_h.on()) {
      const auto z = zoneout_backward(a.zoneout_h.template load<V>(at.tb, P, p), d);
      d = z.fresh;
      L::store(a.dh + at.k, z.prev);
    }
    L::store(a.dp + at.tb * P + p, d);
    L::store(a.dp_step + at.k, d);
  }
};

// ---------------------------------------------------------------------------------------------
// GRU

// xproj = x W_ih^T + b_ih + (b_hr, b_hz, 0); saved: r, z, n, W_hn h + b_hn.
template <typename scalar_t>
struct GruForwardStep : ForwardStep<scalar_t> {
  const scalar_t* b_hn;       // [H] or nullptr: the part of b_hh that sits inside the reset product
};

struct GruForwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const GruForwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    Position p;
    if (!locate(a, r, j, p)) return;
    const int64_t H = a.units, tb = p.tb, k = p.k;
    using C = GruCell;
    const int64_t xt = tb - a.xproj_t0 * a.B;  // position in xproj
    const T* xp = a.xproj + xt * a.xstride + j;
    const T* hp = a.hproj + r * C::kGates * H + j;
    const V hn_raw = hidden_in<V>(a, hp, r, j, C::kN * H);
    const V hn = a.b_hn != nullptr ? hn_raw + L::load(a.b_hn + j) : hn_raw;
    const V h_prev = L::load(a.h + k);
    save_hidden_raw<V, C::kGates>(a, hp, tb, j);
    const auto v = gru_cell_forward<V>(input_in<V>(a, xp, xt, j, C::kR * H) + hidden_in<V>(a, hp, r, j, C::kR * H),
                                       input_in<V>(a, xp, xt, j, C::kZ * H) + hidden_in<V>(a, hp, r, j, C::kZ * H),
                                       input_in<V>(a, xp, xt, j, C::kN * H), hn, h_prev);
    const V h = a.zoneout_h.on() ? zoneout_blend(a.zoneout_h.template load<V>(tb, H, j), h_prev, v.h) : v.h;
    L::store(a.h + k, h);
    L::store(a.y + tb * H + j, h);
    if (a.saved != nullptr) {
      if (a.ln.on()) {
        C::store_saved_layer_norm(a.saved + tb * a.ws_width + j, H, v);
      } else {
        C::store_saved(a.saved + tb * a.ws_width + j, H, v);
      }
    }
  }
};

template <typename scalar_t>
struct GruBackwardStep : StepCommon {  // units = H
  using scalar_type = scalar_t;
  const scalar_t* dy;         // [T, B, H]  grad of outputs, time order
  const scalar_t* dh_n;       // [B, H]     grad of the final hidden state
  const scalar_t* saved;      // [T, B, 4H] what the forward saved (GruCell::saved_width)
  const scalar_t* h0;         // [B, H]     initial hidden state
  const scalar_t* y;          // [T, B, H]  forward outputs: h_{s-1} for s > 0
  scalar_t* dh;               // [B, H]     by row; in: dL/dh_s through the recurrence (iteration
                              //            s+1); out: the direct part z * dL/dh_s of dL/dh_{s-1}
  scalar_t* dgates;           // [n, B, 4H] time order: dr, dz, dn (input side), dn * r (hidden n),
                              //            of the times [dgates_t0, dgates_t0 + n)
  int64_t dgates_t0;
  scalar_t* dgates_step;      // [B, 3H]    by row: hidden-side dr, dz, dn * r of this iteration,
                              //            zero for finished entries; the next GEMM adds it times
                              //            W_hh to dh
  KeepWeights<scalar_t> zoneout_h;  // [T, B, H] the forward's
  LnGates<scalar_t> ln;       // layer norm: r, z, n recomputed from ws's raw products (gru_saved)
};

// The saved activations of position tb (w: its ws row plus unit j): loaded, or with layer norm
// recomputed from the raw products and the saved hn; h of the result is not meaningful.
template <typename V, typename T>
C10_HOST_DEVICE FASTRNN_INLINE GruActivations<V> gru_saved(const GruBackwardStep<T>& a, int64_t tb, const T* w, int64_t j) {
  using L = Lanes<V>;
  using C = GruCell;
  const int64_t H = a.units;
  const V hn = L::load(w + C::kHn * H);
  if (!a.ln.on()) return {L::load(w + C::kR * H), L::load(w + C::kZ * H), L::load(w + C::kN * H), hn, V(0)};
  const auto pre = [&](int64_t q) {
    return ln_saved_input<V>(a.ln, w, tb, j, q * H) + ln_saved_hidden<V>(a.ln, a.ws_width, tb, j, q * H);
  };
  return gru_cell_forward<V>(pre(C::kR), pre(C::kZ), ln_saved_input<V>(a.ln, w, tb, j, C::kN * H), hn, V(0));
}

struct GruBackwardPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const GruBackwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    using C = GruCell;
    const int64_t H = a.units;
    T* dstep = a.dgates_step + r * C::kGates * H + j;
    Position p;
    if (!locate(a, r, j, p)) {
      for (int q = 0; q < C::kGates; ++q) L::store(dstep + q * H, V(0));
      return;
    }
    V dh = (p.last ? L::load(a.dh_n + p.kb) : L::load(a.dh + p.k)) + L::load(a.dy + p.tb * H + j);
    V dh_zoned(0);  // zoneout's direct part of dL/dh_{s-1}
    if (a.zoneout_h.on()) {
      const auto z = zoneout_backward(a.zoneout_h.template load<V>(p.tb, H, j), dh);
      dh = z.fresh;
      dh_zoned = z.prev;
    }
    const T* w = a.saved + p.tb * a.ws_width + j;
    const V h_prev = a.s == 0 ? L::load(a.h0 + p.kb) : L::load(a.y + ((a.reverse ? p.t + 1 : p.t - 1) * a.B + p.b) * H + j);
    const auto v = gru_saved<V>(a, p.tb, w, j);
    const auto d = gru_cell_backward<V>(dh, v.r, v.z, v.n, v.hn, h_prev);
    L::store(a.dh + p.k, a.zoneout_h.on() ? d.dh_direct + dh_zoned : d.dh_direct);
    T* dt = a.dgates + ((p.t - a.dgates_t0) * a.B + p.b) * C::kGradBlocks * H + j;
    L::store(dt + C::kR * H, d.dr);
    L::store(dt + C::kZ * H, d.dz);
    L::store(dt + C::kN * H, d.dn);
    L::store(dt + C::kDnH * H, d.dn_h);
    L::store(dstep + C::kR * H, d.dr);
    L::store(dstep + C::kZ * H, d.dz);
    L::store(dstep + C::kN * H, d.dn_h);
  }
};

// ---------------------------------------------------------------------------------------------
// Layer norm's row reductions (docs/DESIGN.md, "Layer norm"). A row point is launched over
// rows x 1 (units = 1) and runs its whole row serially: on the CPU a step's rows then take one pass
// on the calling thread (fewer items than a task's grain), on CUDA one thread a row. They compute
// for every launched row, finished ones included (their values are finite and unused).

// Mean and rstd of each row of x: a step's rows, or (in the backward) every position of a saved
// block of ws.
template <typename scalar_t>
struct RowStatsStep : StepCommon {  // units = 1
  using scalar_type = scalar_t;
  const scalar_t* x;                      // [rows, n], rows ld apart
  int64_t n, ld;
  at::opmath_type<scalar_t>* stats;       // [rows, 2]: mean, rstd (biased variance, eps)
};

struct RowStatsPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const RowStatsStep<T>& a, int64_t r, int64_t) {
    layer_norm_stats(a.x + r * a.ld, a.n, a.stats[2 * r], a.stats[2 * r + 1]);
  }
};

// Row means of m vectors of n per row.
template <typename scalar_t>
struct RowMeansStep : StepCommon {  // units = 1
  using scalar_type = scalar_t;
  const at::opmath_type<scalar_t>* x;     // [rows, m, n] by row
  int64_t m, n;
  at::opmath_type<scalar_t>* means;       // [B, m] by row
};

struct RowMeansPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const RowMeansStep<T>& a, int64_t r, int64_t) {
    using A = at::opmath_type<T>;
    for (int64_t q = 0; q < a.m; ++q) {
      const A* x = a.x + (r * a.m + q) * a.n;
      a.means[r * a.m + q] = row_sum<A>(a.n, [&](int64_t i) { return x[i]; }) / A(a.n);
    }
  }
};

// The backward of the hidden norm (without bias, over rows of n = G*H) at one iteration: given g,
// the grad of its output, and its input x (the raw product the forward saved in ws) with the
// statistics, dx = rstd (g w - mean(g w) - xhat mean(g w xhat)); the weight's grad terms g xhat
// are stored per element (summed after the loop). LnGradMeansPoint (units = 1) takes the two row
// means, then LnInputGradPoint (units = n) the elements. Rows of finished entries get zeros.
template <typename scalar_t>
struct LnBackwardStep : StepCommon {
  using scalar_type = scalar_t;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;          // [rows, n]  by row
  const scalar_t* x;          // [T, B, W]  ws from the raw products' column: position tb's row at tb * W
  const acc_t* stats;         // [T, B, 2]  time order: mean, rstd of x's rows
  const scalar_t* w;          // [n]
  acc_t* gmeans;              // [B, 2]     by row: mean(g w), mean(g w xhat)
  scalar_t* dx;               // [rows, n]  by row
  acc_t* param;               // [rows, n]  by row: g xhat
  int64_t n;
};

struct LnGradMeansPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LnBackwardStep<T>& a, int64_t r, int64_t) {
    using A = at::opmath_type<T>;
    Position p;
    if (!locate(a, r, 0, p)) return;
    const T* g = a.g + r * a.n;
    const T* x = a.x + p.tb * a.ws_width;
    const A mean = a.stats[2 * p.tb], rstd = a.stats[2 * p.tb + 1];
    const T* w = a.w;
    a.gmeans[2 * r] = row_sum<A>(a.n, [&](int64_t i) { return A(g[i]) * A(w[i]); }) / A(a.n);
    a.gmeans[2 * r + 1] = row_sum<A>(a.n, [&](int64_t i) { return A(g[i]) * A(w[i]) * (A(x[i]) - mean) * rstd; }) / A(a.n);
  }
};

struct LnInputGradPoint {
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void run(const LnBackwardStep<T>& a, int64_t r, int64_t j) {
    using L = Lanes<V>;
    const int64_t e = r * a.n + j;
    Position p;
    if (!locate(a, r, j, p)) {
      L::store(a.dx + e, V(0));
      L::store(a.param + e, V(0));
      return;
    }
    const V rstd(a.stats[2 * p.tb + 1]);
    const V g = L::load(a.g + e), xhat = (L::load(a.x + p.tb * a.ws_width + j) - V(a.stats[2 * p.tb])) * rstd;
    L::store(a.dx + e, layer_norm_input_grad<V>(g * L::load(a.w + j), xhat, rstd, V(a.gmeans[2 * r]),
                                                V(a.gmeans[2 * r + 1])));
    L::store(a.param + e, g * xhat);
  }
};

}  // namespace fastrnn
