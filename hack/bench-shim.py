#!/usr/bin/env python3
"""Shim-level benchmark: each contestant shim driven directly over ttrpc (no containerd, no ctr).

Usage (normally `make bench`, `make bench-density` or `make soak-long`, under reap-run):
  bench-shim.py --load target/release/shim-load --ours target/release/containerd-shim-runc-v2 \
                --out DIR [--only stats,exec,density,soak]

Contestants (a missing binary is reported and skipped):
  ours           the shim under test
  go-2.1         the Go shim of containerd 2.1 (hack/install-deps.sh unpacks it)
  rust-ext-0.2.0 containerd-runc-shim 0.2.0 from crates.io (hack/install-peers.sh builds it)
  go-1.6         the Go shim of containerd 1.6 (historical row; not a peer in the ratios)
  runc           the floor for exec: bare `runc exec` against a container of our shim

Scenarios, each a `shim-load` run (tests/src/bin/shim-load.rs says what it measures):
  stats    Stats in a loop, shim CPU per call (cgroup v1 on this host)
  exec     N Exec+Start+Wait+Delete cycles in flight, N in BENCH_SHIM_N (1 10 100);
           max(BENCH_SHIM_TOTAL (200), 5 N) cycles per run
  density  N idle containers, one shim each, N in BENCH_DENSITY_N (10 50 100); then a pod
           variant (one shim per pod of a pause + 3 containers); idle over BENCH_IDLE_S (60) s
           (also per RPC: p50/p99 of each reply's wait, where later cycles overtake earlier ones,
           the shim's run-queue wait; SHIM_LOAD_CYCLES=PATH in the environment writes every
           cycle's times for hack/exec-phases.py)
  soak     BENCH_SOAK_EXECS (100000) exec cycles against ours in batches of 10 000; RSS/fds/maps
           after each batch, with nothing in flight
Contestants BENCH_SHIM_CONTESTANTS (all): a comma- or space-separated subset of the names above,
e.g. `BENCH_SHIM_CONTESTANTS=ours` (our shim alone; "runc" picks the exec floor); the others are
listed as not measured. BENCH_SHIM_EXTRA="NAME=PATH ..." adds other builds of our shim as
contestants (e.g. `before=/tmp/shim-main`: a before/after comparison in one run, rotated with
the others; pick them by NAME in BENCH_SHIM_CONTESTANTS). Repetitions BENCH_SHIM_REPS (3), contestants rotated each repetition; medians reported. An exec run
with no result after BENCH_SHIM_STALL_S (180) s is stalled: stopped (SIGTERM) and left out.
Writes DIR/shim-results.json, DIR/shim-results.md (also printed) and DIR/*.svg (matplotlib,
from Debian's python3-matplotlib, if /usr/bin/python3 can import it).
"""

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CACHE = os.environ.get("SHIM_DEPS_DIR", "/var/cache/shim-runc-rs")
PEERS = [
    ("go-2.1", f"{CACHE}/containerd/2/usr/bin/containerd-shim-runc-v2"),
    ("rust-ext-0.2.0", f"{CACHE}/peers/containerd-runc-shim-0.2.0/bin/containerd-shim-runc-v2-rs"),
]
HISTORICAL = [("go-1.6", f"{CACHE}/containerd/1.6/usr/bin/containerd-shim-runc-v2")]
BUDGET_STATS_US = 100
BUDGET_EXEC_MS = 0.5
BUDGET_FAIRNESS = 1.3


def env_list(name, default):
    return [int(x) for x in os.environ.get(name, default).split()]


def log(msg):
    print(f"[bench-shim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Bundles and sockets on tmpfs, where containerd keeps them on a systemd host (/run); on this
# machine /tmp and /run are ext4, which adds inode work to every exec's pid file.
# One private dir per run: a shim that is stopped mid-exec (a stalled Go shim) leaves the
# runc-process* spec files it made in its TMPDIR; they are removed with the dir at exit.
TMPDIR = tempfile.mkdtemp(prefix="shim-bench-",
                          dir="/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/tmp"))


def _remove_tmpdir():
    # Only what a stopped shim leaves (files); anything else (a mount) is reported, not removed.
    for name in os.listdir(TMPDIR):
        path = os.path.join(TMPDIR, name)
        if name.startswith("runc-process") and os.path.isfile(path):
            os.unlink(path)
    try:
        os.rmdir(TMPDIR)
    except OSError as e:
        log(f"{TMPDIR} not removed: {e}: {os.listdir(TMPDIR)}")


atexit.register(_remove_tmpdir)


# An exec run that has not finished after this long is stalled: stopped and reported as missing.
EXEC_STALL_S = int(os.environ.get("BENCH_SHIM_STALL_S", "180"))


def load(args, shim, mode, *opts, timeout=3600):
    env = dict(os.environ, SHIM_BIN=shim, TMPDIR=TMPDIR)
    argv = [args.load, mode, *map(str, opts)]
    log(f"{os.path.basename(os.path.dirname(os.path.dirname(shim)))}/{os.path.basename(shim)}: {' '.join(argv[1:])}")
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # A stalled shim (the Go shim of 1.6 at N = 100, containerd#8557): SIGTERM, on which
        # shim-load removes its containers and shims, then SIGKILL if it does not finish.
        log(f"  stalled: no result after {timeout} s; stopping it")
        p.terminate()
        try:
            p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        return None
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        # A panic's message, not the end of its backtrace.
        lines = err.strip().splitlines()
        at = next((i for i, l in enumerate(lines) if "panicked at" in l), None)
        tail = lines[at:at + 3] if at is not None else lines[-3:]
        log(f"  failed (exit {p.returncode}): {' | '.join(tail)}")
        return None
    return json.loads(lines[-1])


def med(runs, key):
    xs = [r[key] for r in runs if r and key in r]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{nd}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="stats,exec,density")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(","))
    reps = int(os.environ.get("BENCH_SHIM_REPS", "3"))
    contestants = [("ours", os.path.realpath(args.ours))]
    missing = []
    for name, path in PEERS + HISTORICAL:
        (contestants if os.access(path, os.X_OK) else missing).append((name, path))
    # Other builds of our shim, measured beside it (e.g. main's binary before a change, so a
    # before/after comparison runs back to back, not an hour apart on a noisy machine).
    for item in os.environ.get("BENCH_SHIM_EXTRA", "").split():
        name, _, path = item.partition("=")
        if name and os.access(path, os.X_OK):
            contestants.append((name, os.path.realpath(path)))
        else:
            missing.append((name or item, path))
    for name, path in missing:
        log(f"{name}: {path} not found, skipped")
    picked = os.environ.get("BENCH_SHIM_CONTESTANTS", "").replace(",", " ").split()
    if picked:
        for name, path in contestants:
            if name not in picked:
                missing.append((name, f"not picked (BENCH_SHIM_CONTESTANTS={' '.join(picked)})"))
        contestants = [(n, p) for n, p in contestants if n in picked]
        if not contestants and "runc" not in picked:
            sys.exit(f"BENCH_SHIM_CONTESTANTS={' '.join(picked)}: no contestant left")
    peers = [n for n, _ in PEERS if n in dict(contestants)]
    res = {"contestants": dict(contestants), "peers": peers, "missing": dict(missing), "reps": reps,
           "stats": {}, "exec": {}, "density": {}, "soak": None}

    def rotated(rep, items):
        k = rep % len(items)
        return items[k:] + items[:k]

    if "stats" in only:
        calls = int(os.environ.get("BENCH_STATS_CALLS", "2000"))
        runs = {n: [] for n, _ in contestants}
        for rep in range(reps):
            for name, shim in rotated(rep, contestants):
                runs[name].append(load(args, shim, "stats", "--calls", calls))
        res["stats"] = {n: {"shim_cpu_us_per_call": med(r, "shim_cpu_us_per_call"),
                            "wall_us_per_call": med(r, "wall_us_per_call"),
                            "fds": med(r, "fds"), "threads": med(r, "threads"), "runs": r}
                        for n, r in runs.items()}

    if "exec" in only:
        for n in env_list("BENCH_SHIM_N", "1 10 100"):
            total = max(int(os.environ.get("BENCH_SHIM_TOTAL", "200")), 5 * n)
            floor = [("runc", os.path.realpath(args.ours))] if not picked or "runc" in picked else []
            runs = {name: [] for name, _ in contestants + floor}
            for rep in range(reps):
                for name, shim in rotated(rep, contestants + floor):
                    mode = "runc" if name == "runc" else "exec"
                    runs[name].append(load(args, shim, mode, "--inflight", n, "--total", total,
                                           timeout=EXEC_STALL_S))
            res["exec"][n] = {}
            for name, r in runs.items():
                keys = ["shim_cpu_ms_per_exec", "shim_user_ms_per_exec", "shim_sys_ms_per_exec", "runtime_cpu_ms_per_exec", "execs_per_s", "p50_ms", "p99_ms",
                        "p99_over_p50", "overtaken_fraction", "threads_after", "rss_bytes",
                        "shim_runqueue_ms_per_exec", "client_cpu_ms_per_exec", "shim_switches_per_exec",
                        "machine_idle_fraction"]
                row = {k: med(r, k) for k in keys}
                ok = [x for x in r if x]
                # The CDF (and the per-RPC phases) of the repetition with the median throughput.
                if ok:
                    mid = sorted(ok, key=lambda x: x["execs_per_s"])[len(ok) // 2]
                    row["latencies_ms"] = mid.get("latencies_ms")
                    for k in ("phases_ms", "overtaken_at"):
                        if k in mid:
                            row[k] = mid[k]
                res["exec"][n][name] = row

    if "density" in only:
        secs = int(os.environ.get("BENCH_IDLE_S", "60"))
        variants = [(n, False) for n in env_list("BENCH_DENSITY_N", "10 50 100")]
        variants.append((max(env_list("BENCH_DENSITY_N", "10 50 100")), True))
        for n, pod in variants:
            key = f"pod{n}" if pod else str(n)
            res["density"][key] = {}
            for name, shim in contestants:
                if name in dict(HISTORICAL):
                    continue  # a historical row for Stats and exec only
                opts = ["--containers", n, "--seconds", secs] + (["--pod"] if pod else [])
                res["density"][key][name] = load(args, shim, "idle", *opts)

    if "soak" in only:
        execs = int(os.environ.get("BENCH_SOAK_EXECS", "100000"))
        res["soak"] = load(args, os.path.realpath(args.ours), "soak", "--total", execs, "--inflight", 50, "--step", 10000,
                           timeout=6 * 3600)

    res["machine"] = {"nproc": os.cpu_count(), "kernel": os.uname().release,
                      "loadavg_end": open("/proc/loadavg").read().split()[:3],
                      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with open(os.path.join(args.out, "shim-results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = report(res)
    with open(os.path.join(args.out, "shim-results.md"), "w") as f:
        f.write(md)
    print(md)
    charts = subprocess.run(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "bench_charts.py"),
                             os.path.join(args.out, "shim-results.json"), args.out])
    if charts.returncode != 0:
        log("charts not written (python3-matplotlib missing?)")


def report(res):
    names = [n for n in res["contestants"]]
    peers = res["peers"]
    out = ["## Shim-level benchmark (ttrpc, no containerd)", "",
           f"Machine: {res['machine']['nproc']} CPUs, kernel {res['machine']['kernel']}, "
           f"load average at the end {' '.join(res['machine']['loadavg_end'])}; "
           f"medians of {res['reps']} repetitions. CPU is the shim's own (schedstat of all its threads; "
           f"user/sys split from /proc/PID/stat ticks). Bundles and sockets under {TMPDIR}.", ""]
    if res["missing"]:
        out += ["Not measured (binary missing): " + ", ".join(res["missing"]), ""]
    verdicts = []
    if res["stats"]:
        out += ["### Stats (cgroup v1): shim CPU per call", "",
                "| contestant | shim CPU µs/call | wall µs/call | fds | threads | ours ÷ it |", "|---|---|---|---|---|---|"]
        ours = res["stats"].get("ours", {}).get("shim_cpu_us_per_call")
        for n in names:
            s = res["stats"].get(n, {})
            out.append(f"| {n} | {fmt(s.get('shim_cpu_us_per_call'), 1)} | {fmt(s.get('wall_us_per_call'), 1)} | "
                       f"{fmt(s.get('fds'), 0)} | {fmt(s.get('threads'), 0)} | "
                       f"{ratio(ours, s.get('shim_cpu_us_per_call')) if n != 'ours' else ''} |")
        out.append("")
        if ours is not None:
            verdicts.append(f"Stats budget ≤ {BUDGET_STATS_US} µs shim CPU per call: ours {fmt(ours, 1)} µs — "
                            + ("met" if ours <= BUDGET_STATS_US else "NOT met"))
    if res["exec"]:
        out += ["### Exec+Start+Wait+Delete cycles, N in flight against one shim", "",
                "| N | contestant | shim CPU ms/exec (user + sys) | runc+process CPU ms/exec | execs/s | p50 ms | p99 ms | "
                "p99/p50 | overtaken | threads after |", "|---|---|---|---|---|---|---|---|---|---|"]
        for n, rows in sorted(res["exec"].items(), key=lambda kv: int(kv[0])):
            for name in names + (["runc"] if "runc" in rows else []):
                r = rows.get(name) or {}
                cpu = (f"{fmt(r.get('shim_cpu_ms_per_exec'), 3)} ({fmt(r.get('shim_user_ms_per_exec'))} + "
                       f"{fmt(r.get('shim_sys_ms_per_exec'))})") if name != "runc" else "0 (no shim)"
                out.append(f"| {n} | {name} | {cpu} | "
                           f"{fmt(r.get('runtime_cpu_ms_per_exec'))} | {fmt(r.get('execs_per_s'), 1)} | "
                           f"{fmt(r.get('p50_ms'), 1)} | {fmt(r.get('p99_ms'), 1)} | {fmt(r.get('p99_over_p50'))} | "
                           f"{fmt(r.get('overtaken_fraction'))} | {fmt(r.get('threads_after'), 0) if name != 'runc' else ''} |")
            o = rows.get("ours") or {}
            for p in peers:
                r = rows.get(p) or {}
                out.append(f"| {n} | ours ÷ {p} | {ratio(o.get('shim_cpu_ms_per_exec'), r.get('shim_cpu_ms_per_exec'))} | | "
                           f"{ratio(o.get('execs_per_s'), r.get('execs_per_s'))} | {ratio(o.get('p50_ms'), r.get('p50_ms'))} | "
                           f"{ratio(o.get('p99_ms'), r.get('p99_ms'))} | | | |")
            f = rows.get("runc")
            if f is not None:
                out.append(f"| {n} | ours ÷ runc floor | | | {ratio(o.get('execs_per_s'), f.get('execs_per_s'))} | | | | | |")
        out.append("")
        phased = [(n, name, (rows.get(name) or {})) for n, rows in sorted(res["exec"].items(), key=lambda kv: int(kv[0]))
                  for name in names if (rows.get(name) or {}).get("phases_ms")]
        if phased:
            out += ["Where a cycle's time goes, per RPC (client side, the repetition with the median throughput): "
                    "p50 / p99 ms from one reply to the next, the overtaken fraction at each reply (it grows in the "
                    "phase that reorders), and the time the shim's threads waited for a CPU (schedstat). Start "
                    "holds the `runc exec`; hack/exec-phases.py splits it further with a kernel trace.", "",
                    "| N | contestant | Exec | Start | Wait | Delete | overtaken at Exec / Start / Wait / Delete | "
                    "shim run-queue ms/exec | driver CPU ms/exec |", "|---|---|---|---|---|---|---|---|---|"]
            for n, name, r in phased:
                ph, at = r["phases_ms"], r.get("overtaken_at") or {}
                cell = lambda k: f"{fmt((ph.get(k) or {}).get('p50'), 1)} / {fmt((ph.get(k) or {}).get('p99'), 1)}"
                ots = " / ".join(fmt(at.get(k)) for k in ("exec", "start", "wait", "delete"))
                out.append(f"| {n} | {name} | {cell('exec')} | {cell('start')} | {cell('wait')} | {cell('delete')} | "
                           f"{ots} | {fmt(r.get('shim_runqueue_ms_per_exec'))} | {fmt(r.get('client_cpu_ms_per_exec'))} |")
            out.append("")
        top = max(res["exec"], key=lambda k: int(k))
        o = res["exec"][top].get("ours") or {}
        if o.get("shim_cpu_ms_per_exec") is not None:
            v = o["shim_cpu_ms_per_exec"]
            verdicts.append(f"Exec budget ≤ {BUDGET_EXEC_MS} ms shim CPU per exec (N = {top}): ours {fmt(v, 3)} ms — "
                            + ("met" if v <= BUDGET_EXEC_MS else "NOT met"))
        if o.get("p99_over_p50") is not None:
            v = o["p99_over_p50"]
            verdicts.append(f"Fairness p99/p50 ≤ {BUDGET_FAIRNESS} (N = {top}): ours {fmt(v)} — "
                            + ("met" if v <= BUDGET_FAIRNESS else "NOT met"))
    if res["density"]:
        out += ["### Density: idle containers", "",
                "| containers | contestant | shims | PSS/shim MiB | anon/shim MiB | threads/shim | fds/shim | "
                "idle CPU µs/shim/min | wakeups/shim/min | shim CPU ms per container start |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        mib = 1 / (1 << 20)
        for key, rows in res["density"].items():
            label = f"{key[3:]} as pods of 4" if key.startswith("pod") else key
            for name in names:
                r = rows.get(name)
                if not r:
                    if name not in dict(HISTORICAL):
                        out.append(f"| {label} | {name} | failed | | | | | | | |")
                    continue
                out.append(f"| {label} | {name} | {r['shims']} | {fmt(r['pss_bytes_per_shim'] * mib)} | "
                           f"{fmt(r['anon_bytes_per_shim'] * mib)} | {fmt(r['threads_per_shim'], 1)} | "
                           f"{fmt(r['fds_per_shim'], 1)} | {fmt(r['idle_cpu_us_per_shim_per_min'], 1)} | "
                           f"{fmt(r['wakeups_per_shim_per_min'], 1)} | {fmt(r['start_shim_cpu_ms_per_container'])} |")
            o = rows.get("ours")
            for p in peers:
                r = rows.get(p)
                if o and r:
                    out.append(f"| {label} | ours ÷ {p} | | {ratio(o['pss_bytes_per_shim'], r['pss_bytes_per_shim'])} | "
                               f"{ratio(o['anon_bytes_per_shim'], r['anon_bytes_per_shim'])} | | | | | "
                               f"{ratio(o['start_shim_cpu_ms_per_container'], r['start_shim_cpu_ms_per_container'])} |")
        out.append("")
        idle = [r.get("ours") for r in res["density"].values() if r.get("ours")]
        if idle:
            w = max(r["wakeups_per_shim_per_min"] for r in idle)
            verdicts.append(f"Idle wakeups (want 0): ours at most {fmt(w, 1)} per shim per minute")
    if res["soak"]:
        s = res["soak"]
        out += ["### Long soak (ours)", "",
                f"{s['total']} exec cycles, {s['inflight']} in flight, {fmt(s['seconds'], 0)} s. Slope per 10 000 execs "
                f"after the first 10 000 (± standard error): RSS {fmt(s['rss_slope_bytes_per_10k'], 0)} "
                f"± {fmt(s.get('rss_slope_stderr'), 0)} B, anonymous {fmt(s['anon_slope_bytes_per_10k'], 0)} "
                f"± {fmt(s.get('anon_slope_stderr'), 0)} B, fds {fmt(s['fds_slope_per_10k'])}, maps "
                f"{fmt(s['maps_slope_per_10k'])}.", "",
                "| execs | RSS KiB | anon KiB | fds | maps | threads |", "|---|---|---|---|---|---|"]
        for p in s["samples"]:
            out.append(f"| {p['execs']} | {p['rss'] // 1024} | {p['anon'] // 1024} | {p['fds']} | {p['maps']} | {p['threads']} |")
        out.append("")
    if verdicts:
        out += ["### Verdicts", ""] + [f"- {v}" for v in verdicts] + [""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
