// Op schemas of the fastrnn library, and the Python module that loads them. Always compiled,
// CPU-only builds included; device kernels register under cpu/ and cuda/.
//
// One call is one layer in one direction over a whole time-major sequence (docs/DESIGN.md, "Op
// contract"):
//   x [T, B, I], h0/c0 [B, H], w_ih [G*H, I], w_hh [G*H, H], b_ih/b_hh [G*H] (G = 4 LSTM, 3 GRU),
//   lengths int64 [B] with values in [1, T]. Forward returns (y [T, B, H], h_n, [c_n,] ws) where
//   ws is the workspace backward needs, the saved activations: [T, B, 5H] (LSTM: i, f, g, o, c)
//   / [T, B, 4H] (GRU: r, z, n, W_hn h + b_hn) when save, else [0].
//   LSTM with projection (nn.LSTM's proj_size = P): w_hr [P, H]; then w_hh is [4H, P], h0, h_n
//   are [B, P], y is [T, B, P], ws is [T, B, 6H] (adds o * tanh(c) before projection), and
//   backward also returns dw_hr (else an empty tensor).
#include <Python.h>
#include <torch/library.h>

#include "fastrnn/path_log.h"

TORCH_LIBRARY(fastrnn, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse, bool save) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor y, Tensor ws, Tensor? lengths, bool reverse, "
      "bool has_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gru_backward(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor y, Tensor ws, Tensor? lengths, bool reverse, bool has_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {

// last_path(op: str) -> dict | None: which implementation ran the last call of op
// ("lstm_forward", ...): {"path": "cpu.step_loop" | "cpu.single_step" | "cpu.persistent" |
// "cuda.step_loop" | "cuda.persistent", "grad_chunks": runs of steps the backward folded its gate
// grads in (0 for forwards)}; None before the first call. For tests and diagnostics.
PyObject* last_path(PyObject*, PyObject* arg) {
  const char* op = PyUnicode_AsUTF8(arg);
  if (op == nullptr) return nullptr;
  if (!fastrnn::PathLog::known(op)) {
    PyErr_Format(PyExc_ValueError, "fastrnn._C.last_path: unknown op '%s'", op);
    return nullptr;
  }
  fastrnn::PathRecord r;
  if (!fastrnn::PathLog::get(op, r)) Py_RETURN_NONE;
  return Py_BuildValue("{s:s,s:L}", "path", r.path, "grad_chunks", static_cast<long long>(r.grad_chunks));
}

PyMethodDef methods[] = {
    {"last_path", last_path, METH_O, "Which implementation ran the last call of a fastrnn op."},
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
