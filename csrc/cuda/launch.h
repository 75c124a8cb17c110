// The CUDA step launcher, callable from host-compiled code (ops_cuda.cpp): runs Point (a point
// function of steps.h) over the step's rows x units pairs, one thread per pair, on the current
// stream. Defined in kernel_utils.cuh and instantiated for float, double, Half and BFloat16 in
// lstm.cu / gru.cu, so nvcc compiles only those small files.
#pragma once

#include "fastrnn/persistent.h"
#include "fastrnn/steps.h"

namespace fastrnn {
namespace cuda {

template <class Point, class Step>
void launch_step(const Step& a);

// The persistent forward (persistent.cu), for float, double, Half and BFloat16: whether this
// device can run the partition (nullptr, or why not), and the cooperative launch.
template <typename T>
const char* persistent_forward_unavailable(const PersistentPartition& part);
template <typename T>
void launch_persistent_forward(const PersistentForwardArgs<T>& a, const PersistentPartition& part);

}  // namespace cuda
}  // namespace fastrnn
