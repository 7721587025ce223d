"""Charts for the load benchmarks (run by bench/run.py with the bench venv's python).

    latest.png   every server per case, as a ratio to picows (msgs/s and msgs per server-CPU-second)
    history.png  fastws over commits (from history.jsonl, appended by each full run)
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["fastws", "fastws-py", "picows", "websockets", "aiohttp", "ws"]


def latest_chart(results):
    with open(os.path.join(results, "latest.json")) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if r["mode"] != "idle"]
    if not rows:
        return
    cases = []
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    servers = [s for s in ORDER if any(r["server"] == s for r in rows)]
    by = {(r["server"], r["case"]): r for r in rows}
    metrics = [("msgs_per_cpu_s_vs_picows", "messages per server-CPU-second, x picows"),
               ("msgs_per_s_vs_picows", "messages per second, x picows")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 1.3 * len(cases) * len(servers) / 3), 8), squeeze=False)
    width = 0.8 / max(1, len(servers))
    for ax, (key, title) in zip(axes[:, 0], metrics, strict=True):
        for i, s in enumerate(servers):
            xs, ys = [], []
            for j, c in enumerate(cases):
                v = by.get((s, c), {}).get(key)
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v)
            ax.bar(xs, ys, width, label=s)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(servers))
    meta = data["meta"]
    fig.suptitle("fastws load benchmark (%s run, commit %s, %s)" % (
        "quick" if meta["quick"] else "full", meta["commit"], meta["date"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "latest.png"), dpi=110)
    plt.close(fig)


def history_chart(results):
    path = os.path.join(results, "history.jsonl")
    if not os.path.exists(path):
        return False
    runs = []   # (run_id, commit)
    data = {}   # (case, server) -> {run_id: row}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if (r["run_id"], r["commit"]) not in runs:
                runs.append((r["run_id"], r["commit"]))
            data.setdefault((r["case"], r["server"]), {})[r["run_id"]] = r
    if not runs:
        return False
    x = list(range(len(runs)))
    labels = [c for _, c in runs]
    fig, axes = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    cases = sorted({c for c, s in data if s == "fastws"})
    for c in cases:
        pts = data[(c, "fastws")]
        xs = [i for i, (rid, _) in enumerate(runs) if rid in pts and pts[rid].get("msgs_per_s")]
        if c.startswith("idle"):
            continue
        axes[0].plot(xs, [pts[runs[i][0]]["msgs_per_s"] for i in xs], marker="o", label=c)
        xs2 = [i for i in xs if pts[runs[i][0]].get("msgs_per_cpu_s_vs_picows")]
        axes[1].plot(xs2, [pts[runs[i][0]]["msgs_per_cpu_s_vs_picows"] for i in xs2], marker="o", label=c)
    axes[0].set_yscale("log")
    axes[0].set_title("fastws (compiled) messages per second", fontsize=10)
    axes[1].set_title("fastws messages per server-CPU-second, x picows (same run)", fontsize=10)
    axes[1].axhline(1.0, color="black", linewidth=0.8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "history.png"), dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    latest_chart(results)
    wrote = history_chart(results)
    print("charts written: latest.png%s" % (", history.png" if wrote else " (no history.jsonl yet)"))
