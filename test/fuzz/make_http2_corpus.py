#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_http2 (test/fuzz/corpus/http2/): one file per exchange.

The first byte: bit 0 the role (0: the codec is a server and the rest follows the client
preface; 1: the codec is a client with a request open and the rest is the server's frames),
bits 1-3 how the bytes are cut into reads. Frames are written by hand (HPACK literals without
indexing), so that seeds can be malformed on purpose. Run it again after changing a seed:
python3 test/fuzz/make_http2_corpus.py
"""
import os
import struct

DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    """An HPACK literal field without indexing, new name (RFC 7541 6.2.2), lengths < 127."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def block(fields):
    return b"".join(literal(n, v) for n, v in fields)


def request(path=b"/", method=b"GET", extra=()):
    return block([(b":method", method), (b":scheme", b"http"), (b":authority", b"a"), (b":path", path), *extra])


SETTINGS_EMPTY = frame(SETTINGS, 0, 0)
SETTINGS_ACK = frame(SETTINGS, ACK, 0)

SERVER = {
    "get": SETTINGS_EMPTY + frame(HEADERS, END_STREAM | END_HEADERS, 1, request()),
    "post_with_trailers": SETTINGS_EMPTY + frame(HEADERS, END_HEADERS, 1, request(b"/up", b"POST"))
    + frame(DATA, 0, 1, b"hello") + frame(HEADERS, END_STREAM | END_HEADERS, 1, block([(b"x-checksum", b"1")])),
    "two_streams_interleaved": SETTINGS_EMPTY + frame(HEADERS, END_HEADERS, 1, request(b"/1", b"POST"))
    + frame(HEADERS, END_HEADERS, 3, request(b"/3", b"POST")) + frame(DATA, 0, 3, b"three")
    + frame(DATA, END_STREAM, 1, b"one") + frame(DATA, END_STREAM, 3, b""),
    "continuation": SETTINGS_EMPTY + frame(HEADERS, END_STREAM, 1, request()[:10])
    + frame(CONTINUATION, END_HEADERS, 1, request()[10:]),
    "connection_field": SETTINGS_EMPTY
    + frame(HEADERS, END_STREAM | END_HEADERS, 1, request(extra=[(b"connection", b"close")])),
    "host_mismatch": SETTINGS_EMPTY + frame(HEADERS, END_STREAM | END_HEADERS, 1, request(extra=[(b"host", b"b")])),
    "cookies": SETTINGS_EMPTY
    + frame(HEADERS, END_STREAM | END_HEADERS, 1, request(extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])),
    "rapid_reset": SETTINGS_EMPTY + b"".join(
        frame(HEADERS, END_STREAM | END_HEADERS, i, request()) + frame(RST, 0, i, struct.pack(">I", 8))
        for i in range(1, 40, 2)),
    "ping_settings": SETTINGS_EMPTY + SETTINGS_ACK + frame(PING, 0, 0, b"12345678")
    + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    "content_length_mismatch": SETTINGS_EMPTY
    + frame(HEADERS, END_HEADERS, 1, request(b"/", b"POST", [(b"content-length", b"10")]))
    + frame(DATA, END_STREAM, 1, b"short"),
    "too_large": SETTINGS_EMPTY + frame(HEADERS, END_HEADERS, 1, request(extra=[(b"x-big", b"b" * 120)] * 40)[:16000])
    + frame(DATA, END_STREAM, 1, b"dropped"),
}

RESPONSE = block([(b":status", b"200"), (b"content-type", b"text/plain")])
CLIENT = {
    "response": SETTINGS_EMPTY + frame(HEADERS, END_HEADERS, 1, RESPONSE) + frame(DATA, END_STREAM, 1, b"body"),
    "interim_then_final": SETTINGS_EMPTY + frame(HEADERS, END_HEADERS, 1, block([(b":status", b"103")]))
    + frame(HEADERS, END_HEADERS, 1, RESPONSE) + frame(DATA, 0, 1, b"x")
    + frame(HEADERS, END_STREAM | END_HEADERS, 1, block([(b"grpc-status", b"0")])),
    "refused": SETTINGS_EMPTY + frame(RST, 0, 1, struct.pack(">I", 7)),
    "goaway": SETTINGS_EMPTY + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "http2")
    os.makedirs(out, exist_ok=True)
    for name, body in SERVER.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([0]) + body)
    for name, body in CLIENT.items():
        with open(os.path.join(out, "client_" + name), "wb") as f:
            f.write(bytes([1 | (3 << 1)]) + body)
    print(len(SERVER) + len(CLIENT), "seeds in", out)


if __name__ == "__main__":
    main()
