// LSTM step kernels: the point functions of steps.h (math in cell_math.h) over one step.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernel_utils.cuh"

namespace fastrnn {
namespace cuda {

FASTRNN_INSTANTIATE_STEP(LstmForwardPoint, LstmForwardStep)
FASTRNN_INSTANTIATE_STEP(LstmBackwardPoint, LstmBackwardStep)
FASTRNN_INSTANTIATE_STEP(LstmProjCommitPoint, LstmProjCommitStep)
FASTRNN_INSTANTIATE_STEP(LstmProjBackwardPoint, LstmProjBackwardStep)
FASTRNN_INSTANTIATE_STEP(LstmLnOutPoint, LstmForwardStep)
FASTRNN_INSTANTIATE_STEP(LstmLnOutBackwardPoint, LstmBackwardStep)
FASTRNN_INSTANTIATE_STEP(LstmLnCellBackwardPoint, LstmBackwardStep)

}  // namespace cuda
}  // namespace fastrnn
