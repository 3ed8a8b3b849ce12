#include "common/message_text.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace ckpt {

std::string EscapeForMessage(absl::string_view text, size_t max_bytes) {
  // Escape only a prefix: escaping can at most quadruple a byte, so the prefix is enough to fill
  // max_bytes, and a huge input costs no more than a small one.
  const absl::string_view head = text.substr(0, max_bytes);
  std::string out = absl::Utf8SafeCEscape(head);
  bool cut = head.size() < text.size();
  if (out.size() > max_bytes) {
    out.resize(max_bytes);
    // Do not end inside an escape sequence ("\3" of "\302"): drop a dangling backslash run.
    size_t keep = out.rfind('\\');
    if (keep != std::string::npos && out.size() - keep < 4) out.resize(keep);
    cut = true;
  }
  if (cut) absl::StrAppend(&out, " ... (", text.size(), " bytes)");
  return out;
}

std::string QuoteForMessage(absl::string_view text, size_t max_bytes) {
  return absl::StrCat("'", EscapeForMessage(text, max_bytes), "'");
}

absl::Status BoundStatusMessage(const absl::Status& status) {
  if (status.message().size() <= kMaxStatusMessageBytes) return status;
  const size_t total = status.message().size();
  std::string message(status.message().substr(0, kMaxStatusMessageBytes));
  absl::StrAppend(&message, " ... (message of ", total, " bytes cut)");
  return absl::Status(status.code(), message);
}

}  // namespace ckpt
