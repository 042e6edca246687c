//! One actor per container: it owns the init and exec process table, their state machines and
//! the container's [`shim_events::Sequencer`].
//!
//! RPC handlers hold a [`ContainerHandle`] and send requests with a oneshot reply. The reaper
//! delivers the container's exits to the same actor, so "exit vs start" is decided in one place
//! in program order.
//!
//! - [`handle`]: the handle, its messages and answers (what the registry and the RPC layer see);
//! - `core`: the lifecycle rules as a pure state machine (inputs in, effects out), unit- and
//!   property-tested without root, runc or tokio;
//! - `shell`: the tokio loop that feeds the core and carries out its effects;
//! - `exec`: the exec verbs of the core;
//! - `calls`: the OCI calls the shell runs as child tasks.

mod calls;
mod core;
mod exec;
pub mod handle;
mod shell;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use shim_events::Publisher;

pub use handle::{ContainerHandle, Deleted, ExecSpec, ExitWatch, ProcessState};
pub use shell::spawn;

use crate::cgroups::ContainerCgroup;
use crate::io::{ProcessIo, StdioConfig};
use crate::oci::OciRuntime;
use crate::oom::OomWatch;
use crate::reaper::Reaper;
use crate::registry::Registry;

/// How long Delete waits for a process's output to drain (SPEC §5.1).
pub const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a new container needs from the shim.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The reaper.
    pub reaper: Reaper,
    /// The event publisher.
    pub publisher: Publisher,
    /// The container registry.
    pub registry: Arc<Registry>,
}

/// A started actor: its handle, and its task (owned by the registry entry).
#[derive(Debug)]
pub struct Spawned {
    /// The handle.
    pub handle: ContainerHandle,
    /// The actor's task.
    pub task: tokio::task::JoinHandle<()>,
}

/// What Create hands to the actor.
#[derive(Debug)]
pub struct NewContainer {
    /// Container id.
    pub id: String,
    /// Bundle path.
    pub bundle: PathBuf,
    /// The runtime driver configured for it.
    pub runtime: Arc<OciRuntime>,
    /// Init pid (0 until a pending restore ran).
    pub pid: u32,
    /// Init stdio.
    pub stdio: StdioConfig,
    /// Init IO copies (none until a pending restore ran).
    pub io: Option<ProcessIo>,
    /// Whether rootfs mounts were made and must be unmounted on delete.
    pub rootfs_mounted: bool,
    /// A checkpoint to restore at Start instead of `runc start`.
    pub restore: Option<crate::checkpoint::PendingRestore>,
    /// Whether the container lacks a private pid namespace.
    pub shares_pid_ns: bool,
    /// IoUid/IoGid for exec pipes.
    pub io_owner: (u32, u32),
    /// The containerd namespace.
    pub namespace: String,
    /// The init's cgroup, when it could be found at create.
    pub cgroup: Option<ContainerCgroup>,
    /// OOM notifications of that cgroup, when they could be registered.
    pub oom: Option<OomWatch>,
    /// The TaskCreate event.
    pub event: TaskCreate,
}

/// Stdio of the init for TaskCreate.
pub fn task_io(stdio: &StdioConfig) -> TaskIO {
    let mut io = TaskIO::new();
    io.stdin = stdio.stdin.clone();
    io.stdout = stdio.stdout.clone();
    io.stderr = stdio.stderr.clone();
    io.terminal = stdio.terminal;
    io
}
