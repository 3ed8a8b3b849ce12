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
  CHECK(SpinnerLine(2, 0, absl::Seconds(3.1)) == "| loading 2 paths into ckpt-engined  3.1s");
  CHECK(SpinnerLine(1, 1, absl::Seconds(0)) == "/ loading 1 path into ckpt-engined  0ms");
  CHECK(SpinnerLine(1, 6, absl::Seconds(61))[0] == '-');
  CHECK(SpinnerLine(1, 7, absl::Seconds(61)).back() == 's');
}

TEST_CASE("the progress line shows the stage, a bar of the bytes, files and rate") {
  v1::LoadFilesProgress p;
  p.set_stage(v1::LOAD_STAGE_HEADERS);
  p.set_files_total(12);
  p.set_headers_read(3);
  CHECK(ProgressLine(p, 1, 0, absl::Milliseconds(400)) == "/ reading headers: 3/12 files  400ms");

  p.set_stage(v1::LOAD_STAGE_READING);
  p.set_headers_read(12);
  p.set_files_done(5);
  p.set_bytes_total(uint64_t{16} << 30);
  p.set_bytes_done(uint64_t{36} << 27);  // 4.5 GiB: 28%
  CHECK(ProgressLine(p, 0, 2.1e9, absl::Seconds(3.6)) ==
        "[#####---------------]  28%  4.5 GiB/16.0 GiB  5/12 files  2.10 GB/s  3.6s");
  // No rate yet; all read.
  p.set_bytes_done(p.bytes_total());
  p.set_files_done(12);
  CHECK(ProgressLine(p, 0, 0, absl::Seconds(8)) ==
        "[####################] 100%  16.0 GiB/16.0 GiB  12/12 files  8.0s");
  // Nothing to read (only empty tensors): a full bar, not a division by zero.
  v1::LoadFilesProgress empty;
  empty.set_stage(v1::LOAD_STAGE_READING);
  empty.set_files_total(1);
  CHECK(ProgressLine(empty, 0, 0, absl::Seconds(1)).substr(0, 27) == "[####################] 100%");

  p.set_stage(v1::LOAD_STAGE_COMMITTING);
  CHECK(ProgressLine(p, 2, 0, absl::Seconds(9)) ==
        "- committing: 16.0 GiB in 12 files (checksums)  9.0s");
  p.set_files_total(1);
  p.set_stage(v1::LOAD_STAGE_DONE);
  CHECK(ProgressLine(p, 0, 0, absl::Seconds(9)) == "done: 16.0 GiB in 1 file  9.0s");
}

}  // namespace
}  // namespace ckpt::ctl
