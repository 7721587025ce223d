"""Runs every atheris harness for a bounded time, then reports line coverage.

Run: python tests/fuzz/run.py [--no-coverage] [harness ...]

* ``FUZZ_SECONDS`` (default 90): total fuzzing time, shared between the harnesses
  (frames gets half, the others a quarter each).
* ``FUZZ_WORKDIR``: where new corpus entries, crash artefacts and logs go
  (default: a fresh temporary directory; never the repository).
* ``--cython-coverage``: also the line coverage of ``src_c/*.pyx`` (the compiled module's parts), from a
  copy of the sources built with Cython line tracing in the work directory.

The seed corpus (``corpus/<harness>``) and the regressions (``regressions/<harness>``)
are read, never written. Exit status 1 when a harness crashed (a check failed, or
a timeout or out-of-memory); the crashing input's path is printed, with the
commands that reproduce it and turn it into a regression case.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checks import MAX_LEN  # noqa: E402

SHARE = {"frames": 0.5, "handshake": 0.25, "deflate": 0.25}
COVERED = ["fastws/_pure.py", "fastws/_rules.py", "fastws/frames.py", "fastws/handshake.py", "fastws/extensions/permessage_deflate.py"]


def fuzz(harness: str, seconds: int, work: str) -> tuple[int, list[str], str]:
    new = os.path.join(work, harness, "corpus")
    artifacts = os.path.join(work, harness, "artifacts") + os.sep
    os.makedirs(new, exist_ok=True)
    os.makedirs(artifacts, exist_ok=True)
    log = os.path.join(work, harness, "fuzz.log")
    seeds = [os.path.join(HERE, d, harness) for d in ("corpus", "regressions")]
    cmd = [
        sys.executable, os.path.join(HERE, f"fuzz_{harness}.py"),
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN[harness]}",
        "-timeout=10",  # seconds per input
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}",
        "-print_final_stats=1",
        new, *[d for d in seeds if os.path.isdir(d)],
    ]
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work).returncode
    return rc, sorted(glob.glob(artifacts + "*")), log


def stats(log: str) -> str:
    """The last libFuzzer status line and the run count."""
    lines = open(log, encoding="utf-8", errors="replace").read().splitlines()
    status = [ln for ln in lines if ln.startswith("#") and ("pulse" in ln or "DONE" in ln or "NEW" in ln or "REDUCE" in ln)]
    runs = [ln for ln in lines if ln.startswith("stat::number_of_executed_units")]
    return (status[-1] if status else "(no status line)") + (f" [{runs[-1].split()[-1]} runs]" if runs else "")


def coverage(harnesses: list[str], work: str) -> int:
    data = os.path.join(work, ".coverage")
    for i, harness in enumerate(harnesses):
        dirs = [os.path.join(HERE, "corpus", harness), os.path.join(HERE, "regressions", harness), os.path.join(work, harness, "corpus")]
        cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", "--source=fastws"]
        if i:
            cmd.append("--append")
        cmd += [os.path.join(HERE, "replay.py"), harness, *[d for d in dirs if os.path.isdir(d)]]
        rc = subprocess.run(cmd, cwd=work).returncode
        if rc:
            print(f"coverage replay of {harness} failed (exit {rc})", file=sys.stderr)
            return rc
    include = ",".join("*/" + path for path in COVERED)
    print("\n=== line coverage of the pure-Python modules, replaying seeds + regressions + new corpus")
    return subprocess.run(
        [sys.executable, "-m", "coverage", "report", f"--data-file={data}", f"--include={include}", "--show-missing"], cwd=work
    ).returncode


CYTHON_SETUP = """
from setuptools import Extension, setup
from Cython.Build import cythonize

setup(
    name="fastws-linetrace",
    script_args=["build_ext", "--inplace"],
    ext_modules=cythonize(
        [Extension("fastws._speedups", ["src_c/_speedups.pyx", "src_c/fastws_kernels.c", "src_c/fastws_tls.c"], include_dirs=["src_c"],
                   define_macros=[("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False, "linetrace": True},
        force=True,  # a C file copied from the checkout was generated without line tracing
    ) + cythonize(
        [Extension("fastws._rules_c", ["fastws/_rules.py"], define_macros=[("CYTHON_TRACE", "1")])],
        compiler_directives={"language_level": "3", "annotation_typing": False, "binding": True, "linetrace": True},
        force=True,
    ),
)
"""


def cython_coverage(work: str) -> int:
    """Line coverage of src_c/*.pyx from replaying the frames inputs through a
    line-tracing build of the checkout's sources (in ``work``; needs Cython installed)."""
    root = os.path.dirname(os.path.dirname(HERE))
    build = os.path.join(work, "linetrace")
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(os.path.join(root, "fastws"), os.path.join(build, "fastws"))
    shutil.copytree(os.path.join(root, "src_c"), os.path.join(build, "src_c"))
    for stale in glob.glob(os.path.join(build, "fastws", "*.so")):
        os.remove(stale)  # an in-place build from the checkout, without line tracing
    with open(os.path.join(build, "setup_linetrace.py"), "w") as fh:
        fh.write(CYTHON_SETUP)
    with open(os.path.join(build, ".coveragerc"), "w") as fh:
        fh.write("[run]\nplugins = Cython.Coverage\nsource =\n    fastws\n    src_c\nomit =\n    src_c/*.pxd\n    src_c/fastws/*.pxd\n")
    print("\n=== building a line-tracing _speedups (CYTHON_TRACE=1) in", build)
    with open(os.path.join(build, "build.log"), "wb") as log:
        if subprocess.run([sys.executable, "setup_linetrace.py"], cwd=build, stdout=log, stderr=subprocess.STDOUT).returncode:
            print(f"build failed, see {build}/build.log", file=sys.stderr)
            return 1
    dirs = [os.path.join(HERE, "corpus", "frames"), os.path.join(HERE, "regressions", "frames"), os.path.join(work, "frames", "corpus")]
    env = dict(os.environ, PYTHONPATH=build)
    rc = subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--rcfile=.coveragerc", os.path.join(HERE, "replay.py"), "frames",
         *[d for d in dirs if os.path.isdir(d)]],
        cwd=build, env=env,
    ).returncode
    if rc:
        return rc
    print("=== line coverage of the compiled core (not transport.pyx: SocketTransport is not driven by any harness)")
    # Cython's coverage plugin finds a .pyx file's lines through a C file of the same
    # name; core.pyx and transport.pyx are included into _speedups.c, so give each that
    # file under its own name.
    for part in ("core", "transport", "tls"):
        shutil.copyfile(os.path.join(build, "src_c", "_speedups.c"), os.path.join(build, "src_c", part + ".c"))
    report = subprocess.run(
        [sys.executable, "-m", "coverage", "report", "-i", "--rcfile=.coveragerc",
         "--include=src_c/_speedups.pyx,src_c/core.pyx,fastws/_pure.py,fastws/_rules.py"],
        cwd=build,
    )
    if report.returncode:
        # A report, not a check: the fuzzing itself has passed by now.
        print("src_c coverage: the report failed (see above); the fuzz run itself passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harness", nargs="*", choices=[[], *SHARE], help="default: all")
    parser.add_argument("--no-coverage", action="store_true", help="skip the coverage replay and report")
    parser.add_argument(
        "--cython-coverage", action="store_true",
        help="also report src_c/*.pyx line coverage (builds a line-tracing copy; needs Cython, ~20 s more)",
    )
    args = parser.parse_args()
    harnesses = args.harness or list(SHARE)
    total = int(os.environ.get("FUZZ_SECONDS", "90"))
    work = os.environ.get("FUZZ_WORKDIR") or tempfile.mkdtemp(prefix="fastws-fuzz.")
    os.makedirs(work, exist_ok=True)
    weight = sum(SHARE[h] for h in harnesses)
    print(f"fuzzing {', '.join(harnesses)} for {total} s in total; work dir {work}")
    crashed = []
    for harness in harnesses:
        seconds = max(1, round(total * SHARE[harness] / weight))
        start = time.monotonic()
        rc, artifacts, log = fuzz(harness, seconds, work)
        took = time.monotonic() - start
        print(f"{harness}: exit {rc} after {took:.0f} s: {stats(log)}")
        if rc or artifacts:
            crashed.append(harness)
            print(f"--- {harness} FAILED; log {log}; its end:")
            print("".join(open(log, encoding="utf-8", errors="replace").readlines()[-40:]))
            for path in artifacts:
                print(f"crashing input: {path}")
                print(f"  reproduce:  python tests/fuzz/replay.py {harness} {path}")
                print(f"  regression: mkdir -p tests/fuzz/regressions/{harness} && cp {path} tests/fuzz/regressions/{harness}/")
    if not args.no_coverage:
        if coverage(harnesses, work):
            return 1
    if args.cython_coverage and "frames" in harnesses and cython_coverage(work):
        return 1
    if crashed:
        print(f"\nFUZZING FAILED: {', '.join(crashed)} (artefacts and logs in {work})", file=sys.stderr)
        return 1
    print(f"\nno crash; new corpus entries (not in the repository) in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
