//! The container actor's tokio loop: it feeds requests, exits, OOM events and the completions
//! of its child tasks to the [`Core`], and carries out the effects in order. It decides
//! nothing: every rule is in [`super::core`].
//!
//! OCI calls (start, exec, kill, delete, ps, pause, update, checkpoint; see `calls`) run as
//! child tasks owned by the actor (a `JoinSet`) and report back as [`Done`] messages, so the
//! actor never waits on runc and State/Wait/Kill answer while other starts and execs are in
//! flight.

use std::sync::Arc;

use shim_events::{Event, ExitInfo, ProcessId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::calls::ExecFailed;
use super::core::{Core, CoreConfig, Effect, Effects};
use super::handle::{ContainerHandle, Deleted, Msg, Reply};
use super::{NewContainer, Shared, Spawned};
use crate::cgroups::ContainerCgroup;
use crate::error::{Result, RuntimeError};
use crate::io::ProcessIo;
use crate::oci::OciRuntime;
use crate::oom::OomWatch;
use crate::reaper::{ExitSink, ProcessExit, Subscription};

/// Completions of the actor's child tasks.
#[derive(Debug)]
pub(crate) enum Done {
    InitStarted {
        result: Result<Option<(u32, ProcessIo, Subscription)>>,
        reply: Reply<u32>,
    },
    ExecStarted {
        exec_id: String,
        result: Result<(u32, ProcessIo, Subscription), ExecFailed>,
        reply: Reply<u32>,
    },
    InitDeleted {
        result: Result<()>,
        reply: Reply<Deleted>,
    },
    Paused {
        pause: bool,
        result: Result<()>,
        reply: Reply<()>,
    },
    /// The `kill --all` after the init's exit returned.
    KilledAll {
        exit: ExitInfo,
    },
}

/// The shell's resources of one process.
#[derive(Debug)]
pub(crate) struct ProcRes {
    pub(super) io: Option<ProcessIo>,
    /// Its waiters (Wait RPCs), released with its exit.
    waiters: watch::Sender<Option<ExitInfo>>,
}

impl ProcRes {
    fn new(io: Option<ProcessIo>) -> Self {
        ProcRes { io, waiters: watch::channel(None).0 }
    }
}

#[derive(Debug)]
pub(super) struct Shell {
    pub(super) core: Core<ProcRes>,
    pub(super) runtime: Arc<OciRuntime>,
    pub(super) shared: Shared,
    pub(super) io_owner: (u32, u32),
    pub(super) namespace: String,
    cgroup: Option<ContainerCgroup>,
    oom: Option<OomWatch>,
    pub(super) self_tx: mpsc::UnboundedSender<Msg>,
    /// Where the reaper sends this container's exits.
    exit_sink: ExitSink,
    pub(super) tasks: JoinSet<()>,
}

fn exec_of(process: &ProcessId) -> Option<&str> {
    match process {
        ProcessId::Init => None,
        ProcessId::Exec(e) => Some(e),
    }
}

/// Starts the actor of a container whose `runc create` succeeded. `subscription` is the
/// early-exit subscription taken before `runc create`; TaskCreate is queued before this returns.
pub fn spawn(new: NewContainer, subscription: Option<Subscription>, shared: Shared) -> Spawned {
    let (tx, rx) = mpsc::unbounded_channel();
    let (exit_sink, exit_rx) = mpsc::unbounded_channel();
    let config = CoreConfig {
        id: new.id.clone(),
        bundle: new.bundle,
        pid: new.pid,
        stdio: new.stdio,
        rootfs_mounted: new.rootfs_mounted,
        restore: new.restore,
        shares_pid_ns: new.shares_pid_ns,
    };
    let mut shell = Shell {
        core: Core::new(config, ProcRes::new(new.io)),
        runtime: new.runtime,
        shared,
        io_owner: new.io_owner,
        namespace: new.namespace,
        cgroup: new.cgroup,
        oom: new.oom,
        self_tx: tx.clone(),
        exit_sink,
        tasks: JoinSet::new(),
    };
    let effects = shell.core.created(new.event);
    shell.apply(effects, None);
    if let Some(exit) = subscription.and_then(|s| s.claim(new.pid, shell.exit_sink.clone(), ProcessId::Init)) {
        shell.on_exit(ProcessExit { process: ProcessId::Init, exit });
    }
    let task = tokio::spawn(shell.run(rx, exit_rx));
    Spawned { handle: ContainerHandle::new(&new.id, tx), task }
}

impl Shell {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut exits: mpsc::UnboundedReceiver<ProcessExit>) {
        let why = loop {
            tokio::select! {
                biased;
                Some(exit) = exits.recv() => self.on_exit(exit),
                msg = rx.recv() => {
                    let Some(msg) = msg else { break "every handle dropped" };
                    if self.on_msg(msg) {
                        break "init deleted";
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                r = oom_wait(self.oom.as_ref()) => self.on_oom(r),
            }
        };
        tracing::debug!(container_id = %self.core.id(), why, "container actor stopped");
    }

    /// Carries out effects in order; true when the actor must stop.
    pub(super) fn apply(&mut self, effects: Effects, mut subscription: Option<Subscription>) -> bool {
        let mut stop = false;
        for effect in effects {
            match effect {
                Effect::Publish(event) => {
                    if let Event::Exit(e) = &event {
                        tracing::debug!(container_id = %e.container_id, exec_id = %e.id, pid = e.pid, status = e.exit_status, "process exited");
                    }
                    self.shared.publisher.publish(event);
                }
                Effect::IoExited(process) => {
                    if let Ok(ProcRes { io: Some(io), .. }) = self.core.res_mut(exec_of(&process)) {
                        io.process_exited();
                    }
                }
                Effect::ReleaseWaiters(process, exit) => {
                    if let Ok(res) = self.core.res_mut(exec_of(&process)) {
                        res.waiters.send_replace(Some(exit));
                    }
                }
                Effect::Claim(process, pid) => {
                    let claimed =
                        subscription.take().and_then(|s| s.claim(pid, self.exit_sink.clone(), process.clone()));
                    if let Some(exit) = claimed {
                        self.on_exit(ProcessExit { process, exit });
                    }
                }
                Effect::Forget(process, pid) => self.shared.reaper.forget_pid(pid, &self.exit_sink, &process),
                Effect::KillAll(exit) => {
                    let (runtime, tx) = (Arc::clone(&self.runtime), self.self_tx.clone());
                    let (id, bundle) = (self.core.id().to_owned(), self.core.bundle().to_owned());
                    let span =
                        tracing::debug_span!("oci", op = "kill --all", container_id = id.as_str(), pid = exit.pid);
                    self.tasks.spawn(
                        async move {
                            if let Err(e) = runtime.kill(&id, &bundle, 9, true).await {
                                tracing::debug!(error = %e, "kill --all after init exit");
                            }
                            let _ = tx.send(Msg::Done(Done::KilledAll { exit }));
                        }
                        .instrument(span),
                    );
                }
                Effect::Thaw => {
                    let runtime = Arc::clone(&self.runtime);
                    let (id, bundle) = (self.core.id().to_owned(), self.core.bundle().to_owned());
                    let span = self.span("resume (thaw after kill)", None, self.core.init().pid);
                    self.tasks.spawn(
                        async move {
                            if let Err(e) = runtime.resume(&id, &bundle).await {
                                tracing::debug!(error = %e, "resume after a kill during pause");
                            }
                        }
                        .instrument(span),
                    );
                }
                Effect::LeaveRegistry => {
                    self.shared.registry.remove(self.core.id());
                    stop = true;
                }
            }
        }
        stop
    }

    fn on_oom(&mut self, r: std::io::Result<u64>) {
        match r {
            Ok(n) if n > 0 => {
                tracing::info!(container_id = %self.core.id(), "oom");
                let effects = self.core.oom();
                self.apply(effects, None);
            }
            Ok(_) if self.oom.as_ref().is_some_and(OomWatch::alive) => {}
            Ok(_) | Err(_) => self.oom = None,
        }
    }

    fn on_exit(&mut self, ProcessExit { process, exit }: ProcessExit) {
        let oom_pending = process == ProcessId::Init && self.oom.as_ref().is_some_and(|w| w.poll_now() > 0);
        if oom_pending {
            tracing::info!(container_id = %self.core.id(), "oom");
        }
        let effects = self.core.exited(process, exit, oom_pending);
        self.apply(effects, None);
    }

    /// Answers `reply` after carrying out `effects`; true when the actor must stop.
    fn finish<T>(
        &mut self,
        (effects, result): (Effects, Result<T>),
        sub: Option<Subscription>,
        reply: Reply<T>,
    ) -> bool {
        let stop = self.apply(effects, sub);
        let _ = reply.send(result);
        stop
    }

    /// Handles one message; returns true when the actor must stop (init deleted).
    fn on_msg(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Start { exec_id: None, reply } => self.start_init(reply),
            Msg::Start { exec_id: Some(e), reply } => self.start_exec(e, reply),
            Msg::State { exec_id, reply } => {
                let _ = reply.send(self.core.state(exec_id.as_deref()));
            }
            Msg::Kill { exec_id, signal, all, reply } => self.kill(exec_id, signal, all, reply),
            Msg::Wait { exec_id, reply } => {
                let _ = reply.send(self.core.res_mut(exec_id.as_deref()).map(|r| r.waiters.subscribe()));
            }
            Msg::Delete { exec_id: None, reply } => self.delete_init(reply),
            Msg::Delete { exec_id: Some(e), reply } => self.delete_exec(&e, reply),
            Msg::Exec { exec_id, spec, stdio, reply } => {
                match self.core.add_exec(exec_id, spec, stdio, ProcRes::new(None)) {
                    Ok(effects) => {
                        self.apply(effects, None);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Msg::Pids { reply } => self.pids(reply),
            Msg::CloseIo { exec_id, reply } => {
                let r = self.core.res_mut(exec_id.as_deref()).map(|r| {
                    if let Some(io) = r.io.as_mut() {
                        io.close_stdin();
                    }
                });
                let _ = reply.send(r);
            }
            Msg::Resize { exec_id, width, height, reply } => {
                let r = self.core.resize(exec_id.as_deref()).and_then(|r| match r.io.as_ref() {
                    Some(io) => io
                        .resize(width, height)
                        .map_err(|e| RuntimeError::Sys { what: "resize console".into(), source: e }),
                    None => Ok(()),
                });
                let _ = reply.send(r);
            }
            Msg::Cgroup { reply } => {
                // Not found at create (the pid had no cgroup yet): try again from the pid.
                let init = self.core.init();
                if self.cgroup.is_none() && init.exit.is_none() {
                    self.cgroup = ContainerCgroup::load(init.pid).ok();
                }
                let pid = init.pid;
                let r = self.cgroup.clone().ok_or(RuntimeError::Cgroup(crate::cgroups::CgroupError::Deleted { pid }));
                let _ = reply.send(r);
            }
            Msg::Pause { reply } => self.pause(true, reply),
            Msg::Resume { reply } => self.pause(false, reply),
            Msg::Update { resources, reply } => self.update(resources, reply),
            Msg::Checkpoint { opts, reply } => self.checkpoint(opts, reply),
            Msg::Done(done) => return self.on_done(done),
        }
        false
    }

    fn on_done(&mut self, done: Done) -> bool {
        match done {
            Done::InitStarted { result, reply } => {
                let (result, sub) = match result {
                    Ok(Some((pid, io, sub))) => {
                        self.core.res_mut(None).map(|r| r.io = Some(io)).ok();
                        self.cgroup = ContainerCgroup::load(pid).ok();
                        self.oom = self.cgroup.as_ref().and_then(crate::create::watch_oom);
                        (Ok(Some(pid)), Some(sub))
                    }
                    Ok(None) => (Ok(None), None),
                    Err(e) => (Err(e), None),
                };
                let out = self.core.init_started(result);
                self.finish(out, sub, reply)
            }
            Done::ExecStarted { exec_id, result, reply } => {
                let (result, sub) = match result {
                    Ok((pid, io, sub)) => {
                        // Its IO first: an exit claimed at once shuts it down.
                        let _ = self.core.res_mut(Some(&exec_id)).map(|r| r.io = Some(io));
                        (Ok(pid), Some(sub))
                    }
                    Err(ExecFailed { error, ran }) => (Err((error, ran)), None),
                };
                let out = self.core.exec_started(&exec_id, result);
                self.finish(out, sub, reply)
            }
            Done::InitDeleted { result, reply } => {
                let out = self.core.init_deleted(result);
                self.finish(out, None, reply)
            }
            Done::Paused { pause, result, reply } => {
                let out = self.core.paused(pause, result);
                self.finish(out, None, reply)
            }
            Done::KilledAll { exit } => {
                let effects = self.core.killed_all(exit);
                self.apply(effects, None)
            }
        }
    }
}

async fn oom_wait(watch: Option<&OomWatch>) -> std::io::Result<u64> {
    match watch {
        Some(w) => w.wait().await,
        None => std::future::pending().await,
    }
}
