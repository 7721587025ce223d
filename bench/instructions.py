#!/usr/bin/env python3
"""Instructions per message in the fastws server, this checkout against a baseline build.

    python3 bench/instructions.py --baseline 75e7ed1                 # every rr/stream case
    python3 bench/instructions.py --baseline main~2 --cases rr-1c-256B

Wall-clock benchmarks (bench/run.py) swing by 2x on a shared machine; the number
of instructions the server executes per echoed message does not. Each server runs
under ``valgrind --tool=callgrind`` (user-space instructions only: the kernel's
work is not counted), the load generator warms it up, the counters are zeroed,
one measured load generator run follows, and the counters are dumped: Ir / the
messages that run echoed. Run ``strace -c`` alongside when a change may alter the
system calls per message, which this does not see.

Uses bench/run.py's venv, load generator, cases and ``--baseline`` builds.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: venv, loadgen, cases, baseline builds)

SERVER = os.path.join(harness.SERVERS_DIR, "fastws_server.py")


def instructions_per_message(py, loadgen, case, site, duration):
    """Ir per message of one fastws server (``site``: a baseline build on PYTHONPATH, or None)."""
    env = dict(os.environ, FASTWS_EXTENSION="1")
    if site:
        env["PYTHONPATH"] = site
    with tempfile.TemporaryDirectory(prefix="fastws-callgrind.") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        server = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, py, "-u", SERVER],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        try:
            port = None
            for line in server.stdout:
                if line.startswith("PORT "):
                    port = int(line.split()[1])
                    break
            if port is None:
                raise RuntimeError("the server did not start under valgrind")
            cmd = [loadgen, "--port", str(port), "--path", case.path, "--mode", case.mode, "--conns", str(case.conns),
                   "--size", str(case.size), "--inflight", str(case.inflight), "--warmup", "0"]
            if case.text:
                cmd.append("--text")
            subprocess.run(cmd + ["--duration", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            subprocess.run(["callgrind_control", "--zero", str(server.pid)], stdout=subprocess.DEVNULL, check=True)
            measured = subprocess.run(cmd + ["--duration", str(duration)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, check=True)
            subprocess.run(["callgrind_control", "--dump", str(server.pid)], stdout=subprocess.DEVNULL, check=True)
        finally:
            server.terminate()
            server.wait()
        messages = json.loads(measured.stdout.strip().splitlines()[-1])["messages"]
        dump = min(f for f in glob.glob(out + ".*") if f.rsplit(".", 1)[1].isdigit())
        with open(dump) as f:
            ir = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
    return ir / messages


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="REV", help="git revision to compare with")
    ap.add_argument("--cases", help="comma separated case names (bench/run.py --list); default: every rr and stream case")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (under valgrind)")
    ap.add_argument("--upgrade", action="store_true", help=argparse.SUPPRESS)  # setup_venv reads it
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("needs valgrind (apt-get install valgrind)")
    cases = [c for c in harness.full_cases() if c.mode in ("rr", "stream")]
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if c.name in wanted]
        if len(cases) != len(wanted):
            sys.exit("unknown case among %s; see bench/run.py --list (rr and stream cases only)" % args.cases)
    os.makedirs(harness.HOME, exist_ok=True)
    loadgen, _ = harness.build_loadgen()  # (path, has TLS): these cases are ws://
    py = harness.setup_venv(args)
    short, site = harness.install_baseline(py, args.baseline)
    print("| case | fastws@%s Ir/msg | fastws (%s) Ir/msg | ratio |" % (short, harness.git_commit()))
    print("|---|---:|---:|---:|")
    for case in cases:
        before = instructions_per_message(py, loadgen, case, site, args.duration)
        after = instructions_per_message(py, loadgen, case, None, args.duration)
        print("| %s | %s | %s | %.3f |" % (case.name, harness.fmt(before), harness.fmt(after), after / before), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
