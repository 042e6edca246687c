//! Task events: what the shim tells containerd, in which order, and how it gets there.
//!
//! Role: turn lifecycle *facts* observed by the runtime (a container was created, a start
//! finished, a pid was reaped, ...) into task *events* in causal order, and deliver them to
//! containerd's `Events/Forward` endpoint.
//!
//! Owned state: one [`sequencer::Sequencer`] per container (owned by that container's actor in
//! `runtime`), and the single [`publisher::Publisher`] task with its FIFO queue.
//!
//! Invariants, for one container (SPEC §3.3):
//! - `TaskCreate` < `TaskStart` < `TaskExit(init)` < `TaskDelete`;
//! - `TaskExecAdded` < `TaskExecStarted(e)` < `TaskExit(e)` < `TaskExit(init)`;
//! - at most one `TaskExit` per started process; no exit for a process never started;
//! - no exec is admitted to start once the init's exit has been observed;
//! - events leave the publisher in the order they were queued; a failed delivery is retried in
//!   place (head of line) and never dropped or overtaken, except an event containerd refuses
//!   for good (InvalidArgument, NotFound), which is logged and skipped; above the queue's memory
//!   ceiling only paused/resumed are dropped (logged), no event a later one depends on, and the
//!   shim refuses new work instead (see [`publisher`]).
//!
//! Non-goals: ordering across containers; anything about processes, pids or runc (this crate
//! knows ids, pids and facts only).

pub mod publisher;
pub mod sequencer;
pub mod topics;

pub use publisher::{Publisher, PublisherConfig};
pub use sequencer::{ExitInfo, ProcessId, Refusal, Sequencer, Step};
pub use topics::Event;
