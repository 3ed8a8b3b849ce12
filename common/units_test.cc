#include "common/units.h"

#include <catch2/catch.hpp>
#include <string>

namespace ckpt {
namespace {

TEST_CASE("ParseByteSize accepts plain numbers and binary and SI units") {
  CHECK(*ParseByteSize("0") == 0);
  CHECK(*ParseByteSize("1073741824") == 1073741824ull);
  CHECK(*ParseByteSize("512MiB") == 512ull << 20);
  CHECK(*ParseByteSize("64 GiB") == 64ull << 30);
  CHECK(*ParseByteSize("1.5GiB") == 3ull << 29);
  CHECK(*ParseByteSize("4k") == 4096);
  CHECK(*ParseByteSize("2GB") == 2000000000ull);
  CHECK(*ParseByteSize("18446744073709551615") == 18446744073709551615ull);
}

TEST_CASE("ParseByteSize refuses garbage with a message naming the text") {
  for (const char* bad : {"", "GiB", "-1", "12 parsecs", "1e400", "16777216TiB", "abc"}) {
    INFO(bad);
    auto r = ParseByteSize(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(r.status().message()).find(std::string("'") + bad + "'") !=
          std::string::npos);
  }
}

TEST_CASE("FormatBytes prints binary units") {
  CHECK(FormatBytes(0) == "0 B");
  CHECK(FormatBytes(1023) == "1023 B");
  CHECK(FormatBytes(1536) == "1.5 KiB");
  CHECK(FormatBytes(64ull << 30) == "64.0 GiB");
}

TEST_CASE("ParseDuration accepts the usual units") {
  CHECK(*ParseDuration("5s") == absl::Seconds(5));
  CHECK(*ParseDuration("250ms") == absl::Milliseconds(250));
  CHECK(*ParseDuration("2m") == absl::Minutes(2));
  CHECK(*ParseDuration("1.5") == absl::Milliseconds(1500));
  CHECK(*ParseDuration("1h") == absl::Hours(1));
  CHECK_FALSE(ParseDuration("-1s").ok());
  CHECK_FALSE(ParseDuration("soon").ok());
  CHECK_FALSE(ParseDuration("5 fortnights").ok());
}

TEST_CASE("HumanDuration is compact") {
  CHECK(HumanDuration(absl::Milliseconds(850)) == "850ms");
  CHECK(HumanDuration(absl::Milliseconds(4200)) == "4.2s");
  CHECK(HumanDuration(absl::Seconds(192)) == "3m12s");
  CHECK(HumanDuration(absl::Minutes(62)) == "1h02m");
  CHECK(HumanDuration(absl::Hours(50)) == "2d02h");
}

}  // namespace
}  // namespace ckpt
