//! The OCI calls the shell runs as child tasks, each in a span naming the container, exec and
//! pid, and what they need beyond the runtime driver. A call whose result changes the
//! container reports back as a [`Done`] message; the others answer their request directly.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shim_events::{ExitInfo, ProcessId};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::core::{KillPlan, Teardown};
use super::handle::{Deleted, Msg, Reply};
use super::shell::{Done, Shell};
use crate::error::{Result, RuntimeError};
use crate::io::{IoContext, ProcessIo, StdioConfig};
use crate::oci::{read_pid_file, OciError, OciRuntime};

/// `checked`'s value with the reply still to send, or `None` once its refusal has been sent
/// on `reply` (a request the core turned down needs no OCI call).
fn answered_if_refused<T, U>(checked: Result<T>, reply: Reply<U>) -> Option<(T, Reply<U>)> {
    match checked {
        Ok(v) => Some((v, reply)),
        Err(e) => {
            let _ = reply.send(Err(e));
            None
        }
    }
}

impl Shell {
    /// A span for an OCI call of this container (`pid` 0: not known yet, recorded later).
    pub(super) fn span(&self, op: &'static str, exec_id: Option<&str>, pid: u32) -> tracing::Span {
        let span = tracing::debug_span!(
            "oci",
            op,
            container_id = self.core.id(),
            exec_id = exec_id.unwrap_or(""),
            pid = tracing::field::Empty
        );
        if pid != 0 {
            span.record("pid", pid);
        }
        span
    }

    /// Runs an OCI call on the init as a child task: `call` gets the runtime, the container id
    /// and the bundle, and runs in the span of `op` (with the init's pid).
    fn spawn_init_call<F, Fut>(&mut self, op: &'static str, call: F)
    where
        F: FnOnce(Arc<OciRuntime>, String, PathBuf) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (runtime, id, bundle) =
            (Arc::clone(&self.runtime), self.core.id().to_owned(), self.core.bundle().to_owned());
        let span = self.span(op, None, self.core.init().pid);
        self.tasks.spawn(call(runtime, id, bundle).instrument(span));
    }

    pub(super) fn start_init(&mut self, reply: Reply<u32>) {
        let Some((restore, reply)) = answered_if_refused(self.core.start_init(), reply) else {
            return;
        };
        let (tx, reaper, namespace, owner) =
            (self.self_tx.clone(), self.shared.reaper.clone(), self.namespace.clone(), self.io_owner);
        let stdio = self.core.init().stdio.clone();
        let op = if restore.is_some() { "restore" } else { "start" };
        self.spawn_init_call(op, move |runtime, id, bundle| async move {
            let result = match restore {
                None => runtime.start(&id, &bundle).await.map(|()| None).map_err(RuntimeError::from),
                Some(plan) => {
                    let ctx = IoContext { reaper: &reaper, container_id: &id, namespace: &namespace };
                    crate::checkpoint::restore_init(&runtime, &bundle, &stdio, owner, ctx, &plan).await.map(Some)
                }
            };
            let _ = tx.send(Msg::Done(Done::InitStarted { result, reply }));
        });
    }

    pub(super) fn start_exec(&mut self, exec_id: String, reply: Reply<u32>) {
        let Some(((spec, stdio), reply)) = answered_if_refused(self.core.start_exec(&exec_id), reply) else {
            return;
        };
        let (runtime, reaper) = (Arc::clone(&self.runtime), self.shared.reaper.clone());
        let (id, bundle) = (self.core.id().to_owned(), self.core.bundle().to_owned());
        let (owner, tx, namespace) = (self.io_owner, self.self_tx.clone(), self.namespace.clone());
        let span = self.span("exec", Some(&exec_id), 0);
        self.tasks.spawn(
            async move {
                // Subscribe before the runtime can start the process (SPEC §4.4).
                let subscription = reaper.subscribe();
                let ctx = IoContext { reaper: &reaper, container_id: &id, namespace: &namespace };
                let pid_file = bundle.join(format!("{exec_id}.pid"));
                let result = match run_exec(&runtime, &bundle, &pid_file, &spec, &stdio, owner, ctx).await {
                    Ok((pid, io)) => {
                        tracing::Span::current().record("pid", pid);
                        Ok((pid, io, subscription))
                    }
                    Err(error) => Err(ExecFailed { error, ran: kill_half_started(&pid_file, subscription).await }),
                };
                let _ = tx.send(Msg::Done(Done::ExecStarted { exec_id, result, reply }));
            }
            .instrument(span),
        );
    }

    pub(super) fn kill(&mut self, exec_id: Option<String>, signal: u32, all: bool, reply: Reply<()>) {
        match self.core.kill(exec_id.as_deref(), signal) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(KillPlan::Signal { pid }) => {
                let _ = reply.send(signal_exec(pid, signal));
            }
            Ok(KillPlan::Runtime { thaw }) => self.spawn_init_call("kill", move |runtime, id, bundle| async move {
                let r = runtime.kill(&id, &bundle, signal, all).await.map_err(map_kill_error);
                if thaw {
                    let _ = runtime.resume(&id, &bundle).await;
                }
                let _ = reply.send(r);
            }),
        }
    }

    /// Deletes an exec. The reply waits (bounded) until its output has drained into the fifos:
    /// clients such as `ctr` close their fifo readers as soon as Delete returns (SPEC §5.1).
    pub(super) fn delete_exec(&mut self, exec_id: &str, reply: Reply<Deleted>) {
        let Some(((deleted, res, effects), reply)) = answered_if_refused(self.core.delete_exec(exec_id), reply) else {
            return;
        };
        self.apply(effects, None);
        let _ = std::fs::remove_file(self.core.bundle().join(format!("{exec_id}.pid")));
        let exec_id = exec_id.to_owned();
        self.tasks.spawn(async move {
            if let Some(mut io) = res.io {
                if !io.drain(super::IO_DRAIN_TIMEOUT).await {
                    tracing::warn!(exec_id = %exec_id, "failed to drain exec process io");
                }
            }
            let _ = reply.send(Ok(deleted));
        });
    }

    pub(super) fn delete_init(&mut self, reply: Reply<Deleted>) {
        let Some((plan, reply)) = answered_if_refused(self.core.delete_init(), reply) else {
            return;
        };
        let tx = self.self_tx.clone();
        let io = self.core.res_mut(None).ok().and_then(|r| r.io.take());
        self.spawn_init_call("delete", move |runtime, id, bundle| async move {
            let result = teardown(&runtime, &id, &bundle, io, plan).await;
            let _ = tx.send(Msg::Done(Done::InitDeleted { result, reply }));
        });
    }

    pub(super) fn pids(&mut self, reply: Reply<Vec<(u32, Option<String>)>>) {
        let execs = self.core.exec_pids();
        self.spawn_init_call("ps", move |runtime, id, bundle| async move {
            let r = runtime
                .ps(&id, &bundle)
                .await
                .map(|pids| pids.into_iter().map(|pid| (pid, execs.get(&pid).cloned())).collect())
                .map_err(RuntimeError::from);
            let _ = reply.send(r);
        });
    }

    /// Pause (`pause`) or resume the init; the state changes and the event is queued when
    /// the runtime call returns.
    pub(super) fn pause(&mut self, pause: bool, reply: Reply<()>) {
        let Some(((), reply)) = answered_if_refused(self.core.pause(pause), reply) else {
            return;
        };
        let tx = self.self_tx.clone();
        self.spawn_init_call(if pause { "pause" } else { "resume" }, move |runtime, id, bundle| async move {
            let result = if pause { runtime.pause(&id, &bundle).await } else { runtime.resume(&id, &bundle).await };
            let _ = tx.send(Msg::Done(Done::Paused { pause, result: result.map_err(RuntimeError::from), reply }));
        });
    }

    pub(super) fn update(&mut self, resources: Vec<u8>, reply: Reply<()>) {
        let Some(((), reply)) = answered_if_refused(self.core.update(), reply) else {
            return;
        };
        self.spawn_init_call("update", move |runtime, id, bundle| async move {
            let _ = reply.send(runtime.update(&id, &bundle, resources).await.map_err(RuntimeError::from));
        });
    }

    pub(super) fn checkpoint(&mut self, opts: crate::oci::CheckpointOpts, reply: Reply<()>) {
        let Some(((), reply)) = answered_if_refused(self.core.checkpoint(), reply) else {
            return;
        };
        self.spawn_init_call("checkpoint", move |runtime, id, bundle| async move {
            let _ = reply.send(crate::checkpoint::checkpoint(&runtime, &id, &bundle, opts).await);
        });
    }
}

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
    let process_file = crate::sys::MemFile::new(c"runc-process", spec)
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
