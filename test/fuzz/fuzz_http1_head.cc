// The request parser as the session drives it: the head scanner checks every byte of a head
// before llhttp (strict mode) sees it, over any split of the input into reads. Neither may
// crash, read out of bounds or disagree about where a head ends.
#include <llhttp.h>

#include <cstddef>
#include <cstdint>

#include "pilotfish/head_scanner.h"

namespace {

int on_message_complete(llhttp_t*) {
  return HPE_PAUSED;  // as the session does: one request at a time
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte chooses the read size, so the same bytes are tried in many splits.
  size_t chunk = 1 + data[0] % 64;
  const char* p = reinterpret_cast<const char*>(data + 1);
  size_t left = size - 1;
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_message_complete = on_message_complete;
  settings.on_message_begin = [](llhttp_t* parser) {
    static_cast<pilotfish::HeadScanner*>(parser->data)->reset();
    return 0;
  };
  llhttp_t parser;
  llhttp_init(&parser, HTTP_REQUEST, &settings);
  pilotfish::HeadScanner scanner;
  parser.data = &scanner;
  while (left > 0) {
    size_t n = left < chunk ? left : chunk;
    size_t offset = 0;
    while (offset < n) {
      size_t take = n - offset;
      if (scanner.in_head()) {
        size_t used = take;
        if (scanner.feed(p + offset, take, &used) == pilotfish::HeadScanner::Result::invalid) return 0;
        take = used;
      }
      llhttp_errno_t err = llhttp_execute(&parser, p + offset, take);
      if (err == HPE_PAUSED) {
        const char* pos = llhttp_get_error_pos(&parser);
        llhttp_resume(&parser);
        size_t done = pos && pos >= p + offset && pos <= p + offset + take ? static_cast<size_t>(pos - (p + offset)) : take;
        offset += done == 0 ? take : done;
        continue;
      }
      if (err != HPE_OK) return 0;
      offset += take;
    }
    p += n;
    left -= n;
  }
  return 0;
}
