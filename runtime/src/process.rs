//! Process state machines (init and exec), pure.
//!
//! ```text
//!             start              exit
//!   Created ─────────▶ Running ─────────▶ Stopped ──delete──▶ Deleted
//!      │  ▲  pause│  ▲resume                ▲
//!      │  │       ▼  │                      │ exit (any live state)
//!      │  │      Paused ────────────────────┘
//!      └──┴── delete (never started) ─────────────────────────▶ Deleted
//! ```
//! An exec whose `runc exec` failed stays `Created` with its waiters released (SPEC §4.9).
//! Requests in the wrong state get [`InvalidTransition`], mapped to `FailedPrecondition`.

/// Status of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created by the runtime (init) or registered by `Exec` (exec); not started.
    Created,
    /// Started and not yet observed to exit.
    Running,
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
    /// Lowercase name, as in the Go shim's messages.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        }
    }

    fn refuse(self, action: &'static str) -> InvalidTransition {
        InvalidTransition { action, state: self.name() }
    }

    /// Whether a start may begin.
    pub fn can_start(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created => Ok(()),
            s => Err(s.refuse("start")),
        }
    }

    /// The start succeeded. Only `Created` moves; an exit seen meanwhile already won.
    pub fn started(self) -> State {
        match self {
            State::Created => State::Running,
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

    /// Whether the init may be paused.
    pub fn can_pause(self) -> Result<(), InvalidTransition> {
        match self {
            State::Running => Ok(()),
            s => Err(InvalidTransition { action: "pause task in", state: s.name() }),
        }
    }

    /// Whether the init may be resumed.
    pub fn can_resume(self) -> Result<(), InvalidTransition> {
        match self {
            State::Paused => Ok(()),
            s => Err(s.refuse("resume")),
        }
    }

    /// Whether resources may be updated (created, running, paused).
    pub fn can_update(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created | State::Running | State::Paused => Ok(()),
            s => Err(InvalidTransition { action: "update", state: s.name() }),
        }
    }

    /// Whether the init may be checkpointed (running or paused).
    pub fn can_checkpoint(self) -> Result<(), InvalidTransition> {
        match self {
            State::Running | State::Paused => Ok(()),
            s => Err(s.refuse("checkpoint")),
        }
    }

    /// Whether an exec may be added to a container whose init is in this state.
    pub fn can_exec(self) -> Result<(), InvalidTransition> {
        match self {
            State::Created | State::Running => Ok(()),
            s => Err(InvalidTransition { action: "exec in", state: s.name() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(State::Created.can_start().is_ok());
        assert_eq!(State::Running.can_start().unwrap_err().to_string(), "cannot start a running process");
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
