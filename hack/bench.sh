#!/usr/bin/env bash
# Usage: reap-run hack/bench.sh [SHIM_DIR]      (normally via `make bench`)
#
# Benchmarks our shim (SHIM_DIR/containerd-shim-runc-v2, default
# target/release) against the Go shim of the same containerd (CONTAINERD_VERSION,
# default 2 = containerd 2.1) and bare runc, each through its own
# private containerd (hack/containerd-up.sh), round by round: exec storm, exec
# with 64 KiB output (byte-exact check), lifecycle (ctr run --rm, sequential
# and concurrent), shim memory (idle / 100 / K execs). Prints a markdown table
# with ratios and the issue-6 budgets; writes results.md, results.json and
# runs/*.json to BENCH_OUT (default /tmp/shim-bench-<date>). Orchestration,
# statistics and the report are in hack/bench.py (the package hack/ctrbench/).
#
# Environment:
#   BENCH_N="1 10 50 100"  concurrency levels     BENCH_REPS=3   repetitions
#   BENCH_QUICK=1   smoke run: N=1,10,50, 1 rep, K=200
#   BENCH_K=1000    execs for the memory test     BENCH_LONG=1   K=10000
#   BENCH_GO=0      skip the Go shim              BENCH_RUNC=0   skip the runc floor
#   BENCH_SEQ=20 BENCH_CONC=10   lifecycle: sequential runs, runs at once
#   BENCH_MEM_CONC=10            execs in flight in the memory test
#   BENCH_TIMEOUT=60             bound of every ctr/runc call (timeout -k 5)
#   BENCH_STALL=15               no exec finished for this long = stalled
#   BENCH_OUT=DIR                results directory
#   CONTAINERD_VERSION=2         containerd, ctr and Go shim: 2 (2.1), 1.7, 1.6
# Everything it starts (containerds, shims, runc containers, cgroups, temp
# dirs) is removed on exit, also on failure or Ctrl-C. Run it as root under a
# subreaper (reap-run): shims are orphaned daemons.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
SHIM_DIR=${1:-$root/target/release}

die() {
	echo "bench: $*" >&2
	exit 2
}

[[ $(id -u) -eq 0 ]] || die "run as root (it starts containerd and runc)"
[[ -x "$SHIM_DIR/containerd-shim-runc-v2" ]] ||
	die "$SHIM_DIR/containerd-shim-runc-v2 not found (cargo build --release -p shim)"
SHIM_DIR=$(realpath "$SHIM_DIR")

"$here/install-deps.sh"

# The containerd (and its ctr and Go shim) every containerd contestant runs under:
# CONTAINERD_VERSION=2 (default: 2.1, the current peer), 1.7 or 1.6 (Debian's, historical).
export CONTAINERD_VERSION=${CONTAINERD_VERSION:-2}
vfile=${SHIM_DEPS_DIR:-/var/cache/shim-runc-rs}/containerd/$CONTAINERD_VERSION.version
[[ -s $vfile ]] || die "$vfile missing (hack/install-deps.sh)"
export PATH="$(cut -f3 "$vfile"):$PATH"

OUT=${BENCH_OUT:-/tmp/shim-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

# Short: containerd's socket path (WORK/c-ours/containerd.sock.ttrpc) must fit
# in a unix socket address.
WORK=$(mktemp -d /tmp/sb.XXXXXX)
CGROUP="shimbench-${WORK##*.}" # parent cgroup of the runc floor's containers
PY_PID=""

cleanup() {
	local rc=$? d id
	trap - EXIT INT TERM HUP
	if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
		kill -TERM "$PY_PID" 2>/dev/null || true # it tears down what it started
		wait "$PY_PID" 2>/dev/null || true
	fi
	# Safety net (idempotent): whatever bench.py could not stop.
	for d in "$WORK"/c-*; do
		[[ -e "$d/config.toml" ]] || continue
		"$here/containerd-down.sh" "$d" || rc=1
	done
	if [[ -d "$WORK/rf" ]]; then
		while read -r id; do
			[[ -n "$id" ]] || continue
			echo "bench: runc delete --force $id" >&2
			timeout -k 5 20 runc --root "$WORK/rf" delete --force "$id" >/dev/null 2>&1 || rc=1
		done < <(timeout -k 5 20 runc --root "$WORK/rf" list -q 2>/dev/null || true)
	fi
	while read -r mnt; do
		if [[ -d "$mnt/$CGROUP" ]]; then
			find "$mnt/$CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		fi
	done < <(awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo)
	rm -rf -- "$WORK" || rc=1
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Snapshot the shim: other builds may replace target/release while we run.
mkdir -p "$WORK/shim"
cp "$SHIM_DIR/containerd-shim-runc-v2" "$WORK/shim/"

echo "bench: building image" >&2
"$here/mkimage.sh" "$WORK/image.tar" >/dev/null

# In the background so that a signal to this script is handled at once (the
# trap stops bench.py, which then tears down its containerds).
python3 "$here/bench.py" --work "$WORK" --out "$OUT" --hack "$here" \
	--shim-dir "$WORK/shim" --shim-origin "$SHIM_DIR/containerd-shim-runc-v2" \
	--image "$WORK/image.tar" --cgroup "$CGROUP" --command "${BENCH_COMMAND:-hack/bench.sh $*}" </dev/null &
PY_PID=$!
wait "$PY_PID" # its exit status is ours (set -e; the EXIT trap keeps it)
