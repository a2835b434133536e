#include "http/http2_memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace pilotfish {
namespace {

void* allocate(size_t n) { return http2_memory()->malloc(n, nullptr); }
void release(void* p) { http2_memory()->free(p, nullptr); }

TEST(Http2Memory, AFreedBlockIsHandedOutAgainForItsSizeClass) {
  void* a = allocate(100);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 16, 0u);
  std::memset(a, 0x5a, 100);
  release(a);
  void* b = allocate(120);  // the same class (up to 128 bytes)
  EXPECT_EQ(b, a);
  release(b);
  void* c = allocate(300);  // another class
  EXPECT_NE(c, a);
  release(c);
}

TEST(Http2Memory, CallocZeroesAReusedBlockAndRefusesAnOverflow) {
  auto* a = static_cast<unsigned char*>(allocate(64));
  std::memset(a, 0xff, 64);
  release(a);
  auto* b = static_cast<unsigned char*>(http2_memory()->calloc(8, 8, nullptr));
  ASSERT_NE(b, nullptr);
  for (int i = 0; i < 64; ++i) ASSERT_EQ(b[i], 0) << i;
  release(b);
  EXPECT_EQ(http2_memory()->calloc(SIZE_MAX / 2, 4, nullptr), nullptr);
}

TEST(Http2Memory, ReallocKeepsTheContentAcrossClassesAndPastTheLargestOne) {
  auto* p = static_cast<char*>(http2_memory()->realloc(nullptr, 10, nullptr));
  std::memcpy(p, "0123456789", 10);
  p = static_cast<char*>(http2_memory()->realloc(p, 30, nullptr));  // room in its class: the same block
  EXPECT_EQ(std::memcmp(p, "0123456789", 10), 0);
  p = static_cast<char*>(http2_memory()->realloc(p, 2000, nullptr));
  EXPECT_EQ(std::memcmp(p, "0123456789", 10), 0);
  std::memset(p + 10, 'x', 1990);
  p = static_cast<char*>(http2_memory()->realloc(p, 1 << 20, nullptr));  // past 2 KiB: malloc's own
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(std::memcmp(p, "0123456789", 10), 0);
  EXPECT_EQ(p[1999], 'x');
  p[(1 << 20) - 1] = 'y';
  release(p);
  release(nullptr);
}

TEST(Http2Memory, ABurstOfBlocksComesBackAndGoesOutAgain) {
  std::vector<void*> blocks;
  for (int i = 0; i < 20000; ++i) {
    blocks.push_back(allocate(static_cast<size_t>(1 + i % 5000)));
    std::memset(blocks.back(), i & 0xff, static_cast<size_t>(1 + i % 5000));
  }
  for (void* b : blocks) release(b);
  blocks.clear();
  for (int i = 0; i < 20000; ++i) blocks.push_back(allocate(static_cast<size_t>(1 + i % 5000)));
  for (void* b : blocks) release(b);
}

}  // namespace
}  // namespace pilotfish
