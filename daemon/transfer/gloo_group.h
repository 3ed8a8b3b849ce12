// GlooGroup: the host backend's communicator between the members of a cluster (one rank per
// member), over Gloo's TCP transport (docs/cluster.md, "Communicators").
//
// Gloo's traffic is neither encrypted nor authenticated (docs/security.md): the rendezvous that
// tells the ranks each other's addresses is authenticated (the Peer API), the bytes are checked by
// their checksums where they land (workers with verify_checksums), and `interface` pins the
// network it uses.
//
// Thread-safety: one collective at a time (the update that owns it).
#ifndef CKPT_DAEMON_TRANSFER_GLOO_GROUP_H_
#define CKPT_DAEMON_TRANSFER_GLOO_GROUP_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"

namespace gloo {
class Context;
}

namespace ckpt::daemon {

class GlooGroup {
 public:
  struct Options {
    int rank = 0;
    int size = 1;
    // Where this rank listens for the others: a host name or IP address of this machine, or a
    // network interface ("eth1") when `interface` is set.
    std::string host;
    std::string interface;
    // Deadline of the rendezvous and of each collective.
    absl::Duration timeout = absl::Seconds(30);
  };
  // Connects every pair of ranks through `store` (every rank calls this at once). Errors name the
  // rank and what failed.
  static absl::StatusOr<std::unique_ptr<GlooGroup>> Create(gloo::rendezvous::Store& store,
                                                           const Options& options);
  ~GlooGroup();

  int rank() const { return options_.rank; }
  int size() const { return options_.size; }

  // Broadcasts `bytes` at `data` from rank `root` to every rank (in place). A failure (a rank gone,
  // the timeout) leaves the group broken: every later call fails at once; create a new one.
  absl::Status Broadcast(uint8_t* data, uint64_t bytes, int root, uint32_t tag);
  bool broken() const { return broken_; }

 private:
  GlooGroup(std::shared_ptr<gloo::Context> context, Options options);
  std::shared_ptr<gloo::Context> context_;
  const Options options_;
  bool broken_ = false;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_TRANSFER_GLOO_GROUP_H_
