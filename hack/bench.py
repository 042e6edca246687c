#!/usr/bin/env python3
"""Exec/lifecycle/memory benchmark of containerd shims (driven by hack/bench.sh).

Usage (normally through hack/bench.sh, which prepares WORK and cleans up):
  bench.py --work WORK --out OUT --hack HACK --shim-dir DIR --image IMAGE.tar --cgroup CG

Contestants, each measured round by round (order rotated every repetition,
so machine noise hits all of them alike):
  ours  private containerd (hack/containerd-up.sh WORK/c-ours SHIM_DIR)
  go    private containerd with Debian's Go shim (hack/containerd-up.sh WORK/c-go)
  runc  the floor: bare `runc` against a private runc root (no containerd, no shim)

Scenarios: exec storm (N concurrent `ctr tasks exec ... true`), exec with
64 KiB of output per exec (checked byte-exact), lifecycle (`ctr run --rm ...
true`, sequential and concurrent) and shim memory (idle, after 100 and after
K execs). Every ctr/runc call runs as `timeout -k 5 T ...` in its own session;
a contestant that makes no progress for BENCH_STALL seconds is declared
stalled, its calls are SIGKILLed, its containerd is torn down and started
afresh, and the benchmark continues. Output: OUT/results.md (also printed on
stdout), OUT/results.json (everything, raw samples included), OUT/runs/*.json
(one file per measurement), OUT/bench.log.

CPU accounting (all from /proc, in ns):
  shim        sum over the shim's threads of /proc/PID/task/TID/schedstat
              field 1, per thread id, after minus before (if a thread exited
              in between, utime+stime of /proc/PID/stat is used when larger);
  containerd  the same for the containerd daemon;
  runc        cutime+cstime of the shim (/proc/PID/stat, 10 ms ticks): the
              CPU of the shim's reaped children, i.e. every `runc` call and
              the exec'd process itself (`true`) -- measured, not estimated
              from the machine total; for the runc floor, the rusage of the
              `timeout runc ...` processes (wait4);
  ctr         rusage of the `timeout ctr ...` processes (wait4);
  other       busy time of the whole machine (/proc/stat) minus all of the
              above: a noise gauge (other processes, kernel threads).
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
NS = "bench"
IMAGE = "docker.io/library/shimtest:latest"
OUT_BYTES = 65536
# The Go shim of the containerd hack/bench.sh runs (CONTAINERD_VERSION).
GO_LABEL = {"2": "Go shim 2.1", "1.7": "Go shim 1.7", "1.6": "Go shim 1.6"}.get(
    os.environ.get("CONTAINERD_VERSION", "1.6"), "Go shim")


# --------------------------------------------------------------------------
# configuration


def env_int(name, default):
    v = os.environ.get(name, "")
    if v == "":
        return default
    try:
        return int(v)
    except ValueError:
        sys.exit(f"bench: {name}={v!r} is not an integer")


def env_list(name, default):
    v = os.environ.get(name, "")
    if v.strip() == "":
        return default
    try:
        out = [int(x) for x in v.replace(",", " ").split()]
    except ValueError:
        sys.exit(f"bench: {name}={v!r} is not a list of integers")
    if not out or min(out) < 1:
        sys.exit(f"bench: {name} must list positive integers")
    return out


def load_config():
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
    long_run = os.environ.get("BENCH_LONG", "0") not in ("", "0")
    cfg = {
        "quick": quick,
        "long": long_run,
        "n": env_list("BENCH_N", [1, 10, 50] if quick else [1, 10, 50, 100]),
        "reps": env_int("BENCH_REPS", 1 if quick else 3),
        "k": env_int("BENCH_K", 10000 if long_run else (200 if quick else 1000)),
        "go": os.environ.get("BENCH_GO", "1") not in ("", "0"),
        "runc": os.environ.get("BENCH_RUNC", "1") not in ("", "0"),
        "seq": env_int("BENCH_SEQ", 20),
        "conc": env_int("BENCH_CONC", 10),
        "mem_conc": env_int("BENCH_MEM_CONC", 10),
        "timeout": env_int("BENCH_TIMEOUT", 60),
        "stall": env_int("BENCH_STALL", 15),
    }
    if cfg["reps"] < 1 or cfg["k"] < 200 or cfg["seq"] < 1 or cfg["conc"] < 1 or cfg["mem_conc"] < 1:
        sys.exit("bench: BENCH_REPS, BENCH_SEQ, BENCH_CONC, BENCH_MEM_CONC must be >= 1 and BENCH_K >= 200")
    return cfg


# --------------------------------------------------------------------------
# logging and small helpers

LOGF = None


def log(msg):
    line = f"[bench {time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if LOGF:
        LOGF.write(line + "\n")
        LOGF.flush()


class BenchError(Exception):
    pass


def run(argv, timeout=60, check=False):
    """Runs a setup/teardown command (not a measured one), bounded."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout + 15)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(argv[:8])}: no exit after {timeout + 15}s") from e
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-600:]}")
    return r


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# contestants


class Containerd:
    """A contestant behind a private containerd (ours or Debian's Go shim)."""

    def __init__(self, name, label, work, hack, shim_dir, cfg, image_tar):
        self.name, self.label = name, label
        self.dir = os.path.join(work, "c-" + name)
        self.hack, self.shim_dir, self.cfg, self.image_tar = hack, shim_dir, cfg, image_tar
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.pid = None
        self.shim_path = None
        self.restarts = 0
        self.dirty = False

    def ctr(self, *args, t=None):
        return ["timeout", "-k", "5", str(t or self.cfg["timeout"]), "ctr", "-a", self.sock, "-n", NS, *args]

    def up(self):
        argv = [os.path.join(self.hack, "containerd-up.sh"), self.dir]
        if self.shim_dir:
            argv.append(self.shim_dir)
        r = run(argv, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"containerd-up for {self.name} failed: {r.stderr.strip()[-800:]}")
        with open(os.path.join(self.dir, "containerd.pid")) as f:
            self.pid = int(f.read().strip())
        with open(os.path.join(self.dir, "shim-path")) as f:
            self.shim_path = os.path.realpath(f.read().strip())
        run(self.ctr("images", "import", self.image_tar, t=120), timeout=120, check=True)
        self.dirty = False
        log(f"{self.name}: containerd pid {self.pid}, shim {self.shim_path}")

    def down(self):
        if not os.path.exists(self.dir):
            return True
        r = run([os.path.join(self.hack, "containerd-down.sh"), self.dir], timeout=180)
        if r.returncode != 0:
            log(f"{self.name}: containerd-down failed: {r.stderr.strip()[-800:]}")
            return False
        self.pid = None
        return True

    def shim_tree(self):
        """Pids of this containerd's shims (argv has `-address SOCK`) and all their descendants."""
        kids, roots = {}, []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                st = proc_stat(p)
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except (OSError, ValueError):
                continue
            if st["state"] == "Z":
                continue
            kids.setdefault(st["ppid"], []).append(int(p))
            sock = self.sock.encode()
            if any(a in (b"-address=" + sock, b"--address=" + sock) or
                   (a in (b"-address", b"--address") and i + 1 < len(argv) and argv[i + 1] == sock)
                   for i, a in enumerate(argv)):
                roots.append(int(p))
        out, todo = set(), list(roots)
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo += kids.get(p, [])
        return out

    def restart(self, why):
        log(f"{self.name}: restarting its containerd ({why})")
        self.restarts += 1
        # A wedged shim makes every ctr call in containerd-down wait for its
        # timeout: SIGKILL this containerd's shims (and what they started) first.
        victims = self.shim_tree()
        if victims:
            log(f"{self.name}: SIGKILL shim processes {sorted(victims)}")
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.shim_tree():
                time.sleep(0.05)
        t0 = time.monotonic()
        self.down()
        self.up()
        log(f"{self.name}: restarted in {time.monotonic() - t0:.1f}s")

    def tasks(self):
        r = run(self.ctr("tasks", "ls", t=20), timeout=20)
        out = {}
        for line in r.stdout.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = (int(f[1]), f[2])
        return out

    def start_container(self, cid):
        """`ctr run -d IMAGE cid sleep 100000`; returns the shim's pid."""
        r = run(self.ctr("run", "-d", "--runc-root", self.dir + "/runc", "--fifo-dir", self.dir + "/fifo",
                         IMAGE, cid, "sleep", "100000", t=60), timeout=60)
        if r.returncode != 0:
            raise BenchError(f"{self.name}: ctr run -d {cid}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
        deadline = time.monotonic() + 30
        while True:
            t = self.tasks().get(cid)
            if t and t[1] == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {cid} not RUNNING after 30s ({t})")
            time.sleep(0.1)
        shim = proc_stat(t[0])["ppid"]
        exe = os.path.realpath(f"/proc/{shim}/exe")
        if exe != self.shim_path:
            raise BenchError(f"{self.name}: {cid}'s parent {shim} is {exe}, not {self.shim_path}")
        return shim

    def stop_container(self, cid):
        """Kill, delete the task and the container; False if anything failed."""
        ok = run(self.ctr("tasks", "kill", "-s", "SIGKILL", cid, t=20), timeout=20).returncode == 0
        deadline = time.monotonic() + 20
        while ok:
            t = self.tasks().get(cid)
            if t is None or t[1] == "STOPPED":
                break
            if time.monotonic() > deadline:
                ok = False
            time.sleep(0.1)
        ok = ok and run(self.ctr("tasks", "delete", cid, t=20), timeout=20).returncode == 0
        ok = run(self.ctr("containers", "delete", cid, t=20), timeout=20).returncode == 0 and ok
        return ok

    def leftovers(self):
        r = run(self.ctr("containers", "ls", "-q", t=20), timeout=20)
        return [x for x in r.stdout.split() if x] if r.returncode == 0 else ["?"]

    def cleanup_ids(self, ids):
        for cid in ids:
            run(self.ctr("tasks", "delete", "-f", cid, t=20), timeout=20)
            run(self.ctr("containers", "delete", cid, t=20), timeout=20)

    def exec_argv(self, cid, eid, cmd):
        return self.ctr("tasks", "exec", "--fifo-dir", self.dir + "/fifo", "--exec-id", eid, cid, *cmd)

    def run_rm_argv(self, cid, cmd):
        return self.ctr("run", "--rm", "--runc-root", self.dir + "/runc", "--fifo-dir", self.dir + "/fifo",
                        IMAGE, cid, *cmd)


class RuncFloor:
    """Bare runc against a private root: no containerd, no shim, no ctr."""

    name, label = "runc", "runc floor"

    def __init__(self, work, cfg, cgroup):
        self.cfg = cfg
        self.root = os.path.join(work, "rf")
        self.bundles = os.path.join(work, "fb")
        self.rootfs = os.path.join(work, "rootfs")
        self.cgroup = cgroup
        self.template = None
        self.pid = None
        self.restarts = 0
        self.dirty = False

    def up(self):
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.bundles, exist_ok=True)
        bb = os.path.join(self.rootfs, "bin", "busybox")
        if not os.path.exists(bb):
            for d in ("bin", "proc", "sys", "dev", "tmp", "root", "etc"):
                os.makedirs(os.path.join(self.rootfs, d), exist_ok=True)
            shutil.copy2(os.environ.get("BUSYBOX", "/bin/busybox"), bb)
            applets = run([bb, "--list"], check=True).stdout.split()
            for a in applets:
                p = os.path.join(self.rootfs, "bin", a)
                if a != "busybox" and not os.path.lexists(p):
                    os.symlink("busybox", p)
        tdir = os.path.join(self.bundles, ".template")
        os.makedirs(tdir, exist_ok=True)
        run(["runc", "spec", "--bundle", tdir], check=True)
        with open(os.path.join(tdir, "config.json")) as f:
            self.template = json.load(f)
        self.template["process"]["terminal"] = False
        self.template["root"] = {"path": self.rootfs, "readonly": False}
        self.template["hostname"] = "floor"

    def bundle(self, cid, cmd):
        b = os.path.join(self.bundles, cid)
        os.makedirs(b, exist_ok=True)
        spec = json.loads(json.dumps(self.template))
        spec["process"]["args"] = list(cmd)
        spec["linux"]["cgroupsPath"] = f"/{self.cgroup}/{cid}"
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        return b

    def runc(self, *args, t=None):
        return ["timeout", "-k", "5", str(t or self.cfg["timeout"]), "runc", "--root", self.root, *args]

    def start_container(self, cid):
        b = self.bundle(cid, ["sleep", "100000"])
        # The container inherits runc's stdio: no pipes, or reading them never ends.
        errf = os.path.join(b, "run.err")
        with open(errf, "w+") as err:
            try:
                rc = subprocess.run(self.runc("run", "-d", "-b", b, cid, t=60), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, timeout=75).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            err.seek(0)
            msg = err.read().strip()[-400:]
        if rc != 0:
            raise BenchError(f"runc run -d {cid}: exit {rc}: {msg}")
        return None

    def stop_container(self, cid):
        run(self.runc("kill", cid, "KILL", t=20), timeout=20)
        ok = run(self.runc("delete", "--force", cid, t=20), timeout=20).returncode == 0
        shutil.rmtree(os.path.join(self.bundles, cid), ignore_errors=True)
        return ok

    def leftovers(self):
        r = run(self.runc("list", "-q", t=20), timeout=20)
        return [x for x in r.stdout.split() if x]

    def cleanup_ids(self, ids):
        for cid in ids:
            run(self.runc("delete", "--force", cid, t=20), timeout=20)
            shutil.rmtree(os.path.join(self.bundles, cid), ignore_errors=True)

    def restart(self, why):
        log(f"runc: cleaning up ({why})")
        self.restarts += 1
        self.cleanup_ids(self.leftovers())

    def down(self):
        self.cleanup_ids(self.leftovers())
        return True

    def exec_argv(self, cid, eid, cmd):
        return self.runc("exec", cid, *cmd)

    def run_rm_argv(self, cid, cmd):
        return self.runc("run", "-b", self.bundle(cid, cmd), cid)


# --------------------------------------------------------------------------
# scenarios


class Bench:
    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.out = args.out
        self.runs_dir = os.path.join(self.out, "runs")
        os.makedirs(self.runs_dir, exist_ok=True)
        self.contestants = [Containerd("ours", "ours (Rust)", args.work, args.hack, args.shim_dir, cfg, args.image)]
        if cfg["go"]:
            self.contestants.append(Containerd("go", GO_LABEL, args.work, args.hack, "", cfg, args.image))
        if cfg["runc"]:
            self.contestants.append(RuncFloor(args.work, cfg, args.cgroup))
        self.results = {"storm": [], "output": [], "lifecycle": [], "memory": {}}
        self.errors = []
        self.failures = 0
        self.tmp = os.path.join(args.work, "out")
        os.makedirs(self.tmp, exist_ok=True)

    def by_name(self, name):
        for c in self.contestants:
            if c.name == name:
                return c
        return None

    def save_run(self, rec):
        fn = f"{rec['scenario']}-{rec['contestant']}-rep{rec['rep']}" + (f"-n{rec['n']}" if "n" in rec else "") + ".json"
        write_json(os.path.join(self.runs_dir, fn), rec)

    def recover(self, c, why):
        try:
            c.restart(why)
        except BenchError as e:
            log(f"{c.name}: recovery failed: {e}")
            raise

    # -- exec storm and exec with output ---------------------------------
    def execs(self, c, rep, n, output):
        kind = "output" if output else "storm"
        cid = f"{kind[0]}{rep}n{n}-{c.name}"
        if c.dirty:
            self.recover(c, "dirty")
        shim = c.start_container(cid)
        time.sleep(0.5)
        cpid = getattr(c, "pid", None) if c.name != "runc" else None
        d = os.path.join(self.tmp, cid)
        os.makedirs(d, exist_ok=True)
        jobs = []
        for i in range(1, n + 1):
            eid = f"{cid}-{i}"
            cmd = ["sh", "-c", f"yes {eid} | head -c {OUT_BYTES}"] if output else ["true"]
            jobs.append({"id": eid, "argv": c.exec_argv(cid, eid, cmd),
                         "out": os.path.join(d, f"{i}.out"), "err": os.path.join(d, f"{i}.err")})
        s0, c0, m0 = cpu_snapshot(shim), cpu_snapshot(cpid), machine_busy_ns()
        res, stalled = run_jobs(jobs, self.cfg["stall"])
        time.sleep(0.2)
        s1, c1, m1 = cpu_snapshot(shim), cpu_snapshot(cpid), machine_busy_ns()
        rec = {"scenario": kind, "contestant": c.name, "rep": rep, "n": n, "stalled": stalled}
        counts = {}
        for r in res:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        rec["counts"] = counts
        done = [r for r in res if "t1" in r]
        t_first = min(r["t0"] for r in res if "t0" in r)
        t_last = max((r["t1"] for r in done), default=t_first)
        rec["wall_s"] = t_last - t_first
        ok = [r for r in res if r["status"] == "ok"]
        rec["ok"] = len(ok)
        lat = [r["wall"] for r in ok]
        if lat:
            rec["p50_ms"] = percentile(lat, 50) * 1e3
            rec["p99_ms"] = percentile(lat, 99) * 1e3
            rec["max_ms"] = max(lat) * 1e3
            rec["mean_ms"] = statistics.mean(lat) * 1e3
        rec["execs_per_s"] = len(ok) / rec["wall_s"] if rec["wall_s"] > 0 else None
        # CPU per exec (ms), over all n execs
        shim_ns, child_ns, approx = cpu_delta(s0, s1)
        ctd_ns, _, _ = cpu_delta(c0, c1)
        jobs_ns = sum(r.get("cpu_ns", 0) for r in res)
        mach_ns = m1 - m0
        if c.name == "runc":
            runc_ns, ctr_ns = jobs_ns, None
        else:
            runc_ns, ctr_ns = child_ns, jobs_ns
        known = sum(x for x in (shim_ns, ctd_ns, runc_ns, ctr_ns) if x is not None)

        def per(x):
            return None if x is None else x / n / 1e6

        rec["cpu_ms_per_exec"] = {"shim": per(shim_ns), "containerd": per(ctd_ns), "runc": per(runc_ns),
                                  "ctr": per(ctr_ns), "machine": per(mach_ns), "other": per(mach_ns - known)}
        rec["shim_cpu_approx"] = approx
        if shim:
            rec["shim_threads"] = len(s1["tids"]) if s1 else None
        if output:
            q = {"exact": 0, "lost": 0, "truncated": 0, "corrupted": 0, "failed": 0}
            for j, r in zip(jobs, res):
                if r["status"] != "ok":
                    q["failed"] += 1
                    continue
                want = ((j["id"] + "\n") * (OUT_BYTES // (len(j["id"]) + 1) + 1)).encode()[:OUT_BYTES]
                with open(j["out"], "rb") as f:
                    got = f.read()
                if got == want:
                    q["exact"] += 1
                elif not got:
                    q["lost"] += 1
                elif want.startswith(got):
                    q["truncated"] += 1
                else:
                    q["corrupted"] += 1
            rec["output"] = q
        errs = []
        for j, r in zip(jobs, res):
            if r["status"] not in ("ok", "stalled", "not-started") and len(errs) < 5:
                with open(j["err"], "rb") as f:
                    errs.append(f"{r['id']}: rc {r.get('rc')}: {f.read()[-300:].decode(errors='replace').strip()}")
        rec["errors"] = errs
        rec["samples"] = [{k: r.get(k) for k in ("id", "status", "rc", "wall", "cpu_ns")} |
                          {"start": r["t0"] - t_first if "t0" in r else None} for r in res]
        shutil.rmtree(d, ignore_errors=True)
        if stalled:
            c.dirty = True
            log(f"{c.name}: STALLED: {counts} after {rec['wall_s']:.1f}s")
        else:
            try:
                if not c.stop_container(cid):
                    c.dirty = True
            except BenchError as e:
                log(f"{c.name}: stopping {cid}: {e}")
                c.dirty = True
        self.save_run(rec)
        self.results[kind].append(rec)
        extra = f" output {rec['output']}" if output else ""
        lat_s = f"p50 {rec['p50_ms']:.0f} p99 {rec['p99_ms']:.0f} ms" if lat else "no latency"
        log(f"  {kind:6} N={n:<3} {c.name:4}: {counts} {rec['execs_per_s'] or 0:.1f}/s {lat_s}"
            f" shim {fmt(rec['cpu_ms_per_exec']['shim'], 2)} ms/exec{extra}")

    # -- lifecycle ----------------------------------------------------------
    def lifecycle(self, c, rep, mode):
        m = self.cfg["seq"] if mode == "seq" else self.cfg["conc"]
        if c.dirty:
            self.recover(c, "dirty")
        jobs = []
        for i in range(1, m + 1):
            cid = f"l{mode[0]}{rep}-{i}-{c.name}"
            jobs.append({"id": cid, "argv": c.run_rm_argv(cid, ["true"]),
                         "err": os.path.join(self.tmp, cid + ".err")})
        res, stalled = [], False
        t0 = time.monotonic()
        if mode == "seq":
            for j in jobs:
                r, stalled = run_jobs([j], self.cfg["stall"])
                res += r
                if stalled:
                    break
        else:
            res, stalled = run_jobs(jobs, self.cfg["stall"])
        wall = time.monotonic() - t0
        counts = {}
        for r in res:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        lat = [r["wall"] for r in res if r["status"] == "ok"]
        rec = {"scenario": "lifecycle-" + mode, "contestant": c.name, "rep": rep, "m": m, "stalled": stalled,
               "counts": counts, "ok": len(lat), "wall_s": wall,
               "samples": [{k: r.get(k) for k in ("id", "status", "rc", "wall", "cpu_ns")} for r in res]}
        if lat:
            rec.update(mean_s=statistics.mean(lat), p50_s=percentile(lat, 50), p99_s=percentile(lat, 99),
                       max_s=max(lat))
        errs = []
        for j, r in zip(jobs, res):
            if r["status"] not in ("ok", "stalled", "not-started") and len(errs) < 5 and os.path.exists(j["err"]):
                with open(j["err"], "rb") as f:
                    errs.append(f"{r['id']}: rc {r.get('rc')}: {f.read()[-300:].decode(errors='replace').strip()}")
        rec["errors"] = errs
        for j in jobs:
            if os.path.exists(j["err"]):
                os.unlink(j["err"])
        if stalled:
            c.dirty = True
        else:
            try:
                left = c.leftovers()
                if left:
                    log(f"{c.name}: leftovers after lifecycle: {left}")
                    c.cleanup_ids(left)
                    if c.leftovers():
                        c.dirty = True
            except BenchError:
                c.dirty = True
        if c.name == "runc":
            for j in jobs:
                shutil.rmtree(os.path.join(c.bundles, j["id"]), ignore_errors=True)
        self.save_run(rec)
        self.results["lifecycle"].append(rec)
        if lat:
            log(f"  life-{mode} M={m:<3} {c.name:4}: {counts} mean {rec['mean_s']:.3f}s p99 {rec['p99_s']:.3f}s")
        else:
            log(f"  life-{mode} M={m:<3} {c.name:4}: {counts}")

    # -- memory -------------------------------------------------------------
    def memory(self):
        k = self.cfg["k"]
        cs = [c for c in self.contestants if c.name != "runc"]
        st = {}
        for c in cs:
            if c.dirty:
                self.recover(c, "dirty")
            cid = "mem-" + c.name
            shim = c.start_container(cid)
            st[c.name] = {"cid": cid, "shim": shim, "done": 0, "ok": 0, "stalled": False, "phases": {},
                          "cpu_ns": 0.0, "child_ns": 0.0, "wall_s": 0.0, "execs": 0, "counts": {}}
        time.sleep(2)
        for c in cs:
            st[c.name]["phases"]["idle"] = mem_snapshot(st[c.name]["shim"])
        chunk = 100
        marks = {100: "after_100", k: f"after_{k}"}
        done = 0
        while done < k:
            step = min(chunk, k - done)
            for c in cs:  # interleaved: one chunk each, in turn
                s = st[c.name]
                if s["stalled"]:
                    continue
                jobs = [{"id": f"m{done + i}", "argv": c.exec_argv(s["cid"], f"m{done + i}", ["true"])}
                        for i in range(1, step + 1)]
                a = cpu_snapshot(s["shim"])
                res, stalled = run_jobs(jobs, self.cfg["stall"], inflight=self.cfg["mem_conc"])
                b = cpu_snapshot(s["shim"])
                own, child, _ = cpu_delta(a, b)
                for r in res:
                    s["counts"][r["status"]] = s["counts"].get(r["status"], 0) + 1
                s["ok"] += sum(r["status"] == "ok" for r in res)
                if done >= 100:  # steady state: after the first 100
                    s["cpu_ns"] += own or 0
                    s["child_ns"] += child or 0
                    s["execs"] += step
                    s["wall_s"] += max(r.get("t1", 0) for r in res) - min(r["t0"] for r in res if "t0" in r)
                if stalled:
                    s["stalled"] = True
                    c.dirty = True
                    log(f"{c.name}: memory run STALLED after {done} execs: {s['counts']}")
            done += step
            if done in marks:
                time.sleep(2)
                for c in cs:
                    s = st[c.name]
                    if not s["stalled"]:
                        s["phases"][marks[done]] = mem_snapshot(s["shim"])
                        log(f"  memory {c.name:4} {marks[done]}: {s['phases'][marks[done]]}")
            elif done % 1000 == 0:
                log(f"  memory: {done}/{k} execs")
        for c in cs:
            s = st[c.name]
            rec = {"scenario": "memory", "contestant": c.name, "rep": 1, "k": k, "inflight": self.cfg["mem_conc"],
                   "phases": s["phases"], "counts": s["counts"], "ok": s["ok"], "stalled": s["stalled"]}
            if s["execs"]:
                rec["steady"] = {"execs": s["execs"], "execs_per_s": s["execs"] / s["wall_s"] if s["wall_s"] else None,
                                 "shim_cpu_ms_per_exec": s["cpu_ns"] / s["execs"] / 1e6,
                                 "runc_cpu_ms_per_exec": s["child_ns"] / s["execs"] / 1e6}
            if not s["stalled"]:
                try:
                    if not c.stop_container(s["cid"]):
                        c.dirty = True
                except BenchError:
                    c.dirty = True
            self.save_run(rec)
            self.results["memory"][c.name] = rec
            log(f"  memory {c.name}: {rec.get('steady')}")

    # -- the whole run --------------------------------------------------------
    def main(self):
        cfg = self.cfg
        for c in self.contestants:
            c.up()
        order = list(self.contestants)
        for rep in range(1, cfg["reps"] + 1):
            rot = (rep - 1) % len(order)
            rnd = order[rot:] + order[:rot]
            log(f"=== repetition {rep}/{cfg['reps']} (order: {' '.join(c.name for c in rnd)})")
            for n in cfg["n"]:
                for c in rnd:
                    self.guard(c, f"storm N={n} rep {rep}", self.execs, c, rep, n, False)
            for n in cfg["n"]:
                for c in rnd:
                    self.guard(c, f"output N={n} rep {rep}", self.execs, c, rep, n, True)
            for mode in ("seq", "conc"):
                for c in rnd:
                    self.guard(c, f"lifecycle {mode} rep {rep}", self.lifecycle, c, rep, mode)
        log(f"=== memory: idle, after 100 and after {cfg['k']} execs ({cfg['mem_conc']} in flight)")
        self.guard(None, "memory", self.memory)

    def guard(self, c, what, fn, *a):
        """Runs one measurement; a failure is recorded and the run goes on."""
        try:
            fn(*a)
        except BenchError as e:
            log(f"{c.name if c else 'bench'}: {what} failed: {e}")
            self.errors.append(f"{c.label if c else 'bench'}: {what}: {e}")
            for x in [c] if c else self.contestants:
                x.dirty = True
            self.failures += 1
            if self.failures > 20:
                raise BenchError("too many failures; giving up") from e


# --------------------------------------------------------------------------
# report


def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "—"
    return f"{x:.{nd}f}"


def ratio(a, b, nd=2):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{nd}f}×"


class Report:
    def __init__(self, results, cfg, meta, names):
        self.r, self.cfg, self.meta, self.names = results, cfg, meta, names
        self.labels = {"ours": "ours", "go": GO_LABEL, "runc": "runc floor"}

    def recs(self, kind, c, n=None):
        return [x for x in self.r[kind] if x["contestant"] == c and (n is None or x.get("n") == n)]

    def agg_exec(self, kind, c, n):
        rs = self.recs(kind, c, n)
        if not rs:
            return None
        good = [x for x in rs if not x["stalled"]]
        a = {"reps": len(rs), "stalled_reps": len(rs) - len(good), "n": n,
             "total": sum(x["n"] for x in rs), "ok": sum(x["ok"] for x in rs)}
        tot = {}
        for x in rs:
            for k, v in x["counts"].items():
                tot[k] = tot.get(k, 0) + v
        a["counts"] = tot
        a["ok_before_stall"] = [x["ok"] for x in rs if x["stalled"]]
        a["stall_after_s"] = [x["wall_s"] for x in rs if x["stalled"]]
        for k in ("execs_per_s", "p50_ms", "p99_ms", "mean_ms"):
            a[k] = median([x.get(k) for x in good])
        a["max_ms"] = max((x["max_ms"] for x in good if "max_ms" in x), default=None)
        a["p99_over_p50"] = [x["p99_ms"] / x["p50_ms"] if x.get("p50_ms") else None for x in good]
        a["cpu"] = {k: median([x["cpu_ms_per_exec"][k] for x in good]) for k in
                    ("shim", "containerd", "runc", "ctr", "machine", "other")}
        if kind == "output":
            q = {}
            for x in rs:
                for k, v in x.get("output", {}).items():
                    q[k] = q.get(k, 0) + v
            a["output"] = q
        return a

    def agg_life(self, c, mode):
        rs = [x for x in self.r["lifecycle"] if x["contestant"] == c and x["scenario"] == "lifecycle-" + mode]
        if not rs:
            return None
        lat = [s["wall"] for x in rs for s in x["samples"] if s["status"] == "ok"]
        a = {"reps": len(rs), "stalled_reps": sum(x["stalled"] for x in rs), "total": sum(x["m"] for x in rs),
             "ok": len(lat), "wall_s": median([x["wall_s"] for x in rs])}
        if lat:
            a.update(mean_s=statistics.mean(lat), p50_s=percentile(lat, 50), p99_s=percentile(lat, 99),
                     max_s=max(lat))
        return a

    def stall_note(self, a):
        done = "/".join(str(x) for x in a["ok_before_stall"])
        return f"stalled {a['stalled_reps']}/{a['reps']} ({done} of {a['n']} done)"

    def exec_table(self, kind):
        cols = ["N", "contestant", "ok", "execs/s", "p50 ms", "p99 ms", "max ms", "p99/p50",
                "shim ms/exec", "containerd ms/exec", "runc ms/exec", "ctr ms/exec", "other ms/exec"]
        if kind == "output":
            cols = ["N", "contestant", "ok", "exact", "lost", "truncated", "corrupted", "execs/s", "p50 ms",
                    "p99 ms", "max ms", "shim ms/exec"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        agg = {}
        for n in self.cfg["n"]:
            for c in self.names:
                a = self.agg_exec(kind, c, n)
                if a is None:
                    continue
                agg[(c, n)] = a
                ok = f"{a['ok']}/{a['total']}"
                bad = {k: v for k, v in a["counts"].items() if k != "ok"}
                if bad:
                    ok += " (" + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())) + ")"
                eps = fmt(a["execs_per_s"]) if not a["stalled_reps"] else self.stall_note(a)
                if a["stalled_reps"] and a["execs_per_s"] is not None:
                    eps += f"; others {fmt(a['execs_per_s'])}"
                cpu = a["cpu"]
                r99 = [x for x in a["p99_over_p50"] if x is not None]
                row = [str(n), self.labels[c], ok]
                if kind == "storm":
                    row += [eps, fmt(a["p50_ms"]), fmt(a["p99_ms"]), fmt(a["max_ms"]),
                            fmt(max(r99), 2) if r99 else "—",
                            fmt(cpu["shim"], 3), fmt(cpu["containerd"], 2), fmt(cpu["runc"], 2),
                            fmt(cpu["ctr"], 2), fmt(cpu["other"], 2)]
                else:
                    q = a["output"]
                    row += [str(q.get("exact", 0)), str(q.get("lost", 0)), str(q.get("truncated", 0)),
                            str(q.get("corrupted", 0)), eps, fmt(a["p50_ms"]), fmt(a["p99_ms"]),
                            fmt(a["max_ms"]), fmt(cpu["shim"], 3)]
                lines.append("| " + " | ".join(row) + " |")
            ours = agg.get(("ours", n))
            for other in ("go", "runc"):
                o = agg.get((other, n))
                if not ours or not o:
                    continue
                label = f"ours/{self.labels[other]}"
                if o["stalled_reps"] == o["reps"]:
                    row = [str(n), label, "", f"{self.labels[other]} stalled"] + [""] * (len(cols) - 4)
                else:
                    if kind == "storm":
                        row = [str(n), label, "", ratio(ours["execs_per_s"], o["execs_per_s"]),
                               ratio(ours["p50_ms"], o["p50_ms"]), ratio(ours["p99_ms"], o["p99_ms"]),
                               ratio(ours["max_ms"], o["max_ms"]), "",
                               ratio(ours["cpu"]["shim"], o["cpu"]["shim"]),
                               ratio(ours["cpu"]["containerd"], o["cpu"]["containerd"]),
                               ratio(ours["cpu"]["runc"], o["cpu"]["runc"]),
                               ratio(ours["cpu"]["ctr"], o["cpu"]["ctr"]), ""]
                    else:
                        row = [str(n), label, "", "", "", "", "", ratio(ours["execs_per_s"], o["execs_per_s"]),
                               ratio(ours["p50_ms"], o["p50_ms"]), ratio(ours["p99_ms"], o["p99_ms"]),
                               ratio(ours["max_ms"], o["max_ms"]), ratio(ours["cpu"]["shim"], o["cpu"]["shim"])]
                    if o["stalled_reps"]:
                        row[1] += f" ({self.labels[other]} stalled {o['stalled_reps']}/{o['reps']}; others only)"
                lines.append("| " + " | ".join(f"*{x}*" if x else "" for x in row) + " |")
        return lines, agg

    def life_table(self):
        cols = ["", "contestant", "ok", "mean s", "p50 s", "p99 s", "max s", "wall s (median rep)"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        agg = {}
        for mode, title in (("seq", f"sequential ×{self.cfg['seq']}"), ("conc", f"{self.cfg['conc']} at once")):
            for c in self.names:
                a = self.agg_life(c, mode)
                if a is None:
                    continue
                agg[(c, mode)] = a
                ok = f"{a['ok']}/{a['total']}" + (f" (stalled {a['stalled_reps']}/{a['reps']})" if a["stalled_reps"] else "")
                lines.append("| " + " | ".join([title, self.labels[c], ok, fmt(a.get("mean_s"), 3),
                                                fmt(a.get("p50_s"), 3), fmt(a.get("p99_s"), 3),
                                                fmt(a.get("max_s"), 3), fmt(a["wall_s"], 2)]) + " |")
            ours = agg.get(("ours", mode))
            for other in ("go", "runc"):
                o = agg.get((other, mode))
                if ours and o:
                    row = [title, f"ours/{self.labels[other]}", "", ratio(ours.get("mean_s"), o.get("mean_s")),
                           ratio(ours.get("p50_s"), o.get("p50_s")), ratio(ours.get("p99_s"), o.get("p99_s")),
                           ratio(ours.get("max_s"), o.get("max_s")), ratio(ours["wall_s"], o["wall_s"])]
                    lines.append("| " + " | ".join(f"*{x}*" if x else "" for x in row) + " |")
        return lines, agg

    def mem_table(self):
        k = self.cfg["k"]
        phases = [("idle", "idle"), ("after_100", "after 100 execs"), (f"after_{k}", f"after {k} execs")]
        mem = self.r["memory"]
        names = [c for c in self.names if c in mem]
        cols = ["", "metric"] + [self.labels[c] for c in names]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for key, title in phases:
            for m, mt in (("rss_kib", "RSS MiB"), ("rss_anon_kib", "of which anonymous MiB"),
                          ("rss_file_kib", "of which file-backed MiB (binary, libc)"), ("pss_kib", "PSS MiB"),
                          ("threads", "threads"), ("fds", "fds"), ("zombies", "zombie children")):
                row = [title, mt]
                for c in names:
                    v = mem[c]["phases"].get(key, {}).get(m)
                    if v is None:
                        row.append("stalled" if mem[c]["stalled"] else "—")
                    elif m.endswith("kib"):
                        row.append(f"{v / 1024:.2f}")
                    else:
                        row.append(str(v))
                lines.append("| " + " | ".join(row) + " |")
        for m, mt in (("execs_per_s", f"execs/s ({self.cfg['mem_conc']} in flight, after the first 100)"),
                      ("shim_cpu_ms_per_exec", "shim CPU ms/exec (same)"),
                      ("runc_cpu_ms_per_exec", "runc CPU ms/exec (same)")):
            row = ["steady state", mt]
            for c in names:
                v = mem[c].get("steady", {}).get(m)
                row.append(fmt(v, 3 if "cpu" in m else 1))
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def budgets(self, storm, life, out_agg):
        rows = []
        k = self.cfg["k"]

        def add(name, verdict, detail):
            rows.append(f"| {name} | {verdict} | {detail} |")

        # 1. no stall, p99 <= 2 x p50 at N=50 and N=100 in every repetition
        parts, good = [], True
        for n in (50, 100):
            recs = self.recs("storm", "ours", n)
            if not recs:
                parts.append(f"N={n} not run")
                continue
            rat = []
            for x in recs:
                if x["stalled"] or not x.get("p50_ms") or x["ok"] < x["n"]:
                    good = False
                    rat.append(f"rep {x['rep']}: {x['counts']}")
                else:
                    v = x["p99_ms"] / x["p50_ms"]
                    good = good and v <= 2.0
                    rat.append(f"{v:.2f}")
            parts.append(f"N={n}: p99/p50 = " + ", ".join(rat))
        measured = any(self.recs("storm", "ours", n) for n in (50, 100))
        add("no stall; p99 ≤ 2 × p50 at N=50 and N=100, every repetition",
            ("met" if good else "**not met**") if measured else "not measured", "; ".join(parts))

        # 2. N=100 throughput >= 10 x Go's, and >= 90 % of the CPU bound
        o, g = storm.get(("ours", 100)), storm.get(("go", 100))
        if not o:
            add("N=100 throughput ≥ 10 × Go shim's", "not measured", "N=100 not in BENCH_N")
        elif not g:
            add("N=100 throughput ≥ 10 × Go shim's", "not measured", "Go shim skipped (BENCH_GO=0)")
        elif g["stalled_reps"] == g["reps"]:
            ok = not o["stalled_reps"] and o["ok"] == o["total"]
            add("N=100 throughput ≥ 10 × Go shim's", "met (Go stalled)" if ok else "**not met**",
                f"ours {fmt(o['execs_per_s'])} execs/s; Go stalled in {g['stalled_reps']}/{g['reps']} reps "
                f"({'/'.join(str(x) for x in g['ok_before_stall'])} of 100 done, then no progress for "
                f"{self.cfg['stall']} s)")
        else:
            v = o["execs_per_s"] / g["execs_per_s"] if o["execs_per_s"] and g["execs_per_s"] else None
            note = f"; Go stalled {g['stalled_reps']}/{g['reps']} reps" if g["stalled_reps"] else ""
            add("N=100 throughput ≥ 10 × Go shim's", "met" if v and v >= 10 else "**not met**",
                f"ours {fmt(o['execs_per_s'])} vs Go {fmt(g['execs_per_s'])} execs/s = {fmt(v, 2)}×{note}")
        if o:
            cpu = o["cpu"]
            parts = [cpu.get("ctr"), cpu.get("containerd"), cpu.get("runc")]
            if None not in parts and sum(parts) > 0:
                bound = NCPU * 1000.0 / sum(parts)
                v = o["execs_per_s"] / bound if o["execs_per_s"] else 0
                add("N=100 throughput ≥ 90 % of the CPU bound of ctr + containerd + runc",
                    "met" if v >= 0.9 else "**not met**",
                    f"{fmt(o['execs_per_s'])} execs/s = {v * 100:.0f} % of {NCPU} cores / "
                    f"({fmt(parts[0], 2)} + {fmt(parts[1], 2)} + {fmt(parts[2], 2)}) ms = {fmt(bound)} execs/s")

        # 3. shim CPU <= 0.5 ms per exec
        vals = [(n, storm[("ours", n)]["cpu"]["shim"]) for n in self.cfg["n"]
                if ("ours", n) in storm and storm[("ours", n)]["cpu"]["shim"] is not None]
        steady = self.r["memory"].get("ours", {}).get("steady", {}).get("shim_cpu_ms_per_exec")
        if vals:
            worst = max(v for _, v in vals)
            allv = [v for _, v in vals] + ([steady] if steady is not None else [])
            add("shim CPU ≤ 0.5 ms per exec", "met" if max(allv) <= 0.5 else "**not met**",
                ", ".join(f"N={n}: {v:.3f}" for n, v in vals) +
                (f"; steady state over {k - 100} execs: {steady:.3f}" if steady is not None else "") +
                f" ms (worst {max(worst, steady or 0):.3f})")

        # 4. sequential start+stop <= 0.6 x Go's
        o, g = life.get(("ours", "seq")), life.get(("go", "seq"))
        if o and g and o.get("mean_s") and g.get("mean_s"):
            v = o["mean_s"] / g["mean_s"]
            add("sequential start+stop ≤ 0.6 × Go shim's", "met" if v <= 0.6 else "**not met**",
                f"mean {o['mean_s'] * 1e3:.0f} ms vs {g['mean_s'] * 1e3:.0f} ms = {v:.2f}×")
        else:
            add("sequential start+stop ≤ 0.6 × Go shim's", "not measured", "needs the Go shim")

        # 5./6. memory
        m = self.r["memory"].get("ours")
        if m:
            ph = m["phases"]
            idle = ph.get("idle")
            if idle:
                ok = idle["rss_kib"] <= 2048 and idle["threads"] <= 2
                add("idle RSS ≤ 2 MiB with ≤ 2 threads", "met" if ok else "**not met**",
                    f"RSS {idle['rss_kib'] / 1024:.2f} MiB (PSS {idle['pss_kib'] / 1024:.2f}), "
                    f"{idle['threads']} threads, {idle['fds']} fds")
            a100, ak = ph.get("after_100"), ph.get(f"after_{k}")
            if a100:
                add("RSS ≤ 3 MiB after 100 execs", "met" if a100["rss_kib"] <= 3072 else "**not met**",
                    f"RSS {a100['rss_kib'] / 1024:.2f} MiB, {a100['threads']} threads, {a100['fds']} fds")
            if a100 and ak:
                grow = ak["rss_kib"] - a100["rss_kib"]
                flat = grow <= max(64, 0.05 * a100["rss_kib"])
                fdz = ak["fds"] - a100["fds"], ak["zombies"] - a100["zombies"]
                add(f"RSS flat after {k} execs (≤ 5 % over the 100-exec figure), no fd/zombie growth",
                    "met" if flat and fdz[0] <= 0 and fdz[1] <= 0 else "**not met**",
                    f"RSS {ak['rss_kib'] / 1024:.2f} MiB ({grow:+d} KiB), fds {fdz[0]:+d}, zombies {fdz[1]:+d}" +
                    ("" if k >= 10000 else " (issue 6 asks for 10 000: BENCH_LONG=1)"))

        # 7. zero lost or corrupted output
        tot = {}
        for (c, n), a in out_agg.items():
            if c == "ours":
                for kk, v in a["output"].items():
                    tot[kk] = tot.get(kk, 0) + v
        if tot:
            bad = tot.get("lost", 0) + tot.get("truncated", 0) + tot.get("corrupted", 0)
            gtot = {}
            for (c, n), a in out_agg.items():
                if c == "go":
                    for kk, v in a["output"].items():
                        gtot[kk] = gtot.get(kk, 0) + v
            gnote = (f"; Go shim: {gtot.get('exact', 0)} exact, {gtot.get('lost', 0)} lost, "
                     f"{gtot.get('truncated', 0)} truncated, {gtot.get('corrupted', 0)} corrupted, "
                     f"{gtot.get('failed', 0)} failed or stalled") if gtot else ""
            add("zero lost or corrupted output", "met" if bad == 0 and not tot.get("failed") else "**not met**",
                f"ours: {tot.get('exact', 0)} exact, {tot.get('lost', 0)} lost, {tot.get('truncated', 0)} truncated, "
                f"{tot.get('corrupted', 0)} corrupted, {tot.get('failed', 0)} failed{gnote}")
        return ["| budget (issue 6) | verdict | numbers |", "|---|---|---|"] + rows

    def markdown(self):
        m, cfg = self.meta, self.cfg
        L = [f"### Results of {m['date']}", "",
             f"Machine: {m['machine']}. Load average before/after: {m['loadavg_before']} / "
             f"{m.get('loadavg_after', '?')}. Command: `{m['command']}`. Shim: `{m['shim']}` (sha256 {m['shim_sha256'][:12]}, "
             f"git {m['git']}). Run took {m.get('duration_s', 0) / 60:.1f} min.", "",
             f"Config: N = {', '.join(map(str, cfg['n']))}; {cfg['reps']} repetition(s), contestants "
             f"interleaved (order rotated each repetition); lifecycle {cfg['seq']} sequential and {cfg['conc']} "
             f"at once per repetition; memory after {cfg['k']} execs ({cfg['mem_conc']} in flight); every call "
             f"`timeout -k 5 {cfg['timeout']}`, stall = no exec finished for {cfg['stall']} s.", ""]
        storm_lines, storm = self.exec_table("storm")
        out_lines, out_agg = self.exec_table("output")
        life_lines, life = self.life_table()
        L += ["#### Budgets", ""] + self.budgets(storm, life, out_agg) + [""]
        L += ["#### Exec storm: N concurrent `ctr tasks exec --exec-id ID CTR true` on one running container "
              "(runc floor: `runc exec CTR true`)", "",
              "Median over repetitions (max ms: worst of all; p99/p50: worst repetition). Latency = wall time of "
              "each ctr (runc) process; execs/s = N / (first start to last exit). CPU per exec: shim and "
              "containerd from /proc/PID/task/*/schedstat; runc = the shim's cutime+cstime (every runc call and "
              "the exec'd `true`, in 10 ms ticks, so coarse at N=1; for the floor: rusage of the runc processes); ctr = rusage of the ctr "
              "processes; other = machine busy time (/proc/stat) minus all that (noise). Ratio rows "
              "(*italic*): ours ÷ other; > 1 is better for execs/s, < 1 is better for times and CPU.", ""]
        L += storm_lines + [""]
        L += [f"#### Exec with output: N concurrent execs each printing {OUT_BYTES // 1024} KiB of its own id "
              "(`sh -c 'yes ID | head -c 65536'`), compared byte for byte", "",
              "lost = no output at all; truncated = a strict prefix; corrupted = anything else that is not exact.",
              ""]
        L += out_lines + [""]
        L += ["#### Lifecycle: `ctr run --rm IMG ID true` (create + start + exit + delete; runc floor: "
              "`runc run -b BUNDLE ID`)", ""]
        L += life_lines + [""]
        if self.r["memory"]:
            L += ["#### Shim memory (one container; /proc/PID/status VmRSS, smaps_rollup Pss, 2 s after "
                  "each phase)", ""]
            L += self.mem_table() + [""]
        if m.get("notes"):
            L += ["Notes:", ""] + [f"- {x}" for x in m["notes"]] + [""]
        return "\n".join(L)


# --------------------------------------------------------------------------


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
    global LOGF
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
    LOGF = open(os.path.join(args.out, "bench.log"), "a")

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


if __name__ == "__main__":
    sys.exit(main())
