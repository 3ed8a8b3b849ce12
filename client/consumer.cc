#include "client/consumer.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/descriptor_socket.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"
#include "gpu/gpu_info.h"
#include "gpu/ipc_handle.h"
#include "gpu/ipc_mapping.h"

namespace ckpt::client {

// The worker's mappings of the daemon's slots: read-only shared memory (host) or CUDA IPC
// mappings (cuda). Unmapped on destruction.
class Consumer::Slots {
 public:
  ~Slots() {
    for (auto [data, size] : host_) ::munmap(data, size);
  }
  absl::Status MapHost(const std::vector<ScopedFd>& fds, uint64_t bytes) {
    for (const ScopedFd& fd : fds) {
      void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd.get(), 0);
      if (p == MAP_FAILED) {
        return absl::InternalError(
            absl::StrCat("mapping a staging slot of ", bytes, " bytes: ", std::strerror(errno)));
      }
      host_.push_back({p, bytes});
    }
    return absl::OkStatus();
  }
  absl::Status MapCuda(int device, const v1::SlotGrant& grant) {
    for (const auto& slot : grant.slots()) {
      ASSIGN_OR_RETURN(gpu::IpcHandle handle, gpu::IpcHandle::FromBytes(slot.ipc_handle()));
      auto mapping = gpu::IpcMapping::Open(device, handle, slot.byte_size());
      if (!mapping.ok()) {
        return Annotate(mapping.status(), absl::StrCat("opening staging slot ", slot.index(),
                                                       " on CUDA device ", device));
      }
      cuda_.push_back(*std::move(mapping));
    }
    return absl::OkStatus();
  }
  std::vector<uint8_t*> Addresses() const {
    std::vector<uint8_t*> out;
    for (auto [data, size] : host_) out.push_back(static_cast<uint8_t*>(data));
    for (const auto& m : cuda_) out.push_back(static_cast<uint8_t*>(m.data()));
    return out;
  }

 private:
  std::vector<std::pair<void*, uint64_t>> host_;
  std::vector<gpu::IpcMapping> cuda_;
};

absl::StatusOr<std::unique_ptr<Consumer>> Consumer::Attach(const Endpoint& endpoint,
                                                           ConsumerOptions options) {
  const absl::Time deadline = absl::Now() + options.attach_timeout;
  if (endpoint.unix_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("workers attach over the daemon's Unix socket, not ", endpoint.target,
                     " (CUDA IPC and shared memory only work on the same node)"));
  }
  std::unique_ptr<Consumer> c(new Consumer);
  c->endpoint_ = endpoint;
  c->options_ = options;
  if (options.cuda_device >= 0) {
    auto uuid = gpu::GpuUuid(options.cuda_device);
    if (!uuid.ok()) {
      return Annotate(uuid.status(), absl::StrCat("CUDA device ", options.cuda_device));
    }
    c->gpu_uuid_ = *uuid;
  }

  // 1. Identity: present a nonce on the descriptor socket.
  ASSIGN_OR_RETURN(Presentation presented,
                   PresentOnDescriptorSocket(endpoint.unix_path, {}, deadline));
  ScopedFd side = std::move(presented.connection);
  const std::string nonce = presented.nonce;

  // 2. The stream, read by a background thread from now on.
  ASSIGN_OR_RETURN(c->channel_, OpenChannel(endpoint, /*private_connection=*/true));
  c->stub_ = v1::Consumer::NewStub(c->channel_);
  c->context_ = std::make_unique<grpc::ClientContext>();
  c->stream_ = c->stub_->Attach(c->context_.get());
  c->reader_ = std::thread([raw = c.get()] { raw->ReadLoop(); });
  v1::WorkerMessage hello;
  v1::AttachRequest* request = hello.mutable_attach();
  request->set_gpu_uuid(c->gpu_uuid_);
  request->set_pid(::getpid());
  request->set_engine(options.engine);
  for (const std::string& name : options.tensor_names) request->add_tensor_names(name);
  request->set_nonce(nonce);
  request->set_pausable(static_cast<bool>(options.on_pause));
  // A failed write shows up as the stream's end below.
  (void)c->Write(hello);

  // 3. The daemon's verdict on the descriptor socket ("ok" + memfds on host), then SlotGrant.
  auto verdict = ReceiveWithFds(side.get(), deadline);
  v1::DaemonMessage grant;
  {
    absl::MutexLock lock(&c->mu_);
    auto ready = [raw = c.get()]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(raw->mu_) {
      return raw->ended_ || !raw->inbox_.empty();
    };
    c->mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
    if (!c->inbox_.empty() && c->inbox_.front().has_slots()) {
      grant = std::move(c->inbox_.front());
      c->inbox_.pop_front();
    } else if (c->ended_) {
      return c->end_status_;
    }
  }
  if (!grant.has_slots()) {
    // The destructor cancels the stream.
    if (!verdict.ok()) {
      return Annotate(verdict.status(), absl::StrCat("attaching to ", endpoint.target));
    }
    return absl::DeadlineExceededError(absl::StrCat("attaching to ", endpoint.target,
                                                    ": no slots granted within ",
                                                    absl::FormatDuration(options.attach_timeout)));
  }
  if (!verdict.ok() || verdict->payload != "ok") {
    return absl::InternalError(absl::StrCat(
        "attaching to ", endpoint.target, ": slots granted but the descriptor socket said ",
        verdict.ok() ? verdict->payload : std::string(verdict.status().message())));
  }
  const v1::SlotGrant& slots = grant.slots();
  c->backend_ = slots.backend();
  c->slot_bytes_ = slots.slots_size() > 0 ? slots.slots(0).byte_size() : 0;
  c->mappings_ = std::make_unique<Slots>();
  if (c->backend_ == "host") {
    if (verdict->fds.size() != static_cast<size_t>(slots.slots_size())) {
      return absl::InternalError(absl::StrCat("daemon granted ", slots.slots_size(),
                                              " slots but sent ", verdict->fds.size(),
                                              " descriptors"));
    }
    RETURN_IF_ERROR(c->mappings_->MapHost(verdict->fds, c->slot_bytes_));
  } else {
    if (options.cuda_device < 0) {
      return absl::FailedPreconditionError(
          "the daemon runs the cuda backend: attach with the worker's CUDA device");
    }
    RETURN_IF_ERROR(c->mappings_->MapCuda(options.cuda_device, slots));
  }
  c->slots_ = c->mappings_->Addresses();
  c->pieces_ = std::make_unique<PieceAssembler>(c->backend_ == "cuda" ? options.cuda_device : -1);
  return c;
}

Consumer::~Consumer() {
  if (stream_ != nullptr) {
    {
      absl::MutexLock lock(&write_mu_);
      if (!finished_ && !writes_done_) stream_->WritesDone();
      writes_done_ = true;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!mu_.AwaitWithTimeout(absl::Condition(&ended_), absl::Seconds(5))) {
        context_->TryCancel();
      }
    }
  }
  if (reader_.joinable()) reader_.join();
  // Mappings go before the stream: the daemon may reuse the slots once the stream has ended.
  mappings_.reset();
}

void Consumer::ReadLoop() {
  v1::DaemonMessage message;
  std::string detached;
  while (stream_->Read(&message)) {
    if (message.has_pause()) {
      // The consistent switch: the engine's hook, then the answer (nothing else comes before it).
      absl::Status s = options_.on_pause
                           ? options_.on_pause(message.pause().version())
                           : absl::FailedPreconditionError("this worker has no pause hook");
      v1::WorkerMessage answer;
      answer.mutable_paused()->set_version(message.pause().version());
      if (!s.ok()) answer.mutable_paused()->set_error(std::string(s.message()));
      Write(answer).IgnoreError();  // a broken stream ends this loop at the next Read
      continue;
    }
    if (message.has_resume()) {
      if (options_.on_resume) {
        options_.on_resume(message.resume().version(), message.resume().loaded(),
                           message.resume().error());
      }
      continue;
    }
    if (message.has_detached()) {
      // The daemon is ending the stream: half-close at once so that it need not wait for us.
      detached = message.detached().reason();
      absl::MutexLock lock(&write_mu_);
      if (!writes_done_) stream_->WritesDone();
      writes_done_ = true;
    }
    absl::MutexLock lock(&mu_);
    inbox_.push_back(std::move(message));
  }
  grpc::Status status;
  {
    absl::MutexLock lock(&write_mu_);
    status = stream_->Finish();
    finished_ = true;
  }
  absl::MutexLock lock(&mu_);
  ended_ = true;
  if (!detached.empty()) {
    end_status_ = absl::UnavailableError(absl::StrCat("the daemon ended the stream: ", detached));
  } else if (status.ok()) {
    end_status_ = absl::UnavailableError(
        absl::StrCat("the daemon at ", endpoint_.target, " ended the stream"));
  } else {
    end_status_ = FromGrpc(status, "Consumer.Attach", endpoint_);
  }
}

absl::Status Consumer::Write(const v1::WorkerMessage& message) {
  absl::MutexLock lock(&write_mu_);
  if (finished_ || writes_done_ || !stream_->Write(message)) {
    return absl::UnavailableError(absl::StrCat("the stream to ", endpoint_.target, " is closed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ConsumerEvent> Consumer::Next(absl::Time deadline) {
  for (;;) {
    ASSIGN_OR_RETURN(std::optional<ConsumerEvent> event, NextOnce(deadline));
    if (event.has_value()) return *std::move(event);
  }
}

absl::StatusOr<std::optional<ConsumerEvent>> Consumer::NextOnce(absl::Time deadline) {
  v1::DaemonMessage m;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_ || !inbox_.empty(); };
      mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
      if (inbox_.empty()) {
        if (ended_) return absl::UnavailableError(end_status_.message());
        return absl::DeadlineExceededError("no update from the daemon in time");
      }
      m = std::move(inbox_.front());
      inbox_.pop_front();
    }
    if (!failed_ || !(m.has_bucket() || m.has_done())) break;
    // After a failed bucket: later events of the same attempt are stale; a bucket of another
    // version, or a resend starting over, ends the failure.
    const uint64_t version = m.has_bucket() ? m.bucket().version() : m.done().version();
    if (version == failed_version_ && (m.has_done() || m.bucket().bucket() > failed_bucket_)) {
      continue;
    }
    failed_ = false;
    break;
  }
  if (m.has_detached()) {
    return absl::UnavailableError(
        absl::StrCat("the daemon ended the stream: ", m.detached().reason()));
  }
  ConsumerEvent event;
  if (m.has_done()) {
    event.kind = ConsumerEvent::Kind::kVersionDone;
    event.version = m.done().version();
    // Buffers of split tensors are kept within a version only.
    pieces_->Abandon();
    pieces_->FreeIdle();
    return event;
  }
  if (!m.has_bucket()) return absl::InternalError("unexpected message from the daemon");
  const v1::BucketReady& b = m.bucket();
  event.kind = ConsumerEvent::Kind::kBucket;
  event.version = b.version();
  event.bucket = b.bucket();
  event.last = b.last();
  if (b.bucket() == 0 || b.version() != pieces_version_) {
    pieces_->Abandon();  // a new attempt: nothing of an earlier one continues
    pieces_version_ = b.version();
  }
  // A bucket this worker cannot use is acked with the error, so that the daemon fails this
  // worker's update with it instead of waiting for ack_timeout.
  auto fail = [&](absl::Status s) -> absl::Status {
    pieces_->Abandon();
    absl::Status acked = Ack(event.version, event.bucket, std::string(s.message()));
    return Annotate(s, absl::StrCat("version ", event.version, " bucket ", event.bucket,
                                    acked.ok() ? " (acked as failed)" : " (the ack failed too)"));
  };
  if (b.slot() >= slots_.size()) {
    return fail(
        absl::InternalError(absl::StrCat("daemon named slot ", b.slot(), " of ", slots_.size())));
  }
  bool completed_split = false;
  for (const v1::TensorPlacement& t : b.tensors()) {
    ReceivedTensor v;
    v.name = t.spec().name();
    v.dtype = static_cast<DType>(t.spec().dtype());
    v.shape.assign(t.spec().shape().begin(), t.spec().shape().end());
    v.bytes = t.spec().byte_size();
    v.xxh3 = t.spec().xxh3();
    v.no_checksum = t.no_checksum();
    // bytes 0 with a non-empty tensor: a daemon that never splits (older than this client).
    const uint64_t placed = t.bytes() == 0 && t.tensor_offset() == 0 ? v.bytes : t.bytes();
    if (t.slot_offset() > slot_bytes_ || placed > slot_bytes_ - t.slot_offset()) {
      return fail(absl::InternalError(absl::StrCat("tensor '", v.name, "' (", placed, " bytes at ",
                                                   t.slot_offset(), ") lies outside its slot of ",
                                                   slot_bytes_, " bytes")));
    }
    const uint8_t* view = slots_[b.slot()] + t.slot_offset();
    if (t.tensor_offset() == 0 && placed == v.bytes) {
      v.data = const_cast<uint8_t*>(view);
    } else {
      // A piece of a tensor larger than a slot: handed out whole with its last piece.
      auto whole = pieces_->Add(v.name, v.bytes, t.tensor_offset(), view, placed);
      if (!whole.ok()) return fail(whole.status());
      if (*whole == nullptr) continue;
      v.data = *whole;
      completed_split = true;
    }
    event.tensors.push_back(std::move(v));
  }
  if (completed_split) pieces_->HandOut(event.version, event.bucket);
  if (event.tensors.empty() && b.tensors_size() > 0) {
    // Only a middle piece: nothing to hand out yet; the slot is free again at once.
    RETURN_IF_ERROR(Ack(event.version, event.bucket));
    return std::nullopt;
  }
  if (options_.verify_checksums) RETURN_IF_ERROR(VerifyBucket(event));
  return event;
}

absl::Status Consumer::VerifyBucket(const ConsumerEvent& event) {
  if (verifier_ == nullptr) {
    // Host slots are hashed in place; device slots are copied to host memory first.
    verifier_ = std::make_unique<ChecksumVerifier>(backend_ == "cuda" ? options_.cuda_device : -1);
  }
  std::vector<TensorChecksum> tensors;
  tensors.reserve(event.tensors.size());
  bool any_checksum = false;
  for (const ReceivedTensor& t : event.tensors) {
    // Tensors the daemon made on the way (FP8) have no checksum and say so: skipped.
    any_checksum = any_checksum || t.xxh3 != 0 || t.no_checksum;
    if (!t.no_checksum) tensors.push_back({t.name, t.data, t.bytes, t.xxh3});
  }
  // No real XXH3-64 is 0 in practice (2^-64), that of no bytes included: a bucket without any,
  // none of its tensors marked no_checksum, comes from a daemon that does not send them (older
  // than this client).
  absl::Status verified =
      any_checksum || tensors.empty()
          ? verifier_->Verify(tensors)
          : absl::FailedPreconditionError(
                "the daemon sent no checksums with this bucket (is it older than this client?): "
                "verify_checksums cannot check it");
  if (verified.ok()) return verified;
  // The caller never sees this bucket, so it is failed here: the daemon reports the text, and
  // later events of the attempt are dropped (Ack records the failure).
  absl::Status acked = Ack(event.version, event.bucket, std::string(verified.message()));
  std::string message =
      absl::StrCat("version ", event.version, " bucket ", event.bucket, ": ", verified.message(),
                   " (verify_checksums: the bucket was acked as failed");
  absl::StrAppend(&message,
                  acked.ok() ? ")" : absl::StrCat("; the ack failed: ", acked.message(), ")"));
  return absl::Status(verified.code(), message);
}

absl::Status Consumer::Ack(uint64_t version, uint64_t bucket, const std::string& error) {
  pieces_->Release(version, bucket);
  if (!error.empty()) {
    failed_ = true;
    failed_version_ = version;
    failed_bucket_ = bucket;
    pieces_->Abandon();
  }
  v1::WorkerMessage m;
  m.mutable_ack()->set_version(version);
  m.mutable_ack()->set_bucket(bucket);
  m.mutable_ack()->set_error(error);
  return Write(m);
}

absl::Status Consumer::Loaded(uint64_t version, uint64_t tensors, uint64_t bytes,
                              const std::string& error) {
  v1::WorkerMessage m;
  m.mutable_loaded()->set_version(version);
  m.mutable_loaded()->set_tensors(tensors);
  m.mutable_loaded()->set_bytes(bytes);
  m.mutable_loaded()->set_error(error);
  return Write(m);
}

absl::StatusOr<LoadedVersion> Consumer::ReceiveVersion(
    const std::function<absl::Status(const ConsumerEvent&)>& on_bucket, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  LoadedVersion loaded;
  for (;;) {
    ASSIGN_OR_RETURN(ConsumerEvent event, Next(deadline));
    if (event.kind == ConsumerEvent::Kind::kVersionDone) {
      loaded.version = event.version;
      RETURN_IF_ERROR(Loaded(event.version, loaded.tensors, loaded.bytes));
      return loaded;
    }
    absl::Status s = on_bucket(event);
    RETURN_IF_ERROR(Ack(event.version, event.bucket, s.ok() ? "" : std::string(s.message())));
    if (!s.ok()) return s;
    loaded.tensors += event.tensors.size();
    for (const ReceivedTensor& t : event.tensors) loaded.bytes += t.bytes;
  }
}

}  // namespace ckpt::client
