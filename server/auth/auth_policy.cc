#include "server/auth/auth_policy.h"

#include <openssl/crypto.h>

#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/ops/read_file.h"
#include "yaml-cpp/yaml.h"

namespace idem::server {
namespace {

absl::Status PolicyError(const YAML::Node& node, absl::string_view what) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return absl::InvalidArgumentError(std::string(what));
  return absl::InvalidArgumentError(
      absl::StrCat("line ", mark.line + 1, ": ", what));
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Access Access::Unrestricted() {
  Access access;
  access.prefixes_.emplace_back("");
  access.admin_ = true;
  return access;
}

bool Access::MayUseNamespace(absl::string_view name_space) const {
  for (const std::string& exact : exact_) {
    if (exact == name_space) return true;
  }
  for (const std::string& prefix : prefixes_) {
    if (absl::StartsWith(name_space, prefix)) return true;
  }
  return false;
}

absl::StatusOr<AuthPolicy> AuthPolicy::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path, "policy");
  if (!text.ok()) return text.status();
  absl::StatusOr<AuthPolicy> policy = Parse(*text);
  if (!policy.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", policy.status().message()));
  }
  return policy;
}

absl::StatusOr<AuthPolicy> AuthPolicy::Parse(absl::string_view yaml) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not valid YAML: ", e.what()));
  }
  if (!root.IsMap() || !root["principals"] ||
      !root["principals"].IsSequence()) {
    return absl::InvalidArgumentError(
        "the policy must be a map with a list under 'principals'");
  }
  for (const auto& entry : root) {
    if (entry.first.as<std::string>() != "principals") {
      return PolicyError(
          entry.first,
          absl::StrCat("unknown setting '", entry.first.as<std::string>(),
                       "' (only 'principals')"));
    }
  }
  AuthPolicy policy;
  std::set<std::string> names;
  try {
    for (const YAML::Node& node : root["principals"]) {
      if (!node.IsMap()) return PolicyError(node, "a principal must be a map");
      Principal principal;
      bool has_match = false;
      for (const auto& field : node) {
        const std::string key = field.first.as<std::string>();
        const YAML::Node& value = field.second;
        if (key == "name") {
          principal.name = value.as<std::string>();
        } else if (key == "admin") {
          principal.admin = value.as<bool>();
        } else if (key == "namespaces") {
          if (!value.IsSequence()) {
            return PolicyError(value, "'namespaces' must be a list");
          }
          for (const YAML::Node& pattern : value) {
            const std::string p = pattern.as<std::string>();
            const size_t star = p.find('*');
            if (p.empty() || (star != std::string::npos &&
                              (star != p.size() - 1 ||
                               (p.size() > 1 && p[p.size() - 2] != '/')))) {
              return PolicyError(
                  pattern,
                  absl::StrCat("namespace pattern '", p,
                               "': use an exact name, 'prefix/*' or '*'"));
            }
            principal.namespaces.push_back(p);
          }
        } else if (key == "match") {
          if (!value.IsMap() || value.size() != 1) {
            return PolicyError(
                value,
                "'match' must hold exactly one of uri_san, dns_san, "
                "common_name, token_sha256");
          }
          const std::string kind = value.begin()->first.as<std::string>();
          principal.value = value.begin()->second.as<std::string>();
          if (kind == "uri_san") {
            principal.kind = MatchKind::kUriSan;
          } else if (kind == "dns_san") {
            principal.kind = MatchKind::kDnsSan;
          } else if (kind == "common_name") {
            principal.kind = MatchKind::kCommonName;
          } else if (kind == "token_sha256") {
            principal.kind = MatchKind::kTokenSha256;
            if (principal.value.size() != 64 || !IsLowerHex(principal.value)) {
              return PolicyError(value,
                                 "token_sha256 must be 64 lowercase hex "
                                 "digits (sha256sum of the token)");
            }
            principal.value = absl::HexStringToBytes(principal.value);
          } else {
            return PolicyError(value,
                               absl::StrCat("unknown match '", kind,
                                            "' (uri_san, dns_san, common_name "
                                            "or token_sha256)"));
          }
          if (principal.value.empty()) {
            return PolicyError(value, "a match value must not be empty");
          }
          has_match = true;
        } else {
          return PolicyError(
              field.first, absl::StrCat("unknown principal setting '", key,
                                        "' (name, match, namespaces, admin)"));
        }
      }
      if (principal.name.empty()) {
        return PolicyError(node, "a principal needs a 'name'");
      }
      if (!names.insert(principal.name).second) {
        return PolicyError(node, absl::StrCat("principal '", principal.name,
                                              "' is defined twice"));
      }
      if (!has_match) {
        return PolicyError(node, absl::StrCat("principal '", principal.name,
                                              "' needs a 'match'"));
      }
      policy.principals_.push_back(std::move(principal));
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", e.mark.line + 1, ": ", e.msg));
  }
  if (policy.principals_.empty()) {
    return absl::InvalidArgumentError(
        "the policy lists no principals: every call would be refused");
  }
  return policy;
}

bool AuthPolicy::Matches(const Principal& principal,
                         const CallerIdentity& caller) {
  auto any_equal = [&](const std::vector<std::string>& names) {
    for (const std::string& name : names) {
      if (name == principal.value) return true;
    }
    return false;
  };
  switch (principal.kind) {
    case MatchKind::kUriSan:
      return any_equal(caller.uri_sans);
    case MatchKind::kDnsSan:
      return any_equal(caller.dns_sans);
    case MatchKind::kCommonName:
      return caller.has_certificate && caller.common_name == principal.value;
    case MatchKind::kTokenSha256:
      return !caller.token_sha256.empty() &&
             ConstantTimeEquals(caller.token_sha256, principal.value);
  }
  return false;
}

Access AuthPolicy::Resolve(const CallerIdentity& caller) const {
  Access access;
  std::vector<std::string> matched;
  for (const Principal& principal : principals_) {
    if (!Matches(principal, caller)) continue;
    matched.push_back(principal.name);
    access.admin_ = access.admin_ || principal.admin;
    for (const std::string& pattern : principal.namespaces) {
      if (pattern == "*") {
        access.prefixes_.emplace_back("");
      } else if (absl::EndsWith(pattern, "/*")) {
        access.prefixes_.push_back(pattern.substr(0, pattern.size() - 1));
      } else {
        access.exact_.push_back(pattern);
      }
    }
  }
  access.principals_ = absl::StrJoin(matched, ",");
  return access;
}

bool AuthPolicy::uses_tokens() const {
  for (const Principal& p : principals_) {
    if (p.kind == MatchKind::kTokenSha256) return true;
  }
  return false;
}

bool AuthPolicy::uses_certificates() const {
  for (const Principal& p : principals_) {
    if (p.kind != MatchKind::kTokenSha256) return true;
  }
  return false;
}

}  // namespace idem::server
