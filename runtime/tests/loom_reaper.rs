//! Model check of the reaper's routing protocol with loom: a start in flight subscribes, the
//! reaper routes exits concurrently, the start claims its pid. Whatever the interleaving, the
//! started process's exit is delivered exactly once (to the claim or to the container's inbox),
//! foreign exits never reach it, and nothing stays registered. Also: a runtime helper's exit
//! reaches only its helper, even when it exits while being spawned; a pid reused after an exit
//! (by another container's process, or within one start window) gets its own exit, never the
//! previous owner's, and the previous owner's `forget_pid` does not remove the new route.
//!
//! The kernel is modelled by flags: a reaping thread's `waitpid` (run by `reap_with` under the
//! router lock) marks its pid reaped, and a claim's "does the pid exist" probe reads the mark.
//!
//! Run: `RUSTFLAGS="--cfg shim_loom" cargo test -p shim-runtime --test loom_reaper --release`
#![cfg(shim_loom)]
#![allow(clippy::unwrap_used)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use shim_events::ProcessId;
use shim_runtime::reaper::Reaper;

/// A live process that the spawned thread reaps and routes; `exists` is its probe.
fn reaping(reaper: &Reaper, pid: i32, status: u32) -> (loom::thread::JoinHandle<()>, impl Fn(i32) -> bool) {
    let reaped = Arc::new(AtomicBool::new(false));
    let (r, flag) = (reaper.clone(), Arc::clone(&reaped));
    let t = loom::thread::spawn(move || {
        r.reap_with(|| {
            flag.store(true, Ordering::SeqCst);
            Some((pid, status))
        });
    });
    (t, move |p| p == pid && !reaped.load(Ordering::SeqCst))
}

#[test]
fn claimed_exit_is_delivered_exactly_once() {
    loom::model(|| {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        let r1 = reaper.clone();
        let own = loom::thread::spawn(move || r1.route(42, 3));
        let r2 = reaper.clone();
        let foreign = loom::thread::spawn(move || r2.route(7, 0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let early = sub.claim_with(42, tx, ProcessId::Init, |_| false);
        own.join().unwrap();
        foreign.join().unwrap();
        let late = rx.try_recv().ok();
        assert!(early.is_some() != late.is_some(), "exactly once: early {early:?} late {late:?}");
        let exit = early.or(late.map(|l| l.exit)).unwrap();
        assert_eq!((exit.pid, exit.status), (42, 3));
        assert!(rx.try_recv().is_err(), "no foreign exit delivered");
        assert_eq!(reaper.stats(), (0, 0, 0), "nothing left registered");
    });
}

#[test]
fn concurrent_starts_each_get_their_own_exit() {
    loom::model(|| {
        let reaper = Reaper::new();
        let a = reaper.subscribe();
        let b = reaper.subscribe();
        let r = reaper.clone();
        let exits = loom::thread::spawn(move || {
            r.route(10, 1);
            r.route(11, 2);
        });
        let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
        let rb = loom::thread::spawn(move || b.claim_with(11, tx_b, ProcessId::Exec("b".into()), |_| false));
        let ea = a.claim_with(10, tx_a, ProcessId::Exec("a".into()), |_| false);
        let eb = rb.join().unwrap();
        exits.join().unwrap();
        let a_exit = ea.or(rx_a.try_recv().ok().map(|e| e.exit)).unwrap();
        let b_exit = eb.or(rx_b.try_recv().ok().map(|e| e.exit)).unwrap();
        assert_eq!((a_exit.pid, a_exit.status), (10, 1));
        assert_eq!((b_exit.pid, b_exit.status), (11, 2));
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        assert_eq!(reaper.stats(), (0, 0, 0));
    });
}

/// Container A's exec (pid 42) exited and was routed; the pid is reused by container B's exec,
/// whose start claims it while A deletes its exec (`forget_pid`) and B's exit is reaped.
#[test]
fn forget_after_pid_reuse_keeps_the_new_route() {
    loom::model(|| {
        let reaper = Reaper::new();
        let (a_tx, mut a_rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(reaper.subscribe().claim_with(42, a_tx.clone(), ProcessId::Exec("a".into()), |_| false).is_none());
        reaper.route(42, 0);
        assert_eq!(a_rx.try_recv().unwrap().exit.status, 0);
        let b = reaper.subscribe();
        let ra = reaper.clone();
        let forget = loom::thread::spawn(move || ra.forget_pid(42, &a_tx, &ProcessId::Exec("a".into())));
        let (exit, exists) = reaping(&reaper, 42, 137);
        let (b_tx, mut b_rx) = tokio::sync::mpsc::unbounded_channel();
        let early = b.claim_with(42, b_tx, ProcessId::Exec("b".into()), exists);
        forget.join().unwrap();
        exit.join().unwrap();
        let late = b_rx.try_recv().ok();
        assert!(early.is_some() != late.is_some(), "exactly once: early {early:?} late {late:?}");
        assert_eq!(early.or(late.map(|l| l.exit)).unwrap().status, 137);
        assert!(a_rx.try_recv().is_err(), "A got B's exit");
        assert_eq!(reaper.stats(), (0, 0, 0));
    });
}

/// Within one start window a foreign process with pid 42 exits, then the started process gets
/// pid 42: the claim never takes the foreign exit for its own.
#[test]
fn pid_reused_within_a_start_window() {
    loom::model(|| {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        reaper.route(42, 1);
        let (exit, exists) = reaping(&reaper, 42, 137);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let early = sub.claim_with(42, tx, ProcessId::Init, exists);
        exit.join().unwrap();
        let late = rx.try_recv().ok();
        assert!(early.is_some() != late.is_some(), "exactly once: early {early:?} late {late:?}");
        assert_eq!(early.or(late.map(|l| l.exit)).unwrap().status, 137, "took the previous owner's exit");
        assert_eq!(reaper.stats(), (0, 0, 0));
    });
}

/// A runtime helper (pid 50) exits while it is being spawned, beside a start in flight whose
/// process is pid 42: the helper's exit reaches only the helper, the start only its own. The
/// reaper may look for the helper's exit before it happened; then it is reaped at the next
/// SIGCHLD.
#[test]
fn helper_exit_reaches_only_its_helper() {
    loom::model(|| {
        let reaper = Reaper::new();
        let sub = reaper.subscribe();
        let exited = Arc::new(AtomicBool::new(false));
        let reaped = Arc::new(AtomicBool::new(false));
        // The helper's exit is reaped once, when it has happened and was not reaped before.
        let reap_helper = {
            let (exited, reaped) = (Arc::clone(&exited), Arc::clone(&reaped));
            move || (exited.load(Ordering::SeqCst) && !reaped.swap(true, Ordering::SeqCst)).then_some((50, 0))
        };
        let (r, again) = (reaper.clone(), reap_helper.clone());
        let sigchld = loom::thread::spawn(move || {
            r.reap_with(again);
            r.route(42, 3);
        });
        let (r, flag) = (reaper.clone(), Arc::clone(&exited));
        let helper = loom::thread::spawn(move || {
            r.spawn_with(|| {
                flag.store(true, Ordering::SeqCst);
                Ok(50)
            })
            .unwrap()
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let early = sub.claim_with(42, tx, ProcessId::Init, |_| false);
        let (pid, mut helper_rx) = helper.join().unwrap();
        sigchld.join().unwrap();
        reaper.reap_with(reap_helper);
        assert_eq!(pid, 50);
        let h = helper_rx.try_recv().expect("the helper's exit");
        assert_eq!((h.pid, h.status), (50, 0));
        let late = rx.try_recv().ok();
        assert!(early.is_some() != late.is_some(), "exactly once: early {early:?} late {late:?}");
        let own = early.or(late.map(|l| l.exit)).unwrap();
        assert_eq!((own.pid, own.status), (42, 3));
        assert!(rx.try_recv().is_err(), "the helper's exit reached the container");
        assert_eq!(reaper.stats(), (0, 0, 0));
    });
}
