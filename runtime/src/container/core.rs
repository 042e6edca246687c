//! The container's lifecycle rules as a pure state machine.
//!
//! Inputs: a request, a process exit, the completion of an OCI call. Outputs: the request's
//! answer, or the OCI call to run for it, and a list of [`Effect`]s that the shell carries out
//! in order. No tokio, no syscalls, no clocks: what the rules need from the world (the exit,
//! whether an OOM event is pending) comes in as arguments.
//!
//! Each process carries a payload `R` the core only moves around: the shell's IO copies and
//! exit watch (`()` in tests).
//!
//! Contract with the shell: effects are applied in order, before the request's reply is sent;
//! an [`Effect::Claim`] may produce an exit, which is fed back through [`Core::exited`] at once.
//! Event order (SPEC §3.3): `TaskCreate` < `TaskStart` < `TaskExecAdded` < `TaskExecStarted` <
//! the exec's `TaskExit` < the init's `TaskExit` < `TaskDelete`, kept by the [`Sequencer`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use shim_events::{Event, ExitInfo, ProcessId, Refusal, Sequencer, Step};

use super::handle::{Deleted, ExecSpec, ProcessState};
use crate::checkpoint::PendingRestore;
use crate::error::{Result, RuntimeError};
use crate::io::StdioConfig;
use crate::process::State;

/// One effect of an input, in the order the shell must carry them out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Queue this event on the publisher.
    Publish(Event),
    /// The process exited: tell its IO copies (a console is shut down, SPEC §5.2).
    IoExited(ProcessId),
    /// Release the process's waiters with this exit.
    ReleaseWaiters(ProcessId, ExitInfo),
    /// Claim this pid's exit through the start's early-exit subscription.
    Claim(ProcessId, u32),
    /// Stop routing this pid's exit to the container.
    Forget(ProcessId, u32),
    /// Run `kill --all -9` (the init exited without a private pid namespace, SPEC §2.5); its
    /// completion is [`Core::killed_all`] with this exit.
    KillAll(ExitInfo),
    /// Run `runc resume` without a state change or event: a SIGKILL reached a frozen init.
    Thaw,
    /// The container is deleted: leave the registry (before the reply) and stop.
    LeaveRegistry,
}

/// Effects of one input: usually a handful, often none.
pub(crate) type Effects = Vec<Effect>;

/// How a Kill is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillPlan {
    /// `runc kill` of the init (`thaw`: `runc resume` after it, for a SIGKILL of a frozen init).
    Runtime { thaw: bool },
    /// `kill(2)` of an exec's pid.
    Signal { pid: u32 },
}

/// What an init Delete runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Teardown {
    /// Whether a runtime container exists to `runc delete` (not for a restore that never ran).
    pub runtime_delete: bool,
    /// Whether the rootfs must be unmounted.
    pub rootfs_mounted: bool,
}

/// One process of the container.
#[derive(Debug)]
pub(crate) struct Process<R> {
    pub(crate) state: State,
    pub(crate) pid: u32,
    pub(crate) stdio: StdioConfig,
    pub(crate) exit: Option<ExitInfo>,
    pub(super) spec: Option<ExecSpec>,
    /// The shell's resources of this process.
    pub(crate) res: R,
}

impl<R> Process<R> {
    pub(super) fn new(pid: u32, stdio: StdioConfig, res: R) -> Self {
        Process { state: State::Created, pid, stdio, exit: None, spec: None, res }
    }

    /// What Delete reports: its exit, or status 0 at the epoch for a process that never ran.
    pub(super) fn deleted(&self) -> Deleted {
        let exit = self.exit.unwrap_or(ExitInfo { pid: self.pid, status: 0, at: SystemTime::UNIX_EPOCH });
        Deleted { pid: self.pid, status: exit.status, at: exit.at }
    }
}

/// What the core needs to know of a new container.
#[derive(Debug)]
pub(crate) struct CoreConfig {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub stdio: StdioConfig,
    pub rootfs_mounted: bool,
    pub restore: Option<PendingRestore>,
    pub shares_pid_ns: bool,
}

/// The lifecycle state of one container.
#[derive(Debug)]
pub(crate) struct Core<R> {
    pub(super) id: String,
    bundle: PathBuf,
    pub(super) seq: Sequencer,
    pub(super) init: Process<R>,
    pub(super) execs: HashMap<String, Process<R>>,
    rootfs_mounted: bool,
    restore: Option<PendingRestore>,
    shares_pid_ns: bool,
    /// The init's exit, held while the `kill --all` it triggered runs (no private pid
    /// namespace): as in the Go shim, the init is not reported exited before the rest of the
    /// container was signalled, so a Delete right after Wait never finds the cgroup frozen.
    pub(super) init_exit_killing: Option<ExitInfo>,
    /// A SIGKILL was sent while a `runc pause` was in flight: it may have reached a process
    /// the pause froze, so the init is thawed once the pause returned, by the same rule as a
    /// SIGKILL of a paused init. (Where a frozen task does not die until thawed; kernel 6.18
    /// with runc 1.1.5 here kills it anyway, so this is not observable on this machine.)
    thaw_after_pause: bool,
}

pub(super) fn not_found_exec(exec_id: &str) -> RuntimeError {
    RuntimeError::ProcessNotFound { exec_id: exec_id.to_owned() }
}

impl<R> Core<R> {
    /// A container whose `runc create` succeeded; `init` is the init's payload.
    pub(crate) fn new(c: CoreConfig, init: R) -> Self {
        Core {
            seq: Sequencer::new(c.id.clone()),
            id: c.id,
            bundle: c.bundle,
            init: Process::new(c.pid, c.stdio, init),
            execs: HashMap::new(),
            rootfs_mounted: c.rootfs_mounted,
            restore: c.restore,
            shares_pid_ns: c.shares_pid_ns,
            init_exit_killing: None,
            thaw_after_pause: false,
        }
    }

    /// The container id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The bundle.
    pub(crate) fn bundle(&self) -> &std::path::Path {
        &self.bundle
    }

    /// The init process.
    pub(crate) fn init(&self) -> &Process<R> {
        &self.init
    }

    /// A process: the init (`None`) or an exec.
    pub(crate) fn process(&self, exec_id: Option<&str>) -> Result<&Process<R>> {
        match exec_id {
            None => Ok(&self.init),
            Some(e) => self.execs.get(e).ok_or_else(|| not_found_exec(e)),
        }
    }

    /// A process's payload, mutably.
    pub(crate) fn res_mut(&mut self, exec_id: Option<&str>) -> Result<&mut R> {
        match exec_id {
            None => Ok(&mut self.init.res),
            Some(e) => self.execs.get_mut(e).map(|p| &mut p.res).ok_or_else(|| not_found_exec(e)),
        }
    }

    fn proc_of(&mut self, process: &ProcessId) -> Option<&mut Process<R>> {
        match process {
            ProcessId::Init => Some(&mut self.init),
            ProcessId::Exec(e) => self.execs.get_mut(e),
        }
    }

    /// `runc create` succeeded: `TaskCreate`.
    pub(crate) fn created(&mut self, event: TaskCreate) -> Effects {
        let steps = self.seq.created(event);
        self.apply(steps)
    }

    pub(super) fn apply(&mut self, steps: Vec<Step>) -> Effects {
        let mut out = Vec::with_capacity(steps.len() * 3);
        for step in steps {
            match step {
                Step::Publish(event) => out.push(Effect::Publish(event)),
                Step::Exited(process, exit) => self.release_exit(process, exit, &mut out),
            }
        }
        out
    }

    /// State first, then the TaskExit, then the waiters (SPEC §3.3 item 6).
    fn release_exit(&mut self, process: ProcessId, exit: ExitInfo, out: &mut Effects) {
        let container_id = self.id.clone();
        let Some(p) = self.proc_of(&process) else { return };
        p.state = p.state.exited();
        p.exit = Some(exit);
        let mut ev = TaskExit::new();
        ev.id = match &process {
            ProcessId::Init => container_id.clone(),
            ProcessId::Exec(e) => e.clone(),
        };
        ev.container_id = container_id;
        ev.pid = exit.pid;
        ev.exit_status = exit.status;
        ev.exited_at = protobuf::MessageField::some(shim_events::publisher::timestamp(exit.at));
        out.push(Effect::IoExited(process.clone()));
        out.push(Effect::Publish(Event::Exit(ev)));
        out.push(Effect::ReleaseWaiters(process, exit));
    }

    /// The container's cgroup hit an OOM kill: `TaskOOM`.
    pub(crate) fn oom(&mut self) -> Effects {
        let mut ev = TaskOOM::new();
        ev.container_id = self.id.clone();
        let steps = self.seq.oom(ev);
        self.apply(steps)
    }

    /// A reaped exit of one of the container's processes. `oom_pending`: the cgroup's OOM
    /// counter moved (an OOM kill signals before the killed init is reaped: reported first).
    pub(crate) fn exited(&mut self, process: ProcessId, exit: ExitInfo, oom_pending: bool) -> Effects {
        let mut out = Vec::new();
        if process == ProcessId::Init && oom_pending {
            out.extend(self.oom());
        }
        if process == ProcessId::Init && self.shares_pid_ns && !self.seq.init_exit_seen() {
            // No private pid namespace: the kernel will not kill the rest (SPEC §2.5). The
            // exit is held (state, TaskExit, waiters) until the kill returns.
            if self.init_exit_killing.is_none() {
                self.init_exit_killing = Some(exit);
                out.push(Effect::KillAll(exit));
            }
            return out;
        }
        let steps = self.seq.exited(&process, exit);
        out.extend(self.apply(steps));
        out
    }

    /// The `kill --all` after the init's exit returned: the held exit goes to the sequencer.
    pub(crate) fn killed_all(&mut self, exit: ExitInfo) -> Effects {
        self.init_exit_killing = None;
        let steps = self.seq.exited(&ProcessId::Init, exit);
        self.apply(steps)
    }

    /// Start of the init: the restore plan to run instead of `runc start`, if any.
    pub(crate) fn start_init(&mut self) -> Result<Option<PendingRestore>> {
        let starting = self.init.state.start()?;
        self.seq.init_starting().map_err(|refusal| self.refused(refusal))?;
        self.init.state = starting;
        Ok(self.restore.clone())
    }

    pub(super) fn refused(&self, refusal: Refusal) -> RuntimeError {
        RuntimeError::StartRefused { id: self.id.clone(), refusal }
    }

    /// The init's start returned (`Ok(Some(pid))`: a restore ran and created the init `pid`).
    /// Apply the effects, then reply with the returned result.
    pub(crate) fn init_started(&mut self, result: Result<Option<u32>>) -> (Effects, Result<u32>) {
        match result {
            Ok(restored) => {
                if let Some(pid) = restored {
                    self.restore = None;
                    self.init.pid = pid;
                }
                let pid = self.init.pid;
                self.init.state = self.init.state.started();
                let mut ev = TaskStart::new();
                ev.container_id = self.id.clone();
                ev.pid = pid;
                let steps = self.seq.init_started(ev);
                let mut out = self.apply(steps);
                if restored.is_some() {
                    out.push(Effect::Claim(ProcessId::Init, pid));
                }
                (out, Ok(pid))
            }
            Err(e) => {
                self.init.state = self.init.state.start_failed();
                let steps = self.seq.init_start_failed();
                (self.apply(steps), Err(e))
            }
        }
    }

    /// Kill: how to deliver `signal` (validated by the shell for an exec's `kill(2)`).
    pub(crate) fn kill(&mut self, exec_id: Option<&str>, signal: u32) -> Result<KillPlan> {
        match exec_id {
            None => {
                if self.init.state == State::Deleted {
                    return Err(RuntimeError::ProcessFinished);
                }
                if self.init.state == State::Pausing && signal == 9 {
                    self.thaw_after_pause = true;
                }
                // A frozen process does not die until thawed: resume after a SIGKILL.
                Ok(KillPlan::Runtime { thaw: self.init.state == State::Paused && signal == 9 })
            }
            Some(e) => {
                let p = self.execs.get(e).ok_or_else(|| not_found_exec(e))?;
                if p.state.can_signal_exec()? {
                    Ok(KillPlan::Signal { pid: p.pid })
                } else {
                    Err(RuntimeError::ProcessFinished)
                }
            }
        }
    }

    /// Delete of the init: what the teardown runs (the shell takes the init's IO to drain).
    pub(crate) fn delete_init(&self) -> Result<Teardown> {
        self.init.state.can_delete()?;
        // A created init can have execs: deleting it under a starting or running one would
        // publish TaskDelete with the init's exit still held behind theirs.
        if let Some((e, p)) = self.execs.iter().find(|(_, p)| p.state.blocks_init_delete()) {
            return Err(RuntimeError::ExecActive { exec_id: e.clone(), state: p.state.name() });
        }
        // A pending restore never ran: there is no runtime container to delete.
        Ok(Teardown { runtime_delete: self.restore.is_none(), rootfs_mounted: self.rootfs_mounted })
    }

    /// The init's teardown returned.
    pub(crate) fn init_deleted(&mut self, result: Result<()>) -> (Effects, Result<Deleted>) {
        if let Err(e) = result {
            return (Vec::new(), Err(e));
        }
        let deleted = self.init.deleted();
        self.init.state = State::Deleted;
        let mut ev = TaskDelete::new();
        ev.container_id = self.id.clone();
        ev.pid = deleted.pid;
        ev.exit_status = deleted.status;
        ev.exited_at = protobuf::MessageField::some(shim_events::publisher::timestamp(deleted.at));
        let steps = self.seq.deleted(ev);
        let mut out = self.apply(steps);
        let execs = self.execs.iter().map(|(e, p)| (ProcessId::Exec(e.clone()), p.pid));
        for (process, pid) in execs.chain(std::iter::once((ProcessId::Init, self.init.pid))) {
            if pid != 0 {
                out.push(Effect::Forget(process, pid));
            }
        }
        out.push(Effect::LeaveRegistry);
        (out, Ok(deleted))
    }

    /// State of a process. As in the Go shim, an exec reports paused while its container is.
    pub(crate) fn state(&self, exec_id: Option<&str>) -> Result<ProcessState> {
        let p = self.process(exec_id)?;
        let init_paused = self.init.state == State::Paused;
        let state = if init_paused && p.state == State::Running { State::Paused } else { p.state.reported() };
        Ok(ProcessState {
            id: exec_id.map_or_else(|| self.id.clone(), str::to_owned),
            bundle: self.bundle.clone(),
            pid: p.pid,
            state,
            stdio: p.stdio.clone(),
            exit: p.exit,
        })
    }

    /// Resize: the process's payload, whose console is resized.
    pub(crate) fn resize(&mut self, exec_id: Option<&str>) -> Result<&mut R> {
        if let Some(e) = exec_id {
            self.execs.get(e).ok_or_else(|| not_found_exec(e))?.state.can_resize_exec()?;
        }
        self.res_mut(exec_id)
    }

    /// Pause (`pause`) or resume: allowed? A pause is in flight until [`Self::paused`].
    pub(crate) fn pause(&mut self, pause: bool) -> Result<()> {
        if pause {
            self.init.state = self.init.state.pause()?;
        } else {
            self.init.state.can_resume()?;
        }
        Ok(())
    }

    /// `runc pause`/`resume` returned. An exit released meanwhile wins: the state stays
    /// stopped, no event.
    pub(crate) fn paused(&mut self, pause: bool, result: Result<()>) -> (Effects, Result<()>) {
        let before = self.init.state;
        self.init.state = if pause { before.pause_done(result.is_ok()) } else { before };
        let thaw = pause && std::mem::take(&mut self.thaw_after_pause);
        if let Err(e) = result {
            return (Vec::new(), Err(e));
        }
        let steps = if pause && before == State::Pausing {
            let mut ev = TaskPaused::new();
            ev.container_id = self.id.clone();
            self.seq.paused(ev)
        } else if !pause && before == State::Paused {
            self.init.state = before.resumed();
            let mut ev = TaskResumed::new();
            ev.container_id = self.id.clone();
            self.seq.resumed(ev)
        } else {
            Vec::new()
        };
        let mut out = self.apply(steps);
        if thaw {
            out.push(Effect::Thaw);
        }
        (out, Ok(()))
    }

    /// Update: allowed?
    pub(crate) fn update(&self) -> Result<()> {
        Ok(self.init.state.can_update()?)
    }

    /// Checkpoint: allowed?
    pub(crate) fn checkpoint(&self) -> Result<()> {
        Ok(self.init.state.can_checkpoint()?)
    }
}
