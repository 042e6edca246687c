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

Modules: common (configuration, logging, helpers), measure (/proc readers and the
bounded job runner), contestants (private containerds, the runc floor), scenarios
(the measurements and the run), report (tables, ratios, budgets), cli (entry point).
"""
