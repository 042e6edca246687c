#!/usr/bin/env bash
# Usage: hack/mkimage.sh OUT.tar [REF [CMD...]]
#
# Builds a minimal, deterministic busybox OCI image archive at OUT.tar
# (default REF docker.io/library/shimtest:latest). Import it with
#   hack/ctr.sh DIR -n NS images import OUT.tar
# which creates image REF (no --base-name/--index-name needed). CMD replaces
# the default command `sh` (e.g. for a pause image).
# $BUSYBOX overrides the static busybox binary (default /bin/busybox).
set -euo pipefail

if [[ $# -lt 1 ]]; then
	sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
	exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/mkimage.py" "$@"
