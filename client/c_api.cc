// The C ABI over TrainerClient and DaemonClient. Only the functions declared in c_api.h are
// exported from libckpt_client.so (they carry CKPT_API; everything else is hidden: the library is
// compiled with -fvisibility=hidden and the static archives it links are excluded from export).
#include "client/c_api.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/ckptctl/update_format.h"
#include "client/ckptctl/version_format.h"
#include "client/consumer.h"
#include "client/daemon_client.h"
#include "client/trainer_client.h"
#include "common/message_text.h"
#include "common/status_macros.h"
#include "common/version.h"

struct ckpt_client {
  std::unique_ptr<ckpt::client::TrainerClient> trainer;
  std::unique_ptr<ckpt::client::DaemonClient> admin;
  std::atomic<double> timeout_s{10.0};
};

struct ckpt_consumer {
  std::unique_ptr<ckpt::client::Consumer> consumer;
  // The last event's views and the storage they point into.
  ckpt::client::ConsumerEvent event;
  std::vector<ckpt_tensor_view> views;
  // ckpt_consumer_bucket_table's block for `event`, built on first request.
  std::vector<uint64_t> table_block;
  bool table_built = false;
  bool have_event = false;  // `event` holds an event handed out
};

namespace {

using ckpt::client::DaemonClient;
using ckpt::client::TrainerClient;

int Report(const absl::Status& status, char* err, size_t errlen) {
  if (!status.ok() && err != nullptr && errlen > 0) {
    std::string message(status.message());
    size_t n = std::min(message.size(), errlen - 1);
    std::memcpy(err, message.data(), n);
    err[n] = '\0';
  }
  return static_cast<int>(status.code());
}

char* CopyString(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Stores `json` into *out when out is not NULL; RESOURCE_EXHAUSTED if it cannot be allocated.
absl::Status Output(const nlohmann::json& json, char** out) {
  if (out == nullptr) return absl::OkStatus();
  *out = CopyString(json.dump());
  if (*out == nullptr) return absl::ResourceExhaustedError("out of memory for the answer");
  return absl::OkStatus();
}

void ClearOutput(char** out) {
  if (out != nullptr) *out = nullptr;
}

absl::Duration AdminTimeout(const ckpt_client* client) {
  return absl::Seconds(client->timeout_s.load());
}

// Runs `body`, turning an escaping C++ exception (std::bad_alloc, ...) into a status: none may
// cross the C boundary.
template <typename Body>
int Guard(char* err, size_t errlen, Body body) {
  try {
    return Report(body(), err, errlen);
  } catch (const std::exception& e) {
    return Report(absl::InternalError(absl::StrCat("ckpt client: ", e.what())), err, errlen);
  } catch (...) {
    return Report(absl::InternalError("ckpt client: unknown exception"), err, errlen);
  }
}

absl::Status NeedClient(const ckpt_client* client) {
  return client == nullptr ? absl::InvalidArgumentError("client is NULL") : absl::OkStatus();
}

}  // namespace

extern "C" {

void ckpt_push_options_init(ckpt_push_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->streams = 4;
  options->chunk_bytes = 4u << 20;
  options->timeout_s = 60.0;
}

namespace {

using ckpt::client::Credentials;

std::string Text(const char* s) { return s != nullptr ? s : ""; }

// Resolves the endpoint and opens both clients; *out is set only on success.
absl::Status OpenClient(const std::string& socket, const std::string& address,
                        const Credentials& credentials, double timeout_s, ckpt_client** out) {
  auto endpoint = ckpt::client::ResolveEndpoint(socket, address, credentials);
  if (!endpoint.ok()) return endpoint.status();
  auto trainer = TrainerClient::Connect(*endpoint);
  if (!trainer.ok()) return trainer.status();
  auto admin = DaemonClient::Connect(*endpoint);
  if (!admin.ok()) return admin.status();
  auto client = std::make_unique<ckpt_client>();
  client->trainer = std::move(*trainer);
  client->admin = std::move(*admin);
  if (timeout_s > 0) client->timeout_s.store(timeout_s);
  *out = client.release();
  return absl::OkStatus();
}

// ckpt_client_options as first released (0.1.0): every later field is optional, so callers built
// against this header keep working with later libraries.
constexpr size_t kClientOptionsFirstSize =
    offsetof(ckpt_client_options, timeout_s) + sizeof(double);
// No options struct is this large: a garbage struct_size is refused before anything is read.
constexpr size_t kClientOptionsMaxSize = 4096;

// The caller's options over the defaults. Reads exactly struct_size bytes: a caller built against
// an older header has a shorter struct, one built against a newer header a longer one, whose
// fields this library does not know must be zero (ignoring them could drop a security setting).
absl::Status ReadClientOptions(const ckpt_client_options* given, ckpt_client_options* o) {
  ckpt_client_options_init(o);
  const size_t size = given->struct_size;
  if (size == 0) {
    return absl::InvalidArgumentError(
        "ckpt_client_options.struct_size is 0: fill the options with ckpt_client_options_init");
  }
  if (size < kClientOptionsFirstSize || size > kClientOptionsMaxSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ckpt_client_options.struct_size is ", size, ": expected ", sizeof(ckpt_client_options),
        " (fill the options with ckpt_client_options_init)"));
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(given);
  for (size_t i = sizeof(ckpt_client_options); i < size; ++i) {
    if (bytes[i] != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ckpt_client_options sets fields this library (", ckpt::kVersion,
          ") does not know: byte ", i, " of ", size, " is not zero; use a newer libckpt_client"));
    }
  }
  std::memcpy(o, given, std::min(size, sizeof(ckpt_client_options)));
  o->struct_size = sizeof(ckpt_client_options);
  return absl::OkStatus();
}

}  // namespace

void ckpt_client_options_init(ckpt_client_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
  options->timeout_s = 10.0;
}

int ckpt_client_open3(const ckpt_client_options* options, ckpt_client** out, char* err,
                      size_t errlen) {
  if (out != nullptr) *out = nullptr;
  return Guard(err, errlen, [&]() -> absl::Status {
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (options == nullptr) return absl::InvalidArgumentError("options is NULL");
    ckpt_client_options o;
    if (absl::Status s = ReadClientOptions(options, &o); !s.ok()) return s;
    const std::string socket = Text(o.socket), address = Text(o.address);
    if (!socket.empty() && !address.empty()) {
      return absl::InvalidArgumentError("give either socket or address, not both");
    }
    if (!(o.timeout_s >= 0) || std::isinf(o.timeout_s)) {
      return absl::InvalidArgumentError(
          absl::StrCat("timeout_s must be >= 0 seconds and finite, not ", o.timeout_s));
    }
    Credentials credentials;
    credentials.tls_ca = Text(o.tls_ca);
    credentials.tls_cert = Text(o.tls_cert);
    credentials.tls_key = Text(o.tls_key);
    credentials.token_file = Text(o.token_file);
    // ResolveEndpoint checks the pair too, after the environment filled the gaps; its message
    // names ckptctl's flags, this one the fields the caller set.
    if (!address.empty() && credentials.tls_cert.empty() != credentials.tls_key.empty()) {
      const bool has_cert = !credentials.tls_cert.empty();
      const char* env = has_cert ? "CKPT_TLS_KEY" : "CKPT_TLS_CERT";
      if (Text(std::getenv(env)).empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a TLS client certificate and its key go together: ",
            has_cert ? "tls_cert is set but not tls_key" : "tls_key is set but not tls_cert",
            " (nor $", env, ")"));
      }
    }
    return OpenClient(socket, address, credentials, o.timeout_s, out);
  });
}

int ckpt_client_open2(const char* socket, const char* address, ckpt_client** out, char* err,
                      size_t errlen) {
  if (out != nullptr) *out = nullptr;
  return Guard(err, errlen, [&]() -> absl::Status {
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    return OpenClient(Text(socket), Text(address), Credentials(), 0, out);
  });
}

ckpt_client* ckpt_client_open(const char* socket, const char* address, char* err, size_t errlen) {
  ckpt_client* client = nullptr;
  ckpt_client_open2(socket, address, &client, err, errlen);
  return client;
}

void ckpt_client_set_timeout(ckpt_client* client, double seconds) {
  if (client != nullptr && seconds > 0) client->timeout_s.store(seconds);
}

void ckpt_client_close(ckpt_client* client) { delete client; }

void ckpt_client_release_staging(ckpt_client* client) {
  if (client != nullptr && client->trainer != nullptr) client->trainer->ReleaseStaging();
}

namespace {

// The push of ckpt_push and ckpt_push_table, once the tensors are views.
absl::Status PushViews(ckpt_client* client, const std::vector<ckpt::client::TensorView>& views,
                       const ckpt_push_options* options, const ckpt_push_extra* extra,
                       uint64_t* version_out, char** info_json_out) {
  ckpt_push_options defaults;
  ckpt_push_options_init(&defaults);
  const ckpt_push_options& o = options != nullptr ? *options : defaults;
  ckpt::client::PushOptions push;
  if (extra != nullptr) {
    if (extra->struct_size == 0) {
      return absl::InvalidArgumentError("extra->struct_size is 0 (use ckpt_push_extra_init)");
    }
    // Only the fields the caller's struct has are read.
    auto has = [extra](size_t end) { return extra->struct_size >= end; };
    if (has(offsetof(ckpt_push_extra, transport) + sizeof(extra->transport)) &&
        extra->transport != nullptr) {
      auto t = ckpt::client::ParseTransport(extra->transport);
      if (!t.ok()) return t.status();
      push.transport = *t;
    }
    if (has(offsetof(ckpt_push_extra, window_bytes) + sizeof(extra->window_bytes)) &&
        extra->window_bytes != 0) {
      push.window_bytes = extra->window_bytes;
    }
    if (has(offsetof(ckpt_push_extra, update) + sizeof(extra->update))) {
      push.update = extra->update != 0;
    }
    if (has(offsetof(ckpt_push_extra, part_count) + sizeof(extra->part_count))) {
      push.part_index = extra->part_index;
      push.part_count = extra->part_count;
    }
  }
  push.version = o.version;
  if (o.label != nullptr) push.label = o.label;
  if (o.streams != 0) push.streams = o.streams;
  if (o.chunk_bytes != 0) push.chunk_bytes = o.chunk_bytes;
  if (o.timeout_s > 0) push.timeout = absl::Seconds(o.timeout_s);
  std::atomic<bool> cancel{false};
  push.cancel = &cancel;
  if (o.progress != nullptr) {
    ckpt_progress_fn fn = o.progress;
    void* user = o.progress_user;
    push.progress = [fn, user, &cancel](uint64_t done, uint64_t total) {
      if (fn(done, total, user) != 0) cancel.store(true);
    };
  }
  auto info = client->trainer->PushTensors(views, push);
  if (!info.ok()) return info.status();
  if (version_out != nullptr) *version_out = info->version();
  return Output(ckpt::ctl::VersionInfoJson(*info), info_json_out);
}

}  // namespace

int ckpt_push(ckpt_client* client, const ckpt_tensor* tensors, size_t count,
              const ckpt_push_options* options, uint64_t* version_out, char** info_json_out,
              char* err, size_t errlen) {
  ClearOutput(info_json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (tensors == nullptr && count > 0) return absl::InvalidArgumentError("tensors is NULL");
    std::vector<ckpt::client::TensorView> views(count);
    for (size_t i = 0; i < count; ++i) {
      const ckpt_tensor& t = tensors[i];
      if (t.name == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("tensor #", i, ": name is NULL"));
      }
      if (t.ndim < 0 || (t.ndim > 0 && t.shape == nullptr)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "': ndim ", t.ndim, " with ",
                         t.shape == nullptr ? "a NULL shape" : "a shape"));
      }
      views[i].name = t.name;
      views[i].dtype = static_cast<ckpt::DType>(t.dtype);
      views[i].shape.assign(t.shape, t.shape + t.ndim);
      views[i].data = t.data;
      views[i].bytes = t.nbytes;
    }
    return PushViews(client, views, options, /*extra=*/nullptr, version_out, info_json_out);
  });
}

void ckpt_push_extra_init(ckpt_push_extra* extra) {
  if (extra == nullptr) return;
  std::memset(extra, 0, sizeof(*extra));
  extra->struct_size = sizeof(*extra);
}

int ckpt_push_table(ckpt_client* client, const ckpt_tensor_table* table,
                    const ckpt_push_options* options, uint64_t* version_out, char** info_json_out,
                    char* err, size_t errlen) {
  return ckpt_push_table_ex(client, table, options, /*extra=*/nullptr, version_out, info_json_out,
                            err, errlen);
}

int ckpt_push_table_ex(ckpt_client* client, const ckpt_tensor_table* table,
                       const ckpt_push_options* options, const ckpt_push_extra* extra,
                       uint64_t* version_out, char** info_json_out, char* err, size_t errlen) {
  ClearOutput(info_json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (table == nullptr) return absl::InvalidArgumentError("table is NULL");
    // The first table had no `devices`: a caller built then passes a smaller struct_size.
    constexpr size_t kFirstSize = offsetof(ckpt_tensor_table, devices);
    if (table->struct_size < kFirstSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "table->struct_size is ", table->struct_size, ", not sizeof(ckpt_tensor_table) = ",
          sizeof(ckpt_tensor_table), " (or ", kFirstSize, " without devices)"));
    }
    const int32_t* devices =
        table->struct_size >= offsetof(ckpt_tensor_table, devices) + sizeof(table->devices)
            ? table->devices
            : nullptr;
    const size_t n = table->count;
    if (n > 0 &&
        (table->names == nullptr || table->name_ends == nullptr || table->dtypes == nullptr ||
         table->ndims == nullptr || table->data == nullptr || table->nbytes == nullptr)) {
      return absl::InvalidArgumentError("a column of the table is NULL");
    }
    std::vector<ckpt::client::TensorView> views(n);
    uint64_t name_begin = 0;
    uint64_t dim = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint64_t name_end = table->name_ends[i];
      if (name_end < name_begin || name_end > table->names_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor #", i, ": name_ends[", i, "] = ", name_end,
            name_end < name_begin ? absl::StrCat(" goes back from ", name_begin)
                                  : absl::StrCat(" is past names_bytes ", table->names_bytes)));
      }
      views[i].name.assign(table->names + name_begin, name_end - name_begin);
      name_begin = name_end;
      const int32_t ndim = table->ndims[i];
      // The daemon accepts at most 64 dimensions; a larger ndim is refused here, before the
      // shapes column is read past what a sane caller filled.
      if (ndim < 0 || ndim > 64 || (ndim > 0 && table->shapes == nullptr)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", views[i].name, "': ndim ", ndim,
                                                       ndim > 64 ? " (at most 64)"
                                                       : table->shapes == nullptr
                                                           ? " with a NULL shapes column"
                                                           : ""));
      }
      if (static_cast<uint64_t>(ndim) > table->shapes_count - std::min(dim, table->shapes_count)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", views[i].name, "': ndims add up ",
                         "to more than shapes_count ", table->shapes_count));
      }
      views[i].dtype = static_cast<ckpt::DType>(table->dtypes[i]);
      views[i].shape.assign(table->shapes + dim, table->shapes + dim + ndim);
      dim += static_cast<uint64_t>(ndim);
      views[i].data = reinterpret_cast<const void*>(static_cast<uintptr_t>(table->data[i]));
      views[i].bytes = table->nbytes[i];
      if (devices != nullptr) views[i].device = devices[i];
    }
    return PushViews(client, views, options, extra, version_out, info_json_out);
  });
}

int ckpt_load_files(ckpt_client* client, const char* const* paths, size_t count, uint64_t version,
                    const char* label, double timeout_s, uint64_t* version_out,
                    char** info_json_out, char* err, size_t errlen) {
  ClearOutput(info_json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (paths == nullptr && count > 0) return absl::InvalidArgumentError("paths is NULL");
    std::vector<std::string> files;
    for (size_t i = 0; i < count; ++i) {
      if (paths[i] == nullptr)
        return absl::InvalidArgumentError(absl::StrCat("path #", i, " is NULL"));
      files.emplace_back(paths[i]);
    }
    absl::Duration timeout = timeout_s > 0 ? absl::Seconds(timeout_s) : absl::Minutes(30);
    auto info = client->trainer->LoadFiles(files, version, label ? label : "", timeout);
    if (!info.ok()) return info.status();
    if (version_out != nullptr) *version_out = info->version();
    return Output(ckpt::ctl::VersionInfoJson(*info), info_json_out);
  });
}

int ckpt_list_versions(ckpt_client* client, char** json_out, char* err, size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (json_out == nullptr) return absl::InvalidArgumentError("json_out is NULL");
    auto versions = client->admin->ListVersions(AdminTimeout(client));
    if (!versions.ok()) return versions.status();
    return Output(ckpt::ctl::VersionsJson(*versions), json_out);
  });
}

int ckpt_get_version(ckpt_client* client, uint64_t version, char** json_out, char* err,
                     size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (json_out == nullptr) return absl::InvalidArgumentError("json_out is NULL");
    auto detail = client->admin->GetVersion(version, AdminTimeout(client));
    if (!detail.ok()) return detail.status();
    return Output(ckpt::ctl::VersionDetailJson(*detail), json_out);
  });
}

int ckpt_drop_version(ckpt_client* client, uint64_t version, char* err, size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    return client->admin->Drop(version, AdminTimeout(client));
  });
}

int ckpt_update(ckpt_client* client, uint64_t version, int force, double timeout_s, char** json_out,
                char* err, size_t errlen) {
  return ckpt_update_options(client, version, force, timeout_s, nullptr, json_out, err, errlen);
}

int ckpt_update_options(ckpt_client* client, uint64_t version, int force, double timeout_s,
                        const char* options_json, char** json_out, char* err, size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    ckpt::v1::UpdateRequest request;
    request.set_version(version);
    request.set_force(force != 0);
    if (options_json != nullptr && options_json[0] != '\0') {
      const nlohmann::json options = nlohmann::json::parse(options_json, nullptr, false);
      if (options.is_discarded() || !options.is_object()) {
        return absl::InvalidArgumentError("update options: not a JSON object");
      }
      auto patterns = [](const nlohmann::json& v, const char* key,
                         std::vector<std::string>* out) -> absl::Status {
        if (!v.is_array()) return absl::InvalidArgumentError(absl::StrCat(key, ": not a list"));
        for (const nlohmann::json& p : v) {
          if (!p.is_string()) {
            return absl::InvalidArgumentError(absl::StrCat(key, ": not a list of strings"));
          }
          out->push_back(p.get<std::string>());
        }
        return absl::OkStatus();
      };
      for (const auto& [key, value] : options.items()) {
        if (key == "convert") {
          const std::string c = value.is_string() ? value.get<std::string>() : "";
          if (c != "default" && c != "fp8" && c != "none") {
            return absl::InvalidArgumentError(
                "update options: convert is \"default\", \"fp8\" or \"none\"");
          }
          request.set_convert(c == "fp8"    ? ckpt::v1::CONVERSION_FP8
                              : c == "none" ? ckpt::v1::CONVERSION_NONE
                                            : ckpt::v1::CONVERSION_DEFAULT);
        } else if (key == "fp8_weights" || key == "fp8_exclude") {
          std::vector<std::string> list;
          if (absl::Status st = patterns(value, key.c_str(), &list); !st.ok()) return st;
          for (std::string& p : list) {
            *(key == "fp8_weights" ? request.add_fp8_weights() : request.add_fp8_exclude()) =
                std::move(p);
          }
        } else if (key == "consistent") {
          if (!value.is_boolean()) {
            return absl::InvalidArgumentError("update options: consistent is true or false");
          }
          request.set_consistent(value.get<bool>());
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("update options: unknown key ", ckpt::QuoteForMessage(key, 64)));
        }
      }
    }
    auto response = client->admin->Update(request, absl::Seconds(timeout_s > 0 ? timeout_s : 600));
    if (!response.ok()) return response.status();
    return Output(ckpt::ctl::UpdateJson(*response), json_out);
  });
}

int ckpt_update_previous(ckpt_client* client, double timeout_s, char** json_out, char* err,
                         size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    ckpt::v1::UpdateRequest request;
    request.set_previous(true);
    auto response = client->admin->Update(request, absl::Seconds(timeout_s > 0 ? timeout_s : 600));
    if (!response.ok()) return response.status();
    return Output(ckpt::ctl::UpdateJson(*response), json_out);
  });
}

int ckpt_wait_loaded(ckpt_client* client, uint64_t version, double timeout_s, char** json_out,
                     char* err, size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedClient(client); !s.ok()) return s;
    if (!(timeout_s >= 0) || timeout_s > 7 * 24 * 3600.0) {
      return absl::InvalidArgumentError("timeout_s must be between 0 and one week");
    }
    auto response =
        client->admin->WaitLoaded(version, absl::Seconds(timeout_s > 0 ? timeout_s : 600));
    if (!response.ok()) return response.status();
    return Output(ckpt::ctl::WaitLoadedJson(*response), json_out);
  });
}

namespace {

absl::Status NeedConsumer(const ckpt_consumer* consumer) {
  return consumer == nullptr ? absl::InvalidArgumentError("consumer is NULL") : absl::OkStatus();
}

// Fills the C view of consumer->event.
void PublishEvent(ckpt_consumer* c, ckpt_consumer_event* out) {
  c->views.clear();
  c->table_built = false;
  c->have_event = true;
  for (const ckpt::client::ReceivedTensor& t : c->event.tensors) {
    ckpt_tensor_view v;
    v.name = t.name.c_str();
    v.dtype = static_cast<int>(t.dtype);
    v.ndim = static_cast<int>(t.shape.size());
    v.shape = t.shape.data();
    v.data = t.data;
    v.nbytes = t.bytes;
    c->views.push_back(v);
  }
  out->kind = c->event.kind == ckpt::client::ConsumerEvent::Kind::kBucket ? CKPT_EVENT_BUCKET
                                                                          : CKPT_EVENT_VERSION_DONE;
  out->version = c->event.version;
  out->bucket = c->event.bucket;
  out->last = c->event.last ? 1 : 0;
  out->count = c->views.size();
  out->tensors = c->views.data();
}

// Lays the columns of consumer->event out in one block (see ckpt_bucket_table) and points `t` at
// them. The block is uint64-aligned; the columns come widest first, so each is aligned too.
absl::Status BuildTable(ckpt_consumer* c, ckpt_bucket_table* t) {
  const auto& tensors = c->event.tensors;
  const size_t n = tensors.size();
  size_t dims = 0, name_bytes = 0;
  for (const auto& x : tensors) {
    dims += x.shape.size();
    name_bytes += x.name.size();
  }
  // name_ends, data, nbytes, shapes: 8 bytes each; slots, dtypes, ndims: 4; names: 1.
  const size_t wide = 3 * n + dims;
  const size_t narrow_bytes = 3 * n * sizeof(int32_t) + name_bytes;
  const size_t bytes = wide * sizeof(uint64_t) + narrow_bytes;
  if (!c->table_built) {
    c->table_block.assign((bytes + 7) / 8, 0);
    auto* base = reinterpret_cast<uint8_t*>(c->table_block.data());
    auto* name_ends = reinterpret_cast<uint64_t*>(base);
    auto* data = name_ends + n;
    auto* nbytes = data + n;
    auto* shapes = reinterpret_cast<int64_t*>(nbytes + n);
    auto* slots = reinterpret_cast<int32_t*>(shapes + dims);
    auto* dtypes = slots + n;
    auto* ndims = dtypes + n;
    char* names = reinterpret_cast<char*>(ndims + n);
    const auto& addresses = c->consumer->slot_addresses();
    const uint64_t slot_bytes = c->consumer->slot_bytes();
    uint64_t name_end = 0;
    size_t dim = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto& x = tensors[i];
      std::memcpy(names + name_end, x.name.data(), x.name.size());
      name_end += x.name.size();
      name_ends[i] = name_end;
      data[i] = reinterpret_cast<uint64_t>(x.data);
      nbytes[i] = x.bytes;
      for (int64_t d : x.shape) shapes[dim++] = d;
      slots[i] = -1;
      const auto* p = static_cast<const uint8_t*>(x.data);
      for (size_t s = 0; p != nullptr && s < addresses.size(); ++s) {
        if (p >= addresses[s] && static_cast<uint64_t>(p - addresses[s]) < slot_bytes) {
          slots[i] = static_cast<int32_t>(s);
          break;
        }
      }
      dtypes[i] = static_cast<int32_t>(x.dtype);
      ndims[i] = static_cast<int32_t>(x.shape.size());
    }
    c->table_built = true;
  }
  auto* base = reinterpret_cast<uint8_t*>(c->table_block.data());
  t->count = n;
  t->layout = base;
  t->layout_bytes = bytes;
  t->name_ends = reinterpret_cast<const uint64_t*>(base);
  t->data = t->name_ends + n;
  t->nbytes = t->data + n;
  t->shapes = reinterpret_cast<const int64_t*>(t->nbytes + n);
  t->slots = reinterpret_cast<const int32_t*>(t->shapes + dims);
  t->dtypes = t->slots + n;
  t->ndims = t->dtypes + n;
  t->names = reinterpret_cast<const char*>(t->ndims + n);
  return absl::OkStatus();
}

}  // namespace

int ckpt_consumer_bucket_table(ckpt_consumer* consumer, ckpt_bucket_table* table, char* err,
                               size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    if (table == nullptr) return absl::InvalidArgumentError("table is NULL");
    if (table->struct_size == 0) {
      return absl::InvalidArgumentError("table->struct_size is 0: set it to sizeof(*table)");
    }
    if (!consumer->have_event ||
        consumer->event.kind != ckpt::client::ConsumerEvent::Kind::kBucket) {
      return absl::FailedPreconditionError("the last event is not a bucket");
    }
    ckpt_bucket_table full;
    std::memset(&full, 0, sizeof(full));
    RETURN_IF_ERROR(BuildTable(consumer, &full));
    // Only the fields that fit the caller's struct; struct_size stays the caller's.
    const size_t size = std::min(table->struct_size, sizeof(full));
    full.struct_size = table->struct_size;
    std::memcpy(table, &full, size);
    return absl::OkStatus();
  });
}

int ckpt_consumer_attach(const char* socket, int cuda_device, const char* engine,
                         const char* const* tensor_names, size_t name_count, double timeout_s,
                         ckpt_consumer** out, char* err, size_t errlen) {
  return ckpt_consumer_attach_pausable(socket, cuda_device, engine, tensor_names, name_count,
                                       timeout_s, nullptr, nullptr, nullptr, out, err, errlen);
}

int ckpt_consumer_attach_pausable(const char* socket, int cuda_device, const char* engine,
                                  const char* const* tensor_names, size_t name_count,
                                  double timeout_s, ckpt_pause_fn pause, ckpt_resume_fn resume,
                                  void* user, ckpt_consumer** out, char* err, size_t errlen) {
  if (out != nullptr) *out = nullptr;
  return Guard(err, errlen, [&]() -> absl::Status {
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (pause == nullptr && resume != nullptr) {
      return absl::InvalidArgumentError("resume without pause: a worker that resumes must pause");
    }
    if (name_count > 0 && tensor_names == nullptr) {
      return absl::InvalidArgumentError("tensor_names is NULL but name_count > 0");
    }
    auto endpoint = ckpt::client::ResolveEndpoint(socket ? socket : "", "");
    if (!endpoint.ok()) return endpoint.status();
    ckpt::client::ConsumerOptions options;
    options.cuda_device = cuda_device;
    options.engine = engine != nullptr && engine[0] != '\0' ? engine : "c";
    for (size_t i = 0; i < name_count; ++i) {
      if (tensor_names[i] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("tensor_names[", i, "] is NULL"));
      }
      options.tensor_names.emplace_back(tensor_names[i]);
    }
    if (timeout_s > 0) options.attach_timeout = absl::Seconds(timeout_s);
    if (pause != nullptr) {
      options.on_pause = [pause, user](uint64_t version) -> absl::Status {
        char why[512] = {};
        if (pause(version, user, why, sizeof(why)) == 0) return absl::OkStatus();
        why[sizeof(why) - 1] = '\0';
        return absl::FailedPreconditionError(why[0] != '\0' ? why : "the pause hook refused");
      };
      options.on_resume = [resume, user](uint64_t version, bool loaded, const std::string& error) {
        if (resume != nullptr) resume(version, loaded ? 1 : 0, error.c_str(), user);
      };
    }
    auto consumer = ckpt::client::Consumer::Attach(*endpoint, std::move(options));
    if (!consumer.ok()) return consumer.status();
    auto c = std::make_unique<ckpt_consumer>();
    c->consumer = std::move(*consumer);
    *out = c.release();
    return absl::OkStatus();
  });
}

int ckpt_consumer_set_verify_checksums(ckpt_consumer* consumer, int enabled, char* err,
                                       size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    consumer->consumer->set_verify_checksums(enabled != 0);
    return absl::OkStatus();
  });
}

int ckpt_consumer_next(ckpt_consumer* consumer, double timeout_s, ckpt_consumer_event* event,
                       char* err, size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    if (event == nullptr) return absl::InvalidArgumentError("event is NULL");
    std::memset(event, 0, sizeof(*event));
    auto next = consumer->consumer->Next(absl::Now() + absl::Seconds(std::max(0.0, timeout_s)));
    if (!next.ok()) return next.status();
    consumer->event = std::move(*next);
    PublishEvent(consumer, event);
    return absl::OkStatus();
  });
}

int ckpt_consumer_ack(ckpt_consumer* consumer, uint64_t version, uint64_t bucket, const char* error,
                      char* err, size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    return consumer->consumer->Ack(version, bucket, error != nullptr ? error : "");
  });
}

int ckpt_consumer_loaded(ckpt_consumer* consumer, uint64_t version, uint64_t tensors,
                         uint64_t bytes, const char* error, char* err, size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    return consumer->consumer->Loaded(version, tensors, bytes, error != nullptr ? error : "");
  });
}

int ckpt_consumer_receive_version(ckpt_consumer* consumer, double timeout_s, ckpt_bucket_fn fn,
                                  void* user, uint64_t* version_out, char* err, size_t errlen) {
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    if (fn == nullptr) return absl::InvalidArgumentError("fn is NULL");
    auto loaded = consumer->consumer->ReceiveVersion(
        [&](const ckpt::client::ConsumerEvent& event) -> absl::Status {
          consumer->event = event;
          ckpt_consumer_event view;
          PublishEvent(consumer, &view);
          char why[1024] = {0};
          if (fn(&view, user, why, sizeof(why)) == 0) return absl::OkStatus();
          return absl::AbortedError(why[0] != '\0' ? why : "the bucket callback failed");
        },
        absl::Seconds(timeout_s > 0 ? timeout_s : 86400));
    if (!loaded.ok()) return loaded.status();
    if (version_out != nullptr) *version_out = loaded->version;
    return absl::OkStatus();
  });
}

int ckpt_consumer_info(ckpt_consumer* consumer, char** json_out, char* err, size_t errlen) {
  ClearOutput(json_out);
  return Guard(err, errlen, [&]() -> absl::Status {
    if (absl::Status s = NeedConsumer(consumer); !s.ok()) return s;
    if (json_out == nullptr) return absl::InvalidArgumentError("json_out is NULL");
    const auto& c = *consumer->consumer;
    std::vector<uint64_t> addresses;
    for (const uint8_t* a : c.slot_addresses()) addresses.push_back(reinterpret_cast<uint64_t>(a));
    return Output({{"backend", c.backend()},
                   {"gpu_uuid", c.gpu_uuid()},
                   {"slots", c.slot_count()},
                   {"slot_bytes", c.slot_bytes()},
                   {"slot_addresses", addresses}},
                  json_out);
  });
}

void ckpt_consumer_close(ckpt_consumer* consumer) { delete consumer; }

void ckpt_free(void* p) { std::free(p); }

const char* ckpt_status_name(int code) {
  switch (code) {
    case 0:
      return "OK";
    case 1:
      return "CANCELLED";
    case 2:
      return "UNKNOWN";
    case 3:
      return "INVALID_ARGUMENT";
    case 4:
      return "DEADLINE_EXCEEDED";
    case 5:
      return "NOT_FOUND";
    case 6:
      return "ALREADY_EXISTS";
    case 7:
      return "PERMISSION_DENIED";
    case 8:
      return "RESOURCE_EXHAUSTED";
    case 9:
      return "FAILED_PRECONDITION";
    case 10:
      return "ABORTED";
    case 11:
      return "OUT_OF_RANGE";
    case 12:
      return "UNIMPLEMENTED";
    case 13:
      return "INTERNAL";
    case 14:
      return "UNAVAILABLE";
    case 15:
      return "DATA_LOSS";
    case 16:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

const char* ckpt_version(void) { return ckpt::kVersion; }

}  // extern "C"
