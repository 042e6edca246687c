//! The per-container causal-ordering gate.
//!
//! The runtime tells the sequencer *facts* in the order it learns them; the sequencer answers
//! with [`Step`]s, in the order they must take effect. The container's actor applies every
//! step in order: a [`Step::Publish`] is queued on the publisher, a [`Step::Exited`] marks the
//! process stopped, queues its `TaskExit`, and only then releases its waiters (SPEC §3.3 item 6).
//!
//! Contract (SPEC §3.3, §4.3):
//! 1. An exit is held until the start event of its process is out: `TaskCreate` for the init
//!    (and `TaskStart` while a start of the init is in flight), `TaskExecStarted` for an exec.
//! 2. The init's exit is held while any exec is starting or running; it is released when the
//!    last of them has exited or failed to start.
//! 3. Once the init's exit has been observed (even while it is held) no exec may begin to
//!    start: [`Sequencer::exec_starting`] returns [`Refusal::InitExited`].
//! 4. At most one exit per process is released; later duplicates are dropped. Exits of
//!    processes that never began to start are dropped.
//! 5. A failed start releases nothing for that process and keeps the exec count balanced, so
//!    the init's exit is still released.
//!
//! Pure logic: no I/O, no clocks, no channels. Each container has exactly one sequencer owned by
//! its actor, so there is no sharing; concurrency is modelled by shuffling fact arrival in the
//! property tests.

use std::collections::HashMap;
use std::time::SystemTime;

use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskStart};

use crate::topics::Event;

/// Which process of a container a fact is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProcessId {
    /// The container's init process.
    Init,
    /// An exec process, by exec id.
    Exec(String),
}

/// A reaped exit of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The pid that exited.
    pub pid: u32,
    /// Exit code, or 128 + signal number when it was killed by a signal.
    pub status: u32,
    /// When the shim processed the exit.
    pub at: SystemTime,
}

/// One effect, in the order the actor must apply them.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Queue this event on the publisher.
    Publish(Event),
    /// The process has exited: set its state to stopped, queue its `TaskExit`, release waiters.
    Exited(ProcessId, ExitInfo),
}

/// Why an exec may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The init's exit has been observed (SPEC §4.7 no. 9).
    #[error("container init process is not running")]
    InitExited,
    /// The exec is already starting, started or stopped.
    #[error("exec process already started")]
    AlreadyStarted,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Known but no start in flight (an exec after `Exec`, an init before `Create` returns).
    #[default]
    Idle,
    /// A start is in flight: exits are held.
    Starting,
    /// The start event is out: an exit is released (subject to the exec barrier for the init).
    Started,
    /// The exit was released; nothing more happens to this process.
    Done,
}

#[derive(Debug, Default)]
struct Proc {
    phase: Phase,
    held: Option<ExitInfo>,
}

/// Ordering gate for one container. See the module docs for the contract.
#[derive(Debug)]
pub struct Sequencer {
    container_id: String,
    init: Proc,
    /// The init's exit has been observed (held or released).
    init_exit_seen: bool,
    execs: HashMap<String, Proc>,
    /// Execs starting or started whose exit has not been released.
    running_execs: usize,
}

impl Sequencer {
    /// A sequencer for a container whose `runc create` is in flight.
    pub fn new(container_id: impl Into<String>) -> Self {
        Sequencer {
            container_id: container_id.into(),
            init: Proc { phase: Phase::Starting, held: None },
            init_exit_seen: false,
            execs: HashMap::new(),
            running_execs: 0,
        }
    }

    /// The container id events are stamped with.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Execs that are starting or running, whose exits the init's exit waits for.
    pub fn running_execs(&self) -> usize {
        self.running_execs
    }

    /// Whether the init's exit has been observed.
    pub fn init_exit_seen(&self) -> bool {
        self.init_exit_seen
    }

    /// `runc create` succeeded: publish `TaskCreate`; an init exit already seen follows it.
    pub fn created(&mut self, event: TaskCreate) -> Vec<Step> {
        let mut out = vec![Step::Publish(Event::Create(event))];
        self.init.phase = Phase::Started;
        self.release_init(&mut out);
        out
    }

    /// A `runc start` of the init is about to run: hold its exit until [`Self::init_started`].
    /// Refused once the init's exit was released (a `TaskStart` must never follow it).
    pub fn init_starting(&mut self) -> Result<(), Refusal> {
        match self.init.phase {
            Phase::Done => Err(Refusal::InitExited),
            Phase::Starting => Err(Refusal::AlreadyStarted),
            Phase::Idle | Phase::Started => {
                self.init.phase = Phase::Starting;
                Ok(())
            }
        }
    }

    /// `runc start` succeeded: publish `TaskStart`, then any exit that arrived meanwhile.
    pub fn init_started(&mut self, event: TaskStart) -> Vec<Step> {
        let mut out = vec![Step::Publish(Event::Start(event))];
        if self.init.phase == Phase::Starting {
            self.init.phase = Phase::Started;
        }
        self.release_init(&mut out);
        out
    }

    /// `runc start` failed: no event; an exit that arrived meanwhile is released.
    pub fn init_start_failed(&mut self) -> Vec<Step> {
        let mut out = Vec::new();
        if self.init.phase == Phase::Starting {
            self.init.phase = Phase::Started;
        }
        self.release_init(&mut out);
        out
    }

    /// `Exec` succeeded: publish `TaskExecAdded`.
    pub fn exec_added(&mut self, event: TaskExecAdded) -> Vec<Step> {
        self.execs.insert(event.exec_id.clone(), Proc::default());
        vec![Step::Publish(Event::ExecAdded(event))]
    }

    /// An exec start is about to run. Refused once the init's exit has been observed.
    pub fn exec_starting(&mut self, exec_id: &str) -> Result<(), Refusal> {
        if self.init_exit_seen {
            return Err(Refusal::InitExited);
        }
        let p = self.execs.entry(exec_id.to_owned()).or_default();
        if p.phase != Phase::Idle {
            return Err(Refusal::AlreadyStarted);
        }
        p.phase = Phase::Starting;
        self.running_execs += 1;
        Ok(())
    }

    /// `runc exec` succeeded: publish `TaskExecStarted`, then its exit if it already happened.
    pub fn exec_started(&mut self, event: TaskExecStarted) -> Vec<Step> {
        let exec_id = event.exec_id.clone();
        let mut out = Vec::new();
        let Some(p) = self.execs.get_mut(&exec_id) else {
            return out;
        };
        if p.phase != Phase::Starting {
            return out;
        }
        out.push(Step::Publish(Event::ExecStarted(event)));
        p.phase = Phase::Started;
        if let Some(exit) = p.held.take() {
            self.release_exec(&exec_id, exit, &mut out);
        }
        out
    }

    /// `runc exec` failed: no event, and the exec no longer holds back the init's exit.
    pub fn exec_start_failed(&mut self, exec_id: &str) -> Vec<Step> {
        let mut out = Vec::new();
        if let Some(p) = self.execs.get_mut(exec_id) {
            if p.phase == Phase::Starting {
                p.phase = Phase::Idle;
                p.held = None;
                self.running_execs = self.running_execs.saturating_sub(1);
                self.release_init(&mut out);
            }
        }
        out
    }

    /// A reaped exit of one of this container's processes.
    pub fn exited(&mut self, process: &ProcessId, exit: ExitInfo) -> Vec<Step> {
        let mut out = Vec::new();
        match process {
            ProcessId::Init => {
                if self.init_exit_seen {
                    return out;
                }
                self.init_exit_seen = true;
                self.init.held = Some(exit);
                self.release_init(&mut out);
            }
            ProcessId::Exec(id) => {
                let Some(p) = self.execs.get_mut(id) else {
                    return out;
                };
                match p.phase {
                    Phase::Starting if p.held.is_none() => p.held = Some(exit),
                    Phase::Started => self.release_exec(id, exit, &mut out),
                    _ => {}
                }
            }
        }
        out
    }

    /// The container's cgroup hit an OOM kill: publish `TaskOOM`. The runtime reports it before
    /// it reports the exit the kill caused.
    pub fn oom(&mut self, event: containerd_shim_protos::events::task::TaskOOM) -> Vec<Step> {
        vec![Step::Publish(Event::Oom(event))]
    }

    /// `runc pause` succeeded: publish `TaskPaused`.
    pub fn paused(&mut self, event: containerd_shim_protos::events::task::TaskPaused) -> Vec<Step> {
        vec![Step::Publish(Event::Paused(event))]
    }

    /// `runc resume` succeeded: publish `TaskResumed`.
    pub fn resumed(&mut self, event: containerd_shim_protos::events::task::TaskResumed) -> Vec<Step> {
        vec![Step::Publish(Event::Resumed(event))]
    }

    /// The init was deleted: publish `TaskDelete`. Exec deletes publish nothing (SPEC §2.1).
    pub fn deleted(&mut self, event: TaskDelete) -> Vec<Step> {
        vec![Step::Publish(Event::Delete(event))]
    }

    /// Forget an exec (exec Delete) so the map does not grow without bound.
    pub fn exec_removed(&mut self, exec_id: &str) {
        if let Some(p) = self.execs.get(exec_id) {
            if matches!(p.phase, Phase::Idle | Phase::Done) {
                self.execs.remove(exec_id);
            }
        }
    }

    fn release_exec(&mut self, exec_id: &str, exit: ExitInfo, out: &mut Vec<Step>) {
        if let Some(p) = self.execs.get_mut(exec_id) {
            p.phase = Phase::Done;
        }
        out.push(Step::Exited(ProcessId::Exec(exec_id.to_owned()), exit));
        self.running_execs = self.running_execs.saturating_sub(1);
        self.release_init(out);
    }

    fn release_init(&mut self, out: &mut Vec<Step>) {
        if self.init.phase != Phase::Started || self.running_execs > 0 {
            return;
        }
        if let Some(exit) = self.init.held.take() {
            self.init.phase = Phase::Done;
            out.push(Step::Exited(ProcessId::Init, exit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn exit(pid: u32, status: u32) -> ExitInfo {
        ExitInfo { pid, status, at: UNIX_EPOCH }
    }
    fn create() -> TaskCreate {
        let mut e = TaskCreate::new();
        e.container_id = "c".into();
        e
    }
    fn started(exec: &str, pid: u32) -> TaskExecStarted {
        let mut e = TaskExecStarted::new();
        e.container_id = "c".into();
        e.exec_id = exec.into();
        e.pid = pid;
        e
    }
    fn added(exec: &str) -> TaskExecAdded {
        let mut e = TaskExecAdded::new();
        e.container_id = "c".into();
        e.exec_id = exec.into();
        e
    }

    #[test]
    fn init_exit_before_create_is_held_until_create() {
        let mut s = Sequencer::new("c");
        assert!(s.exited(&ProcessId::Init, exit(1, 137)).is_empty());
        let steps = s.created(create());
        assert!(matches!(steps[0], Step::Publish(Event::Create(_))));
        assert_eq!(steps[1], Step::Exited(ProcessId::Init, exit(1, 137)));
    }

    #[test]
    fn init_exit_during_start_follows_task_start() {
        let mut s = Sequencer::new("c");
        s.created(create());
        s.init_starting().unwrap();
        assert!(s.exited(&ProcessId::Init, exit(1, 0)).is_empty());
        let steps = s.init_started(TaskStart::new());
        assert!(matches!(steps[0], Step::Publish(Event::Start(_))));
        assert_eq!(steps[1], Step::Exited(ProcessId::Init, exit(1, 0)));
        assert!(s.exited(&ProcessId::Init, exit(1, 0)).is_empty(), "one exit only");
    }

    #[test]
    fn init_exit_waits_for_running_execs() {
        let mut s = Sequencer::new("c");
        s.created(create());
        s.exec_added(added("e"));
        s.exec_starting("e").unwrap();
        s.exec_started(started("e", 5));
        assert!(s.exited(&ProcessId::Init, exit(1, 137)).is_empty());
        assert_eq!(s.exec_starting("f"), Err(Refusal::InitExited));
        let steps = s.exited(&ProcessId::Exec("e".into()), exit(5, 137));
        assert_eq!(
            steps,
            vec![Step::Exited(ProcessId::Exec("e".into()), exit(5, 137)), Step::Exited(ProcessId::Init, exit(1, 137)),]
        );
    }

    #[test]
    fn failed_exec_start_releases_held_init_exit() {
        let mut s = Sequencer::new("c");
        s.created(create());
        s.exec_added(added("e"));
        s.exec_starting("e").unwrap();
        assert!(s.exited(&ProcessId::Init, exit(1, 9)).is_empty());
        assert_eq!(s.exec_start_failed("e"), vec![Step::Exited(ProcessId::Init, exit(1, 9))]);
        assert_eq!(s.running_execs(), 0);
    }

    #[test]
    fn early_exec_exit_follows_exec_started() {
        let mut s = Sequencer::new("c");
        s.created(create());
        s.exec_added(added("e"));
        s.exec_starting("e").unwrap();
        assert!(s.exited(&ProcessId::Exec("e".into()), exit(5, 3)).is_empty());
        let steps = s.exec_started(started("e", 5));
        assert!(matches!(steps[0], Step::Publish(Event::ExecStarted(_))));
        assert_eq!(steps[1], Step::Exited(ProcessId::Exec("e".into()), exit(5, 3)));
    }
}
