#!/usr/bin/env python3
"""Instructions per message in the fastws server, this checkout against a baseline build
and/or a peer server.

    python3 bench/instructions.py --baseline 75e7ed1                 # every rr/stream case
    python3 bench/instructions.py --baseline main~2 --cases rr-1c-256B
    python3 bench/instructions.py --baseline main --cases rr-64c-256B-tls --keep /tmp/cg   # wss://
    python3 bench/instructions.py --peers picows --cases rr-1c-256B-tls   # against picows

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
callgrind dump there for ``callgrind_annotate``. ``--peers`` counts the peers'
Python servers the same way (their user-space work only: a peer that makes more
system calls per message than fastws gains here what it loses in the kernel, so
read it beside ``strace -c``).

Uses bench/run.py's venv, servers, load generator, cases and ``--baseline`` builds.
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

PEERS = ("picows", "websockets", "aiohttp")  # the Python peers: callgrind runs them as it runs fastws


def instructions_per_message(command, loadgen, case, site, duration, cert=None, keep=None):
    """Ir per message of one server (``command``: (argv, env) from bench/run.py's
    server_commands; ``site``: a baseline build on PYTHONPATH, or None; ``cert``:
    (certificate, key) for a TLS case; ``keep``: a path to copy the dump to)."""
    argv, extra_env = command
    env = dict(os.environ, **extra_env)
    if site:
        env["PYTHONPATH"] = site
    tls = ["--certfile", cert[0], "--keyfile", cert[1]] if case.tls else []
    with tempfile.TemporaryDirectory(prefix="fastws-callgrind.") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        server = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + argv + tls,
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
    ap.add_argument("--baseline", metavar="REV", help="git revision to compare with")
    ap.add_argument("--peers", help="comma separated peer servers to compare with: " + ",".join(PEERS))
    ap.add_argument("--cases", help="comma separated case names (bench/run.py --list); default: every rr and stream case")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (under valgrind)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR (callgrind_annotate)")
    ap.add_argument("--upgrade", action="store_true", help=argparse.SUPPRESS)  # setup_venv reads it
    args = ap.parse_args()
    peers = args.peers.split(",") if args.peers else []
    if not args.baseline and not peers:
        ap.error("give --baseline REV, --peers NAMES or both")
    if any(p not in PEERS for p in peers):
        ap.error("--peers: choose among " + ",".join(PEERS))
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
    commands = harness.server_commands(py, None)
    # (column name, server command, PYTHONPATH): fastws as built from this checkout last
    others = []
    if args.baseline:
        short, site = harness.install_baseline(py, args.baseline)
        others.append(("fastws@" + short, commands["fastws"], site))
    others += [(p, commands[p], None) for p in peers]
    this = "fastws (%s)" % harness.git_commit()
    print("| case | %s | %s Ir/msg | %s |" % (" | ".join(o[0] + " Ir/msg" for o in others), this,
                                           " | ".join("÷ " + o[0] for o in others)))
    print("|---|" + "---:|" * (2 * len(others) + 1))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    certdir = tempfile.mkdtemp(prefix="fastws-instructions.")
    try:
        cert = harness.make_certificate(certdir) if any(c.tls for c in cases) else None
        if any(c.tls for c in cases) and cert is None:
            sys.exit("the -tls cases need the openssl command")
        def keep(who):
            return os.path.join(args.keep, "%s-%s.callgrind" % (case.name, who)) if args.keep else None

        for case in cases:
            theirs = [instructions_per_message(command, loadgen, case, site, args.duration, cert,
                                               keep("baseline" if site else name))
                      for name, command, site in others]
            ours = instructions_per_message(commands["fastws"], loadgen, case, None, args.duration, cert, keep("this"))
            print("| %s | %s | %s | %s |" % (case.name, " | ".join(harness.fmt(t) for t in theirs), harness.fmt(ours),
                                             " | ".join("%.3f" % (ours / t) for t in theirs)), flush=True)
    finally:
        shutil.rmtree(certdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
