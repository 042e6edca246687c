#!/usr/bin/env bash
# Usage: hack/cri-setup.sh config DIR VERSION SHIM GO_SHIM   (called by containerd-up.sh)
#        hack/cri-setup.sh images DIR CTR
#
# The CRI half of a private containerd (hack/containerd-up.sh with CONTAINERD_CRI=1).
#
# `config` prepares DIR for the CRI plugin and prints the plugin's TOML for containerd
# VERSION (1.6, 1.7: config version 2; 2: config version 3) on stdout:
#   - everything private: CRI state under DIR/root and DIR/state, runc state in DIR/runc
#     (runc option Root), pod network namespaces under DIR/state, CNI config in DIR/cni,
#     host-local IPAM data in DIR/cni/ipam, the stream server on 127.0.0.1 (inside
#     containerd's private network namespace, see containerd-up.sh);
#   - `restrict_oom_score_adj = true` (no CAP_SYS_RESOURCE here), AppArmor and CDI off,
#     the sandbox image $CRI_PAUSE_IMAGE (built locally by `images`);
#   - runtime handlers (RuntimeClass names), SHIM being the shim under test:
#       runc        io.containerd.runc.v2, runtime_path = SHIM (1.7/2.x; 1.6 ignores
#                   runtime_path and runs containerd-shim-runc-v2 from PATH), runc options
#                   Root = DIR/runc, SystemdCgroup = false (the default handler);
#       crun        the same with BinaryName = hack/crun-private-ns, Root = DIR/crun;
#       go-runc     io.containerd.runc.v2 with runtime_path = GO_SHIM, the version's Go shim
#                   (1.7/2.x; for comparisons such as `make demo`);
#       runc-wrap   the same with BinaryName = DIR/bin/runc-wrap (runc, logging its argv to
#                   DIR/runc-wrap.log), Root = DIR/runc-wrap-root;
#       rsrunc      io.containerd.rsrunc.v2 (DIR/bin/containerd-shim-rsrunc-v2 -> SHIM, found
#                   through PATH on every version): CRI sends runtimeoptions.v1.Options
#                   with ConfigPath = DIR/rsrunc.toml, which holds the runc options;
#       rsrunc-body io.containerd.rsrunc.v2 with the runc options inline: CRI sends them
#                   as runtimeoptions config_body (the versions that do);
#       bad-binary  io.containerd.runc.v2 with BinaryName = /nonexistent/no-runc;
#       bad-option  io.containerd.rsrunc.v2, ConfigPath = DIR/bad-option.toml (unknown key);
#       bad-path    io.containerd.rsrunc.v2, ConfigPath = DIR/missing.toml (no such file).
# `images` builds the pause image ($CRI_PAUSE_IMAGE) and the busybox test image
# (docker.io/library/shimtest:latest) with hack/mkimage.sh and imports both into the
# k8s.io namespace of the running containerd, with CTR (that version's ctr).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PAUSE=${CRI_PAUSE_IMAGE:-shimtest.local/pause:1}
IMAGE=docker.io/library/shimtest:latest

usage() {
	sed -n '2,3s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

config() {
	local dir=$1 version=$2 shim=$3 goshim=$4 ver=2
	[[ "$version" == 2 ]] && ver=3
	local crunwrap="$here/crun-private-ns"
	mkdir -p "$dir/bin" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/crun"
	ln -sf "$shim" "$dir/bin/containerd-shim-rsrunc-v2"
	cat >"$dir/bin/runc-wrap" <<EOF
#!/bin/sh
echo "\$*" >>"$dir/runc-wrap.log"
exec runc "\$@"
EOF
	chmod +x "$dir/bin/runc-wrap"
	cat >"$dir/rsrunc.toml" <<EOF
# runc options for the io.containerd.rsrunc.v2 runtime (runtimeoptions config_path)
BinaryName = "runc"
Root = "$dir/runc"
SystemdCgroup = false
EOF
	cat >"$dir/bad-option.toml" <<EOF
Root = "$dir/runc"
NoSuchOption = true
EOF
	cat >"$dir/cni/net.d/10-shimtest.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "shimtest",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "shimcni0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "10.231.0.0/16" }]]
      }
    }
  ]
}
EOF
	# runtime_path exists from 1.7 (1.6.20 parses but ignores it; PATH decides there).
	local rp=""
	if [[ "$version" != 1.6 ]]; then
		rp="runtime_path = \"$shim\""
	fi
	local P R CRI
	if [[ "$ver" == 3 ]]; then
		R="plugins.\"io.containerd.cri.v1.runtime\""
		P="$R.containerd.runtimes"
		cat <<EOF
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[$R]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_cdi = false
  [$R.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
  [$R.containerd]
    default_runtime_name = "runc"
EOF
	else
		CRI="plugins.\"io.containerd.grpc.v1.cri\""
		P="$CRI.containerd.runtimes"
		cat <<EOF
[$CRI]
  sandbox_image = "$PAUSE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [$CRI.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [$CRI.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
EOF
	fi
	local sb=""
	[[ "$ver" == 3 ]] && sb='sandboxer = "podsandbox"'
	cat <<EOF
    [$P.runc]
      runtime_type = "io.containerd.runc.v2"
      $rp
      $sb
      [$P.runc.options]
        Root = "$dir/runc"
        SystemdCgroup = false
    [$P.crun]
      runtime_type = "io.containerd.runc.v2"
      $rp
      $sb
      [$P.crun.options]
        BinaryName = "$crunwrap"
        Root = "$dir/crun"
        SystemdCgroup = false
    [$P.go-runc]
      runtime_type = "io.containerd.runc.v2"
      ${rp:+runtime_path = \"$goshim\"}
      $sb
      [$P.go-runc.options]
        Root = "$dir/runc"
        SystemdCgroup = false
    [$P.runc-wrap]
      runtime_type = "io.containerd.runc.v2"
      $rp
      $sb
      [$P.runc-wrap.options]
        BinaryName = "$dir/bin/runc-wrap"
        Root = "$dir/runc-wrap-root"
        SystemdCgroup = false
    [$P.rsrunc]
      runtime_type = "io.containerd.rsrunc.v2"
      $sb
      [$P.rsrunc.options]
        ConfigPath = "$dir/rsrunc.toml"
    [$P.rsrunc-body]
      runtime_type = "io.containerd.rsrunc.v2"
      $sb
      [$P.rsrunc-body.options]
        BinaryName = "runc"
        Root = "$dir/runc"
        SystemdCgroup = false
    [$P.bad-binary]
      runtime_type = "io.containerd.runc.v2"
      $rp
      $sb
      [$P.bad-binary.options]
        BinaryName = "/nonexistent/no-runc"
        Root = "$dir/runc"
    [$P.bad-option]
      runtime_type = "io.containerd.rsrunc.v2"
      $sb
      [$P.bad-option.options]
        ConfigPath = "$dir/bad-option.toml"
    [$P.bad-path]
      runtime_type = "io.containerd.rsrunc.v2"
      $sb
      [$P.bad-path.options]
        ConfigPath = "$dir/missing.toml"
EOF
}

images() {
	local dir=$1 ctr=$2
	local sock="$dir/containerd.sock"
	"$here/mkimage.sh" "$dir/pause.tar" "$PAUSE" /bin/sh -c \
		'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done' 2>/dev/null
	"$here/mkimage.sh" "$dir/image.tar" "$IMAGE" 2>/dev/null
	for t in pause image; do
		timeout -k 5 60 "$ctr" -a "$sock" -n k8s.io images import "$dir/$t.tar" >/dev/null
	done
	rm -f "$dir/pause.tar" "$dir/image.tar"
}

[[ $# -ge 2 ]] || usage
case "$1" in
config)
	[[ $# -eq 5 ]] || usage
	config "$2" "$3" "$4" "$5"
	;;
images)
	[[ $# -eq 3 ]] || usage
	images "$2" "$3"
	;;
*) usage ;;
esac
