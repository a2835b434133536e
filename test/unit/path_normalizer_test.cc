#include "pilotfish/path_normalizer.h"

#include <gtest/gtest.h>

using pilotfish::normalize_target;

namespace {
std::string path_of(const char* target) {
  auto n = normalize_target(target);
  return n ? n->path + n->query : std::string("<invalid>");
}
}  // namespace

TEST(PathNormalizer, KeepsPlainPaths) {
  EXPECT_EQ(path_of("/"), "/");
  EXPECT_EQ(path_of("/users/42"), "/users/42");
  EXPECT_EQ(path_of("/users/42/"), "/users/42/");
  EXPECT_EQ(path_of("/a?x=1&y=/../z"), "/a?x=1&y=/../z");  // the query is not a path
}

TEST(PathNormalizer, RemovesDotSegments) {
  EXPECT_EQ(path_of("/public/../admin"), "/admin");
  EXPECT_EQ(path_of("/a/./b"), "/a/b");
  EXPECT_EQ(path_of("/a/b/.."), "/a/");
  EXPECT_EQ(path_of("/../../etc/passwd"), "/etc/passwd");
  EXPECT_EQ(path_of("/a/.."), "/");
  EXPECT_EQ(path_of("/."), "/");
}

TEST(PathNormalizer, DecodesUnreservedBeforeDotSegments) {
  EXPECT_EQ(path_of("/%61dmin"), "/admin");
  EXPECT_EQ(path_of("/public/%2e%2e/admin"), "/admin");
  EXPECT_EQ(path_of("/public/%2E%2E/admin"), "/admin");
  EXPECT_EQ(path_of("/a%7eb"), "/a~b");
}

TEST(PathNormalizer, KeepsReservedEscapesUpperCased) {
  EXPECT_EQ(path_of("/a%2fb"), "/a%2Fb");  // an encoded slash is data, not a separator
  EXPECT_EQ(path_of("/a%20b"), "/a%20b");
  EXPECT_EQ(path_of("/%00"), "/%00");
}

TEST(PathNormalizer, MergesRepeatedSlashes) {
  EXPECT_EQ(path_of("//admin"), "/admin");
  EXPECT_EQ(path_of("/a///b//"), "/a/b/");
}

TEST(PathNormalizer, RejectsWhatIsNotOriginForm) {
  EXPECT_EQ(path_of(""), "<invalid>");
  EXPECT_EQ(path_of("admin"), "<invalid>");
  EXPECT_EQ(path_of("http://example.com/admin"), "<invalid>");
  EXPECT_EQ(path_of("/a%zz"), "<invalid>");
  EXPECT_EQ(path_of("/a%2"), "<invalid>");
  EXPECT_EQ(path_of("/a%"), "<invalid>");
  EXPECT_EQ(path_of("/a#frag"), "<invalid>");
}
