// ckpt_client_options / ckpt_client_open3 without a daemon: defaults, the struct_size rules, bad
// combinations, token files, and that explicit credentials win over the environment. Calls against
// a real daemon (tokens, TLS, mTLS) are in tests/python/credentials_test.py.
#include "client/c_api.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int kInvalidArgument = 3;
constexpr int kFailedPrecondition = 9;
constexpr int kUnavailable = 14;

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = TempDir() + "/" + name;
  std::ofstream(path) << text;
  ::chmod(path.c_str(), 0600);
  return path;
}

struct Opened {
  int code = -1;
  std::string err;
  ckpt_client* client = nullptr;
  ~Opened() { ckpt_client_close(client); }
};

// Opens with `options`; a client that opened is closed by ~Opened.
std::unique_ptr<Opened> Open(const ckpt_client_options* options) {
  auto r = std::make_unique<Opened>();
  char err[512] = "untouched";
  r->code = ckpt_client_open3(options, &r->client, err, sizeof err);
  r->err = err;
  return r;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Unsets the credential variables for the test's duration.
struct CleanEnv {
  static void Unset() {
    for (const char* v : {"CKPT_TLS_CA", "CKPT_TLS_CERT", "CKPT_TLS_KEY", "CKPT_TOKEN_FILE"}) {
      ::unsetenv(v);
    }
  }
  CleanEnv() { Unset(); }
  ~CleanEnv() { Unset(); }
};

TEST_CASE("ckpt_client_options_init: the struct's size, no strings, 10 s") {
  ckpt_client_options o;
  std::memset(&o, 0xab, sizeof o);
  ckpt_client_options_init(&o);
  CHECK(o.struct_size == sizeof(ckpt_client_options));
  CHECK(o.socket == nullptr);
  CHECK(o.address == nullptr);
  CHECK(o.tls_ca == nullptr);
  CHECK(o.tls_cert == nullptr);
  CHECK(o.tls_key == nullptr);
  CHECK(o.token_file == nullptr);
  CHECK(o.timeout_s == 10.0);
  ckpt_client_options_init(nullptr);  // a no-op
}

TEST_CASE("ckpt_client_open3 refuses NULL, an uninitialized struct and bad combinations") {
  CleanEnv env;
  ckpt_client_options o;
  ckpt_client_options_init(&o);
  o.address = "127.0.0.1:1";

  ckpt_client* client = reinterpret_cast<ckpt_client*>(1);
  CHECK(ckpt_client_open3(nullptr, &client, nullptr, 0) == kInvalidArgument);
  CHECK(client == nullptr);
  CHECK(ckpt_client_open3(&o, nullptr, nullptr, 0) == kInvalidArgument);

  SECTION("struct_size 0: not filled by ckpt_client_options_init") {
    o.struct_size = 0;
    auto r = Open(&o);
    CHECK(r->code == kInvalidArgument);
    CHECK(Contains(r->err, "ckpt_client_options_init"));
    CHECK(r->client == nullptr);
  }
  SECTION("struct_size smaller than the first release's struct, or absurd") {
    for (size_t size : {size_t{8}, sizeof(o) - 8, size_t{1} << 20}) {
      o.struct_size = size;
      auto r = Open(&o);
      INFO(size);
      CHECK(r->code == kInvalidArgument);
      CHECK(Contains(r->err, "struct_size is " + std::to_string(size)));
    }
  }
  SECTION("socket and address together") {
    o.socket = "/tmp/x.sock";
    auto r = Open(&o);
    CHECK(r->code == kInvalidArgument);
    CHECK(r->err == "give either socket or address, not both");
  }
  SECTION("a certificate without its key, and a key without its certificate") {
    o.tls_cert = "/nonexistent/client.pem";
    auto r = Open(&o);
    CHECK(r->code == kInvalidArgument);
    CHECK(Contains(r->err, "tls_cert is set but not tls_key (nor $CKPT_TLS_KEY)"));
    o.tls_cert = nullptr;
    o.tls_key = "/nonexistent/client.key";
    r = Open(&o);
    CHECK(r->code == kInvalidArgument);
    CHECK(Contains(r->err, "tls_key is set but not tls_cert (nor $CKPT_TLS_CERT)"));
    // The other half from the environment completes the pair: the files are read then.
    ::setenv("CKPT_TLS_CERT", "/nonexistent/env-client.pem", 1);
    r = Open(&o);
    CHECK(r->code == kFailedPrecondition);
    CHECK(Contains(r->err, "/nonexistent/env-client.pem"));
  }
  SECTION("a negative or infinite timeout") {
    for (double t : {-1.0, std::numeric_limits<double>::infinity()}) {
      o.timeout_s = t;
      auto r = Open(&o);
      CHECK(r->code == kInvalidArgument);
      CHECK(Contains(r->err, "timeout_s"));
    }
  }
  SECTION("a token file that is missing or empty, a TLS CA file that is missing") {
    o.token_file = "/nonexistent/token";
    auto r = Open(&o);
    CHECK(r->code == kFailedPrecondition);
    CHECK(Contains(r->err, "/nonexistent/token"));
    const std::string empty = WriteFile("empty-token", "\n");
    o.token_file = empty.c_str();
    r = Open(&o);
    CHECK(r->code == kFailedPrecondition);
    CHECK(Contains(r->err, "is empty"));
    o.token_file = nullptr;
    o.tls_ca = "/nonexistent/ca.pem";
    r = Open(&o);
    CHECK(r->code == kFailedPrecondition);
    CHECK(Contains(r->err, "/nonexistent/ca.pem"));
  }
}

TEST_CASE("ckpt_client_open3: a larger struct from a newer header is fine while its tail is zero") {
  CleanEnv env;
  struct Newer {
    ckpt_client_options known;
    uint64_t future_field;
  } newer;
  std::memset(&newer, 0, sizeof newer);
  ckpt_client_options_init(&newer.known);
  newer.known.struct_size = sizeof newer;
  newer.known.address = "127.0.0.1:1";
  auto r = Open(&newer.known);
  CHECK(r->code == 0);
  CHECK(r->client != nullptr);
  CHECK(r->err == "untouched");

  newer.future_field = 1;
  r = Open(&newer.known);
  CHECK(r->code == kInvalidArgument);
  CHECK(Contains(r->err, "does not know"));
  CHECK(r->client == nullptr);
}

TEST_CASE("ckpt_client_open3: credentials are for TCP; explicit ones win over the environment") {
  CleanEnv env;
  const std::string dir = TempDir();
  ckpt_client_options o;
  ckpt_client_options_init(&o);

  // On a Unix socket the credentials are ignored (as ckptctl and ResolveEndpoint do): the error is
  // about the socket, not about the missing token file or the half key pair.
  const std::string socket = dir + "/none.sock";
  o.socket = socket.c_str();
  o.token_file = "/nonexistent/token";
  o.tls_cert = "/nonexistent/client.pem";
  auto r = Open(&o);
  CHECK(r->code == kUnavailable);
  CHECK(Contains(r->err, "none.sock"));

  // TCP: the explicit token file is used, not $CKPT_TOKEN_FILE (which names a missing file).
  ::setenv("CKPT_TOKEN_FILE", "/nonexistent/env-token", 1);
  const std::string token = WriteFile("token", "a-token-of-the-test-0123\n");
  ckpt_client_options_init(&o);
  o.address = "127.0.0.1:1";
  o.token_file = token.c_str();
  o.timeout_s = 0.5;
  r = Open(&o);
  REQUIRE(r->code == 0);
  // An unset field falls back to the environment.
  o.token_file = nullptr;
  auto from_env = Open(&o);
  CHECK(from_env->code == kFailedPrecondition);
  CHECK(Contains(from_env->err, "/nonexistent/env-token"));

  // Nothing listens on port 1: the first call is UNAVAILABLE, within the options' deadline.
  char* json = nullptr;
  char err[512] = "";
  CHECK(ckpt_list_versions(r->client, &json, err, sizeof err) == kUnavailable);
  CHECK(json == nullptr);
  CHECK(Contains(err, "127.0.0.1:1"));
}

TEST_CASE("ckpt_client_open and open2 still work without options") {
  CleanEnv env;
  char err[512] = "";
  ckpt_client* c = ckpt_client_open(nullptr, "127.0.0.1:1", err, sizeof err);
  CHECK(c != nullptr);
  ckpt_client_close(c);
  ckpt_client* out = nullptr;
  CHECK(ckpt_client_open2("/a.sock", "b:1", &out, err, sizeof err) == kInvalidArgument);
  CHECK(out == nullptr);
  // open2 takes the credentials from the environment.
  ::setenv("CKPT_TOKEN_FILE", "/nonexistent/env-token", 1);
  CHECK(ckpt_client_open2(nullptr, "127.0.0.1:1", &out, err, sizeof err) == kFailedPrecondition);
  CHECK(Contains(err, "/nonexistent/env-token"));
}

// A table of one tensor, "w": 4 uint8 bytes in host memory; the columns live in the struct.
struct OneTensorTable {
  OneTensorTable() {
    std::memset(&table, 0, sizeof table);
    table.struct_size = sizeof table;
    table.count = 1;
    table.names = names;
    table.names_bytes = 1;
    table.name_ends = ends;
    table.dtypes = dtypes;
    table.ndims = ndims;
    table.shapes = shapes;
    table.shapes_count = 1;
    table.data = ptrs;
    table.nbytes = sizes;
  }
  OneTensorTable(const OneTensorTable&) = delete;
  OneTensorTable& operator=(const OneTensorTable&) = delete;

  const char names[2] = "w";
  const uint64_t ends[1] = {1};
  const int32_t dtypes[1] = {CKPT_DTYPE_UINT8};
  const int32_t ndims[1] = {1};
  const int64_t shapes[1] = {4};
  const uint8_t data[4] = {1, 2, 3, 4};
  const uint64_t ptrs[1] = {reinterpret_cast<uintptr_t>(data)};
  const uint64_t sizes[1] = {4};
  ckpt_tensor_table table;
};

TEST_CASE("ckpt_push_extra: init, and bad values are refused before anything is sent") {
  CleanEnv env;
  ckpt_push_extra extra;
  std::memset(&extra, 0xff, sizeof extra);
  ckpt_push_extra_init(&extra);
  CHECK(extra.struct_size == sizeof(ckpt_push_extra));
  CHECK(extra.transport == nullptr);
  CHECK(extra.window_bytes == 0);
  CHECK(extra.update == 0);
  ckpt_push_extra_init(nullptr);  // no crash

  char err[512] = "";
  // A closed port: nothing is reached, so each error below comes from the checks before a call.
  ckpt_client* c = ckpt_client_open(nullptr, "127.0.0.1:1", err, sizeof err);
  REQUIRE(c != nullptr);
  OneTensorTable one;
  ckpt_tensor_table& table = one.table;
  uint64_t version = 0;
  extra.transport = "shm";
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kInvalidArgument);
  CHECK(Contains(err, "'shm' is not one of auto, local, grpc"));
  extra.transport = "local";  // over TCP: refused by the client
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kFailedPrecondition);
  CHECK(Contains(err, "needs the daemon's Unix socket"));
  extra.transport = nullptr;
  extra.window_bytes = 4096;
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kInvalidArgument);
  CHECK(Contains(err, "window_bytes must be 1 MiB to 16 GiB"));
  extra.window_bytes = 0;
  extra.update = 1;  // push and update over TCP: refused by the client
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kFailedPrecondition);
  CHECK(Contains(err, "update (push and update) needs the local path"));
  // An older caller's struct ends before `update`: it is not read (a plain gRPC push, which
  // finds no daemon on the closed port).
  extra.struct_size = offsetof(ckpt_push_extra, update);
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kUnavailable);
  extra.struct_size = sizeof extra;
  extra.update = 0;
  ckpt_push_extra zero;
  std::memset(&zero, 0, sizeof zero);
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &zero, &version, nullptr, err, sizeof err) ==
        kInvalidArgument);
  CHECK(Contains(err, "struct_size is 0"));
  // An older caller's struct ends before window_bytes: that field is not read.
  extra.struct_size = offsetof(ckpt_push_extra, window_bytes);
  extra.transport = "local";
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kFailedPrecondition);
  CHECK(version == 0);
  ckpt_client_close(c);
}

TEST_CASE("ckpt_tensor_table.devices: read only when struct_size covers it; bad values refused") {
  CleanEnv env;
  char err[512] = "";
  ckpt_client* c = ckpt_client_open(nullptr, "127.0.0.1:1", err, sizeof err);
  REQUIRE(c != nullptr);
  OneTensorTable one;
  ckpt_tensor_table& table = one.table;
  ckpt_push_extra extra;
  ckpt_push_extra_init(&extra);
  extra.transport = "local";  // over TCP: refused, but only after the tensors are checked
  uint64_t version = 0;
  // An older caller's table ends before `devices`: whatever lies there is not read.
  table.struct_size = offsetof(ckpt_tensor_table, devices);
  table.devices = reinterpret_cast<const int32_t*>(uintptr_t{8});
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kFailedPrecondition);
  CHECK(Contains(err, "needs the daemon's Unix socket"));
  table.struct_size = offsetof(ckpt_tensor_table, devices) - 1;
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kInvalidArgument);
  CHECK(Contains(err, "struct_size is"));
  table.struct_size = sizeof table;
  const int32_t host[] = {-1};
  table.devices = host;
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kFailedPrecondition);
  CHECK(Contains(err, "needs the daemon's Unix socket"));
  const int32_t bad[] = {-2};
  table.devices = bad;
  CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
        kInvalidArgument);
  CHECK(Contains(err, "tensor 'w': device -2 (-1: host memory, else a CUDA ordinal)"));
  // A CUDA tensor on a machine without the CUDA driver: refused naming it, before any call.
  if (void* cuda = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL); cuda == nullptr) {
    const int32_t gpu[] = {0};
    table.devices = gpu;
    extra.transport = "grpc";
    CHECK(ckpt_push_table_ex(c, &table, nullptr, &extra, &version, nullptr, err, sizeof err) ==
          kFailedPrecondition);
    CHECK(Contains(err, "CUDA tensors need the CUDA driver, and libcuda.so.1 cannot be loaded"));
  } else {
    ::dlclose(cuda);
  }
  CHECK(version == 0);
  ckpt_client_release_staging(c);
  ckpt_client_release_staging(nullptr);  // no-op
  ckpt_client_close(c);
}

}  // namespace

TEST_CASE("ckpt_update_options: malformed options are refused before anything is sent") {
  CleanEnv env;
  char err[512] = "";
  // A closed port: each error below comes from parsing the options, before a call.
  ckpt_client* c = ckpt_client_open(nullptr, "127.0.0.1:1", err, sizeof err);
  REQUIRE(c != nullptr);
  char* out = nullptr;
  const std::vector<std::pair<const char*, const char*>> bad = {
      {"not json", "not a JSON object"},
      {"[1, 2]", "not a JSON object"},
      {R"({"convert": "fp16"})", "convert is \"default\", \"fp8\" or \"none\""},
      {R"({"convert": 8})", "convert is"},
      {R"({"fp8_weights": "*.weight"})", "fp8_weights: not a list"},
      {R"({"fp8_exclude": [1]})", "fp8_exclude: not a list of strings"},
      {R"({"consistent": "yes"})", "consistent is true or false"},
      {R"({"fp8": true})", "unknown key 'fp8'"},
  };
  for (const auto& [options, why] : bad) {
    INFO(options);
    CHECK(ckpt_update_options(c, 1, 0, 1.0, options, &out, err, sizeof err) == kInvalidArgument);
    CHECK(Contains(err, why));
    CHECK(out == nullptr);
  }
  // Well-formed: it gets as far as the call (nothing listens on port 1).
  CHECK(ckpt_update_options(c, 1, 0, 1.0, R"({"convert": "fp8", "fp8_weights": ["*"]})", &out, err,
                            sizeof err) != kInvalidArgument);
  ckpt_client_close(c);
}
