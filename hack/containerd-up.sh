#!/usr/bin/env bash
# Usage: hack/containerd-up.sh DIR [SHIM_DIR]
#
# Starts a private containerd whose files all live under DIR:
#   DIR/config.toml      generated config (root=DIR/root, state=DIR/state)
#   DIR/containerd.sock  gRPC socket (ttrpc: DIR/containerd.sock.ttrpc)
#   DIR/containerd.log   daemon log (debug level)
#   DIR/containerd.pid   daemon pid
#   DIR/runc, DIR/fifo   runc state root / IO fifos (used via hack/ctr.sh)
#   DIR/tmp              TMPDIR of containerd, shims and runc
#   DIR/containerd-version  "key<TAB>version<TAB>bin dir" of the containerd run
#   DIR/shim-path        the containerd-shim-runc-v2 containerd finds on its PATH
# CONTAINERD_VERSION=1.6|1.7|2 (default 1.6) picks containerd, ctr and that
# version's Go shim from the bin dir hack/install-deps.sh unpacked
# ($SHIM_DEPS_DIR/containerd/VERSION.version, default /var/cache/shim-runc-rs);
# the config is version 2 for 1.x and version 3 for 2.x. CRI is disabled.
# containerd runs with PATH=[SHIM_DIR:]BIN_DIR:$PATH: with SHIM_DIR the
# `containerd-shim-runc-v2` found there (our build) is used, otherwise the Go
# shim of the chosen version. A restart on an existing DIR keeps the version it
# was first started with unless CONTAINERD_VERSION says otherwise. Talk to it
# with hack/ctr.sh DIR ... (the same version's ctr); stop it with
# hack/containerd-down.sh DIR.
#
# Shim daemons are orphaned by design: run this under a subreaper
# (e.g. `reap-run`) on machines whose init does not reap orphans.
set -euo pipefail

usage() {
	sed -n '2,26s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
[[ "$1" != -* ]] || usage

log() { echo "containerd-up: $*" >&2; }
die() {
	log "$*"
	exit 1
}

DIR=$(realpath -m "$1")
SHIM_DIR=""
if [[ $# -eq 2 && -n "$2" ]]; then
	[[ -d "$2" ]] || die "SHIM_DIR $2 is not a directory"
	SHIM_DIR=$(realpath "$2")
	[[ -x "$SHIM_DIR/containerd-shim-runc-v2" ]] ||
		die "$SHIM_DIR/containerd-shim-runc-v2 is missing or not executable"
fi

# Paths end up in TOML strings and unix socket addresses.
[[ "$DIR" != *[\"\\]* && "$DIR" != *[[:space:]]* ]] || die "DIR must not contain quotes, backslashes or spaces: $DIR"
SOCK="$DIR/containerd.sock"
if ((${#SOCK} + 6 > 107)); then
	die "socket path $SOCK.ttrpc is too long for a unix socket; use a shorter DIR"
fi

mkdir -p "$DIR"
PIDFILE="$DIR/containerd.pid"
if [[ -s "$PIDFILE" ]]; then
	oldpid=$(<"$PIDFILE")
	# A containerd that was SIGKILLed may linger as a zombie until its reaper runs: that is
	# not "running" (restart after a crash keeps DIR's state and starts afresh).
	if [[ "$oldpid" =~ ^[0-9]+$ ]] && kill -0 "$oldpid" 2>/dev/null &&
		[[ "$(cat "/proc/$oldpid/comm" 2>/dev/null)" == containerd ]] &&
		[[ "$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$oldpid/stat" 2>/dev/null)" != Z ]]; then
		die "containerd already running for $DIR (pid $oldpid)"
	fi
	rm -f "$PIDFILE"
fi

# The containerd version: CONTAINERD_VERSION, else the one DIR already ran, else 1.6.
DEPS=${SHIM_DEPS_DIR:-/var/cache/shim-runc-rs}
VERSION=${CONTAINERD_VERSION:-}
if [[ -z "$VERSION" && -s "$DIR/containerd-version" ]]; then
	VERSION=$(cut -f1 "$DIR/containerd-version")
fi
VERSION=${VERSION:-1.6}
case "$VERSION" in
1.6 | 1.7 | 2) ;;
*) die "CONTAINERD_VERSION=$VERSION: expected 1.6, 1.7 or 2" ;;
esac
VFILE="$DEPS/containerd/$VERSION.version"
[[ -s "$VFILE" ]] || die "$VFILE is missing (run hack/install-deps.sh)"
IFS=$'\t' read -r _ FULL_VERSION BIN_DIR <"$VFILE"
for bin in containerd ctr containerd-shim-runc-v2; do
	[[ -x "$BIN_DIR/$bin" ]] || die "$BIN_DIR/$bin not found (run hack/install-deps.sh)"
done
CONTAINERD="$BIN_DIR/containerd"
CTR="$BIN_DIR/ctr"
command -v runc >/dev/null || die "runc not found (run hack/install-deps.sh)"

mkdir -p "$DIR/root" "$DIR/state" "$DIR/runc" "$DIR/fifo" "$DIR/opt" "$DIR/tmp"
chmod 0711 "$DIR"

# Remember what existed before, so containerd-down.sh leaves the machine as
# found: /run/containerd (shim sockets live in /run/containerd/s) and the
# first-level cgroups (runc on cgroup v1 leaves /sys/fs/cgroup/*/NS behind).
if [[ ! -e "$DIR/run-containerd.before" ]]; then
	{
		for d in /run/containerd /run/containerd/s /run/containerd/fifo /run/containerd/runc; do
			[[ -e "$d" ]] && echo "$d"
		done
	} >"$DIR/run-containerd.before" || true
fi
if [[ ! -e "$DIR/cgroups.before" ]]; then
	awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo |
		while read -r mnt; do
			find "$mnt" -mindepth 1 -maxdepth 1 -type d 2>/dev/null || true
		done | sort >"$DIR/cgroups.before"
fi

# Plugins that are not needed or would touch the host. CRI is off (2.x splits it into several
# plugins); 2.x enables NRI by default (a socket in /var/run/nri): off.
CRI_PLUGINS=("io.containerd.grpc.v1.cri")
DISABLED=(
	"io.containerd.snapshotter.v1.aufs"
	"io.containerd.snapshotter.v1.btrfs"
	"io.containerd.snapshotter.v1.devmapper"
	"io.containerd.snapshotter.v1.zfs"
	"io.containerd.tracing.processor.v1.otlp"
	"io.containerd.internal.v1.tracing"
	"io.containerd.nri.v1.nri"
)
if [[ "$VERSION" == 2 ]]; then
	CONFIG_VERSION=3
	CRI_PLUGINS+=("io.containerd.cri.v1.runtime" "io.containerd.cri.v1.images"
		"io.containerd.podsandbox.controller.v1.podsandbox" "io.containerd.sandbox.controller.v1.shim"
		"io.containerd.grpc.v1.sandbox-controllers")
	DISABLED+=("io.containerd.snapshotter.v1.blockfile" "io.containerd.snapshotter.v1.erofs"
		"io.containerd.differ.v1.erofs")
else
	CONFIG_VERSION=2
fi
DISABLED+=("${CRI_PLUGINS[@]}")

{
	echo "# Generated by hack/containerd-up.sh; private containerd $FULL_VERSION under $DIR."
	echo "version = $CONFIG_VERSION"
	echo "root = \"$DIR/root\""
	echo "state = \"$DIR/state\""
	if [[ "$CONFIG_VERSION" == 3 ]]; then echo "temp = \"$DIR/tmp\""; fi
	echo "oom_score = 0"
	echo "disabled_plugins = ["
	printf '  "%s",\n' "${DISABLED[@]}"
	echo "]"
} >"$DIR/config.toml"
cat >>"$DIR/config.toml" <<EOF

[grpc]
  address = "$SOCK"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "debug"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"
EOF
if [[ "$VERSION" != 2 ]]; then
	# The legacy v1 runtime of 1.x (unused, but the tasks service needs it loaded; 2.x has none).
	cat >>"$DIR/config.toml" <<EOF
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$DIR/runc-v1"
EOF
fi
printf '%s\t%s\t%s\n' "$VERSION" "$FULL_VERSION" "$BIN_DIR" >"$DIR/containerd-version"

ENV_PATH="$BIN_DIR:${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if [[ -n "$SHIM_DIR" ]]; then
	ENV_PATH="$SHIM_DIR:$ENV_PATH"
fi
shim=$(PATH="$ENV_PATH" command -v containerd-shim-runc-v2 || true)
[[ -n "$shim" ]] || die "containerd-shim-runc-v2 not found on PATH${SHIM_DIR:+ (nor in $SHIM_DIR)}"
echo "$shim" >"$DIR/shim-path"

log "starting containerd $FULL_VERSION ($CONTAINERD) for $DIR (shim: $shim)"
cd /
# Own session: a Ctrl-C on the caller's terminal must not kill containerd
# before containerd-down can use it. (This script has no job control, so the
# background child is not a group leader and setsid execs in place: $! is
# containerd's pid.)
PATH="$ENV_PATH" TMPDIR="$DIR/tmp" setsid "$CONTAINERD" --config "$DIR/config.toml" </dev/null >>"$DIR/containerd.log" 2>&1 &
pid=$!
echo "$pid" >"$PIDFILE"

deadline=$((SECONDS + 20))
while :; do
	if ! kill -0 "$pid" 2>/dev/null || [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
		log "containerd (pid $pid) exited during startup; log tail:"
		tail -n 40 "$DIR/containerd.log" >&2 || true
		rm -f "$PIDFILE"
		exit 1
	fi
	if [[ -S "$SOCK" ]] && timeout -k 2 5 "$CTR" -a "$SOCK" version >/dev/null 2>&1; then
		break
	fi
	if ((SECONDS >= deadline)); then
		log "containerd (pid $pid) not ready after 20s; log tail:"
		tail -n 40 "$DIR/containerd.log" >&2 || true
		exit 1
	fi
	sleep 0.2
done
log "containerd $FULL_VERSION ready: pid $pid, address $SOCK"
