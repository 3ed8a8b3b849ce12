#include "client/ckptctl/push_command.h"

#include <catch2/catch.hpp>

namespace ckpt::ctl {
namespace {

TEST_CASE("push prints the committed version in one line") {
  v1::VersionInfo info;
  info.set_version(7);
  info.set_state(v1::VERSION_STATE_COMMITTED);
  info.set_tensor_count(3);
  info.set_total_bytes(12u << 20);
  CHECK(PushDoneText(info, absl::Milliseconds(1200)) ==
        "version 7 committed: 3 tensors, 12.0 MiB in 1.2s");
  info.set_label("step-9");
  info.set_tensor_count(1);
  CHECK(PushDoneText(info, absl::Milliseconds(80)) ==
        "version 7 committed: 1 tensor, 12.0 MiB in 80ms, label \"step-9\"");
}

TEST_CASE("the spinner turns and shows the elapsed time") {
  CHECK(SpinnerLine(2, 0, absl::Seconds(3.1)) == "| loading 2 files into ckpt-engined  3.1s");
  CHECK(SpinnerLine(1, 1, absl::Seconds(0)) == "/ loading 1 file into ckpt-engined  0ms");
  CHECK(SpinnerLine(1, 6, absl::Seconds(61))[0] == '-');
  CHECK(SpinnerLine(1, 7, absl::Seconds(61)).back() == 's');
}

}  // namespace
}  // namespace ckpt::ctl
