#!/usr/bin/env python3
"""Mutual TLS with real handshakes and certificates this file makes (harness.Pki):

- inbound `mtls: true` listeners: a verified peer gets through with x-forwarded-client-cert and
  x-forwarded-proto: https (a client's own XFCC never reaches the app); refused handshakes (no
  client certificate, another CA, expired, two URI SANs, no URI SAN, serverAuth-only EKU,
  TLS 1.0/1.1, an ALPN list with neither h2 nor http/1.1) count as failed and reach no upstream; allow lists on http (403
  peer_not_allowed) and tcp listeners (closed before any upstream connect); a handshake that
  never completes is closed within header_timeout;
- interop with curl and openssl s_client;
- two sidecars: plain client -> A (cluster mtls) -> B (mtls listener) -> app, with one pooled
  upstream handshake, then resumed sessions; a server identity A does not expect gets a 503
  upstream_tls_failure;
- a `protocol: tcp` mtls listener tunnelling bytes to a plain TCP upstream."""

import hashlib
import json
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def sid(name):
    return "spiffe://test.local/ns/test/sa/" + name


def cert_sha256(path):
    """Lowercase hex sha256 of a PEM certificate's DER encoding."""
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def stop_checked(pf):
    """pf.stop_and_check for tearDownClass (no TestCase at hand)."""
    rc = pf.stop()
    full = pf.log(last=1 << 30)
    assert rc == 0, "pilotfish exit code %s after SIGTERM:\n%s" % (rc, pf.log())
    for bad in ("handles still open", "ERROR: AddressSanitizer", "runtime error:"):
        assert bad not in full, "%r in the log:\n%s" % (bad, full)


def tls_count(pf, direction, result):
    v = h.sample(h.metrics(pf), "pilotfish_tls_handshakes_total", direction=direction, result=result)
    assert v is not None, "no pilotfish_tls_handshakes_total{direction=%s,result=%s}" % (direction, result)
    return int(v)


def tls_counts(pf):
    m = h.metrics(pf)
    out = {}
    for d in ("inbound", "outbound"):
        for r in ("ok", "failed"):
            v = h.sample(m, "pilotfish_tls_handshakes_total", direction=d, result=r)
            assert v is not None, "no pilotfish_tls_handshakes_total{direction=%s,result=%s}" % (d, r)
            out[d, r] = int(v)
        v = h.sample(m, "pilotfish_tls_sessions_resumed_total", direction=d)
        assert v is not None, "no pilotfish_tls_sessions_resumed_total{direction=%s}" % d
        out[d, "resumed"] = int(v)
    return out


def authz_denied(pf, listener):
    v = h.sample(h.metrics(pf), "pilotfish_authz_denied_total", listener=listener)
    assert v is not None, "no pilotfish_authz_denied_total{listener=%s}" % listener
    return int(v)


def client_ctx(ca, cert=None, key=None, alpn=("http/1.1",), minimum=None, maximum=None):
    """A client context that verifies the server's chain against `ca`, without a host name
    check (the certificates carry only a URI SAN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


class TlsClient(h.Client):
    """harness.Client over TLS (the handshake happens in the constructor)."""

    def __init__(self, port, ctx, timeout=5.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="server.test")
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.error = None
        self.timeout = timeout

    def _fill(self, deadline, n=65536):
        if self.eof:
            return False
        if not self.sock.pending():
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.Timeout()
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                raise h.Timeout()
        try:
            data = self.sock.recv(n)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            self.eof = True
            self.reset = True
            self.error = e
            return False
        except socket.timeout:
            raise h.Timeout()
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True


class TlsPipe:
    """A TLS client on memory BIOs over a blocking socket, so that it can send close_notify and
    still read what the server sends afterwards (a TLS half-close)."""

    def __init__(self, port, ctx, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="server.test")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                if not self._pull():
                    raise ConnectionError("closed during the handshake")
        self._push()

    def _push(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _pull(self):
        data = self.sock.recv(65536)
        if data:
            self.inc.write(data)
        else:
            self.inc.write_eof()
        return bool(data)

    def write(self, data):
        self.obj.write(data)
        self._push()

    def read_exact(self, n):
        got = bytearray()
        while len(got) < n:
            try:
                chunk = self.obj.read(n - len(got))
                if not chunk:  # the server's close_notify
                    raise ConnectionError("closed (close_notify) after %d of %d bytes" % (len(got), n))
                got += chunk
            except ssl.SSLWantReadError:
                if not self._pull():
                    raise AssertionError("closed after %d of %d bytes" % (len(got), n))
        return bytes(got)

    def close_write_and_read_rest(self):
        """Sends close_notify, then reads until the server's end: (bytes, "close_notify" or
        "eof" (a TCP close without close_notify))."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._push()
        rest = bytearray()
        while True:
            try:
                rest += self.obj.read(65536)
            except ssl.SSLWantReadError:
                if not self._pull():
                    return bytes(rest), "eof"
            except ssl.SSLZeroReturnError:
                return bytes(rest), "close_notify"
            except ssl.SSLEOFError:
                return bytes(rest), "eof"

    def close(self):
        self.sock.close()


def tls_attempt(port, ctx, target="/refused", timeout=5.0):
    """Tries a TLS connection and one request. Returns (stage, detail): ("handshake", error)
    when the handshake raised, ("closed", error or None) when the request got no response
    (TLS 1.3: a client learns that its certificate was refused only after its side of the
    handshake is done), or ("response", Response)."""
    try:
        c = TlsClient(port, ctx, timeout)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError) as e:
        return "handshake", e
    try:
        try:
            c.send(h.build_request("GET", target))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return "closed", e
        try:
            return "response", c.read_response("GET", timeout)
        except h.Closed:
            return "closed", c.error
    finally:
        c.close()


def client_hello(ca):
    """The bytes of a real ClientHello (made by Python's ssl module on memory BIOs)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(ca).wrap_bio(inc, out, server_hostname="server.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100, data[:20]
    return data


def run(args, stdin=None, timeout=20):
    r = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


class Certs:
    """One CA and the workload certificates the tests use."""

    def __init__(self):
        self.dir = h.make_tmpdir("pf-mtls-")
        self.pki = h.Pki(os.path.join(self.dir, "pki"))
        self.ca = self.pki.cert
        leaf = self.pki.leaf
        self.server = leaf("server", uris=[sid("server")])
        self.a = leaf("a", uris=[sid("a")])
        self.b = leaf("b", uris=[sid("b")])
        self.c = leaf("c", uris=[sid("c")])
        self.orders = leaf("orders-eu", uris=[sid("orders-eu")])
        self.expired = leaf("expired", uris=[sid("a")], days=-1)
        self.two_uris = leaf("two-uris", uris=[sid("a"), sid("a2")])
        self.no_uri = leaf("no-uri", uris=[])
        self.server_only = leaf("server-only", uris=[sid("a")], eku="serverAuth")
        rogue = h.Pki(os.path.join(self.dir, "rogue"), name="rogue-ca")
        self.rogue = rogue.leaf("a", uris=[sid("a")])

    def identity(self, pair):
        return {"cert": pair[0], "key": pair[1], "ca": self.ca}


# ---------------------------------------------------------------------------------------------
# Inbound: one sidecar with mtls listeners in front of an echo app and a TCP echo
# ---------------------------------------------------------------------------------------------

class InboundTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = Certs()
        cls.app = h.Upstream("echo", name="app")
        cls.tcp = h.Upstream("tcpecho", name="tcp")
        route = [{"cluster": "app"}]
        policy = {
            "version": 1, "service": "server", "workers": 1, "access_log": "off", "log_level": "debug",
            "identity": cls.certs.identity(cls.certs.server),
            "listeners": [
                {"name": "open", "address": "127.0.0.1:0", "mtls": True, "routes": route},
                {"name": "guarded", "address": "127.0.0.1:0", "mtls": True,
                 "allow": [sid("a"), sid("orders-*")], "routes": route},
                {"name": "slowhs", "address": "127.0.0.1:0", "mtls": True, "header_timeout": "500ms",
                 "routes": route},
                {"name": "tunnel", "address": "127.0.0.1:0", "protocol": "tcp", "mtls": True,
                 "allow": [sid("a")], "routes": [{"cluster": "tcp"}]},
                {"name": "plain", "address": "127.0.0.1:0", "routes": route},
            ],
            "clusters": [{"name": "app", "endpoints": [cls.app.address]},
                         {"name": "tcp", "endpoints": [cls.tcp.address]}],
        }
        try:
            cls.pf = h.Pilotfish(policy)
        except BaseException:
            cls.app.stop()
            cls.tcp.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            stop_checked(cls.pf)
        finally:
            cls.pf.kill()
            cls.app.stop()
            cls.tcp.stop()

    def ctx(self, pair=None, **kw):
        pair = pair or self.certs.a
        return client_ctx(self.certs.ca, pair[0], pair[1], **kw)

    def app_requests(self):
        return len(self.app.requests())

    # -- 1 -------------------------------------------------------------------------------------
    def test_verified_peer_gets_xfcc_and_https(self):
        before = tls_counts(self.pf)
        with TlsClient(self.pf.port("open"), self.ctx()) as c:
            self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
            # The server's chain was verified by the client against the CA; its URI SAN is
            # the sidecar's identity.
            peer = c.sock.getpeercert()
            self.assertIn(("URI", sid("server")), peer.get("subjectAltName", ()), peer)
            r = c.request("GET", "/one", headers=[("X-Forwarded-Client-Cert", "By=spiffe://evil;URI=spiffe://evil/x"),
                                                  ("x-forwarded-proto", "http")])
            self.assertEqual(r.status, 200, r)
            seen = r.json()["headers"]
            xfcc = [v for n, v in seen if n.lower() == "x-forwarded-client-cert"]
            self.assertEqual(xfcc, ["By=%s;URI=%s;Hash=%s" % (sid("server"), sid("a"), cert_sha256(self.certs.a[0]))],
                             "the app's XFCC headers: %r" % seen)
            self.assertEqual([v for n, v in seen if n.lower() == "x-forwarded-proto"], ["https"], seen)
            # The same connection carries a second request (keep-alive over TLS).
            r2 = c.request("GET", "/two")
            self.assertEqual(r2.status, 200, r2)
        after = tls_counts(self.pf)
        self.assertEqual(after["inbound", "ok"] - before["inbound", "ok"], 1)
        self.assertEqual(after["inbound", "failed"], before["inbound", "failed"])

    def test_plain_listener_drops_a_client_xfcc(self):
        r = h.request(self.pf.port("plain"), "GET", "/plain",
                      headers=[("x-forwarded-client-cert", "By=spiffe://evil;URI=%s" % sid("a"))])
        self.assertEqual(r.status, 200, r)
        seen = r.json()["headers"]
        self.assertEqual([v for n, v in seen if n.lower() == "x-forwarded-client-cert"], [], seen)
        self.assertEqual([v for n, v in seen if n.lower() == "x-forwarded-proto"], ["http"], seen)

    # -- 2 -------------------------------------------------------------------------------------
    def assert_refused(self, ctx, why_log, label):
        """One connection refused: its handshake fails (or, TLS 1.3, the connection closes
        with no response), the failed counter grows by one, nothing reaches the app."""
        port = self.pf.port("open")
        mark = h.log_mark(self.pf)
        before = tls_counts(self.pf)
        app_before = self.app_requests()
        stage, detail = tls_attempt(port, ctx, "/refused-" + label)
        self.assertNotEqual(stage, "response", "%s: the request got a response: %r" % (label, detail))
        h.wait_for(lambda: tls_count(self.pf, "inbound", "failed") == before["inbound", "failed"] + 1, 3.0,
                   what="%s: inbound failed handshakes %d + 1\n%s" % (label, before["inbound", "failed"],
                                                                       self.pf.log(20)))
        after = tls_counts(self.pf)
        self.assertEqual(after["inbound", "ok"], before["inbound", "ok"], label)
        self.assertEqual(self.app_requests(), app_before, "%s: a request reached the app" % label)
        h.wait_log(self.pf, r"listener open: mTLS handshake with 127\.0\.0\.1 failed: .*" + re.escape(why_log), mark, 3.0)
        return stage, detail

    def test_refused_no_client_certificate(self):
        self.assert_refused(client_ctx(self.certs.ca), "peer did not return a certificate", "no-cert")

    def test_refused_certificate_from_another_ca(self):
        self.assert_refused(self.ctx(self.certs.rogue), "unable to get local issuer certificate", "rogue-ca")

    def test_refused_expired_certificate(self):
        self.assert_refused(self.ctx(self.certs.expired), "certificate has expired", "expired")

    def test_refused_two_uri_sans(self):
        self.assert_refused(self.ctx(self.certs.two_uris), "2 URI SANs", "two-uris")

    def test_refused_no_uri_san(self):
        self.assert_refused(self.ctx(self.certs.no_uri), "no URI SAN", "no-uri")

    def test_refused_server_auth_only_eku(self):
        self.assert_refused(self.ctx(self.certs.server_only), "unsuitable certificate purpose", "server-eku")

    def test_refused_alpn_of_another_protocol(self):
        # h2 and http/1.1 are offered (test_http2 speaks h2 over mTLS); a client that offers
        # neither is refused in the handshake.
        stage, detail = self.assert_refused(self.ctx(alpn=("spdy/3.1",)), "no ALPN protocol", "alpn-spdy")
        self.assertEqual(stage, "handshake", detail)

    def test_refused_tls10_and_tls11(self):
        port = self.pf.port("open")
        a_cert, a_key = self.certs.a
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(flag=flag):
                mark = h.log_mark(self.pf)
                before = tls_counts(self.pf)
                rc, out, err = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, flag,
                                    "-cipher", "DEFAULT@SECLEVEL=0", "-cert", a_cert, "-key", a_key,
                                    "-CAfile", self.certs.ca, "-alpn", "http/1.1"],
                                   stdin=b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertNotEqual(rc, 0, out + err)
                self.assertNotIn("HTTP/1.1", out)
                # The refusal is pilotfish's: it saw a ClientHello and failed the handshake.
                h.wait_for(lambda: tls_count(self.pf, "inbound", "failed") == before["inbound", "failed"] + 1, 3.0,
                           what="%s: inbound failed +1\n%s\n%s" % (flag, err, self.pf.log(10)))
                self.assertEqual(tls_count(self.pf, "inbound", "ok"), before["inbound", "ok"])
                self.assertRegex(err, r"(?i)alert protocol version|unsupported protocol|wrong version", err)
                h.wait_log(self.pf, r"listener open: mTLS handshake with 127\.0\.0\.1 failed: unsupported protocol", mark)

    # -- 3 -------------------------------------------------------------------------------------
    def test_http_allow_list(self):
        port = self.pf.port("guarded")
        denied = authz_denied(self.pf, "guarded")
        app_before = self.app_requests()
        with TlsClient(port, self.ctx(self.certs.c)) as c:
            r = c.request("GET", "/not-allowed")
            self.assertEqual(r.status, 403, r)
            self.assertEqual(r.header("x-pilotfish-error"), "peer_not_allowed", r)
            self.assertEqual((r.header("connection") or "").lower(), "close", r)
            self.assertTrue(c.is_closed(3.0), "the connection stays open after the 403")
        self.assertEqual(authz_denied(self.pf, "guarded"), denied + 1)
        self.assertEqual(self.app_requests(), app_before, "the app saw a request of a peer not allowed")
        # An exact entry, and an entry with a trailing '*'.
        for pair, who in ((self.certs.a, "a"), (self.certs.orders, "orders-eu")):
            with TlsClient(port, self.ctx(pair)) as c:
                r = c.request("GET", "/allowed-" + who)
                self.assertEqual(r.status, 200, r)
                xfcc = [v for n, v in r.json()["headers"] if n.lower() == "x-forwarded-client-cert"]
                self.assertEqual(xfcc, ["By=%s;URI=%s;Hash=%s" % (sid("server"), sid(who), cert_sha256(pair[0]))])
        self.assertEqual(authz_denied(self.pf, "guarded"), denied + 1)
        self.assertEqual(self.app_requests(), app_before + 2)

    def test_tcp_allow_list(self):
        port = self.pf.port("tunnel")
        denied = authz_denied(self.pf, "tunnel")
        conns = self.tcp.stats()["connections"]
        c = TlsClient(port, self.ctx(self.certs.c))
        try:
            try:
                c.send(b"hello?")
            except (ssl.SSLError, OSError):
                pass
            data, closed = c.read_until_close(3.0)
            self.assertTrue(closed, "the connection of a peer not allowed stays open")
            self.assertEqual(data, b"")
        finally:
            c.close()
        h.wait_for(lambda: authz_denied(self.pf, "tunnel") == denied + 1, 3.0, what="authz_denied{tunnel} + 1")
        time.sleep(0.2)
        st = self.tcp.stats()
        self.assertEqual(st["connections"], conns, "the tcp upstream saw a connection for a peer not allowed")

    # -- 8 -------------------------------------------------------------------------------------
    def test_tcp_tunnel_for_an_allowed_peer(self):
        before = self.tcp.stats()
        c = TlsPipe(self.pf.port("tunnel"), self.ctx(alpn=None))
        try:
            self.assertEqual(c.obj.selected_alpn_protocol(), None)
            data = bytes(range(256)) * 64 + b"GET / HTTP/1.1\r\n\r\n"  # 16 KiB+, several records, not HTTP
            c.write(data)
            self.assertEqual(c.read_exact(len(data)), data)
            c.write(b"more")
            self.assertEqual(c.read_exact(4), b"more")
            # close_notify is the client's end of the stream: the upstream sees EOF (a half-close)
            # and its reply after it still arrives, then pilotfish's close_notify.
            rest, how = c.close_write_and_read_rest()
            self.assertEqual(rest, b"EOF after %d bytes\n" % (len(data) + 4))
            self.assertEqual(how, "close_notify")
        finally:
            c.close()
        # The upstream got the plaintext, on one connection.
        st = h.wait_for(lambda: (lambda s: s if s["closed"] > before["closed"] else None)(self.tcp.stats()), 5.0,
                        what="the tcp upstream's connection closed")
        self.assertEqual(st["tcp_bytes"] - before["tcp_bytes"], len(data) + 4)
        self.assertEqual(st["connections"], before["connections"] + 1)

    # -- 4 -------------------------------------------------------------------------------------
    def test_curl(self):
        port = self.pf.port("open")
        a_cert, a_key = self.certs.a
        # The server certificate carries no DNS SAN, so curl checks the name against its CN
        # ("server"): --resolve points that name at the listener, and no -k is needed.
        rc, out, err = run(["curl", "-sS", "--max-time", "10", "--cacert", self.certs.ca, "--cert", a_cert,
                            "--key", a_key, "--resolve", "server:%d:127.0.0.1" % port,
                            "-H", "x-forwarded-client-cert: forged", "-w", "\n%{http_code} %{http_version}",
                            "https://server:%d/curl" % port])
        self.assertEqual(rc, 0, err)
        body, _, status = out.rpartition("\n")
        # curl offers h2 first in ALPN, and the listener takes it; the app still sees HTTP/1.1.
        self.assertEqual(status, "200 2", out)
        self.assertEqual(json.loads(body)["version"], "HTTP/1.1")
        seen = json.loads(body)["headers"]
        xfcc = [v for n, v in seen if n.lower() == "x-forwarded-client-cert"]
        self.assertEqual(xfcc, ["By=%s;URI=%s;Hash=%s" % (sid("server"), sid("a"), cert_sha256(a_cert))])
        # Without a client certificate curl gets no response.
        rc, out, err = run(["curl", "-sS", "--max-time", "10", "--cacert", self.certs.ca,
                            "--resolve", "server:%d:127.0.0.1" % port, "https://server:%d/curl-nocert" % port])
        self.assertNotEqual(rc, 0, out)

    def test_openssl_s_client(self):
        port = self.pf.port("open")
        a_cert, a_key = self.certs.a
        rc, out, err = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-cert", a_cert,
                            "-key", a_key, "-CAfile", self.certs.ca, "-verify_return_error", "-alpn", "http/1.1",
                            "-ign_eof"],
                           stdin=b"GET /s_client HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("ALPN protocol: http/1.1", out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"HTTP/1\.1 200 OK\r?\n")
        self.assertIn('"target": "/s_client"', out)
        self.assertIn("URI=%s;" % sid("a"), out)


    # -- 7 -------------------------------------------------------------------------------------
    def test_stalled_handshake_closed_within_header_timeout(self):
        port = self.pf.port("slowhs")
        before = tls_counts(self.pf)
        hello = client_hello(self.certs.ca)
        good = self.ctx()
        t0 = time.monotonic()
        silent = h.Client(port, timeout=5)
        half = h.Client(port, timeout=5)
        self.addCleanup(silent.close)
        self.addCleanup(half.close)
        half.send(hello[:len(hello) // 2])
        # Meanwhile the listener serves a good client (one worker: nothing blocks it).
        with TlsClient(port, good) as c:
            r = c.request("GET", "/meanwhile")
            self.assertEqual(r.status, 200, r)
        closed_at = {}
        for name, cl in (("silent", silent), ("half", half)):
            # Closed by header_timeout (500ms), long before the idle_timeout (60 s) would.
            self.assertTrue(cl.is_closed(15), "%s handshake still open (header_timeout 500ms)" % name)
            closed_at[name] = time.monotonic() - t0
        for name, t in closed_at.items():
            self.assertGreater(t, 0.4, "%s closed after %.2fs, before header_timeout" % (name, t))
        # The half ClientHello is a failed handshake; a connection that sent nothing made none.
        h.wait_for(lambda: tls_count(self.pf, "inbound", "failed") == before["inbound", "failed"] + 1, 2.0,
                   what="inbound failed + 1")
        self.assertEqual(tls_count(self.pf, "inbound", "ok"), before["inbound", "ok"] + 1)
        with TlsClient(port, self.ctx()) as c:
            self.assertEqual(c.request("GET", "/after").status, 200)


# ---------------------------------------------------------------------------------------------
# Two sidecars: client -> A (plain listener, cluster mtls) -> B (mtls listener) -> app
# ---------------------------------------------------------------------------------------------

class TwoSidecarsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = Certs()

    def setUp(self):
        self.pfs = []

    def tearDown(self):
        for pf in self.pfs:
            if pf.alive():
                pf.stop_and_check(self)

    def start(self, policy):
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        self.pfs.append(pf)
        return pf

    def app(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        return u

    def sidecar_b(self, app, identity, allow):
        p = h.simple_policy(app, listener={"mtls": True, "allow": allow})
        p["service"] = "b"
        p["identity"] = self.certs.identity(identity)
        return self.start(p)

    def sidecar_a(self, b, expect, cluster=None):
        c = {"mtls": {"server_identity": expect}}
        c.update(cluster or {})
        p = h.simple_policy("127.0.0.1:%d" % b.port(), cluster=c)
        p["service"] = "a"
        p["identity"] = self.certs.identity(self.certs.a)
        return self.start(p)

    # -- 5 -------------------------------------------------------------------------------------
    def test_chain_pooled_then_resumed(self):
        app = self.app()
        b = self.sidecar_b(app, self.certs.b, [sid("a")])
        a = self.sidecar_a(b, sid("b"), {"idle_timeout": "1s"})
        # 20 requests over 3 keep-alive client connections, one after another.
        n = 0
        for conn in range(3):
            with h.Client(a.port()) as c:
                for _ in range(7 if conn < 2 else 6):
                    r = c.request("GET", "/chain/%d" % n,
                                  headers=[("x-forwarded-client-cert", "By=spiffe://evil;URI=spiffe://evil/x")])
                    self.assertEqual(r.status, 200, r)
                    n += 1
        self.assertEqual(n, 20)
        seen = app.requests()
        self.assertEqual(len(seen), 20)
        want = "By=%s;URI=%s;Hash=%s" % (sid("b"), sid("a"), cert_sha256(self.certs.a[0]))
        for q in seen:
            self.assertEqual([v for k, v in q["headers"] if k.lower() == "x-forwarded-client-cert"], [want], q)
            self.assertEqual([v for k, v in q["headers"] if k.lower() == "x-forwarded-proto"], ["https"], q)
        ca, cb = tls_counts(a), tls_counts(b)
        self.assertEqual((ca["outbound", "ok"], ca["outbound", "failed"]), (1, 0), "A: one pooled handshake for 20")
        self.assertEqual((cb["inbound", "ok"], cb["inbound", "failed"]), (1, 0), "B: one handshake for 20")
        self.assertEqual((ca["outbound", "resumed"], cb["inbound", "resumed"]), (0, 0))
        self.assertEqual((ca["inbound", "ok"], cb["outbound", "ok"]), (0, 0), "no TLS on A's listener or B's cluster")

        # Past A's idle_timeout the pooled connection is gone; the next one resumes the session.
        time.sleep(1.6)
        for i in range(2):
            r = h.request(a.port(), "GET", "/resumed/%d" % i)
            self.assertEqual(r.status, 200, r)
        ca, cb = tls_counts(a), tls_counts(b)
        self.assertEqual(ca["outbound", "ok"], 2, "A: a new upstream connection after idle_timeout")
        self.assertGreaterEqual(ca["outbound", "resumed"], 1, "A resumed no session")
        self.assertGreaterEqual(cb["inbound", "resumed"], 1, "B saw no resumed session")
        self.assertEqual(cb["inbound", "ok"], 2)
        # A resumed session still carries the peer's identity.
        last = app.requests()[-1]
        self.assertEqual([v for k, v in last["headers"] if k.lower() == "x-forwarded-client-cert"], [want], last)

    def test_reload_applies_allow_to_open_tunnels(self):
        # An open mTLS tunnel whose peer a reload takes out of `allow` is closed at once (and
        # counted); one whose peer stays allowed continues.
        tcp = h.Upstream("tcpecho", name="tcp")
        self.addCleanup(tcp.stop)
        policy = h.simple_policy(tcp, listener={"protocol": "tcp", "mtls": True, "allow": [sid("a"), sid("b")]})
        policy["identity"] = self.certs.identity(self.certs.server)
        pf = self.start(policy)
        a = TlsPipe(pf.port(), client_ctx(self.certs.ca, *self.certs.a, alpn=None))
        b = TlsPipe(pf.port(), client_ctx(self.certs.ca, *self.certs.b, alpn=None))
        try:
            for pipe, word in ((a, b"a1"), (b, b"b1")):
                pipe.write(word)
                self.assertEqual(pipe.read_exact(2), word)
            policy["listeners"][0]["allow"] = [sid("b")]
            h.write_policy(pf, policy)
            self.assertEqual(h.admin_json(pf, "/reload", method="POST")[1]["outcome"], "applied")
            b.write(b"b2")
            self.assertEqual(b.read_exact(2), b"b2", "an allowed peer's tunnel continues")
            a.write(b"a2")
            with self.assertRaises((AssertionError, ConnectionError, OSError)):
                a.read_exact(2)
            self.assertEqual(h.sample(h.metrics(pf), "pilotfish_authz_denied_total", listener="ingress"), 1)
        finally:
            a.sock.close()
            b.sock.close()

    def test_upstream_refusing_our_certificate(self):
        # TLS 1.3: the server checks the client's certificate after the client's side of the
        # handshake is done, so the refusal arrives as an alert. It still counts as a failed
        # handshake and answers 503 upstream_tls_failure, not a reset.
        port = h.free_port()
        rogue_ca = os.path.join(self.certs.dir, "rogue", "rogue-ca.pem")
        b_cert, b_key = self.certs.b
        server = h.spawn(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", b_cert, "-key", b_key,
                          "-CAfile", rogue_ca, "-Verify", "1", "-verify_return_error", "-www", "-tls1_3"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.addCleanup(h.kill_proc, server)
        h.wait_for(lambda: port in h.listening_ports(), 10, what="openssl s_server")

        class B:
            def port(self):
                return port
        a = self.sidecar_a(B(), sid("b"))
        mark = h.log_mark(a)
        r = h.request(a.port(), "GET", "/refused", timeout=10)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.header("x-pilotfish-error"), "upstream_tls_failure", r)
        h.wait_log(a, r"mTLS handshake failed: .*(certificate|unknown ca)", mark)
        ca = tls_counts(a)
        self.assertGreaterEqual(ca["outbound", "failed"], 1)
        self.assertEqual(ca["outbound", "ok"], 0)

    # -- 6 -------------------------------------------------------------------------------------
    def test_wrong_server_identity(self):
        app = self.app()
        b = self.sidecar_b(app, self.certs.c, [sid("a")])  # presents sa/c
        a = self.sidecar_a(b, sid("b"))
        mark = h.log_mark(a)
        r = h.request(a.port(), "GET", "/wrong-server", timeout=10)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.header("x-pilotfish-error"), "upstream_tls_failure", r)
        h.wait_log(a, r"cluster app endpoint 127\.0\.0\.1:%d: mTLS handshake failed: the server presented %s, "
                      r"expected %s" % (b.port(), re.escape(sid("c")), re.escape(sid("b"))), mark)
        ca = tls_counts(a)
        self.assertGreaterEqual(ca["outbound", "failed"], 1)
        self.assertEqual(ca["outbound", "ok"], 0)
        h.wait_for(lambda: tls_count(b, "inbound", "failed") >= 1, 3.0, what="B: inbound failed >= 1")
        self.assertEqual(tls_count(b, "inbound", "ok"), 0)
        self.assertEqual(app.requests(), [])
        self.assertEqual(app.stats()["connections"], 0)


class ExampleTest(unittest.TestCase):
    """examples/mtls as its README runs it, on a copy with free ports."""

    def test_examples_mtls(self):
        import shutil
        src = os.path.join(h.ROOT, "examples", "mtls")
        work = os.path.join(h.make_tmpdir(), "mtls")
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("certs"))
        out = subprocess.run(["sh", os.path.join(work, "make-certs.sh")], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        ports = {p: h.free_port() for p in ("15001", "15006", "18080", "9911", "9912")}
        for name in ("frontend.yaml", "users.yaml"):
            path = os.path.join(work, name)
            with open(path) as f:
                text = f.read()
            for old, new in ports.items():
                text = text.replace(":" + old, ":%d" % new)
            with open(path, "w") as f:
                f.write(text)
            rc, _, err = h.run_cli(["check", "--config", path])
            self.assertEqual(rc, 0, err)
        app = h.spawn([sys.executable, os.path.join(h.ROOT, "examples", "quickstart", "demo_service.py"),
                       str(ports["18080"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = []
        try:
            h.wait_for(lambda: ports["18080"] in h.listening_ports(), 10, what="demo service")
            for name in ("users.yaml", "frontend.yaml"):
                with open(os.path.join(work, name)) as f:
                    procs.append(h.Pilotfish(f.read().replace("certs/", os.path.join(work, "certs") + "/")))
            out = subprocess.run(["curl", "-sS", "--max-time", "10", "http://127.0.0.1:%s/hello" % ports["15001"]],
                                 capture_output=True, text=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            reply = json.loads(out.stdout)
            self.assertEqual(reply["path"], "/hello")
            xfcc = reply["headers"]["x-forwarded-client-cert"]
            self.assertTrue(xfcc.startswith("By=spiffe://shop.local/ns/shop/sa/users;"
                                            "URI=spiffe://shop.local/ns/shop/sa/frontend;Hash="), xfcc)
            self.assertEqual(xfcc.split("Hash=")[1], cert_sha256(os.path.join(work, "certs", "frontend.pem")))
        finally:
            for pf in reversed(procs):
                pf.stop_and_check(self)
            h.kill_proc(app)


if __name__ == "__main__":
    h.main()
