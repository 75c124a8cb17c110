"""The facts about each cell type: the Python twin of csrc/include/fastrnn/cell_traits.h.

The fake kernels (_ops.py) and their argument checks (_op_checks.py) read gate counts and the
saved-activation layout from here instead of writing the numbers again. fastrnn._C.cell_traits()
returns the C++ tables; tests/test_cell_traits.py asserts that the two agree field by field.
Widths and offsets count blocks of H (block q of a per-position row starts at element q * H).
"""
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class CellTraits:
    name: str                     # "lstm": the op prefix (fastrnn::lstm_forward)
    gates: int                    # G: blocks of w_ih / w_hh rows, of the pre-activations
    states: int                   # 2: h and c; 1: h
    saved: Tuple[str, ...]        # the saved blocks of ws per (t, b), projection block included
    saved_blocks: int             # ws width without a projection
    saved_blocks_projected: int   # with a projection (proj_size); 0: the cell has none
    grad_blocks: int              # the backward's gate grads per (t, b)
    hh_bias_input_blocks: int     # leading blocks of b_hh added to the input projection
    hidden: Tuple[Tuple[int, int, int], ...]  # hidden-side gate grads: (column, dW_hh row, length)

    @property
    def forward_op(self) -> str:
        return f"fastrnn::{self.name}_forward"

    @property
    def backward_op(self) -> str:
        return f"fastrnn::{self.name}_backward"

    def saved_width(self, H, projected=False, layer_norm=False):
        """Width W of ws [T, B, W] for hidden size H; layer_norm adds the raw products h W_hh^T
        (G*H) after the cell's blocks."""
        return (self.saved_blocks_projected if projected else self.saved_blocks) * H + (self.gates * H if layer_norm else 0)

    def offset(self, block: str, H):
        """Where a saved block starts in a ws row: e.g. LSTM.offset("c", H) is c's block index times H."""
        return self.saved.index(block) * H


LSTM = CellTraits(name="lstm", gates=4, states=2, saved=("i", "f", "g", "o", "c", "h_full"), saved_blocks=5,
                  saved_blocks_projected=6, grad_blocks=4, hh_bias_input_blocks=4, hidden=((0, 0, 4),))
GRU = CellTraits(name="gru", gates=3, states=1, saved=("r", "z", "n", "hn"), saved_blocks=4, saved_blocks_projected=0,
                 grad_blocks=4, hh_bias_input_blocks=2, hidden=((0, 0, 2), (3, 2, 1)))

CELLS = {c.name: c for c in (LSTM, GRU)}  # in the C++ order (kCells)
