"""Measurements: /proc readers (CPU, memory) and the bounded runner of measured processes."""

import os
import signal
import threading
import time

from .common import CLK_TCK


# /proc readers


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    # rest[i] is field i+3 of proc(5): state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    return {
        "state": rest[0],
        "ppid": int(rest[1]),
        "ticks": int(rest[11]) + int(rest[12]),
        "cticks": int(rest[13]) + int(rest[14]),
    }


def cpu_snapshot(pid):
    """Per-thread runtime (ns), own and reaped-children ticks of a process."""
    if pid is None:
        return None
    tids = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    tids[tid] = int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
        st = proc_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {"tids": tids, "ticks": st["ticks"], "cticks": st["cticks"]}


def cpu_delta(a, b):
    """(own ns, reaped-children ns, approx) between two snapshots of one process."""
    if a is None or b is None:
        return None, None, True
    ns = sum(v - a["tids"].get(t, 0) for t, v in b["tids"].items())
    approx = False
    if set(a["tids"]) - set(b["tids"]):
        tick_ns = (b["ticks"] - a["ticks"]) * 1e9 / CLK_TCK
        if tick_ns > ns:
            ns, approx = tick_ns, True
    child_ns = (b["cticks"] - a["cticks"]) * 1e9 / CLK_TCK
    return ns, child_ns, approx


def machine_busy_ns():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy * 1e9 / CLK_TCK


def mem_snapshot(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "VmRSS":
                out["rss_kib"] = int(v.split()[0])
            elif k == "RssAnon":
                out["rss_anon_kib"] = int(v.split()[0])
            elif k == "RssFile":
                out["rss_file_kib"] = int(v.split()[0])
            elif k == "Threads":
                out["threads"] = int(v.split()[0])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "Pss":
                out["pss_kib"] = int(v.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    zombies = children = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = proc_stat(p)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if st["ppid"] == pid:
            children += 1
            zombies += st["state"] == "Z"
    out["children"] = children
    out["zombies"] = zombies
    return out


# --------------------------------------------------------------------------
# running many bounded processes at once

LIVE = set()  # pids (= process group ids) of measured processes not yet reaped
LIVE_LOCK = threading.Lock()


def kill_live():
    with LIVE_LOCK:
        for pid in list(LIVE):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # Reap what we killed (they are our children).
    deadline = time.monotonic() + 10
    while LIVE and time.monotonic() < deadline:
        with LIVE_LOCK:
            for pid in list(LIVE):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    LIVE.discard(pid)
        time.sleep(0.05)


def run_jobs(jobs, stall, inflight=None):
    """Runs jobs ({id, argv, out?}) with at most `inflight` at once (all if None).

    Each job runs in its own session with stdin=/dev/null, stdout to job["out"]
    (or /dev/null) and stderr to job["err"] (or /dev/null). Returns one dict per
    job: status ok/failed/timeout/stalled/not-started, rc, t0 (monotonic), wall
    (s), cpu_ns (rusage of the job's process tree). If no job finishes for
    `stall` seconds, every running job is SIGKILLed (status "stalled") and no
    further job is started.
    """
    n = len(jobs)
    inflight = n if inflight is None else inflight
    res = [{"id": j["id"], "status": "not-started"} for j in jobs]
    pending = {}  # pid -> index
    lock = threading.Lock()
    st = {"last": time.monotonic(), "stalled": False, "next": 0}
    stop = threading.Event()
    wflags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

    def spawn_more():  # with lock held
        while not st["stalled"] and st["next"] < n and len(pending) < inflight:
            i = st["next"]
            st["next"] += 1
            j = jobs[i]
            fa = [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, j.get("out") or "/dev/null", wflags, 0o644),
                (os.POSIX_SPAWN_OPEN, 2, j.get("err") or "/dev/null", wflags, 0o644),
            ]
            t0 = time.monotonic()
            pid = os.posix_spawnp(j["argv"][0], j["argv"], os.environ, file_actions=fa, setsid=True)
            with LIVE_LOCK:
                LIVE.add(pid)
            pending[pid] = i
            res[i].update(status="running", t0=t0, pid=pid)

    def watchdog():
        while not stop.wait(0.2):
            with lock:
                if pending and time.monotonic() - st["last"] > stall:
                    st["stalled"] = True
                    for pid in pending:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    wd = threading.Thread(target=watchdog, daemon=True)
    with lock:
        st["last"] = time.monotonic()
        spawn_more()
    wd.start()
    try:
        while pending:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            with lock:
                pid = info.si_pid
                _, status, ru = os.wait4(pid, 0)
                t1 = time.monotonic()
                with LIVE_LOCK:
                    LIVE.discard(pid)
                i = pending.pop(pid, None)
                if i is None:
                    continue  # not ours (should not happen)
                r = res[i]
                r["wall"] = t1 - r["t0"]
                r["t1"] = t1
                r["cpu_ns"] = (ru.ru_utime + ru.ru_stime) * 1e9
                if os.WIFEXITED(status):
                    rc = os.WEXITSTATUS(status)
                    r["rc"] = rc
                    r["status"] = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed")
                else:
                    r["rc"] = -os.WTERMSIG(status)
                    r["status"] = "stalled" if st["stalled"] else "killed"
                if r["status"] != "stalled":
                    st["last"] = t1
                spawn_more()
    finally:
        stop.set()
        wd.join()
    return res, st["stalled"]
