#include "common/message_text.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt {
namespace {

TEST_CASE("EscapeForMessage keeps short text and escapes control characters") {
  CHECK(EscapeForMessage("model.layers.0.weight") == "model.layers.0.weight");
  CHECK(EscapeForMessage("a\nb") == "a\\nb");
  CHECK(QuoteForMessage("it's") == "'it\\'s'");
  CHECK(EscapeForMessage(std::string("x\0y", 3)) == "x\\000y");
}

TEST_CASE("EscapeForMessage cuts long text and says how long it was") {
  const std::string huge(16 << 20, 'n');
  const std::string out = EscapeForMessage(huge);
  CHECK(out.size() < 200);
  CHECK(out.find("(16777216 bytes)") != std::string::npos);
  // Escapes grow the text; the result is still bounded and never ends in a half escape.
  const std::string newlines(1000, '\n');
  const std::string out2 = EscapeForMessage(newlines, 21);
  CHECK(out2.rfind("\\n", 0) == 0);
  CHECK(out2.find("(1000 bytes)") != std::string::npos);
  CHECK(out2.find(" ... ") % 2 == 0);
}

TEST_CASE("BoundStatusMessage cuts messages over the limit and keeps the code") {
  absl::Status small = absl::NotFoundError("no version 3");
  CHECK(BoundStatusMessage(small) == small);
  absl::Status big = absl::InvalidArgumentError(std::string(1 << 20, 'e'));
  absl::Status cut = BoundStatusMessage(big);
  CHECK(cut.code() == absl::StatusCode::kInvalidArgument);
  CHECK(cut.message().size() < kMaxStatusMessageBytes + 64);
  CHECK(std::string(cut.message()).find("message of 1048576 bytes cut") != std::string::npos);
}

}  // namespace
}  // namespace ckpt
