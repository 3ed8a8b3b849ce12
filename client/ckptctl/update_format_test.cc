#include "client/ckptctl/update_format.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

v1::UpdateResponse Sample() {
  v1::UpdateResponse u;
  u.set_version(7);
  u.set_seconds(2.0);
  u.set_bytes(4'000'000'000);
  u.set_buckets(4);
  u.set_fill_seconds(1.5);
  auto* ok = u.add_workers();
  ok->set_pid(11);
  ok->set_engine("vllm");
  ok->set_gpu_uuid("GPU-a");
  ok->set_ok(true);
  ok->set_tensors(3);
  ok->set_bytes(4'000'000'000);
  auto* bad = u.add_workers();
  bad->set_pid(12);
  bad->set_engine("sglang");
  bad->set_error("detached mid-update: the worker's stream broke");
  auto* held = u.add_workers();
  held->set_pid(13);
  held->set_ok(true);
  held->set_skipped(true);
  return u;
}

TEST_CASE("update JSON carries the rate, the stages and every worker") {
  nlohmann::json j = UpdateJson(Sample());
  CHECK(j["version"] == 7);
  CHECK(j["gb_per_s"].get<double>() == Approx(2.0));
  CHECK(j["fill_seconds"].get<double>() == Approx(1.5));
  REQUIRE(j["workers"].size() == 3);
  CHECK(j["workers"][0]["ok"] == true);
  CHECK(j["workers"][1]["ok"] == false);
  CHECK(j["workers"][1]["error"] == "detached mid-update: the worker's stream broke");
  CHECK(j["workers"][2]["skipped"] == true);
}

TEST_CASE("update text names failures and skipped workers") {
  std::string text = UpdateText(Sample());
  CHECK(text.find("version 7 sent to 2 workers") != std::string::npos);
  CHECK(text.find("2.00 GB/s") != std::string::npos);
  CHECK(text.find("pid 12  sglang  host  FAILED: detached mid-update") != std::string::npos);
  CHECK(text.find("pid 13  ?  host  holds it already") != std::string::npos);
  v1::UpdateResponse none;
  none.set_version(3);
  none.add_workers()->set_skipped(true);
  CHECK(UpdateText(none).find("all 1 workers hold it already") != std::string::npos);
}

TEST_CASE("update text: wall time first, stage sums labelled as such") {
  v1::UpdateResponse u = Sample();
  u.set_wait_slot_seconds(0.25);
  u.set_load_seconds(3.5);  // summed over buckets: more than the wall time
  u.set_finish_seconds(0.125);
  std::string text = UpdateText(u);
  INFO(text);
  CHECK(
      text.find("version 7 sent to 2 workers: 3.7 GiB in 4 buckets, 2.000s wall time (2.00 GB/s)\n"
                "  per-stage time summed over 4 buckets (stages overlap; not wall time): "
                "waiting for slots 0.250s, filling 1.500s, worker loads 3.500s\n"
                "  then waiting for the workers to report it loaded: 0.125s wall time\n") == 0);
  CHECK(text.find("stages (summed over buckets)") == std::string::npos);
  u.set_buckets(1);
  CHECK(UpdateText(u).find("summed over 1 bucket (") != std::string::npos);
}

TEST_CASE("the progress line of a running update") {
  v1::UpdateProgress p;
  p.set_buckets_total(20);
  p.set_buckets_done(8);
  p.set_bytes_total(3'000'000'000);
  p.set_bytes_done(1'200'000'000);
  p.set_workers_total(4);
  p.set_elapsed_seconds(0.6);
  CHECK(UpdateProgressLine(p) ==
        "[########------------]  40%  8/20 buckets  1.1 GiB/2.8 GiB  2.00 GB/s  4 workers  600ms");
  p.set_buckets_done(20);
  p.set_bytes_done(3'000'000'000);
  p.set_workers_done(3);
  p.set_workers_failed(1);
  p.set_elapsed_seconds(1.5);
  CHECK(UpdateProgressLine(p) ==
        "[####################] 100%  20/20 buckets  2.8 GiB/2.8 GiB  2.00 GB/s  "
        "workers: 3/4 loaded, 1 failed  1.5s");
  // Nothing done yet, or too early for a rate: no rate.
  v1::UpdateProgress start;
  start.set_buckets_total(1);
  start.set_bytes_total(1024);
  start.set_workers_total(1);
  start.set_elapsed_seconds(0.1);
  CHECK(UpdateProgressLine(start) ==
        "[--------------------]   0%  0/1 bucket  0 B/1.0 KiB  1 worker  100ms");
  CHECK(SpinnerText("waiting for the update to start", 2, absl::Milliseconds(300)) ==
        "- waiting for the update to start  300ms");
}

TEST_CASE("outcome JSON carries the progress") {
  v1::UpdateOutcome o;
  o.set_version(7);
  o.set_state("running");
  o.mutable_progress()->set_buckets_total(20);
  o.mutable_progress()->set_buckets_done(8);
  o.mutable_progress()->set_bytes_done(123);
  o.mutable_progress()->set_workers_failed(1);
  o.mutable_progress()->set_elapsed_seconds(0.5);
  nlohmann::json j = OutcomeJson(o);
  CHECK(j["progress"]["buckets_total"] == 20);
  CHECK(j["progress"]["buckets_done"] == 8);
  CHECK(j["progress"]["bytes_done"] == 123);
  CHECK(j["progress"]["bytes_total"] == 0);
  CHECK(j["progress"]["workers_failed"] == 1);
  CHECK(j["progress"]["workers_done"] == 0);
  CHECK(j["progress"]["workers_total"] == 0);
  CHECK(j["progress"]["elapsed_seconds"].get<double>() == Approx(0.5));
}

TEST_CASE("a failed outcome names the version once") {
  v1::UpdateOutcome o;
  o.set_version(7);
  o.set_state("failed");
  o.set_trigger("auto_update");
  o.set_code("ABORTED");
  o.set_error("update to version 7: 1 of 2 workers failed (worker pid 4 ...); 1 loaded it");
  CHECK(OutcomeText(o) ==
        "version 7 FAILED (auto_update): ABORTED: 1 of 2 workers failed (worker pid 4 ...); 1 "
        "loaded it");
  o.set_error("no worker is attached");
  CHECK(OutcomeText(o) == "version 7 FAILED (auto_update): ABORTED: no worker is attached");
}

TEST_CASE("a cluster update names each worker's member, in text and JSON") {
  v1::UpdateResponse u = Sample();
  u.mutable_workers(0)->set_node_name("node-a");
  u.mutable_workers(1)->set_node_name("node-b");
  const std::string text = UpdateText(u);
  CHECK(text.find("  node-a  pid 11  vllm") != std::string::npos);
  CHECK(text.find("  node-b  pid 12  sglang") != std::string::npos);
  CHECK(text.find("  pid 13  ?") != std::string::npos);  // no member named: as before
  nlohmann::json j = UpdateJson(u);
  CHECK(j["workers"][0]["node_name"] == "node-a");
  CHECK(j["workers"][2]["node_name"] == "");
}

}  // namespace
}  // namespace ckpt::ctl
