//! Process state machines (init and exec), pure: the one place that says which request each
//! state allows.
//!
//! ```text
//!   Created ──start──▶ Starting ──ok──▶ Running ──pause──▶ Pausing ──ok──▶ Paused
//!      ▲                  │              ▲  ▲                │               │
//!      └──────failed──────┘              │  └────failed──────┘               │
//!                                        └──────────────resume───────────────┘
//!   any live state ──exit──▶ Stopped ──delete──▶ Deleted;   Created ──delete──▶ Deleted
//! ```
//! `Starting` and `Pausing` are the runtime call in flight (`runc start`/restore/`runc exec`,
//! `runc pause`); the State RPC reports them as created and running, as the Go shim does (its
//! calls run under the process lock). An exec whose `runc exec` failed goes back to `Created`
//! with its waiters released (SPEC §4.9). Requests in the wrong state get
//! [`InvalidTransition`], mapped to `FailedPrecondition`.

/// Status of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Created by the runtime (init) or registered by `Exec` (exec); not started.
    Created,
    /// Its start is in flight.
    Starting,
    /// Started and not yet observed to exit.
    Running,
    /// A `runc pause` is in flight (init only).
    Pausing,
    /// Frozen by `runc pause` (init only).
    Paused,
    /// Its exit was released by the sequencer.
    Stopped,
    /// Deleted; only kept while a reply is in flight.
    Deleted,
}

/// A request that the process's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a {state} process")]
pub struct InvalidTransition {
    /// What was asked.
    pub action: &'static str,
    /// The state's name.
    pub state: &'static str,
}

impl State {
    /// Every state, for tests that go through all of them.
    pub const ALL: [State; 7] = [
        State::Created,
        State::Starting,
        State::Running,
        State::Pausing,
        State::Paused,
        State::Stopped,
        State::Deleted,
    ];

    /// Lowercase name, as in the Go shim's messages.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Pausing => "pausing",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        }
    }

    /// The state the State RPC reports: a call in flight is not visible to clients.
    pub fn reported(self) -> State {
        match self {
            State::Starting => State::Created,
            State::Pausing => State::Running,
            s => s,
        }
    }

    fn refuse(self, action: &'static str) -> InvalidTransition {
        InvalidTransition { action, state: self.name() }
    }

    /// Whether a start may begin; `Starting` if so.
    pub fn start(self) -> Result<State, InvalidTransition> {
        match self {
            State::Created => Ok(State::Starting),
            s => Err(s.refuse("start")),
        }
    }

    /// The start succeeded. Only a starting process moves; an exit seen meanwhile already won.
    pub fn started(self) -> State {
        match self {
            State::Starting | State::Created => State::Running,
            s => s,
        }
    }

    /// The start failed: the process is created again (it can be started again).
    pub fn start_failed(self) -> State {
        match self {
            State::Starting => State::Created,
            s => s,
        }
    }

    /// The process's exit was released.
    pub fn exited(self) -> State {
        match self {
            State::Deleted => State::Deleted,
            _ => State::Stopped,
        }
    }

    /// Whether the process may be deleted: stopped, or created and never started.
    pub fn can_delete(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created | State::Stopped => Ok(()),
            s => Err(s.refuse("delete")),
        }
    }

    /// Whether the init may be paused; `Pausing` if so.
    pub fn pause(self) -> Result<State, InvalidTransition> {
        match self {
            State::Running => Ok(State::Pausing),
            s => Err(InvalidTransition { action: "pause task in", state: s.name() }),
        }
    }

    /// `runc pause` returned: paused if it succeeded, running again if not; an exit released
    /// meanwhile wins.
    pub fn pause_done(self, ok: bool) -> State {
        match self {
            State::Pausing if ok => State::Paused,
            State::Pausing => State::Running,
            s => s,
        }
    }

    /// Whether the init may be resumed.
    pub fn can_resume(self) -> Result<(), InvalidTransition> {
        match self {
            State::Paused => Ok(()),
            s => Err(s.refuse("resume")),
        }
    }

    /// `runc resume` succeeded; an exit released meanwhile wins.
    pub fn resumed(self) -> State {
        match self {
            State::Paused => State::Running,
            s => s,
        }
    }

    /// Whether resources may be updated (created, running, paused, or a call in flight).
    pub fn can_update(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created | State::Starting | State::Running | State::Pausing | State::Paused => Ok(()),
            s => Err(InvalidTransition { action: "update", state: s.name() }),
        }
    }

    /// Whether the init may be checkpointed (running or paused).
    pub fn can_checkpoint(self) -> Result<(), InvalidTransition> {
        match self {
            State::Running | State::Pausing | State::Paused => Ok(()),
            s => Err(s.refuse("checkpoint")),
        }
    }

    /// Whether an exec may be added to a container whose init is in this state.
    pub fn can_exec(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created | State::Starting | State::Running | State::Pausing => Ok(()),
            s => Err(InvalidTransition { action: "exec in", state: s.name() }),
        }
    }

    /// Whether an exec in this state may be signalled: `Ok(true)` if it has a live pid,
    /// `Ok(false)` if it has already exited (NotFound, as in the Go shim).
    pub fn can_signal_exec(self) -> Result<bool, InvalidTransition> {
        match self {
            State::Running | State::Pausing | State::Paused => Ok(true),
            State::Stopped | State::Deleted => Ok(false),
            s @ (State::Created | State::Starting) => Err(s.refuse("kill")),
        }
    }

    /// Whether an exec's terminal may be resized (not once it stopped).
    pub fn can_resize_exec(self) -> Result<(), InvalidTransition> {
        match self {
            State::Stopped => Err(self.refuse("resize")),
            _ => Ok(()),
        }
    }

    /// Whether an exec in this state keeps the init from being deleted (its exit would follow
    /// TaskDelete).
    pub fn blocks_init_delete(self) -> bool {
        matches!(self, State::Starting | State::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert_eq!(State::Created.start(), Ok(State::Starting));
        assert_eq!(State::Running.start().unwrap_err().to_string(), "cannot start a running process");
        assert!(State::Starting.start().is_err());
        assert!(State::Starting.can_delete().is_err());
        assert_eq!(State::Starting.start_failed(), State::Created);
        assert_eq!(State::Running.pause(), Ok(State::Pausing));
        assert!(State::Pausing.pause().is_err());
        assert_eq!(State::Pausing.pause_done(true), State::Paused);
        assert_eq!(State::Pausing.pause_done(false), State::Running);
        assert_eq!(State::Stopped.pause_done(true), State::Stopped);
        assert_eq!(State::Starting.reported(), State::Created);
        assert_eq!(State::Pausing.reported(), State::Running);
        assert_eq!(State::Created.started(), State::Running);
        assert_eq!(State::Stopped.started(), State::Stopped);
        assert_eq!(State::Running.exited(), State::Stopped);
        assert_eq!(State::Deleted.exited(), State::Deleted);
        assert!(State::Running.can_delete().is_err());
        assert!(State::Created.can_delete().is_ok());
        assert!(State::Stopped.can_exec().is_err());
        assert!(State::Paused.can_exec().is_err());
    }
}
