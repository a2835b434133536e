#include "pilotfish/path_normalizer.h"

#include <gtest/gtest.h>

using pilotfish::normalize_target;

namespace {
std::string path_of(const char* target, bool allow_ambiguous = false) {
  auto n = normalize_target(target, allow_ambiguous);
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
  EXPECT_EQ(path_of("/a%2fb", true), "/a%2Fb");  // allowed: an encoded slash is data, not a separator
  EXPECT_EQ(path_of("/a%20b"), "/a%20b");
  EXPECT_EQ(path_of("/%00"), "/%00");
  EXPECT_EQ(path_of("/a%3bb"), "/a%3Bb");
}

TEST(PathNormalizer, RefusesPathsThatServersResolveDifferently) {
  // Each of these reaches /admin on some server (Tomcat and Spring drop ";..." before
  // resolving, others decode %2F or take '\' for '/'), while the matcher would see /public.
  for (const char* target : {"/public/..;/admin", "/public/..;x=1/admin", "/public/.;/admin", "/public%2F..%2Fadmin",
                             "/public%2fadmin", "/public\\..\\admin", "/public%5c..%5cadmin", "/public/%2e%2e;/admin",
                             "/public/..%3b/admin", "/public/..%3B/admin"})
    EXPECT_EQ(path_of(target), "<invalid>") << target;
  // A listener with allow_ambiguous_paths forwards them as they are normalised today.
  EXPECT_EQ(path_of("/public%2Fadmin", true), "/public%2Fadmin");
  EXPECT_EQ(path_of("/public\\admin", true), "/public\\admin");
  EXPECT_EQ(path_of("/public/..;/admin", true), "/public/..;/admin");
  // ';' elsewhere is an ordinary character.
  EXPECT_EQ(path_of("/a;b/c"), "/a;b/c");
  EXPECT_EQ(path_of("/a/..b;c/d"), "/a/..b;c/d");
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
