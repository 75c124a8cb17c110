// Launchers of the fused step kernels (defined in lstm.cu / gru.cu), one thread per (b, j)
// pair, on the current CUDA stream. Explicitly instantiated for float, double, Half, BFloat16.
#pragma once

#include "fastrnn/cell_math.h"

namespace fastrnn {
namespace cuda {

template <typename T> void launch_lstm_forward(const LstmForwardStep<T>& a);
template <typename T> void launch_lstm_backward(const LstmBackwardStep<T>& a);
template <typename T> void launch_lstm_proj_commit(const LstmProjCommitStep<T>& a);
template <typename T> void launch_lstm_proj_backward(const LstmProjBackwardStep<T>& a);
template <typename T> void launch_gru_forward(const GruForwardStep<T>& a);
template <typename T> void launch_gru_backward(const GruBackwardStep<T>& a);

}  // namespace cuda
}  // namespace fastrnn
