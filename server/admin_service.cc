#include "server/admin_service.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/proto_conversions.h"
#include "server/request_validation.h"

namespace idem::server {
AdminService::AdminService(storage::Store* store, WaitQueue* waits,
                           BlockingExecutor* executor, RpcObserver* observer,
                           const Authorizer* authorizer)
    : store_(store),
      waits_(waits),
      executor_(executor),
      observer_(observer),
      authorizer_(authorizer) {}

absl::StatusOr<std::string> AdminService::Admit(
    const grpc::CallbackServerContext& context) const {
  absl::StatusOr<Access> access = authorizer_->Authenticate(context);
  if (!access.ok()) return access.status();
  if (absl::Status admin = authorizer_->CheckAdmin(*access); !admin.ok()) {
    return admin;
  }
  return access->principals();
}

grpc::ServerUnaryReactor* AdminService::Delete(
    grpc::CallbackServerContext* context, const v1::DeleteRequest* request,
    v1::DeleteResponse* response) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> principal = Admit(*context);
  if (!principal.ok()) {
    return observer_->Answer(context, "Admin.Delete", start,
                             principal.status());
  }
  absl::StatusOr<AdminAction> action = ValidateAdminAction(
      request->namespace_(), request->key(), request->reason());
  if (!action.ok())
    return observer_->Answer(context, "Admin.Delete", start, action.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const storage::KeyId id = action->id;
  store_->DeleteAsync(
      id, [this, reactor, start, response, peer = context->peer(),
           principal = *principal,
           action = *std::move(action)](absl::StatusOr<bool> existed) {
        if (existed.ok()) {
          response->set_existed(*existed);
          Log(LogLevel::kWarning, "admin_delete",
              {{"ns", action.id.name_space},
               {"key", action.id.key},
               {"existed", *existed ? "true" : "false"},
               {"reason", action.reason},
               {"peer", peer},
               {"principal", principal}});
          waits_->Notify(WaitKey(action.id));  // Waiters may now acquire it.
        }
        observer_->Finish(reactor, "Admin.Delete", start, existed.status());
      });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::ForceRelease(
    grpc::CallbackServerContext* context,
    const v1::ForceReleaseRequest* request,
    v1::ForceReleaseResponse* response) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> principal = Admit(*context);
  if (!principal.ok()) {
    return observer_->Answer(context, "Admin.ForceRelease", start,
                             principal.status());
  }
  absl::StatusOr<AdminAction> action = ValidateAdminAction(
      request->namespace_(), request->key(), request->reason());
  if (!action.ok()) {
    return observer_->Answer(context, "Admin.ForceRelease", start,
                             action.status());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const storage::KeyId id = action->id;
  store_->ForceReleaseAsync(
      id, [this, reactor, start, response, peer = context->peer(),
           principal = *principal,
           action = *std::move(action)](absl::StatusOr<uint64_t> token) {
        if (token.ok()) {
          response->set_fencing_token(*token);
          Log(LogLevel::kWarning, "admin_force_release",
              {{"ns", action.id.name_space},
               {"key", action.id.key},
               {"fencing_token", absl::StrCat(*token)},
               {"reason", action.reason},
               {"peer", peer},
               {"principal", principal}});
          waits_->Notify(WaitKey(action.id));
        }
        observer_->Finish(reactor, "Admin.ForceRelease", start, token.status());
      });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::List(
    grpc::CallbackServerContext* context, const v1::ListRequest* request,
    v1::ListResponse* response) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> principal = Admit(*context);
  if (!principal.ok()) {
    return observer_->Answer(context, "Admin.List", start, principal.status());
  }
  absl::StatusOr<storage::ListQuery> query = ValidateList(*request);
  if (!query.ok())
    return observer_->Answer(context, "Admin.List", start, query.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // A scan may read many records: not on gRPC's threads.
  executor_->Submit([this, reactor, start, response,
                     query = *std::move(query)] {
    absl::StatusOr<storage::ListPage> page = store_->List(query);
    if (!page.ok()) {
      observer_->Finish(reactor, "Admin.List", start, page.status());
      return;
    }
    for (const storage::KeyListing& listed : page->keys) {
      v1::KeySummary* summary = response->add_keys();
      const storage::KeySnapshot& s = listed.snapshot;
      summary->set_key(listed.key);
      if (s.state == storage::KeyState::kInProgress) {
        summary->set_state(v1::LookupResponse::STATE_IN_PROGRESS);
        SetTimestamp(s.lease_expires_at, summary->mutable_lease_expires_at());
        summary->set_lease_lapsed(s.lease_lapsed);
      } else {
        summary->set_state(v1::LookupResponse::STATE_COMPLETED);
        summary->set_result_code(s.result.code);
      }
      SetTimestamp(s.created_at, summary->mutable_created_at());
      SetTimestamp(s.expires_at, summary->mutable_expires_at());
      summary->set_attempt(s.attempt);
    }
    response->set_next_page_token(page->next_page_token);
    observer_->Finish(reactor, "Admin.List", start, absl::OkStatus());
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Stats(
    grpc::CallbackServerContext* context, const v1::StatsRequest* request,
    v1::StatsResponse* response) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> principal = Admit(*context);
  if (!principal.ok()) {
    return observer_->Answer(context, "Admin.Stats", start, principal.status());
  }
  absl::StatusOr<std::string> name_space = ValidateStats(*request);
  if (!name_space.ok()) {
    return observer_->Answer(context, "Admin.Stats", start,
                             name_space.status());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor_->Submit(
      [this, reactor, start, response, name_space = *std::move(name_space)] {
        absl::StatusOr<std::map<std::string, storage::StateCounts>> counts =
            store_->CountKeys(name_space);
        if (!counts.ok()) {
          observer_->Finish(reactor, "Admin.Stats", start, counts.status());
          return;
        }
        for (const auto& [ns, c] : *counts) {
          v1::NamespaceStats* stats = response->add_namespaces();
          stats->set_namespace_(ns);
          stats->set_in_progress(c.in_progress);
          stats->set_lease_lapsed(c.lease_lapsed);
          stats->set_completed(c.completed);
        }
        const storage::StoreStats totals = store_->Stats();
        response->set_estimated_keys(totals.estimated_keys);
        response->set_disk_bytes(totals.disk_bytes);
        response->set_expired_dropped(totals.expired_dropped);
        observer_->Finish(reactor, "Admin.Stats", start, absl::OkStatus());
      });
  return reactor;
}

}  // namespace idem::server
