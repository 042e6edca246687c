//! Init lifecycle through the built binary over ttrpc, with real runc (issue 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::types::task::Status;
use protobuf::Message;
use shim_tests::req::id_req;
use shim_tests::*;
use ttrpc::Code;

const EVENT_WAIT: Duration = Duration::from_secs(20);

async fn wait(shim: &Shim, id: &str) -> api::WaitResponse {
    shim.client.wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = id.into())).await.unwrap()
}

async fn state(shim: &Shim, id: &str) -> Result<api::StateResponse, ttrpc::Error> {
    shim.client.state(ctx(), &id_req(|r: &mut api::StateRequest| r.id = id.into())).await
}

async fn delete(shim: &Shim, id: &str) -> Result<api::DeleteResponse, ttrpc::Error> {
    shim.client.delete(ctx(), &id_req(|r: &mut api::DeleteRequest| r.id = id.into())).await
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
async fn run_to_exit_with_output_and_events() {
    let env = TestEnv::new().await;
    let id = "lc-exit3";
    let bundle = env.bundle(id, &["sh", "-c", "echo hi; echo err >&2; exit 3"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let out = env.fifo("stdout");
    let err = env.fifo("stderr");
    let out_reader = read_fifo(&out);
    let err_reader = read_fifo(&err);
    let mut req = env.create_request(id, &bundle);
    req.stdout = out.display().to_string();
    req.stderr = err.display().to_string();
    let created = shim.client.create(ctx(), &req).await.unwrap();
    assert!(created.pid > 0);

    let st = state(&shim, id).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::CREATED);
    assert_eq!(st.pid, created.pid);

    let started = shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    assert_eq!(started.pid, created.pid);
    let w = wait(&shim, id).await;
    assert_eq!(w.exit_status, 3);

    let st = state(&shim, id).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    assert_eq!(st.exit_status, 3);

    let d = delete(&shim, id).await.unwrap();
    assert_eq!(d.exit_status, 3);
    assert_eq!(d.pid, created.pid);
    assert_eq!(out_reader.await.unwrap(), b"hi\n");
    assert_eq!(err_reader.await.unwrap(), b"err\n");

    let events = env
        .events
        .wait_for(EVENT_WAIT, "create,start,exit,delete", |e| e.iter().any(|r| r.topic == "/tasks/delete"))
        .await;
    assert_eq!(summarize(&events), vec!["create", "start", &format!("exit {id} 3"), "delete"]);
    assert!(events.iter().all(|e| e.namespace == NAMESPACE));
    let c: TaskCreate = events[0].decode();
    assert_eq!((c.container_id.as_str(), c.pid), (id, created.pid));
    assert_eq!(c.rootfs.len(), 1);
    let s: TaskStart = events[1].decode();
    assert_eq!(s.pid, created.pid);
    let x: TaskExit = events[2].decode();
    assert_eq!((x.container_id.as_str(), x.pid), (id, created.pid));
    assert!(x.exited_at.seconds > 0);
    let del: TaskDelete = events[3].decode();
    assert_eq!((del.exit_status, del.id.as_str()), (3, ""));

    // Deleted: unknown now; the rootfs is unmounted; runc has no state for it.
    assert_eq!(code_of(&state(&shim, id).await.unwrap_err()), Code::NOT_FOUND);
    assert!(mounts_under(&bundle).is_empty(), "rootfs still mounted");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left");

    let socket = shim.address.trim_start_matches("unix://").to_owned();
    shutdown_and_reap(&shim).await;
    assert!(!std::path::Path::new(&socket).exists(), "socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_zero_and_sigkill_137() {
    let env = TestEnv::new().await;
    for (id, args, kill, expect) in
        [("lc-zero", vec!["true"], false, 0u32), ("lc-kill", vec!["sleep", "1000"], true, 137u32)]
    {
        let bundle = env.bundle(id, &args, &[]);
        let shim = env.start_shim(id, &bundle).await;
        shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
        shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
        if kill {
            let st = state(&shim, id).await.unwrap();
            assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
            // A running init cannot be deleted.
            assert_eq!(code_of(&delete(&shim, id).await.unwrap_err()), Code::FAILED_PRECONDITION);
            shim.client
                .kill(
                    ctx(),
                    &id_req(|r: &mut api::KillRequest| {
                        r.id = id.into();
                        r.signal = 9;
                    }),
                )
                .await
                .unwrap();
        }
        assert_eq!(wait(&shim, id).await.exit_status, expect);
        // Kill after exit: NotFound.
        let e = shim
            .client
            .kill(
                ctx(),
                &id_req(|r: &mut api::KillRequest| {
                    r.id = id.into();
                    r.signal = 9;
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), Code::NOT_FOUND);
        delete(&shim, id).await.unwrap();
        shutdown_and_reap(&shim).await;
    }
    let events = env
        .events
        .wait_for(EVENT_WAIT, "two deletes", |e| e.iter().filter(|r| r.topic == "/tasks/delete").count() == 2)
        .await;
    let s = summarize(&events);
    assert!(s.contains(&"exit lc-zero 0".to_string()), "{s:?}");
    assert!(s.contains(&"exit lc-kill 137".to_string()), "{s:?}");
    assert_eq!(s.iter().filter(|l| l.starts_with("exit")).count(), 2, "exactly one exit each: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_codes_and_running_container_survives() {
    let env = TestEnv::new().await;
    let id = "lc-bad";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();

    // Unknown id everywhere: NotFound.
    assert_eq!(code_of(&state(&shim, "nope").await.unwrap_err()), Code::NOT_FOUND);
    assert_eq!(code_of(&delete(&shim, "nope").await.unwrap_err()), Code::NOT_FOUND);
    let e = shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = "nope".into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    let e = shim.client.wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = "nope".into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    let e = shim.client.pids(ctx(), &id_req(|r: &mut api::PidsRequest| r.id = "nope".into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    // Unknown exec id: NotFound.
    let e = shim
        .client
        .state(
            ctx(),
            &id_req(|r: &mut api::StateRequest| {
                r.id = id.into();
                r.exec_id = "ghost".into();
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND);
    // Bad ids: InvalidArgument, before any path is built.
    for bad in ["../x", "a/b", "", ".hidden", &"x".repeat(77)] {
        let e = state(&shim, bad).await.unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT, "{bad:?}");
        let mut req = env.create_request(bad, &bundle);
        req.id = bad.into();
        let e = shim.client.create(ctx(), &req).await.unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT, "create {bad:?}");
    }
    // Wrong state: second Start.
    let e = shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    // Duplicate id.
    let e = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap_err();
    assert_eq!(code_of(&e), Code::ALREADY_EXISTS);
    // Broken bundle and options for a new id in the same shim.
    let mut req = env.create_request("other", &bundle);
    req.bundle = "relative/path".into();
    assert_eq!(code_of(&shim.client.create(ctx(), &req).await.unwrap_err()), Code::INVALID_ARGUMENT);
    let mut req = env.create_request("other", &env.dir.join("no-such-bundle"));
    req.rootfs.clear();
    assert_eq!(code_of(&shim.client.create(ctx(), &req).await.unwrap_err()), Code::INVALID_ARGUMENT);
    let mut req = env.create_request("other", &bundle);
    req.options.as_mut().unwrap().type_url = "bogus.Type".into();
    assert_eq!(code_of(&shim.client.create(ctx(), &req).await.unwrap_err()), Code::INVALID_ARGUMENT);
    // Bad signal.
    let e = shim
        .client
        .kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = id.into();
                r.signal = 1000;
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Code::INVALID_ARGUMENT);
    // Exec without a spec.
    let e = shim
        .client
        .exec(
            ctx(),
            &id_req(|r: &mut api::ExecProcessRequest| {
                r.id = id.into();
                r.exec_id = "e1".into();
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Code::INVALID_ARGUMENT);
    // Shutdown with a container left is a no-op.
    shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(shim.pid));

    // Through all that, the container kept running and the shim kept serving it.
    let st = state(&shim, id).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    assert!(alive(st.pid));
    let pids = shim.client.pids(ctx(), &id_req(|r: &mut api::PidsRequest| r.id = id.into())).await.unwrap();
    assert!(pids.processes.iter().any(|p| p.pid == st.pid), "{:?}", pids.processes);

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
    assert_eq!(wait(&shim, id).await.exit_status, 137);
    delete(&shim, id).await.unwrap();
    shutdown_and_reap(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_publishes_nothing_and_leaves_nothing() {
    let env = TestEnv::new().await;
    let id = "lc-nobin";
    let bundle = env.bundle(id, &["/does/not/exist"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let e = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap_err();
    assert_eq!(code_of(&e), Code::UNKNOWN, "{e:?}");
    assert!(mounts_under(&bundle).is_empty(), "rootfs left mounted after failed create");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left after failed create");
    // A runtime binary that does not exist: the error names it in double quotes.
    let mut req = env.create_request(id, &bundle);
    let mut o = containerd_shim_protos::shim::oci::Options::new();
    o.binary_name = "no-runc".into();
    o.root = env.runc_root().display().to_string();
    req.options.as_mut().unwrap().value = o.write_to_bytes().unwrap();
    let e = shim.client.create(ctx(), &req).await.unwrap_err();
    assert!(format!("{e:?}").contains("\\\"no-runc\\\""), "{e:?}");
    assert!(mounts_under(&bundle).is_empty());
    // The id is free again, and nothing was published.
    assert_eq!(code_of(&state(&shim, id).await.unwrap_err()), Code::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.events.all().is_empty(), "{:?}", summarize(&env.events.all()));
    shutdown_and_reap(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_shim_sigkill_cleans_up() {
    let env = TestEnv::new().await;
    let id = "lc-shimkill";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    assert!(!mounts_under(&bundle).is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid.cast_signed()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    for _ in 0..100 {
        if !alive(shim.pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = env.shim_command(&bundle, id, "delete").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resp = api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(resp.exit_status, 137);
    assert_eq!(resp.pid, created.pid);
    assert!(resp.exited_at.seconds > 0);
    assert!(mounts_under(&bundle).is_empty(), "rootfs still mounted");
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left");
    let socket = shim.address.trim_start_matches("unix://");
    assert!(!std::path::Path::new(socket).exists(), "socket of the dead shim left: {socket}");
    for _ in 0..100 {
        if !alive(created.pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(created.pid), "container init survived");
    // Idempotent: a second delete also succeeds.
    let out = env.shim_command(&bundle, id, "delete").output().unwrap();
    assert!(out.status.success());
    assert_eq!(api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap().exit_status, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_containerd_and_keep_order() {
    let mut env = TestEnv::new().await;
    env.events.stop().await;
    let id = "lc-retry";
    let bundle = env.bundle(id, &["sh", "-c", "exit 7"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    assert_eq!(wait(&shim, id).await.exit_status, 7);
    delete(&shim, id).await.unwrap();
    // containerd was "down" the whole time; now it comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.events.all().is_empty());
    env.events.resume().await;
    let events = env.events.wait_for(EVENT_WAIT, "delayed events", |e| e.len() >= 4).await;
    assert_eq!(summarize(&events), vec!["create", "start", &format!("exit {id} 7"), "delete"]);
    shutdown_and_reap(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_containers_share_one_shim() {
    let env = TestEnv::new().await;
    let group = [("io.containerd.runc.v2.group", "grp1")];
    let b1 = env.bundle("grp-a", &["sleep", "1000"], &group);
    let b2 = env.bundle("grp-b", &["sh", "-c", "exit 5"], &group);
    let shim = env.start_shim("grp-a", &b1).await;
    let out = env.shim_command(&b2, "grp-b", "start").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shim.address, "same group, same shim");
    env.track_container("grp-b", &b2);
    shim.client.create(ctx(), &env.create_request("grp-a", &b1)).await.unwrap();
    shim.client.create(ctx(), &env.create_request("grp-b", &b2)).await.unwrap();
    for id in ["grp-a", "grp-b"] {
        shim.client.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into())).await.unwrap();
    }
    assert_eq!(wait(&shim, "grp-b").await.exit_status, 5);
    delete(&shim, "grp-b").await.unwrap();
    // grp-a is untouched and the shim stays for it.
    shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await.unwrap();
    assert_eq!(state(&shim, "grp-a").await.unwrap().status.enum_value().unwrap(), Status::RUNNING);
    shim.client
        .kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = "grp-a".into();
                r.signal = 9;
            }),
        )
        .await
        .unwrap();
    assert_eq!(wait(&shim, "grp-a").await.exit_status, 137);
    delete(&shim, "grp-a").await.unwrap();
    shutdown_and_reap(&shim).await;
}

/// `delete` of a container whose Create never reached the runtime (e.g. options it refused, as
/// CRI's cleanup after a failed RunPodSandbox does) has nothing to delete: it must not make the
/// runtime's state root (runc creates it on any call), so nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_never_created_container_leaves_no_runtime_root() {
    let env = TestEnv::new().await;
    let id = "lc-never-created";
    let bundle = env.bundle(id, &["true"], &[]);
    let root = bundle.parent().unwrap().join("fresh-runc-root");
    std::fs::write(bundle.join("options.json"), serde_json::json!({"root": root}).to_string()).unwrap();
    let out = env.shim_command(&bundle, id, "delete").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap().exit_status, 137);
    assert!(!root.exists(), "delete created the runtime root {}", root.display());
}
