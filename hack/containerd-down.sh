#!/usr/bin/env bash
# Usage: hack/containerd-down.sh DIR
#
# Stops the private containerd started by hack/containerd-up.sh DIR and
# removes everything it left behind, leaving the machine as found:
#   1. SIGKILL + delete every task and delete every container, in every
#      namespace (each ctr call is time-bounded, so a hung shim cannot block);
#   2. stop containerd (pid in DIR/containerd.pid): SIGTERM, wait, SIGKILL;
#   3. SIGKILL the shims this containerd started (cmdline has
#      `-address DIR/containerd.sock`) and their leftover descendants,
#      `runc delete --force` any container state left in DIR/runc;
#   4. unmount everything under DIR (deepest first, lazy as a fallback);
#   5. remove the shims' sockets in /run/containerd/s, the cgroups and
#      /run/containerd dirs that did not exist before containerd-up, and DIR.
# Safe to run on a partially started DIR and to run twice. Exits non-zero
# only if something could not be removed.
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
	sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
	exit 2
fi

log() { echo "containerd-down: $*" >&2; }

DIR=$(realpath -m "$1")
[[ "$DIR" != / ]] || {
	log "refusing DIR=/"
	exit 2
}
SOCK="$DIR/containerd.sock"
PIDFILE="$DIR/containerd.pid"
TASKDIR="$DIR/state/io.containerd.runtime.v2.task"
SOCKDIR=/run/containerd/s
T=10 # seconds allowed for each ctr/runc call
# The ctr of the containerd version containerd-up.sh ran (DIR/containerd-version), else PATH's.
CTR=ctr
if [[ -s "$DIR/containerd-version" ]]; then
	bindir=$(cut -f3 "$DIR/containerd-version")
	[[ -x "$bindir/ctr" ]] && CTR="$bindir/ctr"
fi

declare -A NAMESPACES=() # ns -> 1
declare -A CONTAINERS=() # "ns/id" -> 1
declare -A SOCKETS=()    # shim socket path -> 1
declare -A VICTIMS=()    # pid -> 1 (shims and their descendants)

is_alive() { # pid: running and not a zombie
	local st
	[[ -r "/proc/$1/stat" ]] || return 1
	st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n "$st" && "$st" != Z && "$st" != X ]]
}

wait_dead() { # timeout_s pid...
	local deadline=$((SECONDS + $1)) p any
	shift
	while :; do
		any=0
		for p in "$@"; do is_alive "$p" && any=1; done
		((any)) || return 0
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

# Pids whose argv contains `-address SOCK` (our shims, also `start`/`delete`).
find_shims() {
	local p args i
	for p in /proc/[0-9]*; do
		args=()
		mapfile -d '' -t args 2>/dev/null <"$p/cmdline" || continue
		for ((i = 0; i < ${#args[@]}; i++)); do
			if [[ "${args[i]}" == "-address=$SOCK" || "${args[i]}" == "--address=$SOCK" ]] ||
				[[ ("${args[i]}" == -address || "${args[i]}" == --address) && "${args[i + 1]:-}" == "$SOCK" ]]; then
				echo "${p#/proc/}"
				break
			fi
		done
	done
}

declare -A KIDS=() # ppid -> " pid pid ..."
load_process_tree() {
	local pid ppid
	KIDS=()
	while read -r pid ppid; do
		KIDS[$ppid]+=" $pid"
	done < <(cat /proc/[0-9]*/stat 2>/dev/null | awk '{ pid = $1; sub(/^.*\) /, ""); print pid, $2 }')
}

add_descendants() { # pid: add it and all its descendants to VICTIMS
	local c
	VICTIMS[$1]=1
	for c in ${KIDS[$1]:-}; do
		[[ -n "${VICTIMS[$c]:-}" ]] || add_descendants "$c"
	done
	return 0
}

add_socket() { # unix://path or path
	local s=${1#unix://}
	[[ "$s" == "$SOCKDIR"/* && "${s#"$SOCKDIR"/}" != */* ]] && SOCKETS[$s]=1
	return 0
}

record_shim_sockets() { # pid: unix sockets it has bound under SOCKDIR
	local pid=$1 fd link inode path
	for fd in "/proc/$pid/fd/"*; do
		link=$(readlink "$fd" 2>/dev/null) || continue
		[[ "$link" =~ ^socket:\[([0-9]+)\]$ ]] || continue
		inode=${BASH_REMATCH[1]}
		path=$(awk -v ino="$inode" '$7 == ino && NF >= 8 { print $8; exit }' /proc/net/unix)
		[[ -n "$path" ]] && add_socket "$path"
	done
	return 0
}

record_state() { # bundles in DIR/state: namespaces, ids, shim addresses
	local b ns id
	for b in "$TASKDIR"/*/ "$DIR"/runc/*/; do
		[[ -d "$b" ]] || continue
		b=${b%/}
		NAMESPACES[${b##*/}]=1
	done
	for b in "$TASKDIR"/*/*/; do
		[[ -d "$b" ]] || continue
		b=${b%/}
		id=${b##*/}
		ns=${b%/*}
		ns=${ns##*/}
		NAMESPACES[$ns]=1
		CONTAINERS["$ns/$id"]=1
		[[ -s "$b/address" ]] && add_socket "$(<"$b/address")"
	done
	return 0
}

containerd_pid() { # prints the pid if DIR/containerd.pid is our live containerd
	local pid cmd
	[[ -s "$PIDFILE" ]] || return 1
	pid=$(<"$PIDFILE")
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	is_alive "$pid" || return 1
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ "$cmd" == *"$DIR/config.toml"* ]] || return 1
	echo "$pid"
}

ctrx() { timeout -k 5 "$T" "$CTR" -a "$SOCK" "$@"; }

# --- 1. tasks and containers, through containerd --------------------------
record_state
cpid=$(containerd_pid || true)
if [[ -n "$cpid" && -S "$SOCK" ]] && ctrx version >/dev/null 2>&1; then
	mapfile -t nss < <(ctrx namespaces ls -q 2>/dev/null || true)
	for ns in "${nss[@]}"; do
		[[ -n "$ns" ]] || continue
		NAMESPACES[$ns]=1
		mapfile -t cids < <(ctrx -n "$ns" containers ls -q 2>/dev/null || true)
		for id in "${cids[@]}"; do
			[[ -n "$id" ]] && CONTAINERS["$ns/$id"]=1
		done
		mapfile -t tids < <(ctrx -n "$ns" tasks ls -q 2>/dev/null || true)
		for id in "${tids[@]}"; do
			[[ -n "$id" ]] || continue
			CONTAINERS["$ns/$id"]=1
			log "killing task $ns/$id"
			ctrx -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
		done
		for id in "${tids[@]}"; do
			[[ -n "$id" ]] || continue
			ctrx -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 ||
				log "warning: tasks delete $ns/$id failed"
		done
		for id in "${cids[@]}"; do
			[[ -n "$id" ]] || continue
			ctrx -n "$ns" containers delete "$id" >/dev/null 2>&1 ||
				log "warning: containers delete $ns/$id failed"
		done
	done
	record_state
fi

# Shim sockets, also computed as the protocol does: sha256("SOCK/NS/ID").
for key in "${!CONTAINERS[@]}"; do
	h=$(printf '%s' "$SOCK/$key" | sha256sum | awk '{ print $1 }')
	add_socket "$SOCKDIR/$h"
done
for pid in $(find_shims); do
	record_shim_sockets "$pid"
done

# --- 2. containerd ---------------------------------------------------------
if [[ -n "$cpid" ]]; then
	log "stopping containerd (pid $cpid)"
	kill -TERM "$cpid" 2>/dev/null || true
	if ! wait_dead 10 "$cpid"; then
		log "containerd did not exit on SIGTERM; sending SIGKILL"
		kill -KILL "$cpid" 2>/dev/null || true
		wait_dead 5 "$cpid" || log "warning: containerd (pid $cpid) still alive"
	fi
fi
rm -f "$PIDFILE"

# --- 3. shims, their descendants, runc state -------------------------------
load_process_tree
for pid in $(find_shims); do
	record_shim_sockets "$pid"
	add_descendants "$pid"
done
if ((${#VICTIMS[@]} > 0)); then
	log "killing leftover shim processes: ${!VICTIMS[*]}"
	for pid in "${!VICTIMS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	wait_dead 5 "${!VICTIMS[@]}" || log "warning: some shim processes survived SIGKILL"
fi

runc_cleanup() { # root id
	local root=$1 id=$2
	[[ -e "$root/$id/state.json" ]] || return 0
	log "runc delete --force $id (root $root)"
	timeout -k 5 "$T" runc --root "$root" delete --force "$id" >/dev/null 2>&1 ||
		log "warning: runc delete $id failed"
	rm -rf "${root:?}/${id:?}"
}
if [[ -d "$DIR/runc" ]] && command -v runc >/dev/null; then
	for st in "$DIR"/runc/*/*/state.json; do
		[[ -e "$st" ]] || continue
		d=${st%/state.json}
		runc_cleanup "${d%/*}" "${d##*/}"
	done
fi
# Containers created without --runc-root (e.g. `ctr containers create`) use the
# shim's default root; clean the ids that belonged to this containerd.
for key in "${!CONTAINERS[@]}"; do
	ns=${key%%/*}
	id=${key#*/}
	if command -v runc >/dev/null; then
		runc_cleanup "/run/containerd/runc/$ns" "$id"
	fi
done

# --- 4. mounts under DIR ---------------------------------------------------
mounts_under_dir() { # deepest first; mountinfo escapes space/tab/\n/\ as octal
	awk -v d="$DIR" '{
		p = $5
		while (match(p, /\\[0-7][0-7][0-7]/)) {
			c = sprintf("%c", (substr(p, RSTART + 1, 1) * 64) + (substr(p, RSTART + 2, 1) * 8) + substr(p, RSTART + 3, 1))
			p = substr(p, 1, RSTART - 1) c substr(p, RSTART + 4)
		}
		if (p == d || index(p, d "/") == 1) print length(p) "\t" p
	}' /proc/self/mountinfo | sort -rn | cut -f2-
}
for _ in 1 2 3 4 5; do
	mapfile -t mnts < <(mounts_under_dir)
	((${#mnts[@]} > 0)) || break
	for m in "${mnts[@]}"; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
done
mapfile -t mnts < <(mounts_under_dir)
((${#mnts[@]} == 0)) || log "warning: still mounted: ${mnts[*]}"

# --- 5. sockets, cgroups, /run/containerd, DIR -----------------------------
for s in "${!SOCKETS[@]}"; do
	if [[ -S "$s" || -e "$s" ]]; then
		rm -f -- "$s"
	fi
done

existed_before() { # path: was it listed in DIR/<file> by containerd-up?
	[[ -f "$DIR/$2" ]] || return 0 # unknown: assume it existed
	grep -qxF -- "$1" "$DIR/$2"
}

# runc (cgroup v1 and v2) leaves the per-namespace parent cgroup behind.
if [[ -f "$DIR/cgroups.before" ]]; then
	while read -r mnt; do
		for ns in "${!NAMESPACES[@]}"; do
			cg="$mnt/$ns"
			[[ -d "$cg" ]] || continue
			if existed_before "$cg" cgroups.before; then
				# Another private containerd using the same namespace name may have made it
				# (tests run several at once): remove it only if empty, and never for the
				# namespaces a system containerd, Docker or Kubernetes use.
				case "$ns" in
				default | k8s.io | moby | buildkit) ;;
				*) rmdir "$cg" 2>/dev/null || true ;;
				esac
				continue
			fi
			find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		done
	done < <(awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo)
fi

for ns in "${!NAMESPACES[@]}"; do
	if [[ -d "/run/containerd/runc/$ns" ]] && ! existed_before /run/containerd/runc run-containerd.before; then
		rmdir "/run/containerd/runc/$ns" 2>/dev/null || true
	fi
done
for d in /run/containerd/s /run/containerd/fifo /run/containerd/runc /run/containerd; do
	[[ -d "$d" ]] || continue
	existed_before "$d" run-containerd.before && continue
	rmdir "$d" 2>/dev/null || true
done

rc=0
if [[ -e "$DIR" ]]; then
	rm -rf -- "$DIR" || true
	if [[ -e "$DIR" ]]; then
		log "error: could not remove $DIR"
		rc=1
	fi
fi
left=$(find_shims || true)
if [[ -n "$left" ]]; then
	log "error: shim processes still alive: $(echo "$left" | tr '\n' ' ')"
	rc=1
fi
exit "$rc"
