#include "daemon/server/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/server/flags.h"

namespace ckpt::daemon {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = TempPath(name);
  std::ofstream(path) << text;
  return path;
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

absl::StatusOr<CommandLine> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "ckpt-engined");
  return ParseCommandLine(static_cast<int>(args.size()), args.data());
}

TEST_CASE("defaults") {
  Config c;
  CHECK(c.listen_unix == "/run/ckpt-engine/ckpt-engined.sock");
  CHECK(c.listen_tcp.empty());
  CHECK(c.backend == BackendKind::kAuto);
  CHECK(c.host_memory_budget == 0);
  CHECK(c.shutdown_grace == absl::Seconds(5));
  CHECK(ResolveConfig(c).host_memory_budget > 0);
}

TEST_CASE("SetConfigValue parses every key and names the key on bad values") {
  Config c;
  REQUIRE(SetConfigValue(c, "backend", "host").ok());
  CHECK(c.backend == BackendKind::kHost);
  REQUIRE(SetConfigValue(c, "host_memory_budget", "64GiB").ok());
  CHECK(c.host_memory_budget == 64ull << 30);
  REQUIRE(SetConfigValue(c, "listen_tcp", "127.0.0.1:0").ok());
  REQUIRE(SetConfigValue(c, "shutdown_grace", "250ms").ok());
  CHECK(c.shutdown_grace == absl::Milliseconds(250));
  REQUIRE(SetConfigValue(c, "bucket_bytes", "1000").code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(SetConfigValue(c, "bucket_bytes", "10000").ok());
  CHECK(c.bucket_bytes == 10240);  // rounded up to the slot alignment (256)
  REQUIRE(SetConfigValue(c, "bucket_bytes", "auto").ok());
  CHECK(c.bucket_bytes == 0);
  REQUIRE(SetConfigValue(c, "slots_per_gpu", "3").ok());
  CHECK(c.slots_per_gpu == 3);
  REQUIRE(SetConfigValue(c, "ack_timeout", "2s").ok());
  CHECK(c.ack_timeout == absl::Seconds(2));
  REQUIRE(SetConfigValue(c, "allowed_uids", "0, 1000").ok());
  CHECK(c.allowed_uids == std::vector<uint32_t>{0, 1000});
  REQUIRE(SetConfigValue(c, "auto_update", "true").ok());
  CHECK(c.auto_update);
  CHECK(c.gpu_ipc_push);
  REQUIRE(SetConfigValue(c, "gpu_ipc_push", "false").ok());
  CHECK_FALSE(c.gpu_ipc_push);
  CHECK(c.local_pull);
  REQUIRE(SetConfigValue(c, "local_pull", "false").ok());
  CHECK_FALSE(c.local_pull);

  struct Bad {
    const char* key;
    const char* value;
  };
  for (Bad b : std::vector<Bad>{{"backend", "gpu"},
                                {"host_memory_budget", "lots"},
                                {"host_memory_budget", "0"},
                                {"listen_tcp", "localhost"},
                                {"listen_tcp", "localhost:70000"},
                                {"listen_unix", "relative.sock"},
                                {"listen_unix", std::string(120, 'x').insert(0, "/").c_str()},
                                {"log_level", "chatty"},
                                {"shutdown_grace", "-3s"},
                                {"slots_per_gpu", "0"},
                                {"slots_per_gpu", "17"},
                                {"bucket_bytes", "big"},
                                {"ack_timeout", "10ms"},
                                {"allowed_uids", "root"},
                                {"auto_update", "yes"},
                                {"gpu_ipc_push", "on"},
                                {"local_pull", "1"}}) {
    INFO(b.key << " = " << b.value);
    Config before = c;
    absl::Status s = SetConfigValue(c, b.key, b.value);
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(s.message(), std::string("'") + b.key + "'"));
    CHECK(DescribeConfig(c) == DescribeConfig(before));
  }
  CHECK(SetConfigValue(c, "colour", "blue").code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a TOML file fills the config and flags override it") {
  std::string path = WriteFile("good.toml",
                               "backend = \"host\"\n"
                               "host_memory_budget = 1073741824\n"
                               "listen_unix = \"/tmp/x/d.sock\"\n"
                               "log_level = \"debug\"\n");
  auto cl = Parse({"--config", path.c_str(), "--log-level", "warn"});
  REQUIRE(cl.ok());
  CHECK(cl->config.backend == BackendKind::kHost);
  CHECK(cl->config.host_memory_budget == 1073741824ull);
  CHECK(cl->config.listen_unix == "/tmp/x/d.sock");
  CHECK(cl->config.log_level == "warn");
}

TEST_CASE("allowed_uids may be a TOML array of integers") {
  std::string path = WriteFile("uids.toml", "allowed_uids = [0, 1000]\n");
  auto cl = Parse({"--config", path.c_str()});
  REQUIRE(cl.ok());
  CHECK(cl->config.allowed_uids == std::vector<uint32_t>{0, 1000});
}

TEST_CASE("bad config files fail with the file and key named") {
  std::string unknown = WriteFile("unknown.toml", "backend = \"host\"\nbucket_size = 3\n");
  auto r = Parse({"--config", unknown.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "unknown config key 'bucket_size'"));
  CHECK(Contains(r.status().message(), unknown));

  std::string bad_value = WriteFile("bad_value.toml", "backend = \"gpu\"\n");
  r = Parse({"--config", bad_value.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "'backend'"));
  CHECK(Contains(r.status().message(), "'gpu'"));

  std::string wrong_type = WriteFile("wrong_type.toml", "listen_unix = [\"/a\", \"/b\"]\n");
  r = Parse({"--config", wrong_type.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "'listen_unix'"));
  CHECK(Contains(r.status().message(), "array"));

  std::string broken = WriteFile("broken.toml", "backend = \"host\n");
  r = Parse({"--config", broken.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), broken + ":1:"));

  std::string missing = TempPath("does-not-exist.toml");
  r = Parse({"--config", missing.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "cannot read config file " + missing));
  CHECK(Contains(r.status().message(), "No such file"));

  // Neither a device without end, nor a FIFO without a writer, nor a huge file is read: each is
  // refused at once (SIGHUP reads the file again while the daemon serves).
  r = Parse({"--config", "/dev/zero"});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "/dev/zero: not a regular file"));
  std::string fifo = TempPath("fifo.toml");
  ::unlink(fifo.c_str());
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  r = Parse({"--config", fifo.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "not a regular file"));
  std::string huge = WriteFile("huge.toml", "# " + std::string(2 << 20, 'x') + "\n");
  r = Parse({"--config", huge.c_str()});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "at most 1048576"));
}

TEST_CASE("bad flags fail with the flag named") {
  auto r = Parse({"--backend", "gpu"});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "--backend"));
  r = Parse({"--no-such-flag"});
  REQUIRE_FALSE(r.ok());
  CHECK(Contains(r.status().message(), "--no-such-flag"));
}

TEST_CASE("--help and --version exit without starting") {
  auto r = Parse({"--help"});
  REQUIRE(r.ok());
  CHECK(r->exit_now);
  for (const ConfigKey& k : ConfigKeys()) {
    std::string flag = std::string("--") + k.name;
    for (char& ch : flag) ch = ch == '_' ? '-' : ch;
    INFO(flag);
    CHECK(Contains(r->output, flag));
  }
  r = Parse({"--version"});
  REQUIRE(r.ok());
  CHECK(r->exit_now);
  CHECK(Contains(r->output, "ckpt-engined "));
}

TEST_CASE("the cluster keys: each value and their relations") {
  Config c;
  CHECK(SetConfigValue(c, "node_name", "gpu-node-01").ok());
  CHECK(c.node_name == "gpu-node-01");
  CHECK(SetConfigValue(c, "node_name", "auto").ok());
  CHECK(c.node_name.empty());
  CHECK_FALSE(ResolveConfig(c).node_name.empty());  // the host name
  CHECK(Contains(std::string(SetConfigValue(c, "node_name", "a b").message()), "node_name"));
  CHECK(SetConfigValue(c, "cluster_members", "a:1,b:2").ok());
  CHECK(Contains(std::string(SetConfigValue(c, "cluster_members", "a:1,a:1").message()),
                 "listed twice"));
  CHECK(c.cluster_members == "a:1,b:2");  // unchanged by the bad value
  CHECK(SetConfigValue(c, "cluster_listen", "[::1]:x").code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(SetConfigValue(c, "cluster_timeout", "0s").code() == absl::StatusCode::kInvalidArgument);
  CHECK(SetConfigValue(c, "cluster_timeout", "11m").code() == absl::StatusCode::kInvalidArgument);
  CHECK(SetConfigValue(c, "cluster_token_file", "relative").code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(SetConfigValue(c, "cluster_data_interface", "eth1").ok());
  CHECK(c.cluster_data_interface == "eth1");
  for (const char* bad : {"a/b", "eth 1", "an-interface-name-too-long"}) {
    CHECK(Contains(std::string(SetConfigValue(c, "cluster_data_interface", bad).message()),
                   "network interface name"));
  }
  CHECK(c.cluster_data_interface == "eth1");  // unchanged by the bad values

  Config interface_alone;
  REQUIRE(SetConfigValue(interface_alone, "cluster_data_interface", "lo").ok());
  CHECK(Contains(std::string(ValidateConfig(interface_alone).message()),
                 "cluster_data_interface needs cluster_listen"));

  Config members_alone;
  REQUIRE(SetConfigValue(members_alone, "cluster_members", "a:1").ok());
  CHECK(Contains(std::string(ValidateConfig(members_alone).message()), "needs cluster_listen"));
  Config open;
  REQUIRE(SetConfigValue(open, "cluster_listen", "0.0.0.0:7071").ok());
  CHECK(Contains(std::string(ValidateConfig(open).message()), "would accept any peer"));
  Config with_token = open;
  REQUIRE(SetConfigValue(with_token, "cluster_token_file", "/etc/ckpt-engine/cluster.token").ok());
  CHECK(ValidateConfig(with_token).ok());
  Config insecure = open;
  REQUIRE(SetConfigValue(insecure, "insecure_peers", "true").ok());
  CHECK(ValidateConfig(insecure).ok());
  Config both = with_token;
  REQUIRE(SetConfigValue(both, "insecure_peers", "true").ok());
  CHECK(Contains(std::string(ValidateConfig(both).message()), "contradict"));
  Config token_alone;
  REQUIRE(SetConfigValue(token_alone, "cluster_token_file", "/x").ok());
  CHECK(Contains(std::string(ValidateConfig(token_alone).message()), "no cluster"));
  Config tls = open;
  REQUIRE(SetConfigValue(tls, "tls_cert", "/c.pem").ok());
  REQUIRE(SetConfigValue(tls, "tls_key", "/k.pem").ok());
  CHECK_FALSE(ValidateConfig(tls).ok());  // a server certificate alone proves nothing of peers
  REQUIRE(SetConfigValue(tls, "tls_client_ca", "/ca.pem").ok());
  CHECK_FALSE(ValidateConfig(tls).ok());  // the TCP listener's clients are not members
  REQUIRE(SetConfigValue(tls, "cluster_ca", "/members-ca.pem").ok());
  CHECK(ValidateConfig(tls).ok());
  CHECK(SetConfigValue(tls, "cluster_ca", "ca.pem").code() == absl::StatusCode::kInvalidArgument);
  Config ca_alone = open;
  REQUIRE(SetConfigValue(ca_alone, "cluster_ca", "/members-ca.pem").ok());
  CHECK(Contains(std::string(ValidateConfig(ca_alone).message()), "cluster_ca needs tls_cert"));
  Config ca_insecure = tls;
  REQUIRE(SetConfigValue(ca_insecure, "insecure_peers", "true").ok());
  CHECK(Contains(std::string(ValidateConfig(ca_insecure).message()), "contradict"));
  Config ca_no_cluster;
  REQUIRE(SetConfigValue(ca_no_cluster, "cluster_ca", "/members-ca.pem").ok());
  CHECK(Contains(std::string(ValidateConfig(ca_no_cluster).message()), "no cluster"));
}

TEST_CASE("the example config documents every key and holds the defaults") {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  REQUIRE(srcdir != nullptr);
  std::string path = std::string(srcdir) + "/ckpt_engine/deploy/ckpt-engined.example.toml";
  std::ifstream in(path);
  REQUIRE(in.good());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const ConfigKey& k : ConfigKeys()) {
    INFO(k.name);
    CHECK(Contains(text, std::string("\n") + k.name + " = "));
  }
  Config from_file;
  REQUIRE(ApplyConfigFile(from_file, path).ok());
  CHECK(DescribeConfig(from_file) == DescribeConfig(Config()));
}

}  // namespace
}  // namespace ckpt::daemon
