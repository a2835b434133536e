#include "net/stream.h"

#include <gtest/gtest.h>

#include "net/descriptor_budget.h"

namespace pilotfish {
namespace {

TEST(UvBufs, ABufferPastFourGibibytesIsDescribedWhole) {
  // Only the pointers are computed: no byte is touched, so no memory is needed.
  char* base = reinterpret_cast<char*>(uintptr_t{1} << 40);
  size_t size = (size_t{5} << 30) + 7;  // 5 GiB and 7 bytes: once truncated to 1 GiB + 7
  UvBufs bufs(base, size);
  ASSERT_EQ(bufs.count(), 6u);
  size_t total = 0;
  for (unsigned i = 0; i < bufs.count(); ++i) {
    EXPECT_EQ(bufs.data()[i].base, base + total);
    total += bufs.data()[i].len;
  }
  EXPECT_EQ(total, size);
  UvBufs small(base, 10);
  ASSERT_EQ(small.count(), 1u);
  EXPECT_EQ(small.data()[0].len, 10u);
}

TEST(DescriptorBudget, ClientsTakeHalfAndLeaveTheRestForUpstreams) {
  DescriptorBudget b;
  b.set_limit_for_test(10);
  int clients = 0;
  while (b.try_take_downstream()) ++clients;
  EXPECT_EQ(clients, 5);
  int upstreams = 0;
  while (b.try_take()) ++upstreams;
  EXPECT_EQ(upstreams, 5);
  EXPECT_EQ(b.in_use(), 10);
  b.give_back_downstream();
  EXPECT_FALSE(b.try_take_downstream() && b.try_take());  // one freed, one taken: full again
  b.give_back();
  EXPECT_TRUE(b.try_take());
}

TEST(DescriptorBudget, LocalFailuresAreNotThePeers) {
  for (int s : {UV_EMFILE, UV_ENFILE, UV_EADDRNOTAVAIL, UV_ENOBUFS, UV_ENOMEM}) EXPECT_TRUE(is_local_failure(s));
  for (int s : {UV_ECONNREFUSED, UV_ETIMEDOUT, UV_ECONNRESET, UV_EHOSTUNREACH}) EXPECT_FALSE(is_local_failure(s));
  EXPECT_EQ(admin_connection_cap(0), 64u);
  EXPECT_EQ(admin_connection_cap(256), 8u);
  EXPECT_EQ(admin_connection_cap(64), 4u);
  EXPECT_EQ(admin_connection_cap(1 << 20), 64u);
}

}  // namespace
}  // namespace pilotfish
