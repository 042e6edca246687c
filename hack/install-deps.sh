#!/usr/bin/env bash
# Usage: hack/install-deps.sh
#
# Installs (as root, via apt) everything the hack/ scripts and tests need to run a
# private containerd with a runc shim: runc, crun (the crun tests), containerd (+ctr), busybox-static
# (image rootfs), python3 (image builder), iproute2 (ss), util-linux (findmnt,
# setsid, unshare), procps (ps/pgrep). Idempotent: exits immediately when
# every package is already installed; runs `apt-get update` only when
# something is missing.
set -euo pipefail

PACKAGES=(runc crun containerd busybox-static python3 iproute2 util-linux procps coreutils findutils mawk)

missing=()
for pkg in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	if [[ "$status" != "install ok installed" ]]; then
		missing+=("$pkg")
	fi
done

if ((${#missing[@]} == 0)); then
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
	exit 1
fi

echo "install-deps: installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
