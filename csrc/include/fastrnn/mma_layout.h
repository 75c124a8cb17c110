// Fragment layouts of the warp-level tensor-core MMAs the persistent kernels use, as host- and
// device-callable maps from (lane, element index) to (row, col) of the operand tile, written from
// the PTX ISA's tables ("Matrix fragments for mma.m16n8k16 with floating point type" and
// "... for mma.m16n8k8" with .tf32). The device loads and stores fragments through these maps;
// the host emulation (cpu/persistent_mma_emulation.cpp) runs the same loads and stores and a
// warp-level MMA computed through the same maps, and tests/test_persistent_mma.py checks each map
// against entries of the PTX tables and for being a bijection onto its tile.
//
// Notation of the PTX ISA: groupID = lane / 4, threadID_in_group = lane % 4. Element i of a lane
// is the i-th scalar of its fragment in register order: for 16-bit types two per 32-bit
// register, element 2r in the low half of register r.
#pragma once

#include <c10/macros/Macros.h>

namespace fastrnn {
namespace mma {

struct RowCol {
  int row, col;
};

constexpr int kM = 16;  // rows of A and D (gate rows of a CTA)
constexpr int kN = 8;   // columns of B and D (batch rows)

// mma.m16n8k16 (.f16 / .bf16 in, .f32 accumulate): A 16 x 16, 8 elements a lane.
//   a0, a1: (groupID, 2 t + {0, 1});      a2, a3: (groupID + 8, 2 t + {0, 1})
//   a4, a5: (groupID, 2 t + 8 + {0, 1});  a6, a7: (groupID + 8, 2 t + 8 + {0, 1})
C10_HOST_DEVICE constexpr RowCol a_m16n8k16(int lane, int i) {
  return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
}
// B 16 x 8 (K x N), 4 elements a lane: b0, b1: (2 t + {0, 1}, groupID); b2, b3: (2 t + 8 + {0, 1}, groupID)
C10_HOST_DEVICE constexpr RowCol b_m16n8k16(int lane, int i) {
  return {2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
}

// mma.m16n8k8 (.tf32 in, .f32 accumulate): A 16 x 8, 4 elements a lane.
//   a0: (groupID, t); a1: (groupID + 8, t); a2: (groupID, t + 4); a3: (groupID + 8, t + 4)
C10_HOST_DEVICE constexpr RowCol a_m16n8k8(int lane, int i) {
  return {(lane >> 2) + 8 * (i & 1), (lane & 3) + 4 * (i >> 1)};
}
// B 8 x 8, 2 elements a lane: b0: (t, groupID); b1: (t + 4, groupID)
C10_HOST_DEVICE constexpr RowCol b_m16n8k8(int lane, int i) { return {(lane & 3) + 4 * i, lane >> 2}; }

// C and D of both shapes, 16 x 8 .f32, 4 elements a lane: c0, c1: (groupID, 2 t + {0, 1});
// c2, c3: (groupID + 8, 2 t + {0, 1})
C10_HOST_DEVICE constexpr RowCol c_m16n8(int lane, int i) {
  return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

// The shape a storage type multiplies with: 16-bit types m16n8k16; float (as TF32) and, in the
// host emulation only, double m16n8k8.
template <int ElemBytes>
struct Shape {
  static constexpr int kK = 8, kA = 4, kB = 2;
  C10_HOST_DEVICE static constexpr RowCol a(int lane, int i) { return a_m16n8k8(lane, i); }
  C10_HOST_DEVICE static constexpr RowCol b(int lane, int i) { return b_m16n8k8(lane, i); }
};
template <>
struct Shape<2> {
  static constexpr int kK = 16, kA = 8, kB = 4;
  C10_HOST_DEVICE static constexpr RowCol a(int lane, int i) { return a_m16n8k16(lane, i); }
  C10_HOST_DEVICE static constexpr RowCol b(int lane, int i) { return b_m16n8k16(lane, i); }
};
constexpr int kC = 4;  // accumulator elements a lane

// What a warp's mma computes, emulated on the host from fragments: d[lane][i] += sum over k of
// A[row][k] * B[k][col], every operand placed by the maps above. Acc: float (the hardware's
// accumulator) or double (the fp64 emulation); a, b hold the operand values already rounded to
// what the tensor core reads.
template <int ElemBytes, typename Acc>
void emulate_warp_mma(const Acc (*a)[Shape<ElemBytes>::kA], const Acc (*b)[Shape<ElemBytes>::kB], Acc (*d)[kC]) {
  using S = Shape<ElemBytes>;
  Acc A[kM][S::kK] = {}, Bm[S::kK][kN] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < S::kA; ++i) A[S::a(lane, i).row][S::a(lane, i).col] = a[lane][i];
    for (int i = 0; i < S::kB; ++i) Bm[S::b(lane, i).row][S::b(lane, i).col] = b[lane][i];
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < kC; ++i) {
      const RowCol rc = c_m16n8(lane, i);
      Acc sum = 0;
      for (int k = 0; k < S::kK; ++k) sum += A[rc.row][k] * Bm[k][rc.col];
      d[lane][i] += sum;
    }
  }
}

}  // namespace mma
}  // namespace fastrnn
