#include "storage/finish_group.h"

#include <string>

#include "gtest/gtest.h"

namespace idem::storage {
namespace {

TEST(FinishGroupTest, WithoutAGroupActionsRunAtOnce) {
  std::string ran;
  EXPECT_FALSE(FinishGroup::Open());
  FinishGroup::Defer([&] { ran += "a"; });
  EXPECT_EQ(ran, "a");
}

TEST(FinishGroupTest, ActionsRunInOrderWhenTheOutermostGroupEnds) {
  std::string ran;
  {
    FinishGroup group;
    EXPECT_TRUE(FinishGroup::Open());
    FinishGroup::Defer([&] { ran += "a"; });
    {
      FinishGroup inner;
      FinishGroup::Defer([&] { ran += "b"; });
    }
    EXPECT_EQ(ran, "");  // The inner group ran nothing.
    FinishGroup::Defer([&] { ran += "c"; });
  }
  EXPECT_EQ(ran, "abc");
  EXPECT_FALSE(FinishGroup::Open());
}

TEST(FinishGroupTest, ActionsDeferredByActionsRunInTheSamePass) {
  std::string ran;
  {
    FinishGroup group;
    FinishGroup::Defer([&] {
      ran += "a";
      // A group opened by an action joins the one running.
      FinishGroup nested;
      FinishGroup::Defer([&] { ran += "c"; });
      ran += "b";
    });
  }
  EXPECT_EQ(ran, "abc");
}

}  // namespace
}  // namespace idem::storage
