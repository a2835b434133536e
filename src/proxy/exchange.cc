// One request's way through pilotfish (see exchange.h): admission and routing, the attempts at
// endpoints (balancing, the breaker's limits, outlier probes), retries with backoff and the
// keep-alive race resend, the cluster and per-try deadlines, the response decoded and handed
// to the owner (interim responses, trailers, the WebSocket tunnel), local answers, and the
// access log.
#include "proxy/exchange.h"

#include <uv.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <new>

#include "gateway/admission.h"
#include "http/local_reply.h"
#include "http/upstream_head.h"
#include "log/logger.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/route_matcher.h"
#include "tls/tls.h"
#include "upstream/retry_decision.h"

namespace pilotfish {

namespace {

// A request body up to this size is kept, so that an idempotent request can be sent again.
constexpr size_t kMaxReplayBytes = 64 * 1024;
// A timer this late means the worker's loop was held up, not that a peer was slow.
constexpr uint64_t kLoopStallMs = 500;
// An upstream's response head (status line and fields) may take this much.
constexpr uint64_t kMaxResponseHeadBytes = 64 * 1024;

// True for `percent` (0 to 100) of the calls.
bool drawn(FastRandom& random, double percent) {
  return percent > 0 && static_cast<double>(random.below(1'000'000)) < percent * 10'000;
}

}  // namespace

Exchange::Exchange(WorkerContext& worker, ExchangeOwner& owner) : worker_(worker), owner_(&owner) {
  response_.set_head_limit(kMaxResponseHeadBytes);
  take_buffers();
}

Exchange::~Exchange() {
  if (st_.mux) st_.mux->abandon(this, st_.stream);  // a shared connection never calls an exchange that is gone
  release_buffers();
}

// Buffers an earlier connection (or stream) of this worker grew, instead of growing new ones.
void Exchange::take_buffers() {
  StringPool<PoolRole::upstream_head>::take(upstream_head_);
  StringPool<PoolRole::to_upstream>::take(to_upstream_);
  StringPool<PoolRole::request_id>::take(request_id_);
  StringPool<PoolRole::path>::take(st_.target.path);
  resp_.fields.take_pooled();
}

void Exchange::release_buffers() {
  StringPool<PoolRole::upstream_head>::give(upstream_head_);
  StringPool<PoolRole::to_upstream>::give(to_upstream_);
  StringPool<PoolRole::request_id>::give(request_id_);
  StringPool<PoolRole::path>::give(st_.target.path);
  resp_.fields.give_pooled();
}

void Exchange::open(const SnapshotPtr& snap, size_t listener_index) {
  if (snap_ != snap) snap_ = snap;
  listener_index_ = listener_index;
  st_.started_ns = uv_hrtime();
}

bool Exchange::set_target(std::string_view target, bool options) {
  if (options && target == "*") {
    st_.target.path.assign(1, '*');  // not = "*": g++ 12 warns falsely there (-Wrestrict, GCC bug 105651)
    st_.target.query.clear();
    return true;
  }
  bool allow = listener().allow_ambiguous_paths;
  auto normalized = normalize_target(target, allow);
  if (!normalized) {
    // Said apart from a malformed target: the operator may want allow_ambiguous_paths.
    bool ambiguous = !allow && normalize_target(target, true);
    answer(400, ambiguous ? "ambiguous_path" : "invalid_target", true);
    return false;
  }
  // Copied, not moved: the target's buffers keep the capacity earlier requests gave them.
  st_.target.path.assign(normalized->path);
  st_.target.query.assign(normalized->query);
  return true;
}

bool Exchange::set_authority(std::string_view host) {
  authority_.assign(trim_ows(host));
  if (!is_valid_host(authority_)) {
    answer(400, "invalid_host", true);
    return false;
  }
  return true;
}

void Exchange::note_grpc(const HeaderList& fields) { st_.grpc = is_grpc_request(fields); }

namespace {

// grpc-status of a response: its trailers', else its head's (a trailers-only response); -1.
int grpc_status_in(const ResponseHead& r) {
  for (const HeaderList* h : {&r.trailers, &r.fields}) {
    size_t i = h->find("grpc-status");
    if (i == HeaderList::npos) continue;
    std::string_view v = trim_ows(h->value(i));
    if (v.empty() || v.size() > 3) return 17;
    int code = 0;
    for (char c : v) {
      if (c < '0' || c > '9') return 17;
      code = code * 10 + (c - '0');
    }
    return code;
  }
  return -1;
}

}  // namespace

void Exchange::set_request_id(const HeaderList& fields) {
  FastRandom& random = worker_.random();
  size_t id = fields.find("x-request-id");
  char fresh[32];
  bool generated = id == HeaderList::npos;
  if (generated) {
    random_trace_id(fresh, random.next(), random.next());
    request_id_.assign(fresh, 32);
  } else {
    request_id_.assign(fields.value(id));
  }
  if (!continue_trace(fields, trace_, tracestate_)) {
    // A new trace; its id is the request id pilotfish made, when it made one (both random).
    if (!generated) random_trace_id(fresh, random.next(), random.next());
    trace_.start({fresh, 32});
  }
  format_traceparent(traceparent_, trace_, random.next());
}

// A route's (else the listener's) rate limit, then its auth (gateway/admission.h). False when
// answered 429 or 401.
bool Exchange::admit(const Route* route, size_t route_index, const ExchangeRequest& r) {
  const Listener& l = listener();
  RateLimiter* limiter = nullptr;
  if (route && route->rate_limit)
    limiter = snap_->route_limiters[listener_index_][route_index].get();
  else if (rate_limit_for(l, route))
    limiter = snap_->listener_limiters[listener_index_].get();
  if (!limiter && !auth_for(l, route)) return true;  // nothing to check: the common case
  std::string_view peer = r.tls && r.tls->established() ? std::string_view(r.tls->peer_id()) : std::string_view();
  Admission verdict = pilotfish::admit(
      {l, route, limiter, r.client_address, peer, r.fields, snap_->keys.jwks.get(), worker_.jwt_cache()});
  st_.auth = verdict.auth;
  st_.auth_subject = std::move(verdict.subject);
  st_.auth_subject_ok = verdict.has_subject;
  st_.token_verified = verdict.token_verified;
  st_.token_scopes = std::move(verdict.scopes);
  st_.token_audiences = std::move(verdict.audiences);
  if (verdict.admitted()) return true;
  local_headers_ = std::move(verdict.reply_headers);
  ListenerStats& stats = *snap_->listener_stats[listener_index_];
  if (verdict.status == 401) {
    stats.auth_failures.add();
    log_debug("listener " + l.name + ": 401 for " + std::string(r.client_address) + ": " + verdict.why);
  } else {
    stats.rate_limited.add();
  }
  answer(verdict.status, verdict.error, st_.has_body);
  return false;
}

bool Exchange::authorize(const Route* route, const ExchangeRequest& r) {
  const Listener& l = listener();
  const bool route_rules = route && route->authorization;
  if (!l.authorization && !route_rules) return true;  // the common case
  static const std::string kNoPeer;
  Admission token;
  token.token_verified = st_.token_verified;
  token.has_subject = st_.auth_subject_ok;
  token.subject = st_.auth_subject;
  token.scopes = st_.token_scopes;
  token.audiences = st_.token_audiences;
  AuthzRequest q{r.tls && r.tls->established() ? r.tls->peer_id() : kNoPeer, method_, st_.target.path, token};
  if ((!l.authorization || authorized(*l.authorization, q)) && (!route_rules || authorized(*route->authorization, q)))
    return true;
  snap_->listener_stats[listener_index_]->authz_denied.add();
  log_debug("listener " + l.name + ": authorization refused a request from " +
            (q.peer_id.empty() ? std::string(r.client_address) : q.peer_id));
  answer(403, "authz_denied", st_.has_body);
  return false;
}

bool Exchange::begin(const ExchangeRequest& r) {
  const Listener& l = listener();
  method_.assign(r.method);
  st_.method_head = r.method_head;
  st_.idempotent = r.idempotent;
  st_.websocket = r.websocket;
  st_.has_body = r.has_body;
  st_.body_chunked = r.body_chunked;
  if (worker_.tapping() && r.tls && r.tls->established()) st_.peer_identity = r.tls->peer_id();  // for the tap
  if (st_.grpc) {
    size_t t = r.fields.find("grpc-timeout");
    uint64_t ms = t == HeaderList::npos ? 0 : parse_grpc_timeout(r.fields.value(t));
    if (ms) st_.grpc_deadline_ms = uv_now(worker_.loop()) + ms;
  }
  size_t te = r.fields.find("te");
  if (te != HeaderList::npos) {
    std::string v(r.fields.value(te));
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    st_.te_trailers = v.find("trailers") != std::string::npos;
  }
  if (l.mtls && !peer_admitted(l, r.tls)) {
    snap_->listener_stats[listener_index_]->authz_denied.add();
    log_debug("listener " + l.name + ": " +
              (r.tls && r.tls->established() ? r.tls->peer_id() : std::string("a peer without mTLS")) +
              " is not in its allow list");
    answer(403, "peer_not_allowed", true);
    return false;
  }
  std::string host = host_for_routing(authority_);
  RequestView view{host, st_.target.path, r.method, &r.fields};
  const Route* route = match_route(l, view);
  if (!l.allow_ambiguous_paths && st_.target.path.find(';') != std::string::npos) {
    // Servers that drop `;` parameters ("/admin;x/users" is "/admin/users" to a Java server)
    // must not reach through another route than the one that guards their path.
    std::string plain = without_path_parameters(st_.target.path);
    RequestView plain_view{host, plain, r.method, &r.fields};
    if (match_route(l, plain_view) != route) {
      answer(400, "ambiguous_path", st_.has_body);
      return false;
    }
  }
  size_t route_index = route ? static_cast<size_t>(route - l.routes.data()) : SIZE_MAX;
  st_.route_index = route_index;
  if (route && route->answers_itself()) {
    // pilotfish answers once the request is in (its body read and dropped), as an upstream
    // would: a keep-alive connection stays open.
    if (!admit(route, route_index, r) || !authorize(route, r)) return false;
    if (route->response_headers && r.tls && r.tls->established()) st_.peer_identity = r.tls->peer_id();
    st_.route_answers = true;
    return true;
  }
  const Cluster* tuned = nullptr;
  if (!r.fixed_cluster.empty()) {
    // Intercepted: the original destination chose the cluster (by name: a reload may have
    // moved it, or removed it). The route still says which auth and rate limit apply.
    const auto& clusters = snap_->policy->clusters;
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < clusters.size(); ++i)
      if (clusters[i].name == r.fixed_cluster) found = i;
    if (found == SIZE_MAX) {
      answer(404, "no_route", st_.has_body);
      return false;
    }
    st_.cluster_index = found;
  } else {
    if (route == nullptr) {
      answer(404, "no_route", st_.has_body);
      return false;
    }
    size_t target = route->clusters.empty() ? 0 : split_position(*route, r);
    st_.cluster_index = route->clusters.empty() ? route->cluster_index : route->clusters[target].index;
    // A route that overrides the cluster's timeout or retry has its own copy of each target.
    if (!route->tuned.empty()) tuned = route->tuned[target].get();
  }
  if (!admit(route, route_index, r) || !authorize(route, r)) return false;
  st_.cluster = tuned ? tuned : &snap_->policy->clusters[st_.cluster_index];
  uint64_t delay_ms = route && route->fault ? inject_fault(*route->fault, r) : 0;
  if (st_.local_response) return false;  // aborted
  ClusterState& cs = cluster_state();
  if (!st_.upstream.take_request_slot(cs, *st_.cluster)) {
    overflow(BreakerLimit::requests);
    return false;
  }
  cs.shared->budget.record_request(worker_.index(), uv_now(worker_.loop()));
  // A gRPC call is a POST that gRPC's own retry policies resend: whether it is retried is the
  // cluster's retry.on (its body within the replay limit, and only before any response byte).
  st_.upstream.replayable = !st_.has_body || st_.idempotent || st_.grpc;
  const TlsState* t = r.tls && r.tls->established() ? r.tls : nullptr;
  UpstreamHeadInput in{r.method, st_.target, r.fields, st_.body_chunked, st_.websocket, l, r.client_address, t,
                       st_.auth_subject_ok ? st_.auth : nullptr, st_.auth_subject, request_id_};
  if (trace_.set) in.traceparent = {traceparent_, kTraceparentSize};
  in.tracestate = tracestate_;
  if (route && route->request_headers) {
    in.rules = &*route->request_headers;
    in.route_name = route->name;
  }
  if (route && route->response_headers && t) st_.peer_identity = t->peer_id();
  if (route && route->mirror && !st_.websocket && r.fixed_cluster.empty() && drawn(worker_.random(), route->mirror->percent))
    copy_for_mirror(*route->mirror, r, in);
  if (st_.cluster->protocol == UpstreamProtocol::http1 || st_.websocket) {
    Http1HeadWriter text(upstream_head_);
    st_.upstream.nested = build_upstream_head(text, in);
  } else {
    // Written as an HTTP/2 stream's head; as text only if an attempt goes over HTTP/1.1 (an
    // `auto` endpoint that does not speak HTTP/2). The client's grpc-timeout is replaced by the
    // time that is left at each HTTP/2 attempt.
    Http2HeadWriter parts(h2_head_, st_.grpc_deadline_ms ? "grpc-timeout" : "");
    st_.upstream.nested = build_upstream_head(parts, in);
    h2_base_fields_ = h2_head_.fields.size();
    upstream_head_.clear();
  }
  if (delay_ms) {
    // The attempt starts when the delay is over (on_timer, as after a retry's backoff); the body
    // that arrives meanwhile waits raw, as for an HTTP/2 stream not yet open, and start_attempt
    // frames it for whichever protocol the endpoint speaks.
    st_.h2 = true;
    st_.upstream.backoff_until_ms = uv_now(worker_.loop()) + delay_ms;
    arm_upstream_timer();
    return true;
  }
  start_attempt();
  return !st_.local_response && !st_.response_complete;
}

uint64_t Exchange::inject_fault(const FaultPolicy& f, const ExchangeRequest& r) {
  // Only a request that carries the policy's header, when it names one: a client cannot switch
  // faults on where the policy does not let it.
  if (!f.header.empty() && r.fields.find(f.header) == HeaderList::npos) return 0;
  FastRandom& random = worker_.random();
  RouteStats& stats = snap_->route(listener_index_, st_.route_index, st_.cluster_index);
  uint64_t delay_ms = 0;
  if (f.delay.count() > 0 && !st_.websocket && drawn(random, f.delay_percent)) {
    stats.faults_delay.add();
    delay_ms = static_cast<uint64_t>(f.delay.count());
  }
  if (f.abort_status && drawn(random, f.abort_percent)) {
    stats.faults_abort.add();
    if (delay_ms == 0)
      answer(f.abort_status, "fault_abort", st_.has_body);
    else
      st_.fault_abort = f.abort_status;  // answered when the delay is over
  }
  return delay_ms;
}

void Exchange::copy_for_mirror(const MirrorPolicy& m, const ExchangeRequest& r, const UpstreamHeadInput& in) {
  size_t length = r.fields.find("content-length");
  if (length != HeaderList::npos && st_.has_body) {
    // A body known to be over the copy's limit: not copied at all.
    if (content_length_value(r.fields.value(length)) > m.max_body_bytes) {
      snap_->clusters[m.cluster_index]->stats->mirror[static_cast<size_t>(MirrorResult::dropped)].add();
      return;
    }
  }
  // A copy holds its place among the copies in flight from here, body and all.
  // The copy is in the request's trace as a parent of its own, not sampled: the shadow's spans
  // do not join the production trace's.
  char copy_traceparent[kTraceparentSize];
  UpstreamHeadInput copy_in = in;
  if (trace_.set) {
    TraceContext unsampled = trace_;
    unsampled.flags &= static_cast<uint8_t>(~0x01);
    format_traceparent(copy_traceparent, unsampled, worker_.random().next());
    copy_in.traceparent = {copy_traceparent, kTraceparentSize};
  }
  st_.mirror =
      MirrorCopy::make(snap_, m, copy_in, st_.has_body || length != HeaderList::npos, st_.idempotent, st_.te_trailers);
}

bool Exchange::request_body(std::string_view piece) {
  st_.body_bytes += piece.size();
  uint64_t max = listener().max_body_bytes;
  if (max && st_.body_bytes > max) {
    answer(413, "body_too_large", true);
    return false;
  }
  if (st_.mirror) st_.mirror->add_body(piece);
  if (st_.local_response || st_.route_answers) return true;  // answered, or to be: the body is skipped
  send_body(piece.data(), piece.size());
  return true;
}

bool Exchange::request_end(const HeaderList& fields, const HeaderList& trailers) {
  st_.request_complete = true;
  if (st_.route_answers && !st_.local_response && !st_.response_started) {
    answer_from_route(listener().routes[st_.route_index]);
    return true;
  }
  if (!st_.local_response && st_.cluster) {
    if (!fields_valid(trailers)) {
      answer(400, "invalid_header", true);
      return false;
    }
    if (st_.body_chunked) {
      last_chunk_.clear();
      append_request_last_chunk(last_chunk_, trailers, connection_tokens(fields), listener());
    }
    if (trailers.size()) {
      // The same fields an HTTP/1.1 last chunk carries, for an HTTP/2 stream.
      h2_trailers_.clear();
      request_trailers_to_forward(h2_trailers_, trailers, connection_tokens(fields), listener());
    }
    if (st_.h2) {
      if (st_.mux && st_.stream >= 0) {
        st_.mux->send_end(st_.stream, h2_trailers_.size() ? &h2_trailers_ : nullptr);
        st_.mux->flush();
      }
    } else if (st_.body_chunked) {
      send_upstream(last_chunk_.data(), last_chunk_.size());
    }
  }
  if (!st_.local_response && !st_.response_complete && st_.cluster != nullptr) {
    // The request is in; from here the cluster's timeout bounds every attempt, and the
    // per-try timeout the one in flight.
    uint64_t now = uv_now(worker_.loop());
    st_.upstream.start_deadlines(*st_.cluster, now);
    // gRPC: the client's deadline, when sooner than the cluster's timeout (an answer 504
    // timeout, DEADLINE_EXCEEDED to the client).
    if (st_.grpc_deadline_ms && st_.grpc_deadline_ms < st_.upstream.deadline_ms)
      st_.upstream.deadline_ms = std::max(st_.grpc_deadline_ms, now + 1);
    if (st_.mux) st_.upstream.start_try_deadline(*st_.cluster, now);  // an HTTP/2 attempt in flight
    arm_upstream_timer();
  }
  // The route's copy goes after the request, on its own: whatever becomes of either, the other
  // does not wait for it.
  // A request pilotfish answered itself (a breaker, a fault's abort) is not copied either.
  if (st_.mirror && !st_.local_response && st_.fault_abort == 0) MirrorCopy::send(worker_, std::move(st_.mirror));
  return true;
}

void Exchange::answer(int status, const char* error, bool request_unread) {
  if (st_.local_response) return;
  st_.local_response = true;
  st_.error = error;
  if (attempt_active()) release_upstream(false);
  if (st_.response_started) {
    // Part of an upstream response went out already: the only honest signal left is to end
    // the client's message abnormally.
    break_off();
    return;
  }
  st_.status = status;
  st_.response_started = true;
  st_.response_complete = true;
  owner_->exchange_local_reply(status, error, local_headers_, request_unread);
  local_headers_.clear();
}

namespace {

// A byte that may stand as it is in a Location's path or query (RFC 3986 pchar, '/', '?');
// anything else from the request is percent-encoded before it goes into the response head.
bool location_safe(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("-._~!$&'()*+,;=:@/?%").find(static_cast<char>(c)) != std::string_view::npos;
}

void append_location_part(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (location_safe(c)) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
}

}  // namespace

size_t Exchange::split_position(const Route& route, const ExchangeRequest& r) {
  std::string_view key;
  if (route.hash_on.kind == HashOn::Kind::header) {
    size_t i = r.fields.find(route.hash_on.header);
    if (i != HeaderList::npos) key = trim_ows(r.fields.value(i));
  } else if (route.hash_on.kind == HashOn::Kind::peer_identity && r.tls && r.tls->established()) {
    key = r.tls->peer_id();
  }
  return pick_split(route, key, key.empty() ? worker_.random().next() : 0);
}

void Exchange::apply_response_rules(ResponseHead& head) {
  if (st_.route_index == SIZE_MAX) return;
  const Route& route = listener().routes[st_.route_index];
  if (!route.response_headers) return;
  HeaderVariables vars{st_.peer_identity, request_id_, route.name};
  apply_header_rules(head.fields, *route.response_headers, vars, rules_scratch_);
}

void Exchange::answer_from_route(const Route& route) {
  resp_.clear();
  std::string_view body;
  if (route.respond) {
    const DirectResponse& r = *route.respond;
    resp_.status = r.status;
    bool typed = false;
    for (const auto& [name, value] : r.headers) {
      resp_.fields.add(name, value);
      typed = typed || name == "content-type";
    }
    if (!typed && !r.body.empty()) resp_.fields.add("content-type", "text/plain; charset=utf-8");
    body = r.body;
  } else {
    const Redirect& r = *route.redirect;
    resp_.status = r.status;
    std::string location;
    location += r.scheme.empty() ? (listener().mtls ? "https" : "http") : r.scheme;
    location += "://";
    location += r.host.empty() ? std::string_view(authority_) : std::string_view(r.host);  // a checked host
    if (r.path.empty())
      append_location_part(location, st_.target.path);
    else
      location += r.path;
    append_location_part(location, st_.target.query);
    resp_.fields.add("location", location);
  }
  if (resp_.status != 204 && resp_.status != 304) resp_.fields.add("content-length", std::to_string(body.size()));
  apply_response_rules(resp_);
  st_.status = resp_.status;
  st_.local_response = true;  // pilotfish's own answer: nothing of the request goes further
  st_.response_started = true;
  bool no_body = st_.method_head || resp_.status == 204 || resp_.status == 304;
  owner_->exchange_head(resp_, no_body, true);
  if (!no_body && !body.empty()) {
    st_.bytes_out += body.size();
    owner_->exchange_body(body);
  }
  st_.response_complete = true;
  owner_->exchange_end(resp_);
}

void Exchange::break_off() {
  st_.broken = true;
  owner_->exchange_broken();
}

void Exchange::client_gone() {
  if (st_.status == 0) st_.error = "downstream_closed";
}

void Exchange::drop_upstream() {
  release_upstream(false);
  st_.upstream.release_holds();
}

void Exchange::release_upstream(bool reusable) {
  if (st_.mux) {
    st_.mux->abandon(this, st_.stream);
    h2_let_go();
    return;
  }
  st_.upstream.give_back_connection(reusable);
}

void Exchange::reset() {
  // Destroyed and made anew in place (no temporary to move from): its holds give back their
  // slots, probe and balancer count.
  if (st_.mux) st_.mux->abandon(this, st_.stream);
  // The target's buffers keep their capacity for the next request (a path longer than 15 bytes
  // would otherwise be a heap allocation for every request).
  std::string path = std::move(st_.target.path), query = std::move(st_.target.query);
  st_.~State();
  new (&st_) State();
  path.clear();
  query.clear();
  st_.target.path = std::move(path);
  st_.target.query = std::move(query);
  method_.clear();
  raw_target_.clear();
  authority_.clear();
  request_id_.clear();
  trace_.set = false;
  tracestate_.clear();
  if (tracestate_.capacity() > 4096) tracestate_.shrink_to_fit();
  local_headers_.clear();
  to_upstream_.clear();
  last_chunk_.clear();
  h2_trailers_.clear();
  resp_.clear();
  replay_.clear();
  if (replay_.capacity() > 16 * 1024) replay_.shrink_to_fit();  // one big PUT does not pin 64 KiB
}

void Exchange::detach() {
  // The policy snapshot stays until forget_snapshot(): this may run inside the exchange's own
  // callback, whose code after it may still read the snapshot.
  if (to_upstream_.capacity() > 16 * 1024) std::string().swap(to_upstream_);
  release_buffers();
  owner_ = nullptr;  // a spare calls no one until rebind()
}

void Exchange::recycle() {
  reset();
  snap_.reset();
  if (to_upstream_.capacity() > 16 * 1024) std::string().swap(to_upstream_);
}

void Exchange::log() {
  if (st_.started_ns == 0) return;
  uint64_t duration_ns = uv_hrtime() - st_.started_ns;
  if (st_.status != 0) {  // 0: the client left before any answer; nothing was sent
    RouteStats& route = snap_->route(listener_index_, st_.route_index, st_.cluster ? st_.cluster_index : SIZE_MAX);
    route.record(st_.status, duration_ns);
    if (st_.grpc && !st_.route_answers) {  // a route's own answer is the operator's, not gRPC's
      int code = st_.local_response ? grpc_status_of(st_.status, st_.error) : grpc_status_in(resp_);
      if (code >= 0 && !st_.broken) route.record_grpc(code);
    }
  }
  AccessLogBuffer& log = worker_.access_log();
  TapHub* tap = worker_.tapping();
  if (!log.enabled() && !tap) {
    st_.started_ns = 0;
    return;
  }
  AccessLogEntry e;
  e.listener = listener().name;
  if (st_.route_index != SIZE_MAX) e.route = listener().routes[st_.route_index].name;
  e.method = method_;
  e.authority = authority_;
  e.path = st_.target.path.empty() ? std::string_view(raw_target_) : std::string_view(st_.target.path);
  e.status = st_.status;
  e.duration_seconds = static_cast<double>(duration_ns) / 1e9;
  if (st_.cluster && st_.upstream.endpoint >= 0)
    e.upstream = cluster_state().pools[static_cast<size_t>(st_.upstream.endpoint)]->address().text;
  e.bytes_in = st_.bytes_in;
  e.bytes_out = st_.bytes_out;
  e.attempts = st_.upstream.attempts;
  e.error = st_.error;
  e.request_id = request_id_;
  e.trace_id = trace_.id();
  if (log.enabled()) log.record(e);
  if (tap) {
    if (st_.cluster) e.cluster = st_.cluster->name;
    e.peer = st_.peer_identity;
    // The path without its query or fragment (which may carry a token), also when refused
    // before routing; a target that is not a path (absolute-form may carry user:password) is
    // not shown.
    if (st_.target.path.empty())
      e.path = e.path.starts_with('/') ? e.path.substr(0, e.path.find_first_of("?#")) : std::string_view("-");
    tap->publish(e);
  }
  st_.started_ns = 0;
}

// ---------------------------------------------------------------------------------------------
// Attempts

void Exchange::send_body(const char* data, size_t length) {
  // Kept for a retry while it is small (as received: each attempt frames it its own way); a
  // larger body is sent once.
  // Over HTTP/2 any body is kept (within the limit): a stream the peer refuses unprocessed is
  // sent again whatever its method.
  if ((st_.upstream.replayable || st_.h2) && st_.has_body && st_.body_kept) {
    if (replay_.size() + length <= kMaxReplayBytes)
      replay_.append(data, length);
    else
      st_.upstream.replayable = false, st_.body_kept = false, replay_.clear(), replay_.shrink_to_fit();
  }
  if (st_.h2) {
    if (st_.mux && st_.stream >= 0)
      st_.mux->send_data(st_.stream, {data, length});
    else
      to_upstream_.append(data, length);
    return;
  }
  if (st_.body_chunked) {
    std::string chunk_head;
    append_chunk_header(chunk_head, length);
    send_upstream(chunk_head.data(), chunk_head.size());
    send_upstream(data, length);
    send_upstream("\r\n", 2);
    return;
  }
  send_upstream(data, length);
}

void Exchange::append_h1_body(std::string& out, std::string_view raw) {
  if (!st_.body_chunked) {
    out += raw;
    return;
  }
  if (!raw.empty()) {
    append_chunk_header(out, raw.size());
    out += raw;
    out += "\r\n";
  }
  if (st_.request_complete) out += last_chunk_;
}

void Exchange::overflow(BreakerLimit limit) {
  cluster_state().stats->breaker_overflow[static_cast<size_t>(limit)].add();
  answer(503, "overloaded", st_.has_body && !st_.request_complete);
}

void Exchange::start_attempt(bool fresh_connection) {
  ClusterState& cs = cluster_state();
  UpstreamRequest& up = st_.upstream;
  uint64_t now = uv_now(worker_.loop());
  if (!up.choose_endpoint(cs, now)) {
    answer(503, "no_healthy_upstream", st_.has_body && !st_.request_complete);
    return;
  }
  ++up.attempts;
  resp_.clear();
  response_.restart();
  bool was_h2 = st_.h2;
  st_.h2 = use_h2(*cs.pools[static_cast<size_t>(up.endpoint)]);
  if (st_.h2) {
    // The body so far waits in to_upstream_ as it came until the stream is open.
    if (up.sent || (!was_h2 && up.attempts > 1)) to_upstream_ = replay_;
    start_h2_attempt();
    return;
  }
  if (upstream_head_.empty()) render_http1_head(upstream_head_, h2_head_, h2_base_fields_);
  if (was_h2 && !up.sent) {
    // An HTTP/2 attempt that never got a stream (auto: the endpoint picked http/1.1): its body
    // so far is raw in to_upstream_.
    std::string raw;
    raw.swap(to_upstream_);
    append_attempt_head(to_upstream_, upstream_head_, up.attempts);
    st_.unsent_head_length = to_upstream_.size();
    append_h1_body(to_upstream_, raw);
    up.sent = false;
  } else
  // What this attempt sends: the head with its attempt number, then the body so far. A first
  // attempt's body is still arriving (send_body); a retry's was kept (replay_), unless nothing
  // was sent at all (a connect failure), when it is still in to_upstream_.
  if (up.attempts == 1 && !up.sent && to_upstream_.empty()) {
    // The common case, built in place: no copy of the head beyond this one.
    append_attempt_head(to_upstream_, upstream_head_, up.attempts);
    st_.unsent_head_length = to_upstream_.size();
  } else {
    std::string head;
    append_attempt_head(head, upstream_head_, up.attempts);
    if (!up.sent && !was_h2) {
      to_upstream_.replace(0, st_.unsent_head_length, head);
    } else {
      to_upstream_ = head;
      append_h1_body(to_upstream_, replay_);
    }
    st_.unsent_head_length = head.size();
  }
  up.sent = false;
  up.response_bytes_seen = false;
  st_.interim_responses = 0;
  BreakerLimit limit = BreakerLimit::connections;
  if (!up.lend_connection(cs, this, fresh_connection, &limit)) {
    overflow(limit);
    return;
  }
  if (st_.request_complete) {
    up.start_try_deadline(*st_.cluster, now);
    arm_upstream_timer();
  }
  if (up.connection_reused) on_upstream_connected(*up.connection.get());
}

void Exchange::endpoint_verdict(bool ok) {
  if (st_.cluster) st_.upstream.verdict(cluster_state(), *st_.cluster, ok, uv_now(worker_.loop()));
}

void Exchange::schedule_retry() {
  st_.upstream.try_deadline_ms = 0;  // that attempt is over
  // While the client is still sending its body (a connect failure), the retry is at once.
  uint64_t wait = st_.upstream.backoff_ms(*st_.cluster, worker_.random());
  if (wait == 0 || !st_.request_complete) {
    start_attempt();
    return;
  }
  st_.upstream.backoff_until_ms = uv_now(worker_.loop()) + wait;
  arm_upstream_timer();
}

void Exchange::arm_upstream_timer() {
  uint64_t next = st_.upstream.next_deadline_ms();
  if (next == 0) return;
  uint64_t now = uv_now(worker_.loop());
  owner_->exchange_timer(next > now ? next - now : 1);
}

AttemptScope Exchange::attempt_scope() {
  return {cluster_state(), *st_.cluster, uv_now(worker_.loop()), worker_.index(), st_.request_complete};
}

void Exchange::follow(const NextStep& next) {
  switch (next.kind) {
    case NextStep::pass: return;
    case NextStep::retry: schedule_retry(); return;
    case NextStep::resend: start_attempt(/*fresh_connection=*/true); return;  // another pooled one may be closing too
    case NextStep::answer: answer(next.status, next.error, st_.has_body && !st_.request_complete); return;
  }
}

void Exchange::send_upstream(const char* data, size_t length) {
  if (st_.upstream.connection && st_.upstream.connection->connected() && st_.upstream.sent)
    st_.upstream.connection->append({data, length});
  else
    to_upstream_.append(data, length);
}

size_t Exchange::upstream_pending() const {
  if (st_.mux) return to_upstream_.size() + (st_.stream >= 0 ? st_.mux->pending(st_.stream) : 0);
  return to_upstream_.size() + (st_.upstream.connection ? st_.upstream.connection->pending_bytes() : 0);
}

void Exchange::flush_upstream() {
  if (st_.mux) st_.mux->flush();
  if (st_.upstream.connection && st_.upstream.connection->connected()) st_.upstream.connection->flush();
  // A write that fails is seen by the connection's read side, which reports the end.
  if (!st_.tunnel && !st_.request_complete && !st_.local_response && upstream_pending() > Stream::kHighWater &&
      !st_.paused_for_upstream) {
    st_.paused_for_upstream = true;
    if (st_.mux && st_.stream >= 0) st_.mux->wait_drained(st_.stream);
    owner_->exchange_request_flow(false);
  }
}

void Exchange::tunnel_send(const char* data, size_t length) {
  send_upstream(data, length);
  if (st_.upstream.connection) st_.upstream.connection->flush();
  if (upstream_pending() > Stream::kHighWater && !st_.paused_for_upstream) {
    st_.paused_for_upstream = true;
    owner_->exchange_request_flow(false);
  }
}

void Exchange::wait_for_downstream() {
  bool was = st_.paused_for_downstream;
  st_.paused_for_downstream = true;
  owner_->exchange_downstream_blocked();
  // From now a stall is the client's, bounded by the listener's idle_timeout (on_timer): the
  // timer armed for the cluster's timeout may be due later than that.
  if (!was && st_.response_started && st_.cluster) {
    uint64_t idle = static_cast<uint64_t>(listener().idle_timeout.count());
    uint64_t timeout = static_cast<uint64_t>(st_.cluster->timeout.count());
    uint64_t ms = idle && timeout ? std::min(idle, timeout) : std::max(idle, timeout);
    if (ms) owner_->exchange_timer(ms);
  }
}

void Exchange::downstream_drained() {
  if (st_.paused_for_downstream && owner_->exchange_downstream_pending() < Stream::kLowWater) {
    st_.paused_for_downstream = false;
    if (st_.upstream.connection) st_.upstream.connection->start_read();
    if (st_.mux && st_.stream >= 0 && st_.unconsumed) {
      st_.mux->consume(st_.stream, st_.unconsumed);
      st_.unconsumed = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The upstream connection's events

void Exchange::on_upstream_connected(UpstreamConnection& from) {
  assert(st_.upstream.connection.holds(from) && st_.cluster);
  (void)from;
  st_.upstream.sent = true;
  st_.upstream.connection->append(to_upstream_);
  to_upstream_.clear();
  if (st_.upstream.connection->flush() != 0) return;
  if (st_.paused_for_upstream && upstream_pending() < Stream::kLowWater) {
    st_.paused_for_upstream = false;
    owner_->exchange_request_flow(true);
  }
}

void Exchange::on_upstream_connect_failed(UpstreamConnection& from, int status) {
  assert(st_.upstream.connection.holds(from) && st_.cluster);
  (void)from;
  st_.upstream.connection_lost();
  follow(st_.upstream.after_connect_failure(attempt_scope(), status));
  owner_->exchange_progress();
}

void Exchange::on_upstream_drained(UpstreamConnection& from) {
  assert(st_.upstream.connection.holds(from));
  (void)from;
  if (st_.paused_for_upstream && upstream_pending() < Stream::kLowWater) {
    st_.paused_for_upstream = false;
    owner_->exchange_request_flow(true);
  }
}

void Exchange::on_upstream_data(UpstreamConnection& from, char* data, size_t length) {
  // Only the connection lent to this request calls, and only while the request routed there
  // is in flight (a tunnel's request stays until the connection closes).
  assert(st_.upstream.connection.holds(from) && st_.cluster);
  (void)from;
  if (st_.tunnel) {
    st_.bytes_out += length;
    owner_->exchange_body({data, length});
    if (owner_->exchange_downstream_pending() > Stream::kHighWater && st_.upstream.connection) {
      wait_for_downstream();
      st_.upstream.connection->stop_read();
    }
    owner_->exchange_progress();
    return;
  }
  st_.upstream.response_bytes_seen = true;
  st_.last_progress_ms = uv_now(worker_.loop());
  using Outcome = Http1Decoder::Outcome;
  Outcome result = response_.execute(data, length);
  // Interim responses (100 Continue) pause too, so the next head is checked from its start.
  while (result.kind == Outcome::paused && !st_.response_complete && !st_.local_response && !st_.broken) {
    response_.resume();
    if (result.consumed >= length) {
      result = {Outcome::more, length, ""};
      break;
    }
    data += result.consumed;
    length -= result.consumed;
    result = response_.execute(data, length);
  }
  if (st_.broken) return;
  if (st_.after_response.kind != NextStep::pass && !st_.local_response) {
    NextStep next = st_.after_response;
    st_.after_response = {NextStep::pass};
    release_upstream(false);
    follow(next);
    owner_->exchange_progress();
    return;
  }
  if (result.kind == Outcome::upgrade && st_.tunnel) {
    enter_tunnel(data + result.consumed, length - result.consumed);
    return;
  }
  if (result.kind == Outcome::paused) {
    // The response is complete. Anything after it is a protocol violation by the upstream.
    bool extra = result.consumed < length;
    bool reusable = !extra && response_.keep_alive() && st_.request_complete;
    release_upstream(reusable);
  } else if (result.kind == Outcome::failed && !st_.local_response) {
    log_warn("cluster " + st_.cluster->name + ": invalid response from " +
             cluster_state().pools[static_cast<size_t>(st_.upstream.endpoint)]->address().text + ": " + result.reason);
    if (!st_.response_started) {
      cluster_state().stats->upstream_reset.add();
      endpoint_verdict(false);
    }
    release_upstream(false);
    if (!st_.response_started) {
      answer(502, "invalid_response", true);
    } else {
      st_.error = "invalid_response";
      break_off();
      owner_->exchange_progress();
      return;
    }
  }
  if (st_.upstream.connection && owner_->exchange_downstream_pending() > Stream::kHighWater) {
    wait_for_downstream();
    st_.upstream.connection->stop_read();
  }
  owner_->exchange_progress();
}

void Exchange::on_upstream_end(UpstreamConnection& from, int status) {
  assert(st_.upstream.connection.holds(from) && st_.cluster);
  (void)from;
  // The connection is closing itself; it is no longer ours.
  bool tls_refused = status == kUpstreamTlsFailed && !st_.upstream.response_bytes_seen;
  st_.upstream.connection_lost();
  if (st_.tunnel) {
    break_off();
    owner_->exchange_progress();
    return;
  }
  if (st_.response_started && !st_.response_complete && status == UV_EOF) {
    // A response delimited by the connection's close ends here.
    if (response_.finish() && st_.response_complete) {
      owner_->exchange_progress();
      return;
    }
  }
  if (st_.response_started) {
    st_.error = "upstream_reset";
    break_off();
    owner_->exchange_progress();
    return;
  }
  follow(st_.upstream.after_reset(attempt_scope(), tls_refused, st_.idempotent));
  owner_->exchange_progress();
}

// ---------------------------------------------------------------------------------------------
// The response

Step Exchange::on_response_head(ResponseHead&) {
  if (!response_head_acceptable(response_, resp_)) return Step::fail;
  int status = response_.status_code();
  resp_.status = status;
  if (status >= 200 || status == 101) cluster_state().stats->upstream_codes.add(status);
  if (status == 101) {
    // An upgrade nobody asked for, or one without Upgrade and Connection: upgrade, which the
    // decoder would not stop at: the tunnel's bytes would be read as responses.
    if (!st_.websocket || !response_.upgrade()) return Step::fail;
    endpoint_verdict(true);
    st_.upstream.retry_slot.release();
    st_.status = 101;
    st_.tunnel = true;
    owner_->exchange_head(resp_, true, false);
    return Step::go;
  }
  if (status < 200) {
    // Interim response (100 Continue, 103 Early Hints): passed on, the final one follows.
    // A few are normal; a stream of them is an upstream gone wrong.
    if (++st_.interim_responses > kMaxInterimResponses) return Step::fail;
    owner_->exchange_head(resp_, true, false);
    // It ends at its blank line, whatever its fields say (RFC 9112 6.3). llhttp would read a
    // body after a 1xx with Content-Length or chunked, and that body would reach the client
    // unframed: a response the upstream forged inside it, taken for this request's answer.
    return Step::skip_body;
  }
  // The final answer: the endpoint's verdict, and perhaps a retry instead of passing it on.
  st_.after_response = st_.upstream.after_response(attempt_scope(), status);
  if (st_.after_response.kind != NextStep::pass)
    return Step::fail;  // on_upstream_data drops this answer and its connection, and follows
  // `Keep-Alive: timeout=N`: the upstream closes idle connections after N s; this one is not
  // kept idle that long, so that no request is written to it as it closes.
  if (uint64_t idle = keep_alive_idle_limit_ms(resp_.fields); idle && st_.upstream.connection)
    st_.upstream.connection->set_idle_limit(idle);
  st_.status = status;
  bool no_body = st_.method_head || status == 204 || status == 304;
  st_.response_started = true;
  apply_response_rules(resp_);
  owner_->exchange_head(resp_, no_body, response_.has_content_length());
  // The answer is arriving; from now on the timeout guards against a stalled stream.
  owner_->exchange_timer(static_cast<uint64_t>(st_.cluster->timeout.count()));
  return no_body ? Step::skip_body : Step::go;
}

Step Exchange::on_response_body(std::string_view piece) {
  st_.bytes_out += piece.size();
  owner_->exchange_body(piece);
  return Step::go;
}

Step Exchange::on_response_message_complete(ResponseHead& head) {
  if (st_.tunnel) return Step::go;  // 101: the decoder stops for the upgrade itself
  if (!st_.response_started) return Step::pause;  // the end of an interim response
  if (!fields_valid(head.trailers)) return Step::fail;  // cut short: the client sees no last chunk
  st_.response_complete = true;
  owner_->exchange_end(head);
  return Step::pause;
}

void Exchange::enter_tunnel(const char* rest, size_t rest_length) {
  // From here both sides are bytes: what each side sent after its head goes to the other.
  st_.response_started = true;
  st_.response_complete = true;
  log();
  owner_->exchange_upgraded({rest, rest_length});
}

// ---------------------------------------------------------------------------------------------
// Deadlines

void Exchange::on_timer() {
  const Listener& l = listener();
  // Waiting for the client to take what is queued is the client's pace, bounded by the
  // listener's idle timeout; waiting for the upstream is bounded by the cluster's.
  uint64_t limit = st_.paused_for_downstream ? static_cast<uint64_t>(l.idle_timeout.count())
                                             : static_cast<uint64_t>(st_.cluster ? st_.cluster->timeout.count() : 0);
  uint64_t now = uv_now(worker_.loop());
  if (st_.response_started) {
    // A response is streaming: only a stall as long as the timeout ends it, where a stall
    // is no byte from the upstream and no byte taken by the client.
    if (now - st_.last_progress_ms < limit) {
      owner_->exchange_timer(limit - (now - st_.last_progress_ms));
      return;
    }
    st_.error = "upstream_stalled";
    break_off();
    owner_->exchange_progress();
    return;
  }
  if (st_.upstream.deadline_ms && now >= st_.upstream.deadline_ms) {
    if (!st_.upstream.stall_checked && now - st_.upstream.deadline_ms > kLoopStallMs) {
      // This timer is late: the worker itself was held up (and an answer may be waiting
      // unread in the socket). The I/O gets one turn of the loop before the verdict.
      st_.upstream.stall_checked = true;
      owner_->exchange_timer(1);
      return;
    }
    // The endpoint had the request when it is connected and nothing is left in
    // pilotfish's own queue for it.
    const UpstreamLease& c = st_.upstream.connection;
    bool had_it = st_.mux ? st_.stream >= 0 && st_.mux->pending(st_.stream) == 0
                          : c && c->connected() && c->pending_bytes() == 0;
    follow(st_.upstream.after_deadline(attempt_scope(), had_it));
    owner_->exchange_progress();
    return;
  }
  if (st_.upstream.backoff_until_ms && now >= st_.upstream.backoff_until_ms) {
    st_.upstream.backoff_until_ms = 0;
    if (st_.fault_abort)
      answer(st_.fault_abort, "fault_abort", st_.has_body && !st_.request_complete);
    else
      start_attempt();
    owner_->exchange_progress();
    return;
  }
  if (st_.upstream.try_deadline_ms && now >= st_.upstream.try_deadline_ms && attempt_active()) {
    release_upstream(false);
    follow(st_.upstream.after_try_timeout(attempt_scope()));
    owner_->exchange_progress();
    return;
  }
  arm_upstream_timer();
}

}  // namespace pilotfish
