#include "daemon/store/id_ledger.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

namespace ckpt::daemon {
namespace {

struct Dir {
  Dir() {
    char templ[] = "/tmp/id_ledger_test.XXXXXX";
    path = ::mkdtemp(templ);
  }
  ~Dir() {
    std::remove((path + "/" + IdLedger::kFileName).c_str());
    std::remove((path + "/" + IdLedger::kFileName + ".tmp").c_str());
    ::rmdir(path.c_str());
  }
  std::string file() const { return path + "/" + IdLedger::kFileName; }
  std::string path;
};

v1::Manifest OneTensor(uint64_t xxh3) {
  v1::Manifest m;
  v1::TensorSpec* t = m.add_tensors();
  t->set_name("w");
  t->set_dtype(v1::DTYPE_FLOAT32);
  t->add_shape(4);
  t->set_byte_size(16);
  t->set_xxh3(xxh3);
  return m;
}

TEST_CASE("ids and digests survive a reopen; the file stays small") {
  Dir dir;
  {
    auto ledger = IdLedger::Open(dir.path);
    REQUIRE(ledger.ok());
    CHECK((*ledger)->max_id() == 0);
    CHECK((*ledger)->floor() == 0);
    REQUIRE((*ledger)->RecordBegun(7).ok());  // reserves 7 .. 7 + kReserve - 1
    CHECK((*ledger)->max_id() == 7 + IdLedger::kReserve - 1);
    CHECK((*ledger)->floor() == 0);           // this run's automatic ids are not pushed up
    REQUIRE((*ledger)->RecordBegun(3).ok());  // within the reservation: no change
    REQUIRE((*ledger)->RecordCommitted(7, IdLedger::Digest(OneTensor(42))).ok());
  }
  auto again = IdLedger::Open(dir.path);
  REQUIRE(again.ok());
  CHECK((*again)->max_id() == 7 + IdLedger::kReserve - 1);
  CHECK((*again)->floor() == 7 + IdLedger::kReserve - 1);  // the next run starts above it
  REQUIRE((*again)->CommittedDigest(7).has_value());
  CHECK(*(*again)->CommittedDigest(7) == IdLedger::Digest(OneTensor(42)));
  CHECK_FALSE((*again)->CommittedDigest(3).has_value());
  CHECK(IdLedger::Digest(OneTensor(42)) != IdLedger::Digest(OneTensor(43)));
  // Only the last 1024 commits are kept.
  for (uint64_t id = 10; id < 10 + IdLedger::kMaxCommitted + 5; ++id) {
    REQUIRE((*again)->RecordCommitted(id, id).ok());
  }
  CHECK_FALSE((*again)->CommittedDigest(7).has_value());
  CHECK((*again)->CommittedDigest(10 + IdLedger::kMaxCommitted + 4).has_value());
  struct stat st;
  REQUIRE(::stat(dir.file().c_str(), &st) == 0);
  CHECK(st.st_size < (64 << 10));
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("a damaged or foreign ledger stops the start with a message naming it") {
  Dir dir;
  for (const std::string& text :
       {std::string("not json"), std::string("[]"), std::string("{\"format\": 2}"),
        std::string("{\"format\": 1, \"max_version_id\": -1}"),
        std::string("{\"format\": 1, \"max_version_id\": 5, \"committed\": [[1, \"zz\"]]}")}) {
    INFO(text);
    std::ofstream(dir.file()) << text;
    auto ledger = IdLedger::Open(dir.path);
    REQUIRE_FALSE(ledger.ok());
    CHECK(ledger.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(std::string(ledger.status().message()).find(dir.file()) != std::string::npos);
  }
  std::ofstream(dir.file()) << "{\"format\": 1, \"max_version_id\": 9223372036854775808}";
  CHECK(IdLedger::Open(dir.path).status().code() == absl::StatusCode::kFailedPrecondition);
  std::remove(dir.file().c_str());
  // A FIFO (or anything) left at the temporary name is replaced, not waited on.
  REQUIRE(::mkfifo((dir.file() + ".tmp").c_str(), 0600) == 0);
  {
    auto ledger = IdLedger::Open(dir.path);
    REQUIRE(ledger.ok());
    CHECK((*ledger)->RecordBegun(5).ok());
  }
  std::remove(dir.file().c_str());
  // Not a directory.
  auto file = IdLedger::Open("/etc/hostname");
  CHECK_FALSE(file.ok());
  CHECK(std::string(file.status().message()).find("not a directory") != std::string::npos);
  auto missing = IdLedger::Open(dir.path + "/nope");
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ckpt::daemon
