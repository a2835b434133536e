#pragma once
// One way to notice that files changed, used for the policy, the identity files and JWKS files.
// Each file's folder is watched (an in-place write, and a Kubernetes ConfigMap's or Secret's
// symlink swap, both show there) and each file is stat-polled as a backstop (a folder watch can
// fail, and some file systems send nothing). Events come in bursts (an editor's temporary file, a
// certificate written before its key), so the owner is told once they have been quiet for a
// moment, and only if a file's stamp differs from what the owner says it last read. A folder
// event for a neighbour (a log file, our own policy history) is not looked at: it names a file
// that is not ours.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pilotfish {

// What a file looked like: identity, size and times. Equal stamps: the same content, as far as
// a stat can tell. A missing file has the zero stamp.
struct FileStamp {
  uint64_t ino = 0, size = 0, mtime_sec = 0, mtime_nsec = 0, ctime_sec = 0, ctime_nsec = 0;
  bool operator==(const FileStamp&) const = default;
  static FileStamp of(const std::string& path);
};
using FileStamps = std::vector<FileStamp>;
FileStamps stamps_of(const std::vector<std::string>& paths);

class FileWatch {
 public:
  // `on_change` runs on `loop` after events have been quiet for 150 ms and a file's stamp differs
  // from the one last given to seen(); `poll_ms` is the stat poll's period. `what` names the
  // files in warnings ("policy", "identity").
  FileWatch(uv_loop_t* loop, std::string what, uint64_t poll_ms, std::function<void()> on_change);
  ~FileWatch();
  FileWatch(const FileWatch&) = delete;
  FileWatch& operator=(const FileWatch&) = delete;

  // Watches `paths` (replacing any set watched before); `seen` is what the owner read them as.
  // A difference already there is reported as a change.
  void watch(std::vector<std::string> paths, FileStamps seen);
  // The owner has read the files as `now`.
  void seen(FileStamps now) { seen_ = std::move(now); }
  const FileStamps& seen() const { return seen_; }
  const std::vector<std::string>& paths() const { return paths_; }
  FileStamps read() const { return stamps_of(paths_); }
  // Stops watching: no more calls. Also done by the destructor.
  void close();
  // A folder event or a poll says a file may have changed: compared once events are quiet.
  void maybe_changed();
  // How many times the files were stat'ed and compared with what was seen (a diagnostic).
  uint64_t compared() const { return compared_; }

 private:
  static void on_quiet(uv_timer_t* t);
  void close_handles();

  uv_loop_t* loop_;
  std::string what_;
  uint64_t poll_ms_;
  std::function<void()> on_change_;
  std::vector<std::string> paths_;
  FileStamps seen_;
  std::vector<uv_handle_t*> handles_;  // fs polls and fs events, freed when closed
  uv_timer_t* quiet_ = nullptr;        // freed when closed
  uint64_t compared_ = 0;
};

}  // namespace pilotfish
