#include "server/file_watch.h"

#include <gtest/gtest.h>
#include <uv.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace pilotfish {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::trunc) << text; }

// Runs the loop a slice at a time until `done` (or, so that a broken watch fails rather than
// hangs, for at most 10 s). Events are delivered in the order the kernel saw them.
template <typename Done>
void run_until(uv_loop_t* loop, Done done) {
  uv_timer_t slice;
  uv_timer_init(loop, &slice);
  for (int i = 0; i < 1000 && !done(); ++i) {
    uv_timer_start(&slice, [](uv_timer_t* t) { uv_stop(t->loop); }, 10, 0);
    uv_run(loop, UV_RUN_DEFAULT);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&slice), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
}

class FileWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "pf-file-watch-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir = tmpl;
    policy = dir / "policy.yaml";
    write(policy, "version: 1\n");
    uv_loop_init(&loop);
  }
  void TearDown() override {
    uv_run(&loop, UV_RUN_DEFAULT);  // the watch's handles, closed, are freed
    EXPECT_EQ(uv_loop_close(&loop), 0);
    fs::remove_all(dir);
  }
  fs::path dir, policy;
  uv_loop_t loop;
};

TEST_F(FileWatchTest, ANeighboursWritesAreNotLookedAtAndOurChangeIs) {
  int changes = 0;
  FileWatch watch(&loop, "policy", 600'000, [&] { ++changes; });  // no poll within the test
  watch.watch({policy.string()}, stamps_of({policy.string()}));
  uint64_t at_start = watch.compared();
  // Files beside the policy (logs, each its own name, so that the kernel does not fold their
  // events into one); then the policy itself. Its events come after theirs: once its change is
  // seen, the neighbours' 50 writes were delivered too.
  for (int i = 0; i < 50; ++i) std::ofstream(dir / ("request-" + std::to_string(i) + ".log")) << "a line\n";
  write(policy, "version: 1\nservice: changed\n");
  run_until(&loop, [&] { return changes > 0; });
  EXPECT_EQ(changes, 1);
  // The policy's own events (truncate, write) are looked at; not one per neighbour.
  EXPECT_GT(watch.compared(), at_start);
  EXPECT_LT(watch.compared() - at_start, 10u) << "a neighbour's writes made the watch stat the policy";
  watch.seen(watch.read());

  // A Kubernetes volume swaps its `..data` symlink: looked at, though the name is not ours.
  uint64_t before_swap = watch.compared();
  fs::create_symlink(".", dir / "..data_tmp");
  fs::rename(dir / "..data_tmp", dir / "..data");
  run_until(&loop, [&] { return watch.compared() > before_swap; });
  EXPECT_GT(watch.compared(), before_swap);
  EXPECT_EQ(changes, 1);  // the policy's stamp did not change
  watch.close();
}

TEST_F(FileWatchTest, ARenameIntoPlaceIsAChange) {
  int changes = 0;
  FileWatch watch(&loop, "policy", 600'000, [&] { ++changes; });
  watch.watch({policy.string()}, stamps_of({policy.string()}));
  write(dir / ".policy.yaml.tmp", "version: 1\nservice: renamed\n");
  fs::rename(dir / ".policy.yaml.tmp", policy);
  run_until(&loop, [&] { return changes > 0; });
  EXPECT_EQ(changes, 1);
  watch.close();
}

}  // namespace
}  // namespace pilotfish
