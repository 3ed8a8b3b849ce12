// XXH3-64 at the speed of the CPU's widest vector unit: Debian's libxxhash is built for baseline
// x86-64 (SSE2), and its XXH3_*_dispatch functions pick AVX2 or AVX-512 at run time (on the
// single-H200 machine's host, SSE2 XXH3 ran at 6.5 GB/s per thread). Including this header makes
// XXH3_64bits and XXH3_64bits_update those dispatching functions; the checksums are the same.
#ifndef CKPT_COMMON_XXH3_H_
#define CKPT_COMMON_XXH3_H_

#include <xxhash.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#endif

#include <memory>

namespace ckpt {

// A streaming XXH3 state that frees itself (XXH3_createState: null when out of memory).
struct Xxh3StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};
using Xxh3State = std::unique_ptr<XXH3_state_t, Xxh3StateDeleter>;

}  // namespace ckpt

#endif  // CKPT_COMMON_XXH3_H_
