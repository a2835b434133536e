#include "intercept/iptables.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>

namespace pilotfish {

namespace {

constexpr const char* kInbound = "PILOTFISH_INBOUND";
constexpr const char* kInboundRedirect = "PILOTFISH_IN_REDIRECT";
constexpr const char* kOutbound = "PILOTFISH_OUTPUT";
constexpr const char* kOutboundRedirect = "PILOTFISH_OUT_REDIRECT";

const Listener* interceptor(const Policy& policy, Intercept which) {
  for (const auto& l : policy.listeners)
    if (l.intercept == which) return &l;
  return nullptr;
}

bool quote_needed(const std::string& s) {
  for (char c : s)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/' || c == ':' ||
          c == ','))
      return true;
  return s.empty();
}

}  // namespace

std::string PortRange::text() const {
  return first == last ? std::to_string(first) : std::to_string(first) + ":" + std::to_string(last);
}

std::string IptablesCommand::text() const {
  std::string out = program;
  for (const auto& a : args) {
    out += ' ';
    if (quote_needed(a)) out += "'" + a + "'";
    else out += a;
  }
  return out;
}

bool parse_port_list(const std::string& text, std::vector<PortRange>* out, std::string* error) {
  auto parse_port = [](const std::string& s, uint16_t* port) {
    if (s.empty() || s.size() > 5) return false;
    for (char c : s)
      if (c < '0' || c > '9') return false;
    long v = std::strtol(s.c_str(), nullptr, 10);
    if (v < 1 || v > 65535) return false;
    *port = static_cast<uint16_t>(v);
    return true;
  };
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    PortRange r;
    size_t dash = item.find('-');
    bool ok = dash == std::string::npos ? parse_port(item, &r.first) && (r.last = r.first, true)
                                        : parse_port(item.substr(0, dash), &r.first) &&
                                              parse_port(item.substr(dash + 1), &r.last) && r.first <= r.last;
    if (!ok) {
      *error = "'" + item + "' is not a port (1-65535) or a range of ports (8000-8010)";
      return false;
    }
    out->push_back(r);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return true;
}

std::vector<IptablesCommand> iptables_clean_plan(bool ipv6) {
  std::vector<IptablesCommand> out;
  for (const char* program : {"iptables", "ip6tables"}) {
    if (!ipv6 && std::string(program) == "ip6tables") continue;
    auto cmd = [&](std::vector<std::string> args) { out.push_back({program, std::move(args)}); };
    cmd({"-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", kInbound});
    cmd({"-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", kOutbound});
    for (const char* chain : {kInbound, kInboundRedirect, kOutbound, kOutboundRedirect}) {
      cmd({"-t", "nat", "-F", chain});
      cmd({"-t", "nat", "-X", chain});
    }
  }
  return out;
}

std::vector<IptablesCommand> iptables_apply_plan(const Policy& policy, const IptablesOptions& options,
                                                 std::string* error) {
  const Listener* in = interceptor(policy, Intercept::inbound);
  const Listener* out_listener = interceptor(policy, Intercept::outbound);
  if (!in && !out_listener) {
    *error = "the policy has no listener with intercept: inbound or intercept: outbound";
    return {};
  }
  if (options.uid < 0) {
    *error = "--uid is required: the uid pilotfish runs as, whose own connections are not redirected";
    return {};
  }
  // REDIRECT in PREROUTING sends to the address of the interface the packet came in on: an
  // inbound listener on loopback would refuse every redirected connection.
  if (in && is_loopback(in->address)) {
    *error = "listener " + in->name + " (intercept: inbound) is bound to " + in->address.text +
             "; redirected traffic arrives at the pod's address: bind it to 0.0.0.0 or [::]";
    return {};
  }
  // IPv6 left out silently would go around the sidecar (no mTLS, no auth) on a dual-stack pod.
  if (options.ipv6) {
    for (const Listener* l : {in, out_listener}) {
      if (l && l->address.family() != AF_INET6) {
        *error = "listener " + l->name + " is IPv4-only (" + l->address.text +
                 "), so IPv6 traffic would not be intercepted: bind it to an IPv6 address such as \"[::]:" +
                 std::to_string(l->address.port()) + "\" (which takes IPv4 too), or pass --ipv4-only";
        return {};
      }
    }
  }
  std::vector<IptablesCommand> plan;
  for (const char* program : {"iptables", "ip6tables"}) {
    bool v6 = std::string(program) == "ip6tables";
    if (v6 && !options.ipv6) continue;
    auto cmd = [&](std::vector<std::string> args) {
      std::vector<std::string> full = {"-t", "nat"};
      full.insert(full.end(), args.begin(), args.end());
      plan.push_back({program, std::move(full)});
    };
    // IPv6 traffic is redirected only to a listener that can take it (bound to an IPv6
    // address such as [::], which takes IPv4 as well); otherwise IPv6 is left alone rather than
    // sent to a port nothing listens on.
    bool in_here = in && (!v6 || in->address.family() == AF_INET6);
    bool out_here = out_listener && (!v6 || out_listener->address.family() == AF_INET6);
    if (in_here) {
      std::string port = std::to_string(in->address.port());
      cmd({"-N", kInboundRedirect});
      cmd({"-A", kInboundRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port});
      cmd({"-N", kInbound});
      // What is never redirected: the admin ports (probes, scrapes) and pilotfish's own listeners.
      std::vector<std::string> own = {std::to_string(policy.admin_address.port())};
      if (policy.admin_read_only_address) own.push_back(std::to_string(policy.admin_read_only_address->port()));
      for (const auto& l : policy.listeners) own.push_back(std::to_string(l.address.port()));
      for (const auto& p : own) cmd({"-A", kInbound, "-p", "tcp", "--dport", p, "-j", "RETURN"});
      for (const auto& r : options.exclude_inbound_ports)
        cmd({"-A", kInbound, "-p", "tcp", "--dport", r.text(), "-j", "RETURN"});
      if (options.inbound_ports.empty()) {
        cmd({"-A", kInbound, "-p", "tcp", "-j", kInboundRedirect});
      } else {
        for (const auto& r : options.inbound_ports)
          cmd({"-A", kInbound, "-p", "tcp", "--dport", r.text(), "-j", kInboundRedirect});
      }
      cmd({"-A", "PREROUTING", "-p", "tcp", "-j", kInbound});
    }
    if (out_here) {
      std::string port = std::to_string(out_listener->address.port());
      cmd({"-N", kOutboundRedirect});
      cmd({"-A", kOutboundRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port});
      cmd({"-N", kOutbound});
      // pilotfish's own connections (to endpoints, to the app) go where they are addressed.
      cmd({"-A", kOutbound, "-m", "owner", "--uid-owner", std::to_string(options.uid), "-j", "RETURN"});
      // Loopback: the app talking to itself or to its sidecar directly.
      cmd({"-A", kOutbound, "-o", "lo", "-j", "RETURN"});
      cmd({"-A", kOutbound, "-d", v6 ? "::1/128" : "127.0.0.0/8", "-j", "RETURN"});
      for (const auto& r : options.exclude_outbound_ports)
        cmd({"-A", kOutbound, "-p", "tcp", "--dport", r.text(), "-j", "RETURN"});
      cmd({"-A", kOutbound, "-p", "tcp", "-j", kOutboundRedirect});
      cmd({"-A", "OUTPUT", "-p", "tcp", "-j", kOutbound});
    }
  }
  return plan;
}

}  // namespace pilotfish
