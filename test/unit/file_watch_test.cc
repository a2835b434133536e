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

// Runs the loop for `ms` milliseconds: the folder's events are delivered, the quiet timer fires.
void run_for(uv_loop_t* loop, uint64_t ms) {
  uv_timer_t stop;
  uv_timer_init(loop, &stop);
  uv_timer_start(&stop, [](uv_timer_t* t) { uv_stop(t->loop); }, ms, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close(reinterpret_cast<uv_handle_t*>(&stop), nullptr);
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
  {
    FileWatch watch(&loop, "policy", 600'000, [&] { ++changes; });  // no poll within the test
    watch.watch({policy.string()}, stamps_of({policy.string()}));
    uint64_t at_start = watch.compared();
    // A log file beside the policy, written on every request.
    for (int i = 0; i < 50; ++i) {
      std::ofstream(dir / "requests.log", std::ios::app) << "a line\n";
      run_for(&loop, 2);
    }
    run_for(&loop, 300);
    EXPECT_EQ(watch.compared(), at_start) << "a neighbour's writes made the watch stat the policy";
    EXPECT_EQ(changes, 0);

    write(policy, "version: 1\nservice: changed\n");
    run_for(&loop, 400);
    EXPECT_GT(watch.compared(), at_start);
    EXPECT_EQ(changes, 1);
    watch.seen(watch.read());

    // A Kubernetes volume swaps its `..data` symlink: looked at, though the name is not ours.
    uint64_t before_swap = watch.compared();
    fs::create_symlink(".", dir / "..data_tmp");
    fs::rename(dir / "..data_tmp", dir / "..data");
    run_for(&loop, 300);
    EXPECT_GT(watch.compared(), before_swap);
    EXPECT_EQ(changes, 1);  // the policy's stamp did not change
  }
}

TEST_F(FileWatchTest, ARenameIntoPlaceIsAChange) {
  int changes = 0;
  FileWatch watch(&loop, "policy", 600'000, [&] { ++changes; });
  watch.watch({policy.string()}, stamps_of({policy.string()}));
  write(dir / ".policy.yaml.tmp", "version: 1\nservice: renamed\n");
  fs::rename(dir / ".policy.yaml.tmp", policy);
  run_for(&loop, 400);
  EXPECT_EQ(changes, 1);
  watch.close();
}

}  // namespace
}  // namespace pilotfish
