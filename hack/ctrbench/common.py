"""Constants, configuration (BENCH_* environment), logging and small helpers."""

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
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
