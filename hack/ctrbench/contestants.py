"""The contestants: a private containerd (ours or the Go shim) and the bare runc floor."""

import json
import os
import shutil
import signal
import subprocess
import time

from .common import IMAGE, NS, BenchError, log, run
from .measure import proc_stat


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
