#!/usr/bin/env bash
# Usage: reap-run hack/demo.sh [SHIM_DIR]      (normally via `make demo`)
#
# End-to-end demo against a private containerd (hack/containerd-up.sh):
# builds a busybox image, imports it, streams `ctr events`, then
#   1. ctr run --rm ... sh -c 'echo hello from $(hostname); exit 3'  -> exit 3
#   2. ctr run --rm ... sleep 1000, killed by `ctr tasks kill -s SIGKILL` -> 137
#   3. exec storm: DEMO_EXEC_N (default 50) concurrent `ctr tasks exec` in one
#      container, exec N exits N%7; counts ok/failed and wall time
#      (skip with DEMO_EXEC=0)
#   4. a Kubernetes-style pod through CRI on containerd 2.1 (a second private
#      containerd, CONTAINERD_CRI=1): pause + 3 containers created with the
#      kubelet's calls by target/debug/cri-demo (a k8s-cri client), once with
#      this shim (handler runc, runtime_path) and once with containerd 2.1's Go
#      shim (handler go-runc), printing each shim's memory for the pod (PSS)
#      (skip with DEMO_CRI=0)
# Every ctr call is bounded by DEMO_CTR_TIMEOUT seconds (default 30; exit
# code 124 means it timed out, 137 that it then had to be SIGKILLed).
# prints the recorded events and always tears everything down
# (hack/containerd-down.sh), on failure too. SHIM_DIR holds the
# containerd-shim-runc-v2 to test (e.g. target/release); without it the
# system (Go) shim is used. Exits non-zero if any check failed.
# Shims are orphaned daemons: run under a subreaper (reap-run) when the
# machine's init does not reap orphans.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHIM_DIR=${1:-}
DEMO_EXEC=${DEMO_EXEC:-1}
N=${DEMO_EXEC_N:-50}
CTR_TIMEOUT=${DEMO_CTR_TIMEOUT:-30}
NS=demo
IMAGE=docker.io/library/shimtest:latest

if [[ -n "$SHIM_DIR" ]]; then
	[[ -x "$SHIM_DIR/containerd-shim-runc-v2" ]] || {
		echo "demo: $SHIM_DIR/containerd-shim-runc-v2 not found (build it first)" >&2
		exit 2
	}
	SHIM_DIR=$(realpath "$SHIM_DIR")
fi

step() { printf '\n==> %s\n' "$*"; }
failures=0
check() { # description command...: PASS if the command succeeds
	local desc=$1
	shift
	if "$@"; then
		echo "  PASS: $desc"
	else
		echo "  FAIL: $desc"
		failures=$((failures + 1))
	fi
}

step "installing dependencies (if missing)"
"$here/install-deps.sh"

WORK=$(mktemp -d /tmp/shimdemo.XXXXXX)
D="$WORK/c"
EVENTS_PID=""
D2=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	# Stop our background jobs (event stream, in-flight ctr calls) first.
	local j
	for j in $(jobs -p); do
		pkill -TERM -P "$j" 2>/dev/null || true
		kill -TERM "$j" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	step "tearing down (hack/containerd-down.sh)"
	if ! "$here/containerd-down.sh" "$D"; then
		echo "demo: containerd-down failed" >&2
		rc=1
	fi
	if [[ -n "$D2" ]] && ! "$here/containerd-down.sh" "$D2"; then
		echo "demo: containerd-down (CRI) failed" >&2
		rc=1
	fi
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every ctr call is time-bounded: a wedged shim must not hang the demo.
ctrd() { timeout -k 5 "$CTR_TIMEOUT" "$here/ctr.sh" "$D" -n "$NS" "$@" </dev/null; }
show() { # print a ctr command line, shell-quoted for reading
	local a out="\$ ctr -n $NS"
	for a in "$@"; do
		if [[ "$a" =~ ^[A-Za-z0-9_./:=%@+-]+$ ]]; then
			out+=" $a"
		else
			out+=" '${a//\'/\'\\\'\'}'"
		fi
	done
	printf '%s\n' "$out"
}

task_status() { # id -> RUNNING/STOPPED/CREATED/... or empty
	ctrd tasks ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'
}
wait_status() { # id status timeout_s
	local deadline=$((SECONDS + $3))
	while [[ "$(task_status "$1")" != "$2" ]]; do
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

step "building image $IMAGE"
"$here/mkimage.sh" "$WORK/image.tar" "$IMAGE"

step "starting private containerd in $D${SHIM_DIR:+ with shim from $SHIM_DIR}"
"$here/containerd-up.sh" "$D" "$SHIM_DIR"
echo "shim binary: $(<"$D/shim-path")"

step "importing image"
show images import "$WORK/image.tar"
ctrd images import "$WORK/image.tar"

step "streaming events to $WORK/events.log"
"$here/ctr.sh" "$D" events </dev/null >"$WORK/events.log" 2>&1 &
EVENTS_PID=$!
sleep 0.3

# 1 -----------------------------------------------------------------------
step "1. run --rm, exit code propagation"
# shellcheck disable=SC2016 # $(hostname) is expanded inside the container
cmd=(sh -c 'echo hello from $(hostname); exit 3')
show run --rm "$IMAGE" hello "${cmd[@]}"
set +e
out=$(ctrd run --rm "$IMAGE" hello "${cmd[@]}" 2>&1)
rc=$?
set -e
printf '%s\n' "$out" | sed 's/^/  | /'
echo "  exit code: $rc"
check "output contains 'hello from'" grep -q "hello from " <<<"$out"
check "exit code is 3" test "$rc" -eq 3

# 2 -----------------------------------------------------------------------
step "2. SIGKILL a running container"
show run --rm "$IMAGE" sleeper sleep 1000
ctrd run --rm "$IMAGE" sleeper sleep 1000 >"$WORK/sleeper.out" 2>&1 &
run_pid=$!
if wait_status sleeper RUNNING 20; then
	ctrd tasks ls | sed 's/^/  | /' || true
	show tasks kill -s SIGKILL sleeper
	ctrd tasks kill -s SIGKILL sleeper || true
else
	echo "  sleeper never reached RUNNING"
fi
set +e
wait "$run_pid"
rc=$?
set -e
echo "  ctr run exit code: $rc"
check "killed container exits 137" test "$rc" -eq 137

# 3 -----------------------------------------------------------------------
if [[ "$DEMO_EXEC" != 0 ]]; then
	step "3. exec storm: $N concurrent execs (exec eN exits N%7)"
	show run -d "$IMAGE" storm sleep 1000
	ctrd run -d "$IMAGE" storm sleep 1000
	bundle="$D/state/io.containerd.runtime.v2.task/$NS/storm"
	[[ -r "$bundle/shim-binary-path" ]] && echo "  shim serving 'storm': $(<"$bundle/shim-binary-path")"
	if wait_status storm RUNNING 20; then
		mkdir -p "$WORK/exec"
		echo "\$ ctr -n $NS tasks exec --exec-id eN storm sh -c 'exit N%7'   # N=1..$N, all at once"
		start=$(date +%s.%N)
		pids=()
		for ((n = 1; n <= N; n++)); do
			(
				set +e
				ctrd tasks exec --exec-id "e$n" storm sh -c "exit $((n % 7))" \
					>"$WORK/exec/$n.out" 2>&1
				echo $? >"$WORK/exec/$n.rc"
			) &
			pids+=($!)
		done
		wait "${pids[@]}" || true
		end=$(date +%s.%N)
		ok=0
		bad=0
		for ((n = 1; n <= N; n++)); do
			got=$(cat "$WORK/exec/$n.rc" 2>/dev/null || echo none)
			if [[ "$got" == "$((n % 7))" ]]; then
				ok=$((ok + 1))
			else
				bad=$((bad + 1))
				if ((bad <= 5)); then
					case "$got" in
					124) got="124 (ctr timed out after ${CTR_TIMEOUT}s)" ;;
					137) got="137 (ctr killed: ignored SIGTERM after timing out)" ;;
					esac
					echo "  exec e$n: want $((n % 7)), got $got: $(head -c 300 "$WORK/exec/$n.out" | tr '\n' ' ')"
				fi
			fi
		done
		awk -v s="$start" -v e="$end" -v ok="$ok" -v bad="$bad" \
			'BEGIN { printf "  execs ok: %d, failed: %d, wall time: %.2fs\n", ok, bad, e - s }'
		check "all $N execs returned N%7" test "$bad" -eq 0
		check "storm container still running after the storm" test "$(task_status storm)" == RUNNING
	else
		check "storm container reached RUNNING" false
	fi
	show tasks kill -s SIGKILL storm
	if ctrd tasks kill -s SIGKILL storm && wait_status storm STOPPED 20; then
		show tasks delete storm
		ctrd tasks delete storm 2>&1 | sed 's/^/  | /' || true
		show containers delete storm
		ctrd containers delete storm || true
	else
		echo "  storm did not stop (wedged shim?); leaving it to containerd-down"
	fi
else
	step "3. exec storm skipped (DEMO_EXEC=0)"
fi

# 4 -----------------------------------------------------------------------
if [[ "${DEMO_CRI:-1}" != 0 ]]; then
	step "4. a Kubernetes pod through CRI on containerd 2.1: pause + 3 containers, this shim beside the Go one"
	CRI_DEMO=${CRI_DEMO:-$here/../target/debug/cri-demo}
	D2="$WORK/k"
	if [[ ! -x "$CRI_DEMO" ]]; then
		check "cri-demo client built ($CRI_DEMO)" false
	elif CONTAINERD_CRI=1 CONTAINERD_VERSION=2 "$here/containerd-up.sh" "$D2" "$SHIM_DIR"; then
		check "pod of 3 containers through CRI, with this shim and with the Go shim" \
			timeout -k 5 300 "$CRI_DEMO" "$D2/containerd.sock" runc go-runc
	else
		check "CRI containerd 2.1 started" false
	fi
else
	step "4. CRI pod skipped (DEMO_CRI=0)"
fi

# events ------------------------------------------------------------------
sleep 0.3
kill "$EVENTS_PID" 2>/dev/null || true
wait "$EVENTS_PID" 2>/dev/null || true
EVENTS_PID=""
step "recorded event stream ($(wc -l <"$WORK/events.log") events)"
cut -c1-200 "$WORK/events.log" | sed 's/^/  | /'
echo "  topic counts:"
grep -oE ' /[a-z]+/[a-z-]+(/[a-z-]+)? ' "$WORK/events.log" | sort | uniq -c | sort -rn | sed 's/^/  /' || true

step "summary"
if ((failures == 0)); then
	echo "demo: all checks passed"
else
	echo "demo: $failures check(s) FAILED"
	exit 1
fi
