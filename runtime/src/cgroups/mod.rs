//! A container's cgroup: where it is, and what containerd's Stats and the OOM watcher
//! ([`crate::oom`]) read from it.
//!
//! Discovery reads `/proc/<pid>/cgroup` and the shim's `/proc/self/mountinfo`; the parsers take
//! file contents (pure) and thin wrappers read the real files. The version is chosen as
//! containerd's `cgroups.Mode()` does: cgroup2 mounted at `/sys/fs/cgroup` means v2, anything
//! else (legacy or hybrid) means v1.
//!
//! Stats follow containerd's `cgroups/v3` library (`cgroup1.Stat(IgnoreNotExist)` and
//! `cgroup2.Manager.Stat`) and produce its protobuf `Metrics` messages: a missing file is
//! skipped (the field keeps its default), an unreadable or malformed one is an error naming the
//! path. Limits follow containerd too: v2 `max` is `u64::MAX`, v1 `max` (pids) is 0.
//!
//! Layout: `discovery` (the parsers and the directories they resolve to), `files` (the
//! open-file cache Stats re-reads with `pread`, value parsing, host facts), `v1` and `v2` (the
//! metrics of each version), `oom_files` (the files and counters the OOM watcher reads). The
//! public API is re-exported here.
//!
//! Non-goals: creating, updating, freezing or deleting cgroups (runc does that), and watching
//! for OOM ([`crate::oom`] registers the eventfd or inotify watch; this module names the files
//! and parses `memory.events`). No logging: errors carry paths.

use std::io;
use std::path::{Path, PathBuf};

use protobuf::well_known_types::any::Any;
use protobuf::Message;

/// Sets the protobuf field named as the kernel's key (keys with no field are ignored; a
/// missing key leaves 0, as containerd's map lookups do).
macro_rules! set_field {
    ($msg:expr, $key:expr, $value:expr; $($field:ident),+ $(,)?) => {
        match $key {
            $( stringify!($field) => $msg.$field = $value, )+
            _ => {}
        }
    };
}

mod discovery;
mod files;
mod oom_files;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

pub use discovery::{
    is_unified, parse_mountinfo, parse_proc_cgroup, resolve_v1, resolve_v2, MountInfo, ProcCgroup, V1Paths, V2Dir,
};
pub use oom_files::{parse_memory_events, read_memory_events, MemoryEvents, OomControlFiles};
pub use v1::v1_metrics;
pub use v2::v2_metrics;

use files::{path_exists, read_required};

/// Type URL of the `Any` carrying cgroup v1 metrics, as containerd's typeurl registry names it.
pub const V1_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of the `Any` carrying cgroup v2 metrics.
pub const V2_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Errors of the cgroup layer, each naming the file or process it is about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file exists but could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's content is not what the kernel writes.
    #[error("parse {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Malformed,
    },
    /// None of the process's cgroup directories exists any more.
    #[error("cgroup of pid {pid} has been deleted")]
    Deleted {
        /// The process whose cgroup was looked up.
        pid: u32,
    },
    /// The metrics message did not encode.
    #[error("encode cgroup metrics: {source}")]
    Encode {
        /// Why.
        #[source]
        source: protobuf::Error,
    },
}

/// What is wrong with a file's content; [`CgroupError::Parse`] adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn malformed(what: &str, line: &str) -> Malformed {
    Malformed(format!("{what}: {line:?}"))
}

/// A container's cgroup, in the version containerd would use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerCgroup {
    /// Legacy or hybrid host: one directory per v1 controller.
    V1(V1Paths),
    /// Unified host: the container's cgroup2 directory.
    V2(V2Dir),
}

impl ContainerCgroup {
    /// Finds the cgroup of `pid` from `/proc/<pid>/cgroup` and the shim's mount table, keeping
    /// only directories that exist (containerd's `cgroup1.Load`).
    pub fn load(pid: u32) -> Result<Self, CgroupError> {
        let cgroup_file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let cgroup = read_required(&cgroup_file)?;
        let mountinfo = read_required(Path::new("/proc/self/mountinfo"))?;
        let found =
            Self::resolve(&cgroup, &mountinfo).map_err(|source| CgroupError::Parse { path: cgroup_file, source })?;
        let found = match found {
            Self::V1(paths) => Self::V1(paths.iter().filter(|(_, d)| path_exists(d)).collect()),
            Self::V2(dir) => Self::V2(dir),
        };
        if found.exists() {
            Ok(found)
        } else {
            Err(CgroupError::Deleted { pid })
        }
    }

    /// Pure resolution from `/proc/<pid>/cgroup` and `/proc/self/mountinfo` contents.
    pub fn resolve(proc_cgroup: &str, mountinfo: &str) -> Result<Self, Malformed> {
        let mounts = parse_mountinfo(mountinfo);
        let cg = parse_proc_cgroup(proc_cgroup)?;
        if is_unified(&mounts) {
            return resolve_v2(&cg, &mounts).map(|dir| Self::V2(dir.into()));
        }
        let paths = resolve_v1(&cg, &mounts)?;
        if paths.is_empty() {
            return Err(Malformed("no cgroup v1 controller of the process is mounted".into()));
        }
        Ok(Self::V1(paths))
    }

    /// Whether the cgroup is still there (any v1 controller directory, or the v2 directory).
    pub fn exists(&self) -> bool {
        match self {
            Self::V1(paths) => paths.iter().any(|(_, d)| path_exists(d)),
            Self::V2(dir) => path_exists(dir),
        }
    }

    /// The container's metrics as the `Any` containerd's Stats reply carries. The first call
    /// opens the files; later ones (from any clone) re-read them.
    pub fn stats(&self) -> Result<Any, CgroupError> {
        let (type_url, encoded) = match self {
            Self::V1(paths) => (V1_METRICS_TYPE_URL, v1_metrics(paths)?.write_to_bytes()),
            Self::V2(dir) => (V2_METRICS_TYPE_URL, v2_metrics(dir)?.write_to_bytes()),
        };
        let mut any = Any::new();
        any.type_url = type_url.to_owned();
        any.value = encoded.map_err(|source| CgroupError::Encode { source })?;
        Ok(any)
    }
}
