#pragma once
// A `protocol: tcp` listener's connection: bytes both ways to one endpoint of the cluster, with
// backpressure and half-close passed through (a FIN from one side reaches the other, and the
// connection ends when both directions have ended).

#include <string>

#include "proxy/intercept.h"
#include "net/stream.h"
#include "pilotfish/policy.h"
#include "proxy/worker_context.h"
#include "upstream/circuit_breaker.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

class TcpProxySession final : public Stream, public UpstreamHandler {
 public:
  // A byte stream keeps the snapshot it was accepted under for its whole life.
  TcpProxySession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot, const InterceptTarget& target = {});
  void start();
  // Instead of start(), for a connection an InterceptSession hands over (its TLS handshake, if
  // any, done; `first_bytes` read from the client).
  void start_adopted(const std::string& first_bytes);
  void drain() override {}  // a byte stream has no request boundary: it runs until the drain timeout
  void on_policy_changed() override;

 protected:
  void on_data(char* data, size_t length) override;
  void on_read_end(int status) override;
  void on_write_done(int status) override;
  void on_timeout() override;
  void on_close() override;
  void on_tls_established() override;
  void on_tls_failed() override;

  void on_upstream_connected(UpstreamConnection& from) override;
  void on_upstream_connect_failed(UpstreamConnection& from, int status) override;
  void on_upstream_data(UpstreamConnection& from, char* data, size_t length) override;
  void on_upstream_end(UpstreamConnection& from, int status) override;
  void on_upstream_drained(UpstreamConnection& from) override;

 private:
  void connect();
  void maybe_close();

  WorkerContext& worker_;
  std::shared_ptr<ListenerSlot> slot_;
  SnapshotPtr snap_;
  const Listener& listener_;
  std::shared_ptr<ListenerStats> conn_stats_;
  size_t cluster_index_ = 0;
  int endpoint_ = -1;
  unsigned attempts_ = 0;
  ProbeClaim probe_;  // this connection is its ejected endpoint's one probe
  UpstreamLease upstream_;
  std::string pending_;  // bytes from the client before the upstream connected
  bool handshaking_ = false;
  bool direct_ = false;            // to direct_address_, not to a cluster
  SocketAddress direct_address_;
  bool downstream_eof_ = false;
  bool upstream_eof_ = false;
  bool paused_for_upstream_ = false;
  bool paused_for_downstream_ = false;
};

}  // namespace pilotfish
