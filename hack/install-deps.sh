#!/usr/bin/env bash
# Usage: hack/install-deps.sh
#
# Installs (as root) everything the hack/ scripts and tests need:
#  1. Debian 12 packages through the system's apt: runc, crun, criu (checkpoint tests), containerd 1.6 (+ctr), busybox-static
#     (image rootfs), python3 (image builder), iproute2 (ss, ip netns), util-linux (findmnt, setsid,
#     unshare), procps, protobuf-compiler (the k8s-cri crate's build), containernetworking-plugins
#     (CNI for CRI pods). Runs `apt-get update` only when something is missing.
#  2. containerd 1.7.x (newest in trixie) and 2.x (newest in sid/experimental), fetched from the
#     same Debian mirror the system's apt sources name, with a *private* apt configuration (own
#     sources list, lists, cache and an empty dpkg status: the system's sources and installed
#     packages are never changed), checked (apt verifies each .deb against the signed Release
#     files; each binary must run and report the version of its package) and unpacked with
#     `dpkg-deb -x` under $SHIM_DEPS_DIR (default /var/cache/shim-runc-rs):
#        $SHIM_DEPS_DIR/containerd/<version>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#        $SHIM_DEPS_DIR/containerd/1.7 -> <version>, 2 -> <version>; 1.6/usr/bin -> /usr/bin (the system's)
#        $SHIM_DEPS_DIR/containerd/{1.6,1.7,2}.version: "key<TAB>version<TAB>bin dir"
#     Idempotent: a version already unpacked is kept. The index is refreshed when older than a day.
# Prints the three containerd versions at the end.
set -euo pipefail

log() { echo "install-deps: $*" >&2; }
die() {
	log "$*"
	exit 1
}

PACKAGES=(runc crun criu containerd busybox-static python3 iproute2 util-linux procps coreutils findutils mawk
	protobuf-compiler containernetworking-plugins dpkg apt gcc libc6-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	if [[ "$status" != "install ok installed" ]]; then
		missing+=("$pkg")
	fi
done

if ((${#missing[@]} > 0)); then
	[[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]} (run as root to install them)"
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

# --- 2. containerd 1.7 and 2.x, private apt --------------------------------------------------
DEPS=${SHIM_DEPS_DIR:-/var/cache/shim-runc-rs}
CD="$DEPS/containerd"
APT="$DEPS/apt"
mkdir -p "$CD" "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"

# The mirror the system already uses (deb822 .sources or a one-line sources.list).
mirror=$(
	{
		grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
		grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | sed -E 's/\[[^]]*\]//' | awk '{print $2}'
	} | grep -v -- '-security' | grep -E '/debian/?$' | head -n 1 || true
)
[[ -n "$mirror" ]] || die "no Debian mirror found in the system's apt sources"
mirror=${mirror%/}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APT/sources.list" <<SRC
deb [signed-by=$KEYRING] $mirror trixie main
deb [signed-by=$KEYRING] $mirror trixie-updates main
deb [signed-by=$KEYRING] $mirror sid main
deb [signed-by=$KEYRING] $mirror experimental main
SRC
APT_OPTS=(
	-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::State::Status=/dev/null"
	-o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
	-o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
	-o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
	-o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
	-o "Acquire::Languages=none" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1"
)

installed() { [[ -x "$CD/$1/usr/bin/containerd" && -x "$CD/$1/usr/bin/ctr" && -x "$CD/$1/usr/bin/containerd-shim-runc-v2" ]]; }

# Fast path: both links resolve to unpacked versions and the index is fresh.
fresh=$(find "$APT/lists" -maxdepth 1 -name '*sid*Packages*' -mtime -1 2>/dev/null | head -n 1)
if [[ -n "$fresh" ]] && installed 1.7 && installed 2 && [[ -z "${SHIM_DEPS_REFRESH:-}" ]]; then
	:
else
	log "refreshing the private apt index ($APT) from $mirror"
	if ! timeout 600 apt-get "${APT_OPTS[@]}" -qq update </dev/null; then
		# Offline or the mirror is away: keep what is unpacked, if anything.
		installed 1.7 && installed 2 || die "private apt update failed and no containerd 1.7/2 is unpacked"
		log "private apt update failed; keeping the unpacked versions"
	else
		# madison rows: "containerd | VERSION | URL SUITE/main amd64 Packages"
		rows=$(apt-cache "${APT_OPTS[@]}" madison containerd)
		pick() { # $1 = version prefix regex, $2 = suite regex → newest matching version
			echo "$rows" | awk -F'|' -v pre="$1" -v suite="$2" '
				{ gsub(/ /, "", $2); if ($2 ~ pre && $3 ~ suite) print $2 }' |
				while read -r v; do echo "$v"; done | sort -u | {
				best=""
				while read -r v; do
					if [[ -z "$best" ]] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
				done
				echo "$best"
			}
		}
		v17=$(pick '^1\.7\.' ' trixie(-updates)?/')
		v2=$(pick '^2\.' ' (sid|unstable|experimental)/')
		[[ -n "$v17" ]] || die "no containerd 1.7.x in trixie (madison: $rows)"
		[[ -n "$v2" ]] || die "no containerd 2.x in sid/experimental (madison: $rows)"
		for v in "$v17" "$v2"; do
			dir="$CD/$v"
			if installed "$v"; then continue; fi
			log "fetching containerd $v"
			(cd "$APT/debs" && timeout 600 apt-get "${APT_OPTS[@]}" -qq download "containerd=$v" </dev/null)
			deb=$(ls "$APT/debs"/containerd_"${v/\~/\~}"_*.deb 2>/dev/null | head -n 1)
			[[ -n "$deb" ]] || deb=$(find "$APT/debs" -name "containerd_*_*.deb" -newer "$APT/sources.list" | head -n 1)
			[[ -n "$deb" ]] || die "download of containerd $v left no .deb in $APT/debs"
			[[ "$(dpkg-deb -f "$deb" Package)" == containerd && "$(dpkg-deb -f "$deb" Version)" == "$v" ]] ||
				die "$deb is not containerd $v"
			rm -rf "$dir.tmp"
			dpkg-deb -x "$deb" "$dir.tmp"
			mv -T "$dir.tmp" "$dir"
			rm -f "$deb"
		done
		ln -sfn "$v17" "$CD/1.7"
		ln -sfn "$v2" "$CD/2"
	fi
fi
# 1.6 is the system package: its usr/bin is the system's.
[[ -L "$CD/1.6" ]] && rm -f "$CD/1.6"
mkdir -p "$CD/1.6/usr"
ln -sfn /usr/bin "$CD/1.6/usr/bin"

# Check: each containerd runs here and reports its package's upstream version.
for k in 1.6 1.7 2; do
	bin="$CD/$k/usr/bin/containerd"
	out=$("$bin" --version 2>&1) || die "$bin does not run: $out"
	ver=$(awk '{print $3}' <<<"$out")
	ver=${ver#v}
	case "$k" in
	1.6) [[ "$ver" == 1.6.* ]] ;;
	1.7) [[ "$ver" == 1.7.* ]] ;;
	2) [[ "$ver" == 2.* ]] ;;
	esac || die "$bin reports $ver, expected $k"
	"$CD/$k/usr/bin/ctr" --version >/dev/null 2>&1 || die "$CD/$k/usr/bin/ctr does not run"
	printf '%s\t%s\t%s\n' "$k" "$ver" "$CD/$k/usr/bin" >"$CD/$k.version.tmp"
	mv "$CD/$k.version.tmp" "$CD/$k.version"
done
log "containerd versions: $(cut -f2 "$CD/1.6.version") (1.6), $(cut -f2 "$CD/1.7.version") (1.7), $(cut -f2 "$CD/2.version") (2) under $CD"
