#!/usr/bin/env python3
"""A 1 GiB body streamed through pilotfish, upload and download, with pilotfish's RSS checked:
the body must not add more than 16 MiB (VmRSS sampled during the transfer, and VmHWM after).
The data is generated on the fly (a 1 MiB + 7 byte block repeated) and checked by CRC-32 on the
other side; nothing is held in memory or written to disk."""

import os
import re
import socket
import sys
import threading
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402

GIB = 1 << 30
RSS_LIMIT_KIB = 16 * 1024


class RssSampler:
    def __init__(self, pf, interval=0.05):
        self.pf = pf
        self.interval = interval
        self.max_kib = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.max_kib = max(self.max_kib, self.pf.rss_kib())
            except (OSError, AssertionError):
                return
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.thread.join(5)


def expected_crc(total, block):
    crc, left = 0, total
    while left > 0:
        take = min(left, len(block))
        crc = zlib.crc32(block[:take] if take < len(block) else block, crc)
        left -= take
    return crc


class LargeBodyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.block = up.pattern_block()
        cls.crc = expected_crc(GIB, cls.block)

    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up, listener={"body_timeout": "0"},
                                              cluster={"timeout": "120s"}))
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()
        # Warm up: a few requests, and 8 MiB each way, so that buffers and pools exist.
        for _ in range(3):
            self.assertEqual(h.request(self.port, "GET", "/warm").status, 200)
        self.upload(8 << 20)
        self.download(8 << 20)
        time.sleep(0.3)
        self.rss_before = self.pf.rss_kib()

    def tearDown(self):
        self.pf.stop_and_check(self)

    def upload(self, total):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        try:
            s.sendall(b"POST /sink HTTP/1.1\r\nHost: big\r\nContent-Length: %d\r\n\r\n" % total)
            mv = memoryview(self.block)
            left = total
            while left > 0:
                take = min(left, len(mv))
                s.sendall(mv[:take])
                left -= take
            c = h.Client.__new__(h.Client)
            c.sock, c.buf, c.eof, c.reset, c.timeout = s, bytearray(), False, False, 60
            return c.read_response(timeout=60)
        finally:
            s.close()

    def download(self, total, pause_after=None, pause_s=0):
        """(status, bytes received, crc) of GET /download?bytes=total, streamed."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        try:
            s.sendall(b"GET /download?bytes=%d HTTP/1.1\r\nHost: big\r\n\r\n" % total)
            head = b""
            while b"\r\n\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    raise AssertionError("closed before the response head")
                head += b
            head, rest = head.split(b"\r\n\r\n", 1)
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            self.assertIsNotNone(m, "a Content-Length response was expected: %r" % head)
            length = int(m.group(1))
            self.assertEqual(length, total)
            got, crc = len(rest), zlib.crc32(rest)
            buf = bytearray(1 << 20)
            paused = False
            while got < length:
                if pause_after is not None and not paused and got >= pause_after:
                    paused = True
                    time.sleep(pause_s)  # a slow reader: pilotfish must stop reading the upstream
                n = s.recv_into(buf)
                if not n:
                    break
                crc = zlib.crc32(memoryview(buf)[:n], crc)
                got += n
            return status, got, crc
        finally:
            s.close()

    def check_rss(self, sampler, what):
        after = self.pf.rss_kib()
        hwm = self.pf.rss_kib("VmHWM")
        peak = max(sampler.max_kib, after)
        msg = ("%s: pilotfish VmRSS before %d KiB, peak sampled %d KiB, after %d KiB, VmHWM %d KiB"
               % (what, self.rss_before, sampler.max_kib, after, hwm))
        print("\n  " + msg, file=sys.stderr)
        self.assertLess(after - self.rss_before, RSS_LIMIT_KIB, msg)
        self.assertLess(peak - self.rss_before, RSS_LIMIT_KIB, msg)
        self.assertLess(hwm - self.rss_before, RSS_LIMIT_KIB, msg)

    def test_1gib_upload(self):
        t0 = time.monotonic()
        with RssSampler(self.pf) as sampler:
            r = self.upload(GIB)
        elapsed = time.monotonic() - t0
        print("\n  upload 1 GiB: %.1fs" % elapsed, file=sys.stderr)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_len"], GIB)
        self.assertEqual(r.json()["body_crc"], self.crc, "the body arrived changed")
        self.check_rss(sampler, "upload")

    def test_1gib_download(self):
        t0 = time.monotonic()
        with RssSampler(self.pf) as sampler:
            status, got, crc = self.download(GIB)
        elapsed = time.monotonic() - t0
        print("\n  download 1 GiB: %.1fs" % elapsed, file=sys.stderr)
        self.assertEqual(status, 200)
        self.assertEqual(got, GIB)
        self.assertEqual(crc, self.crc, "the body arrived changed")
        self.check_rss(sampler, "download")

    def test_slow_reader_backpressure(self):
        # The client stops reading for 3s early in a 1 GiB download: pilotfish must apply
        # backpressure to the upstream instead of buffering what it cannot write.
        with RssSampler(self.pf) as sampler:
            status, got, crc = self.download(GIB, pause_after=4 << 20, pause_s=3)
        self.assertEqual(status, 200)
        self.assertEqual(got, GIB)
        self.assertEqual(crc, self.crc)
        self.check_rss(sampler, "slow reader")


if __name__ == "__main__":
    h.main()
