//! The known races of SPEC §4.7, forced with hack/fake-runc around the real runc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{self, delete, exec, kill, start, state, wait};
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

/// The container id an event is about.
fn container_of(e: &Recorded) -> String {
    use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskStart};
    match e.topic.as_str() {
        "/tasks/create" => e.decode::<TaskCreate>().container_id,
        "/tasks/start" => e.decode::<TaskStart>().container_id,
        "/tasks/exec-added" => e.decode::<TaskExecAdded>().container_id,
        "/tasks/exec-started" => e.decode::<TaskExecStarted>().container_id,
        "/tasks/exit" => e.decode::<TaskExit>().container_id,
        "/tasks/delete" => e.decode::<TaskDelete>().container_id,
        t => panic!("unexpected topic {t}"),
    }
}

/// No. 15: Delete immediately followed by Shutdown, 20 times: TaskDelete is delivered, the
/// shim answers both and exits with nothing on its log that looks like a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_shutdown_in_a_loop() {
    use containerd_shim_protos::events::task::TaskDelete;
    let env = TestEnv::new().await;
    for i in 0..20u32 {
        let id = format!("race-ds-{i}");
        let bundle = env.bundle(&id, &["sh", "-c", &format!("exit {}", i % 7)], &[]);
        // The daemon dup2s the bundle's `log` fifo onto stderr: EOF on it means it exited.
        let log = bundle.join("log");
        nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let log_reader = read_fifo(&log);
        let shim = env.start_shim(&id, &bundle).await;
        let socket = shim.address.trim_start_matches("unix://").to_owned();
        shim.client.create(ctx(), &env.create_request(&id, &bundle)).await.unwrap();
        shim.client.start(ctx(), &start(&id, "")).await.unwrap();
        assert_eq!(shim.client.wait(ctx(), &wait(&id, "")).await.unwrap().exit_status, i % 7);
        let d = shim.client.delete(ctx(), &delete(&id, "")).await.unwrap();
        let mut sr = api::ShutdownRequest::new();
        sr.id = id.clone();
        sr.now = i % 2 == 1;
        shim.client.shutdown(ctx(), &sr).await.unwrap_or_else(|e| panic!("iteration {i}: shutdown: {e:?}"));
        assert_eq!(d.exit_status, i % 7);
        let log = tokio::time::timeout(EVENT_WAIT, log_reader).await.expect("shim did not exit").unwrap();
        let log = String::from_utf8_lossy(&log);
        assert!(!log.contains("panicked"), "iteration {i}: {log}");
        for _ in 0..200 {
            if !alive(shim.pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(!alive(shim.pid), "iteration {i}: shim still running");
        assert!(!std::path::Path::new(&socket).exists(), "iteration {i}: socket left");
        let events = env
            .events
            .wait_for(EVENT_WAIT, "TaskDelete", |e| {
                e.iter().any(|r| r.topic == "/tasks/delete" && container_of(r) == id)
            })
            .await;
        let mine: Vec<&Recorded> = events.iter().filter(|r| container_of(r) == id).collect();
        assert_eq!(mine.iter().filter(|r| r.topic == "/tasks/delete").count(), 1, "iteration {i}");
        let del: TaskDelete = mine.last().unwrap().decode();
        assert_eq!((del.exit_status, del.pid), (i % 7, d.pid), "iteration {i}");
    }
}

/// No. 13: a grouped shim; execs on one container complete while another's `runc create` is
/// parked, and every event names the container it is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_execs_during_slow_create_no_cross_talk() {
    let mut env = TestEnv::new().await;
    let release = env.dir.join("release-create");
    let group = [("io.containerd.runc.v2.group", "race13")];
    let a = "race13-a";
    let b = "race13-b";
    let ba = env.bundle(a, &["sleep", "1000"], &group);
    let bb = env.bundle(b, &["sh", "-c", "exit 4"], &group);
    let shim = env.start_shim(a, &ba).await;
    let created_a = shim.client.create(ctx(), &env.create_request(a, &ba)).await.unwrap();
    shim.client.start(ctx(), &start(a, "")).await.unwrap();
    env.set_faults(&format!("create:wait-file={}", release.display()));
    let out = env.shim_command(&bb, b, "start").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shim.address, "same group, same shim");
    env.track_container(b, &bb);
    let c = shim.client.clone();
    let req = env.create_request(b, &bb);
    let creating = tokio::spawn(async move { c.create(ctx(), &req).await });
    // B's create is parked in fake-runc: 8 concurrent execs on A run to completion meanwhile.
    let mut execs = Vec::new();
    for n in 0..8u32 {
        let c = shim.client.clone();
        execs.push(tokio::spawn(async move {
            let e = format!("x{n}");
            c.exec(ctx(), &exec(a, &e, &["sh", "-c", &format!("exit {}", 10 + n)])).await.unwrap();
            let pid = c.start(ctx(), &start(a, &e)).await.unwrap().pid;
            let status = c.wait(ctx(), &wait(a, &e)).await.unwrap().exit_status;
            c.delete(ctx(), &delete(a, &e)).await.unwrap();
            (pid, status)
        }));
    }
    let mut exec_pids = Vec::new();
    for (n, h) in execs.into_iter().enumerate() {
        let (pid, status) =
            tokio::time::timeout(EVENT_WAIT, h).await.expect("exec blocked by the parked create").unwrap();
        assert_eq!(status, 10 + u32::try_from(n).unwrap());
        exec_pids.push(pid);
    }
    assert!(!creating.is_finished(), "create must still be parked while A's execs ran");
    // Nothing about B yet; everything so far is A's.
    let before = env
        .events
        .wait_for(EVENT_WAIT, "A's exec exits", |e| e.iter().filter(|r| r.topic == "/tasks/exit").count() == 8)
        .await;
    assert!(before.iter().all(|r| container_of(r) == a), "{:?}", summarize(&before));
    std::fs::write(&release, b"").unwrap();
    let created_b = creating.await.unwrap().unwrap();
    shim.client.start(ctx(), &start(b, "")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(b, "")).await.unwrap().exit_status, 4);
    shim.client.delete(ctx(), &delete(b, "")).await.unwrap();
    let events = env
        .events
        .wait_for(EVENT_WAIT, "B's delete", |e| e.iter().any(|r| r.topic == "/tasks/delete" && container_of(r) == b))
        .await;
    // B's events are exactly create, start, exit 4, delete, with B's pid.
    let of_b: Vec<&Recorded> = events.iter().filter(|r| container_of(r) == b).collect();
    let s: Vec<String> = summarize(&of_b.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
    assert_eq!(s, vec!["create".to_owned(), "start".into(), format!("exit {b} 4"), "delete".into()]);
    let x: TaskExit = of_b[2].decode();
    assert_eq!(x.pid, created_b.pid);
    // A's exits carry A's exec pids, none is B's init, and A's init has not exited.
    for r in events.iter().filter(|r| r.topic == "/tasks/exit" && container_of(r) == a) {
        let x: TaskExit = r.decode();
        assert!(exec_pids.contains(&x.pid), "exit of {} is not one of A's execs", x.pid);
        assert_ne!(x.pid, created_a.pid);
    }
    let st = shim.client.state(ctx(), &state(a, "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    let _ = shim.client.kill(ctx(), &kill(a, "", 9)).await;
    shim.client.wait(ctx(), &wait(a, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(a, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// No. 8: an init without its own pid namespace exits while an exec (with a child of its own)
/// runs: the shim runs `kill --all`, the exec's TaskExit comes before the init's, and none of
/// the container's processes survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exit_in_host_pid_namespace_kills_the_rest() {
    let env = TestEnv::new().await;
    let id = "race-hostpid";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    // Drop the pid namespace from the spec: the container shares the host's.
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "runner", &["sh", "-c", "sleep 1000 & sleep 1000; wait"])).await.unwrap();
    let exec_pid = shim.client.start(ctx(), &start(id, "runner")).await.unwrap().pid;
    // All of the container's processes: init, sh, its two sleeps (host pids).
    let mut pr = api::PidsRequest::new();
    pr.id = id.into();
    let mut pids = Vec::new();
    for _ in 0..100 {
        pids = shim.client.pids(ctx(), &pr).await.unwrap().processes.iter().map(|p| p.pid).collect::<Vec<_>>();
        if pids.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pids.len() >= 4 && pids.contains(&created.pid) && pids.contains(&exec_pid), "{pids:?}");
    // Only the init is killed; the rest must be taken down by the shim.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(created.pid.cast_signed()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let exec_exit = tokio::time::timeout(EVENT_WAIT, shim.client.wait(ctx(), &wait(id, "runner")))
        .await
        .expect("the exec survived its init")
        .unwrap();
    assert_eq!(exec_exit.exit_status, 137);
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    let events =
        env.events.wait_for(EVENT_WAIT, "init exit", |e| summarize(e).contains(&format!("exit {id} 137"))).await;
    let s = summarize(&events);
    let ex = s.iter().position(|l| l == "exit runner 137").unwrap_or_else(|| panic!("{s:?}"));
    let init = s.iter().position(|l| *l == format!("exit {id} 137")).unwrap();
    assert!(ex < init, "the exec's exit must come first: {s:?}");
    for _ in 0..200 {
        if pids.iter().all(|p| !alive(*p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(survivors.is_empty(), "survivors: {survivors:?}");
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Drops the pid namespace from a bundle's spec: the container shares the host's.
fn share_host_pid_ns(bundle: &std::path::Path) {
    edit_spec(bundle, |spec| spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid"));
}

/// Issue 15 item 1: Kill(SIGKILL, all), Wait, Delete of a container in the host's pid
/// namespace. The shim's own `kill --all` after the init's exit (slowed by 1 s) has returned
/// before Wait does, so Delete never finds the cgroup frozen by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exit_is_held_until_kill_all_returned() {
    let mut env = TestEnv::new().await;
    let marks = env.dir.join("kill-marks");
    env.set_faults(&format!("kill:delay-mark=1,{}", marks.display()));
    let id = "race-killall";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    share_host_pid_ns(&bundle);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let mut all = kill(id, "", 9);
    all.all = true;
    shim.client.kill(ctx(), &all).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    let done = std::fs::read_to_string(&marks).unwrap_or_default();
    // The Kill RPC's `runc kill`, then the shim's own `kill --all` after the init's exit.
    assert_eq!(done.lines().count(), 2, "Wait returned before the shim's kill --all: {done:?}");
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    assert_eq!(summarize(&events), vec!["create", "start", &format!("exit {id} 137"), "delete"]);
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Issue 15 item 7: a created (never started) init is deleted while an exec's start is parked
/// in runc. The Delete is refused while the exec is starting (it would otherwise publish
/// TaskDelete with the init's exit still held, and no TaskExit before it); once the start
/// resolves, the container ends with its exits before TaskDelete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_created_init_while_exec_starts() {
    let mut env = TestEnv::new().await;
    let release = env.dir.join("release-exec");
    env.set_faults(&format!("exec:wait-file={}", release.display()));
    let id = "race-del-created";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "e", &["sleep", "1000"])).await.unwrap();
    let c = shim.client.clone();
    let starting = tokio::spawn(async move { c.start(ctx(), &start(id, "e")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!starting.is_finished(), "exec start should be parked in fake-runc");
    let e = shim.client.delete(ctx(), &delete(id, "")).await.expect_err("delete while an exec is starting");
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION, "{e:?}");
    std::fs::write(&release, b"").unwrap();
    let started = starting.await.unwrap();
    if started.is_ok() {
        shim.client.kill(ctx(), &kill(id, "e", 9)).await.unwrap();
        assert_eq!(shim.client.wait(ctx(), &wait(id, "e")).await.unwrap().exit_status, 137);
    }
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    let s = summarize(&events);
    assert_eq!(s.last().map(String::as_str), Some("delete"), "{s:?}");
    if started.is_ok() {
        let st = s.iter().position(|l| l == "exec-started e").unwrap_or_else(|| panic!("{s:?}"));
        let ex = s.iter().position(|l| l == "exit e 137").unwrap_or_else(|| panic!("{s:?}"));
        assert!(st < ex && ex < s.len() - 1, "{s:?}");
    }
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Issue 15 item 7: `runc exec` started the process but the start then failed (here runc
/// reports an error after creating it). The process must not keep running untracked: Wait
/// returns only once it is gone, the exec cannot be started again, and no event names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_whose_start_failed_after_runc_exec_is_not_left_running() {
    let mut env = TestEnv::new().await;
    env.set_faults("exec:fail-after");
    let id = "race-exec-half";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "half", &["sleep", "1000"])).await.unwrap();
    let e = shim.client.start(ctx(), &start(id, "half")).await.unwrap_err();
    assert!(format!("{e:?}").contains("injected failure"), "{e:?}");
    shim.client.wait(ctx(), &wait(id, "half")).await.unwrap();
    let pids = shim.client.pids(ctx(), &req::id_req(|r: &mut api::PidsRequest| r.id = id.into())).await.unwrap();
    let pids: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![created.pid], "the half-started exec is still running");
    let again = shim.client.start(ctx(), &start(id, "half")).await.unwrap_err();
    assert_eq!(code_of(&again), Code::FAILED_PRECONDITION, "{again:?}");
    shim.client.delete(ctx(), &delete(id, "half")).await.unwrap();
    teardown(&shim, id).await;
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    assert_eq!(summarize(&events), vec!["create", "start", "exec-added", &format!("exit {id} 137"), "delete"]);
}
