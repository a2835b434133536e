#include "pilotfish/header_rules.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

using namespace pilotfish;

TEST(HeaderRules, Tokens) {
  EXPECT_TRUE(is_token("Content-Length"));
  EXPECT_TRUE(is_token("x-custom_1.2~"));
  EXPECT_FALSE(is_token(""));
  EXPECT_FALSE(is_token("Host "));  // whitespace before the colon
  EXPECT_FALSE(is_token("a:b"));
  EXPECT_FALSE(is_token("a b"));
}

TEST(HeaderRules, FieldValues) {
  EXPECT_TRUE(is_valid_field_value("text/html; q=0.9\tx"));
  EXPECT_TRUE(is_valid_field_value("caf\xc3\xa9"));  // obs-text is allowed
  EXPECT_FALSE(is_valid_field_value(std::string("a\0b", 3)));
  EXPECT_FALSE(is_valid_field_value("a\r\n b"));  // obs-fold
  EXPECT_FALSE(is_valid_field_value("a\nb"));
  EXPECT_FALSE(is_valid_field_value("a\x7f"));
  EXPECT_FALSE(is_valid_field_value("a\x01"));
}

TEST(HeaderRules, Hosts) {
  EXPECT_TRUE(is_valid_host("example.com"));
  EXPECT_TRUE(is_valid_host("example.com:8080"));
  EXPECT_TRUE(is_valid_host("10.0.0.1:80"));
  EXPECT_TRUE(is_valid_host("[::1]:15001"));
  EXPECT_TRUE(is_valid_host("[::1]"));
  EXPECT_FALSE(is_valid_host(""));
  EXPECT_FALSE(is_valid_host("a b"));
  EXPECT_FALSE(is_valid_host("user@host"));
  EXPECT_FALSE(is_valid_host("host:"));
  EXPECT_FALSE(is_valid_host("host:80a"));
  EXPECT_FALSE(is_valid_host("host/path"));
  EXPECT_FALSE(is_valid_host("[::1"));
  EXPECT_EQ(host_for_routing("Recommendations:8080"), "recommendations");
  EXPECT_EQ(host_for_routing("[::1]:80"), "[::1]");
  EXPECT_EQ(host_for_routing("users"), "users");
}

TEST(HeaderRules, HopByHopIncludesConnectionTokens) {
  HeaderList h;
  h.add("Connection", "keep-alive, X-Secret");
  h.add("connection", "Upgrade");
  h.add("X-Secret", "1");
  h.add("X-Public", "2");
  std::string tokens = connection_tokens(h);
  EXPECT_TRUE(is_hop_by_hop("Connection", tokens));
  EXPECT_TRUE(is_hop_by_hop("Keep-Alive", tokens));
  EXPECT_TRUE(is_hop_by_hop("Transfer-Encoding", tokens));
  EXPECT_TRUE(is_hop_by_hop("TE", tokens));
  EXPECT_TRUE(is_hop_by_hop("Upgrade", tokens));
  EXPECT_TRUE(is_hop_by_hop("Proxy-Connection", tokens));
  EXPECT_TRUE(is_hop_by_hop("x-secret", tokens));
  EXPECT_FALSE(is_hop_by_hop("X-Public", tokens));
  EXPECT_FALSE(is_hop_by_hop("Host", tokens));
  EXPECT_FALSE(is_hop_by_hop("x-secre", tokens));
  EXPECT_FALSE(is_hop_by_hop("secret", tokens));
  EXPECT_FALSE(is_hop_by_hop("x-secret2", tokens));
  EXPECT_TRUE(is_hop_by_hop("Trailer", tokens));
  EXPECT_TRUE(is_hop_by_hop("PROXY-AUTHENTICATE", tokens));
  EXPECT_TRUE(is_hop_by_hop("Proxy-Authorization", tokens));
  EXPECT_TRUE(is_hop_by_hop("te", ""));
  EXPECT_FALSE(is_hop_by_hop("x-secret", ""));
  EXPECT_FALSE(is_hop_by_hop("tf", tokens));
  EXPECT_FALSE(is_hop_by_hop("", tokens));
}

TEST(HeaderRules, ConnectionCannotStripFraming) {
  HeaderList h;
  h.add("Connection", "content-length, host, x-a");
  std::string tokens = connection_tokens(h);
  EXPECT_FALSE(is_hop_by_hop("Content-Length", tokens));
  EXPECT_FALSE(is_hop_by_hop("Host", tokens));
  EXPECT_TRUE(is_hop_by_hop("X-A", tokens));
}

TEST(HeaderList, PiecesAndEmptyValues) {
  HeaderList h;
  h.append_name("Con");
  h.append_name("tent-Type");
  h.append_value("text/");
  h.append_value("plain");
  h.end_header();
  h.append_name("X-Empty");
  h.end_header();
  h.append_name("Host");
  h.append_value("a");
  h.end_header();
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h.name(0), "Content-Type");
  EXPECT_EQ(h.value(0), "text/plain");
  EXPECT_EQ(h.name(1), "X-Empty");
  EXPECT_EQ(h.value(1), "");
  EXPECT_EQ(h.value(2), "a");
  EXPECT_EQ(h.find("host"), 2u);
  EXPECT_EQ(h.count("x-empty"), 1u);
  h.clear();
  EXPECT_EQ(h.size(), 0u);
}

TEST(HeaderRules, NamesFoldUnderscoreAndCase) {
  EXPECT_TRUE(same_field_name_folded("X_Forwarded_Client_Cert", "x-forwarded-client-cert"));
  EXPECT_TRUE(same_field_name_folded("x-sub", "x_sub"));
  EXPECT_TRUE(same_field_name_folded("X_SUB", "x-sub"));
  EXPECT_FALSE(same_field_name_folded("x-sub2", "x-sub"));
  EXPECT_FALSE(same_field_name_folded("x.sub", "x-sub"));
}

TEST(HeaderRules, RoutingHostDropsATrailingDot) {
  EXPECT_EQ(host_for_routing("Admin.Local."), "admin.local");
  EXPECT_EQ(host_for_routing("admin.local.:8080"), "admin.local");
  EXPECT_EQ(host_for_routing("admin.local"), "admin.local");
  EXPECT_EQ(host_for_routing("[::1]:80"), "[::1]");
}

// is_valid_field_value and iequals_same_size look at eight bytes at a time: the same answers
// as the plain byte-by-byte rules, on random strings of every length up to 40 made of the bytes
// where those rules change (controls, tab, space, DEL, the letters' edges, 0x80 and above).
namespace word_checks {

bool value_ok_bytewise(std::string_view s) {
  for (unsigned char c : s)
    if (c != '\t' && (c < 0x20 || c == 0x7f)) return false;
  return true;
}

bool iequals_bytewise(std::string_view a, std::string_view b) {
  auto low = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; };
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (low(a[i]) != low(b[i])) return false;
  return true;
}

TEST(HeaderWordChecks, SameAsByteByByteOnRandomStrings) {
  static const unsigned char kBytes[] = {0x00, 0x01, 0x08, '\t', '\n', '\r', 0x1f, ' ', '!', '?', '@', 'A', 'M',
                                         'Z', '[', '_', '`', 'a', 'm', 'z', '{', '~', 0x7f, 0x80, 0xc0, 0xc1,
                                         0xda, 0xdb, 0xe0, 0xe1, 0xfa, 0xff, '-', '0', '9'};
  std::mt19937 rng(18);
  auto pick = [&] { return static_cast<char>(kBytes[rng() % sizeof kBytes]); };
  for (int round = 0; round < 200000; ++round) {
    size_t n = rng() % 41;
    std::string a(n, '\0');
    bool clean = rng() % 2;  // half of them printable but for the odd byte, so that both answers come up
    for (char& c : a) c = clean && rng() % 16 ? static_cast<char>('a' + rng() % 26) : pick();
    ASSERT_EQ(is_valid_field_value(a), value_ok_bytewise(a)) << testing::PrintToString(a);
    std::string b = a;
    for (char& c : b) {
      unsigned r = rng() % 8;
      if (r == 0 && c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
      else if (r == 1 && c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      else if (r == 2 && rng() % 8 == 0) c = pick();
    }
    ASSERT_EQ(iequals(a, b), iequals_bytewise(a, b)) << testing::PrintToString(a) << " " << testing::PrintToString(b);
    ASSERT_TRUE(iequals(a, a));
  }
}

}  // namespace word_checks
