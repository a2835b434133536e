#pragma once
// A bare loop that upstream pools and connections can run on in a unit test (a worker is one in
// the proxy): no TLS identity, no idle connections to give up, never winding down.
#include "upstream/upstream_pool.h"

namespace pilotfish {

struct LoopHost final : UpstreamHost {
  explicit LoopHost(uv_loop_t* loop) : UpstreamHost(loop) {}
  const TlsMaterialPtr& tls() const override { return none; }
  bool close_idle_upstream() override { return false; }
  bool winding_down() const override { return false; }
  TlsMaterialPtr none;
};

}  // namespace pilotfish
