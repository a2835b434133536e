#!/usr/bin/env python3
"""Traffic management on a route (issue 17), through the real binary with real upstreams: route
names in the access log and as the metrics' `route` label, weighted splits (measured over
thousands of requests, sticky by header, changed under load by a reload with nothing lost), fault
injection (aborts at 100% and 0%, delays with bodies to HTTP/1.1 and HTTP/2 clusters, a header
that gates them), mirroring (copies with their bodies at the shadow, a share of them, a shadow
that is down or never answers leaving every primary request answered, the bounds, HTTP/2), a route's own timeout and retry, authorization rules by principal (mTLS),
method, path (against the path tricks the matcher normalises) and JWT claim, header rules on
requests and responses,
direct responses and redirects (over
HTTP/1.1 and HTTP/2, with the path tricks the matcher normalises), and `check`'s errors for what
a route cannot say."""
import json
import os
import subprocess
import sys
import threading
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class RouteNameTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.dir = h.make_tmpdir("pf-traffic-")
        self.log = os.path.join(self.dir, "access.log")
        policy = h.simple_policy(self.up, access_log=self.log, routes=[
            {"name": "api", "match": {"path_prefix": "/api"}, "cluster": "app"},
            {"match": {"path_prefix": "/web"}, "cluster": "app"}])
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.up.stop)
        self.addCleanup(self.pf.kill)

    def test_name_in_metrics_and_access_log(self):
        port = self.pf.port()
        for target, status in [("/api/a", 200), ("/api/b", 200), ("/api/c", 200), ("/web/a", 200),
                               ("/web/b", 200), ("/nowhere", 404)]:
            self.assertEqual(h.request(port, target=target).status, status, target)
        m = h.metrics(self.pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                  code="200"), 3)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="", cluster="app",
                                  code="200"), 2)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="", cluster="",
                                  code="404"), 1)
        self.assertEqual(h.sample(m, "pilotfish_request_duration_seconds_count", listener="ingress", route="api",
                                  cluster="app"), 3)
        self.assertEqual(h.sample(m, "pilotfish_request_duration_seconds_count", listener="ingress", route="",
                                  cluster="app"), 2)
        records = h.access_log_records(self.log, 6)
        self.assertEqual([r["route"] for r in records], ["api", "api", "api", "", "", ""])
        self.assertEqual([r["path"] for r in records], ["/api/a", "/api/b", "/api/c", "/web/a", "/web/b", "/nowhere"])

    def test_renamed_route_drops_its_series_on_reload(self):
        port = self.pf.port()
        self.assertEqual(h.request(port, target="/api/a").status, 200)
        policy = h.simple_policy(self.up, access_log=self.log, routes=[
            {"name": "api-v2", "match": {"path_prefix": "/api"}, "cluster": "app"},
            {"match": {"path_prefix": "/web"}, "cluster": "app"}])
        mark = h.log_mark(self.pf)
        h.write_policy(self.pf, policy)
        h.wait_log(self.pf, r"applied version 2", since=mark, timeout=15)

        # The worker takes the new policy just after the log line: requests until one counts
        # under the new name (one that ran under the old policy counts in no exported series).
        def renamed():
            self.assertEqual(h.request(port, target="/api/b").status, 200)
            m = h.metrics(self.pf)
            return h.sample(m, "pilotfish_requests_total", listener="ingress", route="api-v2", cluster="app",
                            code="200") and m
        m = h.wait_for(renamed, 10, interval=0.05, what="a request counted under route api-v2")
        self.assertIsNone(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                   code="200"))
        self.assertIsNone(h.sample(m, "pilotfish_request_duration_seconds_count", listener="ingress", route="api",
                                   cluster="app"))


def split_policy(v1, v2, w1, w2, hash_on=None, workers=1):
    route = {"name": "recs", "clusters": [{"name": "v1", "weight": w1}, {"name": "v2", "weight": w2}]}
    if hash_on:
        route["hash_on"] = hash_on
    policy = h.simple_policy(v1, workers=workers, routes=[route])
    policy["clusters"] = [{"name": "v1", "endpoints": [v1.address]}, {"name": "v2", "endpoints": [v2.address]}]
    return policy


class SplitTest(unittest.TestCase):
    def setUp(self):
        self.v1 = h.Upstream("light", name="v1")
        self.v2 = h.Upstream("light", name="v2")
        self.addCleanup(self.v1.stop)
        self.addCleanup(self.v2.stop)

    def start(self, *args, **kw):
        self.pf = h.Pilotfish(split_policy(self.v1, self.v2, *args, **kw))
        self.addCleanup(self.pf.kill)

    def names(self, count, headers=None):
        out = []
        with h.Client(self.pf.port()) as c:
            for _ in range(count):
                r = c.request(target="/recommend", headers=headers)
                self.assertEqual(r.status, 200)
                out.append(r.json()["name"])
        return out

    def test_95_5_over_2000_requests(self):
        self.start(95, 5, workers=2)
        names = self.names(2000)
        v2 = names.count("v2")
        # Binomial(2000, 0.05): mean 100, standard deviation 9.7; 4.5 of them either way.
        self.assertGreater(v2, 56)
        self.assertLess(v2, 144)
        self.assertEqual(names.count("v1") + v2, 2000)
        m = h.metrics(self.pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="recs", cluster="v2",
                                  code="200"), v2)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="recs", cluster="v1",
                                  code="200"), 2000 - v2)

    def test_hash_on_header_keeps_a_user_on_one_cluster(self):
        self.start(50, 50, hash_on="header:x-user")
        seen = {}
        for i in range(40):
            names = set(self.names(5, headers=[("X-User", "user-%d" % i)]))
            self.assertEqual(len(names), 1, "user-%d went to %s" % (i, names))
            seen[i] = names.pop()
        # Both clusters have users (40 users at 50/50: all on one side has odds of 2 in 10^12).
        self.assertEqual(set(seen.values()), {"v1", "v2"})
        # Without the header, requests are drawn, and reach both.
        self.assertEqual(set(self.names(60)), {"v1", "v2"})

    def test_weights_change_under_load_with_nothing_lost(self):
        self.start(100, 0, workers=2)
        stop = threading.Event()
        results = []
        errors = []

        def load():
            try:
                with h.Client(self.pf.port()) as c:
                    while not stop.is_set():
                        r = c.request(target="/recommend")
                        results.append((r.status, r.json()["name"]))
            except Exception as e:  # noqa: BLE001 - any failure is the test's finding
                errors.append(repr(e))
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            h.wait_for(lambda: len(results) >= 200, 10, what="load under way")
            mark = h.log_mark(self.pf)
            h.write_policy(self.pf, split_policy(self.v1, self.v2, 0, 100, workers=2))
            h.wait_log(self.pf, r"applied version 2", since=mark, timeout=15)
            before = len(results)
            h.wait_for(lambda: len(results) >= before + 300, 15, what="load after the reload")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        self.assertEqual(errors, [])
        self.assertEqual({status for status, _ in results}, {200})
        names = [n for _, n in results]
        self.assertEqual(names[:100], ["v1"] * 100)
        # Every keep-alive connection moved over at once: the last 100 answers are all v2's.
        self.assertEqual(names[-100:], ["v2"] * 100)
        self.assertEqual(self.pf.log(last=1000).count("error"), 0, self.pf.log())


def faults(pf, route, kind):
    return h.sample(h.metrics(pf), "pilotfish_faults_injected_total", listener="ingress", route=route, kind=kind)


class FaultTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)

    def start(self, routes, cluster=None, upstream=None):
        self.pf = h.Pilotfish(h.simple_policy(upstream or self.up, routes=routes, cluster=cluster))
        self.addCleanup(self.pf.kill)
        return self.pf

    def test_abort_at_100_and_0_percent(self):
        self.start([{"name": "down", "match": {"path_prefix": "/down"}, "cluster": "app",
                     "fault": {"abort": {"percent": 100, "status": 503}}},
                    {"name": "up", "match": {"path_prefix": "/up"}, "cluster": "app",
                     "fault": {"abort": {"percent": 0, "status": 503}}}])
        with h.Client(self.pf.port()) as c:
            for _ in range(20):
                r = c.request(target="/down")
                self.assertEqual(r.status, 503)
                self.assertEqual(r.header("x-pilotfish-error"), "fault_abort")
                self.assertFalse(r.has_header("x-pilotfish-overloaded"))
        for _ in range(20):
            self.assertEqual(h.request(self.pf.port(), target="/up").status, 200)
        self.assertEqual([q["target"] for q in self.up.requests()], ["/up"] * 20)
        self.assertEqual(faults(self.pf, "down", "abort"), 20)
        self.assertEqual(faults(self.pf, "down", "delay"), 0)
        self.assertIsNone(faults(self.pf, "up", "abort"))
        m = h.metrics(self.pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="down", cluster="app",
                                  code="503"), 20)
        self.assertIsNone(h.sample(m, "pilotfish_upstream_requests_total", cluster="app", code="503"))

    def test_abort_at_half_over_1000_requests(self):
        self.start([{"name": "flaky", "cluster": "app", "fault": {"abort": {"percent": 50, "status": 500}}}])
        codes = []
        with h.Client(self.pf.port()) as c:
            for _ in range(1000):
                r = c.request(target="/x")
                codes.append(r.status)
                if r.status == 500:  # an abort closes nothing: no body was left unread
                    self.assertEqual(r.header("x-pilotfish-error"), "fault_abort")
        # Binomial(1000, 0.5): standard deviation 15.8; 4.5 of them either way.
        self.assertGreater(codes.count(500), 429)
        self.assertLess(codes.count(500), 571)
        self.assertEqual(codes.count(500) + codes.count(200), 1000)
        self.assertEqual(faults(self.pf, "flaky", "abort"), codes.count(500))

    def test_delay_holds_the_request_and_its_body(self):
        self.start([{"name": "slow", "cluster": "app", "fault": {"delay": {"percent": 100, "duration": "300ms"}}}])
        # Larger than what is queued for an upstream before the client is paused (256 KiB): the
        # client waits, then the rest flows once the delay is over.
        body = os.urandom(1000000)
        pieces = [body[i:i + 70000] for i in range(0, len(body), 70000)]
        with h.Client(self.pf.port(), timeout=10) as c:
            for method, headers, payload in [
                    ("GET", None, None),
                    ("POST", [("Content-Length", str(len(body)))], body),
                    ("POST", [("Transfer-Encoding", "chunked")], h.chunk_encode(pieces, trailers=[("X-T", "1")]))]:
                started = time.monotonic()
                r = c.request(method, "/slow", headers=headers, body=payload)
                waited = time.monotonic() - started
                self.assertEqual(r.status, 200)
                self.assertGreaterEqual(waited, 0.29, "answered before the delay was over")
                if payload:
                    self.assertEqual((r.json()["body_len"], r.json()["body_crc"]), (len(body), zlib.crc32(body)))
        self.assertEqual(faults(self.pf, "slow", "delay"), 3)

    def test_delay_to_an_http2_cluster(self):
        # Sidecar B takes HTTP/2 from A and speaks HTTP/1.1 to the app.
        b = h.Pilotfish(h.simple_policy(self.up))
        self.addCleanup(b.kill)
        a = self.start([{"name": "slow", "cluster": "app",
                         "fault": {"delay": {"percent": 100, "duration": "200ms"}}}],
                       cluster={"protocol": "http2"}, upstream="127.0.0.1:%d" % b.port())
        body = os.urandom(100000)
        pieces = [body[i:i + 9000] for i in range(0, len(body), 9000)]
        with h.Client(a.port(), timeout=10) as c:
            for headers, payload in [([("Content-Length", str(len(body)))], body),
                                     ([("Transfer-Encoding", "chunked")], h.chunk_encode(pieces))]:
                r = c.request("POST", "/slow", headers=headers, body=payload)
                self.assertEqual(r.status, 200)
                self.assertEqual((r.json()["body_len"], r.json()["body_crc"]), (len(body), zlib.crc32(body)))

    def test_delay_past_the_timeout_and_delay_then_abort(self):
        self.start([{"name": "late", "match": {"path_prefix": "/late"}, "cluster": "app",
                     "fault": {"delay": {"percent": 100, "duration": "2s"}}},
                    {"name": "both", "match": {"path_prefix": "/both"}, "cluster": "app",
                     "fault": {"delay": {"percent": 100, "duration": "200ms"},
                               "abort": {"percent": 100, "status": 429}}}],
                   cluster={"timeout": "300ms"})
        r = h.request(self.pf.port(), target="/late")
        self.assertEqual(r.status, 504)
        started = time.monotonic()
        r = h.request(self.pf.port(), target="/both")
        self.assertGreaterEqual(time.monotonic() - started, 0.19)
        self.assertEqual((r.status, r.header("x-pilotfish-error")), (429, "fault_abort"))
        self.assertEqual(self.up.requests(), [])

    def test_a_header_gates_the_fault(self):
        self.start([{"name": "chaos", "cluster": "app",
                     "fault": {"abort": {"percent": 100, "status": 503}, "header": "X-Chaos"}}])
        for _ in range(10):
            self.assertEqual(h.request(self.pf.port(), target="/a").status, 200)
        r = h.request(self.pf.port(), target="/a", headers=[("x-chaos", "1")])
        self.assertEqual((r.status, r.header("x-pilotfish-error")), (503, "fault_abort"))
        self.assertEqual(faults(self.pf, "chaos", "abort"), 1)


class RouteOverrideTest(unittest.TestCase):
    """A route's own timeout and retry, instead of its cluster's."""

    def test_timeout(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, cluster={"timeout": "5s"}, routes=[
            {"name": "quick", "match": {"headers": {"x-quick": "1"}}, "cluster": "app", "timeout": "300ms"},
            {"cluster": "app"}]))
        self.addCleanup(pf.kill)
        r = h.request(pf.port(), target="/slow?ms=1500", headers=[("x-quick", "1")])
        self.assertEqual((r.status, r.header("x-pilotfish-error")), (504, "timeout"))
        self.assertEqual(h.request(pf.port(), target="/slow?ms=500").status, 200)

    def test_retry(self):
        up = h.Upstream("fault", extra=["--fault", "503", "--fault-count", "2"])
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, cluster={"retry": {"retries": 0}}, routes=[
            {"name": "retried", "match": {"path_prefix": "/retried"}, "cluster": "app",
             "retry": {"retries": 2, "on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"}}},
            {"cluster": "app"}]))
        self.addCleanup(pf.kill)
        self.assertEqual(h.request(pf.port(), target="/plain").status, 503)  # the cluster's: no retry
        r = h.request(pf.port(), target="/retried")
        self.assertEqual(r.status, 200)
        self.assertEqual([q["fault"] for q in up.requests()], ["503", "503", None])
        m = h.metrics(pf)
        self.assertEqual(h.sample(m, "pilotfish_retries_total", cluster="app"), 1)


class AuthorizationTest(unittest.TestCase):
    """Deny rules first, then allow rules, on the listener and then the route."""

    @classmethod
    def setUpClass(cls):
        import test_gateway as gw
        import test_mtls as mt
        cls.gw, cls.mt = gw, mt
        cls.certs = mt.Certs()
        cls.dir = h.make_tmpdir("pf-authz-")
        cls.keys = gw.Keys(cls.dir)
        cls.jwks = os.path.join(cls.dir, "jwks.json")
        with open(cls.jwks, "w") as f:
            json.dump({"keys": [cls.keys.jwk_rsa()]}, f)
        cls.up = h.Upstream("echo")
        sid = mt.sid
        auth = {"jwks": cls.jwks, "issuer": gw.ISSUER, "audience": [gw.AUDIENCE]}
        mtls_policy = h.simple_policy(cls.up, listener={
            "mtls": True,
            "authorization": {"deny": [{"paths": [{"prefix": "/internal/"}]}]}}, routes=[
            {"name": "orders", "match": {"path_prefix": "/orders"}, "cluster": "app",
             "authorization": {"allow": [{"principals": [sid("a")]},
                                         {"principals": [sid("b")], "methods": ["GET"]}]}},
            {"name": "open", "cluster": "app"}])
        mtls_policy["identity"] = cls.certs.identity(cls.certs.server)
        cls.mtls = h.Pilotfish(mtls_policy)
        cls.jwt = h.Pilotfish(h.simple_policy(cls.up, listener={"auth": auth}, routes=[
            {"name": "admin", "match": {"path_prefix": "/admin"}, "cluster": "app",
             "authorization": {"deny": [{"methods": ["DELETE"], "claims": {"scope": ["read-only"]}}],
                               "allow": [{"claims": {"scope": ["admin"]}},
                                         {"claims": {"sub": ["root"], "aud": [gw.AUDIENCE]}}]}},
            {"name": "rest", "cluster": "app"}]))

    @classmethod
    def tearDownClass(cls):
        cls.mtls.kill()
        cls.jwt.kill()
        cls.up.stop()

    def as_peer(self, pair, method="GET", target="/orders/1"):
        ctx = self.mt.client_ctx(self.certs.ca, *pair)
        with self.mt.TlsClient(self.mtls.port(), ctx) as c:
            return c.request(method, target)

    def test_by_principal_and_method(self):
        self.assertEqual(self.as_peer(self.certs.a, "DELETE").status, 200)
        self.assertEqual(self.as_peer(self.certs.b, "GET").status, 200)
        r = self.as_peer(self.certs.b, "DELETE")
        self.assertEqual((r.status, r.header("x-pilotfish-error")), (403, "authz_denied"))
        self.assertIn(self.as_peer(self.certs.b, "delete").status, (400, 403))  # the method's case is no way around
        self.assertEqual(self.as_peer(self.certs.c, "GET").status, 403)
        self.assertEqual(self.as_peer(self.certs.c, "GET", "/other").status, 200)  # another route: no rule

    def test_listener_deny_holds_against_path_tricks(self):
        before = self.mt.authz_denied(self.mtls, "ingress")
        tricks = ["/internal/x", "/x/../internal/x", "//internal/x", "/%69nternal/x", "/./internal/x",
                  "/internal;a=b/x", "/internal;/x", "/INTERNAL/../internal/x", "/orders/../internal/x"]
        for target in tricks:
            r = self.as_peer(self.certs.a, "GET", target)
            self.assertEqual(r.status, 403, target)
        self.assertEqual(self.mt.authz_denied(self.mtls, "ingress") - before, len(tricks))
        self.assertEqual(self.as_peer(self.certs.a, "GET", "/internalx").status, 200)  # a prefix, not a substring
        seen = [q["target"] for q in self.up.requests()]
        self.assertFalse([t for t in seen if "nternal/" in t], seen)

    def test_by_jwt_claims(self):
        token = lambda **c: "Bearer " + self.keys.token(self.gw.claims(**c))  # noqa: E731

        def get(method, tok, target="/admin/users"):
            return h.request(self.jwt.port(), method, target, headers=[("Authorization", tok)]).status
        self.assertEqual(get("GET", token(scope="read admin")), 200)
        self.assertEqual(get("GET", token(sub="root")), 200)
        self.assertEqual(get("GET", token(sub="root", aud="someone-else")), 401)  # auth itself refuses it
        self.assertEqual(get("GET", token(scope="read")), 403)
        self.assertEqual(get("DELETE", token(scope="admin read-only")), 403)  # deny first
        self.assertEqual(get("GET", token(scope="admin read-only")), 200)
        self.assertEqual(get("GET", token(scope="read"), "/elsewhere"), 200)


class HeaderRulesTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up, routes=[
            {"name": "canary", "match": {"path_prefix": "/"}, "cluster": "app",
             "request_headers": {"set": {"X-Env": "canary"}, "add": {"x-route": "${route}", "x-rid": "id=${request_id}",
                                                                    "x-peer": "${peer_identity}"},
                                 "remove": ["x-debug"]},
             "response_headers": {"set": {"server": "shop"}, "add": {"x-served-by": "${route}"},
                                  "remove": ["X-Kept"]}}]))
        self.addCleanup(self.pf.kill)

    def test_request_and_response_rules(self):
        r = h.request(self.pf.port(), target="/a", headers=[
            ("X-Env", "prod"), ("x-env", "staging"), ("X-Debug", "1"), ("x_debug", "2"), ("x-request-id", "abc-1"),
            ("X-Route", "forged"), ("X-Peer", "spiffe://forged/admin")])
        self.assertEqual(r.status, 200)
        seen = [(k.lower(), v) for k, v in r.json()["headers"]]
        self.assertEqual([v for k, v in seen if k == "x-env"], ["canary"])
        self.assertEqual([v for k, v in seen if k in ("x-debug", "x_debug")], [])  # any spelling of a removed name
        self.assertEqual([v for k, v in seen if k == "x-route"], ["forged", "canary"])  # add keeps the client's
        self.assertEqual([v for k, v in seen if k == "x-rid"], ["id=abc-1"])
        # No mTLS peer: left out, not empty; and a field carrying the identity never keeps the client's copy.
        self.assertEqual([v for k, v in seen if k == "x-peer"], [])
        self.assertEqual([v for k, v in seen if k == "x-request-id"], ["abc-1"])
        self.assertEqual(r.header("server"), "shop")
        self.assertEqual(r.header("x-served-by"), "canary")
        r = h.request(self.pf.port(), target="/respheaders")
        self.assertEqual(r.status, 200)
        self.assertFalse(r.has_header("x-kept"))
        self.assertEqual(r.header("x-served-by"), "canary")

    def test_check_refuses_what_pilotfish_sets(self):
        cases = [({"set": {"x-forwarded-client-cert": "By=me"}}, "is set by pilotfish for the app to trust"),
                 ({"remove": ["X-Forwarded-For"]}, "is set by pilotfish for the app to trust"),
                 ({"set": {"x-request-id": "1"}}, "is set by pilotfish for the app to trust"),
                 ({"remove": ["content-length"]}, "is not a header a policy removes"),
                 ({"remove": ["x_request_id"]}, "is set by pilotfish for the app to trust"),
                 ({"add": {"x-a": "${who}"}}, "is one of ${peer_identity}, ${request_id} and ${route}"),
                 ({}, "has set, add or remove")]
        for rules, message in cases:
            rc, out = CheckTest.check(self, [{"cluster": "app", "request_headers": rules}])
            self.assertEqual(rc, 1, (rules, out))
            self.assertIn(message, out, rules)
        rc, out = CheckTest.check(self, [{"cluster": "app", "response_headers": {"remove": ["x-forwarded-for"]}}])
        self.assertEqual(rc, 0, out)  # a response's is the app's to send or not


class DirectResponseTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        policy = h.simple_policy(self.up, routes=[
            {"name": "blocked", "match": {"path_prefix": "/admin"},
             "respond": {"status": 404, "body": "not here\n", "headers": {"X-Reason": "blocked", "cache-control": "no-store"}}},
            {"match": {"path_prefix": "/teapot"}, "respond": {"status": 418}},
            {"match": {"path_prefix": "/private/"}, "respond": {"status": 403}},
            {"match": {"path_prefix": "/json"},
             "respond": {"status": 200, "body": '{"ok":true}', "headers": {"content-type": "application/json"}}},
            {"name": "moved", "match": {"path_prefix": "/old"}, "redirect": {"path": "/new", "status": 308}},
            {"match": {"path_prefix": "/secure"}, "redirect": {"scheme": "https", "host": "shop.example:8443"}},
            {"cluster": "app"}])
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)

    def test_respond_over_http1_keeps_the_connection(self):
        with h.Client(self.pf.port()) as c:
            r = c.request(target="/admin/users")
            self.assertEqual(r.status, 404)
            self.assertEqual(r.body, b"not here\n")
            self.assertEqual(r.header("x-reason"), "blocked")
            self.assertEqual(r.header("cache-control"), "no-store")
            self.assertEqual(r.header("content-type"), "text/plain; charset=utf-8")
            self.assertFalse(r.has_header("x-pilotfish-error"))
            # A body is read and dropped; the connection stays for the next request.
            r = c.request("POST", "/admin/x", headers=[("Content-Length", "5")], body=b"hello")
            self.assertEqual(r.status, 404)
            self.assertEqual(r.body, b"not here\n")
            r = c.request("POST", "/admin/x", headers=[("Transfer-Encoding", "chunked")],
                          body=h.chunk_encode([b"abc", b"def"]))
            self.assertEqual(r.status, 404)
            r = c.request("HEAD", "/admin/x")
            self.assertEqual((r.status, r.body, r.header("content-length")), (404, b"", "9"))
            r = c.request(target="/json")
            self.assertEqual((r.status, r.body, r.header("content-type")), (200, b'{"ok":true}', "application/json"))
            r = c.request(target="/teapot")
            self.assertEqual((r.status, r.body, r.header("content-length")), (418, b"", "0"))
            r = c.request(target="/app")
            self.assertEqual(r.status, 200)
        # Nothing but the last request reached the app.
        self.assertEqual([q["target"] for q in self.up.requests()], ["/app"])

    def test_path_tricks_reach_the_same_answer(self):
        for target in ["/admin", "/x/../admin/a", "//admin/a", "/%61dmin/a", "/./admin", "/admin;x=1",
                       "/ADMIN/../admin"]:
            r = h.request(self.pf.port(), target=target)
            self.assertEqual(r.status, 404, target)
            self.assertEqual(r.header("x-reason"), "blocked", target)
        # "/private;x=1/a" is "/private/a" to a server that drops ; parameters, but would match
        # the catch-all route as written: refused, not sent past the route that guards it.
        for target in ["/private;x=1/a", "/private;/a"]:
            r = h.request(self.pf.port(), target=target)
            self.assertEqual((r.status, r.header("x-pilotfish-error")), (400, "ambiguous_path"), target)
        self.assertEqual(h.request(self.pf.port(), target="/private/a;v=1").status, 403)
        self.assertEqual(self.up.requests(), [])

    def test_redirects(self):
        r = h.request(self.pf.port(), target="/old/page?q=1&r=%22x%22", host="shop.local")
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("location"), "http://shop.local/new?q=1&r=%22x%22")
        self.assertEqual(r.body, b"")
        r = h.request(self.pf.port(), target="/secure/cart?id=7", host="shop.local:8080")
        self.assertEqual(r.status, 301)
        self.assertEqual(r.header("location"), "https://shop.example:8443/secure/cart?id=7")
        # The request's own path and query are copied only as URI characters.
        r = h.request(self.pf.port(), target="/secure/a%0D%0Ab?x=<y>", host="shop.local")
        self.assertEqual(r.status, 301)
        self.assertEqual(r.header("location"), "https://shop.example:8443/secure/a%0D%0Ab?x=%3Cy%3E")
        m = h.metrics(self.pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="moved", cluster="",
                                  code="308"), 1)
        self.assertEqual(self.up.requests(), [])

    def test_over_http2(self):
        def curl(path, *extra):
            p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", *extra,
                                "http://127.0.0.1:%d%s" % (self.pf.port(), path)],
                               capture_output=True, timeout=20)
            self.assertEqual(p.returncode, 0, p.stderr)
            return p.stdout.decode()
        out = curl("/admin/x")
        self.assertTrue(out.startswith("HTTP/2 404"), out)
        self.assertIn("x-reason: blocked", out)
        self.assertTrue(out.endswith("not here\n"), out)
        out = curl("/admin/x", "--data-binary", "abc" * 1000)
        self.assertTrue(out.startswith("HTTP/2 404"), out)
        out = curl("/old/x?y=1")
        self.assertTrue(out.startswith("HTTP/2 308"), out)
        self.assertIn("location: http://127.0.0.1:%d/new?y=1" % self.pf.port(), out)
        self.assertEqual(self.up.requests(), [])


def mirrored(pf, result, cluster="shadow"):
    return h.sample(h.metrics(pf), "pilotfish_mirror_requests_total", cluster=cluster, result=result) or 0


def header(record, name):
    values = [v for n, v in record["headers"] if n.lower() == name]
    return values[0] if len(values) == 1 else values


class MirrorTest(unittest.TestCase):
    """routes[].mirror: copies go to the shadow, its answers are dropped, and a shadow that is down,
    hangs or is full never reaches the requests it copies."""

    def setUp(self):
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)
        self.pf = None

    def tearDown(self):
        # Copies may still be in flight (one waits at the hanging shadow): the process ends
        # cleanly anyway, every handle closed, nothing leaked.
        if self.pf is not None:
            self.pf.stop_and_check(self)

    def start(self, mirror, shadow, shadow_cluster=None, workers=1):
        policy = h.simple_policy(self.app, workers=workers,
                                 routes=[{"name": "api", "cluster": "app", "mirror": mirror}])
        c = {"name": "shadow", "endpoints": [shadow]}
        c.update(shadow_cluster or {})
        policy["clusters"].append(c)
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)
        return self.pf

    def test_copies_reach_the_shadow_and_its_answers_are_dropped(self):
        shadow = h.Upstream("echo", name="shadow")
        self.addCleanup(shadow.stop)
        pf = self.start({"cluster": "shadow", "percent": 100}, shadow.address)
        body = bytes(range(256)) * 40  # 10 KiB
        with h.Client(pf.port()) as c:
            r = c.request("GET", "/items?q=1", headers=[("X-Custom", "a")], host="shop.local:8080")
            self.assertEqual((r.status, r.json()["name"]), (200, "app"))
            r = c.request("POST", "/orders", body=body, host="shop.local")
            self.assertEqual((r.status, r.json()["body_len"]), (200, len(body)))
            c.send(h.build_request("PUT", "/upload", [("Transfer-Encoding", "chunked")],
                                   h.chunk_encode([b"abc", b"defgh"]), host="shop.local"))
            r = c.read_response("PUT")
            self.assertEqual((r.status, r.json()["body_len"]), (200, 8))
        # Each record is there from its head on; its body's length and CRC once it is complete.
        copies = h.wait_for(lambda: len(shadow.requests()) >= 3 and all(q["complete"] for q in shadow.requests()) and
                            shadow.requests(), 5, what="3 complete copies at the shadow")
        primaries = self.app.requests()
        self.assertEqual([(q["method"], q["target"]) for q in copies],
                         [("GET", "/items?q=1"), ("POST", "/orders"), ("PUT", "/upload")])
        # The shadow is told it is one (its Host, before the port), and sees what the app sees.
        self.assertEqual(header(copies[0], "host"), "shop.local-shadow:8080")
        self.assertEqual(header(copies[1], "host"), "shop.local-shadow")
        self.assertEqual(header(copies[0], "x-custom"), "a")
        for copy, primary in zip(copies, primaries):
            self.assertEqual(header(copy, "x-request-id"), header(primary, "x-request-id"))
            # In the request's trace, as a parent of its own, not sampled.
            ours, theirs = header(copy, "traceparent").split("-"), header(primary, "traceparent").split("-")
            self.assertEqual((ours[1], ours[3], theirs[3]), (theirs[1], "00", "01"))
            self.assertNotEqual(ours[2], theirs[2])
            self.assertEqual(header(copy, "x-forwarded-for"), header(primary, "x-forwarded-for"))
        self.assertEqual((copies[1]["body_len"], copies[1]["body_crc"]), (len(body), zlib.crc32(body)))
        # A chunked body goes whole, with its length.
        self.assertEqual((copies[2]["body_crc"], header(copies[2], "content-length"), copies[2]["chunked"]),
                         (zlib.crc32(b"abcdefgh"), "8", False))
        h.wait_for(lambda: mirrored(pf, "sent") == 3, 5, what="3 copies counted sent")
        m = h.metrics(pf)
        self.assertEqual(h.sample(m, "pilotfish_mirror_requests_total", cluster="shadow", result="dropped"), 0)
        self.assertEqual(h.sample(m, "pilotfish_upstream_requests_total", cluster="shadow", code="200"), 3)
        # The client saw the primary's answers only, counted under the app's cluster.
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                  code="200"), 3)

    def test_percent_over_400_requests(self):
        shadow = h.Upstream("light", name="shadow")
        self.addCleanup(shadow.stop)
        pf = self.start({"cluster": "shadow", "percent": 25}, shadow.address, workers=2)
        with h.Client(pf.port()) as c:
            for _ in range(400):
                self.assertEqual(c.request(target="/a").status, 200)
        # Binomial(400, 0.25): mean 100, standard deviation 8.7; 5 of them either way.
        sent = h.wait_for(lambda: mirrored(pf, "sent") + mirrored(pf, "failed") >= 57 and mirrored(pf, "sent"), 5,
                          what="copies counted")
        self.assertGreater(sent, 56)
        self.assertLess(sent, 144)
        self.assertEqual(mirrored(pf, "failed") + mirrored(pf, "dropped"), 0)

    def test_a_shadow_that_is_down_changes_nothing_for_the_primary(self):
        closed = h.free_port()
        pf = self.start({"cluster": "shadow"}, "127.0.0.1:%d" % closed)
        with h.Client(pf.port()) as c:
            for i in range(200):
                r = c.request("POST" if i % 2 else "GET", "/a", body=b"x" * 100 if i % 2 else None)
                self.assertEqual(r.status, 200)
        self.assertEqual(len(self.app.requests()), 200)
        h.wait_for(lambda: mirrored(pf, "failed") + mirrored(pf, "dropped") == 200, 10, what="200 copies failed")
        self.assertEqual(mirrored(pf, "sent"), 0)
        m = h.metrics(pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                  code="200"), 200)
        self.assertGreater(h.sample(m, "pilotfish_upstream_requests_total", cluster="shadow", code="connect_failure"), 0)

    def test_a_shadow_that_hangs_is_bounded_and_times_out(self):
        shadow = h.Upstream("hang", name="shadow")
        self.addCleanup(shadow.stop)
        pf = self.start({"cluster": "shadow", "max_in_flight": 5, "max_body_bytes": 1000}, shadow.address,
                        shadow_cluster={"timeout": "3s", "outlier_detection": {"consecutive_failures": 10}})
        # 100 requests one after another: each is answered while its copy waits at the shadow,
        # which never answers; 5 copies wait, the others are dropped rather than queued.
        with h.Client(pf.port()) as c:
            for _ in range(100):
                self.assertEqual(c.request(target="/a").status, 200)
            # A body over max_body_bytes is not copied (known by its length, or found chunked).
            r = c.request("POST", "/big", body=b"y" * 5000)
            self.assertEqual((r.status, r.json()["body_len"]), (200, 5000))
            c.send(h.build_request("POST", "/big", [("Transfer-Encoding", "chunked")],
                                   h.chunk_encode([b"z" * 900, b"z" * 900]), host="test.local"))
            r = c.read_response("POST")
            self.assertEqual((r.status, r.json()["body_len"]), (200, 1800))
        self.assertEqual(len(self.app.requests()), 102)
        self.assertEqual((mirrored(pf, "sent"), mirrored(pf, "dropped")), (0, 97))
        # The cluster's timeout ends the 5 waiting copies.
        h.wait_for(lambda: mirrored(pf, "failed") == 5, 10, what="5 copies timed out")
        self.assertEqual(h.sample(h.metrics(pf), "pilotfish_upstream_requests_total", cluster="shadow",
                                  code="timeout"), 5)
        # And copies go again once there is room.
        with h.Client(pf.port()) as c:
            self.assertEqual(c.request(target="/again").status, 200)
        h.wait_for(lambda: len(shadow.requests()) >= 6, 5, what="a 6th copy at the shadow")

    def test_an_http2_shadow(self):
        # The shadow is reached over HTTP/2 (prior knowledge): another pilotfish in front of an echo.
        echo = h.Upstream("echo", name="shadow-app")
        self.addCleanup(echo.stop)
        front = h.Pilotfish(h.simple_policy(echo))
        self.addCleanup(front.kill)
        pf = self.start({"cluster": "shadow"}, "127.0.0.1:%d" % front.port(), shadow_cluster={"protocol": "http2"})
        body = b"q" * 3000
        with h.Client(pf.port()) as c:
            self.assertEqual(c.request("POST", "/h2", body=body, host="shop.local").status, 200)
            self.assertEqual(c.request("HEAD", "/h2").status, 200)
        # The copies go on their own: the second may overtake the first (which has a body).
        done = h.wait_for(lambda: len(echo.requests()) >= 2 and all(q["complete"] for q in echo.requests()) and
                          echo.requests(), 5, what="2 complete copies at the shadow")
        copies = sorted(done, key=lambda q: q["method"], reverse=True)
        self.assertEqual([(q["method"], q["target"]) for q in copies], [("POST", "/h2"), ("HEAD", "/h2")])
        self.assertEqual(header(copies[0], "host"), "shop.local-shadow")
        self.assertEqual(copies[0]["body_len"], len(body))
        h.wait_for(lambda: mirrored(pf, "sent") == 2, 5, what="2 copies sent")


class CheckTest(unittest.TestCase):
    """`pilotfish check` refuses what a route cannot say, with the file, line and column."""

    def check(self, routes, clusters=None):
        return h.check_policy({"version": 1, "service": "it",
                               "listeners": [{"name": "ingress", "address": "127.0.0.1:0", "routes": routes}],
                               "clusters": clusters or [{"name": "app", "endpoints": ["127.0.0.1:1"]}]})

    def test_route_names(self):
        rc, out = self.check([{"name": "a", "match": {"path_prefix": "/a"}, "cluster": "app"},
                              {"name": "a", "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        self.assertIn("routes[1].name", out)
        self.assertIn("already the name of another route", out)
        rc, out = self.check([{"name": "has space", "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        self.assertIn("is not a valid name", out)
        rc, out = self.check([{"name": "x" * 200, "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        rc, out = self.check([{"name": "checkout-v1.2_a", "cluster": "app"}])
        self.assertEqual(rc, 0, out)

    def test_direct_answers(self):
        cases = [
            ({"cluster": "app", "respond": {"status": 200}}, "cannot have both cluster and respond"),
            ({"redirect": {"path": "/a"}, "respond": {"status": 200}}, "cannot have both respond and redirect"),
            ({"match": {"path_prefix": "/a"}}, "routes[0].cluster: missing; every route names the cluster it sends to"),
            ({"redirect": {"status": 301}}, "names at least one of scheme, host and path"),
            ({"redirect": {"path": "/a", "status": 303}}, "not a redirect status"),
            ({"redirect": {"scheme": "ftp"}}, "is not a scheme"),
            ({"redirect": {"host": "bad host"}}, "is not a host"),
            ({"redirect": {"path": "a b"}}, "is not a path"),
            ({"respond": {"status": 99}}, "routes[0].respond.status"),
            ({"respond": {"status": 204, "body": "x"}}, "a 204 has no body"),
            ({"respond": {"headers": {"Content-Length": "5"}}}, "is not a header a policy sets"),
            ({"respond": {"headers": {"x-pilotfish-error": "no"}}}, "is not a header a policy sets"),
            ({"respond": {"headers": {"x-a": "one\u0001two"}}}, "is not a header value"),
            ({"respond": {"headers": {"x-a": "1", "X-A": "2"}}}, "given twice"),
            ({"respond": {"body": "x" * 70000}}, "at most 65536 are sent"),
            ({"clusters": [{"name": "app", "weight": 0}]}, "the weights sum to 0"),
            ({"clusters": [{"name": "app", "weight": 1}, {"name": "ap", "weight": 1}]},
             "routes[0].clusters[1].name: no cluster is named 'ap' (did you mean 'app'?)"),
            ({"clusters": [{"name": "app", "weight": 1}, {"name": "app", "weight": 2}]}, "is in this split twice"),
            ({"clusters": [{"name": "app"}]}, "weight: missing"),
            ({"clusters": []}, "must list at least one cluster"),
            ({"cluster": "app", "clusters": [{"name": "app", "weight": 1}]}, "cannot have both cluster and clusters"),
            ({"cluster": "app", "hash_on": "header:x-user"}, "this route has no clusters to choose from"),
            ({"clusters": [{"name": "app", "weight": 1}], "hash_on": "cookie"}, "is not something to keep a caller by"),
            ({"cluster": "app", "fault": {}}, "a fault has a delay, an abort or both"),
            ({"cluster": "app", "fault": {"abort": {"percent": 101, "status": 503}}}, "fault.abort.percent"),
            ({"cluster": "app", "fault": {"abort": {"percent": 5}}}, "fault.abort.status: missing"),
            ({"cluster": "app", "fault": {"delay": {"percent": 5, "duration": "0s"}}}, "fault.delay.duration"),
            ({"respond": {"status": 200}, "fault": {"abort": {"percent": 5, "status": 500}}}, "this route answers itself"),
            ({"redirect": {"path": "/a"}, "timeout": "1s"}, "routes[0].timeout: applies to requests sent to a cluster"),
            ({"cluster": "app", "retry": {"on": ["sometimes"]}}, "routes[0].retry.on[0]"),
            ({"cluster": "app", "authorization": {}}, "has deny rules, allow rules or both"),
            ({"cluster": "app", "authorization": {"allow": []}}, "must list at least one rule"),
            ({"cluster": "app", "authorization": {"allow": [{"methods": []}]}}, "must list at least one value"),
            ({"cluster": "app", "authorization": {"allow": [{"paths": [{"prefix": "/a", "exact": "/b"}]}]}},
             "a path is {prefix: P} or {exact: P}"),
            ({"cluster": "app", "authorization": {"allow": [{"paths": [{"exact": "a"}]}]}}, "is not a path"),
            ({"cluster": "app", "authorization": {"allow": [{"principals": ["bob"]}]}}, "principals[0]"),
            ({"cluster": "app", "authorization": {"allow": [{"claims": {"scope": ["x"]}}]}}, "no auth applies here"),
            ({"cluster": "app", "authorization": {"deny": [{"principals": ["spiffe://a/b"]}]}}, "needs mtls: true"),
            ({"cluster": "app", "retry": {"budget": {"ratio": 0.5}}}, "retry.budget: is the cluster's"),
            ({"cluster": "app", "mirror": {"cluster": "shadwo"}}, "mirror.cluster: no cluster is named 'shadwo'"),
            ({"cluster": "app", "mirror": {"cluster": "app"}}, "a copy would reach it twice"),
            ({"clusters": [{"name": "app", "weight": 1}], "mirror": {"cluster": "app"}}, "a copy would reach it twice"),
            ({"cluster": "app", "mirror": {"percent": 5}}, "mirror.cluster: missing"),
            ({"cluster": "app", "mirror": {"cluster": "app", "percent": 120}}, "mirror.percent"),
            ({"respond": {"status": 200}, "mirror": {"cluster": "app"}}, "copies requests sent to a cluster"),
        ]
        for route, message in cases:
            rc, out = self.check([route])
            self.assertEqual(rc, 1, (route, out))
            self.assertIn(message, out, route)
        rc, out = self.check([{"respond": {"status": 503, "body": "down for maintenance\n",
                                           "headers": {"retry-after": "120"}}}])
        self.assertEqual(rc, 0, out)
        self.assertIn("not used by any route", out)  # the cluster is unused: a warning only

    def test_tcp_listener_route_cannot_answer(self):
        policy = {"version": 1, "service": "it",
                  "listeners": [{"name": "db", "address": "127.0.0.1:0", "protocol": "tcp",
                                 "routes": [{"respond": {"status": 200}}]}],
                  "clusters": [{"name": "app", "endpoints": ["127.0.0.1:1"]}]}
        rc, out = h.check_policy(policy)
        self.assertEqual(rc, 1, out)
        self.assertIn("a tcp listener's route sends to a cluster", out)
        policy["listeners"][0]["routes"] = [{"clusters": [{"name": "app", "weight": 1}],
                                             "authorization": {"deny": [{"methods": ["GET"]}]}}]
        policy["listeners"][0]["authorization"] = {"allow": [{"methods": ["GET"]}]}
        rc, out = h.check_policy(policy)
        self.assertEqual(rc, 1, out)
        for key in ("routes[0].clusters", "routes[0].authorization", "listeners[0].authorization"):
            self.assertIn(key, out)


if __name__ == "__main__":
    h.main()
