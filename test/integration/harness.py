"""Helpers for pilotfish's integration tests. Python 3 standard library only.

- Pilotfish: writes a policy (dict or YAML text) to a temporary folder, runs the real binary
  ($PILOTFISH_BIN, default build/pilotfish), waits for `pilotfish ready`, parses the bound port
  of each listener from its log, and stops it with SIGTERM (asserting exit code 0).
- Upstream: runs upstream.py in a separate process, reads `PORT n` from its stdout, and reads
  the stats file it keeps.
- Client: a raw-socket HTTP client: send exact bytes, read and parse responses, detect close.

Every process started here is registered; `cleanup()` (also run at exit) kills whatever is still
running, and `main()` fails the test file if any of them was left behind. Children are started
from the main thread with PR_SET_PDEATHSIG, so they also die if the test runner is killed.
"""

import atexit
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("PILOTFISH_BIN") or os.path.join(ROOT, "build", "pilotfish")
UPSTREAM_PY = os.path.join(HERE, "upstream.py")

_started = []  # every subprocess.Popen started by this module
_tmpdirs = []


def _pdeathsig():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args, **kw):
    """subprocess.Popen, registered for cleanup, dying with its parent."""
    assert threading.current_thread() is threading.main_thread(), \
        "spawn from the main thread only (PR_SET_PDEATHSIG is tied to the creating thread)"
    p = subprocess.Popen(args, preexec_fn=_pdeathsig, **kw)
    _started.append(p)
    return p


def make_tmpdir(prefix="pf-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def kill_proc(p, sig=signal.SIGTERM, timeout=5.0):
    if p.poll() is not None:
        return p.returncode
    try:
        p.send_signal(sig)
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(5)


def cleanup():
    for p in _started:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmpdirs.clear()


atexit.register(cleanup)


def leftover_processes():
    """PIDs started by this module that are still alive (zombies count as dead)."""
    alive = []
    for p in _started:
        if p.poll() is None:
            alive.append(p.pid)
    return alive


def wait_for(pred, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def listening_ports():
    """Local ports in LISTEN state on this machine (from /proc/net/tcp and tcp6)."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def free_port():
    """A port with nothing listening on it (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------

def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, list) and v:
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, (dict, list)):
                out.append("%s%s: %s" % (pad, k, "{}" if isinstance(v, dict) else "[]"))
            else:
                out.append("%s%s: %s" % (pad, k, _scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = to_yaml(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0][indent + 2:]
                out.extend(sub)
            else:
                out.append("%s- %s" % (pad, _scalar(item)))
    else:
        out.append(pad + _scalar(obj))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Upstream processes
# ---------------------------------------------------------------------------------------------

class Upstream:
    def __init__(self, mode="echo", name=None, extra=()):
        self.dir = make_tmpdir("pf-up-")
        self.name = name or mode
        self.stats_path = os.path.join(self.dir, "stats.json")
        self.stderr_path = os.path.join(self.dir, "stderr")
        args = [sys.executable, UPSTREAM_PY, "--mode", mode, "--name", self.name,
                "--stats", self.stats_path] + list(extra)
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = spawn(args, stdout=subprocess.PIPE, stderr=self.stderr_file, stdin=subprocess.DEVNULL)
        line = _readline_timeout(self.proc.stdout, 10.0)
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            self.stop()
            raise AssertionError("upstream %s did not start: %r %s" % (mode, line, self.stderr()))
        self.port = int(m.group(1))
        self.address = "127.0.0.1:%d" % self.port

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stats(self):
        for _ in range(50):
            try:
                with open(self.stats_path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                time.sleep(0.02)
        raise AssertionError("cannot read upstream stats " + self.stats_path)

    def requests(self):
        return self.stats()["requests"]

    def wait_requests(self, n, timeout=5.0):
        return wait_for(lambda: len(self.requests()) >= n and self.requests(), timeout,
                        what="%d requests at upstream %s" % (n, self.name))

    def stop(self):
        if self.proc.poll() is None:
            kill_proc(self.proc, signal.SIGTERM, 5)
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        self.stderr_file.close()


def _readline_timeout(f, timeout):
    fd = f.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return buf
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return buf
        b = os.read(fd, 1)
        if not b:
            return buf
        buf += b
    return buf


# ---------------------------------------------------------------------------------------------
# pilotfish
# ---------------------------------------------------------------------------------------------

def answer_once(testcase, response):
    """A raw upstream for one connection, in a thread of the test: it reads a request head and
    answers `response` (exact bytes, whatever they are), then closes. Returns its address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    testcase.addCleanup(server.close)

    def serve():
        conn, _ = server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.sendall(response)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    testcase.addCleanup(t.join, 5)
    return "127.0.0.1:%d" % server.getsockname()[1]


def simple_policy(upstreams, listener=None, cluster=None, workers=1, access_log="off", routes=None):
    """A policy with one http listener `ingress` on port 0 routing everything to cluster `app`."""
    if not isinstance(upstreams, (list, tuple)):
        upstreams = [upstreams]
    c = {"name": "app", "endpoints": [u if isinstance(u, str) else u.address for u in upstreams]}
    c.update(cluster or {})
    l = {"name": "ingress", "address": "127.0.0.1:0"}
    l.update(listener or {})
    l["routes"] = routes or [{"cluster": "app"}]
    return {"version": 1, "service": "it", "admin": {"address": "127.0.0.1:0"}, "workers": workers,
            "access_log": access_log, "listeners": [l], "clusters": [c]}


class Pilotfish:
    LISTENER_RE = re.compile(r" listener (\S+) on (\S+):(\d+) \(")

    def __init__(self, policy, extra_args=(), start=True, ready_timeout=10.0, wait_listening=True, nofile=None):
        """nofile: run under this RLIMIT_NOFILE (soft and hard), as `ulimit -n N` would."""
        self.dir = make_tmpdir("pf-run-")
        self.nofile = nofile
        self.config = os.path.join(self.dir, "policy.yaml")
        if isinstance(policy, dict):
            policy = dict(policy)
            policy.setdefault("admin", {"address": "127.0.0.1:0"})
            text = to_yaml(policy) + "\n"
        else:
            text = policy
        with open(self.config, "w") as f:
            f.write(text)
        self.policy_text = text
        self.extra_args = list(extra_args)
        self.proc = None
        self.ports = {}
        self.lines = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.wait_listening = wait_listening
        if start:
            self.start(ready_timeout)

    def start(self, ready_timeout=10.0):
        self.stdout_file = open(self.stdout_path, "wb")
        # prlimit execs the binary, so the process (and its pid) is pilotfish's.
        prefix = ["prlimit", "--nofile=%d:%d" % (self.nofile, self.nofile), "--"] if self.nofile else []
        self.proc = spawn(prefix + [BIN, "run", "--config", self.config] + self.extra_args,
                          stdout=self.stdout_file, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + ready_timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                self.reader.join(2)
                raise AssertionError("pilotfish exited with %s before ready:\n%s\npolicy:\n%s"
                                     % (self.proc.returncode, self.log(), self.policy_text))
            if time.monotonic() > deadline:
                raise AssertionError("pilotfish not ready after %.0fs:\n%s" % (ready_timeout, self.log()))
        if self.wait_listening:
            # `ready` is logged when serving; should it come before listen(), this keeps the other
            # tests independent of that (test_cli checks it separately). Reads /proc/net/tcp
            # rather than connecting, so that no test sees an extra connection.
            for name, port in self.ports.items():
                wait_for(lambda: port in listening_ports(), 5.0, what="listener %s in LISTEN state" % name)
        return self

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self.lock:
                self.lines.append(line)
            m = self.LISTENER_RE.search(line)
            if m:
                self.ports[m.group(1)] = int(m.group(3))
            if " pilotfish ready" in line:
                self.ready.set()
        self.proc.stderr.close()

    @property
    def pid(self):
        return self.proc.pid

    def port(self, listener="ingress"):
        if listener not in self.ports:
            raise AssertionError("no listener %r in log:\n%s" % (listener, self.log()))
        return self.ports[listener]

    def log(self, last=60):
        with self.lock:
            return "\n".join(self.lines[-last:])

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self, field="VmRSS"):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError("no %s in /proc/%d/status" % (field, self.proc.pid))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0, sig=signal.SIGTERM):
        """SIGTERM, wait for exit, return the exit code (kills on timeout and raises)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.reader.join(2)
                raise AssertionError("pilotfish did not exit within %.0fs of SIGTERM:\n%s" % (timeout, self.log()))
        self.reader.join(2)
        self.stdout_file.close()
        return self.proc.returncode

    def stop_and_check(self, testcase, timeout=15.0):
        rc = self.stop(timeout)
        testcase.assertEqual(rc, 0, "pilotfish exit code after SIGTERM:\n" + self.log())
        # Every loop must close with no handle left open (pilotfish says so when one is).
        full = self.log(last=1 << 30)
        testcase.assertNotIn("handles still open", full)
        testcase.assertNotIn("ERROR: AddressSanitizer", full)
        testcase.assertNotIn("runtime error:", full)

    def kill(self):
        """Kills the process if it still runs (a safety net for cleanups) and closes its files."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.reader.join(2)
        if not self.stdout_file.closed:
            self.stdout_file.close()


def check_policy(policy):
    """`pilotfish check` of a policy (a dict) written to a file of its own: (exit code, stdout +
    stderr)."""
    path = os.path.join(make_tmpdir("pf-check-"), "policy.yaml")
    with open(path, "w") as f:
        f.write(policy_text(policy))
    rc, out, err = run_cli(["check", "--config", path])
    return rc, out + err


def run_cli(args, timeout=20.0):
    """Runs the binary to completion: (exit code, stdout, stderr)."""
    p = spawn([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("pilotfish %s did not finish in %.0fs" % (" ".join(args), timeout))
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Raw HTTP client
# ---------------------------------------------------------------------------------------------

class Closed(Exception):
    """The peer closed the connection before a complete message."""


class Timeout(Exception):
    pass


class Response:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.body = b""
        self.trailers = []
        self.interim = []  # 1xx responses before this one
        self.raw_head = b""
        self.chunked = False

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def headers_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def has_header(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body.decode("latin-1"))

    def __repr__(self):
        return "<Response %s %s %r body=%r>" % (self.status, self.reason, self.headers, self.body[:200])


def build_request(method="GET", target="/", headers=None, body=None, version="HTTP/1.1", host="test.local"):
    """Bytes of a request. headers: list of (name, value); Host first unless host=None or given."""
    headers = list(headers or [])
    names = [n.lower() for n, _ in headers]
    if host is not None and "host" not in names:
        headers.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    out = "%s %s %s\r\n" % (method, target, version)
    for n, v in headers:
        out += "%s: %s\r\n" % (n, v)
    out += "\r\n"
    data = out.encode("latin-1")
    if body is not None:
        data += body if isinstance(body, bytes) else body.encode("latin-1")
    return data


def chunk_encode(pieces, trailers=()):
    out = b""
    for p in pieces:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    out += b"0\r\n"
    for n, v in trailers:
        out += ("%s: %s\r\n" % (n, v)).encode()
    return out + b"\r\n"


class Client:
    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline, n=65536):
        """Reads more into buf. False at EOF/reset; raises Timeout at the deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        # A TLS socket may hold decrypted bytes that select() cannot see.
        pending = getattr(self.sock, "pending", None)
        if not (pending and pending()):
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                raise Timeout()
        try:
            data = self.sock.recv(n)
        except ConnectionResetError:
            self.eof = True
            self.reset = True
            return False
        except socket.timeout:
            raise Timeout()
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self, deadline):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if not self._fill(deadline):
                raise Closed("connection closed inside a line; have %r" % bytes(self.buf[:200]))

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Closed("connection closed with %d of %d body bytes" % (len(self.buf), n))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_response(self, method="GET", timeout=None, keep_interim=False):
        """Reads one response. 1xx responses (other than 101) are collected into .interim.
        Raises Timeout when nothing complete arrives in time, Closed at a premature close."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        interim = []
        while True:
            r = self._read_one(method, deadline)
            if 100 <= r.status < 200 and r.status != 101 and not keep_interim:
                interim.append(r)
                continue
            r.interim = interim
            return r

    def _read_one(self, method, deadline):
        r = Response()
        # Head.
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                break
            if not self._fill(deadline):
                if not self.buf:
                    raise Closed("connection closed before a response")
                raise Closed("connection closed inside a response head: %r" % bytes(self.buf[:300]))
        r.raw_head = head
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].decode("latin-1")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", status_line)
        if not m:
            raise AssertionError("bad status line %r" % status_line)
        r.version, r.status, r.reason = m.group(1), int(m.group(2)), m.group(3) or ""
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise AssertionError("bad header line %r in %r" % (line, head))
            r.headers.append((name, value.strip(" \t")))
        # Body.
        if method == "HEAD" or r.status < 200 or r.status in (204, 304):
            return r
        te = r.header("transfer-encoding")
        if te is not None and te.lower().split(",")[-1].strip() == "chunked":
            r.chunked = True
            body = bytearray()
            while True:
                size_line = self._line(deadline)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self._line(deadline)
                        if not t:
                            break
                        n, _, v = t.decode("latin-1").partition(":")
                        r.trailers.append((n, v.strip()))
                    break
                body += self._exact(size, deadline)
                if self._exact(2, deadline) != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
            r.body = bytes(body)
            return r
        cl = r.header("content-length")
        if cl is not None:
            r.body = self._exact(int(cl), deadline)
            return r
        # Delimited by close.
        while self._fill(deadline):
            pass
        r.body = bytes(self.buf)
        self.buf.clear()
        return r

    def read_until_close(self, timeout=None):
        """(bytes, closed): everything until EOF/reset, or until the timeout (closed=False)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        try:
            while self._fill(deadline):
                pass
            closed = True
        except Timeout:
            closed = False
        data = bytes(self.buf)
        self.buf.clear()
        return data, closed

    def is_closed(self, timeout=2.0):
        """True when the peer closes (EOF or reset) within timeout; data read meanwhile is kept."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
            return True
        except Timeout:
            return False

    def request(self, method="GET", target="/", headers=None, body=None, version="HTTP/1.1",
                host="test.local", timeout=None):
        self.send(build_request(method, target, headers, body, version, host))
        return self.read_response(method, timeout)


def request(port, method="GET", target="/", headers=None, body=None, version="HTTP/1.1",
            host="test.local", timeout=5.0):
    """One request on a new connection, returns the Response."""
    with Client(port, timeout=timeout) as c:
        return c.request(method, target, headers, body, version, host, timeout)


def parse_responses(data, methods=None):
    """Parses a byte string of back-to-back responses (a helper over Client's parser)."""
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        c = Client.__new__(Client)
        c.sock, c.buf, c.eof, c.reset, c.timeout = b, bytearray(), False, False, 2.0
        out = []
        i = 0
        while True:
            try:
                out.append(c.read_response((methods or [])[i] if methods and i < len(methods) else "GET"))
            except Closed:
                if c.buf:
                    raise
                break
            i += 1
        return out
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# Test-file entry point
# ---------------------------------------------------------------------------------------------

def main():
    """unittest.main() that also fails when a process this file started is still running."""
    prog = unittest.main(exit=False, verbosity=2)
    ok = prog.result.wasSuccessful()
    # Give processes stopped in tearDown a moment, then check.
    deadline = time.monotonic() + 5
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = leftover_processes()
    if left:
        print("FAIL: processes left behind by the tests: %s" % left, file=sys.stderr)
        ok = False
    cleanup()
    left = leftover_processes()
    if left:
        print("FAIL: could not kill %s" % left, file=sys.stderr)
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------------
# Admin endpoints, metrics, policy rewrites and the log after start (hot reload, drain)
# ---------------------------------------------------------------------------------------------

ADMIN_LOG_RE = re.compile(r" admin on 127\.0\.0\.1:(\d+)")


def admin_port(pf):
    """The admin listener's port, from the `admin on 127.0.0.1:PORT` log line."""
    with pf.lock:
        lines = list(pf.lines)
    for line in lines:
        m = ADMIN_LOG_RE.search(line)
        if m:
            return int(m.group(1))
    raise AssertionError("no 'admin on' line in the log:\n" + pf.log())


def admin_request(pf, path, method="GET", body=None, timeout=15.0):
    """(status, {lower-case header: value}, body text) of one admin request on a new connection."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", admin_port(pf), timeout=timeout)
    try:
        conn.request(method, path, body=body if body is not None else (b"" if method == "POST" else None))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        conn.close()


def admin_json(pf, path, method="GET"):
    """(status, parsed JSON body, headers) of an admin request whose answer must be JSON."""
    status, headers, body = admin_request(pf, path, method)
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError("%s %s answered %d with a body that is not JSON: %r" % (method, path, status, body[:500]))
    return status, doc, headers


def parse_samples(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert m, "unparsable sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metrics(pf):
    status, _, text = admin_request(pf, "/metrics")
    assert status == 200, "GET /metrics answered %d" % status
    return parse_samples(text)


def sample(samples, name, **labels):
    """The value of one series, or None when it is absent."""
    return samples.get((name, frozenset(labels.items())))


def series(samples, name):
    """[(labels dict, value)] of every series of a metric."""
    return [(dict(labels), v) for (n, labels), v in samples.items() if n == name]


def file_sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def policy_text(policy):
    """The YAML text Pilotfish would write for a policy dict (the admin address is filled in)."""
    if isinstance(policy, dict):
        policy = dict(policy)
        policy.setdefault("admin", {"address": "127.0.0.1:0"})
        return to_yaml(policy) + "\n"
    return policy


def write_policy(pf, policy, how="inplace"):
    """Rewrites pf's policy file: `inplace` truncates and writes the same file (same inode);
    `rename` writes a temporary file in the same folder and renames it over the policy file.
    Returns the sha256 of what was written."""
    import hashlib
    text = policy_text(policy)
    data = text.encode()
    if how == "inplace":
        with open(pf.config, "r+b" if os.path.exists(pf.config) else "wb") as f:
            f.truncate(0)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    elif how == "rename":
        tmp = os.path.join(os.path.dirname(pf.config), ".policy.yaml.tmp-%d" % os.getpid())
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pf.config)
    else:
        raise ValueError(how)
    pf.policy_text = text
    return hashlib.sha256(data).hexdigest()


def access_log_records(path, count, timeout=5.0):
    """The JSON lines of an access log file, once there are at least `count` of them (pilotfish
    writes them in batches, every 200 ms at most)."""
    def read():
        try:
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except OSError:
            return None
        return lines if len(lines) >= count else None
    return wait_for(read, timeout, what="%d access-log lines in %s" % (count, path))


def log_mark(pf):
    """The number of log lines so far: pass it as `since` to the helpers below."""
    with pf.lock:
        return len(pf.lines)


def log_lines(pf, since=0):
    with pf.lock:
        return list(pf.lines[since:])


def wait_log(pf, pattern, since=0, timeout=5.0):
    """The first re.search match of pattern in a log line logged at or after `since`."""
    rx = re.compile(pattern)

    def find():
        for line in log_lines(pf, since):
            m = rx.search(line)
            if m:
                return m
        return None
    return wait_for(find, timeout, what="log line /%s/ in:\n%s" % (pattern, pf.log()))


def listener_port_since(pf, name, since=0, timeout=5.0):
    """The port of listener `name` from a `listener NAME on HOST:PORT (` line logged at or after
    `since` (a listener bound by a reload logs the same line as at startup). Also updates
    pf.ports, and waits until the port is in LISTEN state."""
    m = wait_log(pf, r" listener %s on (\S+):(\d+) \(" % re.escape(name), since, timeout)
    port = int(m.group(2))
    pf.ports[name] = port
    wait_for(lambda: port in listening_ports(), timeout, what="listener %s in LISTEN state" % name)
    return port


def ports_from_log(pf):
    """{listener: port} from every `listener NAME on HOST:PORT (` line so far, the last line of
    each name winning (pf.ports is kept the same way by the log reader)."""
    out = {}
    for line in log_lines(pf):
        m = Pilotfish.LISTENER_RE.search(line)
        if m:
            out[m.group(1)] = int(m.group(3))
    return out


def connect_refused(port, timeout=2.0):
    """True when a TCP connect to 127.0.0.1:port is refused; False when it is accepted (the
    socket is closed again at once)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


# ---------------------------------------------------------------------------------------------
# Clusters (GET /clusters), concurrent calls, ISO times
# ---------------------------------------------------------------------------------------------

def cluster_info(pf, name="app"):
    """One cluster's object from GET /clusters."""
    status, doc, _ = admin_json(pf, "/clusters")
    assert status == 200, "GET /clusters answered %d" % status
    for c in doc.get("clusters", []):
        if c.get("name") == name:
            return c
    raise AssertionError("no cluster %r in /clusters: %r" % (name, doc))


def endpoint_info(pf, address, cluster="app"):
    """One endpoint's object (address, health, ejected_until, ...) from GET /clusters."""
    c = cluster_info(pf, cluster)
    for e in c.get("endpoints", []):
        if e.get("address") == address:
            return e
    raise AssertionError("no endpoint %s in cluster %s of /clusters: %r" % (address, cluster, c))


def parse_iso_utc(text):
    """Seconds since the epoch of an ISO-8601 UTC time such as 2026-01-02T03:04:05.678Z."""
    import datetime
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|\+00:00)$", text or "")
    assert m, "not an ISO-8601 UTC time: %r" % (text,)
    dt = datetime.datetime(*[int(g) for g in m.groups()[:6]], tzinfo=datetime.timezone.utc)
    return dt.timestamp() + (float(m.group(7)) if m.group(7) else 0.0)


def run_concurrently(fns, timeout=30.0):
    """Calls every fn in its own thread at once; returns their results in order (an exception
    raised by a fn is returned in its place). Raises when one has not returned within timeout."""
    results = [None] * len(fns)
    start = threading.Barrier(len(fns)) if fns else None

    def run(i, fn):
        try:
            start.wait(timeout)
            results[i] = fn()
        except BaseException as e:  # noqa: B902 - handed back to the caller
            results[i] = e
    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError("%d of %d concurrent calls still running after %.0fs"
                             % (sum(t.is_alive() for t in threads), len(threads), timeout))
    return results


def start_thread(fn):
    """Runs fn in a daemon thread; returns a getter that joins it (timeout) and returns its
    result or raises what it raised."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: B902 - raised again by the getter
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()

    def get(timeout=30.0):
        t.join(timeout)
        if t.is_alive():
            raise AssertionError("background call still running after %.0fs" % timeout)
        if "error" in box:
            raise box["error"]
        return box["value"]
    return get


# ---------------------------------------------------------------------------------------------
# Certificates for tests: a CA and workload certificates made with the openssl CLI
# ---------------------------------------------------------------------------------------------

def openssl(*args, cwd=None):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args), r.stderr)
    return r.stdout


class Pki:
    """A CA (EC P-256) in `folder`, and leaf certificates it signs. `days` may be negative
    (openssl x509 -days -1 makes a certificate that expired a day ago)."""

    def __init__(self, folder, name="test-ca", days=30):
        os.makedirs(folder, exist_ok=True)
        self.dir = folder
        self.name = name
        self.key = os.path.join(folder, name + ".key")
        self.cert = os.path.join(folder, name + ".pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.key, "-out", self.cert, "-days", str(days), "-subj", "/CN=" + name)

    def leaf(self, name, uris=("spiffe://test.local/ns/test/sa/app",), days=30, eku="serverAuth,clientAuth",
             cert_path=None, key_path=None):
        """Signs a certificate for `name` with the given URI SANs; returns (cert path, key path)."""
        cert_path = cert_path or os.path.join(self.dir, name + ".pem")
        key_path = key_path or os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        ext = os.path.join(self.dir, name + ".ext")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key_path,
                "-out", csr, "-subj", "/CN=" + name)
        lines = []
        if uris:
            lines.append("subjectAltName=" + ",".join("URI:" + u for u in uris))
        if eku:
            lines.append("extendedKeyUsage=" + eku)
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                "-out", cert_path, "-days", str(days), "-extfile", ext)
        return cert_path, key_path
