// The admin endpoints' answers (AdminServer serves them; see admin_server.h for who may ask).
#include "json/json_writer.h"
#include "log/logger.h"
#include "policy/policy_json.h"
#include "server/process.h"
#include "server/status_page.h"

namespace pilotfish {

void Process::close_admin() {
  admin->close();
  if (admin_read_only) admin_read_only->close();
}

AdminBackend::Answer Process::metrics() {
  for (const auto& c : policy->clusters) {
    auto shared = resilience->find_cluster(c.name);
    registry->set_endpoints_ejected(c.name, shared ? shared->ejected.load() : 0);
  }
  return {200, "text/plain; version=0.0.4; charset=utf-8", registry->render()};
}

AdminBackend::Answer Process::ready() {
  if (draining) return {503, "text/plain", "draining\n"};
  if (!serving) return {503, "text/plain", "starting\n"};
  if (probes && !probes->all_reachable())
    return {503, "text/plain", "waiting for cluster " + probes->waiting_for() + " to accept connections\n"};
  return {200, "text/plain", "ready\n"};
}

AdminBackend::Answer Process::live() {
  // Each worker's loop stamps a heartbeat every second; a loop stuck for 5 s is not live.
  uv_update_time(loop);
  uint64_t now = uv_now(loop);  // libuv loops share one monotonic clock
  for (auto& w : workers) {
    if (w->finished()) continue;
    uint64_t beat = w->heartbeat_ms();
    if (now > beat && now - beat > 5000)
      return {503, "text/plain", "worker " + std::to_string(w->index()) + " has not answered for 5 s\n"};
  }
  return {200, "text/plain", "live\n"};
}

AdminBackend::Answer Process::config() {
  return json_answer(200, [&](JsonWriter& w) {
    w.key("version").integer(version).key("sha256").str(policy->sha256);
    w.key("loaded_at").str(iso_time(loaded_at)).key("source").str(policy->source_path);
    w.key("last_reload").raw(events.last_reload_json()).key("policy").raw(policy_to_json(*policy));
  });
}

AdminBackend::Answer Process::clusters() {
  return json_answer(200, [&](JsonWriter& w) {
    w.key("clusters").begin_array();
    for (const auto& c : policy->clusters) {
      w.begin_object().key("name").str(c.name).key("endpoints").begin_array();
      for (const auto& endpoint : c.endpoints) {
        auto health = resilience->find_endpoint(c.name, endpoint.text);
        uint32_t state = health ? health->state.load() : EndpointHealth::ok;
        w.begin_object().key("address").str(endpoint.text);
        w.key("health").str(state == EndpointHealth::ok        ? "ok"
                            : state == EndpointHealth::ejected ? "ejected"
                                                               : "probing");
        w.key("ejected_until");
        if (state == EndpointHealth::ok) w.null();
        else w.str(iso_time_ms(health->ejected_until_unix_ms.load()));
        w.key("ejections").integer(health ? health->ejections.load() : 0);
        w.key("consecutive_failures").integer(health ? health->consecutive_failures.load() : 0);
        w.end_object();
      }
      w.end_array();
      w.key("open_connections").integer(static_cast<int64_t>(registry->cluster_open_connections(c.name)));
      const CircuitBreakerLimits& b = c.circuit_breaker;
      w.key("circuit_breaker").begin_object();
      w.key("max_connections").integer(b.max_connections).key("max_pending_requests").integer(b.max_pending_requests);
      w.key("max_requests").integer(b.max_requests).key("max_retries").integer(b.max_retries);
      w.end_object();
      auto shared = resilience->find_cluster(c.name);
      auto count = [&](std::atomic<int64_t> ClusterShared::*field) {
        return shared ? (shared.get()->*field).load() : 0;
      };
      w.key("in_flight").begin_object();
      w.key("connections").integer(count(&ClusterShared::connections));
      w.key("pending_requests").integer(count(&ClusterShared::pending));
      w.key("requests").integer(count(&ClusterShared::requests)).key("retries").integer(count(&ClusterShared::retries));
      w.end_object();
      w.key("endpoints_ejected").integer(count(&ClusterShared::ejected));
      w.end_object();
    }
    w.end_array();
  });
}

AdminBackend::Answer Process::stats(bool table) {
  if (table) return {200, "text/plain; charset=utf-8", golden.table()};
  return {200, "application/json", golden.json()};
}

void Process::on_stats_timer(uv_timer_t* t) {
  auto* p = static_cast<Process*>(t->data);
  p->golden.add_sample(uv_now(p->loop), p->registry->route_samples());
}

AdminBackend::Answer Process::status_page() {
  return {200, "text/html; charset=utf-8", std::string(status_page_html()), status_page_headers()};
}

AdminBackend::Answer Process::history() { return {200, "application/json", events.to_json()}; }

void Process::reload(Reply reply) { reload_policy("admin", /*quiet_if_unchanged=*/false, std::move(reply)); }

AdminBackend::Answer Process::drain() {
  begin_drain("POST /drain");
  return json_answer(202, [](JsonWriter& w) { w.key("draining").boolean(true); });
}

}  // namespace pilotfish
