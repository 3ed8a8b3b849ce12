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

}  // namespace
}  // namespace ckpt::ctl
