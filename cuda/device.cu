// CUDA device discovery. Any error from the runtime (e.g. 35, no driver, on machines without a GPU) means
// "no GPU": the engine then runs on the CPU.
#include <cuda_runtime.h>

namespace pd {

int cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky error so later calls are not confused by it
        return 0;
    }
    return count;
}

}  // namespace pd
