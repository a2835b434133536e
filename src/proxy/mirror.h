#pragma once
// A route's mirror (routes[].mirror): a copy of a share of its requests goes to another cluster,
// fire and forget. The copy is the head the request goes upstream with (the route's header rules
// applied, pilotfish's own fields set), its Host with "-shadow" after the host name so the
// shadow can tell, and the body whole, with a content-length.
//
// It never delays, fails or slows the request it copies: the copy is collected beside the
// request as it arrives, and sent on its own on the loop's next turn once the request is all in;
// its answer is read and dropped. It is bounded: copies in flight to the cluster, from the
// request's head until the copy's answer (max_in_flight over every worker), the cluster's
// circuit breaker, and the body a copy may carry (max_body_bytes). A copy over a bound is
// dropped, never queued, and so is one whose request never completed or that pilotfish answered
// itself. The cluster's
// metrics (upstream_requests_total, outlier detection) see the copies as any other request;
// mirror_requests_total{cluster, result} counts them sent (answered), dropped and failed (no
// answer: refused, reset, timed out at the cluster's timeout). A copy is never retried.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "http/message_head.h"
#include "proxy/worker_context.h"

namespace pilotfish {

struct UpstreamHeadInput;

// The copy of one request, while the request comes in.
class MirrorCopy {
 public:
  // A copy of the request whose head `in` makes, for cluster `policy.cluster_index` of `snap`,
  // with a content-length when `has_length`; null (counted dropped) when max_in_flight copies
  // are in flight to the cluster already.
  static std::unique_ptr<MirrorCopy> make(SnapshotPtr snap, const MirrorPolicy& policy, const UpstreamHeadInput& in,
                                          bool has_length, bool idempotent, bool te_trailers);
  // Its place among the copies in flight goes back; one never sent (its request did not
  // complete, or its body was over the limit) counts as dropped.
  ~MirrorCopy();
  MirrorCopy(const MirrorCopy&) = delete;
  MirrorCopy& operator=(const MirrorCopy&) = delete;

  // A piece of the request's body; past max_body_bytes the copy is dropped (its body let go).
  void add_body(std::string_view piece);
  // The request is all in: the copy goes now, unless a bound says no. Consumes the copy.
  static void send(WorkerContext& worker, std::unique_ptr<MirrorCopy> copy);

 private:
  friend class Mirror;
  MirrorCopy(SnapshotPtr snap, const MirrorPolicy& policy, const UpstreamHeadInput& in, bool has_length, bool idempotent,
             bool te_trailers);
  ClusterState& cluster_state() const { return *snap_->clusters[cluster_]; }
  void count(MirrorResult result) const;

  SnapshotPtr snap_;
  size_t cluster_;
  uint64_t max_body_bytes_;
  bool has_length_;
  bool idempotent_;  // safe to send again after the keep-alive race
  bool te_trailers_;
  bool over_ = false;     // the body went past max_body_bytes
  bool counted_ = false;  // its result is counted
  RequestHead head_;      // without framing fields or the attempt's own
  std::string body_;
};

// "host-shadow[:port]" from a Host (or :authority) value "host[:port]": the copy's authority. An
// IP literal stays as it is ("10.0.0.1-shadow" is no address).
std::string shadow_authority(std::string_view host);

}  // namespace pilotfish
