#include "daemon/update/push_feed.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

namespace ckpt::daemon {
namespace {

// The tensors ready so far, in the order they became ready.
std::vector<size_t> Ready(const PushFeed& feed) {
  size_t cursor = 0;
  std::vector<size_t> ready;
  REQUIRE(feed.ReadySince(&cursor, &ready).ok());
  return ready;
}

TEST_CASE("a tensor is ready once marked, with its first checksum") {
  PushFeed feed(7, 3);
  CHECK(feed.version() == 7);
  CHECK(feed.size() == 3);
  CHECK(Ready(feed).empty());
  feed.MarkReady(0, 11);
  feed.MarkReady(0, 12);  // a repeat keeps the first
  feed.MarkReady(9, 13);  // past the manifest: ignored
  CHECK(Ready(feed) == std::vector<size_t>{0});
  CHECK(feed.Xxh3(0) == 11);
  CHECK(feed.Xxh3(1) == 0);
  CHECK(feed.Xxh3(9) == 0);
  CHECK_FALSE(*feed.Committed());
  CHECK_FALSE(feed.Ended());
}

TEST_CASE("the commit makes every tensor ready, keeping checksums already known") {
  PushFeed feed(1, 3);
  feed.MarkReady(1, 5);
  size_t cursor = 0;
  std::vector<size_t> ready;
  REQUIRE(feed.ReadySince(&cursor, &ready).ok());
  CHECK(ready == std::vector<size_t>{1});
  CHECK(cursor == 1);
  feed.MarkCommitted({100, 101, 102});
  REQUIRE(feed.ReadySince(&cursor, &ready).ok());
  CHECK(ready == std::vector<size_t>{1, 0, 2});
  REQUIRE(feed.ReadySince(&cursor, &ready).ok());
  CHECK(ready.size() == 3);
  CHECK(feed.Xxh3(0) == 100);
  CHECK(feed.Xxh3(1) == 5);
  CHECK(feed.Xxh3(2) == 102);
  CHECK(*feed.Committed());
  CHECK(feed.Ended());
  feed.Fail(absl::CancelledError("late"));  // ignored once committed
  CHECK(*feed.Committed());
}

TEST_CASE("a failure ends the feed: every question answers with it") {
  PushFeed feed(1, 2);
  feed.MarkReady(0, 5);
  feed.Fail(absl::CancelledError("the trainer went away"));
  feed.Fail(absl::InternalError("second"));  // the first stays
  CHECK(feed.Committed().status().message() == "the trainer went away");
  size_t cursor = 0;
  std::vector<size_t> ready;
  CHECK(feed.ReadySince(&cursor, &ready).code() == absl::StatusCode::kCancelled);
  CHECK(feed.Ended());
  feed.MarkCommitted({1, 2});  // ignored after a failure
  CHECK(feed.Committed().status().code() == absl::StatusCode::kCancelled);
  feed.MarkReady(1, 3);
  CHECK(feed.Xxh3(1) == 0);
  bool timed_out = true;
  CHECK_FALSE(feed.AwaitEnd(absl::Now() + absl::Seconds(5), &timed_out));
  CHECK_FALSE(timed_out);
  PushFeed empty(2, 1);
  empty.Fail(absl::OkStatus());  // a failure always carries an error
  CHECK_FALSE(empty.Committed().ok());
}

TEST_CASE("waits end at their deadline, or when another thread marks what they wait for") {
  PushFeed feed(1, 2);
  feed.AwaitChange(feed.changes(), absl::Now() + absl::Milliseconds(20));
  CHECK(Ready(feed).empty());
  bool timed_out = false;
  CHECK_FALSE(feed.AwaitEnd(absl::Now() + absl::Milliseconds(20), &timed_out));
  CHECK(timed_out);
  std::thread marker([&] {
    feed.MarkReady(1, 3);
    feed.MarkCommitted({4, 5});
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (uint64_t seen = feed.changes(); Ready(feed).empty() && absl::Now() < deadline;
       seen = feed.changes()) {
    feed.AwaitChange(seen, deadline);
  }
  CHECK_FALSE(Ready(feed).empty());
  CHECK(feed.AwaitEnd(absl::Now() + absl::Seconds(30), &timed_out));
  CHECK_FALSE(timed_out);
  marker.join();
  CHECK(feed.Xxh3(0) == 4);
  CHECK(feed.Xxh3(1) == 3);
}

TEST_CASE("changes count every change, and AwaitChange wakes on one") {
  PushFeed feed(1, 2);
  const uint64_t c0 = feed.changes();
  feed.AwaitChange(c0, absl::Now() + absl::Milliseconds(10));  // times out
  feed.MarkReady(0, 1);
  CHECK(feed.changes() == c0 + 1);
  feed.MarkReady(0, 1);  // no change
  CHECK(feed.changes() == c0 + 1);
  std::thread failer([&] { feed.Fail(absl::AbortedError("x")); });
  const absl::Time start = absl::Now();
  feed.AwaitChange(c0 + 1, absl::Now() + absl::Seconds(30));
  CHECK(absl::Now() - start < absl::Seconds(30));
  failer.join();
  CHECK(feed.changes() == c0 + 2);
}

TEST_CASE("the listener hears every change, and never after it is replaced") {
  PushFeed feed(1, 4);
  std::atomic<int> heard{0};
  feed.SetListener([&] { ++heard; });
  feed.MarkReady(0, 1);
  feed.MarkReady(0, 1);  // no change: not heard
  feed.MarkReady(1, 1);
  CHECK(heard.load() == 2);
  std::atomic<bool> stop{false};
  std::thread marker([&] {
    for (size_t i = 2; !stop.load(); i = 2 + (i + 1) % 2) feed.MarkReady(i, 1);
  });
  feed.SetListener({});
  const int after = heard.load();
  feed.MarkCommitted({0, 0, 0, 0});
  stop.store(true);
  marker.join();
  CHECK(heard.load() == after);
  CHECK(after <= 4);
}

}  // namespace
}  // namespace ckpt::daemon
