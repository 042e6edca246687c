//! Requests that end halfway (issue 15 item 2): ttrpc drops a handler's future when the
//! request's deadline passes or its connection closes. Whatever ends the request, the Create,
//! Exec or Start must finish or roll back on its own: nothing is left that no RPC can find.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{delete, exec, kill, start, state, wait};
use shim_tests::*;
use ttrpc::Code;

/// How long a settled state may take to appear (the slowed runc plus its rollback).
const SETTLE: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, or panics with `what` after [`SETTLE`].
async fn settle(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cancelled Create left nothing: no runc state, no mount, State answers NotFound, and a
/// new Create of the same id (with runc no longer slowed) succeeds.
async fn assert_rolled_back(env: &mut TestEnv, shim: &Shim, id: &str, bundle: &Path) {
    let runc_state = env.runc_root().join(NAMESPACE).join(id);
    settle("the cancelled create left its rootfs mounted", || mounts_under(bundle).is_empty()).await;
    assert!(!runc_state.exists(), "the cancelled create left runc state {}", runc_state.display());
    let e = shim.client.state(ctx(), &state(id, "")).await.unwrap_err();
    assert_eq!(code_of(&e), Code::NOT_FOUND, "{e:?}");
    env.set_faults("");
    shim.client.create(ctx(), &env.create_request(id, bundle)).await.expect("the id must be free again");
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.kill(ctx(), &kill(id, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// A Create whose `runc create` takes 3 s more, under a 1 s request deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_past_its_deadline_rolls_back() {
    let mut env = TestEnv::new().await;
    env.set_faults("create:delay-return=3");
    let id = "cancel-deadline";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let short = ttrpc::context::with_duration(Duration::from_secs(1));
    let e = shim.client.create(short, &env.create_request(id, &bundle)).await.unwrap_err();
    assert!(format!("{e:?}").to_lowercase().contains("deadline"), "{e:?}");
    assert_rolled_back(&mut env, &shim, id, &bundle).await;
}

/// The client's connection closes 1 s into a Create whose `runc create` takes 3 s more
/// (containerd restarting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_whose_connection_closes_rolls_back() {
    let mut env = TestEnv::new().await;
    env.set_faults("create:delay-return=3");
    let id = "cancel-conn";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let other = connect(&shim.address).await;
    let req = env.create_request(id, &bundle);
    let creating = tokio::spawn(async move { other.create(ctx(), &req).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!creating.is_finished(), "create should still be in runc");
    // Dropping the only client closes its connection.
    creating.abort();
    let _ = creating.await;
    assert_rolled_back(&mut env, &shim, id, &bundle).await;
}

/// An exec Start whose `runc exec` takes 3 s more, under a 1 s request deadline: the exec is
/// still started and tracked (its Wait, Kill and Delete work), as when the reply is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_start_past_its_deadline_is_tracked() {
    let mut env = TestEnv::new().await;
    let id = "cancel-exec";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    env.set_faults("exec:delay-return=3");
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    shim.client.exec(ctx(), &exec(id, "slow", &["sleep", "1000"])).await.unwrap();
    let short = ttrpc::context::with_duration(Duration::from_secs(1));
    assert!(shim.client.start(short, &start(id, "slow")).await.is_err());
    let client = shim.client.clone();
    let mut status = Status::CREATED;
    for _ in 0..600 {
        status = client.state(ctx(), &state(id, "slow")).await.unwrap().status.enum_value().unwrap();
        if status != Status::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Status::RUNNING, "the exec must end up started");
    let again = shim.client.start(ctx(), &start(id, "slow")).await.unwrap_err();
    assert_eq!(code_of(&again), Code::FAILED_PRECONDITION, "{again:?}");
    shim.client.kill(ctx(), &kill(id, "slow", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "slow")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete(id, "slow")).await.unwrap();
    shim.client.kill(ctx(), &kill(id, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// The shim is SIGTERMed 1 s into a Create whose `runc create` takes 3 s more. It stays until
/// that Create has ended: answered (the client knows the container, and `shim delete` removes
/// it as containerd's cleanup does) or failed and rolled back. Nothing is left that nobody knows.
/// Before the fix the shim exited at once: the client got `early eof`, and the runc container
/// (`runc init` parked) and the mounted rootfs stayed. Now (ttrpc waits up to 5 s for a request
/// in flight) the Create is answered; a longer one would find its requester gone and roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_create_waits_for_it() {
    let mut env = TestEnv::new().await;
    env.set_faults("create:delay-return=3");
    let id = "cancel-term";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let client = shim.client.clone();
    let req = env.create_request(id, &bundle);
    let creating = tokio::spawn(async move { client.create(ctx(), &req).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!creating.is_finished(), "create should still be in runc");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid.cast_signed()), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let answer = creating.await.unwrap();
    settle("the shim did not exit after SIGTERM", || !alive(shim.pid)).await;
    let runc_state = env.runc_root().join(NAMESPACE).join(id);
    eprintln!("the Create under SIGTERM answered: {answer:?}");
    match answer {
        Ok(created) => {
            assert!(created.pid > 0, "{created:?}");
            assert!(runc_state.exists(), "Create answered, yet runc has no state for {id}");
            let out = env.shim_command(&bundle, id, "delete").output().unwrap();
            assert!(out.status.success(), "shim delete: {}", String::from_utf8_lossy(&out.stderr));
            assert!(!runc_state.exists(), "shim delete left runc state");
        }
        Err(e) => {
            assert!(!runc_state.exists(), "Create failed ({e:?}) yet left runc state {}", runc_state.display());
            assert!(mounts_under(&bundle).is_empty(), "Create failed ({e:?}) yet left its rootfs mounted");
        }
    }
    assert!(mounts_under(&bundle).is_empty(), "the rootfs is still mounted");
}
