#include "client/ckptctl/update_command.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

v1::StatusResponse WithLastUpdate(uint64_t version, const std::string& state, int64_t started,
                                  uint32_t buckets_done) {
  v1::StatusResponse s;
  v1::UpdateOutcome* o = s.mutable_last_update();
  o->set_version(version);
  o->set_state(state);
  o->set_started_unix_ms(started);
  o->mutable_progress()->set_buckets_total(10);
  o->mutable_progress()->set_buckets_done(buckets_done);
  return s;
}

TEST_CASE("the tracker follows the running update asked for, then the same one once it ended") {
  UpdateTracker t(7);
  CHECK_FALSE(t.Track(v1::StatusResponse()).has_value());  // no update yet
  // The last update is an earlier one that ended: not ours.
  CHECK_FALSE(t.Track(WithLastUpdate(7, "succeeded", 100, 10)).has_value());
  // Another version runs: not ours either.
  CHECK_FALSE(t.Track(WithLastUpdate(6, "running", 200, 3)).has_value());
  auto p = t.Track(WithLastUpdate(7, "running", 300, 4));
  REQUIRE(p.has_value());
  CHECK(p->buckets_done() == 4);
  // It ended before the Update call returned: its final figures.
  p = t.Track(WithLastUpdate(7, "succeeded", 300, 10));
  REQUIRE(p.has_value());
  CHECK(p->buckets_done() == 10);
  // A later update is not the one followed.
  CHECK_FALSE(t.Track(WithLastUpdate(7, "failed", 400, 1)).has_value());

  // Version 0 (latest, --previous): any running update, the newest one followed.
  UpdateTracker any(0);
  CHECK_FALSE(any.Track(WithLastUpdate(5, "succeeded", 100, 10)).has_value());
  CHECK(any.Track(WithLastUpdate(5, "running", 200, 2)).has_value());
  CHECK(any.Track(WithLastUpdate(6, "running", 300, 1))->buckets_done() == 1);
  CHECK_FALSE(any.Track(WithLastUpdate(5, "succeeded", 200, 10)).has_value());
  CHECK(any.Track(WithLastUpdate(6, "failed", 300, 5))->buckets_done() == 5);
}

TEST_CASE("the --wait line: the running update of the version, else who holds it") {
  CHECK(WaitLoadedLine(nullptr, 7, 0, absl::Seconds(1)) == "| waiting for the workers  1.0s");
  v1::StatusResponse s;
  s.set_latest_committed_version(7);
  s.add_workers()->set_loaded_version(7);
  s.add_workers()->set_loaded_version(6);
  v1::WorkerStatus* mixed = s.add_workers();
  mixed->set_loaded_version(8);
  mixed->set_mixed_version(9);
  CHECK(WaitLoadedLine(&s, 7, 1, absl::Seconds(2)) ==
        "/ waiting until every worker holds version 7 (1 of 3 do)  2.0s");
  // 0: the newest committed.
  CHECK(Contains(WaitLoadedLine(&s, 0, 0, absl::Seconds(2)), "holds version 7 (1 of 3 do)"));
  *s.mutable_last_update() = WithLastUpdate(7, "running", 100, 4).last_update();
  std::string line = WaitLoadedLine(&s, 7, 0, absl::Seconds(2));
  CHECK(Contains(line, "version 7: ["));
  CHECK(Contains(line, "4/10 buckets"));
  s.mutable_last_update()->set_state("succeeded");
  CHECK(Contains(WaitLoadedLine(&s, 7, 0, absl::Seconds(2)), "waiting until every worker"));
}

}  // namespace
}  // namespace ckpt::ctl
