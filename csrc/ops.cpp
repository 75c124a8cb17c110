// Op schemas of the fastrnn library, and the Python module that loads them. Always compiled,
// CPU-only builds included; device kernels register under cpu/ and cuda/.
//
// One call is one layer in one direction over a whole time-major sequence (docs/DESIGN.md, "Op
// contract"):
//   x [T, B, I], h0/c0 [B, H], w_ih [G*H, I], w_hh [G*H, H], b_ih/b_hh [G*H] (G: the cell's
//   gates), lengths int64 [B] with values in [1, T]. Forward returns (y [T, B, H], h_n, [c_n,] ws)
//   where ws is the workspace backward needs, the saved activations: [T, B, W] when save, else
//   [0], with W and the layout from the cell's table (fastrnn/cell_traits.h; docs/DESIGN.md,
//   "Workspace").
//   LSTM with projection (nn.LSTM's proj_size = P): w_hr [P, H]; then w_hh is [4H, P], h0, h_n
//   are [B, P], y is [T, B, P], ws also holds o * tanh(c) before the projection, and backward
//   also returns dw_hr (else an empty tensor).
//   Layer norm (the layer_norm option): ln_ih, ln_hh [G*H] (and LSTM ln_c_w, ln_c_b [H]), all or
//   none; the backward then also returns their grads (else empty tensors). docs/DESIGN.md,
//   "Layer norm".
//   Zoneout and recurrent dropout (optional, the same tensors to forward and backward):
//   zoneout_h [T, B, P] / zoneout_c [T, B, H] keep weights in time order, or 0-dim (one keep
//   weight for every position); rec_mask [B, P] the mask on h_{t-1} where it enters W_hh.
#include <Python.h>
#include <torch/library.h>

#include "fastrnn/cell_traits.h"
#include "fastrnn/path_log.h"

TORCH_LIBRARY(fastrnn, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse, bool save, Tensor? ln_ih=None, "
      "Tensor? ln_hh=None, Tensor? ln_c_w=None, Tensor? ln_c_b=None, Tensor? zoneout_h=None, "
      "Tensor? zoneout_c=None, Tensor? rec_mask=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor y, Tensor ws, Tensor? lengths, bool reverse, "
      "bool has_bias, Tensor? ln_ih=None, Tensor? ln_hh=None, Tensor? ln_c_w=None, Tensor? ln_c_b=None, "
      "Tensor? zoneout_h=None, Tensor? zoneout_c=None, Tensor? rec_mask=None, Tensor? b_ih=None, "
      "Tensor? b_hh=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor)");
  m.def(
      "gru_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse, bool save, Tensor? ln_ih=None, Tensor? ln_hh=None, "
      "Tensor? zoneout_h=None, Tensor? rec_mask=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gru_backward(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor y, Tensor ws, Tensor? lengths, bool reverse, bool has_bias, Tensor? ln_ih=None, "
      "Tensor? ln_hh=None, Tensor? zoneout_h=None, Tensor? rec_mask=None, Tensor? b_ih=None, "
      "Tensor? b_hh=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {

// last_path(op: str) -> dict | None: which implementation ran the last call of op
// ("lstm_forward", ...): {"path": "cpu.step_loop" | "cpu.single_step" | "cpu.persistent" |
// "cpu.persistent_emulation" | "cuda.step_loop" | "cuda.persistent" | "cuda.persistent_mma",
// "grad_chunks": runs of steps the backward folded its gate grads in (0 for forwards),
// "fallback": why the preferred path did not run it (only when one was preferred and refused)};
// None before the first call. For tests and diagnostics.
PyObject* last_path(PyObject*, PyObject* arg) {
  const char* op = PyUnicode_AsUTF8(arg);
  if (op == nullptr) return nullptr;
  if (!fastrnn::PathLog::known(op)) {
    PyErr_Format(PyExc_ValueError, "fastrnn._C.last_path: unknown op '%s'", op);
    return nullptr;
  }
  fastrnn::PathRecord r;
  if (!fastrnn::PathLog::get(op, r)) Py_RETURN_NONE;
  if (r.fallback != nullptr) {
    return Py_BuildValue("{s:s,s:L,s:s}", "path", r.path, "grad_chunks", static_cast<long long>(r.grad_chunks),
                         "fallback", r.fallback);
  }
  return Py_BuildValue("{s:s,s:L}", "path", r.path, "grad_chunks", static_cast<long long>(r.grad_chunks));
}

// cell_traits() -> list of dict: the C++ cell tables (cell_traits.h), so that tests compare them
// with fastrnn/_cells.py. Each: name, gates, states, saved (the saved blocks' names, projection
// block included), saved_blocks, saved_blocks_projected, grad_blocks, hh_bias_input_blocks,
// hidden (the (col, row, len) blocks of the hidden-side gate grads), all in blocks of H.
PyObject* cell_traits(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  if (out == nullptr) return nullptr;
  for (const fastrnn::CellInfo* c : fastrnn::kCells) {
    const int64_t n = c->saved_blocks_projected > 0 ? c->saved_blocks_projected : c->saved_blocks;
    PyObject* saved = PyTuple_New(n);
    PyObject* hidden = PyTuple_New(c->hidden_count);
    if (saved == nullptr || hidden == nullptr) {
      Py_XDECREF(saved);
      Py_XDECREF(hidden);
      Py_DECREF(out);
      return nullptr;
    }
    for (int64_t i = 0; i < n; ++i) PyTuple_SET_ITEM(saved, i, PyUnicode_FromString(c->saved_names[i]));
    for (int64_t i = 0; i < c->hidden_count; ++i) {
      const fastrnn::HiddenBlock& b = c->hidden[i];
      PyTuple_SET_ITEM(hidden, i, Py_BuildValue("(LLL)", static_cast<long long>(b.col), static_cast<long long>(b.row),
                                                static_cast<long long>(b.len)));
    }
    PyObject* d = Py_BuildValue("{s:s,s:L,s:L,s:N,s:L,s:L,s:L,s:L,s:N}", "name", c->name, "gates",
                                static_cast<long long>(c->gates), "states", static_cast<long long>(c->states), "saved",
                                saved, "saved_blocks", static_cast<long long>(c->saved_blocks),
                                "saved_blocks_projected", static_cast<long long>(c->saved_blocks_projected),
                                "grad_blocks", static_cast<long long>(c->grad_blocks), "hh_bias_input_blocks",
                                static_cast<long long>(c->hh_bias_input_blocks), "hidden", hidden);
    if (d == nullptr || PyList_Append(out, d) != 0) {
      Py_XDECREF(d);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(d);
  }
  return out;
}

PyMethodDef methods[] = {
    {"last_path", last_path, METH_O, "Which implementation ran the last call of a fastrnn op."},
    {"cell_traits", cell_traits, METH_NOARGS, "The C++ cell tables (gates, states, saved layout), for tests."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

// `import fastrnn._C` runs the static registrations above; the module itself only holds
// diagnostics.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastrnn kernels (registered as torch.ops.fastrnn)",
                            -1, methods, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
