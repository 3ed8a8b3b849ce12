#include "client/ckptctl/cluster_command.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

v1::PullProgress RunningPull() {
  v1::PullProgress p;
  p.set_version(7);
  p.set_trigger("join");
  p.set_phase("reading");
  p.set_started_unix_ms(1000);
  p.set_seconds(2.0);
  p.set_total_bytes(uint64_t{4} << 30);
  p.set_received_bytes(uint64_t{1} << 30);
  p.set_tensor_count(9);
  p.set_tensors_received(3);
  v1::PullSource* a = p.add_sources();
  a->set_member("node-a");
  a->set_received_bytes(uint64_t{1} << 30);
  v1::PullSource* b = p.add_sources();
  b->set_member("node-b");
  b->set_error("member 'node-b': deadline exceeded");
  return p;
}

v1::StatusResponse InCluster() {
  v1::StatusResponse s;
  s.set_node_name("node-c");
  s.set_cluster_listen("127.0.0.1:7100");
  v1::ClusterMember* self = s.add_cluster_members();
  self->set_node_name("node-c");
  self->set_address("127.0.0.1:7100");
  self->set_state("self");
  self->set_pulling_version(7);
  self->set_pull_received_bytes(uint64_t{1} << 30);
  self->set_pull_total_bytes(uint64_t{4} << 30);
  v1::ClusterMember* a = s.add_cluster_members();
  a->set_node_name("node-a");
  a->set_address("127.0.0.1:7101");
  a->set_state("up");
  a->set_updating_version(8);
  *s.mutable_pull() = RunningPull();
  return s;
}

TEST_CASE("a running pull shows its phase, bytes, tensors, rate and sources") {
  const std::string text = PullText(RunningPull());
  CHECK(text.find("pull: version 7 (join) reading") == 0);
  CHECK(text.find("1.0 GiB of 4.0 GiB (25%)") != std::string::npos);
  CHECK(text.find("3/9 tensors") != std::string::npos);
  CHECK(text.find("/s") != std::string::npos);
  CHECK(text.find("node-a 1.0 GiB") != std::string::npos);
  CHECK(text.find("node-b 0 B (dropped: member 'node-b': deadline exceeded)") != std::string::npos);
}

TEST_CASE("an ended pull says so with its error") {
  v1::PullProgress p = RunningPull();
  p.set_phase("failed");
  p.set_ended_unix_ms(5000);
  p.set_code("UNAVAILABLE");
  p.set_error("2 tensors have no holder left");
  const std::string text = PullText(p);
  CHECK(text.find("last pull: version 7 (join) failed") == 0);
  CHECK(text.find(" after ") != std::string::npos);
  CHECK(text.find("UNAVAILABLE: 2 tensors have no holder left") != std::string::npos);
}

TEST_CASE("a member's received bytes past its total (a hostile answer) show at most 100%") {
  v1::StatusResponse s = InCluster();
  s.mutable_cluster_members(0)->set_pull_received_bytes(uint64_t{9} << 30);
  const std::string text = ClusterText(s);
  CHECK(text.find("(100%)") != std::string::npos);
  CHECK(text.find("(225%)") == std::string::npos);
}

TEST_CASE("the members' table shows who updates and who pulls, then this daemon's pull") {
  const std::string text = ClusterText(InCluster());
  CHECK(text.find("pulling version 7: 1.0 GiB of 4.0 GiB (25%)") != std::string::npos);
  CHECK(text.find("updating to version 8") != std::string::npos);
  CHECK(text.find("pull: version 7 (join) reading") != std::string::npos);
  CHECK(ClusterText(v1::StatusResponse()).find("not in a cluster") == 0);
}

TEST_CASE("JSON carries the pull and each member's pulling state") {
  const nlohmann::json j = ClusterJson(InCluster());
  CHECK(j["pull"]["version"] == 7);
  CHECK(j["pull"]["phase"] == "reading");
  CHECK(j["pull"]["received_bytes"] == (uint64_t{1} << 30));
  CHECK(j["pull"]["sources"].size() == 2);
  CHECK(j["pull"]["sources"][1]["error"] == "member 'node-b': deadline exceeded");
  CHECK(j["members"][0]["pulling"]["version"] == 7);
  CHECK(j["members"][0]["pulling"]["total_bytes"] == (uint64_t{4} << 30));
  CHECK(j["members"][1]["pulling"].is_null());
  CHECK(j["members"][1]["updating_version"] == 8);
  v1::StatusResponse none = InCluster();
  none.clear_pull();
  CHECK(ClusterJson(none)["pull"].is_null());
}

}  // namespace
}  // namespace ckpt::ctl
