#!/usr/bin/env python3
"""The README's quick start: scripts/quickstart.sh starts the demo service and pilotfish in
front of it on 127.0.0.1:15000; a request goes through; SIGTERM stops both, leaving nothing."""
import json
import select
import os
import signal
import subprocess
import sys
import time
import unittest
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def children_of(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out]
    for p in list(pids):
        pids += children_of(p)
    return pids


def packages(*purposes):
    out = subprocess.run(["bash", "scripts/install-deps.sh", "--list"] + list(purposes), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


class InstallByPurposeTest(unittest.TestCase):
    def test_the_quick_start_installs_only_what_building_and_running_need(self):
        build = packages("build")
        self.assertIn("libuv1-dev", build)
        self.assertIn("nlohmann-json3-dev", build)
        for unused in ("podman", "buildah", "debootstrap", "fuse-overlayfs", "uidmap", "prometheus", "wrk",
                       "haproxy", "libgtest-dev"):
            self.assertNotIn(unused, build)
        with open(os.path.join(ROOT, "scripts", "quickstart.sh")) as f:
            self.assertIn("scripts/install-deps.sh build\n", f.read())

    def test_each_purpose_installs_its_own(self):
        test = packages("test")
        self.assertLessEqual(packages("build") | packages("image"), test, "the suite builds and runs the image test")
        self.assertIn("prometheus", test)
        self.assertIn("podman", packages("image"))
        self.assertNotIn("podman", packages("bench"))
        self.assertLessEqual({"wrk", "haproxy", "nginx-light"}, packages("bench"))
        r = subprocess.run(["bash", "scripts/install-deps.sh", "--list", "nonsense"], cwd=ROOT, capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 2, r.stderr)
        with open(os.path.join(ROOT, "scripts", "test.sh")) as f:
            self.assertIn("scripts/install-deps.sh test\n", f.read())


class QuickstartTest(unittest.TestCase):
    def test_quickstart_serves_and_stops(self):
        proc = subprocess.Popen(["bash", "scripts/quickstart.sh"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        family = []
        try:
            body = None
            deadline = time.time() + 120  # may build first
            while time.time() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:15000/hello?x=1", timeout=2) as r:
                        self.assertEqual(r.status, 200)
                        body = json.loads(r.read())
                        break
                except OSError:
                    time.sleep(0.2)
            self.assertIsNotNone(body, "quickstart did not serve on 127.0.0.1:15000")
            self.assertEqual(body["service"], "demo")
            self.assertEqual(body["path"], "/hello?x=1")
            self.assertEqual(body["headers"]["x-forwarded-proto"], "http")
            self.assertIn("x-request-id", body["headers"])
            family = children_of(proc.pid)
            self.assertTrue(family, "quickstart.sh should have started the demo service and pilotfish")
            # The script prints its instructions once wait-ready returns, a moment after pilotfish
            # serves: wait for them, or the SIGTERM below could come first.
            seen = b""
            deadline = time.time() + 20
            while b"pilotfish is running in front of the demo service" not in seen and time.time() < deadline:
                r, _, _ = select.select([proc.stdout], [], [], 0.5)
                if r:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    seen += chunk
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            text = (seen + out).decode(errors="replace")
            self.assertIn("pilotfish is running in front of the demo service", text)
            self.assertIn("drained; exiting", text)
            time.sleep(0.5)
            for pid in family:
                self.assertFalse(os.path.exists(f"/proc/{pid}") and
                                 open(f"/proc/{pid}/stat").read().split()[2] != "Z",
                                 f"process {pid} left running by quickstart.sh")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            for pid in family:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    unittest.main(verbosity=2)
