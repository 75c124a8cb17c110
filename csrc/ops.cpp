// Op schemas of the fastrnn library, and the Python module that loads them. Always compiled,
// CPU-only builds included; device kernels register under cpu/ and cuda/.
//
// One call is one layer in one direction over a whole time-major sequence (see DESIGN.md):
//   x [T, B, I], h0/c0 [B, H], w_ih [G*H, I], w_hh [G*H, H], b_ih/b_hh [G*H] (G = 4 LSTM, 3 GRU),
//   lengths int64 [B] with values in [1, T]. Forward returns (y [T, B, H], h_n, [c_n,] ws) where
//   ws is what backward needs: [T, B, 5H] (LSTM) / [T, B, 4H] (GRU) when save, else [0].
//   LSTM with projection (nn.LSTM's proj_size = P): w_hr [P, H]; then w_hh is [4H, P], h0, h_n
//   are [B, P], y is [T, B, P], ws is [T, B, 6H] (adds o * tanh(c) before projection), and
//   backward also returns dw_hr (else an empty tensor).
#include <Python.h>
#include <torch/library.h>

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

// `import fastrnn._C` only has to run the static registrations above; the module is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastrnn kernels (registered as torch.ops.fastrnn)",
                            -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
