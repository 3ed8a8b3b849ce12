// The release of ckpt-engine that this build is (daemon, ckptctl and client libraries share it).
#ifndef CKPT_COMMON_VERSION_H_
#define CKPT_COMMON_VERSION_H_

namespace ckpt {

inline constexpr char kVersion[] = "0.1.0";

}  // namespace ckpt

#endif  // CKPT_COMMON_VERSION_H_
