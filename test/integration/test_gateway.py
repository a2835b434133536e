#!/usr/bin/env python3
"""Gateway features: `auth` (bearer JWTs, RS256 and ES256, verified against a JWKS file that is
watched and reloaded) and `rate_limit` (token buckets per client key, shared by all workers).
Keys and tokens are made here with the openssl CLI; every check is a real request through the
real binary to a real upstream."""

import base64
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ISSUER = "https://auth.shop.local"
AUDIENCE = "shop-api"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_ecdsa_to_raw(der):
    """An ECDSA-Sig-Value (DER) as JWS wants it: r || s, 32 bytes each."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(32, b"\x00")
        i += 2 + n
    return out


class Keys:
    def __init__(self, folder):
        self.dir = folder
        self.rsa = os.path.join(folder, "rsa.pem")
        self.ec = os.path.join(folder, "ec.pem")
        h.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.rsa)
        h.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.ec)

    def jwk_rsa(self, kid="rsa-1", path=None):
        modulus = h.openssl("rsa", "-in", path or self.rsa, "-noout", "-modulus").strip().split("=", 1)[1]
        return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(bytes.fromhex(modulus)),
                "e": "AQAB"}

    def jwk_ec(self, kid="ec-1"):
        der_path = os.path.join(self.dir, "ec-pub.der")
        h.openssl("pkey", "-in", self.ec, "-pubout", "-outform", "DER", "-out", der_path)
        with open(der_path, "rb") as f:
            point = f.read()[-65:]
        assert point[0] == 4
        return {"kty": "EC", "kid": kid, "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:])}

    def token(self, claims, alg="RS256", kid="rsa-1", key=None, tamper=False):
        header = {"alg": alg, "typ": "JWT", "kid": kid}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        if alg in ("none", "HS256"):
            return signing_input + "." + b64url(b"x" * 32)
        data_path = os.path.join(self.dir, "input-%d" % time.monotonic_ns())
        with open(data_path, "w") as f:
            f.write(signing_input)
        sig_path = data_path + ".sig"
        h.openssl("dgst", "-sha256", "-sign", key or (self.rsa if alg == "RS256" else self.ec), "-out", sig_path,
                  data_path)
        with open(sig_path, "rb") as f:
            sig = f.read()
        if alg == "ES256":
            sig = der_ecdsa_to_raw(sig)
        if tamper:
            claims = dict(claims, sub="mallory")
            signing_input = signing_input.split(".")[0] + "." + b64url(json.dumps(claims).encode())
        return signing_input + "." + b64url(sig)


def claims(**extra):
    now = int(time.time())
    c = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    c.update(extra)
    return c


def upstream_header(r, name):
    return [v for k, v in r.json()["headers"] if k.lower() == name]


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = h.make_tmpdir("pf-gw-")
        cls.keys = Keys(cls.dir)
        cls.jwks = os.path.join(cls.dir, "jwks.json")
        with open(cls.jwks, "w") as f:
            json.dump({"keys": [cls.keys.jwk_rsa(), cls.keys.jwk_ec()]}, f)
        cls.up = h.Upstream("echo")
        auth = {"jwks": cls.jwks, "issuer": ISSUER, "audience": [AUDIENCE, "other"], "subject_header": "x-user",
                "clock_skew": "30s"}
        cls.policy = h.simple_policy(cls.up, workers=2, listener={"auth": auth}, routes=[
            {"match": {"path_prefix": "/health"}, "cluster": "app", "auth": False},
            {"cluster": "app"}])
        cls.pf = h.Pilotfish(cls.policy)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()
        cls.up.stop()

    def get(self, token=None, path="/api", headers=()):
        hs = list(headers)
        if token is not None:
            hs.append(("Authorization", "Bearer " + token))
        return h.request(self.pf.port(), "GET", path, headers=hs)

    def assert_401(self, r, description=None):
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.header("x-pilotfish-error"), "unauthorized")
        challenge = r.header("www-authenticate")
        self.assertTrue(challenge.startswith('Bearer realm="pilotfish"'), challenge)
        if description:
            self.assertRegex(challenge, r'error="(invalid_token|invalid_request)"')
            self.assertIn(description, challenge)

    def test_rs256_and_es256_tokens_pass_with_the_subject(self):
        before = len(self.up.requests())
        r = self.get(self.keys.token(claims()), headers=[("x-user", "forged-admin"), ("X_User", "forged-too")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(upstream_header(r, "x-user"), ["alice"], "only pilotfish's x-user reaches the app")
        self.assertEqual(upstream_header(r, "x_user"), [], "nor a spelling some servers read as x-user")
        r = self.get(self.keys.token(claims(sub="bob", aud=["x", "other"]), alg="ES256", kid="ec-1"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(upstream_header(r, "x-user"), ["bob"])
        self.assertEqual(len(self.up.requests()), before + 2)

    def test_refusals(self):
        m0 = h.sample(h.metrics(self.pf), "pilotfish_auth_failures_total", listener="ingress") or 0
        before = len(self.up.requests())
        now = int(time.time())
        self.assert_401(self.get())                                   # no token
        self.assert_401(self.get("not.a.jwt"), "malformed token")
        self.assert_401(self.get(self.keys.token(claims(), tamper=True)), "bad signature")
        self.assert_401(self.get(self.keys.token(claims(exp=now - 120))), "token expired")
        self.assert_401(self.get(self.keys.token(claims(nbf=now + 120))), "token not valid yet")
        self.assert_401(self.get(self.keys.token(claims(iss="https://evil"))), "wrong issuer")
        self.assert_401(self.get(self.keys.token(claims(aud="someone-else"))), "wrong audience")
        self.assert_401(self.get(self.keys.token(claims(), alg="none")), "unsupported alg")
        self.assert_401(self.get(self.keys.token(claims(), alg="HS256")), "unsupported alg")
        self.assert_401(self.get(self.keys.token({k: v for k, v in claims().items() if k != "exp"})), "no exp claim")
        self.assert_401(self.get(self.keys.token(claims(), kid="unknown")), "no key for this token")
        self.assert_401(self.get(self.keys.token(claims(exp=str(now + 300)))), "invalid exp claim")  # a string
        # Two Authorization headers: which would the service read? Neither gets through.
        two = [("Authorization", "Bearer " + self.keys.token(claims())), ("Authorization", "Bearer forged.x.y")]
        self.assert_401(h.request(self.pf.port(), "GET", "/api", headers=two), "more than one Authorization header")
        # Signed by a key the JWKS does not hold, under a kid it does.
        other = os.path.join(self.dir, "other-rsa.pem")
        h.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other)
        self.assert_401(self.get(self.keys.token(claims(), key=other)), "bad signature")
        self.assertEqual(len(self.up.requests()), before, "no refused request reaches the app")
        m1 = h.sample(h.metrics(self.pf), "pilotfish_auth_failures_total", listener="ingress")
        self.assertEqual(m1 - m0, 14)

    def test_clock_skew_is_allowed(self):
        now = int(time.time())
        self.assertEqual(self.get(self.keys.token(claims(exp=now - 10))).status, 200)
        self.assertEqual(self.get(self.keys.token(claims(nbf=now + 10))).status, 200)

    def test_a_route_can_turn_auth_off(self):
        r = self.get(path="/health", headers=[("x-user", "forged")])
        self.assertEqual(r.status, 200)
        self.assertEqual(upstream_header(r, "x-user"), [], "the listener's subject header is still stripped")


class JwksRotationTest(unittest.TestCase):
    def test_a_new_jwks_file_is_used_without_restart(self):
        d = h.make_tmpdir("pf-gw-rot-")
        keys = Keys(d)
        jwks = os.path.join(d, "jwks.json")
        with open(jwks, "w") as f:
            json.dump({"keys": [keys.jwk_rsa(kid="old")]}, f)
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, listener={"auth": {"jwks": jwks}}))
        self.addCleanup(pf.kill)
        old_token = keys.token(claims(), kid="old")
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + old_token)]).status,
                         200)
        new_key = os.path.join(d, "new-rsa.pem")
        h.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", new_key)
        new_token = keys.token(claims(), kid="new", key=new_key)
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + new_token)]).status,
                         401)
        mark = h.log_mark(pf)
        # A broken file is refused and the keys in use stay.
        with open(jwks + ".tmp", "w") as f:
            f.write("{not json")
        os.rename(jwks + ".tmp", jwks)
        h.wait_log(pf, r"jwks .* changed but is refused", since=mark, timeout=5)
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + old_token)]).status,
                         200)
        with open(jwks + ".tmp", "w") as f:
            json.dump({"keys": [keys.jwk_rsa(kid="new", path=new_key)]}, f)
        os.rename(jwks + ".tmp", jwks)
        h.wait_log(pf, r"jwks .* reloaded", since=mark, timeout=5)
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + new_token)]).status,
                         200)
        self.assertEqual(h.request(pf.port(), "GET", "/", headers=[("Authorization", "Bearer " + old_token)]).status,
                         401)
        pf.stop_and_check(self)


class JwtCacheTest(unittest.TestCase):
    def test_a_verified_token_is_remembered_only_until_it_expires(self):
        # Each worker remembers verified tokens (a client sends the same one again and again);
        # the memory honours exp exactly as the first check did.
        d = h.make_tmpdir("pf-gw-cache-")
        keys = Keys(d)
        jwks = os.path.join(d, "jwks.json")
        with open(jwks, "w") as f:
            json.dump({"keys": [keys.jwk_rsa()]}, f)
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, listener={"auth": {"jwks": jwks, "issuer": ISSUER, "clock_skew": "0s"}}))
        self.addCleanup(pf.kill)
        token = keys.token(claims(exp=int(time.time()) + 2))
        with h.Client(pf.port()) as c:  # one connection: one worker, so the second check is a hit
            for _ in range(3):
                self.assertEqual(c.request("GET", "/", headers=[("Authorization", "Bearer " + token)]).status, 200)
            time.sleep(3.1)
            r = c.request("GET", "/", headers=[("Authorization", "Bearer " + token)])
            self.assertEqual(r.status, 401)
            self.assertIn("token expired", r.header("www-authenticate"))
        pf.stop_and_check(self)


class RateLimitTest(unittest.TestCase):
    def test_buckets_per_key_over_all_workers_and_a_rollout(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        policy = h.simple_policy(up, workers=2, listener={
            "rate_limit": {"rate": 1, "burst": 5, "key": "header:x-api-key"}})
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)

        def burst(key, n):
            codes, retry = [], []
            for _ in range(n):  # a new connection each: both workers take some
                r = h.request(pf.port(), "GET", "/", headers=[("x-api-key", key)])
                codes.append(r.status)
                if r.status == 429:
                    retry.append(int(r.header("retry-after")))
                    self.assertEqual(r.header("x-pilotfish-error"), "rate_limited")
            return codes, retry

        codes, retry = burst("k1", 12)
        self.assertEqual(codes.count(200), 5, codes)  # the burst, shared by both workers (+ at most 1 refill/s)
        self.assertTrue(all(1 <= s <= 2 for s in retry), retry)
        codes, _ = burst("k2", 3)
        self.assertEqual(codes, [200, 200, 200], "another key has its own bucket")
        self.assertEqual(h.sample(h.metrics(pf), "pilotfish_rate_limited_total", listener="ingress"), 7)
        time.sleep(1.2)
        self.assertEqual(burst("k1", 1)[0], [200], "a token comes back after 1/rate seconds")

        # A tighter limit rolled out by editing the policy applies without a restart.
        policy["listeners"][0]["rate_limit"] = {"rate": 1, "burst": 2, "key": "header:x-api-key"}
        h.write_policy(pf, policy)
        self.assertEqual(h.admin_json(pf, "/reload", method="POST")[1]["outcome"], "applied")
        codes, _ = burst("k3", 5)
        self.assertEqual(codes.count(200), 2, codes)
        pf.stop_and_check(self)

    def test_a_route_keeps_its_buckets_when_a_reload_reorders_routes(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        slow = {"match": {"path_prefix": "/slow"}, "cluster": "app", "rate_limit": {"rate": 0.01, "burst": 2}}
        fast = {"match": {"path_prefix": "/fast"}, "cluster": "app", "rate_limit": {"rate": 0.01, "burst": 4}}
        policy = h.simple_policy(up, routes=[slow, fast, {"cluster": "app"}])
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        codes = [h.request(pf.port(), "GET", "/slow").status for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429], "the /slow bucket is empty")
        # The same routes in another order: each route's buckets go with it (they were once
        # tied to the position, so /fast would have inherited /slow's empty bucket).
        policy["listeners"][0]["routes"] = [fast, slow, {"cluster": "app"}]
        h.write_policy(pf, policy)
        self.assertEqual(h.admin_json(pf, "/reload", method="POST")[1]["outcome"], "applied")
        self.assertEqual(h.request(pf.port(), "GET", "/slow").status, 429, "still empty after the reload")
        codes = [h.request(pf.port(), "GET", "/fast").status for _ in range(5)]
        self.assertEqual(codes, [200, 200, 200, 200, 429], "/fast has its own full burst")
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
