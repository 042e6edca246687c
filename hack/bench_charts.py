#!/usr/bin/python3
"""SVG charts of a bench-shim.py run: bench_charts.py SHIM-RESULTS.json OUTDIR

  exec-latency-cdf.svg   per-exec latency CDF of each contestant at the largest N
  density-pss.svg        PSS per shim against the number of containers alive
  shim-cpu.svg           shim CPU per exec and per Stats call, as bars

Uses Debian's python3-matplotlib (run with /usr/bin/python3).
"""

import json
import os
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ours": "#d1495b", "go-2.1": "#00798c", "rust-ext-0.2.0": "#edae49", "go-1.6": "#8d96a3",
          "runc": "#30638e"}


def save(fig, out, name):
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    print(f"chart: {path}")


def main():
    res = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    if res.get("exec"):
        top = max(res["exec"], key=int)
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, row in res["exec"][top].items():
            lat = (row or {}).get("latencies_ms")
            if not lat:
                continue
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(sorted(lat), ys, label=name if name != "runc" else "bare runc exec", color=COLORS.get(name))
        ax.set_xlabel("latency of one Exec+Start+Wait+Delete cycle (ms)")
        ax.set_ylabel("fraction of execs")
        ax.set_title(f"Exec latency CDF, N = {top} in flight against one shim")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, out, "exec-latency-cdf.svg")
    dens = {k: v for k, v in res.get("density", {}).items() if not k.startswith("pod")}
    if dens:
        fig, ax = plt.subplots(figsize=(7, 4))
        ns = sorted(dens, key=int)
        for name in res["contestants"]:
            pts = [(int(n), dens[n][name]["pss_bytes_per_shim"] / (1 << 20)) for n in ns if dens[n].get(name)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=COLORS.get(name))
        ax.set_xlabel("containers alive (one shim each)")
        ax.set_ylabel("PSS per shim (MiB)")
        ax.set_title("Memory per shim")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, out, "density-pss.svg")
    bars = []
    if res.get("exec"):
        top = max(res["exec"], key=int)
        bars.append((f"shim CPU per exec, N = {top} (ms)",
                     {n: r.get("shim_cpu_ms_per_exec") for n, r in res["exec"][top].items() if r and n != "runc"}))
    if res.get("stats"):
        bars.append(("shim CPU per Stats call (µs)", {n: r.get("shim_cpu_us_per_call") for n, r in res["stats"].items()}))
    if bars:
        fig, axes = plt.subplots(1, len(bars), figsize=(5 * len(bars), 4))
        axes = axes if len(bars) > 1 else [axes]
        for ax, (title, vals) in zip(axes, bars):
            vals = {k: v for k, v in vals.items() if v is not None}
            ax.bar(list(vals), list(vals.values()), color=[COLORS.get(k, "#888") for k in vals])
            for i, v in enumerate(vals.values()):
                ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom")
            ax.set_title(title)
            ax.tick_params(axis="x", rotation=20)
        save(fig, out, "shim-cpu.svg")


if __name__ == "__main__":
    main()
