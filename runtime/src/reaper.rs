//! THE reaper: the only code in the shim that calls `waitpid`.
//!
//! SIGCHLD wakes one loop of `waitpid(-1, WNOHANG)` until nothing is left to reap; each exit is
//! routed by pid:
//! - a runtime helper (`runc ...`) spawned through [`Reaper::spawn`] gets its exit on the
//!   oneshot it was registered with *under the same lock as the spawn*, so its exit can never be
//!   routed before its registration;
//! - a container process whose pid was claimed ([`Subscription::claim`]) goes to its container
//!   actor's unbounded exit inbox;
//! - any other exit is appended to every live [`Subscription`] (a start in flight whose pid is not
//!   known yet, SPEC §4.4 "early exits") and otherwise dropped (reparented grandchildren, runc's
//!   own helpers).
//!
//! Delivery never blocks the reaper: exits go to oneshots and unbounded channels (the Go shim's
//! 1 s-per-exit stall came from bounded channels, SPEC §4.6). The router lock is a std `Mutex`
//! held only for map operations, never across an await.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use shim_events::{ExitInfo, ProcessId};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::sync::{Arc, Mutex, MutexGuard};

/// An exit routed to a container actor.
#[derive(Debug, Clone)]
pub struct ProcessExit {
    /// Which process of the container.
    pub process: ProcessId,
    /// The exit.
    pub exit: ExitInfo,
}

/// The sending side of a container actor's exit inbox.
pub type ExitSink = mpsc::UnboundedSender<ProcessExit>;

#[derive(Debug, Default)]
struct Router {
    helpers: HashMap<i32, oneshot::Sender<ExitInfo>>,
    processes: HashMap<i32, (ExitSink, ProcessId)>,
    subscriptions: HashMap<u64, Vec<ExitInfo>>,
    next_subscription: u64,
}

/// Handle to the reaper's routing table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    router: Arc<Mutex<Router>>,
}

impl Default for Reaper {
    fn default() -> Self {
        Self::new()
    }
}

/// Converts a `waitpid` status to the shim's exit status: the code, or 128 + signal.
fn exit_status(status: WaitStatus) -> Option<(i32, u32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), u32::try_from(code).unwrap_or(255))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as u32)),
        _ => None,
    }
}

impl Reaper {
    /// A reaper with an empty routing table. Call [`Reaper::run`] once, on the runtime that
    /// spawns children, before the first spawn.
    pub fn new() -> Self {
        Reaper { router: Arc::new(Mutex::new(Router::default())) }
    }

    fn lock(&self) -> MutexGuard<'_, Router> {
        // A poisoned router only means a panic elsewhere while holding it; the maps are still
        // consistent (every operation is a single insert/remove), so keep going.
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the SIGCHLD handler and returns the future that reaps forever. The handler is
    /// installed before this returns, so no exit signalled after it is missed.
    pub fn run(&self) -> io::Result<impl std::future::Future<Output = ()> + 'static> {
        let mut sigchld = signal(SignalKind::child())?;
        let this = self.clone();
        Ok(async move {
            loop {
                this.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        })
    }

    /// Reaps every child that has exited and routes the exits.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, code)) = exit_status(status) {
                        self.route(pid, code);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(errno = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    /// Routes one reaped exit (called by the reap loop; public for the loom model).
    pub fn route(&self, pid: i32, status: u32) {
        let exit = ExitInfo { pid: u32::try_from(pid).unwrap_or(0), status, at: SystemTime::now() };
        let mut r = self.lock();
        if let Some(tx) = r.helpers.remove(&pid) {
            drop(r);
            let _ = tx.send(exit);
            return;
        }
        if let Some((sink, process)) = r.processes.remove(&pid) {
            drop(r);
            let _ = sink.send(ProcessExit { process, exit });
            return;
        }
        for exits in r.subscriptions.values_mut() {
            exits.push(exit);
        }
    }

    /// Spawns `cmd` and registers its pid for its exit in one step. The returned receiver
    /// yields the exit; nobody else may wait for this child.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(u32, oneshot::Receiver<ExitInfo>)> {
        let (tx, rx) = oneshot::channel();
        let mut r = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id();
        // Dropping `Child` neither waits nor kills; the reaper owns the wait.
        drop(child);
        r.helpers.insert(i32::try_from(pid).unwrap_or(-1), tx);
        Ok((pid, rx))
    }

    /// Starts collecting exits of pids not yet routed, for a start whose pid is not known yet.
    /// Take it *before* spawning the runtime that starts the process.
    pub fn subscribe(&self) -> Subscription {
        let mut r = self.lock();
        let id = r.next_subscription;
        r.next_subscription += 1;
        r.subscriptions.insert(id, Vec::new());
        Subscription { id, reaper: self.clone(), active: true }
    }

    /// Routes a known pid's future exit to `sink` without a subscription (processes whose pid
    /// is known before they can exit).
    pub fn route_pid(&self, pid: u32, sink: ExitSink, process: ProcessId) {
        let mut r = self.lock();
        r.processes.insert(i32::try_from(pid).unwrap_or(-1), (sink, process));
    }

    /// Stops routing `pid` (the process was deleted or its container is gone).
    pub fn forget_pid(&self, pid: u32) {
        let mut r = self.lock();
        r.processes.remove(&i32::try_from(pid).unwrap_or(-1));
    }

    /// Numbers of live helper registrations, routed pids and subscriptions (for budget tests).
    pub fn stats(&self) -> (usize, usize, usize) {
        let r = self.lock();
        (r.helpers.len(), r.processes.len(), r.subscriptions.len())
    }
}

/// Exits collected for one start in flight. Dropping it unregisters it.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    reaper: Reaper,
    active: bool,
}

impl Subscription {
    /// The start returned `pid`: if it already exited, returns that exit; otherwise routes its
    /// future exit to `sink`. Either way the subscription ends. Atomic with respect to the
    /// reaper, so the exit is delivered exactly once.
    pub fn claim(mut self, pid: u32, sink: ExitSink, process: ProcessId) -> Option<ExitInfo> {
        let mut r = self.reaper.lock();
        let exits = r.subscriptions.remove(&self.id).unwrap_or_default();
        self.active = false;
        // The last exit of that pid wins (pid reuse within one start window is not expected).
        if let Some(exit) = exits.iter().rev().find(|e| e.pid == pid) {
            return Some(*exit);
        }
        r.processes.insert(i32::try_from(pid).unwrap_or(-1), (sink, process));
        None
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            self.reaper.lock().subscriptions.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exit_is_claimed_once() {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        reaper.route(42, 3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exit = sub.claim(42, tx, ProcessId::Init).unwrap();
        assert_eq!((exit.pid, exit.status), (42, 3));
        assert_eq!(reaper.stats(), (0, 0, 0));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn later_exit_goes_to_sink() {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        reaper.route(7, 0); // someone else's pid
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(sub.claim(42, tx, ProcessId::Exec("e".into())).is_none());
        reaper.route(42, 137);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.process, ProcessId::Exec("e".into()));
        assert_eq!(got.exit.status, 137);
        assert_eq!(reaper.stats(), (0, 0, 0));
    }

    #[test]
    fn dropped_subscription_unregisters() {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        drop(sub);
        reaper.route(1, 0);
        assert_eq!(reaper.stats(), (0, 0, 0));
    }
}
