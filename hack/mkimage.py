#!/usr/bin/env python3
"""Build a minimal, deterministic busybox OCI image archive.

Usage: hack/mkimage.py OUT.tar [REF [CMD...]]   (normally called via hack/mkimage.sh)

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/*)
with one gzip layer holding /bin/busybox (a static binary, default
/bin/busybox from Debian's busybox-static, override with $BUSYBOX), one
symlink per applet in /bin, /tmp, /proc, /sys, /dev, /root and
/etc/{passwd,group,hostname}. Every timestamp/owner is fixed, so rebuilding
from the same busybox gives byte-identical output (same digests).

index.json names the manifest with both `io.containerd.image.name` and
`org.opencontainers.image.ref.name` = REF (default
docker.io/library/shimtest:latest); `ctr images import OUT.tar` then creates
exactly the image REF (the containerd annotation wins over ctr's
"import-DATE" prefix). CMD, when given, replaces the image's default command
`sh` (e.g. a pause image for CRI: `/bin/sh -c 'trap "exit 0" TERM; ...'`).
"""

import gzip
import hashlib
import io
import json
import os
import platform
import struct
import subprocess
import sys
import tarfile

DEFAULT_REF = "docker.io/library/shimtest:latest"
MTIME = 0
CREATED = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ARCHES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "i686": "386",
}

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def die(msg):
    print(f"mkimage: {msg}", file=sys.stderr)
    sys.exit(1)


def is_dynamic_elf(data):
    """True if the ELF has a PT_INTERP program header (needs a loader)."""
    if data[:4] != b"\x7fELF":
        die("busybox is not an ELF binary")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    for i in range(phnum):
        p_type, = struct.unpack_from(end + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def tar_info(name, kind, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def deterministic_tar(entries):
    """entries: list of (TarInfo, bytes|None), written in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build_layer(busybox_path):
    with open(busybox_path, "rb") as f:
        bb = f.read()
    if is_dynamic_elf(bb):
        die(f"{busybox_path} is dynamically linked; install busybox-static")
    out = subprocess.run([busybox_path, "--list"], check=True,
                         capture_output=True, text=True).stdout
    applets = sorted({a.strip() for a in out.split() if a.strip()} - {"busybox"})
    if "sh" not in applets:
        die("busybox has no 'sh' applet")

    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                      b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "etc/hostname": b"shimtest\n",
    }
    D, F, L = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
    entries = []
    for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755),
                    ("proc", 0o555), ("root", 0o700), ("sys", 0o555),
                    ("tmp", 0o1777), ("usr", 0o755), ("var", 0o755)]:
        entries.append((tar_info(d + "/", D, mode), None))
    entries.append((tar_info("bin/busybox", F, 0o755, len(bb)), bb))
    for a in applets:
        if "/" in a:
            continue
        entries.append((tar_info("bin/" + a, L, 0o777, linkname="busybox"), None))
    for name in sorted(files):
        data = files[name]
        entries.append((tar_info(name, F, 0o644, len(data)), data))
    # /sbin, /usr/bin, /usr/sbin all resolve to /bin.
    entries.append((tar_info("sbin", L, 0o777, linkname="bin"), None))
    entries.append((tar_info("usr/bin", L, 0o777, linkname="../bin"), None))
    entries.append((tar_info("usr/sbin", L, 0o777, linkname="../bin"), None))

    raw = deterministic_tar(entries)
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as g:
        g.write(raw)
    return raw, gz.getvalue(), len(applets)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out_path = sys.argv[1]
    ref = sys.argv[2] if len(sys.argv) >= 3 else DEFAULT_REF
    cmd = sys.argv[3:] or ["sh"]
    busybox = os.environ.get("BUSYBOX", "/bin/busybox")
    arch = ARCHES.get(platform.machine())
    if arch is None:
        die(f"unsupported machine {platform.machine()}")

    raw, layer, napplets = build_layer(busybox)
    config = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha(raw)]},
        "history": [{"created": CREATED, "created_by": "hack/mkimage.py"}],
    }
    config_b = canon(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha(config_b), "size": len(config_b)},
        "layers": [{"mediaType": MT_LAYER, "digest": sha(layer), "size": len(layer)}],
    }
    manifest_b = canon(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha(manifest_b),
            "size": len(manifest_b),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": ref,
            },
        }],
    }
    index_b = canon(index)
    layout_b = canon({"imageLayoutVersion": "1.0.0"})

    D, F = tarfile.DIRTYPE, tarfile.REGTYPE
    entries = [
        (tar_info("blobs/", D, 0o755), None),
        (tar_info("blobs/sha256/", D, 0o755), None),
    ]
    for blob in sorted([config_b, manifest_b, layer], key=sha):
        name = "blobs/sha256/" + sha(blob).split(":", 1)[1]
        entries.append((tar_info(name, F, 0o644, len(blob)), blob))
    entries.append((tar_info("index.json", F, 0o644, len(index_b)), index_b))
    entries.append((tar_info("oci-layout", F, 0o644, len(layout_b)), layout_b))
    archive = deterministic_tar(entries)

    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(archive)
    os.replace(tmp, out_path)
    print(f"mkimage: {out_path}: {ref} {sha(manifest_b)} "
          f"({napplets} applets, layer {len(layer)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
