#include "daemon/cluster/members.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/message_text.h"

namespace ckpt::daemon {
namespace {

bool IsIpv4(const std::string& s) {
  in_addr a;
  return ::inet_pton(AF_INET, s.c_str(), &a) == 1;
}

// A decimal port: digits only (SimpleAtoi would take "+80" and " 80").
bool ParsePort(absl::string_view text, int min_port, int* port) {
  if (text.empty() || text.size() > 5) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return absl::SimpleAtoi(text, port) && *port >= min_port && *port <= 65535;
}

bool IsIpv6(const std::string& s) {
  in6_addr a;
  return ::inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

// "HOST:PORT" / "[V6]:PORT"; `min_port` is 1 for addresses to dial, 0 for a listen address.
absl::StatusOr<PeerAddress> ParseHostPort(absl::string_view text, int min_port) {
  const std::string shown = QuoteForMessage(std::string(text), 80);
  PeerAddress a;
  absl::string_view port;
  if (absl::StartsWith(text, "[")) {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat(
          shown, ": an IPv6 address goes in brackets, then :PORT, e.g. [fd00::1]:7071"));
    }
    a.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
    if (!IsIpv6(a.host)) {
      return absl::InvalidArgumentError(absl::StrCat(shown, ": not an IPv6 address in brackets"));
    }
  } else {
    const size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": expected HOST:PORT, e.g. 10.0.0.5:7071 or node-1:7071"));
    }
    a.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (a.host.find(':') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": an IPv6 address goes in brackets, e.g. [fd00::1]:7071"));
    }
    if (!IsIpv4(a.host) && !ValidHostName(a.host)) {
      return absl::InvalidArgumentError(absl::StrCat(
          shown, ": ", QuoteForMessage(a.host, 80), " is neither an IPv4 address nor a host name"));
    }
  }
  if (!ParsePort(port, min_port, &a.port)) {
    return absl::InvalidArgumentError(
        absl::StrCat(shown, ": the port must be a number from ", min_port, " to 65535"));
  }
  return a;
}

}  // namespace

std::string PeerAddress::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

bool ValidHostName(absl::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(name, '.')) {
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
  }
  return true;
}

absl::Status CheckNodeName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("node_name is empty");
  if (name.size() > 63) {
    return absl::InvalidArgumentError(
        absl::StrCat("node_name has ", name.size(), " characters; at most 63"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("node_name '", QuoteForMessage(std::string(name), 80),
                       "' may only have letters, digits, '.', '_' and '-'"));
    }
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name.front())) ||
      !absl::ascii_isalnum(static_cast<unsigned char>(name.back()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("node_name '", name, "' must begin and end with a letter or digit"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PeerAddress> ParseListenAddress(absl::string_view text) {
  return ParseHostPort(text, 0);
}

absl::StatusOr<ClusterMembers> ParseClusterMembers(absl::string_view text) {
  ClusterMembers members;
  text = absl::StripAsciiWhitespace(text);
  if (text.empty()) return members;
  if (absl::ConsumePrefix(&text, "dns:")) {
    const size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          "dns:NAME:PORT expected, e.g. dns:ckpt-engine.inference.svc.cluster.local:7071");
    }
    members.dns_name = std::string(text.substr(0, colon));
    if (!ValidHostName(members.dns_name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("dns:", QuoteForMessage(members.dns_name, 80), ": not a valid DNS name"));
    }
    if (!ParsePort(text.substr(colon + 1), 1, &members.dns_port)) {
      return absl::InvalidArgumentError("dns:NAME:PORT: the port must be a number from 1 to 65535");
    }
    return members;
  }
  size_t index = 0;
  for (absl::string_view entry : absl::StrSplit(text, ',')) {
    ++index;
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("entry ", index, " is empty (HOST:PORT entries separated by commas)"));
    }
    if (members.addresses.size() == kMaxClusterMembers) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", kMaxClusterMembers, " members listed"));
    }
    auto address = ParseHostPort(entry, 1);
    if (!address.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("entry ", index, " ", address.status().message()));
    }
    for (const PeerAddress& seen : members.addresses) {
      if (seen == *address) {
        return absl::InvalidArgumentError(
            absl::StrCat("entry ", index, " ", address->ToString(), " is listed twice"));
      }
    }
    members.addresses.push_back(*std::move(address));
  }
  return members;
}

}  // namespace ckpt::daemon
