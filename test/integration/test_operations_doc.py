#!/usr/bin/env python3
"""docs/operations.md: every command in it runs. The `$ ` lines of its console blocks are run in
order, as one bash script from the repository root with the built pilotfish first on PATH
(background jobs are stopped at the end); a line marked `# run by test/FILE` must name a test
file that runs that command."""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DOC = os.path.join(h.ROOT, "docs", "operations.md")


def commands():
    out, in_block = [], False
    with open(DOC) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("```"):
                in_block = line.strip() == "```console" if not in_block else False
                continue
            if in_block and line.startswith("$ "):
                out.append(line[2:])
    return out


class OperationsDocTest(unittest.TestCase):
    def test_every_command_runs(self):
        cmds = commands()
        scratch = os.path.join(h.make_tmpdir("pf-ops-"), "pf-ops")
        self.assertGreater(len(cmds), 20)
        script = ["set -euo pipefail", "cd %s" % h.ROOT,
                  "export PATH=%s:$PATH" % os.path.dirname(os.path.abspath(h.BIN)),
                  "trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true' EXIT"]
        ran = 0
        for i, c in enumerate(cmds):
            m = re.search(r"#\s*run by (test/\S+)", c)
            if m:
                path = os.path.join(h.ROOT, m.group(1))
                self.assertTrue(os.path.exists(path), c)
                with open(path) as f:
                    text = f.read()
                command = c[:m.start()].strip()
                self.assertIn(" ".join(command.split()[:2]), text, "%s does not run %r" % (m.group(1), command))
                if "--target" in command:
                    self.assertIn("--target " + command.split("--target ")[1].split()[0], text)
                continue
            # The walkthrough's scratch folder, /tmp/pf-ops for a reader, is the test's own here.
            script.append(c.replace("/tmp/pf-ops", scratch))
            script.append("printf '\\n@@ done %d\\n'" % i)  # on a line of its own, whatever the output ended with
            ran += 1
        r = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=180)
        done = [int(n) for n in re.findall(r"^@@ done (\d+)$", r.stdout, re.M)]
        last = done[-1] if done else -1
        failed = next((c for j, c in enumerate(cmds) if j > last and "# run by" not in c), None)
        self.assertEqual(r.returncode, 0, "failed at: %s\nstdout:\n%s\nstderr:\n%s" % (failed, r.stdout[-3000:],
                                                                                      r.stderr[-3000:]))
        self.assertEqual(len(done), ran)
        # What the walkthrough shows actually happened.
        self.assertIn("x-forwarded-client-cert", r.stdout)
        self.assertIn("identity rotated", r.stdout)
        self.assertIn('"outcome":"applied"', r.stdout)
        self.assertIn("is draining", r.stdout)
        self.assertIn("drained and exited", r.stdout)
        self.assertRegex(r.stdout, r"pilotfish_tls_handshakes_total\{direction=\"outbound\",result=\"ok\"\} [1-9]")


if __name__ == "__main__":
    h.main()
