// The Consumer.Attach protocol by hand, for tests of what the daemon refuses: the client library
// always speaks it correctly, so bad nonces, wrong pids and foreign GPU UUIDs need a raw client.
#ifndef CKPT_TESTS_TESTING_RAW_ATTACH_H_
#define CKPT_TESTS_TESTING_RAW_ATTACH_H_

#include <string>

#include "grpcpp/support/status.h"
#include "proto/consumer.pb.h"

namespace ckpt::testing {

struct RawAttachResult {
  grpc::Status status;     // the stream's final status
  bool got_slots = false;  // a SlotGrant arrived first
  std::string verdict;     // what the descriptor socket answered ("ok", "refused: ...")
  // Host backend: the slot memfds that came with "ok"; of those, how many this process could map
  // for reading, and how many it could change in any way (a writable shared mapping, write(2),
  // or either through a read-write reopen of /proc/self/fd/N). Workers must not write slots.
  int slot_fds = 0;
  int readable_slots = 0;
  int writable_slots = 0;
};

// Presents request.nonce() on `<socket>.fds` when `present_nonce` (as `request`'s pid would be
// checked against this process), sends `request` on Consumer.Attach, and reads until the stream
// ends; after a SlotGrant it half-closes. Every wait has a 20 s deadline.
RawAttachResult RawAttach(const std::string& socket, const v1::AttachRequest& request,
                          bool present_nonce);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_RAW_ATTACH_H_
