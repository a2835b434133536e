#pragma once
// `pilotfish iptables`: the nat rules that send a pod's TCP through its sidecar, made from the
// policy (the listeners marked `intercept: inbound` / `intercept: outbound` and the admin
// address), as istio-init and linkerd's proxy-init do. Everything lives in pilotfish's own chains,
// reached by one jump each from PREROUTING and OUTPUT, so --clean removes exactly what --apply
// added and nothing else.
//
// Inbound: TCP arriving at the pod (PREROUTING) goes to the inbound listener, except the admin
// port, the listeners' own ports and excluded ports (or only the included ports).
// Outbound: TCP the pod's processes open (OUTPUT) goes to the outbound listener, except
// pilotfish's own (by uid: no loops), traffic to loopback (the app talking to itself, and the
// sidecar delivering to the app), and excluded ports.

#include <cstdint>
#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

// A port or an inclusive range of ports.
struct PortRange {
  uint16_t first = 0, last = 0;
  std::string text() const;  // "80" or "8000:8010", as iptables' --dport takes it
};

struct IptablesOptions {
  long uid = 1337;                           // pilotfish's uid (the image's user by default)
  std::vector<PortRange> inbound_ports;      // empty: every port
  std::vector<PortRange> exclude_inbound_ports;
  std::vector<PortRange> exclude_outbound_ports;
  bool ipv6 = true;                          // also ip6tables
};

// One command: the program ("iptables" or "ip6tables") and its arguments.
struct IptablesCommand {
  std::string program;
  std::vector<std::string> args;
  std::string text() const;  // as a shell line
};

// The commands that add the rules (after removing any left by an earlier apply). Empty and
// *error when the policy has no intercept listener or the options are invalid.
std::vector<IptablesCommand> iptables_apply_plan(const Policy& policy, const IptablesOptions& options,
                                                 std::string* error);
// The commands that remove them; each may fail harmlessly when there is nothing to remove.
std::vector<IptablesCommand> iptables_clean_plan(bool ipv6);

// Parses "80,443,8000-8010" (appending to *out); false and *error on a bad list.
bool parse_port_list(const std::string& text, std::vector<PortRange>* out, std::string* error);

}  // namespace pilotfish
