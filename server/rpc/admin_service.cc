#include "server/rpc/admin_service.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/ops/log.h"
#include "server/rpc/proto_conversions.h"
#include "server/rpc/request_validation.h"
#include "server/rpc/unary_call.h"

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
  return Serve(
      context, observer_, "Admin.Delete", [&] { return Admit(*context); },
      [&] {
        return ValidateAdminAction(request->namespace_(), request->key(),
                                   request->reason());
      },
      [this, response, peer = authorizer_->Peer(*context)](
          std::string principal, AdminAction action, UnaryCall call) {
        const storage::KeyId id = action.id;
        store_->DeleteAsync(
            id, [this, response, call, peer, principal = std::move(principal),
                 action = std::move(action)](absl::StatusOr<bool> existed) {
              if (existed.ok()) {
                response->set_existed(*existed);
                Log(LogLevel::kWarning, "admin_delete",
                    {{"ns", action.id.name_space},
                     {"key", action.id.key},
                     {"existed", *existed ? "true" : "false"},
                     {"reason", action.reason},
                     {"peer", peer},
                     {"principal", principal}});
                waits_->Notify(WaitKey(action.id));  // Waiters may acquire it.
              }
              call.Answer(existed.status());
            });
      });
}

grpc::ServerUnaryReactor* AdminService::ForceRelease(
    grpc::CallbackServerContext* context,
    const v1::ForceReleaseRequest* request,
    v1::ForceReleaseResponse* response) {
  return Serve(
      context, observer_, "Admin.ForceRelease", [&] { return Admit(*context); },
      [&] {
        return ValidateAdminAction(request->namespace_(), request->key(),
                                   request->reason());
      },
      [this, response, peer = authorizer_->Peer(*context)](
          std::string principal, AdminAction action, UnaryCall call) {
        const storage::KeyId id = action.id;
        store_->ForceReleaseAsync(
            id, [this, response, call, peer, principal = std::move(principal),
                 action = std::move(action)](absl::StatusOr<uint64_t> token) {
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
              call.Answer(token.status());
            });
      });
}

grpc::ServerUnaryReactor* AdminService::List(
    grpc::CallbackServerContext* context, const v1::ListRequest* request,
    v1::ListResponse* response) {
  return Serve(
      context, observer_, "Admin.List", [&] { return Admit(*context); },
      [&] { return ValidateList(*request); },
      [this, response](const std::string& /*principal*/,
                       storage::ListQuery query, UnaryCall call) {
        // A scan may read many records: not on gRPC's threads.
        executor_->Submit([this, response, call, query = std::move(query)] {
          absl::StatusOr<storage::ListPage> page = store_->List(query);
          if (!page.ok()) {
            call.Answer(page.status());
            return;
          }
          for (const storage::KeyListing& listed : page->keys) {
            v1::KeySummary* summary = response->add_keys();
            const storage::KeySnapshot& s = listed.snapshot;
            summary->set_key(listed.key);
            if (s.state == storage::KeyState::kInProgress) {
              summary->set_state(v1::LookupResponse::STATE_IN_PROGRESS);
              SetTimestamp(s.lease_expires_at,
                           summary->mutable_lease_expires_at());
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
          call.Answer(absl::OkStatus());
        });
      });
}

grpc::ServerUnaryReactor* AdminService::Stats(
    grpc::CallbackServerContext* context, const v1::StatsRequest* request,
    v1::StatsResponse* response) {
  return Serve(
      context, observer_, "Admin.Stats", [&] { return Admit(*context); },
      [&] { return ValidateStats(*request); },
      [this, response](const std::string& /*principal*/, std::string name_space,
                       UnaryCall call) {
        executor_->Submit([this, response, call,
                           name_space = std::move(name_space)] {
          absl::StatusOr<std::map<std::string, storage::StateCounts>> counts =
              store_->CountKeys(name_space);
          if (!counts.ok()) {
            call.Answer(counts.status());
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
          if (totals.expired_backlog.has_value()) {
            response->set_expired_backlog(*totals.expired_backlog);
          }
          call.Answer(absl::OkStatus());
        });
      });
}

}  // namespace idem::server
