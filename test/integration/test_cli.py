#!/usr/bin/env python3
"""The command line: version, check (good and bad policies), run with a bad policy, exit codes."""

import os
import re
import shutil
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The users' annotated reference, kept in the repository.
REFERENCE = os.path.join(ROOT, "docs", "policy-reference.yaml")
# The outside contract's reference, beside the repository where the team works (not in a clone).
CONTRACT_REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "contract", "policy-reference.yaml")


def yaml_loader():
    """PyYAML's safe loader with YAML 1.2's booleans (true/false only), as yaml-cpp reads them:
    YAML 1.1 would load `on:` and `off` as booleans."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf"))
    return Loader


def leaves(node, path=()):
    """(path, value) of every scalar of a YAML document; list items by index."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, path + (i,))
    else:
        yield path, node


def set_at(doc, path, value):
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def rename(node, old, new):
    """Every string equal to old, replaced by new (a cluster's name and its uses)."""
    if isinstance(node, dict):
        return {k: rename(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [rename(v, old, new) for v in node]
    return new if node == old else node


ENUMS = {"workers": ["2", 3], "log_level": ["debug", "warn"], "access_log": ["off", "stdout"],
         "protocol": ["tcp", "http", "http1", "http2"], "intercept": ["none", "outbound", "inbound"],
         "lb": ["round_robin", "random", "least_request"], "key": ["client_address", "peer_identity"],
         "policy_history": ["off", "history.jsonl"], "method": ["POST", "PUT"], "on": ["5xx"],
         "auth": [{"jwks": "keys/jwks.json"}], "rate_limit": [{"rate": 1}], "scheme": ["http"]}


def mutations(path, value, cluster_names, folder):
    """Values to try in place of `value` at `path`, each a change a valid policy could make."""
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    if isinstance(value, bool):
        return ENUMS.get(key, []) or [not value]  # `auth: false` becomes an auth of the route's own
    if isinstance(value, (int, float)):
        return [value + 1, value * 2, value - 1]
    text = str(value)
    out = [v for v in ENUMS.get(key, []) if v != value]
    if key == "cluster" or key == "wait_for_clusters" or (key == "name" and "clusters" in path[:-1] and "routes" in path):
        out += [c for c in cluster_names if c != value]
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    if m:
        out += ["%d%s" % (int(m.group(1)) + 1, m.group(2))]
    m = re.fullmatch(r"(.*):(\d+)", text)
    if m and not text.startswith("spiffe:") and not text.startswith("http"):
        out += ["%s:%d" % (m.group(1), int(m.group(2)) + 100)]
    stem, ext = os.path.splitext(text)
    if ext in (".pem", ".json"):
        out += [stem + "-2" + ext]
    if stem.endswith("-key") and ext == ".pem":
        out += [stem + "-2" + ext]
    if text.startswith("spiffe://"):
        out += [text.rstrip("*") + "x" + ("*" if text.endswith("*") else "")]
    if key == "path_prefix":
        out += [text + "x/"]
    if key == "sni" or key == "host":
        out += ["x" + text]
    out += [text + "x", "x" + text]
    return out


def key_paths(node, prefix=""):
    """Every key path of a YAML document: listeners[].routes[].match.host and so on."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = prefix + ("." if prefix else "") + str(k)
            out.add(path)
            out |= key_paths(v, path)
    elif isinstance(node, list):
        for item in node:
            out |= key_paths(item, prefix + "[]")
    return out

GOOD = """\
version: 1
service: cli-test
admin:
  address: 127.0.0.1:0
listeners:
  - name: ingress
    address: 127.0.0.1:0
    routes:
      - cluster: app
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
"""

# Each problem is on a known line; (line, key column, value column), 1-based.
BAD = """\
version: 1
listeners:
  - name: a
    address: 127.0.0.1:0
    header_timeot: 5s
    routes:
      - cluster: nope
clusters:
  - name: app
    endpoints: [127.0.0.1:99999]
    timeout: 5 parsecs
    lb: fastest
"""
BAD_PROBLEMS = [(5, 5, 20), (7, 9, 18), (10, 5, 17), (11, 5, 14), (12, 5, 9)]


class CliTest(unittest.TestCase):
    def setUp(self):
        self.dir = h.make_tmpdir("pf-cli-")

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- version / help ----------------------------------------------------------------------
    def test_version_exits_0_and_names_libraries(self):
        rc, out, err = h.run_cli(["version"])
        self.assertEqual(rc, 0, err)
        for lib in ("pilotfish", "libuv", "llhttp", "OpenSSL", "yaml-cpp", "prometheus-cpp"):
            self.assertIn(lib, out, "version output should name %s:\n%s" % (lib, out))

    def test_help_exits_0(self):
        rc, out, err = h.run_cli(["--help"])
        self.assertEqual(rc, 0, err)
        self.assertIn("run", out + err)

    # -- bad command lines: exit 2 ------------------------------------------------------------
    def test_bad_command_lines_exit_2(self):
        good = self.write("good.yaml", GOOD)
        cases = [
            [],
            ["frobnicate"],
            ["run"],
            ["check"],
            ["run", "--config"],
            ["check", "--config", good, "--bogus"],
            ["run", "--config", good, "--workers", "abc"],
            ["run", "--config", good, "--workers", "0"],
            ["run", "--config", good, "--log-level", "loud"],
            ["version", "extra"],
        ]
        for args in cases:
            with self.subTest(args=args):
                rc, out, err = h.run_cli(args)
                self.assertEqual(rc, 2, "pilotfish %s: stdout=%r stderr=%r" % (args, out, err))
                self.assertTrue(err.strip(), "a bad command line should say why on stderr")

    # -- check --------------------------------------------------------------------------------
    def test_check_good_policy_exits_0_with_one_line(self):
        path = self.write("good.yaml", GOOD)
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.strip().splitlines()), 1, "one-line summary expected: %r" % out)

    def test_the_reference_holds_every_key_of_the_contract(self):
        import yaml
        with open(REFERENCE) as f:
            ours = key_paths(yaml.safe_load(f))
        # Keys pilotfish accepts that the reference must show (a spot check that it is whole).
        for key in ("admin.read_only_address", "listeners[].auth.jwks", "listeners[].rate_limit.key",
                    "listeners[].allow_ambiguous_paths", "listeners[].routes[].auth", "clusters[].retry.nested",
                    "clusters[].mtls.sni", "drain_delay", "policy_history"):
            self.assertIn(key, ours)
        if os.path.exists(CONTRACT_REFERENCE):  # where the contract is at hand, nothing of it is missing
            with open(CONTRACT_REFERENCE) as f:
                text = f.read()
            contract = key_paths(yaml.safe_load(text))
            self.assertEqual(sorted(contract - ours), [], "keys of the contract missing from " + REFERENCE)
            # The loader's unit tests embed the contract's reference (a clone has no ../shared):
            # the copy must be the contract as it is now.
            with open(os.path.join(ROOT, "test", "unit", "policy_loader_test.cc")) as f:
                m = re.search(r'kReferencePolicy =\s*R"yaml\((.*?)\)yaml"', f.read(), re.S)
            self.assertTrue(m, "kReferencePolicy not found in policy_loader_test.cc")
            self.assertEqual(m.group(1), text, "policy_loader_test.cc's copy of the contract's reference is stale")

    def test_check_accepts_the_reference_policy(self):
        self.assertTrue(os.path.exists(REFERENCE), REFERENCE)
        path = os.path.join(self.dir, "policy-reference.yaml")
        shutil.copy(REFERENCE, path)
        os.makedirs(os.path.join(self.dir, "keys"))
        with open(os.path.join(self.dir, "keys", "jwks.json"), "w") as f:
            f.write('{"keys": []}')
        # The identity files it names, beside it (check reads and verifies them).
        certs = os.path.join(self.dir, "certs")
        pki = h.Pki(certs, name="ca")
        pki.leaf("payments", uris=["spiffe://shop.local/ns/shop/sa/payments"],
                 cert_path=os.path.join(certs, "payments.pem"), key_path=os.path.join(certs, "payments-key.pem"))
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 0, "check must accept every key of the reference policy:\n" + err)

    def test_the_diff_sees_a_change_to_every_key_of_the_reference(self):
        import copy
        import yaml
        ref = self.reference_in_place()
        with open(ref) as f:
            base = yaml.load(f, Loader=yaml_loader())
        cluster_names = [c["name"] for c in base["clusters"]]
        missed, invalid = [], []
        count = 0
        for path, value in leaves(base):
            if path == ("version",):
                continue  # 1 is the only valid value
            count += 1
            for candidate in mutations(path, value, cluster_names, self.dir):
                doc = copy.deepcopy(base)
                if path[-1] == "name" and path[0] == "clusters":  # a renamed cluster, renamed where it is used
                    doc = rename(doc, value, candidate)
                else:
                    set_at(doc, path, candidate)
                    parent = doc
                    for p in path[:-1]:
                        parent = parent[p]
                    # Keys that only go with the value changed away from: dropped with it.
                    if path[-1] == "mtls" and candidate is False:
                        parent.pop("allow", None)
                        if path[0] == "listeners":  # principals need a verified peer
                            parent.pop("authorization", None)
                            for r in parent.get("routes", []):
                                r.pop("authorization", None)
                    if path[-1] == "intercept" and candidate != "outbound":
                        parent.pop("passthrough", None)
                    if path[-1] == "protocol" and candidate == "tcp" and path[0] == "listeners":
                        # A tcp listener takes no request rules and one route without a match.
                        parent.pop("authorization", None)
                        plain = [r for r in parent["routes"] if set(r) == {"cluster"}]
                        parent["routes"] = plain[:1] or [{"cluster": cluster_names[0]}]
                new = os.path.join(self.dir, "changed.yaml")
                with open(new, "w") as f:
                    yaml.safe_dump(doc, f)
                rc, out, err = h.run_cli(["check", "--config", new, "--against", ref])
                if rc == 0:
                    if out.rstrip().endswith("no changes"):
                        missed.append("%s: %r -> %r" % (".".join(map(str, path)), value, candidate))
                    break
            else:
                invalid.append("%s = %r: no valid change to try" % (".".join(map(str, path)), value))
        self.assertGreater(count, 100, "the reference has over a hundred values")
        self.assertEqual(missed, [], "changes the diff did not report")
        self.maxDiff = None
        self.assertEqual(invalid, [], "keys this test could not change")

    def reference_in_place(self):
        """docs/policy-reference.yaml in the test folder with the files it names."""
        path = os.path.join(self.dir, "policy-reference.yaml")
        shutil.copy(REFERENCE, path)
        os.makedirs(os.path.join(self.dir, "keys"), exist_ok=True)
        for name in ("jwks.json", "jwks-2.json"):
            with open(os.path.join(self.dir, "keys", name), "w") as f:
                f.write('{"keys": []}')
        certs = os.path.join(self.dir, "certs")
        pki = h.Pki(certs, name="ca")
        pki.leaf("payments", uris=["spiffe://shop.local/ns/shop/sa/payments"],
                 cert_path=os.path.join(certs, "payments.pem"), key_path=os.path.join(certs, "payments-key.pem"))
        # The same files under other names: a change of path alone.
        for name in ("payments", "payments-key", "ca"):
            shutil.copy(os.path.join(certs, name + ".pem"), os.path.join(certs, name + "-2.pem"))
        return path

    def test_check_binds_nothing(self):
        # A listener address that is already in use: check must not try to bind it.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            port = s.getsockname()[1]
            path = self.write("busy.yaml", GOOD.replace("address: 127.0.0.1:0\n    routes",
                                                        "address: 127.0.0.1:%d\n    routes" % port))
            with open(path) as f:
                self.assertIn(str(port), f.read())
            rc, out, err = h.run_cli(["check", "--config", path])
            self.assertEqual(rc, 0, err)
        finally:
            s.close()

    def test_check_bad_policy_reports_every_problem_with_file_line_col(self):
        path = self.write("bad.yaml", BAD)
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 1, "stdout=%r stderr=%r" % (out, err))
        pattern = re.compile(r"^" + re.escape(path) + r":(\d+):(\d+): (.+)$")
        found = []
        for line in (out + err).splitlines():
            m = pattern.match(line)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        for line_no, key_col, value_col in BAD_PROBLEMS:
            with self.subTest(line=line_no):
                hits = [f for f in found if f[0] == line_no]
                self.assertTrue(hits, "no FILE:%d:COL: message for the problem on line %d; got:\n%s"
                                % (line_no, line_no, err))
                self.assertIn(hits[0][1], (key_col, value_col),
                              "column of the problem on line %d: %s" % (line_no, hits[0]))
        for line in err.splitlines():
            self.assertNotIn("yaml-cpp", line.lower())
            self.assertNotIn("terminate called", line)

    def test_check_unparseable_yaml_exits_1_with_position(self):
        path = self.write("broken.yaml", "version: 1\nlisteners: [\n  - name: a\n")
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, r"(?m)^" + re.escape(path) + r":\d+:\d+: ")

    def test_an_unclosed_bracket_is_reported_where_it_opened(self):
        path = os.path.join(self.dir, "unclosed.yaml")
        with open(path, "w") as f:
            f.write("version: 1\nlisteners:\n  - name: a\n    address: [127.0.0.1:15001\n")
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 1)
        self.assertIn("%s:4:14: invalid YAML: the '[' opened here is never closed" % path, err)

    def test_an_unclosed_quote_is_reported_where_it_opened(self):
        # yaml-cpp lets the quote run to the end of the file; what the runaway string does to the
        # keys after it ("clusters: missing") is not the problem, and is not reported.
        path = self.write("unclosed.yaml", GOOD.replace("    address: 127.0.0.1:0\n    routes",
                                                        "    address: \"127.0.0.1:0\n    routes"))
        rc, out, err = h.run_cli(["check", "--config", path])
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(err.strip().splitlines(),
                         ["%s:7:14: invalid YAML: the '\"' opened here is never closed" % path])

    def test_check_missing_file_exits_1(self):
        rc, out, err = h.run_cli(["check", "--config", os.path.join(self.dir, "missing.yaml")])
        self.assertEqual(rc, 1, err)
        self.assertTrue(err.strip())

    # -- run ----------------------------------------------------------------------------------
    def test_run_bad_policy_exits_1_without_serving(self):
        path = self.write("bad.yaml", BAD)
        rc, out, err = h.run_cli(["run", "--config", path])
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, re.escape(path) + r":5:\d+: ")

    def test_listeners_accept_as_soon_as_ready(self):
        # `pilotfish ready` in the log means serving: a connection made right after it must be
        # accepted (and answered), never refused. A race, so several attempts.
        refused, log = 0, ""
        for attempt in range(20):
            pf = h.Pilotfish(GOOD.replace("endpoints: [127.0.0.1:8080]",
                                          "endpoints: [127.0.0.1:%d]" % h.free_port()),
                             wait_listening=False)
            try:
                try:
                    r = h.request(pf.port(), "GET", "/", timeout=5)
                    self.assertEqual(r.status, 503, r)
                except ConnectionRefusedError:
                    refused += 1
                    log = pf.log()
                pf.stop_and_check(self)
            finally:
                pf.kill()
        self.assertEqual(refused, 0, "%d of 20 connections made right after `pilotfish ready` were refused:\n%s"
                         % (refused, log))

    def test_run_then_sigterm_exits_0(self):
        pf = h.Pilotfish(GOOD)
        self.assertTrue(pf.alive())
        self.assertIn("ingress", pf.ports)
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
