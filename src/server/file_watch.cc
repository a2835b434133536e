#include "server/file_watch.h"

#include <filesystem>
#include <map>

#include "log/logger.h"

namespace pilotfish {

namespace {

constexpr uint64_t kQuietMs = 150;

// One watched folder: its event handle, and the names in it that are ours.
struct FolderWatch {
  uv_fs_event_t handle;
  FileWatch* owner;
  std::vector<std::string> names;

  // An event about `name` may be a change of ours: one of our files, or (Kubernetes) the swap of
  // a ConfigMap's or Secret's `..data` symlink. Anything else in the folder (a log file written
  // on every request) is nobody's business here: not even a stat is spent on it.
  bool concerns(const char* name) const {
    if (name == nullptr || (name[0] == '.' && name[1] == '.')) return true;
    for (const auto& n : names)
      if (n == name) return true;
    return false;
  }
};

void free_handle(uv_handle_t* h) {
  switch (uv_handle_get_type(h)) {
    case UV_FS_POLL: delete reinterpret_cast<uv_fs_poll_t*>(h); break;
    case UV_FS_EVENT: delete static_cast<FolderWatch*>(h->data); break;
    case UV_TIMER: delete reinterpret_cast<uv_timer_t*>(h); break;
    default: break;
  }
}

}  // namespace

FileStamp FileStamp::of(const std::string& path) {
  uv_fs_t req;
  FileStamp s;
  if (uv_fs_stat(nullptr, &req, path.c_str(), nullptr) == 0) {
    const uv_stat_t& st = req.statbuf;
    s = {st.st_ino, st.st_size, static_cast<uint64_t>(st.st_mtim.tv_sec), static_cast<uint64_t>(st.st_mtim.tv_nsec),
         static_cast<uint64_t>(st.st_ctim.tv_sec), static_cast<uint64_t>(st.st_ctim.tv_nsec)};
  }
  uv_fs_req_cleanup(&req);
  return s;
}

FileStamps stamps_of(const std::vector<std::string>& paths) {
  FileStamps out;
  out.reserve(paths.size());
  for (const auto& path : paths) out.push_back(FileStamp::of(path));
  return out;
}

FileWatch::FileWatch(uv_loop_t* loop, std::string what, uint64_t poll_ms, std::function<void()> on_change)
    : loop_(loop), what_(std::move(what)), poll_ms_(poll_ms), on_change_(std::move(on_change)) {}

FileWatch::~FileWatch() { close(); }

void FileWatch::watch(std::vector<std::string> paths, FileStamps seen) {
  close_handles();
  paths_ = std::move(paths);
  seen_ = std::move(seen);
  if (paths_.empty()) return;
  if (!quiet_) {
    quiet_ = new uv_timer_t;
    uv_timer_init(loop_, quiet_);
    quiet_->data = this;
  }
  std::map<std::string, std::vector<std::string>> dirs;  // folder: the names of our files in it
  for (const auto& path : paths_) {
    std::filesystem::path p(path);
    std::string dir = p.parent_path().string();
    dirs[dir.empty() ? "." : dir].push_back(p.filename().string());
    auto* poll = new uv_fs_poll_t;
    uv_fs_poll_init(loop_, poll);
    poll->data = this;
    handles_.push_back(reinterpret_cast<uv_handle_t*>(poll));
    uv_fs_poll_start(
        poll, [](uv_fs_poll_t* h, int, const uv_stat_t*, const uv_stat_t*) { static_cast<FileWatch*>(h->data)->maybe_changed(); },
        path.c_str(), static_cast<unsigned>(poll_ms_));
  }
  for (auto& [dir, names] : dirs) {
    auto* folder = new FolderWatch{{}, this, std::move(names)};
    uv_fs_event_init(loop_, &folder->handle);
    folder->handle.data = folder;
    handles_.push_back(reinterpret_cast<uv_handle_t*>(&folder->handle));
    int rc = uv_fs_event_start(
        &folder->handle,
        [](uv_fs_event_t* h, const char* name, int, int status) {
          auto* folder = static_cast<FolderWatch*>(h->data);
          if (status == 0 && folder->concerns(name)) folder->owner->maybe_changed();
        },
        dir.c_str(), 0);
    if (rc != 0)
      log_warn(what_ + " watch: cannot watch " + dir + ": " + uv_strerror(rc) + "; polling every " +
               std::to_string(poll_ms_) + " ms instead");
  }
  maybe_changed();  // a change between the owner's read and now
}

void FileWatch::maybe_changed() {
  if (!quiet_) return;
  ++compared_;
  if (read() == seen_) return;
  uv_timer_start(quiet_, on_quiet, kQuietMs, 0);
}

void FileWatch::on_quiet(uv_timer_t* t) {
  auto* self = static_cast<FileWatch*>(t->data);
  if (self->read() != self->seen_) self->on_change_();
}

void FileWatch::close_handles() {
  for (uv_handle_t* h : handles_) uv_close(h, free_handle);
  handles_.clear();
  if (quiet_) uv_timer_stop(quiet_);
}

void FileWatch::close() {
  close_handles();
  if (quiet_) {
    uv_close(reinterpret_cast<uv_handle_t*>(quiet_), free_handle);
    quiet_ = nullptr;
  }
  paths_.clear();
}

}  // namespace pilotfish
