//! Soak (issue 9 item 6): many execs in batches of 50 on one container, and many
//! create/start/delete cycles of other containers through the same grouped shim. The shim's
//! fds, threads and zombies must return to their baseline (taken after a warm-up of 100 execs
//! and 5 cycles); its RSS must grow less than 256 KiB after the 1 000th exec (the first
//! thousand are warm-up: the heap and the touched code pages still grow there).
//!
//! Short by default (2 000 execs, 100 cycles); `make soak` runs the full 10 000 / 1 000
//! (`SOAK_EXECS`, `SOAK_CYCLES`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use shim_tests::req::{delete as delete_req, exec as exec_req, kill as kill_req, start as start_req, wait as wait_req};
use shim_tests::*;

const BATCH: usize = 50;
const GROUP: (&str, &str) = ("io.containerd.runc.v2.group", "soak");
/// RSS growth allowed between the 1 000th and the last exec (issue 9: 256 KiB for 10 000).
const RSS_CEILING_KIB: u64 = 256;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: u64,
    zombies: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let me = pid.to_string();
    let zombies = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut f = rest.split(' ');
            (f.next()? == "Z" && f.next()? == me).then_some(())
        })
        .count();
    Usage {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(),
        threads: status_field(pid, "Threads:"),
        zombies,
        rss_kib: status_field(pid, "VmRSS:"),
    }
}

/// `count` execs of `true` in concurrent batches of [`BATCH`], numbered from `first`. After each
/// batch, waits until its TaskExits reached the events server (`exits_before` other exits were
/// expected before exec 0): the soak measures what stays behind, not the event backlog, which
/// under a continuous storm grows because delivery (one Forward round trip at a time) is slower
/// than production.
async fn exec_batches(env: &TestEnv, shim: &Shim, id: &str, first: usize, count: usize, exits_before: usize) {
    let mut n = first;
    while n < first + count {
        let batch = BATCH.min(first + count - n);
        let mut tasks = Vec::new();
        for i in n..n + batch {
            let client = shim.client.clone();
            let id = id.to_owned();
            tasks.push(tokio::spawn(async move {
                let exec_id = format!("x{i}");
                client.exec(ctx(), &exec_req(&id, &exec_id, &["true"])).await.unwrap();
                client.start(ctx(), &start_req(&id, &exec_id)).await.unwrap();
                assert_eq!(client.wait(ctx(), &wait_req(&id, &exec_id)).await.unwrap().exit_status, 0);
                client.delete(ctx(), &delete_req(&id, &exec_id)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        n += batch;
        drained(env, exits_before + n).await;
    }
}

/// `count` create/start/wait/delete cycles of short-lived containers in the grouped shim.
async fn cycles(env: &TestEnv, shim: &Shim, first: usize, count: usize) {
    for i in first..first + count {
        let cid = format!("soak-c{i}");
        let bundle = env.bundle(&cid, &["true"], &[GROUP]);
        env.track_container(&cid, &bundle);
        shim.client.create(ctx(), &env.create_request(&cid, &bundle)).await.unwrap();
        shim.client.start(ctx(), &start_req(&cid, "")).await.unwrap();
        assert_eq!(shim.client.wait(ctx(), &wait_req(&cid, "")).await.unwrap().exit_status, 0);
        shim.client.delete(ctx(), &delete_req(&cid, "")).await.unwrap();
        // Deleted cleanly: TestEnv's cleanup skips containers whose bundle is gone.
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

/// Waits (bounded) until the events server received `exits` TaskExit events: the shim's event
/// queue has drained (under a storm it lags behind, and what it holds is not a leak).
async fn drained(env: &TestEnv, exits: usize) {
    env.events
        .wait_for(Duration::from_secs(600), "event queue drained", |e| {
            e.iter().filter(|r| r.topic == "/tasks/exit").count() >= exits
        })
        .await;
}

/// Waits (bounded) for the shim's fds, threads and zombies to come back to `base`; returns the
/// last reading.
async fn settle(pid: u32, base: Usage) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let u = usage(pid);
        if (u.fds <= base.fds && u.threads <= base.threads && u.zombies == 0) || Instant::now() > deadline {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_execs_and_cycles_return_to_baseline() {
    let execs = env_usize("SOAK_EXECS", 2000);
    let ncycles = env_usize("SOAK_CYCLES", 100);
    assert!(execs >= 2000, "SOAK_EXECS must be at least 2000");
    let env = TestEnv::new().await;
    let id = "soak";
    let bundle = env.bundle(id, &["sleep", "100000"], &[GROUP]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();
    let started = Instant::now();

    // Warm-up: 100 execs and 5 cycles, then the baseline.
    exec_batches(&env, &shim, id, 0, 100, 0).await;
    cycles(&env, &shim, 0, 5).await;
    drained(&env, 105).await;
    let base = usage(shim.pid);
    eprintln!("soak baseline (after 100 execs, 5 cycles): {base:?}");

    // Execs up to the mark (the 1 000th, or a tenth of a longer run), then the rest; RSS at
    // the mark and at the end.
    let mark = (execs / 10).max(1000);
    exec_batches(&env, &shim, id, 100, mark - 100, 5).await;
    drained(&env, mark + 5).await;
    let at_mark = usage(shim.pid);
    exec_batches(&env, &shim, id, mark, execs - mark, 5).await;
    drained(&env, execs + 5).await;
    let at_end = usage(shim.pid);
    let exec_time = started.elapsed();
    eprintln!("soak: {execs} execs in {exec_time:?}; at exec {mark}: {at_mark:?}; at exec {execs}: {at_end:?}");

    cycles(&env, &shim, 5, ncycles).await;
    drained(&env, execs + 5 + ncycles).await;
    let after_cycles = settle(shim.pid, base).await;
    eprintln!("soak: {ncycles} create/start/delete cycles; after all: {after_cycles:?}; total {:?}", started.elapsed());

    assert_eq!(after_cycles.zombies, 0, "zombies left: {after_cycles:?}");
    assert!(after_cycles.fds <= base.fds, "fds grew: {base:?} -> {after_cycles:?}");
    assert!(after_cycles.threads <= base.threads, "threads grew: {base:?} -> {after_cycles:?}");
    let growth = at_end.rss_kib.saturating_sub(at_mark.rss_kib);
    eprintln!("soak: RSS growth between exec {mark} and {execs}: {growth} KiB (ceiling {RSS_CEILING_KIB} KiB)");
    // The ceiling is issue 9's, for 9 000 execs after the 1 000th (`make soak`); the short run
    // (1 000 after the 1 000th) gets the same ceiling.
    {
        assert!(
            growth < RSS_CEILING_KIB,
            "RSS grew {growth} KiB between exec {mark} and {execs} ({} -> {} KiB)",
            at_mark.rss_kib,
            at_end.rss_kib
        );
    }

    shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
