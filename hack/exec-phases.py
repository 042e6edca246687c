#!/usr/bin/env python3
"""Where an exec cycle's time goes, shim versus runc: a diagnostic, not part of `make bench`.

Lines up shim-load's per-cycle reply times (SHIM_LOAD_CYCLES) with a kernel trace of process
forks and exits (`perf record` task events, CLOCK_MONOTONIC), so each Exec+Start+Wait+Delete
cycle splits into what the shim did and what runc and the process did:

  exec        Exec request to its reply                          shim
  start_pre   Exec reply .. the shim forks `runc exec`            shim (ttrpc, actor, IO setup, spawn;
                                                                  and the wait for a place in the
                                                                  exec gate, runtime/src/gate.rs)
  runc        `runc exec --detach` fork .. its last thread exits  runc
  start_post  runc's exit .. the Start reply                      shim (reap, pid file, actor, reply)
  proc        the Start reply .. the process exits (0 if before)  the process
  wait_shim   max(Start reply, process exit) .. the Wait reply    shim (reap, route, actor, reply)
  delete      the Wait reply .. the Delete reply                  shim
  shim        the shim's phases together; shim_no_pre without start_pre

Needs perf (Debian's linux-perf), which the benchmarks do not install; run as root:

  SHIM_LOAD_CYCLES=/tmp/cycles.jsonl SHIM_BIN=$PWD/target/release/containerd-shim-runc-v2 \\
    TMPDIR=/dev/shm target/debug/reap-run \\
    perf record -q -a -e dummy -k CLOCK_MONOTONIC -o /tmp/exec.perf -- \\
    target/debug/shim-load exec --inflight 100 --total 500 > /tmp/exec.json
  perf script --show-task-events -i /tmp/exec.perf > /tmp/exec.tasks
  hack/exec-phases.py /tmp/cycles.jsonl /tmp/exec.tasks [--floor RUNC.json]

RUNC.json is a `shim-load runc` result (the bare `runc exec` floor at the same N), printed beside.
"""

import argparse
import json
import re
import statistics

EVENT = re.compile(r"\s(\d+\.\d+): PERF_RECORD_(FORK|EXIT)\((\d+):(\d+)\):\((\d+):(\d+)\)")


def parse_tasks(path):
    forks, exits = {}, {}  # pid -> [(ts, ppid)], pid -> last thread exit ts
    with open(path) as f:
        for line in f:
            m = EVENT.search(line)
            if not m:
                continue
            ts, kind = float(m.group(1)), m.group(2)
            pid, tid, ppid = int(m.group(3)), int(m.group(4)), int(m.group(5))
            if kind == "FORK" and pid == tid and pid != ppid:
                forks.setdefault(pid, []).append((ts, ppid))
            elif kind == "EXIT":
                exits[pid] = max(exits.get(pid, 0.0), ts)
    return forks, exits


def fork_before(forks, pid, t):
    """The latest fork of `pid` at or before `t` (pids may be reused over a run)."""
    best = None
    for ts, ppid in forks.get(pid, []):
        if ts <= t + 1e-6 and (best is None or ts > best[0]):
            best = (ts, ppid)
    return best


def pct(xs, p):
    xs = sorted(xs)
    return xs[(len(xs) - 1) * int(p * 1000) // 1000]


def overtaken(ends):
    """Fraction of items (in start order) that one started later passed at this boundary."""
    low, n = float("inf"), 0
    for e in reversed(ends):
        if low < e:
            n += 1
        low = min(low, e)
    return n / max(1, len(ends))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cycles")
    ap.add_argument("tasks")
    ap.add_argument("--floor")
    ap.add_argument("--json")
    a = ap.parse_args()
    forks, exits = parse_tasks(a.tasks)
    rows, missing = [], 0
    for line in open(a.cycles):
        c = json.loads(line)
        # Walk up from the exec'd process to the `runc exec` the shim forked.
        pid, t, runc = c["pid"], c["t_start"], None
        for _ in range(8):
            f = fork_before(forks, pid, t)
            if f is None:
                break
            if f[1] == c["shim_pid"]:
                runc = (pid, f[0])
                break
            pid, t = f[1], f[0]
        p_exit = exits.get(c["pid"])
        if runc is None or runc[0] not in exits or p_exit is None:
            missing += 1
            continue
        spawn, r_exit = runc[1], exits[runc[0]]
        known = max(c["t_start"], p_exit)
        rows.append({
            "i": c["i"],
            "exec": c["t_exec"] - c["t_begin"],
            "start_pre": spawn - c["t_exec"],
            "runc": r_exit - spawn,
            "start_post": c["t_start"] - r_exit,
            "proc": max(0.0, p_exit - c["t_start"]),
            "wait_shim": c["t_wait"] - known,
            "delete": c["t_delete"] - c["t_wait"],
            "total": c["t_delete"] - c["t_begin"],
            "b": {"begin": c["t_begin"], "exec": c["t_exec"], "spawn": spawn, "runc_exit": r_exit,
                  "start": c["t_start"], "proc_exit": p_exit, "wait": c["t_wait"], "delete": c["t_delete"]},
        })
    for r in rows:
        r["shim"] = r["exec"] + r["start_pre"] + r["start_post"] + r["wait_shim"] + r["delete"]
        # Without start_pre, which holds the wait for a place in the exec gate.
        r["shim_no_pre"] = r["shim"] - r["start_pre"]
        r["not_shim"] = r["runc"] + r["proc"]
    rows.sort(key=lambda r: r["i"])
    keys = ["exec", "start_pre", "runc", "start_post", "proc", "wait_shim", "delete", "shim", "shim_no_pre", "not_shim",
            "total"]
    print(f"{len(rows)} cycles ({missing} not matched in the trace)\n")
    print("| phase | p50 ms | p99 ms | mean ms | share of mean total |\n|---|---|---|---|---|")
    mean_total = statistics.mean(r["total"] for r in rows)
    out = {"cycles": len(rows), "unmatched": missing, "phases_ms": {}, "overtaken_at": {}}
    for k in keys:
        xs = [r[k] * 1000 for r in rows]
        out["phases_ms"][k] = {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "mean": statistics.mean(xs)}
        print(f"| {k} | {pct(xs, 0.5):.2f} | {pct(xs, 0.99):.2f} | {statistics.mean(xs):.2f} | "
              f"{statistics.mean(xs) / 1000 / mean_total:.0%} |")
    sh = [r["shim"] / r["total"] for r in rows]
    print(f"\nshim share of a cycle: p50 {pct(sh, 0.5):.1%}, p99 {pct(sh, 0.99):.1%}")
    print("\nOvertaken fraction at each boundary (start order vs arrival order; it grows where a phase reorders):\n")
    print("| boundary | overtaken |\n|---|---|")
    for b in ["exec", "spawn", "runc_exit", "start", "proc_exit", "wait", "delete"]:
        v = overtaken([r["b"][b] for r in rows])
        out["overtaken_at"][b] = v
        print(f"| {b} | {v:.2f} |")
    if a.floor:
        fl = json.load(open(a.floor))
        lat = fl["latencies_ms"]
        out["floor_ms"] = {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "mean": statistics.mean(lat)}
        print(f"\nrunc floor (bare `runc exec`, N = {fl['inflight']}): p50 {pct(lat, 0.5):.1f} ms, "
              f"p99 {pct(lat, 0.99):.1f} ms, p99/p50 {pct(lat, 0.99) / pct(lat, 0.5):.2f}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
