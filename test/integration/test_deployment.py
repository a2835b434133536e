#!/usr/bin/env python3
"""Deployment: the Kubernetes manifests in examples/kubernetes and the Dockerfile's images.

ManifestTest parses the manifests (Debian's python3-yaml, as no Kubernetes schema validator is
installable here) and checks every field pilotfish depends on against the policy the ConfigMap
carries: that `pilotfish check` accepts it, that ports, probes, the preStop drain, the iptables
init step's uid and the mounts agree with it, and that make-secret.sh makes the Secret the
Deployment mounts.

ImageTest runs test/image/build-and-check.sh: the base image made with debootstrap and `podman
import`, both images built with `podman build --isolation=chroot --network host`, and `pilotfish
version`, `pilotfish check` and `pilotfish iptables --print` run inside them with `buildah run`."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

K8S = os.path.join(h.ROOT, "examples", "kubernetes")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-yaml


def load_yaml_docs(path):
    """Every document of a YAML file, parsed by Debian's PyYAML in a subprocess."""
    script = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"
    r = subprocess.run([SYSTEM_PYTHON, "-c", script, path], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("%s does not parse as YAML: %s" % (path, r.stderr))
    return json.loads(r.stdout)


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = load_yaml_docs(os.path.join(K8S, "deployment.yaml"))
        cls.by_kind = {}
        for d in cls.docs:
            cls.by_kind.setdefault(d["kind"], []).append(d)
        cls.dir = h.make_tmpdir("pf-k8s-")
        # The certificates the Secret would hold, where the policy reads them (rewritten to a
        # temporary folder for the check).
        r = subprocess.run(["sh", os.path.join(h.ROOT, "examples", "mtls", "make-certs.sh"), cls.dir],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        cls.cert, cls.key, cls.ca = (os.path.join(cls.dir, n) for n in ("users.pem", "users.key", "ca.pem"))
        cls.policy_text = cls.by_kind["ConfigMap"][0]["data"]["policy.yaml"]
        cls.policy_path = os.path.join(cls.dir, "policy.yaml")
        with open(cls.policy_path, "w") as f:
            f.write(cls.policy_text.replace("/etc/pilotfish/certs/tls.crt", cls.cert)
                    .replace("/etc/pilotfish/certs/tls.key", cls.key).replace("/etc/pilotfish/certs/ca.crt", cls.ca))
        cls.policy = load_yaml_docs(cls.policy_path)[0]
        cls.deployment = cls.by_kind["Deployment"][0]
        cls.pod = cls.deployment["spec"]["template"]
        cls.init = {c["name"]: c for c in cls.pod["spec"]["initContainers"]}
        cls.sidecar = cls.init["pilotfish"]

    def test_every_document_is_a_kubernetes_object(self):
        for d in self.docs:
            self.assertIn("apiVersion", d)
            self.assertIn("kind", d)
            self.assertTrue(d["metadata"]["name"])
            self.assertEqual(d["metadata"].get("namespace"), "shop")
        self.assertEqual(sorted(self.by_kind), ["ConfigMap", "Deployment", "Service", "ServiceAccount"])
        self.assertEqual(self.deployment["apiVersion"], "apps/v1")
        self.assertEqual(self.deployment["spec"]["selector"]["matchLabels"], self.pod["metadata"]["labels"])

    def test_the_configmap_holds_the_example_policy_and_check_accepts_it(self):
        with open(os.path.join(K8S, "policy.yaml")) as f:
            self.assertEqual(self.policy_text, f.read(), "deployment.yaml's ConfigMap and policy.yaml differ")
        rc, out, err = h.run_cli(["check", "--config", self.policy_path])
        self.assertEqual(rc, 0, err)
        self.assertIn("ok: service payments", out)

    def admin_port(self):
        """The full admin listener: loopback only, for pilotfish drain in the pod."""
        host, port = self.policy["admin"]["address"].rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1", "admin (drain, reload, config) stays on loopback")
        return int(port)

    def probe_port(self):
        """The read-only admin listener the kubelet and Prometheus reach over the pod network."""
        return int(self.policy["admin"]["read_only_address"].rsplit(":", 1)[1])

    def listener(self, intercept):
        return next(l for l in self.policy["listeners"] if l.get("intercept") == intercept)

    def test_the_sidecar_is_a_native_sidecar_matching_the_policy(self):
        s = self.sidecar
        self.assertEqual(s["restartPolicy"], "Always")
        self.assertEqual(s["args"], ["--config", "/etc/pilotfish/policy.yaml"])
        ports = {p["name"]: p["containerPort"] for p in s["ports"]}
        self.assertEqual(ports["probes"], self.probe_port())
        self.assertNotIn(self.admin_port(), ports.values(), "the full admin port is not exposed")
        self.assertEqual(ports["inbound"], int(self.listener("inbound")["address"].rsplit(":", 1)[1]))
        self.assertEqual(s["readinessProbe"]["httpGet"], {"path": "/ready", "port": self.probe_port()})
        self.assertEqual(s["livenessProbe"]["httpGet"], {"path": "/live", "port": self.probe_port()})
        self.assertEqual(s["startupProbe"]["httpGet"]["port"], self.probe_port())
        self.assertEqual(s["lifecycle"]["preStop"]["exec"]["command"],
                         ["/usr/local/bin/pilotfish", "drain", "--admin", "127.0.0.1:%d" % self.admin_port()])
        # The policy's drain fits the pod's grace period.
        grace = self.pod["spec"]["terminationGracePeriodSeconds"]
        seconds = lambda d: int(re.match(r"(\d+)s$", d).group(1))
        self.assertLess(seconds(self.policy["drain_delay"]) + seconds(self.policy["drain_timeout"]), grace + 1)
        self.assertEqual(s["securityContext"]["runAsUser"], 1337)
        self.assertTrue(s["securityContext"]["runAsNonRoot"])
        self.assertIn("memory", s["resources"]["requests"])
        self.assertIn("cpu", s["resources"]["requests"])
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(int(annotations["prometheus.io/port"]), self.probe_port())
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_mounts_put_the_policy_and_the_identity_where_the_policy_reads_them(self):
        mounts = {m["name"]: m["mountPath"] for m in self.sidecar["volumeMounts"]}
        volumes = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        self.assertEqual(volumes["policy"]["configMap"]["name"], self.by_kind["ConfigMap"][0]["metadata"]["name"])
        self.assertEqual(os.path.join(mounts["policy"], "policy.yaml"), "/etc/pilotfish/policy.yaml")
        self.assertNotIn("subPath", json.dumps(self.sidecar["volumeMounts"]),
                         "a subPath mount never sees ConfigMap updates: no rollout by editing YAML")
        with open(os.path.join(K8S, "policy.yaml")) as f:
            original = load_yaml_docs_text(f.read())
        for key in ("cert", "key", "ca"):
            self.assertEqual(os.path.dirname(original["identity"][key]), mounts["identity"])
        secret_name = volumes["identity"]["secret"]["secretName"]
        files = {os.path.basename(original["identity"][k]) for k in ("cert", "key", "ca")}
        out = subprocess.run(["sh", os.path.join(K8S, "make-secret.sh"), self.cert, self.key, self.ca],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        path = os.path.join(self.dir, "secret.yaml")
        with open(path, "w") as f:
            f.write(out.stdout)
        secret = load_yaml_docs(path)[0]
        self.assertEqual(secret["kind"], "Secret")
        self.assertEqual(secret["metadata"]["name"], secret_name)
        self.assertEqual(set(secret["data"]), files)
        with open(self.cert, "rb") as f:
            self.assertEqual(base64.b64decode(secret["data"]["tls.crt"]), f.read())

    def test_the_init_step_applies_rules_for_the_sidecars_uid(self):
        init = self.init["pilotfish-init"]
        args = init["args"]
        self.assertIn("--apply", args)
        self.assertEqual(args[args.index("--uid") + 1], str(self.sidecar["securityContext"]["runAsUser"]))
        self.assertEqual(args[args.index("--policy") + 1], "/etc/pilotfish/policy.yaml")
        self.assertIn("NET_ADMIN", init["securityContext"]["capabilities"]["add"])
        names = [c["name"] for c in self.pod["spec"]["initContainers"]]
        self.assertLess(names.index("pilotfish-init"), names.index("pilotfish"), "rules before the sidecar")
        rc, out, err = h.run_cli(["iptables", "--policy", self.policy_path, "--uid", "1337", "--ipv4-only", "--print"])
        self.assertEqual(rc, 0, err)
        self.assertIn("REDIRECT --to-ports %s" % self.listener("inbound")["address"].rsplit(":", 1)[1], out)
        self.assertIn("REDIRECT --to-ports %s" % self.listener("outbound")["address"].rsplit(":", 1)[1], out)
        self.assertIn("--dport %d -j RETURN" % self.admin_port(), out)
        self.assertIn("--dport %d -j RETURN" % self.probe_port(), out)

    def test_the_app_and_the_service_match_the_local_cluster(self):
        local = next(c for c in self.policy["clusters"] if c["name"] == "local-app")
        app_port = int(local["endpoints"][0].rsplit(":", 1)[1])
        app = self.pod["spec"]["containers"][0]
        self.assertEqual(app["ports"][0]["containerPort"], app_port)
        service = self.by_kind["Service"][0]
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], app_port)
        self.assertEqual(service["spec"]["selector"], self.pod["metadata"]["labels"])


def load_yaml_docs_text(text):
    d = h.make_tmpdir("pf-k8s-y-")
    path = os.path.join(d, "x.yaml")
    with open(path, "w") as f:
        f.write(text)
    return load_yaml_docs(path)[0]


class ImageTest(unittest.TestCase):
    def test_images_build_and_run_here(self):
        for tool in ("podman", "buildah", "debootstrap"):
            self.assertTrue(shutil.which(tool), "%s is missing: scripts/install-deps.sh installs it" % tool)
        r = subprocess.run([os.path.join(h.ROOT, "test", "image", "build-and-check.sh")], capture_output=True,
                           text=True, timeout=3000)
        sys.stderr.write(r.stdout[-3000:])
        self.assertEqual(r.returncode, 0, r.stdout[-5000:] + r.stderr[-5000:])
        sizes = dict(re.findall(r"^(\S+) (\d+) bytes", r.stdout, re.M))
        sidecar = next(v for k, v in sizes.items() if "/pilotfish:" in k)
        self.assertLess(int(sidecar), 64 * 1024 * 1024, "the sidecar image should stay small")


if __name__ == "__main__":
    h.main()
