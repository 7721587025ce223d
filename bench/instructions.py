#!/usr/bin/env python3
"""Instructions per message in the fastws server, this checkout against a baseline build.

    python3 bench/instructions.py --baseline 75e7ed1                 # every rr/stream case
    python3 bench/instructions.py --baseline main~2 --cases rr-1c-256B
    python3 bench/instructions.py --baseline main --cases rr-64c-256B-tls --keep /tmp/cg   # wss://

Wall-clock benchmarks (bench/run.py) swing by 2x on a shared machine; the number
of instructions the server executes per echoed message does not. Each server runs
under ``valgrind --tool=callgrind`` (user-space instructions only: the kernel's
work is not counted), the load generator warms it up, then a measured load
generator run opens its connections and warms up again, and the counters are
zeroed at its MEASURE_START and dumped at its MEASURE_END: Ir / the messages
echoed in that window (handshakes are not counted, as in bench/run.py). Run
``strace -c`` alongside when a change may alter the system calls per message,
which this does not see. The ``-tls`` cases run over
``wss://`` with a certificate made for the run (the record encryption of the
client side is in the load generator, not counted). ``--keep DIR`` keeps each
callgrind dump there for ``callgrind_annotate``.

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


def instructions_per_message(py, loadgen, case, site, duration, cert=None, keep=None):
    """Ir per message of one fastws server (``site``: a baseline build on PYTHONPATH, or None;
    ``cert``: (certificate, key) for a TLS case; ``keep``: a path to copy the dump to)."""
    env = dict(os.environ, FASTWS_EXTENSION="1")
    if site:
        env["PYTHONPATH"] = site
    tls = ["--certfile", cert[0], "--keyfile", cert[1]] if case.tls else []
    with tempfile.TemporaryDirectory(prefix="fastws-callgrind.") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        server = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, py, "-u", SERVER]
                                  + tls, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        try:
            port = None
            for line in server.stdout:
                if line.startswith("PORT "):
                    port = int(line.split()[1])
                    break
            if port is None:
                raise RuntimeError("the server did not start under valgrind")
            cmd = [loadgen, "--port", str(port), "--path", case.path, "--mode", case.mode, "--conns", str(case.conns),
                   "--size", str(case.size), "--inflight", str(case.inflight)]
            if case.text:
                cmd.append("--text")
            if case.tls:
                cmd += ["--tls", "--tls-ca", cert[0]]
            subprocess.run(cmd + ["--warmup", "0", "--duration", "2"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            # Counted from the measured run's MEASURE_START to its MEASURE_END: its
            # connections (TCP, TLS and WebSocket handshakes) are open by then.
            control = {"MEASURE_START": "--zero", "MEASURE_END": "--dump"}
            measured = subprocess.Popen(cmd + ["--warmup", "1", "--duration", str(duration)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
            notes = []
            for line in measured.stderr:
                if line.strip() in control:
                    subprocess.run(["callgrind_control", control[line.strip()], str(server.pid)],
                                   stdout=subprocess.DEVNULL, check=True)
                elif not line.startswith("CONNECTED"):
                    notes.append(line)
            output = measured.stdout.read()
            if measured.wait() != 0:
                raise RuntimeError("the load generator failed under callgrind:\n" + "".join(notes[-5:]))
        finally:
            server.terminate()
            server.wait()
        messages = json.loads(output.strip().splitlines()[-1])["messages"]
        dump = min(f for f in glob.glob(out + ".*") if f.rsplit(".", 1)[1].isdigit())
        with open(dump) as f:
            ir = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        if keep:
            shutil.copy(dump, keep)
    return ir / messages


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="REV", help="git revision to compare with")
    ap.add_argument("--cases", help="comma separated case names (bench/run.py --list); default: every rr and stream case")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (under valgrind)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR (callgrind_annotate)")
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
    loadgen, loadgen_tls = harness.build_loadgen()
    if not args.cases and not loadgen_tls:
        cases = [c for c in cases if not c.tls]
    if any(c.tls for c in cases) and not loadgen_tls:
        sys.exit("the -tls cases need the load generator built with OpenSSL (libssl-dev)")
    py = harness.setup_venv(args)
    short, site = harness.install_baseline(py, args.baseline)
    print("| case | fastws@%s Ir/msg | fastws (%s) Ir/msg | ratio |" % (short, harness.git_commit()))
    print("|---|---:|---:|---:|")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    certdir = tempfile.mkdtemp(prefix="fastws-instructions.")
    try:
        cert = harness.make_certificate(certdir) if any(c.tls for c in cases) else None
        if any(c.tls for c in cases) and cert is None:
            sys.exit("the -tls cases need the openssl command")
        for case in cases:
            keep = [os.path.join(args.keep, "%s-%s.callgrind" % (case.name, who)) if args.keep else None
                    for who in ("baseline", "this")]
            before = instructions_per_message(py, loadgen, case, site, args.duration, cert, keep[0])
            after = instructions_per_message(py, loadgen, case, None, args.duration, cert, keep[1])
            print("| %s | %s | %s | %.3f |" % (case.name, harness.fmt(before), harness.fmt(after), after / before),
                  flush=True)
    finally:
        shutil.rmtree(certdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
