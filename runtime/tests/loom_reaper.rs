//! Model check of the reaper's routing protocol with loom: a start in flight subscribes, the
//! reaper routes exits concurrently, the start claims its pid. Whatever the interleaving, the
//! started process's exit is delivered exactly once (to the claim or to the container's inbox),
//! foreign exits never reach it, and nothing stays registered.
//!
//! Run: `RUSTFLAGS="--cfg shim_loom" cargo test -p shim-runtime --test loom_reaper --release`
#![cfg(shim_loom)]
#![allow(clippy::unwrap_used)]

use shim_events::ProcessId;
use shim_runtime::reaper::Reaper;

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
        let early = sub.claim(42, tx, ProcessId::Init);
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
        let rb = loom::thread::spawn(move || b.claim(11, tx_b, ProcessId::Exec("b".into())));
        let ea = a.claim(10, tx_a, ProcessId::Exec("a".into()));
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
