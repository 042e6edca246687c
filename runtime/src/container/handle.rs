//! What the registry and the RPC layer see of a container: its [`ContainerHandle`], the
//! messages it sends to the container's actor, and the answers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use shim_events::ExitInfo;
use tokio::sync::{mpsc, oneshot, watch};

use super::shell::Done;
use crate::cgroups::ContainerCgroup;
use crate::error::{Result, RuntimeError};
use crate::io::StdioConfig;
use crate::process::State;

/// A snapshot of one process, for the State RPC.
#[derive(Debug, Clone)]
pub struct ProcessState {
    /// Container id for the init, exec id for an exec.
    pub id: String,
    /// The bundle.
    pub bundle: PathBuf,
    /// Its pid (0 before start).
    pub pid: u32,
    /// Its state, as clients see it ([`State::reported`]).
    pub state: State,
    /// Its stdio.
    pub stdio: StdioConfig,
    /// Its exit, once released.
    pub exit: Option<ExitInfo>,
}

/// What Delete reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// The pid.
    pub pid: u32,
    /// Exit status (0 if it never ran).
    pub status: u32,
    /// Exit time (the epoch if it never ran).
    pub at: SystemTime,
}

/// A waiter's view of a process's exit.
pub type ExitWatch = watch::Receiver<Option<ExitInfo>>;

/// An exec's OCI process spec, validated and encoded once (with `terminal` set) by the RPC
/// layer; shared, not copied, by each start attempt.
pub type ExecSpec = Arc<[u8]>;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests a handler can send, and the completions of the actor's own child tasks.
#[derive(Debug)]
pub(super) enum Msg {
    Start {
        exec_id: Option<String>,
        reply: Reply<u32>,
    },
    State {
        exec_id: Option<String>,
        reply: Reply<ProcessState>,
    },
    Kill {
        exec_id: Option<String>,
        signal: u32,
        all: bool,
        reply: Reply<()>,
    },
    Wait {
        exec_id: Option<String>,
        reply: Reply<ExitWatch>,
    },
    Delete {
        exec_id: Option<String>,
        reply: Reply<Deleted>,
    },
    Exec {
        exec_id: String,
        spec: ExecSpec,
        stdio: StdioConfig,
        reply: Reply<()>,
    },
    Pids {
        reply: Reply<Vec<(u32, Option<String>)>>,
    },
    CloseIo {
        exec_id: Option<String>,
        reply: Reply<()>,
    },
    Resize {
        exec_id: Option<String>,
        width: u32,
        height: u32,
        reply: Reply<()>,
    },
    Cgroup {
        reply: Reply<ContainerCgroup>,
    },
    Pause {
        reply: Reply<()>,
    },
    Resume {
        reply: Reply<()>,
    },
    Update {
        resources: Vec<u8>,
        reply: Reply<()>,
    },
    Checkpoint {
        opts: crate::oci::CheckpointOpts,
        reply: Reply<()>,
    },
    /// A child task (OCI call) finished.
    Done(Done),
}

/// Handle to a container's actor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContainerHandle {
    id: Arc<str>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl ContainerHandle {
    pub(super) fn new(id: &str, tx: mpsc::UnboundedSender<Msg>) -> Self {
        ContainerHandle { id: Arc::from(id), tx }
    }

    /// A handle whose actor is gone (tests of the registry).
    #[cfg(test)]
    pub(crate) fn detached(id: &str) -> Self {
        ContainerHandle::new(id, mpsc::unbounded_channel().0)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| RuntimeError::Gone { id: self.id.to_string() })?;
        rx.await.map_err(|_| RuntimeError::Gone { id: self.id.to_string() })?
    }

    /// Starts the init (`exec_id` None) or an exec; returns its pid.
    pub async fn start(&self, exec_id: Option<String>) -> Result<u32> {
        self.call(|reply| Msg::Start { exec_id, reply }).await
    }

    /// A process's state.
    pub async fn state(&self, exec_id: Option<String>) -> Result<ProcessState> {
        self.call(|reply| Msg::State { exec_id, reply }).await
    }

    /// Signals a process (`all`: every process of the container, init only).
    pub async fn kill(&self, exec_id: Option<String>, signal: u32, all: bool) -> Result<()> {
        self.call(|reply| Msg::Kill { exec_id, signal, all, reply }).await
    }

    /// A watch that becomes `Some` when the process's exit is released.
    pub async fn wait(&self, exec_id: Option<String>) -> Result<ExitWatch> {
        self.call(|reply| Msg::Wait { exec_id, reply }).await
    }

    /// Deletes a process; deleting the init removes the container.
    pub async fn delete(&self, exec_id: Option<String>) -> Result<Deleted> {
        self.call(|reply| Msg::Delete { exec_id, reply }).await
    }

    /// Registers an exec process (no runtime call). `spec` is its process spec as runc reads it.
    pub async fn exec(&self, exec_id: String, spec: ExecSpec, stdio: StdioConfig) -> Result<()> {
        self.call(|reply| Msg::Exec { exec_id, spec, stdio, reply }).await
    }

    /// Pids in the container, with the exec id of those that are execs.
    pub async fn pids(&self) -> Result<Vec<(u32, Option<String>)>> {
        self.call(|reply| Msg::Pids { reply }).await
    }

    /// Closes the shim's write handle on a process's stdin.
    pub async fn close_io(&self, exec_id: Option<String>) -> Result<()> {
        self.call(|reply| Msg::CloseIo { exec_id, reply }).await
    }

    /// The container's cgroup, for Stats (read by the caller, outside the actor).
    pub async fn cgroup(&self) -> Result<ContainerCgroup> {
        self.call(|reply| Msg::Cgroup { reply }).await
    }

    /// Freezes the container (`runc pause`).
    pub async fn pause(&self) -> Result<()> {
        self.call(|reply| Msg::Pause { reply }).await
    }

    /// Thaws the container (`runc resume`).
    pub async fn resume(&self) -> Result<()> {
        self.call(|reply| Msg::Resume { reply }).await
    }

    /// Applies LinuxResources (JSON) with `runc update`.
    pub async fn update(&self, resources: Vec<u8>) -> Result<()> {
        self.call(|reply| Msg::Update { resources, reply }).await
    }

    /// Checkpoints the init (`runc checkpoint`; see [`crate::checkpoint`]).
    pub async fn checkpoint(&self, opts: crate::oci::CheckpointOpts) -> Result<()> {
        self.call(|reply| Msg::Checkpoint { opts, reply }).await
    }

    /// Resizes a process's terminal (a no-op without one).
    pub async fn resize(&self, exec_id: Option<String>, width: u32, height: u32) -> Result<()> {
        self.call(|reply| Msg::Resize { exec_id, width, height, reply }).await
    }
}
