//! Synchronisation primitives, swapped for loom's under `--cfg shim_loom` so the reaper's
//! routing protocol can be model-checked (runtime/tests/loom_reaper.rs).

#[cfg(shim_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(shim_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
