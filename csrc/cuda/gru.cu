// GRU step kernels: the point functions of steps.h (math in cell_math.h) over one step.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernel_utils.cuh"

namespace fastrnn {
namespace cuda {

FASTRNN_INSTANTIATE_STEP(GruForwardPoint, GruForwardStep)
FASTRNN_INSTANTIATE_STEP(GruBackwardPoint, GruBackwardStep)

}  // namespace cuda
}  // namespace fastrnn
