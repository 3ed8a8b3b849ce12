#include "tests/testing/raw_attach.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>

#include "absl/time/clock.h"
#include "common/fd_passing.h"
#include "common/scoped_fd.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/consumer.grpc.pb.h"

namespace ckpt::testing {

RawAttachResult RawAttach(const std::string& socket, const v1::AttachRequest& request,
                          bool present_nonce) {
  RawAttachResult result;
  ScopedFd side;
  if (present_nonce) {
    side = ScopedFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = socket + ".fds";
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(side.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        !SendWithFds(side.get(), request.nonce(), {}, absl::Now() + absl::Seconds(20)).ok()) {
      result.status = grpc::Status(grpc::StatusCode::INTERNAL, "cannot present the nonce");
      return result;
    }
  }
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  auto stub = v1::Consumer::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = stub->Attach(&context);
  v1::WorkerMessage hello;
  *hello.mutable_attach() = request;
  stream->Write(hello);
  v1::DaemonMessage message;
  while (stream->Read(&message)) {
    if (message.has_slots()) {
      result.got_slots = true;
      stream->WritesDone();
    }
  }
  result.status = stream->Finish();
  if (side.valid()) {
    auto verdict = ReceiveWithFds(side.get(), absl::Now() + absl::Seconds(5));
    if (verdict.ok()) {
      result.verdict = verdict->payload;
      for (const ScopedFd& fd : verdict->fds) {
        ++result.slot_fds;
        struct stat st;
        if (::fstat(fd.get(), &st) != 0 || st.st_size == 0) continue;
        const size_t size = static_cast<size_t>(st.st_size);
        void* r = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
        if (r != MAP_FAILED) {
          ++result.readable_slots;
          ::munmap(r, size);
        }
        bool writable = false;
        void* w = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (w != MAP_FAILED) {
          writable = true;
          ::munmap(w, size);
        }
        const char byte = 'x';
        writable = writable || ::pwrite(fd.get(), &byte, 1, 0) == 1;
        const std::string self = "/proc/self/fd/" + std::to_string(fd.get());
        ScopedFd reopened(::open(self.c_str(), O_RDWR | O_CLOEXEC));
        if (reopened.valid()) {
          writable = writable || ::pwrite(reopened.get(), &byte, 1, 0) == 1;
          void* w2 = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, reopened.get(), 0);
          if (w2 != MAP_FAILED) {
            writable = true;
            ::munmap(w2, size);
          }
        }
        result.writable_slots += writable;
      }
    }
  }
  return result;
}

}  // namespace ckpt::testing
