#!/usr/bin/env python3
"""The workload identity files (identity.cert/key/ca) are read and verified by the loader, so
`pilotfish check`, startup and every reload refuse what a TLS handshake could not use: a missing
file, a key that does not match, a certificate that is expired, not yet valid, not an X.509-SVID
(exactly one spiffe:// URI SAN) or not signed by the trust bundle. A certificate that expires
within 7 days is a warning. cert_expiry_timestamp_seconds shows the running identity's dates."""

import calendar
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SPIFFE = "spiffe://test.local/ns/test/sa/app"


def not_after(path):
    out = h.openssl("x509", "-in", path, "-noout", "-enddate").strip()  # notAfter=Nov 26 10:41:59 2026 GMT
    return calendar.timegm(time.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))


class IdentityFilesTest(unittest.TestCase):
    def setUp(self):
        self.dir = h.make_tmpdir()
        self.pki = h.Pki(os.path.join(self.dir, "pki"))
        self.cert, self.key = self.pki.leaf("app", uris=[SPIFFE])

    def policy(self, cert=None, key=None, ca=None):
        p = h.simple_policy("127.0.0.1:9")
        p["identity"] = {"cert": cert or self.cert, "key": key or self.key, "ca": ca or self.pki.cert}
        return p

    def check(self, policy):
        path = os.path.join(self.dir, "policy-%d.yaml" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(h.to_yaml(policy))
        return (path,) + h.run_cli(["check", "--config", path])

    def assert_refused(self, policy, key, message):
        path, rc, out, err = self.check(policy)
        self.assertEqual(rc, 1, out + err)
        line = [l for l in err.splitlines() if ("identity.%s: " % key) in l]
        self.assertTrue(line, err)
        self.assertRegex(line[0], r"^%s:\d+:\d+: identity\.%s: " % (path, key))
        self.assertIn(message, line[0])
        return err

    def test_a_good_identity_is_accepted(self):
        path, rc, out, err = self.check(self.policy())
        self.assertEqual(rc, 0, err)
        self.assertNotIn("identity", err)

    def test_missing_files(self):
        self.assert_refused(self.policy(cert=os.path.join(self.dir, "nope.pem")), "cert", "cannot read")
        self.assert_refused(self.policy(key=os.path.join(self.dir, "nope.key")), "key", "cannot read")
        self.assert_refused(self.policy(ca=os.path.join(self.dir, "nope-ca.pem")), "ca", "cannot read")

    def test_not_pem(self):
        junk = os.path.join(self.dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        self.assert_refused(self.policy(cert=junk), "cert", "holds no PEM certificate")
        self.assert_refused(self.policy(key=junk), "key", "holds no PEM private key")
        self.assert_refused(self.policy(ca=junk), "ca", "holds no PEM certificate")

    def test_key_that_does_not_match(self):
        _, other_key = self.pki.leaf("other", uris=[SPIFFE])
        self.assert_refused(self.policy(key=other_key), "key", "does not match the certificate")

    def test_expired_and_expiring(self):
        expired, expired_key = self.pki.leaf("expired", uris=[SPIFFE], days=-1)
        self.assert_refused(self.policy(cert=expired, key=expired_key), "cert", "the certificate expired on")
        soon, soon_key = self.pki.leaf("soon", uris=[SPIFFE], days=3)
        path, rc, out, err = self.check(self.policy(cert=soon, key=soon_key))
        self.assertEqual(rc, 0, err)
        self.assertIn("identity.cert", err)
        self.assertIn("within 7 days", err)

    def test_not_an_x509_svid(self):
        none, none_key = self.pki.leaf("no-uri", uris=[])
        self.assert_refused(self.policy(cert=none, key=none_key), "cert", "has no URI SAN")
        two, two_key = self.pki.leaf("two-uris", uris=[SPIFFE, "spiffe://test.local/ns/test/sa/other"])
        self.assert_refused(self.policy(cert=two, key=two_key), "cert", "has 2 URI SANs")
        web, web_key = self.pki.leaf("https-uri", uris=["https://example.test/app"])
        self.assert_refused(self.policy(cert=web, key=web_key), "cert", "is not a spiffe:// ID")
        # spiffe:// but not a SPIFFE ID every peer would accept: refused here, not at each handshake.
        for i, bad in enumerate(["spiffe://Shop.local/ns/x", "spiffe://shop.local:8443/x",
                                 "spiffe://shop.local/a//b", "spiffe://shop.local/a/../b"]):
            cert, key = self.pki.leaf("bad-id-%d" % i, uris=[bad])
            self.assert_refused(self.policy(cert=cert, key=key), "cert", "is not a valid SPIFFE ID")

    def test_signed_by_another_ca(self):
        rogue = h.Pki(os.path.join(self.dir, "rogue"), name="rogue-ca")
        cert, key = rogue.leaf("app", uris=[SPIFFE])
        self.assert_refused(self.policy(cert=cert, key=key), "cert", "does not chain to")

    def test_expiry_metric_and_a_broken_file_on_reload(self):
        u = h.Upstream("echo")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u)
        policy["identity"] = {"cert": self.cert, "key": self.key, "ca": self.pki.cert}
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        m = h.metrics(pf)
        expiry = not_after(self.cert)
        self.assertEqual(h.sample(m, "pilotfish_cert_expiry_timestamp_seconds", cert="identity"), expiry)
        self.assertEqual(h.sample(m, "pilotfish_cert_expiry_timestamp_seconds", cert="ca"), not_after(self.pki.cert))
        # A reload that finds the certificate file broken is refused, and says why; the
        # running policy stays and serves.
        with open(self.cert, "w") as f:
            f.write("truncated\n")
        status, doc, _ = h.admin_json(pf, "/reload", "POST")
        self.assertEqual((status, doc["outcome"]), (422, "rejected"), doc)
        self.assertIn("identity.cert: " + self.cert + " holds no PEM certificate", doc["errors"][0])
        self.assertEqual(h.request(pf.port(), "GET", "/still").status, 200)
        self.assertEqual(h.sample(h.metrics(pf), "pilotfish_cert_expiry_timestamp_seconds", cert="identity"), expiry)
        pf.stop_and_check(self)

if __name__ == "__main__":
    h.main()
