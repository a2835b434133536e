#include "pilotfish/header_rules.h"

#include <gtest/gtest.h>

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
