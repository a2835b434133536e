// Pool ownership: a connection calls only the borrower holding its lease, never before the lease
// is in the borrower's hands, and never after the lease is given back or dropped. Real sockets:
// an upstream listening on 127.0.0.1 in the same loop.
#include "upstream/upstream_pool.h"

#include <gtest/gtest.h>
#include <uv.h>

#include <string>
#include <vector>

#include "net/descriptor_budget.h"
#include "pilotfish/socket_address.h"
#include "unit/loop_host.h"

namespace pilotfish {
namespace {

// Records which callbacks reached it, from which connection.
struct Borrower final : UpstreamHandler {
  UpstreamLease lease;
  std::vector<std::string> calls;
  std::string data;
  void note(UpstreamConnection& from, const char* what) {
    calls.push_back(std::string(lease.holds(from) ? "" : "STRAY ") + what);
  }
  void on_upstream_connected(UpstreamConnection& from) override { note(from, "connected"); }
  void on_upstream_connect_failed(UpstreamConnection& from, int) override {
    note(from, "connect_failed");
    lease.lost();
  }
  void on_upstream_data(UpstreamConnection& from, char* d, size_t n) override {
    note(from, "data");
    data.append(d, n);
  }
  void on_upstream_end(UpstreamConnection& from, int) override {
    note(from, "end");
    lease.lost();
  }
  void on_upstream_drained(UpstreamConnection& from) override { note(from, "drained"); }
};

// An upstream on 127.0.0.1 that answers each connection's first bytes with `reply`.
class FakeUpstream {
 public:
  FakeUpstream(uv_loop_t* loop, std::string reply) : reply_(std::move(reply)) {
    uv_tcp_init(loop, &server_);
    server_.data = this;
    sockaddr_in a{};
    uv_ip4_addr("127.0.0.1", 0, &a);
    EXPECT_EQ(uv_tcp_bind(&server_, reinterpret_cast<const sockaddr*>(&a), 0), 0);
    EXPECT_EQ(uv_listen(reinterpret_cast<uv_stream_t*>(&server_), 16, on_connection), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&server_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~FakeUpstream() {
    for (auto* c : clients_) uv_close(reinterpret_cast<uv_handle_t*>(c), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    uv_close(reinterpret_cast<uv_handle_t*>(&server_), nullptr);
  }
  int port() const { return port_; }
  size_t accepted() const { return clients_.size(); }
  // Sends `bytes` on every connection it has accepted.
  void send_all(const std::string& bytes) {
    for (auto* c : clients_) {
      uv_buf_t b = uv_buf_init(const_cast<char*>(bytes.data()), static_cast<unsigned>(bytes.size()));
      uv_try_write(reinterpret_cast<uv_stream_t*>(c), &b, 1);
    }
  }

 private:
  static void on_connection(uv_stream_t* s, int status) {
    auto* self = static_cast<FakeUpstream*>(s->data);
    if (status != 0) return;
    auto* c = new uv_tcp_t;
    uv_tcp_init(s->loop, c);
    c->data = self;
    if (uv_accept(s, reinterpret_cast<uv_stream_t*>(c)) != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(c), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
      return;
    }
    self->clients_.push_back(c);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(c),
        [](uv_handle_t*, size_t, uv_buf_t* b) {
          static char buf[4096];
          *b = uv_buf_init(buf, sizeof buf);
        },
        [](uv_stream_t* c, ssize_t n, const uv_buf_t*) {
          auto* self = static_cast<FakeUpstream*>(c->data);
          if (n <= 0) return;
          uv_buf_t b = uv_buf_init(const_cast<char*>(self->reply_.data()), static_cast<unsigned>(self->reply_.size()));
          uv_try_write(c, &b, 1);
        });
  }
  uv_tcp_t server_;
  std::string reply_;
  std::vector<uv_tcp_t*> clients_;
  int port_ = 0;
};

class UpstreamPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    host_ = std::make_unique<LoopHost>(&loop_);
    upstream_ = std::make_unique<FakeUpstream>(&loop_, "pong");
    std::string error;
    auto address = parse_socket_address("127.0.0.1:" + std::to_string(upstream_->port()), &error);
    ASSERT_TRUE(address) << error;
    cluster_.name = "test";
    cluster_.endpoints.push_back(*address);
    shared_ = std::make_shared<ClusterShared>(1);
    pool_ = std::make_unique<EndpointPool>(*host_, *address, cluster_, nullptr, shared_);
  }
  void TearDown() override {
    pool_.reset();
    upstream_.reset();
    run_until([] { return false; }, 20);
    host_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }
  // Turns of the loop until `done` (bounded, so a broken pool fails instead of hanging).
  template <typename Fn>
  bool run_until(Fn done, int turns = 2000) {
    for (int i = 0; i < turns; ++i) {
      if (done()) return true;
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (done()) return true;
      uv_sleep(1);
    }
    return done();
  }

  uv_loop_t loop_;
  std::unique_ptr<LoopHost> host_;
  std::unique_ptr<FakeUpstream> upstream_;
  Cluster cluster_;
  std::shared_ptr<ClusterShared> shared_;
  std::unique_ptr<EndpointPool> pool_;
};

TEST_F(UpstreamPoolTest, ALeaseIsHeldBeforeAnyCallbackAndOnlyItsHolderIsCalled) {
  Borrower a;
  bool reused = true;
  BreakerLimit limit{};
  a.lease = pool_->acquire(&a, &reused, &limit);
  ASSERT_TRUE(a.lease);
  EXPECT_FALSE(reused);
  EXPECT_TRUE(a.calls.empty());  // nothing runs inside acquire()
  ASSERT_TRUE(run_until([&] { return !a.calls.empty(); }));
  ASSERT_EQ(a.calls, std::vector<std::string>{"connected"});
  a.lease->append("ping");
  a.lease->flush();
  ASSERT_TRUE(run_until([&] { return a.data == "pong"; }));

  // Given back reusable: parked, then lent to the next borrower, who alone hears from it.
  UpstreamConnection* first = a.lease.get();
  a.lease.end(true);
  EXPECT_FALSE(a.lease);
  EXPECT_EQ(pool_->idle_connections(), 1u);
  Borrower b;
  b.lease = pool_->acquire(&b, &reused, &limit);
  EXPECT_TRUE(reused);
  EXPECT_EQ(b.lease.get(), first);
  b.lease->append("ping");
  b.lease->flush();
  ASSERT_TRUE(run_until([&] { return b.data == "pong"; }));
  for (const std::string& call : b.calls) EXPECT_EQ(call.find("STRAY"), std::string::npos) << call;
  EXPECT_EQ(a.calls.size(), 2u);  // connected, data: nothing after it gave the lease back
  b.lease.end(true);
}

TEST_F(UpstreamPoolTest, ADroppedLeaseClosesItsConnectionAndNothingCallsTheOldBorrower) {
  auto a = std::make_unique<Borrower>();
  bool reused = false;
  BreakerLimit limit{};
  a->lease = pool_->acquire(a.get(), &reused, &limit);
  ASSERT_TRUE(run_until([&] { return !a->calls.empty(); }));
  ASSERT_TRUE(run_until([&] { return upstream_->accepted() == 1; }));
  EXPECT_EQ(pool_->open_connections(), 1u);
  a.reset();  // the borrower goes away holding its lease: the connection closes, not parked
  EXPECT_EQ(pool_->idle_connections(), 0u);
  upstream_->send_all("late bytes");  // nobody may hear these (ASan would see a call into `a`)
  ASSERT_TRUE(run_until([&] { return pool_->open_connections() == 0; }));
}

TEST_F(UpstreamPoolTest, ALeaseMovesAndAReassignedLeaseLetsGoOfItsOldConnection) {
  Borrower a;
  bool reused = false;
  BreakerLimit limit{};
  a.lease = pool_->acquire(&a, &reused, &limit);
  UpstreamConnection* c = a.lease.get();
  UpstreamLease moved = std::move(a.lease);
  EXPECT_FALSE(a.lease);
  EXPECT_TRUE(moved.holds(*c));
  moved = pool_->acquire(&a, &reused, &limit, /*fresh=*/true);  // the first one is closed
  EXPECT_NE(moved.get(), c);
  ASSERT_TRUE(run_until([&] { return pool_->open_connections() == 1; }));
  moved.end(false);
  ASSERT_TRUE(run_until([&] { return pool_->open_connections() == 0; }));
}

TEST_F(UpstreamPoolTest, AConnectThatCannotStartFailsAfterAcquireReturns) {
  DescriptorBudget& budget = DescriptorBudget::process();
  int64_t limit_before = budget.limit();
  budget.set_limit_for_test(budget.in_use());  // no descriptor left for an upstream
  Borrower a;
  bool reused = false;
  BreakerLimit limit{};
  a.lease = pool_->acquire(&a, &reused, &limit);
  budget.set_limit_for_test(limit_before);
  ASSERT_TRUE(a.lease);
  EXPECT_TRUE(a.calls.empty());  // the failure is not reported inside acquire()
  ASSERT_TRUE(run_until([&] { return !a.calls.empty(); }));
  EXPECT_EQ(a.calls, std::vector<std::string>{"connect_failed"});
  EXPECT_FALSE(a.lease);
  ASSERT_TRUE(run_until([&] { return pool_->open_connections() == 0; }));
}

}  // namespace
}  // namespace pilotfish
