// Test helper: pushes a synthetic version through the raw Trainer API over several streams, slowly
// enough that a test can kill it at any point of the push. Prints "begun N" once BeginVersion
// answered and "committed N" at the end.
//
//   push_client SOCKET TENSORS TENSOR_BYTES CHUNK_BYTES STREAMS
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/trainer.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: push_client SOCKET TENSORS TENSOR_BYTES CHUNK_BYTES STREAMS\n");
    return 2;
  }
  std::string target = std::string("unix:") + argv[1];
  int tensors = std::atoi(argv[2]);
  size_t tensor_bytes = std::strtoull(argv[3], nullptr, 10);
  size_t chunk = std::strtoull(argv[4], nullptr, 10);
  int streams = std::atoi(argv[5]);
  auto stub =
      ckpt::v1::Trainer::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  std::string bytes(tensor_bytes, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 + 7);
  ckpt::v1::BeginVersionRequest begin;
  for (int t = 0; t < tensors; ++t) {
    auto* s = begin.mutable_manifest()->add_tensors();
    s->set_name("t" + std::to_string(t));
    s->set_dtype(ckpt::v1::DTYPE_UINT8);
    s->add_shape(tensor_bytes);
    s->set_byte_size(tensor_bytes);
    s->set_xxh3(XXH3_64bits(bytes.data(), bytes.size()));
  }
  ckpt::v1::BeginVersionResponse begun;
  grpc::ClientContext bctx;
  bctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!stub->BeginVersion(&bctx, begin, &begun).ok()) return 1;
  std::printf("begun %llu\n", static_cast<unsigned long long>(begun.version()));
  std::fflush(stdout);
  std::vector<std::thread> workers;
  for (int k = 0; k < streams; ++k) {
    workers.emplace_back([&, k] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      ckpt::v1::PushChunksResponse response;
      auto writer = stub->PushChunks(&ctx, &response);
      for (int t = k; t < tensors; t += streams) {
        for (size_t off = 0; off < tensor_bytes; off += chunk) {
          ckpt::v1::Chunk c;
          c.set_version(begun.version());
          c.set_upload_token(begun.upload_token());
          c.set_tensor("t" + std::to_string(t));
          c.set_offset(off);
          c.set_data(bytes.data() + off, std::min(chunk, tensor_bytes - off));
          if (!writer->Write(c)) return;
        }
      }
      writer->WritesDone();
      writer->Finish();
    });
  }
  for (auto& w : workers) w.join();
  ckpt::v1::CommitRequest commit;
  commit.set_version(begun.version());
  commit.set_upload_token(begun.upload_token());
  ckpt::v1::VersionInfo info;
  grpc::ClientContext cctx;
  cctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (!stub->Commit(&cctx, commit, &info).ok()) return 1;
  std::printf("committed %llu\n", static_cast<unsigned long long>(info.version()));
  return 0;
}
