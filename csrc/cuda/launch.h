// The CUDA step launcher, callable from host-compiled code (ops_cuda.cpp): runs Point (a point
// function of steps.h) over the step's rows x units pairs, one thread per pair, on the current
// stream. Defined in kernel_utils.cuh and instantiated for float, double, Half and BFloat16 in
// lstm.cu / gru.cu, so nvcc compiles only those small files.
#pragma once

#include "fastrnn/steps.h"

namespace fastrnn {
namespace cuda {

template <class Point, class Step>
void launch_step(const Step& a);

}  // namespace cuda
}  // namespace fastrnn
