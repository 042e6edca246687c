//! The OCI calls the shell runs as child tasks, and what they need beyond the runtime driver.

use std::path::Path;

use shim_events::{ExitInfo, ProcessId};
use tokio::sync::mpsc;

use super::core::Teardown;
use crate::error::{Result, RuntimeError};
use crate::io::{IoContext, ProcessIo, StdioConfig};
use crate::oci::{read_pid_file, OciError, OciRuntime};

/// A failed exec start. `ran` is the exit of a process the runtime had started anyway (`runc
/// exec` created it, then it or a later step failed): that process was killed and reaped
/// before the failure is reported, so nothing keeps running untracked.
#[derive(Debug)]
pub(crate) struct ExecFailed {
    pub error: RuntimeError,
    pub ran: Option<ExitInfo>,
}

pub(crate) fn map_kill_error(e: OciError) -> RuntimeError {
    match e {
        OciError::ProcessFinished => RuntimeError::ProcessFinished,
        OciError::ContainerNotFound => RuntimeError::ProcessFinished,
        other => RuntimeError::Oci(other),
    }
}

/// `kill(2)` of an exec's pid (its exit is routed to the container, so the pid is not reused).
pub(crate) fn signal_exec(pid: u32, signal: u32) -> Result<()> {
    let sig = nix::sys::signal::Signal::try_from(i32::try_from(signal).unwrap_or(-1))
        .map_err(|_| RuntimeError::InvalidArgument { field: "signal", reason: signal.to_string() })?;
    crate::sys::signal_pid(pid, Some(sig)).map_err(|errno| match errno {
        nix::errno::Errno::ESRCH => RuntimeError::ProcessFinished,
        other => RuntimeError::Sys { what: format!("kill {pid}"), source: other.into() },
    })
}

/// After a failed exec start: if the runtime had started the process anyway (its pid file is
/// there), kill it and wait for its exit through the start's subscription, so the failure is
/// only reported once nothing of the exec runs. Returns that exit.
pub(crate) async fn kill_half_started(pid_file: &Path, subscription: crate::reaper::Subscription) -> Option<ExitInfo> {
    let pid = read_pid_file(pid_file).ok()?;
    let raw = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Claimed before the kill: until its exit is routed to us the pid cannot be reaped, so it
    // cannot be reused, and the signal can only reach that process.
    if let Some(exit) = subscription.claim(pid, tx, ProcessId::Init) {
        return Some(exit);
    }
    tracing::warn!(pid, "exec start failed after its process was started: killing it");
    if let Err(errno) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(pid, %errno, "kill of a half-started exec failed");
    }
    rx.recv().await.map(|e| e.exit)
}

/// `runc exec` of a registered exec: its stdio, the process spec through a memory file, then
/// its pid from `pid_file`.
pub(crate) async fn run_exec(
    runtime: &OciRuntime,
    bundle: &Path,
    pid_file: &Path,
    spec: &[u8],
    stdio: &StdioConfig,
    (uid, gid): (u32, u32),
    ctx: IoContext<'_>,
) -> Result<(u32, ProcessIo)> {
    let id = ctx.container_id;
    // A pid file left by an earlier attempt must not be taken for this one's.
    let _ = std::fs::remove_file(pid_file);
    let (prepared, rt_stdio) = ProcessIo::prepare(stdio, uid, gid, ctx).await?;
    // The process spec goes to runc through an anonymous memory file, not a file in the bundle:
    // no inode to create and unlink on the bundle's filesystem per exec.
    let process_file = crate::oci::MemFile::new(c"runc-process", spec)
        .map_err(|e| RuntimeError::Sys { what: "process spec memfd".into(), source: e })?;
    let r = runtime.exec(id, bundle, &process_file.path(), pid_file, prepared.console_socket(), rt_stdio).await;
    drop(process_file);
    r?;
    let io = prepared.finish(stdio).await?;
    let pid = read_pid_file(pid_file)?;
    Ok((pid, io))
}

/// Delete of the init: `runc delete`, drain its output, unmount the rootfs.
pub(crate) async fn teardown(
    runtime: &OciRuntime,
    id: &str,
    bundle: &Path,
    io: Option<ProcessIo>,
    Teardown { runtime_delete, rootfs_mounted }: Teardown,
) -> Result<()> {
    if runtime_delete {
        runtime.delete(id, Some(&bundle.join("log.json")), false).await?;
    }
    if let Some(mut io) = io {
        if !io.drain(super::IO_DRAIN_TIMEOUT).await {
            tracing::warn!(container_id = %id, "failed to drain init process io");
        }
    }
    if rootfs_mounted {
        crate::mount::unmount_all_off_loop(&bundle.join("rootfs"))
            .await
            .map_err(|e| RuntimeError::Sys { what: "unmount rootfs".into(), source: e })?;
    }
    Ok(())
}
