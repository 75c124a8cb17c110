// The CUDA step launcher, callable from host-compiled code (ops_cuda.cpp): runs Point (a point
// function of steps.h) over the step's rows x units pairs, one thread per pair, on the current
// stream. Defined in kernel_utils.cuh and instantiated for float, double, Half and BFloat16 in
// lstm.cu / gru.cu, so nvcc compiles only those small files.
#pragma once

#include "fastrnn/persistent.h"
#include "fastrnn/persistent_mma.h"
#include "fastrnn/persistent_mma_bwd.h"
#include "fastrnn/single_step.h"
#include "fastrnn/steps.h"

namespace fastrnn {
namespace cuda {

template <class Point, class Step>
void launch_step(const Step& a);

// The persistent forward (persistent.cu), for float, double, Half and BFloat16: whether this
// device can run the partition with all its blocks resident on `sms` multiprocessors (nullptr,
// or why not), and the cooperative launch: nullptr, or why the device refused it (a grid that
// cannot be co-resident; nothing ran, the error is cleared). Other launch errors raise.
template <typename T>
const char* persistent_forward_unavailable(const PersistentPartition& part, int64_t sms);
template <typename T>
const char* launch_persistent_forward(const PersistentForwardArgs<T>& a, const PersistentPartition& part);

// The tensor-core persistent forward (persistent_mma.cu), for float, Half and BFloat16 (double:
// always unavailable): whether this device can run a G-gate layer of H units over B rows with
// all its CTAs resident on `sms` multiprocessors (nullptr, or why not; fills the partition), and
// the launch (nullptr, or why the device refused it; nothing ran). split: fp32 as 3xTF32.
template <typename T>
const char* persistent_mma_unavailable(int64_t G, int64_t H, int64_t B, int64_t sms, MmaPartition& part);
template <typename T>
const char* launch_persistent_mma_forward(const PersistentForwardArgs<T>& a, const MmaPartition& part, bool split);

// The tensor-core persistent backward (persistent_mma.cu), the same pair: whether this device can
// run a G-gate layer of H units over B rows (fills the partition), and the launch of the
// arguments run_persistent_backward (persistent_host.h) prepared (counters: the launcher's).
template <typename T>
const char* persistent_mma_bwd_unavailable(int64_t G, int64_t H, int64_t B, int64_t sms, MmaBwdPartition& part);
template <typename T>
const char* launch_persistent_mma_backward(const PersistentMmaBwdArgs<T>& a, const MmaBwdPartition& part);

// The fused single step (single_step.cu), for float, double, Half and BFloat16: one launch of
// the arguments run_single_step (persistent_host.h) prepared, on the current stream.
template <typename T>
void launch_single_step(const SingleStepArgs<T>& a);

}  // namespace cuda
}  // namespace fastrnn
