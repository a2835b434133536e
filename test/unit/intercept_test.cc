#include <gtest/gtest.h>

#include <algorithm>

#include "intercept/iptables.h"
#include "proxy/intercept.h"
#include "pilotfish/policy_loader.h"

namespace pilotfish {
namespace {

Policy load(const std::string& text) {
  auto r = load_policy_text(text, "policy.yaml", ".");
  EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].to_string());
  return r.ok() ? *r.policy : Policy{};
}

const char* kMesh = R"(version: 1
admin: {address: 127.0.0.1:9901}
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    intercept: inbound
    routes: [{cluster: app}]
  - name: outbound
    address: 127.0.0.1:15001
    intercept: outbound
    routes: [{cluster: web}]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
  - name: web
    endpoints: [10.0.0.2:8080]
    vips: [10.96.0.10:80]
)";

std::vector<std::string> lines(const std::vector<IptablesCommand>& plan) {
  std::vector<std::string> out;
  for (const auto& c : plan) out.push_back(c.text());
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& line) {
  return std::find(v.begin(), v.end(), line) != v.end();
}

TEST(Iptables, RedirectsBothDirectionsAndExcludesItsOwnTraffic) {
  IptablesOptions o;
  o.uid = 1337;
  o.ipv6 = false;
  std::string err;
  auto plan = lines(iptables_apply_plan(load(kMesh), o, &err));
  ASSERT_FALSE(plan.empty()) << err;
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_INBOUND -p tcp --dport 9901 -j RETURN"));  // admin
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_INBOUND -p tcp --dport 15006 -j RETURN"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_OUTPUT -o lo -j RETURN"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PREROUTING -p tcp -j PILOTFISH_INBOUND"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A OUTPUT -p tcp -j PILOTFISH_OUTPUT"));
  // The uid rule comes before the redirect, or pilotfish would redirect itself.
  auto uid = std::find(plan.begin(), plan.end(), "iptables -t nat -A PILOTFISH_OUTPUT -m owner --uid-owner 1337 -j RETURN");
  auto redirect = std::find(plan.begin(), plan.end(), "iptables -t nat -A PILOTFISH_OUTPUT -p tcp -j PILOTFISH_OUT_REDIRECT");
  EXPECT_LT(uid, redirect);
  for (const auto& l : plan) EXPECT_EQ(l.rfind("ip6tables", 0), std::string::npos) << l;  // --ipv4-only
}

TEST(Iptables, RefusesWhatWouldLeaveTrafficAroundTheSidecar) {
  IptablesOptions o;
  std::string err;
  // IPv4-only listeners without --ipv4-only: IPv6 would bypass the sidecar.
  EXPECT_TRUE(iptables_apply_plan(load(kMesh), o, &err).empty());
  EXPECT_NE(err.find("--ipv4-only"), std::string::npos) << err;
  // An inbound listener on loopback never sees redirected traffic.
  std::string text = kMesh;
  text.replace(text.find("0.0.0.0:15006"), 13, "127.0.0.1:15006");
  o.ipv6 = false;
  EXPECT_TRUE(iptables_apply_plan(load(text), o, &err).empty());
  EXPECT_NE(err.find("bind it to 0.0.0.0"), std::string::npos) << err;
}

TEST(Iptables, Ipv6ForAnIpv6ListenerAndPortLists) {
  std::string text = kMesh;
  text.replace(text.find("0.0.0.0:15006"), 13, "\"[::]:15006\"");
  text.replace(text.find("127.0.0.1:15001"), 15, "\"[::]:15001\"");
  IptablesOptions o;
  o.uid = 1000;
  std::string err;
  ASSERT_TRUE(parse_port_list("22,8000-8010", &o.exclude_inbound_ports, &err)) << err;
  ASSERT_TRUE(parse_port_list("53", &o.exclude_outbound_ports, &err)) << err;
  auto plan = lines(iptables_apply_plan(load(text), o, &err));
  EXPECT_TRUE(has(plan, "ip6tables -t nat -A PILOTFISH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_INBOUND -p tcp --dport 8000:8010 -j RETURN"));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_OUTPUT -p tcp --dport 53 -j RETURN"));
  EXPECT_TRUE(has(plan, "ip6tables -t nat -A PILOTFISH_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
  EXPECT_TRUE(has(plan, "ip6tables -t nat -A PILOTFISH_OUTPUT -d ::1/128 -j RETURN"));
  o.inbound_ports.clear();
  ASSERT_TRUE(parse_port_list("8080", &o.inbound_ports, &err));
  plan = lines(iptables_apply_plan(load(text), o, &err));
  EXPECT_TRUE(has(plan, "iptables -t nat -A PILOTFISH_INBOUND -p tcp --dport 8080 -j PILOTFISH_IN_REDIRECT"));
  EXPECT_FALSE(has(plan, "iptables -t nat -A PILOTFISH_INBOUND -p tcp -j PILOTFISH_IN_REDIRECT"));
}

TEST(Iptables, RefusesWithoutUidOrInterceptListener) {
  std::string err;
  IptablesOptions o;
  EXPECT_EQ(o.uid, 1337);  // the image's user
  o.uid = -1;
  EXPECT_TRUE(iptables_apply_plan(load(kMesh), o, &err).empty());
  EXPECT_NE(err.find("--uid"), std::string::npos);
  o.uid = 0;
  o.ipv6 = false;
  Policy plain = load("version: 1\nlisteners: [{name: l, address: 127.0.0.1:1, routes: [{cluster: c}]}]\n"
                      "clusters: [{name: c, endpoints: [127.0.0.1:2]}]\n");
  EXPECT_TRUE(iptables_apply_plan(plain, o, &err).empty());
  EXPECT_NE(err.find("intercept"), std::string::npos);
}

TEST(Iptables, PortListsAreValidated) {
  std::vector<PortRange> r;
  std::string err;
  EXPECT_FALSE(parse_port_list("0", &r, &err));
  EXPECT_FALSE(parse_port_list("70000", &r, &err));
  EXPECT_FALSE(parse_port_list("80,", &r, &err));
  EXPECT_FALSE(parse_port_list("90-80", &r, &err));
  EXPECT_FALSE(parse_port_list("http", &r, &err));
  r.clear();
  EXPECT_TRUE(parse_port_list("80,443,1000-2000", &r, &err));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[2].text(), "1000:2000");
}

TEST(Iptables, CleanRemovesOnlyItsOwnChainsAndJumps) {
  for (const auto& c : iptables_clean_plan(true)) {
    std::string t = c.text();
    EXPECT_NE(t.find("PILOTFISH_"), std::string::npos) << t;
    EXPECT_EQ(t.find(" -F PREROUTING"), std::string::npos);
    EXPECT_EQ(t.find(" -F OUTPUT"), std::string::npos);
  }
}

TEST(Intercept, DetectsHttp1RequestLines) {
  auto d = [](const std::string& s) { return detect_http1(s.data(), s.size()); };
  EXPECT_EQ(d("GET / HTTP/1.1\r\n"), Detected::yes);
  EXPECT_EQ(d("POST "), Detected::yes);
  EXPECT_EQ(d("OPTIONS * HTTP/1.1"), Detected::yes);
  EXPECT_EQ(d("G"), Detected::more);
  EXPECT_EQ(d("DELE"), Detected::more);
  EXPECT_EQ(d(""), Detected::more);
  EXPECT_EQ(d("hello\n"), Detected::no);
  EXPECT_EQ(d("\x16\x03\x01"), Detected::no);  // a TLS ClientHello
  EXPECT_EQ(d("GETX / HTTP/1.1"), Detected::no);
  EXPECT_EQ(d("get / HTTP/1.1"), Detected::no);
}

TEST(Intercept, OnlyAFewEmptyLinesMayComeFirst) {
  auto d = [](const std::string& s) { return detect_http1(s.data(), s.size()); };
  EXPECT_EQ(d("\r\nGET / HTTP/1.1\r\n"), Detected::yes);
  EXPECT_EQ(d("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n"), Detected::yes);  // 8 bytes: allowed
  EXPECT_EQ(d("\r\n\r\n"), Detected::more);
  EXPECT_EQ(d("\r\n\r\n\r\n\r\n\r"), Detected::no);  // 9: a flood, not a request
  // However much of it there is, the answer is decided by a bounded prefix.
  std::string flood(1 << 20, '\n');
  EXPECT_EQ(d(flood), Detected::no);
}

TEST(Intercept, OriginalDestinationPicksTheTarget) {
  Policy p = load(kMesh);
  std::string err;
  auto addr = [&](const char* t) { return *parse_socket_address(t, &err); };
  const Listener& in = p.listeners[0];
  const Listener& out = p.listeners[1];
  InterceptTarget t = intercept_target(p, out, addr("10.96.0.10:80"));
  EXPECT_EQ(t.kind, InterceptTarget::Kind::cluster);
  EXPECT_EQ(t.cluster, "web");
  t = intercept_target(p, out, addr("10.96.0.99:80"));
  EXPECT_EQ(t.kind, InterceptTarget::Kind::address);
  EXPECT_EQ(t.address.text, "10.96.0.99:80");
  p.listeners[1].passthrough = false;
  EXPECT_EQ(intercept_target(p, p.listeners[1], addr("10.96.0.99:80")).kind, InterceptTarget::Kind::refuse);
  t = intercept_target(p, in, addr("10.0.0.5:8080"));
  EXPECT_EQ(t.kind, InterceptTarget::Kind::cluster);
  EXPECT_EQ(t.cluster, "app");
  t = intercept_target(p, in, addr("10.0.0.5:9000"));
  EXPECT_EQ(t.kind, InterceptTarget::Kind::address);
  EXPECT_EQ(t.address.text, "127.0.0.1:9000");
}

}  // namespace
}  // namespace pilotfish
