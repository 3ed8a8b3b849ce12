// The text form of a GPU's UUID, as nvidia-smi prints it and as daemons, workers and trainers
// exchange it: "GPU-" and the 16 bytes as 8-4-4-4-12 lowercase hex digits. Pure (no CUDA), so the
// client libraries format it from the driver's bytes the way the daemon does.
#ifndef CKPT_COMMON_GPU_UUID_H_
#define CKPT_COMMON_GPU_UUID_H_

#include <string>

namespace ckpt {

std::string FormatGpuUuid(const unsigned char (&bytes)[16]);

}  // namespace ckpt

#endif  // CKPT_COMMON_GPU_UUID_H_
