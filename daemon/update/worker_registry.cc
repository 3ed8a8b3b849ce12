#include "daemon/update/worker_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {

std::string WorkerRecord::Describe() const {
  return absl::StrCat("worker pid ", identity.pid, " (",
                      identity.engine.empty() ? "?" : identity.engine,
                      identity.gpu_uuid.empty() ? "" : absl::StrCat(", ", identity.gpu_uuid), ")");
}

v1::WorkerStatus WorkerRecord::Status() const {
  v1::WorkerStatus w;
  w.set_pid(identity.pid);
  w.set_uid(identity.uid);
  w.set_engine(identity.engine);
  w.set_gpu_uuid(identity.gpu_uuid);
  w.set_loaded_version(loaded_version);
  w.set_attached_unix_ms(absl::ToUnixMillis(attached));
  w.set_tensor_filter(static_cast<uint32_t>(wanted.size()));
  w.set_mixed_version(mixed_version);
  w.set_last_update_version(last_update_version);
  w.set_last_update_ok(last_update_ok);
  w.set_last_update_error(last_update_error);
  return w;
}

std::shared_ptr<WorkerRecord> WorkerRegistry::Add(WorkerIdentity identity,
                                                  std::shared_ptr<WorkerChannel> channel) {
  auto record = std::make_shared<WorkerRecord>();
  record->identity = std::move(identity);
  record->wanted.insert(record->identity.tensor_names.begin(), record->identity.tensor_names.end());
  record->channel = std::move(channel);
  record->attached = absl::Now();
  record->id = next_id_++;
  workers_[record->id] = record;
  ++changes_;
  spdlog::info("{} attached", record->Describe());
  return record;
}

std::shared_ptr<WorkerRecord> WorkerRegistry::Remove(uint64_t id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return nullptr;
  std::shared_ptr<WorkerRecord> record = std::move(it->second);
  workers_.erase(it);
  ++changes_;
  return record;
}

void WorkerRegistry::Forget(const WorkerRecord& record, const std::string& why) {
  auto it = workers_.find(record.id);
  if (it == workers_.end() || it->second.get() != &record) return;
  spdlog::info("{} removed: {}", record.Describe(), why);
  workers_.erase(it);
  ++changes_;
}

std::vector<v1::WorkerStatus> WorkerRegistry::Statuses() const {
  std::vector<v1::WorkerStatus> out;
  out.reserve(workers_.size());
  for (const auto& [id, w] : workers_) out.push_back(w->Status());
  return out;
}

}  // namespace ckpt::daemon
