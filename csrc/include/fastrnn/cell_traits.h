// The facts about each cell type, in one table per cell: gate count, state count, the layout of
// the saved activations (`ws`) and of the gate grads with named offsets, which part of b_hh joins
// the input projection, and the store of the saved activations that every forward kernel shares.
// Everything else (the plan, the step loop, the point functions, the persistent kernel, the path
// log, the op names) reads these instead of writing the numbers again. fastrnn/_cells.py is the
// matching Python table (fake kernels, saved-shape checks); tests/test_cell_traits.py compares the
// two through fastrnn._C.cell_traits(). docs/DESIGN.md ("Cell traits") says how to add a cell.
//
// Offsets count blocks of H: block q of a per-position row [W] starts at element q * H.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastrnn/cell_math.h"

namespace fastrnn {

// A run of hidden-side gate-grad columns and the dW_hh rows it multiplies (blocks of H).
struct HiddenBlock {
  int64_t col;  // first column in the gate grads [n, B, grad_blocks * H]
  int64_t row;  // first row of dW_hh [G*H, P] (and column of the per-step grads [B, G*H])
  int64_t len;
};

// The run-time view of a cell's table, for host code that serves several cells (the layer plan,
// the dispatch, the path log).
struct CellInfo {
  const char* name;              // "lstm": the Python name (fastrnn._cells), cell= of the test hooks
  const char* display;           // "LSTM": in messages
  const char* forward_op;        // qualified op names: the prefix of every check message
  const char* backward_op;
  int64_t gates;                 // G: blocks of w_ih / w_hh rows and of the pre-activations
  int64_t states;                // 2: h and c; 1: h
  int64_t saved_blocks;          // ws per (t, b)
  int64_t saved_blocks_projected;  // the same with a projection (proj_size); 0: no projection
  const char* const* saved_names;  // the saved blocks in order (saved_blocks_projected of them,
                                   // else saved_blocks)
  int64_t grad_blocks;           // gate grads per (t, b) (backward)
  int64_t hh_bias_input_blocks;  // leading blocks of b_hh added to the input projection; the rest
                                 // stays inside the cell (GRU: b_hn in the reset product)
  HiddenBlock hidden[2];         // the hidden side of the gate grads, in dW_hh's row order
  int64_t hidden_count;

  // With layer_norm the gate blocks hold the raw x W_ih^T instead of the activations, and G blocks
  // of the raw h_prev W_hh^T follow the cell's: the norms' inputs, from which the backward
  // recomputes the activations (docs/DESIGN.md, "Layer norm").
  int64_t saved_width(int64_t H, bool projected, bool layer_norm = false) const {
    return (projected ? saved_blocks_projected : saved_blocks) * H + (layer_norm ? gates * H : 0);
  }
  int64_t ln_raw_hh_col(int64_t H, bool projected) const { return saved_width(H, projected); }
  int64_t gate_width(int64_t H) const { return gates * H; }
  int64_t grad_width(int64_t H) const { return grad_blocks * H; }
  bool has_cell_state() const { return states == 2; }
  bool has_hidden_bias() const { return hh_bias_input_blocks < gates; }
};

// ---------------------------------------------------------------------------------------------
// LSTM: gates i, f, g, o (torch.nn's order); states h, c.
struct LstmCell {
  static constexpr int64_t kGates = 4, kStates = 2;
  // Gate blocks: rows of w_ih / w_hh, pre-activations, saved activations and gate grads alike.
  static constexpr int64_t kI = 0, kF = 1, kG = 2, kO = 3;
  // Saved activations after the four gates:
  static constexpr int64_t kC = 4;      // the new cell state (the next step's c_prev in backward)
  static constexpr int64_t kHFull = 5;  // o * tanh(c), the projection's input (proj_size only)
  static constexpr int64_t kSavedBlocks = 5, kSavedBlocksProjected = 6;
  static constexpr const char* kSavedNames[] = {"i", "f", "g", "o", "c", "h_full"};
  // Gate grads di, df, dg, do at their gate blocks: the input and the hidden side alike.
  static constexpr int64_t kGradBlocks = 4;
  static constexpr int64_t kHhBiasInputBlocks = 4;  // b_ih + b_hh join the input projection

  C10_HOST_DEVICE FASTRNN_INLINE static int64_t saved_width(int64_t H, bool projected) {
    return (projected ? kSavedBlocksProjected : kSavedBlocks) * H;
  }

  // The saved activations of one position: w points at the (t, b) row of ws plus the unit j.
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void store_saved(T* w, int64_t H, const LstmActivations<V>& v,
                                                         bool projected) {
    using L = Lanes<V>;
    L::store(w + kI * H, v.i);
    L::store(w + kF * H, v.f);
    L::store(w + kG * H, v.g);
    L::store(w + kO * H, v.o);
    L::store(w + kC * H, v.c);
    if (projected) L::store(w + kHFull * H, v.h);
  }
  // With layer norm the gate blocks keep the raw x W_ih^T: only c (h_full: LstmLnOutPoint).
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void store_saved_layer_norm(T* w, int64_t H, const LstmActivations<V>& v) {
    Lanes<V>::store(w + kC * H, v.c);
  }
};

inline constexpr CellInfo kLstmCell{"lstm", "LSTM", "fastrnn::lstm_forward", "fastrnn::lstm_backward",
                                    LstmCell::kGates, LstmCell::kStates, LstmCell::kSavedBlocks,
                                    LstmCell::kSavedBlocksProjected, LstmCell::kSavedNames, LstmCell::kGradBlocks,
                                    LstmCell::kHhBiasInputBlocks, {{0, 0, LstmCell::kGates}, {0, 0, 0}}, 1};

// ---------------------------------------------------------------------------------------------
// GRU: gates r, z, n (torch.nn's order); state h.
struct GruCell {
  static constexpr int64_t kGates = 3, kStates = 1;
  static constexpr int64_t kR = 0, kZ = 1, kN = 2;  // gate blocks, also of the saved activations
  static constexpr int64_t kHn = 3;                 // saved: W_hn h + b_hn (n's hidden part)
  static constexpr int64_t kSavedBlocks = 4, kSavedBlocksProjected = 0;
  static constexpr const char* kSavedNames[] = {"r", "z", "n", "hn"};
  // Gate grads dr, dz, dn (the input side, at the gate blocks), then dn * r, the grad of hn (the
  // hidden side of n). The per-step hidden-side grads [B, G*H] are dr, dz, dn * r at the gate
  // blocks (dW_hh's row order).
  static constexpr int64_t kDnH = 3;
  static constexpr int64_t kGradBlocks = 4;
  static constexpr int64_t kHhBiasInputBlocks = 2;  // b_hr, b_hz join the input projection; b_hn not

  C10_HOST_DEVICE FASTRNN_INLINE static int64_t saved_width(int64_t H, bool /*projected*/ = false) {
    return kSavedBlocks * H;
  }

  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void store_saved(T* w, int64_t H, const GruActivations<V>& v,
                                                         bool /*projected*/ = false) {
    using L = Lanes<V>;
    L::store(w + kR * H, v.r);
    L::store(w + kZ * H, v.z);
    L::store(w + kN * H, v.n);
    L::store(w + kHn * H, v.hn);
  }
  // With layer norm the gate blocks keep the raw x W_ih^T: only hn.
  template <typename V, typename T>
  C10_HOST_DEVICE FASTRNN_INLINE static void store_saved_layer_norm(T* w, int64_t H, const GruActivations<V>& v) {
    Lanes<V>::store(w + kHn * H, v.hn);
  }
};

inline constexpr CellInfo kGruCell{"gru", "GRU", "fastrnn::gru_forward", "fastrnn::gru_backward",
                                   GruCell::kGates, GruCell::kStates, GruCell::kSavedBlocks,
                                   GruCell::kSavedBlocksProjected, GruCell::kSavedNames, GruCell::kGradBlocks,
                                   GruCell::kHhBiasInputBlocks,
                                   {{GruCell::kR, GruCell::kR, GruCell::kN - GruCell::kR}, {GruCell::kDnH, GruCell::kN, 1}},
                                   2};

// Every cell, in the order of the path log's records and of fastrnn._C.cell_traits().
inline constexpr const CellInfo* kCells[] = {&kLstmCell, &kGruCell};
inline constexpr int kNumCells = sizeof(kCells) / sizeof(kCells[0]);

// The cell named `name` ("lstm", "gru"), or nullptr.
inline const CellInfo* find_cell(const char* name) {
  for (const CellInfo* c : kCells) {
    if (std::strcmp(c->name, name) == 0) return c;
  }
  return nullptr;
}

}  // namespace fastrnn
