//! The known races of SPEC §4.7, forced with hack/fake-runc around the real runc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{delete, exec, kill, start, state, wait};
use shim_tests::*;
use ttrpc::Code;

const EVENT_WAIT: Duration = Duration::from_secs(30);

async fn teardown(shim: &Shim, id: &str) {
    let _ = shim.client.kill(ctx(), &kill(id, "", 9)).await;
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 1: the exec exits before `runc exec` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exits_before_runc_exec_returns() {
    let mut env = TestEnv::new().await;
    env.set_faults("exec:delay-return=0.3");
    let id = "race-early-exec";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "quick", &["sh", "-c", "exit 9"])).await.unwrap();
    let started = shim.client.start(ctx(), &start(id, "quick")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "quick")).await.unwrap().exit_status, 9);
    let events = env.events.wait_for(EVENT_WAIT, "exec exit", |e| summarize(e).contains(&"exit quick 9".into())).await;
    let s = summarize(&events);
    let st = s.iter().position(|l| l == "exec-started quick").unwrap();
    let ex = s.iter().position(|l| l == "exit quick 9").unwrap();
    assert!(st < ex, "{s:?}");
    assert_eq!(s.iter().filter(|l| *l == "exit quick 9").count(), 1);
    let ev: TaskExecStarted = events[st].decode();
    let ex_ev: TaskExit = events[ex].decode();
    assert_eq!((ev.pid, ex_ev.pid), (started.pid, started.pid));
    teardown(&shim, id).await;
}

/// No. 3: the init is killed right after `runc create`, before Create returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_killed_right_after_create() {
    let mut env = TestEnv::new().await;
    env.set_faults("create:kill-init-after");
    let id = "race-create-kill";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    let st = shim.client.state(ctx(), &state(id, "")).await.unwrap();
    assert_eq!((st.status.enum_value().unwrap(), st.exit_status), (Status::STOPPED, 137));
    let e = shim.client.start(ctx(), &start(id, "")).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    assert_eq!(summarize(&events), vec!["create", &format!("exit {id} 137"), "delete"]);
    let x: TaskExit = events[1].decode();
    assert_eq!(x.pid, created.pid);
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 4: the init dies between `runc start` and the TaskStart publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exits_during_start() {
    let mut env = TestEnv::new().await;
    env.set_faults("start:kill-init-after");
    let id = "race-start-kill";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    assert_eq!(summarize(&events), vec!["create", "start", &format!("exit {id} 137"), "delete"]);
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 7: an exec start is parked inside runc while the init is killed; a second exec start is
/// refused; when the first is released it fails; the init's exit is still published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_start_racing_init_death() {
    let mut env = TestEnv::new().await;
    let release = env.dir.join("release-exec");
    env.set_faults(&format!("exec:wait-file={}", release.display()));
    let id = "race-10589";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "exec1", &["sleep", "1000"])).await.unwrap();
    let c = shim.client.clone();
    let id1 = id.to_owned();
    let exec1 = tokio::spawn(async move { c.start(ctx(), &start(&id1, "exec1")).await });
    // exec1 is parked in fake-runc; the init dies meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shim.client.kill(ctx(), &kill(id, "", 9)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // State answers while exec1's start is in flight; the init is not stopped yet (held).
    let st = shim.client.state(ctx(), &state(id, "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    shim.client.exec(ctx(), &exec(id, "exec2", &["true"])).await.unwrap();
    let e = shim.client.start(ctx(), &start(id, "exec2")).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION, "{e:?}");
    std::fs::write(&release, b"").unwrap();
    assert!(exec1.await.unwrap().is_err(), "exec1 must fail: the container is gone");
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    let st = shim.client.state(ctx(), &state(id, "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    for e in ["exec1", "exec2"] {
        let st = shim.client.state(ctx(), &state(id, e)).await.unwrap();
        assert_eq!(st.status.enum_value().unwrap(), Status::CREATED, "{e}");
    }
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    let s = summarize(&events);
    assert!(s.contains(&format!("exit {id} 137")), "{s:?}");
    assert!(!s.iter().any(|l| l.starts_with("exec-started")), "{s:?}");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// runc failing after it created state: Create fails, nothing is left, nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_failing_after_create_is_rolled_back() {
    let mut env = TestEnv::new().await;
    env.set_faults("create:fail-after");
    let id = "race-create-fail";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let e = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap_err();
    assert!(format!("{e:?}").contains("injected failure"), "{e:?}");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left");
    assert!(mounts_under(&bundle).is_empty(), "rootfs left mounted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.events.all().is_empty(), "{:?}", summarize(&env.events.all()));
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 12: runc state deleted behind the shim's back: Wait still returns, Kill is NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_runc_delete_behind_our_back() {
    let env = TestEnv::new().await;
    let id = "race-4214";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let out = std::process::Command::new("runc")
        .args(["--root", env.runc_root().join(NAMESPACE).to_str().unwrap(), "delete", "--force", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    let e = shim.client.kill(ctx(), &kill(id, "", 9)).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 14 and 13: a slow `runc create` of one container does not hold up State, Connect or
/// execs of another container in the same (grouped) shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_create_does_not_block_other_containers() {
    let mut env = TestEnv::new().await;
    let release = env.dir.join("release-create");
    let group = [("io.containerd.runc.v2.group", "slow")];
    let fast = env.bundle("race-fast", &["sleep", "1000"], &group);
    let slow = env.bundle("race-slow", &["sleep", "1000"], &group);
    let shim = env.start_shim("race-fast", &fast).await;
    shim.client.create(ctx(), &env.create_request("race-fast", &fast)).await.unwrap();
    shim.client.start(ctx(), &start("race-fast", "")).await.unwrap();
    // From now on, creates park until released.
    env.set_faults(&format!("create:wait-file={}", release.display()));
    let out = env.shim_command(&slow, "race-slow", "start").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shim.address);
    env.track_container("race-slow", &slow);
    let c = shim.client.clone();
    let req = env.create_request("race-slow", &slow);
    let creating = tokio::spawn(async move { c.create(ctx(), &req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!creating.is_finished(), "create should be parked in fake-runc");
    // Meanwhile the other container is fully served.
    let st = shim.client.state(ctx(), &state("race-fast", "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    let mut cr = api::ConnectRequest::new();
    cr.id = "race-fast".into();
    assert_eq!(shim.client.connect(ctx(), &cr).await.unwrap().task_pid, st.pid);
    shim.client.exec(ctx(), &exec("race-fast", "x", &["sh", "-c", "exit 2"])).await.unwrap();
    shim.client.start(ctx(), &start("race-fast", "x")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait("race-fast", "x")).await.unwrap().exit_status, 2);
    assert!(!creating.is_finished(), "create still parked while the other container was served");
    std::fs::write(&release, b"").unwrap();
    creating.await.unwrap().unwrap();
    shim.client.start(ctx(), &start("race-slow", "")).await.unwrap();
    for id in ["race-slow", "race-fast"] {
        let _ = shim.client.kill(ctx(), &kill(id, "", 9)).await;
        shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
        shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    }
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
