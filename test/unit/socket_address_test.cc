// parse_socket_address / parse_bind_address / format_sockaddr.

#include "pilotfish/socket_address.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

namespace pilotfish {
namespace {

SocketAddress parsed(const std::string& text) {
  std::string why;
  auto address = parse_socket_address(text, &why);
  EXPECT_TRUE(address.has_value()) << text << ": " << why;
  return address.value_or(SocketAddress{});
}

std::string why_not(const std::string& text) {
  std::string why;
  EXPECT_FALSE(parse_socket_address(text, &why).has_value()) << text;
  EXPECT_FALSE(why.empty()) << text;
  return why;
}

TEST(ParseSocketAddress, NumericIpv4) {
  SocketAddress a = parsed("10.0.1.7:15006");
  EXPECT_EQ(a.family(), AF_INET);
  EXPECT_EQ(a.port(), 15006);
  EXPECT_EQ(a.text, "10.0.1.7:15006");
  EXPECT_EQ(a.length, sizeof(sockaddr_in));
  const auto* sin = reinterpret_cast<const sockaddr_in*>(a.sa());
  EXPECT_EQ(ntohl(sin->sin_addr.s_addr), 0x0A000107u);
  EXPECT_EQ(parsed("0.0.0.0:1").port(), 1);
  EXPECT_EQ(parsed("255.255.255.255:65535").port(), 65535);
}

TEST(ParseSocketAddress, BracketedIpv6) {
  SocketAddress a = parsed("[::1]:15001");
  EXPECT_EQ(a.family(), AF_INET6);
  EXPECT_EQ(a.port(), 15001);
  EXPECT_EQ(a.text, "[::1]:15001");
  EXPECT_EQ(a.length, sizeof(sockaddr_in6));
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(a.sa());
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
  // Normalised, so two spellings of one address compare equal.
  EXPECT_EQ(parsed("[0:0:0:0:0:0:0:1]:80"), parsed("[::1]:80"));
  EXPECT_EQ(parsed("[2001:DB8::A]:443").text, "[2001:db8::a]:443");
  EXPECT_EQ(parsed("[::]:8080").text, "[::]:8080");
  EXPECT_EQ(parsed("[::ffff:10.0.0.1]:80").family(), AF_INET6);
}

TEST(ParseSocketAddress, LocalhostIsIpv4Loopback) {
  SocketAddress a = parsed("localhost:8080");
  EXPECT_EQ(a.family(), AF_INET);
  EXPECT_EQ(a.text, "127.0.0.1:8080");
}

TEST(ParseSocketAddress, RejectsPortsOutOfRange) {
  EXPECT_EQ(why_not("127.0.0.1:70000"), "port 70000 is out of range 1-65535");
  EXPECT_EQ(why_not("127.0.0.1:65536"), "port 65536 is out of range 1-65535");
  EXPECT_EQ(why_not("127.0.0.1:0"), "port 0 is out of range 1-65535");
  EXPECT_EQ(why_not("[::1]:0"), "port 0 is out of range 1-65535");
  EXPECT_NE(why_not("127.0.0.1:99999999999999999999999").find("out of range 1-65535"), std::string::npos);
}

TEST(ParseSocketAddress, RejectsNames) {
  EXPECT_EQ(why_not("foo:80"), "'foo:80' is not a numeric IPv4 or [IPv6] address");
  EXPECT_EQ(why_not("example.com:443"), "'example.com:443' is not a numeric IPv4 or [IPv6] address");
  EXPECT_EQ(why_not("[localhost]:80"), "'[localhost]:80' is not a numeric IPv4 or [IPv6] address");
}

TEST(ParseSocketAddress, RejectsMissingPort) {
  EXPECT_NE(why_not("127.0.0.1").find("missing :PORT"), std::string::npos);
  EXPECT_NE(why_not("127.0.0.1:").find("missing :PORT"), std::string::npos);
  EXPECT_NE(why_not("[::1]").find("missing :PORT"), std::string::npos);
  EXPECT_NE(why_not("[::1]:").find("missing :PORT"), std::string::npos);
  EXPECT_NE(why_not("localhost").find("missing :PORT"), std::string::npos);
}

TEST(ParseSocketAddress, RejectsOtherMalformedText) {
  EXPECT_NE(why_not("::1:80").find("in brackets"), std::string::npos);
  EXPECT_NE(why_not("[::1:80").find("closing ']'"), std::string::npos);
  EXPECT_NE(why_not("[::1]80").find("':PORT'"), std::string::npos);
  EXPECT_NE(why_not("127.0.0.1:http").find("is not a number"), std::string::npos);
  EXPECT_NE(why_not("127.0.0.1:-1").find("is not a number"), std::string::npos);
  EXPECT_NE(why_not("127.0.0.1: 80").find("is not a number"), std::string::npos);
  for (const char* text : {"", ":80", "[]:80", "1.2.3:80", "1.2.3.4.5:80", "256.0.0.1:80", " 1.2.3.4:80",
                           "[1.2.3.4]:80", "[fe80::1%eth0]:80", "1.2.3.4:80:90"}) {
    why_not(text);
  }
}

TEST(ParseSocketAddress, ErrorPointerMayBeNull) {
  EXPECT_FALSE(parse_socket_address("nope", nullptr).has_value());
  EXPECT_TRUE(parse_socket_address("1.2.3.4:5", nullptr).has_value());
}

TEST(ParseBindAddress, AcceptsPortZeroForTheKernelToPick) {
  std::string why;
  auto a = parse_bind_address("127.0.0.1:0", &why);
  ASSERT_TRUE(a.has_value()) << why;
  EXPECT_EQ(a->port(), 0);
  EXPECT_EQ(a->text, "127.0.0.1:0");
  ASSERT_TRUE(parse_bind_address("[::1]:0", &why).has_value());
  EXPECT_FALSE(parse_bind_address("127.0.0.1:70000", &why).has_value());
  EXPECT_EQ(why, "port 70000 is out of range 1-65535 (or 0 for any free port)");
}

TEST(FormatSockaddr, PrintsBothFamilies) {
  EXPECT_EQ(format_sockaddr(parsed("10.1.2.3:8080").sa()), "10.1.2.3:8080");
  EXPECT_EQ(format_sockaddr(parsed("[fe80::1]:443").sa()), "[fe80::1]:443");
  sockaddr_storage unknown{};
  unknown.ss_family = AF_UNIX;
  EXPECT_NE(format_sockaddr(reinterpret_cast<const sockaddr*>(&unknown)).find("unknown"), std::string::npos);
  EXPECT_EQ(format_sockaddr(nullptr), "(none)");
}

TEST(SocketAddressPort, ZeroForAnEmptyAddress) { EXPECT_EQ(SocketAddress{}.port(), 0); }

}  // namespace
}  // namespace pilotfish

namespace pilotfish {
namespace {

TEST(FormatIpv4, MatchesInetNtop) {
  // Every value of each byte position, with the others varied: the digit counts 1 to 3 and
  // every length from "0.0.0.0" to "255.255.255.255".
  const unsigned char others[] = {0, 1, 9, 10, 99, 100, 127, 199, 200, 255};
  for (int position = 0; position < 4; ++position)
    for (int v = 0; v < 256; ++v)
      for (unsigned char other : others) {
        unsigned char four[4] = {other, static_cast<unsigned char>(other ^ 0x5a), other, 255};
        four[position] = static_cast<unsigned char>(v);
        char expected[INET_ADDRSTRLEN];
        ASSERT_NE(inet_ntop(AF_INET, four, expected, sizeof expected), nullptr);
        char got[16];
        size_t n = format_ipv4(four, got);
        ASSERT_EQ(std::string(got, n), expected);
      }
}

}  // namespace
}  // namespace pilotfish
