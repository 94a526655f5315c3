// The operator commands of idem.v1.Admin.
#include <iostream>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "idem/admin_client.h"
#include "tools/idemctl/idemctl.h"

namespace idem::tools {
namespace {

// --reason=TEXT, required: the server logs it.
std::string Reason(const Invocation& in) {
  std::string reason = in.Flag("reason").value_or("");
  if (reason.empty()) {
    throw UsageError{
        absl::StrCat(in.args().command, " needs --reason=TEXT (it is logged)")};
  }
  return reason;
}

std::string KeySummaryJson(const client::KeySummary& k) {
  JsonObject out;
  out.String("key", k.key)
      .String("state", absl::StrCat("STATE_", client::KeyStateName(k.state)));
  if (k.state == client::KeyState::kInProgress) {
    out.Time("lease_expires_at", k.lease_expires_at);
    if (k.lease_lapsed) out.Raw("lease_lapsed", "true");
  }
  out.Time("created_at", k.created_at).Time("expires_at", k.expires_at);
  out.Int("attempt", k.attempt);
  if (k.state == client::KeyState::kCompleted) {
    out.Int("result_code", k.result_code);
  }
  return out.str();
}

int List(const Invocation& in) {
  client::ListOptions list;
  if (std::optional<std::string> state = in.Flag("state")) {
    if (*state == "in_progress") {
      list.state = client::KeyState::kInProgress;
    } else if (*state == "completed") {
      list.state = client::KeyState::kCompleted;
    } else {
      throw UsageError{"--state must be in_progress or completed"};
    }
  }
  list.lease_lapsed = in.Flag("lapsed").has_value();
  if (std::optional<std::string> size = in.Flag("page-size")) {
    if (!absl::SimpleAtoi(*size, &list.page_size) || list.page_size < 1 ||
        list.page_size > 1000) {
      throw UsageError{"--page-size must be 1 to 1000"};
    }
  }
  list.page_token = in.Flag("page-token").value_or("");
  const bool all = in.Flag("all").has_value();

  int exit = kOk;
  std::unique_ptr<client::AdminClient> admin =
      Connect<client::AdminClient>(in, in.ClientOptions(), &exit);
  if (admin == nullptr) return exit;
  std::vector<std::string> json_keys;
  std::string next;
  do {
    absl::StatusOr<client::KeyPage> page = admin->List(in.ns(), list);
    if (!page.ok()) return in.Fail(page.status());
    for (const client::KeySummary& k : page->keys) {
      if (in.json()) {
        json_keys.push_back(KeySummaryJson(k));
        continue;
      }
      std::cout << k.key << "\t" << client::KeyStateName(k.state);
      if (k.state == client::KeyState::kInProgress) {
        std::cout << "\tlease_expires_at=" << Time(k.lease_expires_at)
                  << (k.lease_lapsed ? " (lapsed)" : "");
      } else {
        std::cout << "\tcode=" << k.result_code;
      }
      std::cout << "\tattempt=" << k.attempt << "\n";
    }
    next = page->next_page_token;
    list.page_token = next;
  } while (all && !next.empty());
  if (in.json()) {
    JsonObject out;
    out.Raw("keys", absl::StrCat("[", absl::StrJoin(json_keys, ","), "]"));
    if (!next.empty()) out.String("next_page_token", next);
    std::cout << out.str() << "\n";
  } else if (!next.empty()) {
    std::cout << "next_page_token: " << next << "\n";
  }
  return kOk;
}

int Delete(const Invocation& in) {
  const std::string reason = Reason(in);
  int exit = kOk;
  std::unique_ptr<client::AdminClient> admin =
      Connect<client::AdminClient>(in, in.ClientOptions(), &exit);
  if (admin == nullptr) return exit;
  absl::StatusOr<bool> existed = admin->Delete(in.ns(), in.key(), reason);
  if (!existed.ok()) return in.Fail(existed.status());
  if (in.json()) {
    std::cout << "{\"existed\":" << (*existed ? "true" : "false") << "}\n";
  } else {
    std::cout << (*existed ? "DELETED" : "NOT_FOUND (nothing to delete)")
              << "\n";
  }
  return kOk;
}

int ForceRelease(const Invocation& in) {
  const std::string reason = Reason(in);
  int exit = kOk;
  std::unique_ptr<client::AdminClient> admin =
      Connect<client::AdminClient>(in, in.ClientOptions(), &exit);
  if (admin == nullptr) return exit;
  absl::StatusOr<uint64_t> token =
      admin->ForceRelease(in.ns(), in.key(), reason);
  if (!token.ok()) return in.Fail(token.status());
  if (in.json()) {
    std::cout
        << JsonObject().String("fencing_token", absl::StrCat(*token)).str()
        << "\n";
  } else {
    std::cout << "RELEASED fencing_token=" << *token << "\n";
  }
  return kOk;
}

int Stats(const Invocation& in) {
  int exit = kOk;
  std::unique_ptr<client::AdminClient> admin =
      Connect<client::AdminClient>(in, in.ClientOptions(), &exit);
  if (admin == nullptr) return exit;
  absl::StatusOr<client::StoreReport> report =
      admin->Stats(in.args().positional.empty() ? "" : in.ns());
  if (!report.ok()) return in.Fail(report.status());
  if (in.json()) {
    std::vector<std::string> namespaces;
    for (const client::NamespaceCounts& n : report->namespaces) {
      namespaces.push_back(
          JsonObject()
              .String("namespace", n.name_space)
              .String("in_progress", absl::StrCat(n.in_progress))
              .String("lease_lapsed", absl::StrCat(n.lease_lapsed))
              .String("completed", absl::StrCat(n.completed))
              .str());
    }
    JsonObject json;
    json.Raw("namespaces",
             absl::StrCat("[", absl::StrJoin(namespaces, ","), "]"))
        .String("estimated_keys", absl::StrCat(report->estimated_keys))
        .String("disk_bytes", absl::StrCat(report->disk_bytes))
        .String("expired_dropped", absl::StrCat(report->expired_dropped));
    if (report->expired_backlog.has_value()) {
      json.String("expired_backlog", absl::StrCat(*report->expired_backlog));
    }
    std::cout << json.str() << "\n";
    return kOk;
  }
  std::cout << "namespace\tin_progress\tlease_lapsed\tcompleted\n";
  for (const client::NamespaceCounts& n : report->namespaces) {
    std::cout << n.name_space << "\t" << n.in_progress << "\t" << n.lease_lapsed
              << "\t" << n.completed << "\n";
  }
  std::cout << "estimated_keys: " << report->estimated_keys << "\n"
            << "disk_bytes: " << report->disk_bytes << "\n"
            << "expired_dropped: " << report->expired_dropped << "\n";
  if (report->expired_backlog.has_value()) {
    std::cout << "expired_backlog: " << *report->expired_backlog << "\n";
  }
  return kOk;
}

const CommandSpec kCommands[] = {
    {"list",
     Operands::kNamespace,
     "NAMESPACE [--state=in_progress|completed] [--lapsed]\n"
     "[--page-size=N] [--page-token=T] [--all]",
     "Lists keys in key order, one page (default 100) at a time; --all\n"
     "follows every page. --lapsed: in-progress keys whose lease lapsed\n"
     "(stuck work).\n",
     {"state", "lapsed", "page-size", "page-token", "all"},
     List},
    {"delete",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --reason=TEXT",
     "Forgets the key (result, lease, history). The reason is logged.\n",
     {"reason"},
     Delete},
    {"force-release",
     Operands::kNamespaceKey,
     "NAMESPACE KEY --reason=TEXT",
     "Frees a stuck in-progress key and fences its holder out. The reason\n"
     "is logged.\n",
     {"reason"},
     ForceRelease},
    {"stats",
     Operands::kOptionalNamespace,
     "[NAMESPACE]",
     "Counts keys per state and namespace (reads every record), and disk\n"
     "use.\n",
     {},
     Stats},
};

}  // namespace

CommandGroup AdminCommands() {
  return {"Operator commands (idem.v1.Admin):", kCommands};
}

}  // namespace idem::tools
