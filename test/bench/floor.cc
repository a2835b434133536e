// The floor (issue 18): the least a proxy between a client and an upstream can spend per request.
// One thread and one epoll; each client connection is paired with one new upstream connection,
// and bytes are copied both ways as they come, parsing nothing. No HTTP proxy can do less work;
// bench.py runs it in the same rounds as pilotfish, HAProxy and NGINX.
//
//   floor LISTEN_PORT UPSTREAM_PORT      (both on 127.0.0.1; runs until killed)
//
// Not part of pilotfish, and not a test: a benchmark peer.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr size_t kBuffer = 16384;

// One direction's end: its socket, what was read from the other side and not yet written here,
// and its peer.
struct End {
  int fd = -1;
  End* peer = nullptr;
  char pending[kBuffer];
  size_t pending_from = 0, pending_to = 0;  // pending[from, to) waits to be written to fd
  bool reading = true;                       // EPOLLIN wanted (nothing waits for the peer)
  bool closed = false;
};

int epfd = -1;
// Pairs closed during one epoll_wait batch are freed after it: a later event of the same batch
// may name either end.
std::vector<End*> closed_ends;

void watch(End* e, int op) {
  epoll_event ev{};
  ev.events = (e->reading ? uint32_t{EPOLLIN} : 0u) | (e->pending_to > e->pending_from ? uint32_t{EPOLLOUT} : 0u);
  ev.data.ptr = e;
  epoll_ctl(epfd, op, e->fd, &ev);
}

void close_pair(End* e) {
  for (End* end : {e, e->peer}) {
    close(end->fd);  // also leaves the epoll set
    end->closed = true;
    closed_ends.push_back(end);
  }
}

// Writes what `to` holds; true when all of it went.
bool drain(End* to) {
  while (to->pending_to > to->pending_from) {
    ssize_t n = write(to->fd, to->pending + to->pending_from, to->pending_to - to->pending_from);
    if (n < 0) return false;
    to->pending_from += static_cast<size_t>(n);
  }
  to->pending_from = to->pending_to = 0;
  return true;
}

// `from` is readable: read once, write to its peer. False when the pair is over.
bool forward(End* from) {
  End* to = from->peer;
  ssize_t n = read(from->fd, to->pending, kBuffer);
  if (n == 0 || (n < 0 && errno != EAGAIN)) return false;
  if (n < 0) return true;
  to->pending_from = 0;
  to->pending_to = static_cast<size_t>(n);
  if (drain(to)) return true;
  if (errno != EAGAIN) return false;
  // The peer is behind: stop reading this side until what waits is written.
  from->reading = false;
  watch(from, EPOLL_CTL_MOD);
  watch(to, EPOLL_CTL_MOD);
  return true;
}

int open_socket() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: floor LISTEN_PORT UPSTREAM_PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);  // a write to a reset peer is an error, not the end of the floor
  rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0) {  // as many descriptors as pilotfish takes
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  sockaddr_in listen_at = loopback(std::atoi(argv[1])), upstream = loopback(std::atoi(argv[2]));
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&listen_at), sizeof listen_at) != 0 || listen(lfd, 4096) != 0) {
    std::perror("floor: listen");
    return 1;
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = nullptr;  // the listener
  epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
  epoll_event events[256];
  for (;;) {
    int n = epoll_wait(epfd, events, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return 1;
    for (int i = 0; i < n; ++i) {
      auto* e = static_cast<End*>(events[i].data.ptr);
      if (e && e->closed) continue;
      if (!e) {
        for (;;) {
          int cfd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          int ufd = open_socket();
          if (ufd < 0) {
            close(cfd);
            continue;
          }
          if (connect(ufd, reinterpret_cast<sockaddr*>(&upstream), sizeof upstream) != 0 && errno != EINPROGRESS) {
            close(cfd);
            close(ufd);
            continue;
          }
          auto* client = new End;
          auto* server = new End;
          client->fd = cfd;
          server->fd = ufd;
          client->peer = server;
          server->peer = client;
          // The client's request may come before the connect completes: a write to the
          // upstream then fails with EAGAIN and waits for EPOLLOUT, as any other slow write.
          watch(client, EPOLL_CTL_ADD);
          watch(server, EPOLL_CTL_ADD);
        }
        continue;
      }
      uint32_t ev = events[i].events;
      if ((ev & EPOLLERR) || ((ev & EPOLLHUP) && !e->reading)) {
        close_pair(e);
        continue;
      }
      if (ev & EPOLLOUT) {
        if (!drain(e)) {
          if (errno != EAGAIN) {
            close_pair(e);
            continue;
          }
        } else {
          e->peer->reading = true;  // what waited went: read its side again
          watch(e, EPOLL_CTL_MOD);
          watch(e->peer, EPOLL_CTL_MOD);
        }
      }
      if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && e->reading && !forward(e)) close_pair(e);
    }
    for (End* end : closed_ends) delete end;
    closed_ends.clear();
  }
}
