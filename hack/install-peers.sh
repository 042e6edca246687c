#!/usr/bin/env bash
# Usage: hack/install-peers.sh        (run by `make bench`, `make bench-density`)
#
# What the shim-level benchmark needs beyond hack/install-deps.sh, installed once:
# - containerd-runc-shim 0.2.0 (containerd/rust-extensions' runc shim) from crates.io, built
#   with `cargo install --locked` into $SHIM_DEPS_DIR/peers/containerd-runc-shim-0.2.0
#   (default /var/cache/shim-runc-rs; takes minutes on 2 cores, kept across runs);
# - Debian's python3-matplotlib, for the SVG charts (run with /usr/bin/python3).
# The Go shims (containerd 2.1 and 1.6) come from hack/install-deps.sh.
set -euo pipefail

CACHE=${SHIM_DEPS_DIR:-/var/cache/shim-runc-rs}
PEER=$CACHE/peers/containerd-runc-shim-0.2.0

if [[ ! -x $PEER/bin/containerd-shim-runc-v2-rs ]]; then
	echo "install-peers: building containerd-runc-shim 0.2.0 into $PEER (minutes)" >&2
	rm -rf "$PEER.tmp"
	mkdir -p "$(dirname "$PEER")"
	cargo install --quiet --locked --version 0.2.0 --root "$PEER.tmp" containerd-runc-shim
	rm -rf "$PEER"
	mv "$PEER.tmp" "$PEER"
fi

if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
	echo "install-peers: installing python3-matplotlib" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q python3-matplotlib >/dev/null ||
		{ apt-get update -q >/dev/null && apt-get install -y -q python3-matplotlib >/dev/null; }
fi
