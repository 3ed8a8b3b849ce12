// The rendezvous of a communicator (docs/cluster.md, "Communicators"): a small key-value store that
// the ranks of a new communicator use to exchange their addresses.
//
// The member coordinating an update that creates a communicator serves it (RendezvousStore, behind
// Peer.Rendezvous); every rank reaches it through a RendezvousClient (a gloo::rendezvous::Store):
// the coordinator directly, the others over the Peer API. Keys live under a communicator id that
// the coordinator opened for that creation and are erased when it closes it, so a store holds only
// what one creation needs, bounded in keys and bytes.
//
// Thread-safety: every method may be called from any thread.
#ifndef CKPT_DAEMON_CLUSTER_RENDEZVOUS_H_
#define CKPT_DAEMON_CLUSTER_RENDEZVOUS_H_

#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "proto/peer.pb.h"

namespace ckpt::daemon {

inline constexpr size_t kMaxRendezvousKeyBytes = 256;
inline constexpr size_t kMaxRendezvousValueBytes = 48 << 10;
inline constexpr size_t kMaxRendezvousKeys = 4096;
// Longest a Get waits in one call.
inline constexpr absl::Duration kMaxRendezvousWait = absl::Seconds(10);

class RendezvousStore {
 public:
  // Keys "<id>/..." are accepted while `id` is open.
  void Open(const std::string& id);
  void Close(const std::string& id);

  // INVALID_ARGUMENT for a key or value over the limits; PERMISSION_DENIED for a key outside the
  // open ids; RESOURCE_EXHAUSTED when the store is full; ALREADY_EXISTS for a key set twice with
  // another value.
  absl::Status Set(const std::string& key, const std::string& value);
  // The values of `keys`, once every key is set; DEADLINE_EXCEEDED naming the missing keys after
  // `deadline`.
  absl::StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                               absl::Time deadline);

  // Serves one Peer.Rendezvous request.
  absl::StatusOr<v1::RendezvousResponse> Serve(const v1::RendezvousRequest& request);

 private:
  absl::Status CheckKey(const std::string& key) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::set<std::string> open_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

// A gloo::rendezvous::Store over one request function (a local RendezvousStore or the Peer API).
// Keys are put under `prefix` ("<communicator id>/"). Failures throw std::runtime_error (Gloo's
// contract), with the request's error text.
class RendezvousClient final : public gloo::rendezvous::Store {
 public:
  using Call = std::function<absl::StatusOr<v1::RendezvousResponse>(const v1::RendezvousRequest&)>;
  RendezvousClient(std::string prefix, Call call, absl::Duration timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<std::string> GetAll(const std::vector<std::string>& keys, absl::Duration timeout);

  const std::string prefix_;
  const Call call_;
  const absl::Duration timeout_;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_CLUSTER_RENDEZVOUS_H_
