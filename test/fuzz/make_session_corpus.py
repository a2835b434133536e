#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_session (test/fuzz/corpus/session/): one file per exchange.

The input format is described at the top of fuzz_session.cc: a control byte, the client's bytes,
then upstream scripts after "~~~~" separators, each with a flags byte first. Run it again after
changing a seed:  python3 test/fuzz/make_session_corpus.py
Files of the folder that this script does not write (regression inputs added by hand) are kept.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_http2_corpus as h2  # noqa: E402  (its hand-written frames)

SEP = b"~~~~"

# Control byte: bits 0-3 the client's write size (index into kPieces), bit 4 keep it open.
WHOLE = 0
PIECES = {1: 1, 2: 2, 3: 3, 5: 5, 10: 7, 16: 8, 40: 10, 100: 12}  # write size -> selector
KEEP_OPEN = 16

# Script flags.
EARLY, FIN, RESET, UNPROMPTED = 1, 2, 4, 128


def pieces(size):
    """Script flag bits for writes of `size` bytes."""
    return PIECES[size] << 3


def ctl(size=None, keep_open=False):
    return (PIECES[size] if size else WHOLE) | (KEEP_OPEN if keep_open else 0)


def get(path="/", host="app", extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def get_sized(size, prefix="/"):
    """A GET of exactly `size` bytes (its path padded), so that writes of that size split requests."""
    request = get(prefix)
    return get(prefix + "x" * (size - len(request)))


def ok(body=b"hi", extra=""):
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra.encode(), body)


def seed(control, client, *scripts):
    out = bytes([control]) + client
    for flags, body in scripts:
        out += SEP + bytes([flags]) + body
    return out


CHUNKED_BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
WS_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
WS_ACCEPT = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")

SEEDS = {
    "get": seed(ctl(), get(), (0, ok())),
    "get_split_response": seed(ctl(), get(), (pieces(1), ok(b"split into one-byte writes"))),
    "post_length": seed(ctl(5), b"POST /submit HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\nhello world",
                        (0, b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")),
    "post_chunked": seed(ctl(10), b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + CHUNKED_BODY,
                         (0, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")),
    "trailers_both_ways": seed(ctl(5), b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nContent-Length: 9\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
                               + get("/next"),
                               (pieces(3), b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nSet-Cookie: a=b\r\n\r\n"),
                               (0, ok(b"next"))),
    "pipelined": seed(ctl(), get("/a") + get("/b") + get("/c"),
                      (0, ok(b"a")), (0, ok(b"b")), (0, ok(b"c"))),
    "head": seed(ctl(), b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\n" + get("/after"),
                 (0, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"), (0, ok(b"after"))),
    "no_content_not_modified": seed(ctl(), get("/gone") + get("/cached", extra="If-None-Match: \"x\"\r\n"),
                                    (0, b"HTTP/1.1 204 No Content\r\n\r\n"),
                                    (0, b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n")),
    "expect_100": seed(ctl(16), b"PUT /file HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
                       (0, b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"stored"))),
    "expect_100_early": seed(ctl(3), b"PUT /file HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
                             (EARLY, b"HTTP/1.1 100 Continue\r\n\r\n")),
    "early_answer": seed(ctl(5), b"POST /big HTTP/1.1\r\nHost: app\r\nContent-Length: 30\r\n\r\n" + b"x" * 30,
                         (EARLY | FIN, b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")),
    "reset_mid_response": seed(ctl(), get(), (RESET, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")),
    "retry_503": seed(ctl(), get(), (0, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"),
                      (0, ok(b"second try"))),
    "retry_reset": seed(ctl(), get(), (RESET, b""), (0, ok(b"after a reset"))),
    "retry_exhausted": seed(ctl(), get(), (FIN, b""), (FIN, b""), (FIN, b"")),
    "keepalive_second_request": seed(ctl(40), get_sized(40, "/first") + get_sized(40, "/second"), (0, ok(b"one")), (0, ok(b"two"))),
    "keepalive_race": seed(ctl(40), get_sized(40, "/first") + get_sized(40, "/second"),
                           (0, ok(b"one")), (FIN, b""), (0, ok(b"two, on a fresh connection"))),
    "websocket": seed(ctl(), WS_REQUEST + b"\x81\x05hello", (0, WS_ACCEPT + b"\x81\x02hi")),
    "websocket_refused": seed(ctl(), WS_REQUEST, (0, ok(b"no upgrade here"))),
    # A 101 without Connection: upgrade: not an upgrade to the decoder, so never a tunnel.
    "websocket_101_without_connection": seed(ctl(), WS_REQUEST,
                                             (0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                                              b"\x81\x05hello")),
    "trailer_bare_lf": seed(ctl(), b"POST /a HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"3\r\nabc\r\n0\r\n\nGET /internal HTTP/1.1\r\nHost: app\r\n\r\n", (0, ok())),
    "bad_request": seed(ctl(), b"GET / HTTP/1.1\r\nHost: app\r\nNo colon here\r\n\r\n", (0, ok())),
    "smuggle_cl_te": seed(ctl(), b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n", (0, ok())),
    "bad_response": seed(ctl(), get(), (0, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello")),
    "response_after_response": seed(ctl(), get(), (0, ok(b"one") + ok(b"extra"))),
    "http10_close_delimited": seed(ctl(), b"GET / HTTP/1.0\r\n\r\n", (FIN, b"HTTP/1.0 200 OK\r\n\r\nuntil the close")),
    "unprompted": seed(ctl(), get(), (UNPROMPTED, ok(b"before the request"))),
    "dead_cluster": seed(ctl(), get("/dead/x")),
    # Routes that answer themselves: a body read and dropped, then the next request upstream.
    "direct_and_redirect": seed(ctl(), get("/direct/a") + b"POST /direct HTTP/1.1\r\nHost: app\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
                                get("/moved/x?q=%22<>") + b"HEAD /direct HTTP/1.1\r\nHost: app\r\n\r\n" + get("/after"),
                                (0, ok(b"after"))),
    # A route with a mirror: copies (one over its body limit, one chunked) go to the refusing
    # cluster on their own; the client sees only the primary's answers.
    "mirrored": seed(ctl(), get("/copy/a") + b"POST /copy/b HTTP/1.1\r\nHost: app\r\nContent-Length: 200\r\n\r\n" +
                     b"x" * 200 + b"PUT /copy/c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n", (0, ok(b"a")), (0, ok(b"b")), (0, ok(b"c"))),
    "local_replies": seed(ctl(), b"OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n"
                          b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 20000\r\n\r\n"),
    "header_too_large": seed(ctl(100), get(extra="x-big: " + "a" * 5000 + "\r\n"), (0, ok())),
    "no_host": seed(ctl(), b"GET / HTTP/1.1\r\n\r\n"),
    # Regression: an interim response ends at its blank line whatever its fields say (RFC 9112
    # 6.3); llhttp 8 reads a body after a 1xx with Content-Length, which the session passed on
    # unframed: here a forged 200 the client would take for the answer to /a.
    "interim_with_body": seed(ctl(), get("/a") + get("/b"),
                              (0, b"HTTP/1.1 103 Early Hints\r\ncontent-length: 38\r\n\r\n"
                                  b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" + ok(b"real a")),
                              (0, ok(b"b"))),
    "client_keeps_open": seed(ctl(keep_open=True), get("/a") + get("/b"),
                              (0, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
                              (0, ok(b"b"))),
}

# HTTP/2 clients (prior knowledge): the preface, then make_http2_corpus's hand-written frames.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_ANSWERS = [(0, ok()), (pieces(3), ok(b"second")), (0, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                                       b"2\r\nhi\r\n0\r\nx-t: 1\r\n\r\n")]
for name, frames in h2.SERVER.items():
    SEEDS["h2_" + name] = seed(ctl(), PREFACE + frames, *H2_ANSWERS)
SEEDS["h2_split_client"] = seed(ctl(5), PREFACE + h2.SERVER["two_streams_interleaved"], *H2_ANSWERS)
SEEDS["h2_dead_cluster"] = seed(ctl(), PREFACE + h2.SETTINGS_EMPTY + h2.frame(
    h2.HEADERS, h2.END_STREAM | h2.END_HEADERS, 1, h2.request(b"/dead/x")))
SEEDS["h2_direct"] = seed(ctl(), PREFACE + h2.SETTINGS_EMPTY + h2.frame(
    h2.HEADERS, h2.END_HEADERS, 1, h2.request(b"/direct/x", b"POST")) + h2.frame(h2.DATA, h2.END_STREAM, 1, b"body") +
    h2.frame(h2.HEADERS, h2.END_STREAM | h2.END_HEADERS, 3, h2.request(b"/moved/y?z=1")))
SEEDS["h2_upstream_reset"] = seed(ctl(keep_open=True), PREFACE + h2.SERVER["get"], (RESET, b""), (RESET, b""))
SEEDS["h2_early_answer"] = seed(ctl(keep_open=True), PREFACE + h2.SETTINGS_EMPTY + h2.frame(
    h2.HEADERS, h2.END_HEADERS, 1, h2.request(b"/up", b"POST")) + h2.frame(h2.DATA, 0, 1, b"part"), (EARLY, ok()))
SEEDS["h2_preface_split"] = seed(ctl(1), PREFACE + h2.SERVER["get"], (0, ok()))

# An HTTP/2 upstream (the /h2 cluster): its scripts are frames. The first goes at accept
# (UNPROMPTED), each other once pilotfish has sent it something since the last one.
H2_OK = h2.block([(b":status", b"200"), (b"content-type", b"text/plain")])


def h2_answer(stream, body=b"hi", head=H2_OK, trailers=None):
    out = h2.frame(h2.HEADERS, h2.END_HEADERS, stream, head)
    if trailers is None:
        return out + h2.frame(h2.DATA, h2.END_STREAM, stream, body)
    return out + h2.frame(h2.DATA, 0, stream, body) + h2.frame(h2.HEADERS, h2.END_STREAM | h2.END_HEADERS, stream,
                                                               h2.block(trailers))


H2_HELLO = [(UNPROMPTED, h2.SETTINGS_EMPTY), (0, h2.SETTINGS_ACK)]
SEEDS["h2up_get"] = seed(ctl(), get("/h2/a"), *H2_HELLO, (0, h2_answer(1)))
SEEDS["h2up_two_requests"] = seed(ctl(), get("/h2/a") + get("/h2/b"), *H2_HELLO,
                                  (0, h2_answer(1, b"a")), (0, h2_answer(3, b"b")))
SEEDS["h2up_trailers"] = seed(ctl(), get("/h2/t"), *H2_HELLO,
                              (0, h2_answer(1, b"x", trailers=[(b"grpc-status", b"0"), (b"x-sum", b"1")])))
SEEDS["h2up_refused_then_served"] = seed(ctl(), get("/h2/r"), *H2_HELLO,
                                         (0, h2.frame(h2.RST, 0, 1, b"\x00\x00\x00\x07")), (0, h2_answer(3)))
SEEDS["h2up_goaway_then_new_connection"] = seed(ctl(), get("/h2/g"), *H2_HELLO,
                                                (0, h2.frame(h2.GOAWAY, 0, 0, b"\x00" * 8)), *H2_HELLO,
                                                (0, h2_answer(1)))
SEEDS["h2up_field_with_crlf"] = seed(ctl(), get("/h2/x") + get("/h2/y"), *H2_HELLO,
                                     (0, h2_answer(1, head=h2.block([(b":status", b"200"),
                                                                     (b"x-bad", b"a\r\nset-cookie: b")]))),
                                     (0, h2_answer(3)))
SEEDS["h2up_interim_then_final"] = seed(ctl(), get("/h2/i"), *H2_HELLO,
                                        (0, h2.frame(h2.HEADERS, h2.END_HEADERS, 1, h2.block([(b":status", b"103")]))
                                         + h2_answer(1)))
SEEDS["h2up_chunked_post"] = seed(
    ctl(10), b"POST /h2/up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY,
    *H2_HELLO, (0, h2_answer(1)), (0, h2_answer(1)))
SEEDS["h2up_cut_mid_response"] = seed(ctl(), get("/h2/c"), *H2_HELLO,
                                      (RESET, h2.frame(h2.HEADERS, h2.END_HEADERS, 1, H2_OK) + h2.frame(h2.DATA, 0, 1, b"par")))


def main():
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "session")
    os.makedirs(folder, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {folder}")


if __name__ == "__main__":
    main()
