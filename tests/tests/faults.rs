//! Faults at the ttrpc level through the built binary with real runc (issue 9): the events
//! endpoint (containerd) goes away in the middle of an exec storm and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{delete as delete_req, exec as exec_req, kill as kill_req, start as start_req};
use shim_tests::req::{state as state_req, wait as wait_req};
use shim_tests::*;

const EVENT_WAIT: Duration = Duration::from_secs(60);

/// SPEC §4.7 no. 20 and issue item 7: the events server stops while 50 execs are being started
/// and exit; Wait and State answer meanwhile; once it is back, every exec gets exactly one
/// TaskExecStarted then exactly one TaskExit with its status, and nothing is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_down_mid_storm_every_exit_delivered_once_in_order() {
    let mut env = TestEnv::new().await;
    let id = "ft-evdown";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();

    const N: usize = 50;
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = shim.client.clone();
        tasks.push(tokio::spawn(async move {
            let exec_id = format!("e{i}");
            let expect = u32::try_from(i % 7).unwrap();
            let code = format!("sleep 0.2; exit {expect}");
            client.exec(ctx(), &exec_req(id, &exec_id, &["sh", "-c", &code])).await.unwrap();
            let started = client.start(ctx(), &start_req(id, &exec_id)).await.unwrap();
            let w = client.wait(ctx(), &wait_req(id, &exec_id)).await.unwrap();
            assert_eq!(w.exit_status, expect, "{exec_id}");
            (exec_id, started.pid, expect)
        }));
    }
    // containerd goes away once the storm is under way.
    env.events
        .wait_for(EVENT_WAIT, "storm under way", |e| e.iter().filter(|r| r.topic == "/tasks/exec-started").count() >= 5)
        .await;
    env.events.stop().await;
    let before = env.events.all().len();
    let mut results = HashMap::new();
    for t in tasks {
        let (exec_id, pid, expect) = t.await.unwrap();
        results.insert(exec_id, (pid, expect));
    }
    // While it is away: State reports every exit, nothing more is received.
    for (exec_id, (pid, expect)) in &results {
        let st = shim.client.state(ctx(), &state_req(id, exec_id)).await.unwrap();
        assert_eq!((st.status.enum_value().unwrap(), st.pid, st.exit_status), (Status::STOPPED, *pid, *expect));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.events.all().len(), before, "events received while the server was down");
    let queued_exits = N - env.events.all().iter().filter(|r| r.topic == "/tasks/exit").count();
    assert!(queued_exits > 0, "the storm ended before the server stopped: nothing tested");

    env.events.resume().await;
    let events = env
        .events
        .wait_for(EVENT_WAIT, "all exits after the server returned", |e| {
            e.iter().filter(|r| r.topic == "/tasks/exit").count() >= N
        })
        .await;
    for (exec_id, (pid, expect)) in &results {
        let seen: Vec<(&str, usize)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.topic.as_str() {
                "/tasks/exec-started" => {
                    let x: TaskExecStarted = e.decode();
                    (&x.exec_id == exec_id).then(|| {
                        assert_eq!(x.pid, *pid);
                        ("started", i)
                    })
                }
                "/tasks/exit" => {
                    let x: TaskExit = e.decode();
                    (&x.id == exec_id).then(|| {
                        assert_eq!((x.pid, x.exit_status), (*pid, *expect), "{exec_id}");
                        ("exit", i)
                    })
                }
                _ => None,
            })
            .collect();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), ["started", "exit"], "{exec_id}: {seen:?}");
    }
    eprintln!("events server down mid-storm: {queued_exits} of {N} TaskExit queued while it was down, 0 lost");
    for exec_id in results.keys() {
        shim.client.delete(ctx(), &delete_req(id, exec_id)).await.unwrap();
    }
    shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    let exits = events.iter().filter(|r| r.topic == "/tasks/exit").count();
    assert_eq!(exits, N + 1, "one TaskExit per process: {:?}", summarize(&events));
}
