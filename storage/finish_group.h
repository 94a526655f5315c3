// Lets the callbacks a store runs for many operations at once (the outcomes
// of one committed batch) put work off until the last of them has run. An
// RPC server then sends one message for all the answers a stream got from
// the batch, instead of one for the first answer and one for the rest.
//
//   {
//     FinishGroup group;                  // on the thread that finishes
//     for (auto& op : ops) op.Finish();   // callbacks may FinishGroup::Defer
//   }                                     // deferred actions run here
//
// Groups are per thread; a group opened inside another adds nothing (its
// deferred actions run when the outermost group ends). Actions deferred
// while the group runs its actions run in the same pass.
#ifndef IDEM_STORAGE_FINISH_GROUP_H_
#define IDEM_STORAGE_FINISH_GROUP_H_

#include <functional>
#include <vector>

namespace idem::storage {

class FinishGroup {
 public:
  FinishGroup();
  ~FinishGroup();
  FinishGroup(const FinishGroup&) = delete;
  FinishGroup& operator=(const FinishGroup&) = delete;

  // Whether a group is open on this thread.
  static bool Open();
  // Runs `action` when this thread's outermost group ends; now if none is
  // open.
  static void Defer(std::function<void()> action);

 private:
  std::vector<std::function<void()>> deferred_;
  bool outermost_;
};

}  // namespace idem::storage

#endif  // IDEM_STORAGE_FINISH_GROUP_H_
