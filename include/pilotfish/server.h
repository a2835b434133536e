#pragma once
// The process: loads the policy, starts the workers, handles signals, drains, exits.

#include <string>

#include "pilotfish/policy.h"
#include "pilotfish/socket_address.h"

namespace pilotfish {

struct RunOptions {
  std::string config_path;
  int workers_override = -1;       // from --workers; -1 = use the policy
  std::string log_level_override;  // from --log-level; empty = use the policy
};

// Runs until SIGTERM/SIGINT and a drain. Returns the process exit code: 0 after a clean drain,
// 1 when the policy does not load or a listener cannot bind.
int run_server(const RunOptions& options);

// Polls GET /ready at `admin` every 100 ms until it answers 200 (exit code 0) or `timeout`
// passes (1, with the last answer on stderr).
int wait_ready(const SocketAddress& admin, Duration timeout, const std::string& path = "/ready");
// `pilotfish top`: the golden signals of every route (GET /stats?format=table), redrawn every
// second until interrupted (a sidecar that does not answer is waited for), or printed once (1
// when the sidecar does not answer).
int top(const SocketAddress& admin, bool once);
// `pilotfish tap`: GET /tap?`query` streamed, a line per request for a person (colour on a
// terminal), or with `json` the sidecar's JSON lines; `count` (0: no end) requests, then 0.
// 1 when the sidecar refuses the tap or ends it first.
int tap(const SocketAddress& admin, const std::string& query, long count, bool json);
// `pilotfish drain`: POST /drain to a running sidecar (a preStop hook); 0 once it drains.
int request_drain(const SocketAddress& admin);

}  // namespace pilotfish
