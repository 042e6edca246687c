//! Checkpoint through `runc checkpoint` (CRIU). CRIU 3.17 cannot run on this machine's kernel
//! (it fails reading the vdso), so what is tested is the failure path: the error is clear
//! (Unknown, with CRIU's own message), the container keeps running, and nothing is left behind.
//! Plus the state checks and option decoding errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use containerd_shim_protos::api;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use containerd_shim_protos::types::task::Status;
use protobuf::Message;
use shim_tests::req::{
    delete as delete_req, kill as kill_req, start as start_req, state as state_req, wait as wait_req,
};
use shim_tests::*;
use ttrpc::Code;

fn checkpoint_req(id: &str, path: &std::path::Path, opts: &CheckpointOptions) -> api::CheckpointTaskRequest {
    let mut r = api::CheckpointTaskRequest::new();
    r.id = id.into();
    r.path = path.display().to_string();
    let mut any = protobuf::well_known_types::any::Any::new();
    any.type_url = "containerd.runc.v1.CheckpointOptions".into();
    any.value = opts.write_to_bytes().unwrap();
    r.options = protobuf::MessageField::some(any);
    r
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            out.extend(files_under(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_checkpoint_is_clear_and_leaves_the_container_running() {
    let env = TestEnv::new().await;
    let id = "ckpt-fail";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    let image = env.dir.join("image");

    // Created: refused before any runtime call.
    let e = shim.client.checkpoint(ctx(), &checkpoint_req(id, &image, &CheckpointOptions::new())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION, "{e:?}");
    assert!(format!("{e:?}").contains("cannot checkpoint a created process"), "{e:?}");
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();
    // Options of another type, and no image path: InvalidArgument.
    let mut bad = checkpoint_req(id, &image, &CheckpointOptions::new());
    bad.options.as_mut().unwrap().type_url = "containerd.runc.v1.Options".into();
    assert_eq!(code_of(&shim.client.checkpoint(ctx(), &bad).await.unwrap_err()), Code::INVALID_ARGUMENT);
    let mut bad = checkpoint_req(id, &image, &CheckpointOptions::new());
    bad.path.clear();
    assert_eq!(code_of(&shim.client.checkpoint(ctx(), &bad).await.unwrap_err()), Code::INVALID_ARGUMENT);

    let before: Vec<String> = files_under(&bundle).into_iter().filter(|f| !f.contains("/rootfs/")).collect();
    // Every option containerd passes, with exit: a failed dump must not stop the container.
    let mut opts = CheckpointOptions::new();
    opts.exit = true;
    opts.open_tcp = true;
    opts.external_unix_sockets = true;
    opts.terminal = true;
    opts.file_locks = true;
    opts.empty_namespaces = vec!["network".into()];
    let e = shim.client.checkpoint(ctx(), &checkpoint_req(id, &image, &opts)).await.unwrap_err();
    assert_eq!(code_of(&e), Code::UNKNOWN, "{e:?}");
    let msg = match &e {
        ttrpc::Error::RpcStatus(s) => s.message.clone(),
        other => panic!("{other:?}"),
    };
    assert!(msg.starts_with("OCI runtime checkpoint failed: "), "{msg}");
    // CRIU's own error lines, and where its full log was copied.
    assert!(msg.contains("criu: Error ("), "{msg}");
    let dump_log = bundle.join("criu-dump.log");
    assert!(msg.contains(&format!("path= {}", dump_log.display())), "{msg}");
    assert!(std::fs::read_to_string(&dump_log).unwrap().contains("Error ("));

    // Still running, same pid; the default work dir is gone; only the dump log was added to
    // the bundle; runc still knows the container.
    let st = shim.client.state(ctx(), &state_req(id, "")).await.unwrap();
    assert_eq!((st.status.enum_value().unwrap(), st.pid), (Status::RUNNING, created.pid));
    assert!(alive(created.pid));
    assert!(!bundle.join("work").exists(), "criu work dir left: {:?}", files_under(&bundle.join("work")));
    let after: Vec<String> = files_under(&bundle).into_iter().filter(|f| !f.contains("/rootfs/")).collect();
    let added: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(added, vec![&dump_log.display().to_string()], "new files in the bundle");
    let state_dir = env.runc_root().join(NAMESPACE).join(id);
    assert_eq!(files_under(&state_dir), vec![state_dir.join("state.json").display().to_string()]);

    // A given work path is kept (the caller's), and the container still works normally after.
    let work = env.dir.join("my-work");
    opts.work_path = work.display().to_string();
    opts.exit = false;
    assert_eq!(
        code_of(&shim.client.checkpoint(ctx(), &checkpoint_req(id, &image, &opts)).await.unwrap_err()),
        Code::UNKNOWN
    );
    assert!(work.join("dump.log").exists(), "caller's work dir keeps CRIU's log");
    shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap().exit_status, 137);
    // Stopped: refused.
    let e = shim.client.checkpoint(ctx(), &checkpoint_req(id, &image, &CheckpointOptions::new())).await.unwrap_err();
    assert_eq!(code_of(&e), Code::FAILED_PRECONDITION);
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
