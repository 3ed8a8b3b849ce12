#include "common/random_id.h"

#include <cstdint>
#include <cstdio>
#include <random>

namespace ckpt {

std::string RandomHex128() {
  std::random_device rd;
  const uint64_t a = (static_cast<uint64_t>(rd()) << 32) | rd();
  const uint64_t b = (static_cast<uint64_t>(rd()) << 32) | rd();
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace ckpt
