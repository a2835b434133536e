#pragma once
// What may pass between client, proxy and upstream: header syntax checks that the HTTP/1.1
// parser (http/http1_codec) leaves to us, hop-by-hop removal, and the Connection header's tokens.

#include <string>
#include <string_view>

#include "pilotfish/header_list.h"

namespace pilotfish {

// RFC 9110 token characters.
bool is_token(std::string_view s);
// A field value may hold HTAB, SP, visible ASCII and obs-text; never CR, LF, NUL or other
// control characters. This also rejects obs-fold, which reaches us as CR LF inside a value.
bool is_valid_field_value(std::string_view s);
// Host header: reg-name / IPv4 / [IPv6] with an optional :port; no userinfo, no spaces.
bool is_valid_host(std::string_view s);
// Lower-cased host without the port and without a trailing dot ("admin.local." names the same
// host as "admin.local", and upstreams treat it so), for routing.
std::string host_for_routing(std::string_view host);

// Field names equal without regard to case and with '_' taken as '-': CGI-style servers
// (wsgiref, PHP, many frameworks) read "X_Sub" and "X-Sub" as one header, so a header that
// pilotfish sets is removed from requests in either spelling.
bool same_field_name_folded(std::string_view a, std::string_view b);

// The lower-cased tokens of every Connection header, comma-separated in one string (",a,b,"):
// is_hop_by_hop reads them.
std::string connection_tokens(const HeaderList& headers);

// Hop-by-hop headers (RFC 9110 7.6.1) plus those the Connection header names: never forwarded.
// Content-Length and Host cannot be named away: they frame and route the message.
bool is_hop_by_hop(std::string_view name, const std::string& connection_tokens);

}  // namespace pilotfish
