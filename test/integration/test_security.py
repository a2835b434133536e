#!/usr/bin/env python3
"""What an outside review found, each through the real binary: nothing from a request or a file
reaches a response head or a log line as it is (response splitting through the 401), headers
pilotfish sets cannot be forged in another spelling, paths that servers resolve differently are
refused, JWT claims and JWKS files are read strictly, and the admin listener bounds what one
client can hold and takes POST only from loopback. The admin checks that need a peer that is not
on loopback run in two network namespaces this test makes (root)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from test_gateway import Keys, b64url, claims, upstream_header, ISSUER, AUDIENCE  # noqa: E402

TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# What may follow the colon in a head pilotfish writes: visible ASCII and spaces, nothing else.
LOCAL_VALUE_RE = re.compile(rb"^[\x20-\x7e]*$")
NASTY = ["\r\n\r\nHTTP/1.1 200 OK", "x\r\nSet-Cookie: s=1", "a\rb", "a\nb", "a\x00b", 'a"b', "caf\xe9\xff\xfe"]


def read_head(c, timeout=5.0):
    """The raw head of the next response on client c (bytes up to and including CRLF CRLF)."""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in c.buf:
        if not c._fill(deadline):
            break
    i = c.buf.find(b"\r\n\r\n")
    assert i >= 0, "no complete head: %r" % bytes(c.buf[:300])
    head = bytes(c.buf[:i + 4])
    del c.buf[:i + 4]
    return head


def check_local_head(testcase, head):
    """A head pilotfish wrote itself: a status line, then name: value lines of plain ASCII."""
    lines = head[:-4].split(b"\r\n")
    testcase.assertRegex(lines[0], rb"^HTTP/1\.1 \d{3} [A-Za-z ]+$")
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        testcase.assertTrue(sep and TOKEN_RE.match(name), "bad header line %r in %r" % (line, head))
        testcase.assertTrue(LOCAL_VALUE_RE.match(value), "unescaped byte in %r" % line)
    testcase.assertNotIn(b"set-cookie", head.lower())


class GatewayCase(unittest.TestCase):
    """A pilotfish with a JWKS of one RSA key (kid rsa-1) in front of an echo upstream."""

    @classmethod
    def start(cls, listener=None, routes=None, extra_args=()):
        cls.dir = h.make_tmpdir("pf-sec-")
        cls.keys = Keys(cls.dir)
        cls.jwks = os.path.join(cls.dir, "jwks.json")
        with open(cls.jwks, "w") as f:
            json.dump({"keys": [cls.keys.jwk_rsa()]}, f)
        cls.up = h.Upstream("echo")
        routes = routes(cls.jwks) if callable(routes) else routes
        listener = listener(cls.jwks) if callable(listener) else listener
        cls.pf = h.Pilotfish(h.simple_policy(cls.up, listener=listener, routes=routes), extra_args=extra_args)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()
        cls.up.stop()


class ReflectionTest(GatewayCase):
    """Every field of a token pilotfish might reflect, with CR, LF, NUL, '"' and high bytes."""

    @classmethod
    def setUpClass(cls):
        cls.start(listener=lambda jwks: {"auth": {"jwks": jwks, "subject_header": "x-user"}},
                  extra_args=["--log-level", "debug"])

    def raw_token(self, header_bytes, payload_bytes=b'{"sub":"a","exp":9999999999}'):
        return b64url(header_bytes) + "." + b64url(payload_bytes) + ".AAAA"

    def test_the_401_reflects_nothing_of_the_token(self):
        before = len(self.up.requests())
        mark = h.log_mark(self.pf)
        with h.Client(self.pf.port()) as c:
            for text in NASTY:
                raw = text.encode("latin-1")
                for header in (b'{"alg":"' + raw + b'"}', b'{"alg":"RS256","kid":"' + raw + b'"}',
                               b'{"alg":"RS256","typ":"' + raw + b'"}', b'{"alg":"ES256","crit":["' + raw + b'"]}'):
                    for token in (self.raw_token(header), self.raw_token(b'{"alg":"RS256"}', b'{"sub":"' + raw + b'"}')):
                        c.send(h.build_request("GET", "/api", [("Authorization", "Bearer " + token)]))
                        head = read_head(c)
                        check_local_head(self, head)
                        self.assertTrue(head.startswith(b"HTTP/1.1 401 "), head)
                        length = int(re.search(rb"content-length: (\d+)", head).group(1))
                        body = c._exact(length, time.monotonic() + 5)
                        self.assertEqual(body, b"401 unauthorized\n")
            # The connection is still in step: the next answer is the next request's.
            c.send(h.build_request("GET", "/api", [("Authorization", "Bearer " + self.keys.token(claims()))]))
            self.assertEqual(c.read_response().status, 200)
        self.assertEqual(len(self.up.requests()), before + 1)
        # The debug log has a line per refusal, and none of the token's text made a line of its own.
        h.wait_log(self.pf, r"401 for 127\.0\.0\.1", since=mark)
        for line in h.log_lines(self.pf, mark):
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT", "a line not written by pilotfish: %r" % line)
            self.assertNotIn("Set-Cookie", line)

    def test_error_descriptions_are_fixed_texts(self):
        r = h.request(self.pf.port(), "GET", "/api", headers=[("Authorization", "Bearer " + self.raw_token(b'{"alg":"evil-alg"}'))])
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("www-authenticate"),
                         'Bearer realm="pilotfish", error="invalid_token", error_description="unsupported alg"')


class UpstreamTextTest(unittest.TestCase):
    """An upstream's reason phrase never reaches the client: pilotfish writes its own, and one
    with control characters makes the response invalid (502)."""

    def test_reason_phrases(self):
        for line, status in ((b"HTTP/1.1 200 OK\x00x", 502), (b"HTTP/1.1 200 OK\x01", 502), (b"HTTP/1.1 200 \x1b[31mred", 502),
                             (b"HTTP/1.1 200 OK\x7f", 502), (b"HTTP/1.1 201 Made \xff by me", 201),
                             (b"HTTP/1.1 299 Whatever", 299)):
            pf = h.Pilotfish(h.simple_policy(h.answer_once(self, line + b"\r\nContent-Length: 2\r\n\r\nhi")))
            self.addCleanup(pf.kill)
            with h.Client(pf.port()) as c:
                c.send(h.build_request("GET", "/"))
                head = read_head(c)
            if status == 502:
                check_local_head(self, head)
            first = head.split(b"\r\n")[0]
            self.assertEqual(first, b"HTTP/1.1 %d %s" % (status, {502: b"Bad Gateway", 201: b"Created",
                                                                  299: b"Unknown"}[status]), line)
            pf.stop_and_check(self)


class ForgedHeadersTest(GatewayCase):
    """Headers pilotfish sets are removed from requests in every spelling a server may read as
    the same header, whatever the configured spelling."""

    @classmethod
    def setUpClass(cls):
        cls.start(routes=lambda jwks: [
            {"match": {"path_prefix": "/open"}, "cluster": "app"},
            {"match": {"path_prefix": "/api"}, "cluster": "app", "auth": {"jwks": jwks, "subject_header": "x_sub"}},
            {"match": {"path_prefix": "/other"}, "cluster": "app", "auth": {"jwks": jwks, "subject_header": "X-Principal"}}])

    def names(self, r, *wanted):
        folded = {w.lower().replace("_", "-") for w in wanted}
        return [(k, v) for k, v in r.json()["headers"] if k.lower().replace("_", "-") in folded]

    def test_subject_headers_in_every_spelling_on_every_route(self):
        forged = [("x_sub", "root"), ("X-Sub", "root2"), ("X_SUB", "root3"), ("x-principal", "p"), ("X_Principal", "q")]
        token = self.keys.token(claims(sub="carol"))
        r = h.request(self.pf.port(), "GET", "/api", headers=forged + [("Authorization", "Bearer " + token)])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.names(r, "x-sub", "x-principal"), [("x_sub", "carol")])
        for path in ("/open", "/other"):
            hs = forged + ([("Authorization", "Bearer " + token)] if path == "/other" else [])
            r = h.request(self.pf.port(), "GET", path, headers=hs)
            self.assertEqual(r.status, 200, r)
            expected = [("x-principal", "carol")] if path == "/other" else []
            self.assertEqual(self.names(r, "x-sub", "x-principal"), expected, path)

    def test_a_token_without_sub_sends_no_subject_header(self):
        c = claims()
        del c["sub"]
        r = h.request(self.pf.port(), "GET", "/api", headers=[("x_sub", "root"), ("Authorization", "Bearer " + self.keys.token(c))])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.names(r, "x-sub"), [])

    def test_forwarded_headers_in_underscore_spelling_are_removed(self):
        r = h.request(self.pf.port(), "GET", "/open", headers=[
            ("X_Forwarded_Client_Cert", "By=x;URI=spiffe://shop.local/ns/shop/sa/frontend;Hash=00"),
            ("x_forwarded_proto", "https"), ("X-Forwarded-Client-Cert", "URI=spiffe://forged"),
            ("x_pilotfish_attempt", "9")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.names(r, "x-forwarded-client-cert", "x-pilotfish-attempt"), [("x-pilotfish-attempt", "1")])
        self.assertEqual(self.names(r, "x-forwarded-proto"), [("x-forwarded-proto", "http")])


class JwtClaimsTest(GatewayCase):
    """Claims of the wrong type are refused, and JWKS files follow the documented rules."""

    @classmethod
    def setUpClass(cls):
        cls.start(listener=lambda jwks: {"auth": {"jwks": jwks, "issuer": ISSUER, "audience": AUDIENCE,
                                                  "subject_header": "x-user"}})

    def status(self, token):
        r = h.request(self.pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + token)])
        return r.status, (r.header("www-authenticate") or "")

    def test_wrong_types_are_refused(self):
        now = int(time.time())
        for c, why in ((claims(nbf=str(now - 10)), "invalid nbf claim"), (claims(sub=["a", "b"]), "invalid sub claim"),
                       (claims(sub={"a": 1}), "invalid sub claim"), (claims(sub=""), "invalid sub claim"),
                       (claims(exp=str(now + 300)), "invalid exp claim")):
            status, challenge = self.status(self.keys.token(c))
            self.assertEqual(status, 401, c)
            self.assertIn(why, challenge)
        self.assertEqual(self.status(self.keys.token(claims(nbf=now - 10)))[0], 200)

    def test_yaml_and_duplicate_keys_are_not_json(self):
        # Signed, so only the parser can refuse them.
        for payload in (b"sub: bob\nexp: 9999999999\niss: " + ISSUER.encode() + b"\naud: " + AUDIENCE.encode(),
                        json.dumps(claims()).encode()[:-1] + b', "sub": "mallory"}'):
            token = self.signed(b'{"alg":"RS256","kid":"rsa-1"}', payload)
            status, challenge = self.status(token)
            self.assertEqual(status, 401, payload)
            self.assertIn("malformed token", challenge)

    def test_one_spelling_per_token(self):
        token = self.keys.token(claims())
        self.assertEqual(self.status(token)[0], 200)
        # Padding on the signature leaves the signed bytes as they were: only the spelling differs.
        self.assertEqual(self.status(token + "=")[0], 401)
        self.assertEqual(self.status(token + "==")[0], 401)

    def signed(self, header, payload):
        signing_input = b64url(header) + "." + b64url(payload)
        data = os.path.join(self.dir, "in-%d" % time.monotonic_ns())
        with open(data, "w") as f:
            f.write(signing_input)
        h.openssl("dgst", "-sha256", "-sign", self.keys.rsa, "-out", data + ".sig", data)
        with open(data + ".sig", "rb") as f:
            return signing_input + "." + b64url(f.read())


class JwksRulesTest(unittest.TestCase):
    def test_an_empty_set_revokes_everything_and_unusable_keys_are_skipped(self):
        d = h.make_tmpdir("pf-sec-jwks-")
        keys = Keys(d)
        jwks = os.path.join(d, "jwks.json")
        p384 = {"kty": "EC", "crv": "P-384", "kid": "next\r\n2026-01-01T00:00:00.000Z error forged",
                "x": "AAAA", "y": "AAAA"}
        with open(jwks, "w") as f:
            json.dump({"keys": [p384, keys.jwk_rsa(kid="rsa-1")]}, f)
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, listener={"auth": {"jwks": jwks}}))
        self.addCleanup(pf.kill)
        token = keys.token(claims(), kid="rsa-1")
        auth = [("Authorization", "Bearer " + token)]
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=auth).status, 200, "the usable key loaded")
        m = h.wait_log(pf, r"key 0 \(kid next.*\) skipped")
        self.assertIn("\\x0d\\x0a", m.string, "the kid is escaped in the log")
        self.assertFalse(any(" error forged" in line.split("Z ", 1)[0] for line in pf.lines))
        mark = h.log_mark(pf)
        with open(jwks + ".tmp", "w") as f:
            json.dump({"keys": []}, f)
        os.rename(jwks + ".tmp", jwks)
        h.wait_log(pf, r"jwks .* reloaded", since=mark, timeout=5)
        h.wait_log(pf, r"no usable key: every token is refused", since=mark, timeout=5)
        r = h.request(pf.port(), "GET", "/", headers=auth)
        self.assertEqual(r.status, 401)
        self.assertIn("no key for this token", r.header("www-authenticate"))
        pf.stop_and_check(self)


class AmbiguousPathTest(GatewayCase):
    """With /public open and everything else behind auth, no spelling of /admin gets through."""

    @classmethod
    def setUpClass(cls):
        cls.start(routes=lambda jwks: [
            {"match": {"path_prefix": "/public"}, "cluster": "app", "auth": False},
            {"match": {"host": "admin.local"}, "cluster": "app", "auth": {"jwks": jwks}},
            {"match": {"host": "www.local"}, "cluster": "app", "auth": False},
            {"cluster": "app", "auth": {"jwks": jwks}}])

    def test_ambiguous_paths_are_refused(self):
        before = len(self.up.requests())
        for target in ("/public/..;/admin", "/public%2F..%2Fadmin", "/public\\..\\admin", "/public%2fadmin",
                       "/public/%2e%2e;/admin", "/public/..%3B/admin", "/public%5cadmin"):
            r = h.request(self.pf.port(), "GET", target)
            self.assertEqual(r.status, 400, target)
            self.assertEqual(r.header("x-pilotfish-error"), "ambiguous_path", target)
        self.assertEqual(len(self.up.requests()), before, "none reached the upstream")
        self.assertEqual(h.request(self.pf.port(), "GET", "/public/ok;v=1").status, 200)

    def test_a_host_with_a_trailing_dot_is_the_same_host(self):
        self.assertEqual(h.request(self.pf.port(), "GET", "/public/x", host="www.local").status, 200)
        r = h.request(self.pf.port(), "GET", "/x", host="admin.local.")
        self.assertEqual(r.status, 401, "admin.local. routes as admin.local, behind its auth")
        self.assertEqual(h.request(self.pf.port(), "GET", "/x", host="www.local.:80").status, 200)

    def test_a_listener_can_let_them_through(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, listener={"allow_ambiguous_paths": True}))
        self.addCleanup(pf.kill)
        r = h.request(pf.port(), "GET", "/a%2fb")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["target"], "/a%2Fb", "forwarded as routed")
        pf.stop_and_check(self)


class AdminLimitsTest(unittest.TestCase):
    """One admin client cannot grow pilotfish's memory, hold a connection by trickling, or take
    every admin connection."""

    @classmethod
    def setUpClass(cls):
        cls.up = h.Upstream("echo")
        cls.pf = h.Pilotfish(h.simple_policy(cls.up))

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()
        cls.up.stop()

    def test_pipelined_requests_that_are_never_read_do_not_grow_memory(self):
        rss0 = self.pf.rss_kib()
        s = socket.create_connection(("127.0.0.1", h.admin_port(self.pf)))
        s.setblocking(False)
        batch = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 2000
        sent, deadline = 0, time.monotonic() + 6
        while time.monotonic() < deadline and sent < 200 * len(batch):
            try:
                sent += s.send(batch)
            except BlockingIOError:
                time.sleep(0.05)  # pilotfish stopped reading: the kernel buffers are full
        grown = self.pf.rss_kib() - rss0
        # Each /metrics answer is several KiB: without backpressure this grew by hundreds of MiB.
        self.assertLess(grown, 32 * 1024, "RSS grew by %d KiB after %d bytes of requests" % (grown, sent))
        self.assertLess(sent, 200 * len(batch), "pilotfish kept reading requests it could not answer")
        self.assertEqual(h.admin_request(self.pf, "/live")[0], 200)
        s.close()

    def test_a_trickled_request_is_cut_off(self):
        with h.Client(h.admin_port(self.pf), timeout=20) as c:
            c.send(b"GET /metrics HTTP/1.1\r\n")
            deadline = time.monotonic() + 16
            closed = False
            while time.monotonic() < deadline:
                try:
                    c.send(b"x")
                except OSError:
                    closed = True
                    break
                if c.is_closed(timeout=0.5):
                    closed = True
                    break
            self.assertTrue(closed, "a connection trickling one byte at a time was not closed")
            self.assertIn(b"408", bytes(c.buf))

    def test_connections_past_the_cap_are_closed_and_admin_recovers(self):
        port = h.admin_port(self.pf)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        try:
            for s in held:  # each is accepted and answered: the cap counts these
                s.sendall(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIn(b"200 OK", s.recv(4096))
            with h.Client(port) as extra:
                extra.send(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertTrue(extra.is_closed(timeout=5), "a connection past the cap was served")
                self.assertNotIn(b"200", bytes(extra.buf))
        finally:
            for s in held:
                s.close()
        h.wait_for(lambda: self.live_once(port), 5, what="admin answering again")

    def live_once(self, port):
        try:
            return h.admin_request(self.pf, "/live", timeout=2)[0] == 200
        except OSError:
            return False


def ns_run(ns, *args, check=True, timeout=30):
    r = subprocess.run(["ip", "netns", "exec", ns] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("%s: %s %s" % (args, r.stdout, r.stderr))
    return r


class AdminFromTheNetworkTest(unittest.TestCase):
    """pilotfish in one namespace, a client in another on a veth pair: the client is not on
    loopback. Needs root; fails (never skips) without it."""

    POD, PEER = "10.79.0.1", "10.79.0.2"

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("this test needs root (ip netns)")
        tag = "%d" % os.getpid()
        cls.pod, cls.peer = "pfsec-pod-" + tag, "pfsec-peer-" + tag
        cls.made = []
        for ns in (cls.pod, cls.peer):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            cls.made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", cls.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                        "netns", cls.peer], check=True)
        for ns, ip in ((cls.pod, cls.POD), (cls.peer, cls.PEER)):
            subprocess.run(["ip", "-n", ns, "addr", "add", ip + "/30", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        cls.dir = h.make_tmpdir("pf-sec-ns-")
        cls.config = os.path.join(cls.dir, "policy.yaml")
        with open(cls.config, "w") as f:
            f.write("""version: 1
admin: {address: 0.0.0.0:9901, read_only_address: 0.0.0.0:9902}
listeners:
  - {name: ingress, address: 127.0.0.1:15000, routes: [{cluster: app}]}
clusters:
  - {name: app, endpoints: [127.0.0.1:8080]}
""")
        cls.proc = h.spawn(["ip", "netns", "exec", cls.pod, h.BIN, "run", "--config", cls.config],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        h.wait_for(lambda: cls.curl(cls.pod, "http://127.0.0.1:9901/live")[0] == "200", 10, what="admin up")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "proc", None) is not None and cls.proc.poll() is None:
            h.kill_proc(cls.proc, timeout=15)
            cls.proc.stderr.close()
        for ns in cls.made:
            subprocess.run(["ip", "netns", "del", ns], check=False)

    @staticmethod
    def curl(ns, url, method="GET"):
        r = ns_run(ns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--max-time", "5", url, check=False)
        body, _, code = r.stdout.rpartition("\n")
        return code, body

    def test_1_state_changes_only_from_loopback(self):
        admin = "http://%s:9901" % self.POD
        code, body = self.curl(self.peer, admin + "/drain", "POST")
        self.assertEqual(code, "403", body)
        self.assertIn("loopback only", body)
        self.assertEqual(self.curl(self.peer, admin + "/reload", "POST")[0], "403")
        self.assertEqual(self.curl(self.peer, admin + "/live")[0], "200")
        self.assertIsNone(self.proc.poll(), "the sidecar is still running")

    def test_2_the_read_only_address_serves_probes_and_metrics_alone(self):
        ro = "http://%s:9902" % self.POD
        self.assertEqual(self.curl(self.peer, ro + "/live")[0], "200")
        code, body = self.curl(self.peer, ro + "/metrics")
        self.assertEqual(code, "200")
        self.assertIn("pilotfish_build_info", body)
        for path, method in (("/config", "GET"), ("/clusters", "GET"), ("/policy/history", "GET"), ("/drain", "POST"),
                             ("/reload", "POST")):
            self.assertEqual(self.curl(self.peer, ro + path, method)[0], "404", path)
        # Not from loopback either: this address has no state-changing endpoint at all.
        self.assertEqual(self.curl(self.pod, "http://127.0.0.1:9902/drain", "POST")[0], "404")

    def test_3_drain_from_loopback_stops_it(self):
        self.assertEqual(self.curl(self.pod, "http://127.0.0.1:9901/drain", "POST")[0], "202")
        self.proc.wait(20)
        self.assertEqual(self.proc.returncode, 0)


if __name__ == "__main__":
    h.main()
