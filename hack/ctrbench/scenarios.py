"""The scenarios (exec storm, exec with output, lifecycle, memory) and the run over them."""

import os
import shutil
import statistics
import time

from .common import GO_LABEL, OUT_BYTES, BenchError, log, percentile, write_json
from .contestants import Containerd, RuncFloor
from .measure import cpu_delta, cpu_snapshot, machine_busy_ns, mem_snapshot, run_jobs
from .report import fmt


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
