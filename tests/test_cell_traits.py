"""The cell tables: the C++ one (csrc/include/fastrnn/cell_traits.h, via fastrnn._C.cell_traits())
and the Python one (fastrnn/_cells.py) agree, and the named blocks of the saved activations are
where the kernels really write them (checked through the cell equations on the saved values)."""
import pytest
import torch

import fastrnn
from fastrnn._cells import CELLS, GRU, LSTM

ops = torch.ops.fastrnn
T, B, I, H, P = 5, 3, 4, 6, 2
# The checks below recompute one cell equation in float64 from values the kernel stored: a few
# roundings of O(1) values (gates in (0, 1), tanh in (-1, 1), states of a few units over 5
# steps), so they hold to a few ulp; 1e-12 leaves a wide margin and still catches any block at a
# wrong offset (those differ by O(0.1)).
TOL = 1e-12


def test_python_table_matches_the_cpp_table():
    cpp = fastrnn._C.cell_traits()
    assert [c["name"] for c in cpp] == list(CELLS)
    for c in cpp:
        py = CELLS[c["name"]]
        assert c == {"name": py.name, "gates": py.gates, "states": py.states, "saved": py.saved,
                     "saved_blocks": py.saved_blocks, "saved_blocks_projected": py.saved_blocks_projected,
                     "grad_blocks": py.grad_blocks, "hh_bias_input_blocks": py.hh_bias_input_blocks,
                     "hidden": py.hidden}


def _r(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _block(ws, cell, name):
    off = cell.offset(name, H)
    return ws[..., off:off + H]


@pytest.mark.parametrize("proj", [False, True])
def test_lstm_saved_blocks(proj):
    g = torch.Generator().manual_seed(0)
    Pn = P if proj else H
    x, h0, c0 = _r(g, T, B, I), _r(g, B, Pn), _r(g, B, H)
    w_ih, w_hh, b_ih, b_hh = _r(g, 4 * H, I), _r(g, 4 * H, Pn), _r(g, 4 * H), _r(g, 4 * H)
    w_hr = _r(g, P, H) if proj else None
    y, h_n, c_n, ws = ops.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, None, False, True)
    assert ws.shape == (T, B, LSTM.saved_width(H, proj))
    i, f, gg, o, c = (_block(ws, LSTM, n) for n in ("i", "f", "g", "o", "c"))
    c_prev = torch.cat([c0[None], c[:-1]])
    torch.testing.assert_close(c, f * c_prev + i * gg, atol=TOL, rtol=0)
    torch.testing.assert_close(c[-1], c_n, atol=0, rtol=0)
    h_full = o * torch.tanh(c)
    if proj:
        torch.testing.assert_close(_block(ws, LSTM, "h_full"), h_full, atol=TOL, rtol=0)
        torch.testing.assert_close(y, h_full @ w_hr.t(), atol=TOL, rtol=0)
    else:
        torch.testing.assert_close(y, h_full, atol=TOL, rtol=0)


def test_gru_saved_blocks():
    g = torch.Generator().manual_seed(1)
    x, h0 = _r(g, T, B, I), _r(g, B, H)
    w_ih, w_hh, b_ih, b_hh = _r(g, 3 * H, I), _r(g, 3 * H, H), _r(g, 3 * H), _r(g, 3 * H)
    y, h_n, ws = ops.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, False, True)
    assert ws.shape == (T, B, GRU.saved_width(H))
    r, z, n, hn = (_block(ws, GRU, k) for k in GRU.saved)
    h_prev = torch.cat([h0[None], y[:-1]])
    # hn = W_hn h + b_hn: the n rows of w_hh and the b_hh entries that stay out of the input projection
    rows = slice(GRU.hh_bias_input_blocks * H, GRU.gates * H)
    torch.testing.assert_close(hn, h_prev @ w_hh[rows].t() + b_hh[rows], atol=TOL, rtol=0)
    torch.testing.assert_close(y, (1 - z) * n + z * h_prev, atol=TOL, rtol=0)
    n_rows = slice(GRU.offset("n", H), GRU.offset("n", H) + H)  # gate n's block (gates lead the saved row)
    torch.testing.assert_close(n, torch.tanh(x @ w_ih[n_rows].t() + b_ih[n_rows] + r * hn), atol=TOL, rtol=0)
