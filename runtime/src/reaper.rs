//! THE reaper: the only code in the shim daemon that calls `waitpid`. (The one-shot `start`
//! process, where no reaper runs, reaps one child itself: the daemon it just spawned and had to
//! kill because moving it into the `ShimCgroup` failed; `shim/src/bootstrap.rs`.)
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

/// One `waitpid(-1, WNOHANG)`: the next exit of a child, or `None` when none is left.
fn wait_any() -> Option<(i32, u32)> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
            Ok(status) => {
                if let Some(exit) = exit_status(status) {
                    return Some(exit);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(errno = %e, "waitpid failed");
                return None;
            }
        }
    }
}

/// Delivers one exit: to its helper, its routed process, or every live subscription. Only
/// non-blocking sends (oneshot, unbounded), so holding the router lock meanwhile is fine.
fn route_locked(r: &mut Router, pid: i32, status: u32) {
    let exit = ExitInfo { pid: u32::try_from(pid).unwrap_or(0), status, at: SystemTime::now() };
    if let Some(tx) = r.helpers.remove(&pid) {
        let _ = tx.send(exit);
        return;
    }
    if let Some((sink, process)) = r.processes.remove(&pid) {
        let _ = sink.send(ProcessExit { process, exit });
        return;
    }
    for exits in r.subscriptions.values_mut() {
        exits.push(exit);
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
        while self.reap_with(wait_any) {}
    }

    /// Reaps one exit with `wait` (`waitpid`: `None` when nothing is left) and routes it, both
    /// under the router lock: a claim, which probes under the same lock whether its pid still
    /// exists, never sees a pid gone from the kernel whose exit is not routed yet. Returns
    /// whether an exit was reaped (public for the loom model, which cannot fork).
    pub fn reap_with(&self, wait: impl FnOnce() -> Option<(i32, u32)>) -> bool {
        let mut r = self.lock();
        let Some((pid, status)) = wait() else { return false };
        route_locked(&mut r, pid, status);
        true
    }

    /// Routes one reaped exit (public for the loom model).
    pub fn route(&self, pid: i32, status: u32) {
        route_locked(&mut self.lock(), pid, status);
    }

    /// Spawns `cmd` and registers its pid for its exit in one step. The returned receiver
    /// yields the exit; nobody else may wait for this child.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(u32, oneshot::Receiver<ExitInfo>)> {
        self.spawn_with(|| {
            let child = cmd.spawn()?;
            // Dropping `Child` neither waits nor kills; the reaper owns the wait.
            Ok(child.id())
        })
    }

    /// [`Reaper::spawn`] for any way of making a child: `spawn` runs under the router lock and
    /// returns the child's pid, which is registered before the lock is released (public for
    /// the loom model, which cannot fork).
    pub fn spawn_with(
        &self,
        spawn: impl FnOnce() -> io::Result<u32>,
    ) -> io::Result<(u32, oneshot::Receiver<ExitInfo>)> {
        let (tx, rx) = oneshot::channel();
        let mut r = self.lock();
        let pid = spawn()?;
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

    /// Stops routing `pid` to `sink` as `process` (the process was deleted or its container is
    /// gone). Only that route is removed: the pid may have exited and been reused by a process
    /// routed elsewhere since, whose exit must still be delivered.
    pub fn forget_pid(&self, pid: u32, sink: &ExitSink, process: &ProcessId) {
        let Ok(pid) = i32::try_from(pid) else { return };
        let mut r = self.lock();
        if r.processes.get(&pid).is_some_and(|(s, p)| s.same_channel(sink) && p == process) {
            r.processes.remove(&pid);
        }
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
    pub fn claim(self, pid: u32, sink: ExitSink, process: ProcessId) -> Option<ExitInfo> {
        self.claim_with(pid, sink, process, pid_exists)
    }

    /// [`Subscription::claim`] with the probe of whether `pid` exists (alive or an unreaped
    /// zombie) passed in (public for the loom model). The probe runs under the router lock,
    /// which the reaper holds from `waitpid` to routing: if the pid exists, every exit of it
    /// collected so far was a previous owner's (the pid was reused within the start window) and
    /// the process's own exit is still to come; if not, its exit is the last one collected.
    pub fn claim_with(
        mut self,
        pid: u32,
        sink: ExitSink,
        process: ProcessId,
        exists: impl FnOnce(i32) -> bool,
    ) -> Option<ExitInfo> {
        let Ok(raw) = i32::try_from(pid) else {
            // Not a pid the kernel can hand out: nothing can be routed to it.
            self.active = true;
            return None;
        };
        let mut r = self.reaper.lock();
        let exits = r.subscriptions.remove(&self.id).unwrap_or_default();
        self.active = false;
        if !exists(raw) {
            if let Some(exit) = exits.iter().rev().find(|e| e.pid == pid) {
                return Some(*exit);
            }
        }
        r.processes.insert(raw, (sink, process));
        None
    }
}

/// Whether `pid` names a process, alive or a zombie not yet reaped (signal 0 checks only).
fn pid_exists(pid: i32) -> bool {
    pid > 0 && !matches!(nix::sys::signal::kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
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

    /// Probe for a process that was reaped (no pid reuse).
    fn gone(_: i32) -> bool {
        false
    }

    #[test]
    fn early_exit_is_claimed_once() {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        reaper.route(42, 3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exit = sub.claim_with(42, tx, ProcessId::Init, gone).unwrap();
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
        assert!(sub.claim_with(42, tx, ProcessId::Exec("e".into()), gone).is_none());
        reaper.route(42, 137);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.process, ProcessId::Exec("e".into()));
        assert_eq!(got.exit.status, 137);
        assert_eq!(reaper.stats(), (0, 0, 0));
    }

    /// Issue 15 item 3: container A's exec exited with pid 42; the pid is reused by container
    /// B's exec. Deleting A's exec must not remove B's route, or B's exit is dropped.
    #[test]
    fn forget_after_pid_reuse_keeps_the_new_owner() {
        let reaper = Reaper::new();
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let a = reaper.subscribe();
        assert!(a.claim_with(42, a_tx.clone(), ProcessId::Exec("a".into()), gone).is_none());
        reaper.route(42, 0);
        assert_eq!(a_rx.try_recv().unwrap().exit.status, 0);
        let b = reaper.subscribe();
        assert!(b.claim_with(42, b_tx.clone(), ProcessId::Exec("b".into()), gone).is_none());
        reaper.forget_pid(42, &a_tx, &ProcessId::Exec("a".into()));
        // The same sink with another process id is not the owner either.
        reaper.forget_pid(42, &b_tx, &ProcessId::Exec("a".into()));
        reaper.route(42, 137);
        let got = b_rx.try_recv().expect("B's exit must still be routed");
        assert_eq!((got.process, got.exit.status), (ProcessId::Exec("b".into()), 137));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(reaper.stats(), (0, 0, 0));
    }

    /// A foreign process with pid 42 exits during the start window, then the pid is reused by
    /// the started process: the collected exit is not its own.
    #[test]
    fn pid_reused_within_the_start_window_is_not_an_early_exit() {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        reaper.route(42, 1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(sub.claim_with(42, tx, ProcessId::Init, |_| true).is_none(), "a stale exit was claimed");
        reaper.route(42, 137);
        assert_eq!(rx.try_recv().unwrap().exit.status, 137);
        assert_eq!(reaper.stats(), (0, 0, 0));
    }

    #[test]
    fn forget_by_the_owner_removes_the_route() {
        let reaper = Reaper::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(reaper.subscribe().claim_with(42, tx.clone(), ProcessId::Init, gone).is_none());
        reaper.forget_pid(42, &tx, &ProcessId::Init);
        assert_eq!(reaper.stats(), (0, 0, 0));
        reaper.route(42, 0);
        assert!(rx.try_recv().is_err());
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
