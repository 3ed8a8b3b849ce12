// WorkerRegistry: the workers attached to this daemon and what the daemon knows of each (the
// version it holds, whether its weights are mixed, its last update's result).
//
// The Consumer service adds a worker when its Attach is accepted and removes it when its stream
// ends; an update takes a worker it gave up on (ack timeout, closed stream) out at once (Forget).
//
// Thread-safety: none of its own. Its owner (UpdateEngine) guards it, and every WorkerRecord in it,
// with one mutex; `changes()` counts attaches, removals and changes of a worker's loaded state, so
// that waiters (WaitLoaded) sleep until it moves.
#ifndef CKPT_DAEMON_UPDATE_WORKER_REGISTRY_H_
#define CKPT_DAEMON_UPDATE_WORKER_REGISTRY_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/time/time.h"
#include "proto/admin.pb.h"
#include "proto/consumer.pb.h"

namespace ckpt::daemon {

// Who a worker is, as checked at attach.
struct WorkerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;
  std::string engine;
  std::string gpu_uuid;
  int gpu = 0;                            // index into the transfer backend's slot sets
  std::vector<std::string> tensor_names;  // empty: all
  bool pausable = false;                  // answers Pause, takes Resume (consistent updates)
};

// The daemon's end of one worker's stream (implemented by the Consumer service).
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  // Queues a message for the worker; never blocks. False once the stream is closing or closed.
  virtual bool Send(v1::DaemonMessage message) = 0;
  // Ends the stream: the worker gets Detached{reason}, then the end of the stream.
  virtual void Close(const std::string& reason) = 0;
};

// One attached worker.
struct WorkerRecord {
  uint64_t id = 0;
  WorkerIdentity identity;
  std::unordered_set<std::string> wanted;  // identity.tensor_names as a set; empty: all
  std::shared_ptr<WorkerChannel> channel;
  absl::Time attached;
  uint64_t loaded_version = 0;
  // Non-zero: an update to this version failed for the worker after part of it was sent.
  uint64_t mixed_version = 0;
  uint64_t last_update_version = 0;
  bool last_update_ok = false;
  std::string last_update_error;

  // "worker pid 42 (vllm, GPU-...)", for messages.
  std::string Describe() const;
  v1::WorkerStatus Status() const;
};

class WorkerRegistry {
 public:
  using Map = std::map<uint64_t, std::shared_ptr<WorkerRecord>>;

  // Registers a worker under a new id.
  std::shared_ptr<WorkerRecord> Add(WorkerIdentity identity,
                                    std::shared_ptr<WorkerChannel> channel);
  // Takes worker `id` out (its stream ended); nullptr when it is not registered (forgotten
  // already).
  std::shared_ptr<WorkerRecord> Remove(uint64_t id);
  // Takes `record` out if it is still registered (the daemon gave up on it).
  void Forget(const WorkerRecord& record, const std::string& why);

  const Map& all() const { return workers_; }
  bool empty() const { return workers_.empty(); }
  size_t size() const { return workers_.size(); }
  std::vector<v1::WorkerStatus> Statuses() const;

  uint64_t changes() const { return changes_; }
  // A worker's loaded state changed (or an update ended): wakes waiters.
  void NoteChange() { ++changes_; }

 private:
  Map workers_;
  uint64_t next_id_ = 1;
  uint64_t changes_ = 0;
};

}  // namespace ckpt::daemon

#endif  // CKPT_DAEMON_UPDATE_WORKER_REGISTRY_H_
