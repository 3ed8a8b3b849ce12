#include "daemon/server/grpc_log.h"

#include <grpc/support/log.h>

#include <mutex>

#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace ckpt::daemon {
namespace {

std::mutex mu;
bool capturing = false;             // guarded by mu
std::vector<std::string> captured;  // guarded by mu: error lines while capturing

void Sink(gpr_log_func_args* args) {
  std::string message = args->message ? args->message : "";
  {
    std::lock_guard<std::mutex> lock(mu);
    if (capturing) {
      if (args->severity == GPR_LOG_SEVERITY_ERROR) captured.push_back(message);
      spdlog::debug("grpc (start-up): {}", message);
      return;
    }
  }
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    spdlog::error("grpc: {}", message);
  } else {
    spdlog::debug("grpc: {}", message);
  }
}

}  // namespace

void RouteGrpcLogsToSpdlog() { gpr_set_log_function(&Sink); }

GrpcLogCapture::GrpcLogCapture() {
  RouteGrpcLogsToSpdlog();
  std::lock_guard<std::mutex> lock(mu);
  capturing = true;
  captured.clear();
}

GrpcLogCapture::~GrpcLogCapture() {
  std::lock_guard<std::mutex> lock(mu);
  capturing = false;
  captured.clear();
}

std::string GrpcLogCapture::ErrorSummary() const {
  std::lock_guard<std::mutex> lock(mu);
  std::vector<std::string> parts;
  for (const std::string& m : captured) parts.push_back(SummarizeGrpcError(m));
  return absl::StrJoin(parts, "; ");
}

std::string SummarizeGrpcError(const std::string& message) {
  // gRPC errors look like: UNKNOWN:What happened {file:..., children:[... os_error:"Why" ...]}
  std::string head = message.substr(0, message.find(" {"));
  absl::string_view what = absl::StripAsciiWhitespace(head);
  size_t colon = what.find(':');
  if (colon != absl::string_view::npos &&
      what.substr(0, colon).find(' ') == absl::string_view::npos) {
    what.remove_prefix(colon + 1);  // drop the "UNKNOWN:" code prefix
  }
  std::string out(what);
  size_t os = message.find("os_error:\"");
  if (os != std::string::npos) {
    size_t start = os + 10;
    size_t end = message.find('"', start);
    if (end != std::string::npos) out += " (" + message.substr(start, end - start) + ")";
  }
  return out;
}

}  // namespace ckpt::daemon
