//! The shim's supervision machinery: OCI runtime driver, the one reaper, the per-container
//! actors with their process tables and state machines, stdio (fifos, ptys, `file://` and
//! `binary://` loggers), rootfs mounts, cgroup stats, OOM watches and checkpoints.
//!
//! Owned state: the [`reaper::Reaper`] routing table (pid → who waits), the
//! [`registry::Registry`] (id → container handle), and one actor per container owning its
//! processes ([`container`]).
//!
//! Invariants:
//! - only [`reaper`] calls `waitpid`; every runtime invocation is registered with it under the
//!   spawn lock, every start subscribes to early exits before the runtime runs;
//! - no lock is held across an await, a runtime call or IO; the registry and router locks guard
//!   single map operations;
//! - a container's lifecycle facts reach its sequencer in the actor's program order.
//!
//! Non-goals: protocol decoding (the `shim` crate) and event ordering rules (the `events` crate).

pub mod cgroups;
pub mod checkpoint;
pub mod console;
pub mod container;
pub mod create;
pub mod env;
pub mod error;
pub mod gate;
pub mod io;
pub mod logger;
pub mod mount;
pub mod oci;
pub mod oom;
pub mod options;
pub mod process;
pub mod reaper;
pub mod registry;
mod sync;
pub mod sys;

pub use error::{Result, RuntimeError};
