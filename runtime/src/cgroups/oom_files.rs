//! What the OOM watcher ([`crate::oom`]) reads from a cgroup: the v1 `memory.oom_control` /
//! `cgroup.event_control` pair and the v2 `memory.events` counters.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups_v2::metrics as v2;

use super::files::for_each_kv;
use super::{CgroupError, Malformed};

/// The cgroup v1 files of the OOM notification protocol: write `"<eventfd> <fd of oom_control>"`
/// into `event_control`, then each 8-byte read of the eventfd is one OOM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomControlFiles {
    /// `memory.oom_control` of the container's memory cgroup.
    pub oom_control: PathBuf,
    /// `cgroup.event_control` of the same directory.
    pub event_control: PathBuf,
}

/// The counters of a v2 `memory.events` file. An OOM watcher compares `oom_kill` with the last
/// value it saw (containerd#6323: `oom` is also charged to ancestors, `oom_kill` is not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage went over `memory.low`.
    pub low: u64,
    /// Times usage was throttled over `memory.high`.
    pub high: u64,
    /// Times usage hit `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked for this cgroup.
    pub oom: u64,
    /// Processes of this cgroup killed by the OOM killer.
    pub oom_kill: u64,
    /// Group kills (`memory.oom.group`).
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    pub(super) fn to_proto(self) -> v2::MemoryEvents {
        v2::MemoryEvents {
            low: self.low,
            high: self.high,
            max: self.max,
            oom: self.oom,
            oom_kill: self.oom_kill,
            oom_group_kill: self.oom_group_kill,
            ..Default::default()
        }
    }
}

/// Parses `memory.events` content; keys it does not know are ignored.
pub fn parse_memory_events(content: &str) -> Result<MemoryEvents, Malformed> {
    let mut ev = MemoryEvents::default();
    for_each_kv(content, |k, v| set_field!(ev, k, v; low, high, max, oom, oom_kill, oom_group_kill))?;
    Ok(ev)
}

/// Reads `<dir>/memory.events`; `None` when the file is gone (cgroup deleted or no memory
/// controller).
pub fn read_memory_events(dir: &Path) -> Result<Option<MemoryEvents>, CgroupError> {
    let path = dir.join("memory.events");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    parse_memory_events(&text).map(Some).map_err(|source| CgroupError::Parse { path, source })
}
