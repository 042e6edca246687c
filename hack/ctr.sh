#!/usr/bin/env bash
# Usage: hack/ctr.sh DIR [ctr global flags] COMMAND [ARGS...]
#
# Runs `ctr -a DIR/containerd.sock ...` (the ctr of the containerd version that
# containerd-up.sh ran, from DIR/containerd-version) against the private containerd started
# by hack/containerd-up.sh DIR, adding the flags that keep state private:
#   ctr run ...                -> --runc-root DIR/runc --fifo-dir DIR/fifo
#   ctr tasks exec|start ...   -> --fifo-dir DIR/fifo
# (unless the caller already gave them). ctr 1.6 can only pass runc options
# (options.Options{Root}) on `ctr run`; `ctr containers create` cannot, so a
# container created that way uses the shim's default /run/containerd/runc/NS.
# Prefer `run -d` over `containers create` + `tasks start`.
set -euo pipefail

if [[ $# -lt 2 ]]; then
	sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
	exit 2
fi

DIR=$(realpath -m "$1")
shift
# The ctr of the containerd version containerd-up.sh ran (DIR/containerd-version), else PATH's.
CTR=ctr
if [[ -s "$DIR/containerd-version" ]]; then
	bindir=$(cut -f3 "$DIR/containerd-version")
	[[ -x "$bindir/ctr" ]] && CTR="$bindir/ctr"
fi
args=("$@")

# Skip ctr's global flags to find the command.
i=0
while ((i < ${#args[@]})); do
	case "${args[i]}" in
	-a | --address | -n | --namespace | --timeout | --connect-timeout) i=$((i + 2)) ;;
	-*) i=$((i + 1)) ;;
	*) break ;;
	esac
done

has_flag() {
	local f=$1 a
	for a in "${args[@]}"; do
		[[ "$a" == "$f" || "$a" == "$f="* ]] && return 0
	done
	return 1
}

extra=()
pos=-1
if ((i < ${#args[@]})); then
	case "${args[i]}" in
	run)
		pos=$((i + 1))
		has_flag --runc-root || extra+=(--runc-root "$DIR/runc")
		has_flag --fifo-dir || extra+=(--fifo-dir "$DIR/fifo")
		;;
	t | task | tasks)
		if ((i + 1 < ${#args[@]})); then
			case "${args[i + 1]}" in
			exec | start)
				pos=$((i + 2))
				has_flag --fifo-dir || extra+=(--fifo-dir "$DIR/fifo")
				;;
			esac
		fi
		;;
	esac
fi

if ((pos >= 0 && ${#extra[@]} > 0)); then
	args=("${args[@]:0:pos}" "${extra[@]}" "${args[@]:pos}")
fi

exec "$CTR" -a "$DIR/containerd.sock" "${args[@]}"
