#include "storage/finish_group.h"

#include <utility>

namespace idem::storage {
namespace {

// The deferred actions of this thread's outermost group; null: none open.
thread_local std::vector<std::function<void()>>* current = nullptr;

}  // namespace

FinishGroup::FinishGroup() : outermost_(current == nullptr) {
  if (outermost_) current = &deferred_;
}

FinishGroup::~FinishGroup() {
  if (!outermost_) return;
  // By index: an action may defer more, which run in this pass too.
  for (size_t i = 0; i < deferred_.size(); ++i) {
    std::function<void()> action = std::move(deferred_[i]);
    action();
  }
  current = nullptr;
}

bool FinishGroup::Open() { return current != nullptr; }

void FinishGroup::Defer(std::function<void()> action) {
  if (current == nullptr) {
    action();
    return;
  }
  current->push_back(std::move(action));
}

}  // namespace idem::storage
