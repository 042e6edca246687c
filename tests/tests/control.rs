//! Pause, Resume, Update through the built binary with real runc (issue 7).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::types::task::Status;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use shim_tests::req::id_req;
use shim_tests::*;
use ttrpc::Code;

async fn status(shim: &Shim, id: &str, exec_id: &str) -> Status {
    let r = shim
        .client
        .state(
            ctx(),
            &id_req(|r: &mut api::StateRequest| {
                r.id = id.into();
                r.exec_id = exec_id.into();
            }),
        )
        .await
        .unwrap();
    r.status.enum_value().unwrap()
}

fn resources(json: serde_json::Value) -> api::UpdateTaskRequest {
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = serde_json::to_vec(&json).unwrap();
    let mut r = api::UpdateTaskRequest::new();
    r.resources = protobuf::MessageField::some(any);
    r
}

/// The memory cgroup directory of `pid` on this cgroup v1 hybrid host (None on pure v2).
fn memory_cgroup(pid: u32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        ctrl.split(',').any(|c| c == "memory").then(|| path.to_owned())
    })?;
    Some(std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_update_and_kill_while_paused() {
    let env = TestEnv::new().await;
    let id = "ctl";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    // Pause of a created container: FailedPrecondition.
    let e = shim.client.pause(ctx(), &id_req(|r: &mut api::PauseRequest| r.id = id.into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();

    // Update: a memory limit lands in the container's cgroup.
    let mut upd = resources(serde_json::json!({"memory": {"limit": 67_108_864}}));
    upd.id = id.into();
    shim.client.update(ctx(), &upd).await.unwrap();
    if let Some(dir) = memory_cgroup(created.pid) {
        let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), "67108864");
    }
    let mut bad = resources(serde_json::json!(["not", "an", "object"]));
    bad.id = id.into();
    assert_eq!(code_of(&shim.client.update(ctx(), &bad).await.unwrap_err()), Code::INVALID_ARGUMENT);

    // An exec that runs, for the paused-exec state.
    let spec =
        serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["sleep", "1000"], "env": ["PATH=/bin"], "cwd": "/"});
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&spec).unwrap();
    let mut ex = api::ExecProcessRequest::new();
    ex.id = id.into();
    ex.exec_id = "e".into();
    ex.spec = protobuf::MessageField::some(any);
    shim.client.exec(ctx(), &ex).await.unwrap();
    shim.client
        .start(
            ctx(),
            &id_req(|r: &mut api::StartRequest| {
                r.id = id.into();
                r.exec_id = "e".into();
            }),
        )
        .await
        .unwrap();

    shim.client.pause(ctx(), &id_req(|r: &mut api::PauseRequest| r.id = id.into())).await.unwrap();
    assert_eq!(status(&shim, id, "").await, Status::PAUSED);
    assert_eq!(status(&shim, id, "e").await, Status::PAUSED);
    let e = shim.client.pause(ctx(), &id_req(|r: &mut api::PauseRequest| r.id = id.into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    ex.exec_id = "while-paused".into();
    assert_eq!(code_of(&shim.client.exec(ctx(), &ex).await.unwrap_err()), Code::FAILED_PRECONDITION);
    shim.client.resume(ctx(), &id_req(|r: &mut api::ResumeRequest| r.id = id.into())).await.unwrap();
    assert_eq!(status(&shim, id, "").await, Status::RUNNING);
    let e = shim.client.resume(ctx(), &id_req(|r: &mut api::ResumeRequest| r.id = id.into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);

    // SIGKILL while paused still kills (the shim thaws after the kill).
    shim.client.pause(ctx(), &id_req(|r: &mut api::PauseRequest| r.id = id.into())).await.unwrap();
    shim.client
        .kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = id.into();
                r.signal = 9;
                r.all = true;
            }),
        )
        .await
        .unwrap();
    let w = tokio::time::timeout(
        Duration::from_secs(30),
        shim.client.wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = id.into())),
    )
    .await
    .expect("killed paused container never exited")
    .unwrap();
    assert_eq!(w.exit_status, 137);
    // Update of a stopped container: FailedPrecondition.
    let mut upd = resources(serde_json::json!({"memory": {"limit": 33_554_432}}));
    upd.id = id.into();
    assert_eq!(code_of(&shim.client.update(ctx(), &upd).await.unwrap_err()), Code::FAILED_PRECONDITION);
    shim.client.delete(ctx(), &id_req(|r: &mut api::DeleteRequest| r.id = id.into())).await.unwrap();

    let events =
        env.events.wait_for(Duration::from_secs(20), "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    let s = summarize(&events);
    let p = s.iter().position(|l| l == "paused").unwrap();
    let r = s.iter().position(|l| l == "resumed").unwrap();
    assert!(p < r, "{s:?}");
    assert_eq!(s.iter().filter(|l| *l == "paused").count(), 2, "{s:?}");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_container_cgroup() {
    let env = TestEnv::new().await;
    let id = "ctl-stats";
    let bundle = env.bundle(id, &["sh", "-c", "sleep 1000 & sleep 1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = shim.client.stats(ctx(), &id_req(|r: &mut api::StatsRequest| r.id = id.into())).await.unwrap();
    let any = r.stats.into_option().unwrap();
    match any.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&any.value).unwrap();
            // The backgrounded sleep, and sh exec-ed into the last sleep.
            assert_eq!(m.pids.current, 2, "{:?}", m.pids);
            assert!(m.memory.usage.usage > 0);
            assert!(m.cpu.usage.total > 0);
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value).unwrap();
            assert_eq!(m.pids.current, 2);
            assert!(m.memory.usage > 0);
        }
        other => panic!("unexpected metrics type {other}"),
    }
    shim.client
        .kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = id.into();
                r.signal = 9;
                r.all = true;
            }),
        )
        .await
        .unwrap();
    shim.client.wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = id.into())).await.unwrap();
    shim.client.delete(ctx(), &id_req(|r: &mut api::DeleteRequest| r.id = id.into())).await.unwrap();
    let e = shim.client.stats(ctx(), &id_req(|r: &mut api::StatsRequest| r.id = id.into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// SPEC §4.7 no. 19: an OOM-killed init yields TaskOOM, before its TaskExit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported_before_the_exit() {
    let env = TestEnv::new().await;
    let id = "ctl-oom";
    let bundle = env.bundle(id, &["sh", "-c", "x=0123456789; while true; do x=\"$x$x\"; done"], &[]);
    edit_spec(&bundle, |spec| spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 16_777_216}}));
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    let w = tokio::time::timeout(
        Duration::from_secs(60),
        shim.client.wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = id.into())),
    )
    .await
    .expect("memory hog never died")
    .unwrap();
    assert_eq!(w.exit_status, 137);
    shim.client.delete(ctx(), &id_req(|r: &mut api::DeleteRequest| r.id = id.into())).await.unwrap();
    let events =
        env.events.wait_for(Duration::from_secs(20), "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    let s = summarize(&events);
    let oom = s.iter().position(|l| l == "oom").unwrap_or_else(|| panic!("no TaskOOM: {s:?}"));
    let exit = s.iter().position(|l| l == &format!("exit {id} 137")).unwrap();
    assert!(oom < exit, "TaskOOM before TaskExit: {s:?}");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
