// Text from the wire or a file as it may appear in an error message or a log line: escaped so that
// it stays on one line (control characters, quotes and invalid UTF-8 become C escapes) and cut to
// a bounded length, so that a 16 MiB tensor name or a label with newlines can neither break a
// client that reads the error nor flood the logs.
#ifndef CKPT_COMMON_MESSAGE_TEXT_H_
#define CKPT_COMMON_MESSAGE_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ckpt {

// Longest text of one field kept in a message (escaped bytes).
inline constexpr size_t kMaxQuotedBytes = 160;

// Longest message of a status that leaves the daemon (gRPC sends it in a trailer; a client's
// default metadata limit is 8 KiB).
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// `text` escaped, at most `max_bytes` of it, with " ... (N bytes)" when cut. Never throws.
std::string EscapeForMessage(absl::string_view text, size_t max_bytes = kMaxQuotedBytes);

// EscapeForMessage in single quotes: 'name'.
std::string QuoteForMessage(absl::string_view text, size_t max_bytes = kMaxQuotedBytes);

// `status` with its message cut to kMaxStatusMessageBytes (code unchanged).
absl::Status BoundStatusMessage(const absl::Status& status);

}  // namespace ckpt

#endif  // CKPT_COMMON_MESSAGE_TEXT_H_
