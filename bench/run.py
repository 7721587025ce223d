#!/usr/bin/env python3
"""fastws load benchmarks: fastws against picows, websockets, aiohttp and Node's ws, as
servers (driven by a C load generator) and as clients (driving a C echo server).

    python3 bench/run.py --quick     # small subset, about 2-3 minutes
    python3 bench/run.py             # full matrix, 3 repetitions
    python3 bench/run.py --tls       # the wss:// cases and their ws:// twins only

Uses only the standard library.  It prepares (idempotently) under
$FASTWS_BENCH_HOME (default ~/.cache/fastws-bench):
    venv/            peers + matplotlib + this repository's fastws
    node/            npm-installed `ws` (skipped when node/npm are missing)
    build/loadgen-*  the C load generator, compiled with `cc -O2`
then runs every case against every server (server pinned to one CPU, load
generator to another), and writes bench/results/.  See bench/README.md.
"""
import argparse
import hashlib
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SERVERS_DIR = os.path.join(BENCH, "servers")
CLIENT_SCRIPT = os.path.join(BENCH, "clients", "echo_client.py")
RESULTS = os.path.join(BENCH, "results")
HOME = os.environ.get("FASTWS_BENCH_HOME") or os.path.expanduser("~/.cache/fastws-bench")

PEER_PACKAGES = ["picows", "aiofastnet", "websockets", "aiohttp", "uvloop", "matplotlib",
                 "uvicorn", "httptools", "starlette", "wsproto"]  # the last four: the ASGI servers (uvicorn-*)

KiB, MiB = 1024, 1024 * 1024

SERVER_CPU, LOADGEN_CPU = 1, 0
NICE = -20
REALTIME = False  # --realtime: SCHED_FIFO for the server and the loadgen


def log(msg):
    print(msg, flush=True)


def human_size(n):
    if n >= MiB and n % MiB == 0:
        return "%dMiB" % (n // MiB)
    if n >= KiB and n % KiB == 0:
        return "%dKiB" % (n // KiB)
    return "%dB" % n


@dataclass
class Case:
    mode: str
    conns: int
    size: int = 16
    text: bool = False
    inflight: int = 1
    tls: bool = False
    only: tuple = ()   # run on these servers only (empty: every server)

    @property
    def name(self):
        if self.mode == "idle":
            return "idle-%dc" % self.conns + ("-tls" if self.tls else "")
        n = "%s-%dc-%s" % (self.mode, self.conns, human_size(self.size))
        if self.mode == "stream":
            n += "-x%d" % self.inflight
        return n + ("-text" if self.text else "") + ("-tls" if self.tls else "")

    def plain(self, only=()):
        """The same case over ws:// (the twin a TLS case is compared with)."""
        return Case(self.mode, self.conns, self.size, self.text, self.inflight, False, only)

    @property
    def path(self):
        return "/fanout" if self.mode == "fanout" else "/"


def client_cases(quick=False):
    """The client benchmarks: each client library drives the C echo server."""
    if quick:
        return [Case("client", 64, 256)]
    return [Case("client", conns, size) for conns in (1, 64) for size in (256, 64 * KiB)]


def full_cases():
    cases = []
    for conns in (1, 64):
        for size in (16, 256, 4 * KiB, 64 * KiB, 1 * MiB):
            cases.append(Case("rr", conns, size))
    cases.append(Case("rr", 64, 4 * KiB, text=True))
    for size, k in ((64 * KiB, 16), (1 * MiB, 4)):
        for text in (False, True):
            cases.append(Case("stream", 8, size, text, k))
    cases.append(Case("fanout", 1000, 256))
    cases.append(Case("idle", 10000))
    return cases + tls_cases() + [Case("idle", 10000, tls=True)] + client_cases()


def tls_cases():
    """wss:// (TLS 1.3): small messages on many connections and on one, UTF-8
    validation, bulk; each has a ws:// twin of the same shape in full_cases()."""
    return [Case("rr", 64, 256, tls=True), Case("rr", 64, 4 * KiB, text=True, tls=True),
            Case("rr", 1, 256, tls=True), Case("stream", 8, 1 * MiB, False, 4, tls=True)]


# --tls runs the TLS cases and their twins; the twins on these servers only
TWIN_SERVERS = ("fastws", "fastws-py", "picows")


def tls_run_cases():
    cases = []
    for c in tls_cases():
        cases += [c.plain(TWIN_SERVERS), c]
    return cases


def quick_cases():
    return [Case("rr", 64, 256), Case("rr", 64, 4 * KiB, text=True),
            Case("stream", 8, 64 * KiB, False, 16), Case("fanout", 1000, 256),
            Case("rr", 64, 256, tls=True), Case("rr", 64, 4 * KiB, text=True, tls=True)] + client_cases(quick=True)


# --------------------------------------------------------------------- setup

def run_checked(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stdout[-4000:]))
    return r.stdout


def build_c(name, tls=False):
    """bench/load/<name>.c compiled with `cc -O2` (and OpenSSL with tls=True) into
    the cache, once per version of its source; RuntimeError when it does not build."""
    src = os.path.join(BENCH, "load", name + ".c")
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    out = os.path.join(HOME, "build", "%s-%s%s" % (name, digest, "-tls" if tls else ""))
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = os.environ.get("CC", "cc")
        flags, libs = (["-DLOADGEN_TLS"], ["-lssl", "-lcrypto"]) if tls else ([], [])
        log("building %s: %s" % (name, " ".join([cc, "-O2"] + flags + [src] + libs)))
        run_checked([cc, "-O2", "-Wall"] + flags + ["-o", out + ".tmp", src] + libs)
        os.replace(out + ".tmp", out)
    return out


def build_loadgen():
    """The load generator, with OpenSSL (--tls) when its headers and libraries
    are there; returns (path, has_tls)."""
    try:
        return build_c("loadgen", tls=True), True
    except RuntimeError as e:
        log("note: the loadgen does not build with OpenSSL (libssl-dev missing?): TLS cases are skipped\n%s"
            % str(e)[-600:])
        return build_c("loadgen"), False


def make_certificate(workdir):
    """A self-signed certificate for 127.0.0.1 / localhost (EC P-256, valid 2
    days) in workdir, made for this run and never kept; returns (cert, key) or
    None when the openssl command is missing."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    run_checked([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert])
    return cert, key


def tree_digest(root, skip_dirs):
    """Hash of the files that make up the fastws package source."""
    h = hashlib.sha256()
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = sorted(x for x in dirs if x not in skip_dirs and not x.startswith(".")
                         and not x.endswith(".egg-info") and not (rel == "." and x in ("bench", "build", "dist")))
        for fn in sorted(files):
            if fn.endswith((".pyc", ".so", ".o")):
                continue
            p = os.path.join(d, fn)
            try:
                st = os.stat(p)
            except OSError:
                continue
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
            del st
    return h.hexdigest()[:16]


def setup_venv(args):
    venv = os.path.join(HOME, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        log("creating venv %s" % venv)
        run_checked([sys.executable, "-m", "venv", venv])
    stamp = os.path.join(venv, ".bench-peers")
    want = " ".join(PEER_PACKAGES)
    if not os.path.exists(stamp) or open(stamp).read() != want or args.upgrade:
        log("installing peers: %s" % want)
        run_checked([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        run_checked([py, "-m", "pip", "install", "-q", "--upgrade"] + PEER_PACKAGES)
        with open(stamp, "w") as f:
            f.write(want)
    install_fastws(py, venv)
    return py


def install_fastws(py, venv):
    """pip install the repository's fastws from a copy of its source tree (so
    that no build artefacts land in the checkout); skipped when unchanged."""
    if not any(os.path.exists(os.path.join(REPO, f)) for f in ("pyproject.toml", "setup.py")):
        log("note: no pyproject.toml/setup.py at the repo root yet: fastws is not installed")
        return
    skip = {"bench", "__pycache__", "build", "dist", "node_modules"}
    digest = tree_digest(REPO, skip)
    stamp = os.path.join(venv, ".bench-fastws")
    if os.path.exists(stamp):
        state = open(stamp).read()
        if state == "ok " + digest:
            return
        if state == "failed " + digest:
            log("note: fastws failed to install from this same source before; not retrying "
                "(its servers will be skipped; delete %s to retry)" % stamp)
            return
    src = os.path.join(HOME, "fastws-src")
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "bench", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", "node_modules"))
    log("installing fastws from the repository (build copy: %s)" % src)
    # FASTWS_EXTENSION is left unset for the build: the extension is built when
    # possible; whether it is in use is checked when the server starts.
    env = {k: v for k, v in os.environ.items() if k != "FASTWS_EXTENSION"}
    try:
        run_checked([py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", "--no-cache-dir", src],
                    env=env)
    except RuntimeError as e:
        log("note: building fastws with its extension failed:\n%s" % str(e)[-1200:])
        log("retrying with FASTWS_EXTENSION=0 (pure Python only; the 'fastws' compiled variant will be skipped)")
        try:
            run_checked([py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", "--no-cache-dir",
                         src], env=dict(env, FASTWS_EXTENSION="0"))
        except RuntimeError as e2:
            log("note: installing fastws failed; its servers will be skipped\n%s" % str(e2)[-1200:])
            with open(stamp, "w") as f:
                f.write("failed " + digest)
            return
    with open(stamp, "w") as f:
        f.write("ok " + digest)


def install_baseline(py, rev):
    """fastws as it was at git revision ``rev``, built once into HOME/baseline-SHA/site
    (a ``pip install --target`` tree put first on the baseline server's PYTHONPATH),
    so that a change and what it replaces run side by side in one run.
    Returns (short sha, site directory)."""
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--verify", rev + "^{commit}"], capture_output=True,
                         text=True)
    if sha.returncode != 0:
        sys.exit("--baseline: %s is not a commit of this repository" % rev)
    sha = sha.stdout.strip()
    home = os.path.join(HOME, "baseline-" + sha[:12])
    site, stamp = os.path.join(home, "site"), os.path.join(home, ".built")
    if not os.path.exists(stamp):
        shutil.rmtree(home, ignore_errors=True)
        src = os.path.join(home, "src")
        os.makedirs(src)
        archive = subprocess.run(["git", "-C", REPO, "archive", sha], stdout=subprocess.PIPE, check=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        log("building the baseline fastws %s into %s" % (sha[:12], site))
        run_checked([py, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", "--target", site, src],
                    env=dict(os.environ, FASTWS_EXTENSION="1"))
        open(stamp, "w").close()
    return sha[:7], site


def setup_node(args):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        log("note: node/npm not found: the ws server is skipped")
        return None
    prefix = os.path.join(HOME, "node")
    if not os.path.exists(os.path.join(prefix, "node_modules", "ws", "package.json")) or args.upgrade:
        os.makedirs(prefix, exist_ok=True)
        log("installing ws with npm into %s" % prefix)
        try:
            run_checked([npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--silent", "ws"])
        except RuntimeError as e:
            log("note: npm install ws failed, ws is skipped\n%s" % str(e)[-800:])
            return None
    return os.path.join(prefix, "node_modules")


# ------------------------------------------------------------------- servers

def server_commands(py, node_modules):
    """name -> (argv, extra env) for every server."""
    def pyserver(script, **env):
        return [py, "-u", os.path.join(SERVERS_DIR, script)], env
    cmds = {
        "fastws": pyserver("fastws_server.py", FASTWS_EXTENSION="1"),
        "fastws-py": pyserver("fastws_server.py", FASTWS_EXTENSION="0"),
        "picows": pyserver("picows_server.py"),
        "websockets": pyserver("websockets_server.py"),
        "aiohttp": pyserver("aiohttp_server.py"),
        # The same Starlette echo endpoint under uvicorn, three WebSocket implementations.
        "uvicorn-fastws": pyserver("uvicorn_server.py", FASTWS_BENCH_UVICORN_WS="fastws", FASTWS_EXTENSION="1"),
        "uvicorn-sansio": pyserver("uvicorn_server.py", FASTWS_BENCH_UVICORN_WS="websockets-sansio"),
        "uvicorn-wsproto": pyserver("uvicorn_server.py", FASTWS_BENCH_UVICORN_WS="wsproto"),
    }
    if node_modules:
        cmds["ws"] = (["node", os.path.join(SERVERS_DIR, "ws_server.js")], {"NODE_PATH": node_modules})
    return cmds


DEFAULT_SERVERS = ["fastws", "fastws-py", "picows", "websockets", "aiohttp", "ws"]
# Only with --servers: echo only (no /fanout), for the ASGI comparison (see bench/README.md).
ASGI_SERVERS = ["uvicorn-fastws", "uvicorn-sansio", "uvicorn-wsproto"]
ALL_SERVERS = DEFAULT_SERVERS + ASGI_SERVERS
# The client benchmarks (bench/clients/echo_client.py --client NAME): fastws's Listener
# API, its await API, and the peers' clients.
ALL_CLIENTS = ["fastws", "fastws-await", "picows", "websockets", "aiohttp"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def busy_cpu_s():
    """Non-idle CPU seconds of the whole machine so far (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # minus idle and iowait


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pin(cpu):
    """preexec_fn: pin to one CPU, raise the priority (nice -20 when allowed, so
    that unrelated jobs on the machine disturb the measurement less) and the fd limit."""
    def fn():
        os.sched_setaffinity(0, {cpu})
        try:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
        except OSError:
            pass
        if REALTIME:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            except OSError:
                pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536), max(hard, 65536)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return fn


def line_reader(stream, q, tag):
    for line in iter(stream.readline, ""):
        q.put((tag, line.rstrip("\n"), time.monotonic()))
    q.put((tag, None, time.monotonic()))


class Server:
    def __init__(self, name, argv, env, logdir):
        self.name = name
        self.errlog = os.path.join(logdir, "%s.stderr" % name)
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **env)
        self.errf = open(self.errlog, "a")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.errf, text=True,
                                     cwd=SERVERS_DIR, env=full_env, preexec_fn=pin(SERVER_CPU))
        self.q = queue.Queue()
        threading.Thread(target=line_reader, args=(self.proc.stdout, self.q, "out"), daemon=True).start()
        self.info, self.port = {}, None

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line, _ = self.q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            if line.startswith("INFO "):
                self.info = json.loads(line[5:])
            elif line.startswith("PORT "):
                self.port = int(line.split()[1])
                return True
        return False

    def stderr_tail(self, n=6):
        try:
            with open(self.errlog) as f:
                return "".join(f.readlines()[-n:]).strip()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.errf.closed:
            self.errf.close()


def drive_loadgen(cmd, pids, timeout):
    """Run the load generator to its end, pinned to its CPU; returns (result, marks, notes, rc).

    ``marks`` maps MEASURE_START / MEASURE_END to (monotonic time, CPU seconds
    of ``pids``, VmRSS KiB of ``pids``, busy CPU seconds of the machine), taken
    when the load generator prints them; ``notes`` are its other stderr lines.
    """
    lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=pin(LOADGEN_CPU))
    q = queue.Queue()
    threading.Thread(target=line_reader, args=(lg.stderr, q, "err"), daemon=True).start()
    marks, notes = {}, []
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, line, _ = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            lg.kill()
            notes.append("loadgen timed out")
            break
        if line is None:
            break
        if line in ("MEASURE_START", "MEASURE_END"):
            try:
                marks[line] = (time.monotonic(), sum(proc_cpu(pid) for pid in pids),
                               sum(proc_status_kib(pid, "VmRSS") for pid in pids), busy_cpu_s())
            except OSError:
                notes.append("server exited during the run")
        elif not line.startswith("CONNECTED"):
            notes.append(line)
    result = {}
    for ln in lg.stdout.read().splitlines():
        if ln.startswith("{"):
            result = json.loads(ln)
    return result, marks, notes, lg.wait()


def run_one(loadgen, server, case, warmup, duration, cert=None):
    """One loadgen run against a started server; returns a result dict.
    cert: the certificate the load generator checks a TLS server against."""
    pid = server.proc.pid
    rss_base = proc_status_kib(pid, "VmRSS")
    cmd = [loadgen, "--port", str(server.port), "--path", case.path,
           "--mode", case.mode, "--conns", str(case.conns), "--size", str(case.size),
           "--inflight", str(case.inflight), "--warmup", str(warmup), "--duration", str(duration)]
    if case.text:
        cmd.append("--text")
    if case.tls:
        cmd += ["--tls", "--tls-ca", cert]
    res, marks, notes, rc = drive_loadgen(cmd, [pid], warmup + duration + 120)
    alive = server.proc.poll() is None
    res["loadgen_rc"] = rc
    res["server_alive"] = alive
    if notes:
        res["notes"] = notes[:12]
    if "MEASURE_START" in marks and "MEASURE_END" in marks:
        (t0, c0, r0, b0), (t1, c1, _r1, b1) = marks["MEASURE_START"], marks["MEASURE_END"]
        res["server_cpu_s"] = round(c1 - c0, 3)
        # busy time of the whole machine not spent in the server or the loadgen
        # (softirq work of the two shows up here too, so small values are normal)
        res["other_cpu_s"] = round(max(0.0, (b1 - b0) - (c1 - c0) - res.get("loadgen_cpu_s", 0)), 3)
        res["window_s"] = round(t1 - t0, 4)
        if case.mode == "idle":
            res["rss_base_kib"] = rss_base
            res["rss_hold_kib"] = r0
            res["kib_per_conn"] = round((r0 - rss_base) / case.conns, 3)
    if alive:
        res["peak_rss_kib"] = proc_status_kib(pid, "VmHWM")
    msgs = res.get("messages", 0)
    cpu = res.get("server_cpu_s")
    res["msgs_per_cpu_s"] = round(msgs / cpu, 1) if cpu else None
    if "errors" not in res:
        res["errors"] = 1
    elif rc != 0 and not res["errors"]:
        res["errors"] = 1
    return res


def run_client_one(py, echo_server, client, case, warmup, duration):
    """One client benchmark run against a started echo server; returns a result dict.

    The client (pinned where the load generator goes) measures its own CPU time in
    the window; the echo server's is sampled at its MEASURE_START / MEASURE_END.
    """
    cmd = [py, "-u", CLIENT_SCRIPT, "--client", client, "--port", str(echo_server.port), "--conns", str(case.conns),
           "--size", str(case.size), "--warmup", str(warmup), "--duration", str(duration)]
    res, marks, notes, rc = drive_loadgen(cmd, [echo_server.proc.pid], warmup + duration + 120)
    res["client_rc"] = rc
    if notes:
        res["notes"] = notes[:12]
    if "MEASURE_START" in marks and "MEASURE_END" in marks:
        (_, c0, _, b0), (_, c1, _, b1) = marks["MEASURE_START"], marks["MEASURE_END"]
        res["server_cpu_s"] = round(c1 - c0, 3)
        res["other_cpu_s"] = round(max(0.0, (b1 - b0) - (c1 - c0) - res.get("client_cpu_s", 0)), 3)
    if "errors" not in res or (rc != 0 and not res["errors"]):
        res["errors"] = max(1, res.get("errors", 0))
    return res


def summarize_client(client, case, reps):
    ok = [r for r in reps if r.get("messages") is not None]
    first = ok[0] if ok else {}
    s = {"client": client, "library": first.get("library", client), "version": first.get("version"),
         "api": first.get("api"), "loop": first.get("loop"), "extension": first.get("extension"),
         "case": case.name, "conns": case.conns, "size": case.size, "reps": len(reps)}
    for key in ("msgs_per_s", "msgs_per_client_cpu_s"):
        vals = [r[key] for r in ok if r.get(key)]
        s[key], s[key + "_min"], s[key + "_max"] = med(vals), min(vals, default=None), max(vals, default=None)
    for key in ("mb_per_s", "client_cpu_s", "server_cpu_s", "other_cpu_s", "duration_s"):
        s[key] = med([r.get(key) for r in ok])
    w = s["duration_s"] or 0
    for key in ("client_cpu_s", "server_cpu_s", "other_cpu_s"):
        s[key[:-2] + "_frac"] = round(s[key] / w, 3) if w and s[key] is not None else None
    s["errors"] = sum(r.get("errors", 0) for r in reps)
    return s


def add_client_ratios(rows):
    ref = {r["case"]: r for r in rows if r["client"] == "picows"}
    for r in rows:
        p = ref.get(r["case"])
        for key in ("msgs_per_s", "msgs_per_client_cpu_s"):
            if p and p.get(key) and r.get(key) is not None:
                r[key + "_vs_picows"] = round(r[key] / p[key], 3)


def client_markdown(rows):
    out = ["", "## Clients", "",
           "Each client library drives the same C echo server (`bench/load/echo_server.c`, on the server's CPU); "
           "every connection keeps one message in flight. **msgs/client-CPU-s** = messages per second of the "
           "client process's CPU time - the headline number. `echo server CPU` should stay well below 100%.",
           "",
           "| case | client | msgs/s (spread) | MB/s | client CPU | msgs/client-CPU-s (spread) | x picows msgs/s | "
           "x picows msgs/client-CPU-s | echo server CPU | other CPU | errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    def pct(v):
        return "%d%%" % round(100 * v) if v is not None else "-"

    def spread(r, key):
        if r["reps"] > 1:
            return "%s (%s..%s)" % (fmt(r[key]), fmt(r[key + "_min"]), fmt(r[key + "_max"]))
        return fmt(r[key])

    for r in rows:
        name = "%s (%s)" % (r["client"], r["api"]) if r.get("api") else r["client"]
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["case"], name, spread(r, "msgs_per_s"), fmt(r["mb_per_s"], 1), pct(r["client_cpu_frac"]),
            spread(r, "msgs_per_client_cpu_s"), fmt(r.get("msgs_per_s_vs_picows"), 2),
            fmt(r.get("msgs_per_client_cpu_s_vs_picows"), 2), pct(r["server_cpu_frac"]), pct(r["other_cpu_frac"]),
            r["errors"]))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ metadata

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit():
    """HEAD, with -dirty when tracked files other than earlier results differ from it."""
    try:
        c = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)bench/results"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        return (c or "none") + ("-dirty" if dirty and c else "")
    except OSError:
        return "none"


class DmaLatency:
    """Hold /dev/cpu_dma_latency at 0 so idle vCPUs do not sleep deeply."""

    def __init__(self):
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
            os.write(self.fd, struct.pack("i", 0))
        except OSError as e:
            log("note: cannot hold /dev/cpu_dma_latency (%s); results may be noisier" % e)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------- summary

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(server, case, reps, info):
    ok = [r for r in reps if r.get("messages") is not None]
    s = {
        "server": server, "library": info.get("library", server), "version": info.get("version"),
        "loop": info.get("loop"), "server_info": info, "case": case.name, "mode": case.mode,
        "conns": case.conns, "size": case.size, "text": case.text, "inflight": case.inflight,
        "tls": case.tls, "reps": len(reps),
        # per repetition, in order (repetition i of every server ran back to back)
        "msgs_per_cpu_s_reps": [r.get("msgs_per_cpu_s") for r in reps],
        "msgs_per_s": med([r.get("msgs_per_s") for r in ok]),
        "msgs_per_s_min": min([r.get("msgs_per_s", 0) for r in ok], default=None),
        "msgs_per_s_max": max([r.get("msgs_per_s", 0) for r in ok], default=None),
        "mb_per_s": med([r.get("mb_per_s") for r in ok]),
        "p50_us": med([r.get("p50_us") for r in ok]),
        "p99_us": med([r.get("p99_us") for r in ok]),
        "server_cpu_s": med([r.get("server_cpu_s") for r in ok]),
        "msgs_per_cpu_s": med([r.get("msgs_per_cpu_s") for r in ok]),
        "msgs_per_cpu_s_min": min([r["msgs_per_cpu_s"] for r in ok if r.get("msgs_per_cpu_s")], default=None),
        "msgs_per_cpu_s_max": max([r["msgs_per_cpu_s"] for r in ok if r.get("msgs_per_cpu_s")], default=None),
        "peak_rss_kib": max([r.get("peak_rss_kib", 0) for r in ok], default=None),
        "loadgen_cpu_s": med([r.get("loadgen_cpu_s") for r in ok]),
        "other_cpu_s": med([r.get("other_cpu_s") for r in ok]),
        "window_s": med([r.get("duration_s") for r in ok]),
        "errors": sum(r.get("errors", 0) for r in reps),
    }
    if case.tls:
        s["tls_version"] = next((r["tls"] for r in ok if r.get("tls")), None)
    if case.mode == "idle":
        s["open"] = min([r.get("open", 0) for r in ok], default=0)
        s["kib_per_conn"] = med([r.get("kib_per_conn") for r in ok])
    w = s["window_s"] or 0
    s["loadgen_cpu_frac"] = round(s["loadgen_cpu_s"] / w, 3) if w and s["loadgen_cpu_s"] is not None else None
    s["other_cpu_frac"] = round(s["other_cpu_s"] / w, 3) if w and s["other_cpu_s"] is not None else None
    s["server_cpu_frac"] = round(s["server_cpu_s"] / w, 3) if w and s["server_cpu_s"] is not None else None
    return s


def add_ratios(rows, baseline=None):
    """``KEY_vs_picows`` on every row; with a baseline, ``KEY_vs_baseline`` on fastws's rows."""
    ref = {r["case"]: r for r in rows if r["server"] == "picows"}
    base = {r["case"]: r for r in rows if r["server"] == baseline}
    for r in rows:
        p, b = ref.get(r["case"]), base.get(r["case"]) if r["server"] == "fastws" else None
        for key in ("msgs_per_s", "msgs_per_cpu_s", "kib_per_conn"):
            if p and p.get(key) and r.get(key) is not None:
                r[key + "_vs_picows"] = round(r[key] / p[key], 3)
            if b and b.get(key) and r.get(key) is not None:
                r[key + "_vs_baseline"] = round(r[key] / b[key], 3)


def rep_ratios(a, b):
    """Ratios a/b of msgs/CPU-s, repetition by repetition (the runs of one
    repetition are back to back, so they saw the same machine)."""
    pairs = zip(a.get("msgs_per_cpu_s_reps") or [], b.get("msgs_per_cpu_s_reps") or [], strict=False)
    return [x / y for x, y in pairs if x and y]


def tls_ratios(rows, variants):
    """For every TLS case and every server in variants: its msgs/CPU-s over
    picows's and websockets's (TLS both), and its CPU per message over TLS
    against its own over plain TCP (= plain msgs/CPU-s / TLS msgs/CPU-s, the
    "TLS cost"), each as a ratio of the medians and the min..max of the
    per-repetition ratios. Returns {(case, server): {key: (ratio, lo, hi)}}."""
    by = {(r["server"], r["case"]): r for r in rows}
    out = {}
    for r in rows:
        if not r.get("tls") or r["mode"] == "idle" or r["server"] not in variants:
            continue
        plain_name = r["case"][:-len("-tls")]
        d = {}
        for key, other, inverse in (("vs_picows", by.get(("picows", r["case"])), False),
                                    ("vs_websockets", by.get(("websockets", r["case"])), False),
                                    ("tls_cost", by.get((r["server"], plain_name)), True)):
            if not other or not other.get("msgs_per_cpu_s") or not r.get("msgs_per_cpu_s"):
                continue
            num, den = (other, r) if inverse else (r, other)
            per = rep_ratios(num, den)
            d[key] = (num["msgs_per_cpu_s"] / den["msgs_per_cpu_s"], min(per, default=None), max(per, default=None))
        out[(r["case"], r["server"])] = d
    return out


def fmt_ratio(t):
    if not t:
        return "-"
    v, lo, hi = t
    if lo is None or lo == hi:
        return "%.2f" % v
    return "%.2f (%.2f..%.2f)" % (v, lo, hi)


def tls_markdown(rows, meta):
    """The wss:// section: msgs/CPU-s per server, then the ratios."""
    tls_rows = [r for r in rows if r.get("tls") and r["mode"] != "idle"]
    if not tls_rows:
        return []
    cases = []
    for r in tls_rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    servers = [s for s in ALL_SERVERS + meta.get("extra_servers", []) if any(r["server"] == s for r in tls_rows)]
    by = {(r["server"], r["case"]): r for r in rows}
    version = next((r["tls_version"] for r in tls_rows if r.get("tls_version")), "TLS")
    out = ["", "## wss:// (%s, self-signed EC P-256 certificate, the same for every server)" % version, "",
           "Messages per second of server CPU time, median (min..max) over the repetitions; the TLS work "
           "of the client side is in the load generator, not in these numbers.", "",
           "| case | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    for c in cases:
        cells = []
        for s in servers:
            r = by.get((s, c))
            if not r or r.get("msgs_per_cpu_s") is None:
                cells.append("-")
            elif r["reps"] > 1:
                cells.append("%s (%s..%s)" % (fmt(r["msgs_per_cpu_s"]), fmt(r["msgs_per_cpu_s_min"]),
                                              fmt(r["msgs_per_cpu_s_max"])))
            else:
                cells.append(fmt(r["msgs_per_cpu_s"]))
        out.append("| %s | %s |" % (c, " | ".join(cells)))
    variants = [s for s in servers if s.startswith("fastws") or s == "picows"]
    ratios = tls_ratios(rows, variants)
    out += ["", "Side by side: msgs/CPU-s over picows's and websockets's (both over TLS, higher is better), and "
            "**TLS cost** = CPU per message over wss:// / CPU per message over ws:// for the same server and "
            "case shape in this run (lower is better). Ratio of the medians, (min..max) of the "
            "per-repetition ratios.", "",
            "| case | server | ÷ picows | ÷ websockets | TLS cost |", "|---|---|---:|---:|---:|"]
    for c in cases:
        for s in variants:
            d = ratios.get((c, s))
            if d is None:
                continue
            out.append("| %s | %s | %s | %s | %s |" % (c, s, fmt_ratio(d.get("vs_picows")) if s != "picows" else "1",
                                                       fmt_ratio(d.get("vs_websockets")), fmt_ratio(d.get("tls_cost"))))
    return out


def fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float) and nd == 0:
        return f"{v:,.0f}"
    return ("{:,.%df}" % nd).format(v)


def markdown(rows, meta, skipped, baseline=None):
    kind = "quick" if meta["quick"] else "TLS" if meta.get("tls_only") else "full"
    out = ["# fastws load benchmark: %s run" % kind, ""]
    out.append("- date: %s, commit `%s`, Python %s, CPU: %s (%d vCPUs)" % (
        meta["date"], meta["commit"], meta["python"], meta["cpu"], meta["ncpu"]))
    out.append("- %d repetition(s), warm-up %ss, measured %ss; server on CPU %d, loadgen on CPU %d; "
               "medians over repetitions (msgs/s spread = min..max)" % (
                   meta["reps"], meta["warmup"], meta["duration"], SERVER_CPU, LOADGEN_CPU))
    libs = {}
    for r in rows:
        libs.setdefault(r["server"], r)
    out.append("- servers: " + ("; ".join(
        "%s %s (%s%s)" % (n, r.get("version"), r.get("loop"), "".join(
            ", %s=%s" % (k, v) for k, v in r["server_info"].items()
            if k in ("aiofastnet", "aiofastnet_direct_tls", "extension", "speedups"))) for n, r in libs.items()) or "none"))
    for name, why in skipped.items():
        out.append("- skipped %s: %s" % (name, why))
    if not rows:  # only client cases were run
        return "\n".join(out) + "\n"
    out.append("")
    out.append("**msgs/CPU-s** = messages per second of server CPU time (utime+stime) - the headline number. "
               "`x picows` columns are ratios to picows in the same run. `lg CPU` is the load generator's CPU "
               "share of the window (it must stay well below 100%). `other CPU` is the rest of the machine's busy time "
               "in the window (kernel softirq work of the two plus any unrelated job; large values mean a "
               "disturbed measurement).")
    out.append("")
    out.append("| case | server | msgs/s (spread) | MB/s | p50 us | p99 us | server CPU | msgs/CPU-s | "
               "x picows msgs/s | x picows msgs/CPU-s | peak RSS MiB | lg CPU | other CPU | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["mode"] == "idle":
            continue
        spread = "%s (%s..%s)" % (fmt(r["msgs_per_s"]), fmt(r["msgs_per_s_min"]), fmt(r["msgs_per_s_max"])) \
            if r["reps"] > 1 else fmt(r["msgs_per_s"])
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["case"], r["server"], spread, fmt(r["mb_per_s"], 1), fmt(r["p50_us"], 0), fmt(r["p99_us"], 0),
            "%d%%" % round(100 * r["server_cpu_frac"]) if r.get("server_cpu_frac") is not None else "-",
            fmt(r["msgs_per_cpu_s"]), fmt(r.get("msgs_per_s_vs_picows"), 2),
            fmt(r.get("msgs_per_cpu_s_vs_picows"), 2),
            fmt((r["peak_rss_kib"] or 0) / 1024, 1),
            "%d%%" % round(100 * r["loadgen_cpu_frac"]) if r.get("loadgen_cpu_frac") is not None else "-",
            "%d%%" % round(100 * r["other_cpu_frac"]) if r.get("other_cpu_frac") is not None else "-",
            r["errors"]))
    if baseline:
        out += ["", "fastws against %s (the baseline) in this run, fastws ÷ baseline:" % baseline, "",
                "| case | msgs/s | msgs/CPU-s |", "|---|---|---|"]
        for r in rows:
            if r["server"] == "fastws" and r.get("msgs_per_cpu_s_vs_baseline") is not None:
                out.append("| %s | %s | %s |" % (r["case"], fmt(r.get("msgs_per_s_vs_baseline"), 2),
                                                 fmt(r["msgs_per_cpu_s_vs_baseline"], 2)))
    idle = [r for r in rows if r["mode"] == "idle"]
    if idle:
        out += ["", "Idle connections (server memory per connection = RSS delta / N):", "",
                "| case | server | open | KiB/conn | x picows | peak RSS MiB | errors |", "|---|---|---|---|---|---|---|"]
        for r in idle:
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                r["case"], r["server"], r.get("open"), fmt(r.get("kib_per_conn"), 2),
                fmt(r.get("kib_per_conn_vs_picows"), 2), fmt((r["peak_rss_kib"] or 0) / 1024, 1), r["errors"]))
    out += tls_markdown(rows, meta)
    return "\n".join(out) + "\n"


def run_client_case(py, echo_server, logdir, clients, case, reps, warmup, duration, results):
    """Every client against a fresh echo server, ``reps`` times, alternating the order."""
    for rep in range(reps):
        for name in (clients if rep % 2 == 0 else clients[::-1]):
            srv = Server("echo_server", [echo_server], {}, logdir)
            try:
                if not srv.wait_ready():
                    raise RuntimeError("the C echo server did not start: %s" % srv.stderr_tail(3))
                res = run_client_one(py, srv, name, case, warmup, duration)
            finally:
                srv.stop()
            results.setdefault((name, case.name), []).append(res)
            log("  %-26s %-12s rep %d: %10s msgs/s  %10s msgs/client-CPU-s  client CPU %5ss  echo server CPU %5ss  "
                "other %5ss  err %s%s" % (
                    case.name, name, rep + 1, fmt(res.get("msgs_per_s")), fmt(res.get("msgs_per_client_cpu_s")),
                    res.get("client_cpu_s"), res.get("server_cpu_s"), res.get("other_cpu_s"), res.get("errors"),
                    ("  notes: " + " | ".join(res["notes"][:3])) if res.get("notes") else ""))


# ---------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset with short durations")
    ap.add_argument("--tls", action="store_true",
                    help="the wss:// cases only, each after its ws:// twin (the twin on %s only)" % ", ".join(TWIN_SERVERS))
    ap.add_argument("--servers", help="comma separated subset of: " + ",".join(ALL_SERVERS))
    ap.add_argument("--clients", help="for the client-* cases, comma separated subset of: " + ",".join(ALL_CLIENTS))
    ap.add_argument("--cases", help="comma separated case names or substrings (see --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--reps", type=int, help="repetitions (default 3 full, 1 quick)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--python", help="use this interpreter for the Python servers instead of the bench venv")
    ap.add_argument("--upgrade", action="store_true", help="re-install the peers (latest versions)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    ap.add_argument("--save-as", metavar="NAME",
                    help="write bench/results/NAME.md and NAME.json instead of latest.* (and no runs.jsonl line): "
                         "a side benchmark kept beside the main one, e.g. --save-as uvicorn")
    ap.add_argument("--realtime", action="store_true",
                    help="run the server and the loadgen as SCHED_FIFO (root): steadier numbers on a busy "
                         "machine, at the expense of everything else running there")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run fastws (compiled) as built from git revision REV, as server fastws@SHA, "
                         "and report fastws's ratio to it per case")
    ap.add_argument("--setup-only", action="store_true", help="prepare the venv, ws and the loadgen, then exit")
    args = ap.parse_args()

    cases = quick_cases() if args.quick else tls_run_cases() if args.tls else full_cases()
    if args.cases:
        # --tls: a name picks the TLS case and its twin
        pool = {c.name: c for c in (cases if args.tls else full_cases() + quick_cases())}
        base = (lambda n: n.removesuffix("-tls")) if args.tls else (lambda n: n)
        picked = []
        for want in args.cases.split(","):
            hits = ([c for n, c in pool.items() if base(n) == base(want)]
                    or [c for n, c in pool.items() if want in n])
            if not hits:
                sys.exit("unknown case %r; try --list" % want)
            picked += [c for c in hits if c not in picked]
        cases = picked
    if args.list:
        tls_names = [c.name for c in tls_run_cases()]
        for c in full_cases():
            print(c.name + ("   (quick)" if c in quick_cases() else "") + ("   (--tls)" if c.name in tls_names else ""))
        return 0
    reps = args.reps or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 1.5)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 4.0)
    servers = args.servers.split(",") if args.servers else list(DEFAULT_SERVERS)
    for s in servers:
        if s not in ALL_SERVERS:
            sys.exit("unknown server %r (known: %s)" % (s, ", ".join(ALL_SERVERS)))
    clients = args.clients.split(",") if args.clients else list(ALL_CLIENTS)
    for c in clients:
        if c not in ALL_CLIENTS:
            sys.exit("unknown client %r (known: %s)" % (c, ", ".join(ALL_CLIENTS)))
    if (os.cpu_count() or 1) < 2:
        log("note: fewer than 2 CPUs; server and loadgen share CPU 0")
        globals()["SERVER_CPU"] = 0

    globals()["REALTIME"] = args.realtime
    t_setup = time.monotonic()
    os.makedirs(HOME, exist_ok=True)
    loadgen, loadgen_tls = build_loadgen()
    echo_server = build_c("echo_server") if any(c.mode == "client" for c in cases) else None
    py = args.python or setup_venv(args)
    node_modules = setup_node(args) if "ws" in servers else None
    log("setup done in %.1fs (home %s)" % (time.monotonic() - t_setup, HOME))
    if args.setup_only:
        return 0
    commands = server_commands(py, node_modules)
    baseline = None
    if args.baseline:
        short, site = install_baseline(py, args.baseline)
        baseline = "fastws@" + short
        commands[baseline] = ([py, "-u", os.path.join(SERVERS_DIR, "fastws_server.py")],
                              {"FASTWS_EXTENSION": "1", "PYTHONPATH": site})
        servers.append(baseline)
    skipped = {}
    certdir = tempfile.TemporaryDirectory(prefix="fastws-bench-cert-")
    cert = make_certificate(certdir.name) if loadgen_tls and any(c.tls for c in cases) else None
    if any(c.tls for c in cases) and not cert:
        why = "the load generator has no TLS (libssl-dev?)" if not loadgen_tls else "no openssl command"
        log("note: TLS cases skipped: " + why)
        skipped["TLS cases"] = why
        cases = [c for c in cases if not c.tls]
    if "ws" in servers and "ws" not in commands:
        skipped["ws"] = "node/npm or the ws package unavailable"
    servers = [s for s in servers if s in commands]

    logdir = os.path.join(HOME, "logs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(logdir, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": git_commit(), "python": platform.python_version(),
            "cpu": cpu_model(), "ncpu": os.cpu_count(), "quick": args.quick, "reps": reps,
            "warmup": warmup, "duration": duration, "realtime": args.realtime, "run_id": time.strftime("%Y%m%d-%H%M%S"),
            "tls_only": args.tls, "extra_servers": [baseline] if baseline else []}
    n_client_cases = sum(c.mode == "client" for c in cases)
    log("run %s: %d case(s) x %d server(s) + %d client case(s) x %d client(s), x %d rep(s); commit %s; logs in %s" % (
        meta["run_id"], len(cases) - n_client_cases, len(servers), n_client_cases, len(clients), reps, meta["commit"],
        logdir))

    results = {}   # (server, case name) -> list of rep results
    client_results = {}  # (client, case name) -> list of rep results
    infos = {}
    t0 = time.monotonic()
    with DmaLatency():
        for case in cases:
            if case.mode == "client":
                run_client_case(py, echo_server, logdir, clients, case, reps, warmup, duration, client_results)
                continue
            for rep in range(reps):
                order = servers if rep % 2 == 0 else servers[::-1]
                for name in order:
                    # a TLS twin runs on the baseline too, as on fastws
                    if name in skipped or (case.only and name not in case.only and name != baseline):
                        continue
                    argv, env = commands[name]
                    if case.tls:
                        argv = argv + ["--certfile", cert[0], "--keyfile", cert[1]]
                    srv = Server(name, argv, env, logdir)
                    try:
                        if not srv.wait_ready():
                            srv.stop()
                            skipped[name] = "did not start (%s)" % (srv.stderr_tail(3).replace("\n", " | ")[-300:]
                                                                    or "no output")
                            log("  SKIP %s: %s" % (name, skipped[name]))
                            continue
                        compiled = name == "uvicorn-fastws" or (name.startswith("fastws") and name != "fastws-py")
                        if compiled and srv.info.get("extension") is False:
                            srv.stop()
                            skipped[name] = "the compiled extension is not in use (fastws.USING_EXTENSION is False)"
                            log("  SKIP %s: %s" % (name, skipped[name]))
                            continue
                        infos[name] = srv.info
                        res = run_one(loadgen, srv, case, warmup, duration, cert[0] if cert else None)
                    finally:
                        srv.stop()
                    results.setdefault((name, case.name), []).append(res)
                    extra = ""
                    if case.mode == "idle":
                        extra = " open=%s KiB/conn=%s" % (res.get("open"), res.get("kib_per_conn"))
                    log("  %-26s %-10s rep %d: %10s msgs/s  %10s msgs/CPU-s  srv CPU %5ss  lg CPU %5ss  other %5ss  err %s%s%s" % (
                        case.name, name, rep + 1, fmt(res.get("msgs_per_s")), fmt(res.get("msgs_per_cpu_s")),
                        res.get("server_cpu_s"), res.get("loadgen_cpu_s"), res.get("other_cpu_s"), res.get("errors"), extra,
                        ("  notes: " + " | ".join(res["notes"][:3])) if res.get("notes") else ""))
    log("measured in %.1fs" % (time.monotonic() - t0))
    certdir.cleanup()

    rows = []
    for case in cases:
        for name in servers:
            if (name, case.name) in results:
                rows.append(summarize(name, case, results[(name, case.name)], infos.get(name, {})))
    add_ratios(rows, baseline)
    md = markdown(rows, meta, skipped, baseline)
    client_rows = [summarize_client(name, case, client_results[(name, case.name)])
                   for case in cases for name in clients if (name, case.name) in client_results]
    add_client_ratios(client_rows)
    if client_rows:
        md += client_markdown(client_rows)
    print()
    print(md)

    bottleneck = [r for r in rows if r.get("loadgen_cpu_frac") and r["loadgen_cpu_frac"] > 0.9]
    for r in bottleneck:
        log("WARNING: loadgen used %d%% CPU in %s/%s: it may be the bottleneck" % (
            100 * r["loadgen_cpu_frac"], r["case"], r["server"]))

    if args.save_as and not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, args.save_as + ".md"), "w") as f:
            f.write(md)
        with open(os.path.join(RESULTS, args.save_as + ".json"), "w") as f:
            json.dump({"meta": meta, "rows": rows, "skipped": skipped}, f, indent=1, sort_keys=True)
        log("results in %s" % os.path.join(RESULTS, args.save_as + ".md"))
    elif not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        common = {k: meta[k] for k in ("run_id", "date", "commit", "python", "cpu", "ncpu", "quick", "reps",
                                        "warmup", "duration")}
        with open(os.path.join(RESULTS, "runs.jsonl"), "a") as f:
            for r in rows:
                f.write(json.dumps(dict(common, **r), sort_keys=True) + "\n")
            for r in client_rows:
                f.write(json.dumps(dict(common, kind="client", **r), sort_keys=True) + "\n")
        if not args.quick and not args.cases and not args.servers and not baseline and not args.tls:
            with open(os.path.join(RESULTS, "history.jsonl"), "a") as f:
                for r in rows:
                    if r["server"] in ("fastws", "fastws-py", "picows"):
                        f.write(json.dumps(dict(common, **r), sort_keys=True) + "\n")
        if rows:  # a run of client cases alone leaves the server results as they were
            prefix = "tls-" if args.tls else ""  # a --tls run has its own latest files
            with open(os.path.join(RESULTS, prefix + "latest.md"), "w") as f:
                f.write(md)
            with open(os.path.join(RESULTS, prefix + "latest.json"), "w") as f:
                json.dump({"meta": meta, "rows": rows, "client_rows": client_rows, "skipped": skipped}, f, indent=1,
                          sort_keys=True)
            if not args.tls:
                r = subprocess.run([py, os.path.join(BENCH, "plot.py"), RESULTS], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                log(r.stdout.strip() or "charts written")
        if client_rows:
            with open(os.path.join(RESULTS, "clients-latest.md"), "w") as f:
                f.write(markdown([], meta, {}) + client_markdown(client_rows))
            with open(os.path.join(RESULTS, "clients-latest.json"), "w") as f:
                json.dump({"meta": meta, "client_rows": client_rows}, f, indent=1, sort_keys=True)
        log("results in %s" % RESULTS)
    errors = sum(r["errors"] for r in rows + client_rows)
    if errors:
        log("%d error(s) reported by the load generator (see notes above)" % errors)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
