//! Rootfs mounts from `CreateTaskRequest.rootfs`, mounted on `<bundle>/rootfs` and unmounted on
//! delete, with containerd's option semantics (known flags become mount flags, the rest data).
//!
//! Not yet: overlay `lowerdir` compaction for option strings near the page size, `loop` and
//! idmapped mounts, `mount.<type>` helpers.

use std::io;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One mount as containerd passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options (`ro`, `lowerdir=...`).
    pub options: Vec<String>,
}

/// A mount failure, with the target and the mount.
#[derive(Debug, thiserror::Error)]
#[error("mount {kind} {source_path} on {target}: {source}")]
pub struct MountError {
    kind: String,
    source_path: String,
    target: String,
    #[source]
    source: io::Error,
}

/// Splits options into flags, and data passed to the filesystem.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "private" => {
                propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                propagation |= MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            other => {
                data.push(other.to_owned());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, propagation, data.join(","))
}

fn mount_one(m: &MountSpec, target: &Path) -> Result<(), MountError> {
    let err = |e: nix::Error| MountError {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        target: target.display().to_string(),
        source: e.into(),
    };
    let (flags, propagation, data) = parse_options(&m.options);
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    let kind = (m.kind != "bind").then_some(m.kind.as_str());
    mount(Some(m.source.as_str()), target, kind, flags, data_opt).map_err(err)?;
    // A bind mount ignores MS_RDONLY and friends on the first call: remount to apply them.
    if flags.contains(MsFlags::MS_BIND) && flags.intersects(!(MsFlags::MS_BIND | MsFlags::MS_REC)) {
        mount(None::<&str>, target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>).map_err(err)?;
    }
    if !propagation.is_empty() {
        mount(None::<&str>, target, None::<&str>, propagation, None::<&str>).map_err(err)?;
    }
    Ok(())
}

/// Mounts all of `mounts` on `target`, in order. On failure, unmounts what it mounted.
pub fn mount_all(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (a no-op when nothing is mounted there).
pub fn unmount_all(target: &Path) -> io::Result<()> {
    for _ in 0..64 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// [`mount_all`] on the blocking pool: mounting (an overlay's lowerdir lookup, a slow backing
/// filesystem) must not hold up the event loop (reaping, RPCs, events).
pub async fn mount_all_off_loop(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    let (mounts, owned) = (mounts.to_vec(), target.to_owned());
    tokio::task::spawn_blocking(move || mount_all(&mounts, &owned)).await.unwrap_or_else(|e| {
        Err(MountError {
            kind: String::new(),
            source_path: String::new(),
            target: target.display().to_string(),
            source: io::Error::other(e.to_string()),
        })
    })
}

/// [`unmount_all`] on the blocking pool: an overlay unmount syncs its upper filesystem, which
/// can take seconds under IO pressure.
pub async fn unmount_all_off_loop(target: &Path) -> io::Result<()> {
    let owned = target.to_owned();
    tokio::task::spawn_blocking(move || unmount_all(&owned))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_become_data() {
        let opts: Vec<String> =
            ["index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w", "ro"].iter().map(|s| s.to_string()).collect();
        let (flags, prop, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert!(prop.is_empty());
        assert_eq!(data, "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w");
    }

    #[test]
    fn bind_flags() {
        let opts: Vec<String> = ["rbind", "rw", "nosuid", "rprivate"].iter().map(|s| s.to_string()).collect();
        let (flags, prop, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID);
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(data.is_empty());
    }
}
