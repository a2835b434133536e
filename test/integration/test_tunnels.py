#!/usr/bin/env python3
"""Byte tunnels: a WebSocket echo through an HTTP listener (Upgrade -> 101 -> tunnel), and
`protocol: tcp` listeners proxying bytes both ways, including half-close."""

import base64
import hashlib
import os
import socket
import struct
import sys
import threading
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402


def read_frame(c, timeout=5.0):
    """(fin, opcode, payload) of one unmasked server frame from a harness Client."""
    deadline = time.monotonic() + timeout
    hdr = c._exact(2, deadline)
    fin, opcode = bool(hdr[0] & 0x80), hdr[0] & 0x0F
    masked, n = hdr[1] & 0x80, hdr[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", c._exact(2, deadline))[0]
    elif n == 127:
        n = struct.unpack(">Q", c._exact(8, deadline))[0]
    assert not masked, "server frames must not be masked"
    return fin, opcode, c._exact(n, deadline)


class WebSocketTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up))
        self.addCleanup(self.pf.kill)
        # Cleanups run last-in first-out: the clients a test opens close before this SIGTERM, so
        # the drain does not wait for open tunnels.
        self.addCleanup(self.pf.stop_and_check, self)

    def handshake(self):
        c = h.Client(self.pf.port(), timeout=10)
        self.addCleanup(c.close)
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(h.build_request("GET", "/ws", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")]))
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 101, r)
        self.assertEqual((r.header("upgrade") or "").lower(), "websocket")
        self.assertIn("upgrade", (r.header("connection") or "").lower())
        expected = base64.b64encode(hashlib.sha1(key.encode() + up.WS_GUID).digest()).decode()
        self.assertEqual(r.header("sec-websocket-accept"), expected)
        return c

    def test_websocket_echo(self):
        c = self.handshake()
        req = self.up.requests()[-1]
        names = {n.lower(): v for n, v in req["headers"]}
        self.assertEqual(names.get("upgrade", "").lower(), "websocket",
                         "the WebSocket Upgrade must reach the upstream: %s" % req["headers"])
        self.assertIn("sec-websocket-key", names)

        for text in (b"hello", b"", b"x" * 125, b"y" * 126, b"z" * 70000):
            c.send(up.ws_frame(0x1, text, mask=os.urandom(4)))
            fin, op, payload = read_frame(c)
            self.assertEqual((fin, op), (True, 0x1))
            self.assertEqual(payload, text)

        blob = up.pattern_block()[:300000]
        c.send(up.ws_frame(0x2, blob, mask=os.urandom(4)))
        fin, op, payload = read_frame(c)
        self.assertEqual(op, 0x2)
        self.assertEqual(zlib.crc32(payload), zlib.crc32(blob))

        c.send(up.ws_frame(0x9, b"ping!", mask=os.urandom(4)))
        self.assertEqual(read_frame(c)[1:], (0xA, b"ping!"))

        # Several frames in one write, and a frame split across writes.
        c.send(b"".join(up.ws_frame(0x1, b"m%d" % i, mask=b"abcd") for i in range(10)))
        for i in range(10):
            self.assertEqual(read_frame(c)[2], b"m%d" % i)
        f = up.ws_frame(0x1, b"split-frame", mask=b"wxyz")
        for i in range(len(f)):
            c.send(f[i:i + 1])
            time.sleep(0.002)
        self.assertEqual(read_frame(c)[2], b"split-frame")

        c.send(up.ws_frame(0x8, struct.pack(">H", 1000), mask=os.urandom(4)))
        fin, op, payload = read_frame(c)
        self.assertEqual(op, 0x8)
        self.assertTrue(c.is_closed(3), "the tunnel closes when the upstream closes")
        self.assertEqual(self.up.stats()["ws_frames"], 5 + 1 + 1 + 10 + 1 + 1)

    def test_websocket_tunnel_outlives_idle_request_state(self):
        c = self.handshake()
        c.send(up.ws_frame(0x1, b"first", mask=b"1234"))
        self.assertEqual(read_frame(c)[2], b"first")
        time.sleep(0.5)
        c.send(up.ws_frame(0x1, b"second", mask=b"1234"))
        self.assertEqual(read_frame(c)[2], b"second")

    def test_several_websockets_at_once(self):
        clients = [self.handshake() for _ in range(5)]
        for i, c in enumerate(clients):
            c.send(up.ws_frame(0x1, b"conn-%d" % i, mask=b"abcd"))
        for i, c in enumerate(clients):
            self.assertEqual(read_frame(c)[2], b"conn-%d" % i)


class TcpListenerTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("tcpecho")
        self.addCleanup(self.up.stop)
        policy = {
            "version": 1, "workers": 2, "access_log": "off", "admin": {"address": "127.0.0.1:0"},
            "listeners": [{"name": "db", "address": "127.0.0.1:0", "protocol": "tcp",
                           "routes": [{"cluster": "echo"}]}],
            "clusters": [{"name": "echo", "endpoints": [self.up.address]}],
        }
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)
        self.addCleanup(self.pf.stop_and_check, self)  # after the test's sockets are closed
        self.port = self.pf.port("db")

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(s.close)
        return s

    @staticmethod
    def recv_exact(s, n):
        out = bytearray()
        while len(out) < n:
            b = s.recv(min(1 << 20, n - len(out)))
            if not b:
                raise AssertionError("closed after %d of %d bytes" % (len(out), n))
            out += b
        return bytes(out)

    @staticmethod
    def recv_all(s):
        out = bytearray()
        while True:
            b = s.recv(65536)
            if not b:
                return bytes(out)
            out += b

    def test_bytes_both_ways(self):
        s = self.connect()
        data = bytes(range(256)) * 4 + b"GET / HTTP/1.1\r\n\r\n" + b"\x00\xff"
        s.sendall(data)
        self.assertEqual(self.recv_exact(s, len(data)), data)
        s.sendall(b"more")
        self.assertEqual(self.recv_exact(s, 4), b"more")

    def test_half_close_still_gets_reply(self):
        s = self.connect()
        s.sendall(b"ping")
        self.assertEqual(self.recv_exact(s, 4), b"ping")
        s.shutdown(socket.SHUT_WR)
        rest = self.recv_all(s)
        self.assertEqual(rest, b"EOF after 4 bytes\n",
                         "after the client shuts down writing, the upstream's reply must still arrive")

    def test_half_close_without_reading_first(self):
        s = self.connect()
        s.sendall(b"abcdef")
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(self.recv_all(s), b"abcdef" + b"EOF after 6 bytes\n")

    def test_large_stream_both_ways_at_once(self):
        s = self.connect()
        block = up.pattern_block()
        total = 8 * len(block)
        crc_sent = 0
        for _ in range(8):
            crc_sent = zlib.crc32(block, crc_sent)
        err = []

        def sender():
            try:
                for _ in range(8):
                    s.sendall(block)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got, crc = 0, 0
        tail = bytearray()
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            if got < total:
                take = min(len(b), total - got)
                crc = zlib.crc32(b[:take], crc)
                tail += b[take:]
                got += take
            else:
                tail += b
        t.join(10)
        self.assertEqual(err, [])
        self.assertEqual(got, total)
        self.assertEqual(crc, crc_sent)
        self.assertEqual(bytes(tail), b"EOF after %d bytes\n" % total)

    def test_concurrent_connections(self):
        socks = [self.connect() for _ in range(6)]
        for i, s in enumerate(socks):
            s.sendall(b"conn-%d;" % i)
        for i, s in enumerate(socks):
            self.assertEqual(self.recv_exact(s, len(b"conn-%d;" % i)), b"conn-%d;" % i)
        self.assertEqual(self.up.stats()["connections"], 6)


class TcpDeadUpstreamTest(unittest.TestCase):
    def test_dead_upstream_closes_client(self):
        policy = {
            "version": 1, "workers": 1, "access_log": "off", "admin": {"address": "127.0.0.1:0"},
            "listeners": [{"name": "db", "address": "127.0.0.1:0", "protocol": "tcp",
                           "routes": [{"cluster": "gone"}]}],
            "clusters": [{"name": "gone", "endpoints": ["127.0.0.1:%d" % h.free_port()]}],
        }
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        s = socket.create_connection(("127.0.0.1", pf.port("db")), timeout=5)
        self.addCleanup(s.close)
        try:
            s.sendall(b"hello")
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"", "a tcp connection to a dead cluster is closed")
        s.close()
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
