// Layer norm's row points (steps.h; docs/DESIGN.md, "Layer norm"): one thread a row for the
// reductions, one a (row, element) pair for the input grads.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernel_utils.cuh"

namespace fastrnn {
namespace cuda {

FASTRNN_INSTANTIATE_STEP(RowStatsPoint, RowStatsStep)
FASTRNN_INSTANTIATE_STEP(RowMeansPoint, RowMeansStep)
FASTRNN_INSTANTIATE_STEP(LnGradMeansPoint, LnBackwardStep)
FASTRNN_INSTANTIATE_STEP(LnInputGradPoint, LnBackwardStep)

}  // namespace cuda
}  // namespace fastrnn
