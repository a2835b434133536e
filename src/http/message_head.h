#pragma once
// A message's head, whatever the protocol it came in.

#include <string>

#include "pilotfish/header_list.h"

namespace pilotfish {

// A message's head as a codec hands it over: whole, not in pieces, and the same for every
// protocol (http1_codec fills it from HTTP/1.1 bytes, http2_codec from an HTTP/2 stream's
// HEADERS). Its owner keeps it; a decoder empties it at each message's first byte and reuses
// its capacity.
struct RequestHead {
  std::string method;       // "GET"
  std::string target;       // the request-target as sent
  int version_major = 1;
  int version_minor = 1;
  HeaderList fields;
  HeaderList trailers;  // the trailer fields, complete at the message's end
  void clear() {
    method.clear();
    target.clear();
    fields.clear();
    trailers.clear();
  }
};

struct ResponseHead {
  int status = 0;
  std::string reason;  // as sent; never passed on (pilotfish writes its own)
  int version_major = 1;
  int version_minor = 1;
  HeaderList fields;
  HeaderList trailers;
  void clear() {
    status = 0;
    reason.clear();
    fields.clear();
    trailers.clear();
  }
};

}  // namespace pilotfish
