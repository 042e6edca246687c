//! One actor per container: it owns the init and exec process table, their state machines and
//! the container's [`Sequencer`].
//!
//! RPC handlers hold a [`ContainerHandle`] and send requests with a oneshot reply. The reaper
//! delivers the container's exits to the same actor, so "exit vs start" is decided in one place
//! in program order. Runtime calls (start, exec, kill, delete, ps) run as child tasks owned by
//! the actor (a `JoinSet`) and report back as messages, so the actor never waits on runc and
//! State/Wait/Kill answer while other starts and execs are in flight.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use shim_events::{Event, ExitInfo, ProcessId, Publisher, Sequencer, Step};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::cgroups::ContainerCgroup;
use crate::error::{Result, RuntimeError};
use crate::io::{IoContext, ProcessIo, StdioConfig};
use crate::oci::{read_pid_file, OciError, OciRuntime};
use crate::oom::OomWatch;
use crate::process::State;
use crate::reaper::{ExitSink, ProcessExit, Reaper, Subscription};
use crate::registry::Registry;

/// How long Delete waits for a process's output to drain (SPEC §5.1).
pub const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A snapshot of one process, for the State RPC.
#[derive(Debug, Clone)]
pub struct ProcessState {
    /// Container id for the init, exec id for an exec.
    pub id: String,
    /// The bundle.
    pub bundle: PathBuf,
    /// Its pid (0 before start).
    pub pid: u32,
    /// Its state.
    pub state: State,
    /// Its stdio.
    pub stdio: StdioConfig,
    /// Its exit, once released.
    pub exit: Option<ExitInfo>,
}

/// What Delete reports.
#[derive(Debug, Clone, Copy)]
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

type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests a handler can send.
#[derive(Debug)]
enum Msg {
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
        spec: serde_json::Value,
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
    Paused {
        pause: bool,
        result: Result<()>,
        reply: Reply<()>,
    },
    // Completions of the actor's own child tasks.
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
    /// The `kill --all` after the init's exit returned: its held exit goes to the sequencer.
    KilledAll {
        exit: ExitInfo,
    },
}

/// A failed exec start. `ran` is the exit of a process the runtime had started anyway (`runc
/// exec` created it, then it or a later step failed): that process was killed and reaped
/// before the failure is reported, so nothing keeps running untracked.
#[derive(Debug)]
struct ExecFailed {
    error: RuntimeError,
    ran: Option<ExitInfo>,
}

/// Handle to a container's actor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContainerHandle {
    id: Arc<str>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl ContainerHandle {
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

    /// Registers an exec process (no runtime call).
    pub async fn exec(&self, exec_id: String, spec: serde_json::Value, stdio: StdioConfig) -> Result<()> {
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

#[derive(Debug)]
struct Proc {
    state: State,
    starting: bool,
    pid: u32,
    stdio: StdioConfig,
    exit: Option<ExitInfo>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    io: Option<ProcessIo>,
    spec: Option<serde_json::Value>,
}

impl Proc {
    fn new(state: State, pid: u32, stdio: StdioConfig, io: Option<ProcessIo>) -> Self {
        Proc { state, starting: false, pid, stdio, exit: None, exit_tx: watch::channel(None).0, io, spec: None }
    }

    /// What Delete reports: its exit, or status 0 at the epoch for a process that never ran.
    fn deleted(&self) -> Deleted {
        let exit = self.exit.unwrap_or(ExitInfo { pid: self.pid, status: 0, at: SystemTime::UNIX_EPOCH });
        Deleted { pid: self.pid, status: exit.status, at: exit.at }
    }
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

/// The actor's state.
#[derive(Debug)]
struct Actor {
    id: String,
    bundle: PathBuf,
    runtime: Arc<OciRuntime>,
    shared: Shared,
    seq: Sequencer,
    init: Proc,
    execs: HashMap<String, Proc>,
    rootfs_mounted: bool,
    restore: Option<crate::checkpoint::PendingRestore>,
    shares_pid_ns: bool,
    io_owner: (u32, u32),
    namespace: String,
    cgroup: Option<ContainerCgroup>,
    oom: Option<OomWatch>,
    self_tx: mpsc::UnboundedSender<Msg>,
    exit_tx: ExitSink,
    tasks: JoinSet<()>,
    /// The init's exit, held while the `kill --all` it triggered runs (no private pid
    /// namespace): as in the Go shim, the init is not reported exited before the rest of the
    /// container was signalled, so a Delete right after Wait never finds the cgroup frozen.
    init_exit_killing: Option<ExitInfo>,
}

/// Starts the actor of a container whose `runc create` succeeded. `subscription` is the
/// early-exit subscription taken before `runc create`; TaskCreate is queued before this returns.
pub fn spawn(new: NewContainer, subscription: Option<Subscription>, shared: Shared) -> ContainerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let mut actor = Actor {
        id: new.id.clone(),
        bundle: new.bundle,
        runtime: new.runtime,
        shared,
        seq: Sequencer::new(new.id.clone()),
        init: Proc::new(State::Created, new.pid, new.stdio, new.io),
        execs: HashMap::new(),
        rootfs_mounted: new.rootfs_mounted,
        restore: new.restore,
        shares_pid_ns: new.shares_pid_ns,
        io_owner: new.io_owner,
        namespace: new.namespace,
        cgroup: new.cgroup,
        oom: new.oom,
        self_tx: tx.clone(),
        exit_tx: exit_tx.clone(),
        tasks: JoinSet::new(),
        init_exit_killing: None,
    };
    let steps = actor.seq.created(new.event);
    actor.apply(steps);
    if let Some(exit) = subscription.and_then(|s| s.claim(new.pid, exit_tx, ProcessId::Init)) {
        actor.on_exit(ProcessExit { process: ProcessId::Init, exit });
    }
    tokio::spawn(actor.run(rx, exit_rx));
    ContainerHandle { id: Arc::from(new.id.as_str()), tx }
}

fn not_found_exec(exec_id: &str) -> RuntimeError {
    RuntimeError::ProcessNotFound { exec_id: exec_id.to_owned() }
}

fn map_kill_error(e: OciError) -> RuntimeError {
    match e {
        OciError::ProcessFinished => RuntimeError::ProcessFinished,
        OciError::ContainerNotFound => RuntimeError::ProcessFinished,
        other => RuntimeError::Oci(other),
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut exits: mpsc::UnboundedReceiver<ProcessExit>) {
        loop {
            tokio::select! {
                biased;
                Some(exit) = exits.recv() => self.on_exit(exit),
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    if self.on_msg(msg) {
                        break;
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                r = oom_wait(self.oom.as_ref()) => self.on_oom(r),
            }
        }
        tracing::debug!(container_id = %self.id, "container actor stopped");
    }

    fn proc_mut(&mut self, exec_id: Option<&str>) -> Result<&mut Proc> {
        match exec_id {
            None => Ok(&mut self.init),
            Some(e) => self.execs.get_mut(e).ok_or_else(|| not_found_exec(e)),
        }
    }

    fn apply(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Publish(event) => self.shared.publisher.publish(event),
                Step::Exited(process, exit) => self.release_exit(process, exit),
            }
        }
    }

    /// State first, then the TaskExit, then the waiters (SPEC §3.3 item 6).
    fn release_exit(&mut self, process: ProcessId, exit: ExitInfo) {
        let (id, proc) = match &process {
            ProcessId::Init => (self.id.clone(), &mut self.init),
            ProcessId::Exec(e) => match self.execs.get_mut(e) {
                Some(p) => (e.clone(), p),
                None => return,
            },
        };
        proc.state = proc.state.exited();
        proc.exit = Some(exit);
        if let Some(io) = &proc.io {
            io.process_exited();
        }
        let mut ev = TaskExit::new();
        ev.container_id = self.id.clone();
        ev.id = id;
        ev.pid = exit.pid;
        ev.exit_status = exit.status;
        ev.exited_at = protobuf::MessageField::some(shim_events::publisher::timestamp(exit.at));
        self.shared.publisher.publish(Event::Exit(ev));
        proc.exit_tx.send_replace(Some(exit));
        tracing::debug!(container_id = %self.id, pid = exit.pid, status = exit.status, "process exited");
    }

    fn on_oom(&mut self, r: std::io::Result<u64>) {
        match r {
            Ok(n) if n > 0 => self.publish_oom(),
            Ok(_) if self.oom.as_ref().is_some_and(OomWatch::alive) => {}
            Ok(_) | Err(_) => self.oom = None,
        }
    }

    fn publish_oom(&mut self) {
        tracing::info!(container_id = %self.id, "oom");
        let mut ev = TaskOOM::new();
        ev.container_id = self.id.clone();
        let steps = self.seq.oom(ev);
        self.apply(steps);
    }

    fn on_exit(&mut self, ProcessExit { process, exit }: ProcessExit) {
        // An OOM kill signals the eventfd before the killed init is reaped: report it first.
        if process == ProcessId::Init && self.oom.as_ref().is_some_and(|w| w.poll_now() > 0) {
            self.publish_oom();
        }
        if process == ProcessId::Init && self.shares_pid_ns && !self.seq.init_exit_seen() {
            if self.init_exit_killing.is_some() {
                return;
            }
            // No private pid namespace: the kernel will not kill the rest (SPEC §2.5). The
            // exit is held (state, TaskExit, waiters) until the kill returns, off the actor.
            self.init_exit_killing = Some(exit);
            let runtime = Arc::clone(&self.runtime);
            let (id, bundle, tx) = (self.id.clone(), self.bundle.clone(), self.self_tx.clone());
            self.tasks.spawn(async move {
                if let Err(e) = runtime.kill(&id, &bundle, 9, true).await {
                    tracing::debug!(container_id = %id, error = %e, "kill --all after init exit");
                }
                let _ = tx.send(Msg::KilledAll { exit });
            });
            return;
        }
        let steps = self.seq.exited(&process, exit);
        self.apply(steps);
    }

    /// Handles one message; returns true when the actor must stop (init deleted).
    fn on_msg(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Start { exec_id: None, reply } => self.start_init(reply),
            Msg::Start { exec_id: Some(e), reply } => self.start_exec(e, reply),
            Msg::State { exec_id, reply } => {
                let _ = reply.send(self.state(exec_id.as_deref()));
            }
            Msg::Kill { exec_id, signal, all, reply } => self.kill(exec_id, signal, all, reply),
            Msg::Wait { exec_id, reply } => {
                let r = self.proc_mut(exec_id.as_deref()).map(|p| p.exit_tx.subscribe());
                let _ = reply.send(r);
            }
            Msg::Delete { exec_id: None, reply } => self.delete_init(reply),
            Msg::Delete { exec_id: Some(e), reply } => self.delete_exec(&e, reply),
            Msg::Exec { exec_id, spec, stdio, reply } => {
                let _ = reply.send(self.add_exec(exec_id, spec, stdio));
            }
            Msg::Pids { reply } => self.pids(reply),
            Msg::CloseIo { exec_id, reply } => {
                let r = self.proc_mut(exec_id.as_deref()).map(|p| {
                    if let Some(io) = p.io.as_mut() {
                        io.close_stdin();
                    }
                });
                let _ = reply.send(r);
            }
            Msg::Resize { exec_id, width, height, reply } => {
                let is_exec = exec_id.is_some();
                let r = self.proc_mut(exec_id.as_deref()).and_then(|p| {
                    if is_exec && p.state == State::Stopped {
                        return Err(RuntimeError::Precondition("cannot resize a stopped container".into()));
                    }
                    match p.io.as_ref() {
                        Some(io) => io
                            .resize(width, height)
                            .map_err(|e| RuntimeError::Sys { what: "resize console".into(), source: e }),
                        None => Ok(()),
                    }
                });
                let _ = reply.send(r);
            }
            Msg::Cgroup { reply } => {
                // Not found at create (the pid had no cgroup yet): try again from the pid.
                if self.cgroup.is_none() && self.init.exit.is_none() {
                    self.cgroup = ContainerCgroup::load(self.init.pid).ok();
                }
                let r = self
                    .cgroup
                    .clone()
                    .ok_or(RuntimeError::Cgroup(crate::cgroups::CgroupError::Deleted { pid: self.init.pid }));
                let _ = reply.send(r);
            }
            Msg::Pause { reply } => self.pause(true, reply),
            Msg::Resume { reply } => self.pause(false, reply),
            Msg::Paused { pause, result, reply } => self.paused(pause, result, reply),
            Msg::Update { resources, reply } => self.update(resources, reply),
            Msg::Checkpoint { opts, reply } => self.checkpoint(opts, reply),
            Msg::InitStarted { result, reply } => self.init_started(result, reply),
            Msg::ExecStarted { exec_id, result, reply } => self.exec_started(exec_id, result, reply),
            Msg::InitDeleted { result, reply } => return self.init_deleted(result, reply),
            Msg::KilledAll { exit } => {
                self.init_exit_killing = None;
                let steps = self.seq.exited(&ProcessId::Init, exit);
                self.apply(steps);
            }
        }
        false
    }

    fn state(&mut self, exec_id: Option<&str>) -> Result<ProcessState> {
        let bundle = self.bundle.clone();
        let id = exec_id.map_or_else(|| self.id.clone(), str::to_owned);
        let init_paused = self.init.state == State::Paused;
        let p = self.proc_mut(exec_id)?;
        // As in the Go shim, an exec reports paused while its container is paused.
        let state = if init_paused && p.state == State::Running { State::Paused } else { p.state };
        Ok(ProcessState { id, bundle, pid: p.pid, state, stdio: p.stdio.clone(), exit: p.exit })
    }

    /// Pause (`pause`) or resume the init; the state changes and the event is queued when
    /// the runtime call returns.
    fn pause(&mut self, pause: bool, reply: Reply<()>) {
        let allowed = if pause { self.init.state.can_pause() } else { self.init.state.can_resume() };
        if let Err(e) = allowed {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let (runtime, id, bundle, tx) =
            (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone(), self.self_tx.clone());
        self.tasks.spawn(async move {
            let result = if pause { runtime.pause(&id, &bundle).await } else { runtime.resume(&id, &bundle).await };
            let _ = tx.send(Msg::Paused { pause, result: result.map_err(RuntimeError::from), reply });
        });
    }

    fn paused(&mut self, pause: bool, result: Result<()>, reply: Reply<()>) {
        if let Err(e) = result {
            let _ = reply.send(Err(e));
            return;
        }
        // An exit released meanwhile wins: the state stays stopped, no event.
        let expected = if pause { State::Running } else { State::Paused };
        if self.init.state == expected {
            self.init.state = if pause { State::Paused } else { State::Running };
            let steps = if pause {
                let mut ev = TaskPaused::new();
                ev.container_id = self.id.clone();
                self.seq.paused(ev)
            } else {
                let mut ev = TaskResumed::new();
                ev.container_id = self.id.clone();
                self.seq.resumed(ev)
            };
            self.apply(steps);
        }
        let _ = reply.send(Ok(()));
    }

    fn update(&mut self, resources: Vec<u8>, reply: Reply<()>) {
        if let Err(e) = self.init.state.can_update() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let (runtime, id, bundle) = (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone());
        self.tasks.spawn(async move {
            let _ = reply.send(runtime.update(&id, &bundle, resources).await.map_err(RuntimeError::from));
        });
    }

    fn checkpoint(&mut self, opts: crate::oci::CheckpointOpts, reply: Reply<()>) {
        if let Err(e) = self.init.state.can_checkpoint() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let (runtime, id, bundle) = (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone());
        self.tasks.spawn(async move {
            let _ = reply.send(crate::checkpoint::checkpoint(&runtime, &id, &bundle, opts).await);
        });
    }

    fn start_init(&mut self, reply: Reply<u32>) {
        if let Err(e) = self.init.state.can_start() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        if self.init.starting {
            let _ = reply.send(Err(RuntimeError::Precondition("init process is already starting".into())));
            return;
        }
        if let Err(r) = self.seq.init_starting() {
            let _ = reply.send(Err(RuntimeError::Precondition(format!("container {} {r}", self.id))));
            return;
        }
        self.init.starting = true;
        let (runtime, id, bundle, tx) =
            (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone(), self.self_tx.clone());
        let restore = self.restore.clone();
        let (reaper, namespace, stdio, owner) =
            (self.shared.reaper.clone(), self.namespace.clone(), self.init.stdio.clone(), self.io_owner);
        self.tasks.spawn(async move {
            let result = match restore {
                None => runtime.start(&id, &bundle).await.map(|()| None).map_err(RuntimeError::from),
                Some(plan) => {
                    let ctx = IoContext { reaper: &reaper, container_id: &id, namespace: &namespace };
                    crate::checkpoint::restore_init(&runtime, &bundle, &stdio, owner, ctx, &plan).await.map(Some)
                }
            };
            let _ = tx.send(Msg::InitStarted { result, reply });
        });
    }

    fn init_started(&mut self, result: Result<Option<(u32, ProcessIo, Subscription)>>, reply: Reply<u32>) {
        self.init.starting = false;
        match result {
            Ok(restored) => {
                let subscription = restored.map(|(pid, io, subscription)| {
                    self.restore = None;
                    self.init.pid = pid;
                    self.init.io = Some(io);
                    self.cgroup = ContainerCgroup::load(pid).ok();
                    self.oom = self.cgroup.as_ref().and_then(crate::create::watch_oom);
                    subscription
                });
                let pid = self.init.pid;
                self.init.state = self.init.state.started();
                let mut ev = TaskStart::new();
                ev.container_id = self.id.clone();
                ev.pid = pid;
                let steps = self.seq.init_started(ev);
                self.apply(steps);
                if let Some(exit) = subscription.and_then(|s| s.claim(pid, self.exit_tx.clone(), ProcessId::Init)) {
                    self.on_exit(ProcessExit { process: ProcessId::Init, exit });
                }
                let _ = reply.send(Ok(pid));
            }
            Err(e) => {
                let steps = self.seq.init_start_failed();
                self.apply(steps);
                let _ = reply.send(Err(e));
            }
        }
    }

    fn add_exec(&mut self, exec_id: String, spec: serde_json::Value, stdio: StdioConfig) -> Result<()> {
        // As in the Go shim, adding an exec is a state check only; its Start is what the
        // sequencer refuses once the init's exit was observed (SPEC §4.7 no. 7).
        self.init.state.can_exec()?;
        if self.execs.contains_key(&exec_id) {
            return Err(RuntimeError::AlreadyExists { id: exec_id });
        }
        let mut p = Proc::new(State::Created, 0, stdio, None);
        p.spec = Some(spec);
        self.execs.insert(exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = self.id.clone();
        ev.exec_id = exec_id;
        let steps = self.seq.exec_added(ev);
        self.apply(steps);
        Ok(())
    }

    fn start_exec(&mut self, exec_id: String, reply: Reply<u32>) {
        let check = (|| {
            let p = self.execs.get(&exec_id).ok_or_else(|| not_found_exec(&exec_id))?;
            p.state.can_start()?;
            if p.starting {
                return Err(RuntimeError::Precondition(format!("exec {exec_id} is already starting")));
            }
            if self.init_exit_killing.is_some() {
                return Err(RuntimeError::Precondition(format!(
                    "container {} {}",
                    self.id,
                    shim_events::Refusal::InitExited
                )));
            }
            self.seq
                .exec_starting(&exec_id)
                .map_err(|r| RuntimeError::Precondition(format!("container {} {r}", self.id)))
        })();
        if let Err(e) = check {
            let _ = reply.send(Err(e));
            return;
        }
        let Some(p) = self.execs.get_mut(&exec_id) else { return };
        p.starting = true;
        let spec = p.spec.clone().unwrap_or_default();
        let stdio = p.stdio.clone();
        let (runtime, reaper) = (Arc::clone(&self.runtime), self.shared.reaper.clone());
        let (id, bundle, owner, tx) = (self.id.clone(), self.bundle.clone(), self.io_owner, self.self_tx.clone());
        let namespace = self.namespace.clone();
        self.tasks.spawn(async move {
            // Subscribe before the runtime can start the process (SPEC §4.4).
            let subscription = reaper.subscribe();
            let ctx = IoContext { reaper: &reaper, container_id: &id, namespace: &namespace };
            let pid_file = bundle.join(format!("{exec_id}.pid"));
            let result = match run_exec(&runtime, &bundle, &pid_file, &spec, &stdio, owner, ctx).await {
                Ok((pid, io)) => Ok((pid, io, subscription)),
                Err(error) => Err(ExecFailed { error, ran: kill_half_started(&pid_file, subscription).await }),
            };
            let _ = tx.send(Msg::ExecStarted { exec_id, result, reply });
        });
    }

    fn exec_started(
        &mut self,
        exec_id: String,
        result: Result<(u32, ProcessIo, Subscription), ExecFailed>,
        reply: Reply<u32>,
    ) {
        let Some(p) = self.execs.get_mut(&exec_id) else {
            let _ = reply.send(Err(not_found_exec(&exec_id)));
            return;
        };
        p.starting = false;
        match result {
            Ok((pid, io, subscription)) => {
                p.pid = pid;
                p.state = p.state.started();
                p.io = Some(io);
                let mut ev = TaskExecStarted::new();
                ev.container_id = self.id.clone();
                ev.exec_id = exec_id.clone();
                ev.pid = pid;
                let steps = self.seq.exec_started(ev);
                self.apply(steps);
                let process = ProcessId::Exec(exec_id);
                if let Some(exit) = subscription.claim(pid, self.exit_tx.clone(), process.clone()) {
                    self.on_exit(ProcessExit { process, exit });
                }
                let _ = reply.send(Ok(pid));
            }
            Err(ExecFailed { error, ran: None }) => {
                // The exec stays Created; its waiters are released with status 0 (SPEC §4.9).
                p.exit_tx.send_replace(Some(ExitInfo { pid: 0, status: 0, at: SystemTime::UNIX_EPOCH }));
                let steps = self.seq.exec_start_failed(&exec_id);
                self.apply(steps);
                let _ = reply.send(Err(error));
            }
            Err(ExecFailed { error, ran: Some(exit) }) => {
                // A process ran and was killed: the exec is stopped (it cannot be started
                // again) with that exit, and no event names it, as no TaskExecStarted went out.
                p.pid = exit.pid;
                p.state = State::Stopped;
                p.exit = Some(exit);
                p.exit_tx.send_replace(Some(exit));
                let steps = self.seq.exec_start_failed(&exec_id);
                self.apply(steps);
                let _ = reply.send(Err(error));
            }
        }
    }

    fn kill(&mut self, exec_id: Option<String>, signal: u32, all: bool, reply: Reply<()>) {
        match exec_id {
            None => {
                if self.init.state == State::Deleted {
                    let _ = reply.send(Err(RuntimeError::ProcessFinished));
                    return;
                }
                let (runtime, id, bundle) = (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone());
                // A frozen process does not die until thawed: resume after a SIGKILL.
                let thaw = self.init.state == State::Paused && signal == 9;
                self.tasks.spawn(async move {
                    let r = runtime.kill(&id, &bundle, signal, all).await.map_err(map_kill_error);
                    if thaw {
                        let _ = runtime.resume(&id, &bundle).await;
                    }
                    let _ = reply.send(r);
                });
            }
            Some(e) => {
                let r = (|| {
                    let p = self.execs.get(&e).ok_or_else(|| not_found_exec(&e))?;
                    match p.state {
                        State::Created => Err(RuntimeError::Precondition("process not created".into())),
                        State::Stopped | State::Deleted => Err(RuntimeError::ProcessFinished),
                        State::Running | State::Paused => {
                            let sig = nix::sys::signal::Signal::try_from(i32::try_from(signal).unwrap_or(-1)).map_err(
                                |_| RuntimeError::InvalidArgument { field: "signal", reason: signal.to_string() },
                            )?;
                            crate::sys::signal_pid(p.pid, Some(sig)).map_err(|errno| match errno {
                                nix::errno::Errno::ESRCH => RuntimeError::ProcessFinished,
                                other => RuntimeError::Sys { what: format!("kill {}", p.pid), source: other.into() },
                            })
                        }
                    }
                })();
                let _ = reply.send(r);
            }
        }
    }

    /// Deletes an exec. The reply waits (bounded) until its output has drained into the fifos:
    /// clients such as `ctr` close their fifo readers as soon as Delete returns (SPEC §5.1).
    fn delete_exec(&mut self, exec_id: &str, reply: Reply<Deleted>) {
        let checked = (|| {
            let p = self.execs.get(exec_id).ok_or_else(|| not_found_exec(exec_id))?;
            p.state.can_delete()?;
            if p.starting {
                return Err(RuntimeError::Precondition(format!("exec {exec_id} is starting")));
            }
            self.execs.remove(exec_id).ok_or_else(|| not_found_exec(exec_id))
        })();
        let mut p = match checked {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.seq.exec_removed(exec_id);
        if p.pid != 0 {
            self.shared.reaper.forget_pid(p.pid, &self.exit_tx, &ProcessId::Exec(exec_id.to_owned()));
        }
        let _ = std::fs::remove_file(self.bundle.join(format!("{exec_id}.pid")));
        let deleted = p.deleted();
        let io = p.io.take();
        let exec_id = exec_id.to_owned();
        self.tasks.spawn(async move {
            if let Some(mut io) = io {
                if !io.drain(IO_DRAIN_TIMEOUT).await {
                    tracing::warn!(exec_id = %exec_id, "failed to drain exec process io");
                }
            }
            let _ = reply.send(Ok(deleted));
        });
    }

    fn delete_init(&mut self, reply: Reply<Deleted>) {
        if let Err(e) = self.init.state.can_delete() {
            let _ = reply.send(Err(e.into()));
            return;
        }
        if self.init.starting {
            let _ = reply.send(Err(RuntimeError::Precondition("init process is starting".into())));
            return;
        }
        // A created init can have execs: deleting it under a starting or running one would
        // publish TaskDelete with the init's exit still held behind theirs.
        if let Some((e, p)) = self.execs.iter().find(|(_, p)| p.starting || p.state == State::Running) {
            let what = if p.starting { "starting" } else { "running" };
            let _ = reply.send(Err(RuntimeError::Precondition(format!("exec {e} is {what}"))));
            return;
        }
        let (runtime, id, bundle, tx) =
            (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone(), self.self_tx.clone());
        let io = self.init.io.take();
        let rootfs_mounted = self.rootfs_mounted;
        // A pending restore never ran: there is no runtime container to delete.
        let created = self.restore.is_none();
        self.tasks.spawn(async move {
            let result = teardown(&runtime, &id, &bundle, io, rootfs_mounted, created).await;
            let _ = tx.send(Msg::InitDeleted { result, reply });
        });
    }

    fn init_deleted(&mut self, result: Result<()>, reply: Reply<Deleted>) -> bool {
        if let Err(e) = result {
            let _ = reply.send(Err(e));
            return false;
        }
        let deleted = self.init.deleted();
        self.init.state = State::Deleted;
        let mut ev = TaskDelete::new();
        ev.container_id = self.id.clone();
        ev.pid = deleted.pid;
        ev.exit_status = deleted.status;
        ev.exited_at = protobuf::MessageField::some(shim_events::publisher::timestamp(deleted.at));
        let steps = self.seq.deleted(ev);
        self.apply(steps);
        let execs = self.execs.iter().map(|(e, p)| (ProcessId::Exec(e.clone()), p.pid));
        for (process, pid) in execs.chain(std::iter::once((ProcessId::Init, self.init.pid))) {
            if pid != 0 {
                self.shared.reaper.forget_pid(pid, &self.exit_tx, &process);
            }
        }
        // Leave the registry before replying, so a Shutdown right after sees no container.
        self.shared.registry.remove(&self.id);
        let _ = reply.send(Ok(deleted));
        true
    }

    fn pids(&mut self, reply: Reply<Vec<(u32, Option<String>)>>) {
        let execs: HashMap<u32, String> =
            self.execs.iter().filter(|(_, p)| p.pid != 0).map(|(id, p)| (p.pid, id.clone())).collect();
        let (runtime, id, bundle) = (Arc::clone(&self.runtime), self.id.clone(), self.bundle.clone());
        self.tasks.spawn(async move {
            let r = runtime
                .ps(&id, &bundle)
                .await
                .map(|pids| pids.into_iter().map(|pid| (pid, execs.get(&pid).cloned())).collect())
                .map_err(RuntimeError::from);
            let _ = reply.send(r);
        });
    }
}

async fn oom_wait(watch: Option<&OomWatch>) -> std::io::Result<u64> {
    match watch {
        Some(w) => w.wait().await,
        None => std::future::pending().await,
    }
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

/// After a failed exec start: if the runtime had started the process anyway (its pid file is
/// there), kill it and wait for its exit through the start's subscription, so the failure is
/// only reported once nothing of the exec runs. Returns that exit.
async fn kill_half_started(pid_file: &std::path::Path, subscription: Subscription) -> Option<ExitInfo> {
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

async fn run_exec(
    runtime: &OciRuntime,
    bundle: &std::path::Path,
    pid_file: &std::path::Path,
    spec: &serde_json::Value,
    stdio: &StdioConfig,
    (uid, gid): (u32, u32),
    ctx: IoContext<'_>,
) -> Result<(u32, ProcessIo)> {
    let id = ctx.container_id;
    // A pid file left by an earlier attempt must not be taken for this one's.
    let _ = std::fs::remove_file(pid_file);
    let (prepared, rt_stdio) = ProcessIo::prepare(stdio, uid, gid, ctx).await?;
    let bytes =
        serde_json::to_vec(spec).map_err(|e| RuntimeError::InvalidArgument { field: "spec", reason: e.to_string() })?;
    // The process spec goes to runc through an anonymous memory file, not a file in the bundle:
    // no inode to create and unlink on the bundle's filesystem per exec.
    let process_file = crate::oci::MemFile::new(c"runc-process", &bytes)
        .map_err(|e| RuntimeError::Sys { what: "process spec memfd".into(), source: e })?;
    let r = runtime.exec(id, bundle, &process_file.path(), pid_file, prepared.console_socket(), rt_stdio).await;
    drop(process_file);
    r?;
    let io = prepared.finish(stdio).await?;
    let pid = read_pid_file(pid_file)?;
    Ok((pid, io))
}

async fn teardown(
    runtime: &OciRuntime,
    id: &str,
    bundle: &std::path::Path,
    io: Option<ProcessIo>,
    rootfs_mounted: bool,
    created: bool,
) -> Result<()> {
    if created {
        runtime.delete(id, Some(&bundle.join("log.json")), false).await?;
    }
    if let Some(mut io) = io {
        if !io.drain(IO_DRAIN_TIMEOUT).await {
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
