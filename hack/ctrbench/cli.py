"""Entry point: arguments, machine metadata, the run, and results.md / results.json."""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import time

from . import common
from .common import CLK_TCK, NCPU, BenchError, load_config, log, sha256_file, write_json
from .measure import kill_live
from .report import Report
from .scenarios import Bench


def machine_meta(args, cfg):
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    osname = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    git = "?"
    try:
        root = os.path.dirname(os.path.abspath(args.hack))
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        git = head + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    shim = os.path.join(args.shim_dir, "containerd-shim-runc-v2")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    ctd = first_line(["containerd", "--version"]).split()
    runc_v = first_line(["runc", "--version"]).split()
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{NCPU} cores ({cpu}), {mem_gib:.0f} GiB, {osname}, kernel {platform.release()}, "
                   f"containerd {ctd[-1] if ctd else '?'} (Go shim from the same package), "
                   f"runc {runc_v[-1] if runc_v else '?'}",
        "ncpu": NCPU, "clk_tck": CLK_TCK, "loadavg_before": load,
        "shim": args.shim_origin or shim, "shim_sha256": sha256_file(shim), "git": git,
        "command": args.command,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hack", required=True)
    ap.add_argument("--shim-dir", required=True)
    ap.add_argument("--shim-origin", default="")
    ap.add_argument("--image", required=True)
    ap.add_argument("--cgroup", required=True)
    ap.add_argument("--command", default="make bench")
    args = ap.parse_args()
    cfg = load_config()
    os.makedirs(args.out, exist_ok=True)
    common.LOGF = open(os.path.join(args.out, "bench.log"), "a")

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                    if k.startswith("BENCH_") and k not in ("BENCH_OUT", "BENCH_COMMAND") and v != "")
    args.command = f"{envs} {args.command}".strip()
    meta = machine_meta(args, cfg)
    meta["notes"] = []
    log(f"config {json.dumps(cfg)}; results in {args.out}")
    bench = Bench(args, cfg)
    t0 = time.monotonic()
    rc = 0
    try:
        bench.main()
    except BenchError as e:
        log(f"error: {e}")
        meta["notes"].append(f"the run ended early: {e}")
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        meta["notes"].append("the run was interrupted")
        rc = 130
    except SystemExit as e:
        log(f"terminated ({e.code})")
        meta["notes"].append("the run was terminated")
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        kill_live()
        for c in bench.contestants:
            try:
                c.down()
            except (BenchError, OSError) as e:
                log(f"{c.name}: cleanup: {e}")
                rc = rc or 1
    meta["duration_s"] = time.monotonic() - t0
    with open("/proc/loadavg") as f:
        meta["loadavg_after"] = " ".join(f.read().split()[:3])
    meta["notes"] += bench.errors
    for c in bench.contestants:
        if c.restarts:
            meta["notes"].append(f"{c.label}: its containerd/state was torn down and restarted {c.restarts} "
                                 f"time(s) after a stall or a failed cleanup")
    names = [c.name for c in bench.contestants]
    rep = Report(bench.results, cfg, meta, names)
    md = rep.markdown()
    write_json(os.path.join(args.out, "results.json"), {"config": cfg, "meta": meta, "results": bench.results})
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    log(f"done in {meta['duration_s'] / 60:.1f} min; results: {args.out}/results.md, results.json, runs/")
    return rc
