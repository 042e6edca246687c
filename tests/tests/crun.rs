//! crun as the OCI runtime (BinaryName), through `hack/crun-private-ns` because Debian 12's
//! crun 1.8 refuses this host's cgroup v1 hybrid layout otherwise: the init lifecycle, exit
//! codes, output and events, and exec processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{delete as delete_req, exec as exec_req, kill as kill_req, start as start_req, wait as wait_req};
use shim_tests::*;
use ttrpc::Code;

const EVENT_WAIT: Duration = Duration::from_secs(30);

async fn crun_env() -> TestEnv {
    let mut env = TestEnv::new().await;
    env.set_runtime(&TestEnv::crun_wrapper());
    env
}

fn state_req(id: &str, exec_id: &str) -> api::StateRequest {
    let mut r = api::StateRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    r
}

async fn shutdown_and_reap(shim: &Shim) {
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
    for _ in 0..200 {
        if !alive(shim.pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("shim {} did not exit after Shutdown", shim.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_init_lifecycle_codes_output_and_events() {
    let env = crun_env().await;
    let id = "crun-exit3";
    let bundle = env.bundle(id, &["sh", "-c", "echo hi; echo err >&2; exit 3"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let out = env.fifo("stdout");
    let err = env.fifo("stderr");
    let (out_reader, err_reader) = (read_fifo(&out), read_fifo(&err));
    let mut req = env.create_request(id, &bundle);
    req.stdout = out.display().to_string();
    req.stderr = err.display().to_string();
    let created = shim.client.create(ctx(), &req).await.unwrap();
    assert!(created.pid > 0);
    assert_eq!(std::fs::read_to_string(bundle.join("runtime")).unwrap(), TestEnv::crun_wrapper().display().to_string());
    // crun's state, in the root the options name.
    assert!(env.runc_root().join(NAMESPACE).join(id).join("status").exists(), "crun state dir");
    let st = shim.client.state(ctx(), &state_req(id, "")).await.unwrap();
    assert_eq!((st.status.enum_value().unwrap(), st.pid), (Status::CREATED, created.pid));
    assert_eq!(shim.client.start(ctx(), &start_req(id, "")).await.unwrap().pid, created.pid);
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap().exit_status, 3);
    let st = shim.client.state(ctx(), &state_req(id, "")).await.unwrap();
    assert_eq!((st.status.enum_value().unwrap(), st.exit_status), (Status::STOPPED, 3));
    let d = shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    assert_eq!((d.exit_status, d.pid), (3, created.pid));
    assert_eq!(out_reader.await.unwrap(), b"hi\n");
    assert_eq!(err_reader.await.unwrap(), b"err\n");
    assert_eq!(code_of(&shim.client.state(ctx(), &state_req(id, "")).await.unwrap_err()), Code::NOT_FOUND);
    assert!(mounts_under(&bundle).is_empty(), "rootfs still mounted");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "crun state left");

    // A running init: delete refused, SIGKILL gives 137, kill after exit is NotFound.
    let id2 = "crun-kill";
    let bundle2 = env.bundle(id2, &["sleep", "1000"], &[]);
    shim.client.create(ctx(), &env.create_request(id2, &bundle2)).await.unwrap();
    env.track_container(id2, &bundle2);
    shim.client.start(ctx(), &start_req(id2, "")).await.unwrap();
    let st = shim.client.state(ctx(), &state_req(id2, "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    let e = shim.client.delete(ctx(), &delete_req(id2, "")).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    shim.client.kill(ctx(), &kill_req(id2, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait_req(id2, "")).await.unwrap().exit_status, 137);
    assert_eq!(code_of(&shim.client.kill(ctx(), &kill_req(id2, "", 9)).await.unwrap_err()), Code::NOT_FOUND);
    shim.client.delete(ctx(), &delete_req(id2, "")).await.unwrap();
    assert!(!env.runc_root().join(NAMESPACE).join(id2).exists(), "crun state left");

    let events = env
        .events
        .wait_for(EVENT_WAIT, "two deletes", |e| e.iter().filter(|r| r.topic == "/tasks/delete").count() == 2)
        .await;
    assert_eq!(
        summarize(&events),
        vec![
            "create",
            "start",
            &format!("exit {id} 3"),
            "delete",
            "create",
            "start",
            &format!("exit {id2} 137"),
            "delete"
        ]
    );
    let socket = shim.address.trim_start_matches("unix://").to_owned();
    shutdown_and_reap(&shim).await;
    assert!(!std::path::Path::new(&socket).exists(), "socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_exec_output_codes_and_events() {
    let env = crun_env().await;
    let id = "crun-exec";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();

    let out = env.fifo("exec-out");
    let reader = read_fifo(&out);
    let mut req = exec_req(id, "e1", &["sh", "-c", "echo from-exec; exit 4"]);
    req.stdout = out.display().to_string();
    shim.client.exec(ctx(), &req).await.unwrap();
    assert_eq!(code_of(&shim.client.exec(ctx(), &req).await.unwrap_err()), Code::ALREADY_EXISTS);
    let started = shim.client.start(ctx(), &start_req(id, "e1")).await.unwrap();
    assert!(started.pid > 0);
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "e1")).await.unwrap().exit_status, 4);
    let st = shim.client.state(ctx(), &state_req(id, "e1")).await.unwrap();
    assert_eq!((st.status.enum_value().unwrap(), st.exit_status, st.pid), (Status::STOPPED, 4, started.pid));
    assert_eq!(shim.client.delete(ctx(), &delete_req(id, "e1")).await.unwrap().exit_status, 4);
    assert_eq!(reader.await.unwrap(), b"from-exec\n");
    // A binary that does not exist: Start fails.
    shim.client.exec(ctx(), &exec_req(id, "nobin", &["/no/such/binary"])).await.unwrap();
    assert!(shim.client.start(ctx(), &start_req(id, "nobin")).await.is_err());
    // A long exec killed by signal; the exec runs in the container (its pid namespace).
    shim.client.exec(ctx(), &exec_req(id, "long", &["sleep", "1000"])).await.unwrap();
    let long = shim.client.start(ctx(), &start_req(id, "long")).await.unwrap();
    let exec_ns = std::fs::read_link(format!("/proc/{}/ns/pid", long.pid)).unwrap();
    let container_ns =
        std::fs::read_link(format!("/proc/{}/ns/pid", shim.client.state(ctx(), &state_req(id, "")).await.unwrap().pid))
            .unwrap();
    assert_eq!(exec_ns, container_ns);
    assert_ne!(exec_ns, std::fs::read_link("/proc/self/ns/pid").unwrap());
    shim.client.kill(ctx(), &kill_req(id, "long", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "long")).await.unwrap().exit_status, 137);

    shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "crun state left");
    let events = env.events.wait_for(EVENT_WAIT, "delete", |e| e.iter().any(|r| r.topic == "/tasks/delete")).await;
    assert_eq!(
        summarize(&events),
        vec![
            "create",
            "start",
            "exec-added",
            "exec-started e1",
            "exit e1 4",
            "exec-added",
            "exec-added",
            "exec-started long",
            "exit long 137",
            &format!("exit {id} 137"),
            "delete",
        ]
    );
    shutdown_and_reap(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_pause_resume_update_stats_pids_and_tty() {
    use protobuf::Message;
    use tokio::io::AsyncWriteExt;
    let env = crun_env().await;
    let id = "crun-ctl";
    let bundle = env.bundle(id, &["sh"], &[]);
    edit_spec(&bundle, |spec| spec["process"]["terminal"] = serde_json::Value::Bool(true));
    let shim = env.start_shim(id, &bundle).await;
    let out = env.fifo("tty-out");
    let input = env.fifo("tty-in");
    let reader = read_fifo(&out);
    let mut req = env.create_request(id, &bundle);
    req.terminal = true;
    req.stdout = out.display().to_string();
    req.stdin = input.display().to_string();
    let created = shim.client.create(ctx(), &req).await.unwrap();
    shim.client.resize_pty(ctx(), &req::resize(id, "", 77, 21)).await.unwrap();
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();

    // Pause / resume (freezer through crun).
    let mut p = api::PauseRequest::new();
    p.id = id.into();
    shim.client.pause(ctx(), &p).await.unwrap();
    assert_eq!(
        shim.client.state(ctx(), &state_req(id, "")).await.unwrap().status.enum_value().unwrap(),
        Status::PAUSED
    );
    let mut r = api::ResumeRequest::new();
    r.id = id.into();
    shim.client.resume(ctx(), &r).await.unwrap();
    assert_eq!(
        shim.client.state(ctx(), &state_req(id, "")).await.unwrap().status.enum_value().unwrap(),
        Status::RUNNING
    );
    // Update: crun update --resources.
    let mut any = protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = serde_json::to_vec(&serde_json::json!({"memory": {"limit": 67_108_864}})).unwrap();
    let mut upd = api::UpdateTaskRequest::new();
    upd.id = id.into();
    upd.resources = protobuf::MessageField::some(any);
    shim.client.update(ctx(), &upd).await.unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", created.pid)).unwrap();
    let mem = cg.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned())).expect("memory cgroup");
    let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(mem.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap().trim(), "67108864");
    // Stats from the cgroup, and Pids through crun ps.
    let mut sr = api::StatsRequest::new();
    sr.id = id.into();
    let any = shim.client.stats(ctx(), &sr).await.unwrap().stats.into_option().unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage.limit, 67_108_864);
    let mut pr = api::PidsRequest::new();
    pr.id = id.into();
    let pids = shim.client.pids(ctx(), &pr).await.unwrap();
    assert!(pids.processes.iter().any(|p| p.pid == created.pid), "{:?}", pids.processes);

    // The terminal: resize before start, typed input, exit code.
    let mut writer = tokio::net::unix::pipe::OpenOptions::new().open_sender(&input).unwrap();
    writer.write_all(b"stty size; echo typed-$((40+2)); exit 5\n").await.unwrap();
    drop(writer);
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap().exit_status, 5);
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    let text = String::from_utf8_lossy(&reader.await.unwrap()).into_owned();
    assert!(text.contains("21 77"), "stty size after resize: {text:?}");
    assert!(text.contains("typed-42"), "{text:?}");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "crun state left");
    shutdown_and_reap(&shim).await;
}
