#pragma once
// The memory nghttp2 asks for, recycled per thread.
//
// A session allocates on every stream and frame: the stream, each outbound frame, the copied
// header pairs of each HEADERS it sends, each header field it decodes into its HPACK table. With
// a hundred streams opening and closing at once on each connection, those bursts overflow the C
// library's small per-thread caches, and malloc and free took about an eighth of an HTTP/2 proxy's
// user time. Here blocks up to 2 KiB are kept in per-thread lists by size class (steps of half a
// power of two) and handed out again; each class keeps at most 128 KiB, so what a burst leaves
// is bounded (1.6 MiB per thread). Larger blocks (a session's own, once per connection) go
// straight to malloc. Under AddressSanitizer a kept block is poisoned, so a use
// after nghttp2 freed it is still caught.

#include <nghttp2/nghttp2.h>

namespace pilotfish {

// The allocator for nghttp2_session_server_new3 and client_new3.
nghttp2_mem* http2_memory();

}  // namespace pilotfish
