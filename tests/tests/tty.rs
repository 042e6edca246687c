//! Terminal mode through the built binary with real runc (issue 5; SPEC §4.7 nos. 16, 17).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api;
use protobuf::well_known_types::any::Any;
use shim_tests::req::{delete, resize, start, wait};
use shim_tests::*;
use tokio::io::AsyncWriteExt;

/// Fds of `pid` that point at a pty (`/dev/ptmx` or `/dev/pts/*`).
fn pty_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("/dev/pts") || l.to_string_lossy() == "/dev/ptmx")
        .count()
}

/// Fds of `pid` other than sockets (the events connection opens lazily on the first event).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| !l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_init_resize_input_and_exit_code() {
    let env = TestEnv::new().await;
    let id = "tty-init";
    let bundle = env.bundle(id, &["sh"], &[]);
    // As containerd does for `-t`: the spec asks for a terminal too.
    edit_spec(&bundle, |spec| spec["process"]["terminal"] = serde_json::Value::Bool(true));
    let shim = env.start_shim(id, &bundle).await;
    let baseline = fd_count(shim.pid);
    let out = env.fifo("tty-out");
    let input = env.fifo("tty-in");
    let reader = read_fifo(&out);
    let mut req = env.create_request(id, &bundle);
    req.terminal = true;
    req.stdout = out.display().to_string();
    req.stdin = input.display().to_string();
    shim.client.create(ctx(), &req).await.unwrap();
    // Resize works before Start (TestTaskResize).
    shim.client.resize_pty(ctx(), &resize(id, "", 77, 21)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let mut writer = tokio::net::unix::pipe::OpenOptions::new().open_sender(&input).unwrap();
    writer.write_all(b"stty size; echo typed-$((40+2)); exit 5\n").await.unwrap();
    drop(writer);
    assert_eq!(shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status, 5);
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let text = String::from_utf8_lossy(&reader.await.unwrap()).into_owned();
    assert!(text.contains("21 77"), "stty size after resize: {text:?}");
    assert!(text.contains("typed-42"), "typed input echoed and run: {text:?}");
    // No pty master or /dev/ptmx kept after Delete, fds back to the baseline.
    assert_eq!(pty_fds(shim.pid), 0);
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", shim.pid))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(fd_count(shim.pid) <= baseline, "fds {} > baseline {baseline}: {fds:?}", fd_count(shim.pid));
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// SPEC §4.7 no. 17: large TTY exec output arrives whole and the exit code is 0, not 129.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exec_large_output_is_complete() {
    let env = TestEnv::new().await;
    let id = "tty-seq";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let baseline = fd_count(shim.pid);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let out = env.fifo(&format!("seq-out-{i}"));
        let reader = read_fifo(&out);
        let spec = serde_json::json!({
            "terminal": true, "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "cwd": "/",
            "args": ["seq", "-s", " ", "1000000"],
        });
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&spec).unwrap();
        let mut req = api::ExecProcessRequest::new();
        req.id = id.into();
        req.exec_id = format!("seq{i}");
        req.terminal = true;
        req.stdout = out.display().to_string();
        req.spec = protobuf::MessageField::some(any);
        let client = shim.client.clone();
        tasks.push(tokio::spawn(async move {
            client.exec(ctx(), &req).await.unwrap();
            client.start(ctx(), &start(&req.id, &req.exec_id)).await.unwrap();
            let w = client.wait(ctx(), &wait(&req.id, &req.exec_id)).await.unwrap();
            client.delete(ctx(), &delete(&req.id, &req.exec_id)).await.unwrap();
            (w.exit_status, reader.await.unwrap())
        }));
    }
    for t in tasks {
        let (status, out) = t.await.unwrap();
        assert_eq!(status, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.trim_end().ends_with("999999 1000000"), "tail: {:?}", &text[text.len().saturating_sub(40)..]);
        assert!(text.starts_with("1 2 3 "), "head: {:?}", &text[..text.len().min(20)]);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pty_fds(shim.pid), 0, "pty fds kept after exec delete");
    assert!(fd_count(shim.pid) <= baseline, "fds {} > baseline {baseline}", fd_count(shim.pid));
    shim.client.kill(ctx(), &shim_tests::req::kill(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// As in the Go shim, stdin EOF of a terminal process (CloseIO, and the client's writer gone)
/// hangs the terminal up: an interactive shell whose client went away gets SIGHUP (129) rather
/// than living on. Without CloseIO the shell keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_stdin_eof_hangs_up_the_session() {
    let env = TestEnv::new().await;
    let id = "tty-hup";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    edit_spec(&bundle, |spec| spec["process"]["terminal"] = serde_json::Value::Bool(true));
    let shim = env.start_shim(id, &bundle).await;
    let mut req = env.create_request(id, &bundle);
    req.terminal = true;
    req.stdout = env.fifo("hup-out").display().to_string();
    let _reader = read_fifo(Path::new(&req.stdout));
    shim.client.create(ctx(), &req).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();

    // A TTY exec of an interactive shell with stdin.
    let input = env.fifo("hup-in");
    let out = env.fifo("hup-exec-out");
    let exec_reader = read_fifo(&out);
    let mut exec = shim_tests::req::exec(id, "sh1", &["sh"]);
    exec.terminal = true;
    exec.stdin = input.display().to_string();
    exec.stdout = out.display().to_string();
    let mut process: serde_json::Value = serde_json::from_slice(&shim_tests::req::process_spec(&["sh"]).value).unwrap();
    process["terminal"] = serde_json::Value::Bool(true);
    exec.spec = protobuf::MessageField::some(Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&process).unwrap(),
        ..Default::default()
    });
    shim.client.exec(ctx(), &exec).await.unwrap();
    shim.client.start(ctx(), &start(id, "sh1")).await.unwrap();
    let mut writer = tokio::net::unix::pipe::OpenOptions::new().open_sender(&input).unwrap();
    writer.write_all(b"echo alive-$((40+2))\n").await.unwrap();
    drop(writer);
    // The client's writer is gone but the shim still holds its own: the shell lives on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = shim.client.state(ctx(), &shim_tests::req::state(id, "sh1")).await.unwrap();
    assert_eq!(st.status.enum_value_or_default(), api::Status::RUNNING);
    // CloseIO: stdin reaches EOF, the terminal is hung up, the shell dies of SIGHUP.
    let mut close = api::CloseIORequest::new();
    close.id = id.into();
    close.exec_id = "sh1".into();
    close.stdin = true;
    shim.client.close_io(ctx(), &close).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), shim.client.wait(ctx(), &wait(id, "sh1")))
        .await
        .expect("the shell outlived its hung-up terminal")
        .unwrap();
    assert_eq!(waited.exit_status, 129, "SIGHUP");
    shim.client.delete(ctx(), &delete(id, "sh1")).await.unwrap();
    let text = String::from_utf8_lossy(&exec_reader.await.unwrap()).into_owned();
    assert!(text.contains("alive-42"), "{text:?}");

    shim.client.kill(ctx(), &shim_tests::req::kill(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
