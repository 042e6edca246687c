//! Stdio: loggers, lossless output under load, drain bounds (issue 5; SPEC §5, §4.7 no. 18).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use shim_tests::req::{delete, exec as exec_req, start, wait};
use shim_tests::*;

async fn run_to_exit(env: &TestEnv, id: &str, args: &[&str], stdout: &str, stderr: &str) -> u32 {
    run_to_exit_with(env, id, args, stdout, stderr, false).await
}

async fn run_to_exit_with(env: &TestEnv, id: &str, args: &[&str], stdout: &str, stderr: &str, tty: bool) -> u32 {
    let bundle = env.bundle(id, args, &[]);
    if tty {
        edit_spec(&bundle, |spec| spec["process"]["terminal"] = serde_json::Value::Bool(true));
    }
    let shim = env.start_shim(id, &bundle).await;
    let mut req = env.create_request(id, &bundle);
    req.terminal = tty;
    req.stdout = stdout.into();
    req.stderr = stderr.into();
    shim.client.create(ctx(), &req).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let status = shim.client.wait(ctx(), &wait(id, "")).await.unwrap().exit_status;
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
    status
}

/// A logging binary (a shell script) that records its environment and arguments in
/// `<out>/env` and the container's stdout and stderr in `<out>/stdout` and `<out>/stderr`, then
/// signals readiness on fd 5. Returns the script, `out` and the `binary://` URI.
fn binary_logger(env: &TestEnv, name: &str) -> (PathBuf, PathBuf, String) {
    let out = env.dir.join(format!("{name}-out"));
    std::fs::create_dir_all(&out).unwrap();
    let script = env.dir.join(format!("{name}.sh"));
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         echo \"$CONTAINER_ID $CONTAINER_NAMESPACE $*\" > \"$2/env\"\n\
         cat <&3 > \"$2/stdout\" &\n\
         cat <&4 > \"$2/stderr\" &\n\
         printf x >&5\n\
         exec 5>&-\n\
         wait\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?dir={}", script.display(), out.display());
    (script, out, uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_logger_gets_both_streams() {
    let env = TestEnv::new().await;
    let log = env.dir.join("logs/sub/c.log");
    let uri = format!("file://{}", log.display());
    let status =
        run_to_exit(&env, "io-file", &["sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 2"], &uri, &uri).await;
    assert_eq!(status, 2);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let out1 = lines.iter().position(|l| *l == "out1").unwrap();
    let out2 = lines.iter().position(|l| *l == "out2").unwrap();
    assert!(out1 < out2, "{text:?}");
    lines.sort_unstable();
    assert_eq!(lines, ["err1", "out1", "out2"], "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logger_gets_streams_and_environment() {
    let env = TestEnv::new().await;
    let (script, out, uri) = binary_logger(&env, "logger");
    let status = run_to_exit(&env, "io-bin", &["sh", "-c", "echo to-out; echo to-err >&2; exit 4"], &uri, &uri).await;
    assert_eq!(status, 4);
    assert_eq!(std::fs::read_to_string(out.join("stdout")).unwrap(), "to-out\n");
    assert_eq!(std::fs::read_to_string(out.join("stderr")).unwrap(), "to-err\n");
    assert_eq!(
        std::fs::read_to_string(out.join("env")).unwrap().trim(),
        format!("io-bin {NAMESPACE} dir {}", out.display())
    );
    // The logger exited; it is not left running.
    let script_s = script.display().to_string();
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&script_s))
        .count();
    assert_eq!(left, 0, "logging binary left running");
}

/// Loggers with a terminal (as the Go shim's copyConsole): the terminal's output (stdout and
/// stderr merged, with the terminal's CRLF) reaches the `file://` log and the `binary://`
/// logger's stdout pipe; the logger's stderr pipe is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loggers_with_a_terminal() {
    let env = TestEnv::new().await;
    let log = env.dir.join("tty.log");
    let uri = format!("file://{}", log.display());
    let args = ["sh", "-c", "echo out-tty; echo err-tty >&2; tty; exit 6"];
    assert_eq!(run_to_exit_with(&env, "io-tty-file", &args, &uri, "", true).await, 6);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("out-tty\r\nerr-tty\r\n/dev/pts/"), "{text:?}");

    let (_, out, uri) = binary_logger(&env, "tty-logger");
    assert_eq!(run_to_exit_with(&env, "io-tty-bin", &args, &uri, "", true).await, 6);
    let text = std::fs::read_to_string(out.join("stdout")).unwrap();
    assert!(text.starts_with("out-tty\r\nerr-tty\r\n/dev/pts/"), "{text:?}");
    assert_eq!(std::fs::read_to_string(out.join("stderr")).unwrap(), "");
}

/// 100 concurrent execs each writing 1 MiB of its own id: every byte exact, none mixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_exec_output_is_exact() {
    let env = TestEnv::new().await;
    let id = "io-load";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    const N: usize = 100;
    const SIZE: usize = 1 << 20;
    let mut tasks = Vec::new();
    for i in 0..N {
        let fifo = env.fifo(&format!("load-{i}"));
        let reader = read_fifo(&fifo);
        let client = shim.client.clone();
        tasks.push(tokio::spawn(async move {
            let exec_id = format!("w{i}");
            let cmd = format!("yes {exec_id} | head -c {SIZE}");
            let mut req = exec_req("io-load", &exec_id, &["sh", "-c", &cmd]);
            req.stdout = fifo.display().to_string();
            client.exec(ctx(), &req).await.unwrap();
            client.start(ctx(), &start("io-load", &exec_id)).await.unwrap();
            assert_eq!(client.wait(ctx(), &wait("io-load", &exec_id)).await.unwrap().exit_status, 0);
            client.delete(ctx(), &delete("io-load", &exec_id)).await.unwrap();
            (exec_id, reader.await.unwrap())
        }));
    }
    for t in tasks {
        let (exec_id, out) = t.await.unwrap();
        let line = format!("{exec_id}\n");
        let expect: Vec<u8> = line.as_bytes().iter().copied().cycle().take(SIZE).collect();
        assert_eq!(out.len(), SIZE, "{exec_id}: {} bytes", out.len());
        assert!(out == expect, "{exec_id}: content differs");
    }
    shim.client.kill(ctx(), &shim_tests::req::kill(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// SPEC §4.7 no. 18: an exec whose background child keeps stdout open does not hang Delete;
/// the drain gives up after its bound and what was written before is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_delete_does_not_hang_on_background_child() {
    let env = TestEnv::new().await;
    let id = "io-drain";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    let fifo = env.fifo("drain-out");
    let reader = read_fifo(&fifo);
    let mut req = exec_req(id, "bg", &["sh", "-c", "sleep 100000 & echo started"]);
    req.stdout = fifo.display().to_string();
    shim.client.exec(ctx(), &req).await.unwrap();
    shim.client.start(ctx(), &start(id, "bg")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "bg")).await.unwrap().exit_status, 0);
    let t = Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(60), shim.client.delete(ctx(), &delete(id, "bg"))).await;
    assert!(d.expect("exec Delete hung").is_ok());
    eprintln!("exec delete with a background child holding stdout took {:?}", t.elapsed());
    assert_eq!(reader.await.unwrap(), b"started\n");
    shim.client.kill(ctx(), &shim_tests::req::kill(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Issue 15 item 11: ctr 1.7 and 2.x close their fifo readers as soon as DeleteProcess
/// answers (containerd 82ec62b86: `cio.Cancel` closes the pipes), so an exec's Delete must not
/// answer while its output still sits unread in the client's fifo. The client here reads as ctr
/// does (a blocking reader that opened the fifo before the exec), only slowly, and records how
/// much it had read when Delete answered: all of it, or ctr would have lost the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_delete_answers_after_the_client_read_all_output() {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let env = TestEnv::new().await;
    let id = "io-unread";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(id, "")).await.unwrap();
    const SIZE: usize = 64 * 1024;
    let fifo = env.fifo("unread-out");
    let read = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (fifo, read) = (fifo.clone(), Arc::clone(&read));
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    return out;
                }
                out.extend_from_slice(&buf[..n]);
                read.fetch_add(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut req = exec_req(id, "big", &["sh", "-c", &format!("yes big | head -c {SIZE}")]);
    req.stdout = fifo.display().to_string();
    shim.client.exec(ctx(), &req).await.unwrap();
    shim.client.start(ctx(), &start(id, "big")).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait(id, "big")).await.unwrap().exit_status, 0);
    shim.client.delete(ctx(), &delete(id, "big")).await.unwrap();
    let at_delete = read.load(Ordering::SeqCst);
    let out = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert_eq!(out.len(), SIZE, "the shim wrote all of it");
    assert_eq!(at_delete, SIZE, "Delete answered with {} of {SIZE} bytes still unread in the fifo", SIZE - at_delete);
    shim.client.kill(ctx(), &shim_tests::req::kill(id, "", 9)).await.unwrap();
    shim.client.wait(ctx(), &wait(id, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
