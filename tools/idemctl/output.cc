// What every command shares: typed flags, the client options, exit codes
// for errors, and JSON and human output.
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out += "\"";
  return out;
}

}  // namespace

// --- Flags and errors ---------------------------------------------------

std::optional<std::string> Invocation::Flag(const std::string& name) const {
  auto it = args_.flags.find(name);
  if (it == args_.flags.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Invocation::Flags(const std::string& name) const {
  std::vector<std::string> values;
  auto [first, last] = args_.flags.equal_range(name);
  for (auto it = first; it != last; ++it) values.push_back(it->second);
  return values;
}

absl::Duration Invocation::Duration(const std::string& name) const {
  std::optional<std::string> value = Flag(name);
  if (!value.has_value()) return absl::ZeroDuration();
  absl::Duration d;
  if (!absl::ParseDuration(*value, &d) || d <= absl::ZeroDuration()) {
    throw UsageError{absl::StrCat("--", name, "=", *value,
                                  " is not a positive duration (e.g. 30s)")};
  }
  return d;
}

uint64_t Invocation::Token() const {
  std::optional<std::string> value = Flag("token");
  uint64_t token = 0;
  if (!value.has_value() || !absl::SimpleAtoi(*value, &token) || token == 0) {
    throw UsageError{absl::StrCat(
        args_.command, " needs --token=N, the token printed by begin")};
  }
  return token;
}

std::string Invocation::TextOrFile(const std::string& name) const {
  std::string value = Flag(name).value_or("");
  if (!absl::StartsWith(value, "@")) return value;
  std::ifstream in(value.substr(1), std::ios::binary);
  if (!in) {
    throw UsageError{
        absl::StrCat("--", name, ": cannot read file ", value.substr(1))};
  }
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

client::ClientOptions Invocation::ClientOptions() const {
  client::ClientOptions options;
  options.target = args_.server;
  if (args_.use_tls) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        client::MakeCredentials(args_.tls);
    if (!credentials.ok()) {
      throw UsageError{std::string(credentials.status().message())};
    }
    options.credentials = *std::move(credentials);
  }
  options.rpc_timeout = args_.timeout;
  options.retry.total_timeout = args_.timeout;
  return options;
}

int Invocation::Fail(const absl::Status& status) const {
  std::string hint;
  int code = kOtherError;
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      hint =
          absl::StrCat("cannot reach the Idem server at ", args_.server, ": ");
      code = kUnreachable;
      break;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kResourceExhausted:
      hint = "rejected: ";
      code = kRejected;
      break;
    case absl::StatusCode::kFailedPrecondition:
      code = kLeaseLost;
      break;
    case absl::StatusCode::kAlreadyExists:
      code = kAlreadyStored;
      break;
    default:
      break;
  }
  std::cerr << "idemctl: " << hint << status.message() << " ("
            << absl::StatusCodeToString(status.code()) << ")\n";
  return code;
}

// --- JSON output --------------------------------------------------------

bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xc2 && c <= 0xdf) {
      extra = 1;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string Time(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", t, absl::UTCTimeZone());
}

JsonObject& JsonObject::Raw(absl::string_view name, absl::string_view json) {
  parts_.push_back(absl::StrCat(JsonString(name), ":", json));
  return *this;
}

JsonObject& JsonObject::String(absl::string_view name,
                               absl::string_view value) {
  return Raw(name, JsonString(value));
}

JsonObject& JsonObject::Int(absl::string_view name, int64_t value) {
  return Raw(name, absl::StrCat(value));
}

JsonObject& JsonObject::Time(absl::string_view name, absl::Time t) {
  if (t == absl::InfinitePast()) return *this;
  return String(name, tools::Time(t));
}

JsonObject& JsonObject::Bytes(absl::string_view name, absl::string_view value) {
  if (value.empty()) return *this;
  if (IsUtf8(value)) return String(name, value);
  return String(absl::StrCat(name, "_base64"), absl::Base64Escape(value));
}

std::string JsonObject::str() const {
  return absl::StrCat("{", absl::StrJoin(parts_, ","), "}");
}

std::string ResultJson(const client::Result& r) {
  JsonObject metadata;
  for (const auto& [k, v] : r.metadata) metadata.String(k, v);
  JsonObject result;
  result.Int("code", r.code).Bytes("body", r.body);
  if (!metadata.empty()) result.Raw("metadata", metadata.str());
  result.Time("completed_at", r.completed_at);
  return result.str();
}

std::string LeaseJson(uint64_t token, absl::Time expires_at) {
  JsonObject lease;
  if (token != 0) lease.String("token", absl::StrCat(token));
  lease.Time("expires_at", expires_at);
  return lease.str();
}

// --- Human output -------------------------------------------------------

void PrintResult(const client::Result& r) {
  std::cout << "code: " << r.code << "\n";
  if (r.completed_at != absl::InfinitePast()) {
    std::cout << "completed_at: " << Time(r.completed_at) << "\n";
  }
  for (const auto& [k, v] : r.metadata) {
    std::cout << "metadata: " << k << ": " << v << "\n";
  }
  if (IsUtf8(r.body)) {
    std::cout << "body: " << r.body << "\n";
  } else {
    std::cout << "body (base64): " << absl::Base64Escape(r.body) << "\n";
  }
}

}  // namespace idem::tools
