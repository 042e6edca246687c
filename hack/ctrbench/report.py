"""The report: aggregation over repetitions, markdown tables, ratios and the budgets."""

import math
import statistics

from .common import GO_LABEL, NCPU, OUT_BYTES, median, percentile


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
