#!/usr/bin/env python3
"""Certificate rotation without restart: pilotfish watches identity.cert/key/ca; when they change
(written in place, renamed into place, or swapped the way a Kubernetes secret volume swaps its
`..data` symlink) new handshakes use the new material while open connections continue untouched.
A broken new file (a key that does not match, an expired certificate) is refused with a log line
and the material in use stays. Both directions are covered: the certificate a listener presents
to new clients, and the one a cluster presents to its upstream on new connections."""

import hashlib
import os
import socket
import ssl
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TD = "spiffe://test.local/ns/test/sa/"
A_ID, B_ID, CLIENT_ID = TD + "a", TD + "b", TD + "client"


def tls_context(pki, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SVIDs carry a URI SAN, no DNS name; the chain is still verified
    ctx.load_verify_locations(pki.cert)
    ctx.load_cert_chain(cert, key)
    return ctx


class TlsClient(h.Client):
    """harness.Client over a TLS connection."""

    def __init__(self, port, ctx, timeout=5.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.timeout = timeout

    def server_cert_sha256(self):
        return hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()


def der_sha256(pem_path):
    with open(pem_path) as f:
        pem = f.read()
    first = pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def copy(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)


def replace_file(src, dst):
    """Writes src's content to dst the way most tools do: a temporary file renamed into place."""
    tmp = dst + ".tmp"
    copy(src, tmp)
    os.rename(tmp, dst)


def header_of(response, name):
    for n, v in response.json()["headers"]:
        if n.lower() == name:
            return v
    return None


class RotationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = h.make_tmpdir()
        cls.pki = h.Pki(os.path.join(cls.dir, "pki"))
        cls.client_cert, cls.client_key = cls.pki.leaf("client", uris=[CLIENT_ID])
        cls.ctx = tls_context(cls.pki, cls.client_cert, cls.client_key)

    def setUp(self):
        self.up = h.Upstream("echo")
        self.procs = [self.up]

    def tearDown(self):
        for p in reversed(self.procs):
            if isinstance(p, h.Pilotfish):
                p.stop_and_check(self)  # exit 0, no handle left open, no sanitizer report
            else:
                p.stop()

    def identity_dir(self, name, ident, days=30):
        """A folder holding tls.crt/tls.key for `ident`; returns (folder, cert, key)."""
        folder = os.path.join(self.dir, "%s-%d" % (name, time.monotonic_ns()))
        os.makedirs(folder)
        cert, key = self.pki.leaf("%s-v1-%d" % (name, time.monotonic_ns()), uris=[ident], days=days)
        copy(cert, os.path.join(folder, "tls.crt"))
        copy(key, os.path.join(folder, "tls.key"))
        return folder, os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")

    def mtls_sidecar(self, cert, key, **listener):
        policy = h.simple_policy(self.up, listener=dict({"mtls": True}, **listener))
        policy["identity"] = {"cert": cert, "key": key, "ca": self.pki.cert}
        pf = h.Pilotfish(policy)
        self.procs.append(pf)
        return pf

    def new_connection_cert(self, pf):
        with TlsClient(pf.port(), self.ctx) as c:
            r = c.request("GET", "/probe")
            self.assertEqual(r.status, 200)
            return c.server_cert_sha256()

    def rotations(self, pf, result):
        return h.sample(h.metrics(pf), "pilotfish_identity_rotations_total", result=result) or 0

    def test_rotation_under_keep_alive_load(self):
        folder, cert, key = self.identity_dir("b", B_ID)
        pf = self.mtls_sidecar(cert, key)
        old_hash = der_sha256(cert)
        self.assertEqual(self.new_connection_cert(pf), old_hash)

        # Three keep-alive connections send requests back to back through the rotation.
        stop = threading.Event()
        results = []
        lock = threading.Lock()

        def load():
            done, errors, hashes = 0, [], set()
            try:
                with TlsClient(pf.port(), self.ctx) as c:
                    hashes.add(c.server_cert_sha256())
                    while not stop.is_set() and done < 5000:
                        r = c.request("GET", "/load/%d" % done)
                        if r.status != 200:
                            errors.append(r.status)
                        done += 1
            except Exception as e:  # noqa: BLE001 - any failure is a lost request
                errors.append(repr(e))
            with lock:
                results.append((done, errors, hashes))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        new_cert, new_key = self.pki.leaf("b-v2", uris=[B_ID], days=60)
        new_hash = der_sha256(new_cert)
        mark = h.log_mark(pf)
        # Key first, then certificate: between the two the files do not match, which must be
        # refused or waited out, never applied.
        replace_file(new_key, key)
        replace_file(new_cert, cert)
        h.wait_log(pf, r"identity rotated: " + B_ID, since=mark, timeout=10)
        h.wait_for(lambda: self.new_connection_cert(pf) == new_hash, 5, what="new connections present the new cert")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        self.assertEqual(len(results), 3)
        for done, errors, hashes in results:
            self.assertEqual(errors, [], "a keep-alive connection lost requests across the rotation")
            self.assertGreater(done, 20)
            self.assertEqual(hashes, {old_hash}, "an open connection keeps the certificate it started with")
        self.assertGreaterEqual(self.rotations(pf, "applied"), 1)
        expiry = h.sample(h.metrics(pf), "pilotfish_cert_expiry_timestamp_seconds", cert="identity")
        self.assertGreater(expiry, time.time() + 50 * 86400, "cert_expiry follows the rotated certificate")

    def test_kubernetes_secret_symlink_swap(self):
        # A secret volume: tls.crt -> ..data/tls.crt, ..data -> ..2026_v1; an update writes
        # ..2026_v2 and renames a new ..data symlink over the old one.
        vol = os.path.join(self.dir, "secret-%d" % time.monotonic_ns())
        os.makedirs(vol)
        v1 = os.path.join(vol, "..2026_v1")
        os.makedirs(v1)
        c1, k1 = self.pki.leaf("k8s-v1", uris=[B_ID])
        copy(c1, os.path.join(v1, "tls.crt"))
        copy(k1, os.path.join(v1, "tls.key"))
        os.symlink("..2026_v1", os.path.join(vol, "..data"))
        for name in ("tls.crt", "tls.key"):
            os.symlink(os.path.join("..data", name), os.path.join(vol, name))
        pf = self.mtls_sidecar(os.path.join(vol, "tls.crt"), os.path.join(vol, "tls.key"))
        self.assertEqual(self.new_connection_cert(pf), der_sha256(c1))
        with TlsClient(pf.port(), self.ctx) as kept:
            self.assertEqual(kept.request("GET", "/before").status, 200)
            v2 = os.path.join(vol, "..2026_v2")
            os.makedirs(v2)
            c2, k2 = self.pki.leaf("k8s-v2", uris=[B_ID])
            copy(c2, os.path.join(v2, "tls.crt"))
            copy(k2, os.path.join(v2, "tls.key"))
            os.symlink("..2026_v2", os.path.join(vol, "..data_tmp"))
            os.rename(os.path.join(vol, "..data_tmp"), os.path.join(vol, "..data"))
            h.wait_for(lambda: self.new_connection_cert(pf) == der_sha256(c2), 5,
                       what="the swapped secret is used by new connections")
            r = kept.request("GET", "/after")
            self.assertEqual(r.status, 200, "the connection opened before the swap continues")
            self.assertEqual(kept.server_cert_sha256(), der_sha256(c1))

    def test_broken_files_are_refused_and_the_old_material_stays(self):
        folder, cert, key = self.identity_dir("b", B_ID)
        pf = self.mtls_sidecar(cert, key)
        good_hash = der_sha256(cert)
        good_cert_copy = os.path.join(self.dir, "good-%d.pem" % time.monotonic_ns())
        copy(cert, good_cert_copy)

        # A certificate whose key is not the one on disk.
        other_cert, _ = self.pki.leaf("mismatch", uris=[B_ID])
        mark = h.log_mark(pf)
        replace_file(other_cert, cert)
        line = h.wait_log(pf, r"identity files changed but are refused", since=mark, timeout=10)
        self.assertIn("does not match", line.string)
        self.assertIn("new handshakes keep using " + B_ID, line.string)
        self.assertEqual(self.new_connection_cert(pf), good_hash)
        self.assertEqual(self.rotations(pf, "rejected"), 1)

        # An expired certificate with its own key.
        expired_cert, expired_key = self.pki.leaf("expired", uris=[B_ID], days=-1)
        mark = h.log_mark(pf)
        replace_file(expired_key, key)
        replace_file(expired_cert, cert)
        line = h.wait_log(pf, r"identity files changed but are refused.*expired", since=mark, timeout=10)
        self.assertEqual(self.new_connection_cert(pf), good_hash)

        # An unreadable (deleted) certificate.
        mark = h.log_mark(pf)
        os.unlink(cert)
        h.wait_log(pf, r"identity files changed but are refused.*cannot read", since=mark, timeout=10)
        self.assertEqual(self.new_connection_cert(pf), good_hash)

        # Fixed: applied.
        fixed_cert, fixed_key = self.pki.leaf("fixed", uris=[B_ID])
        mark = h.log_mark(pf)
        replace_file(fixed_key, key)
        replace_file(fixed_cert, cert)
        h.wait_log(pf, r"identity rotated: " + B_ID, since=mark, timeout=10)
        self.assertEqual(self.new_connection_cert(pf), der_sha256(fixed_cert))
        self.assertGreaterEqual(self.rotations(pf, "applied"), 1)
        self.assertTrue(pf.alive())

    def leaf_valid_from(self, name, ident, seconds_ahead):
        """A certificate for `ident` whose notBefore is `seconds_ahead` from now (openssl ca, as
        OpenSSL 3.0's x509 command cannot set it)."""
        import datetime
        work = os.path.join(self.dir, "ca-%s-%d" % (name, time.monotonic_ns()))
        os.makedirs(work)
        open(os.path.join(work, "index.txt"), "w").close()
        with open(os.path.join(work, "ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=%s/index.txt\nnew_certs_dir=%s\nserial=%s/serial\n"
                    "default_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n" % (work, work, work))
        with open(os.path.join(work, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(work, "ext"), "w") as f:
            f.write("subjectAltName=URI:%s\nextendedKeyUsage=serverAuth,clientAuth\n" % ident)
        key, csr, cert = (os.path.join(work, n) for n in ("leaf.key", "leaf.csr", "leaf.pem"))
        h.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
                  "-subj", "/CN=" + name)
        start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_ahead)
        end = start + datetime.timedelta(days=30)
        h.openssl("ca", "-batch", "-config", os.path.join(work, "ca.cnf"), "-cert", self.pki.cert, "-keyfile",
                  self.pki.key, "-in", csr, "-out", cert, "-notext", "-extfile", os.path.join(work, "ext"),
                  "-startdate", start.strftime("%Y%m%d%H%M%SZ"), "-enddate", end.strftime("%Y%m%d%H%M%SZ"))
        return cert, key

    def test_a_certificate_not_valid_yet_is_tried_again(self):
        # A CA whose clock is a little ahead: the new certificate is refused at first, and used
        # once it is valid, without the files changing again.
        folder, cert, key = self.identity_dir("b", B_ID)
        pf = self.mtls_sidecar(cert, key)
        old_hash = der_sha256(cert)
        early_cert, early_key = self.leaf_valid_from("early", B_ID, 3)
        mark = h.log_mark(pf)
        os.rename(self.stage(early_key), key)
        os.rename(self.stage(early_cert), cert)
        h.wait_log(pf, r"identity files changed but are refused: .*not valid before", since=mark, timeout=10)
        self.assertEqual(self.new_connection_cert(pf), old_hash)
        h.wait_log(pf, r"identity rotated: " + B_ID, since=mark, timeout=15)
        self.assertEqual(self.new_connection_cert(pf), der_sha256(early_cert))
        self.assertEqual(len([l for l in h.log_lines(pf, mark) if "are refused" in l]), 1, "said once, not per retry")

    def stage(self, src):
        tmp = os.path.join(self.dir, "stage-%d" % time.monotonic_ns())
        copy(src, tmp)
        return tmp

    def test_outbound_connections_present_the_rotated_certificate(self):
        # curl-like plain client -> A (cluster mtls) -> B (mtls listener) -> echo. After A's
        # identity rotates, A's pooled connection keeps its certificate; A's next new upstream
        # connection presents the new one, which B reports in x-forwarded-client-cert.
        b_cert, b_key = self.pki.leaf("b-out", uris=[B_ID])
        b = self.mtls_sidecar(b_cert, b_key, allow=[A_ID])
        folder, a_cert, a_key = self.identity_dir("a", A_ID)
        policy = h.simple_policy("127.0.0.1:%d" % b.port(),
                                 cluster={"mtls": {"server_identity": B_ID}, "idle_timeout": "1s"})
        policy["identity"] = {"cert": a_cert, "key": a_key, "ca": self.pki.cert}
        a = h.Pilotfish(policy)
        self.procs.append(a)
        old_hash = der_sha256(a_cert)
        r = h.request(a.port(), "GET", "/one")
        self.assertEqual(r.status, 200)
        self.assertEqual(header_of(r, "x-forwarded-client-cert"), "By=%s;URI=%s;Hash=%s" % (B_ID, A_ID, old_hash))

        new_cert, new_key = self.pki.leaf("a-v2", uris=[A_ID])
        mark = h.log_mark(a)
        replace_file(new_key, a_key)
        replace_file(new_cert, a_cert)
        h.wait_log(a, r"identity rotated: " + A_ID, since=mark, timeout=10)
        # The pooled connection (idle for less than its 1 s timeout) still carries the old one.
        r = h.request(a.port(), "GET", "/pooled")
        self.assertEqual(header_of(r, "x-forwarded-client-cert").split("Hash=")[1], old_hash)
        # Once it has closed, a new connection makes a full handshake with the new certificate
        # (a session of the old material is not resumed).
        time.sleep(1.5)
        r = h.request(a.port(), "GET", "/fresh")
        self.assertEqual(r.status, 200)
        self.assertEqual(header_of(r, "x-forwarded-client-cert").split("Hash=")[1], der_sha256(new_cert))


if __name__ == "__main__":
    unittest.main(verbosity=2)
