//! Hardening at the edges (issue 15 items 5, 6, 8, 9) through the built binary with real runc,
//! `hack/fake-runc` for the faults and the fake events server.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// One test changes one thread's effective gid with the raw syscall (see `connect_with_egid`).
#![allow(unsafe_code)]

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::types::task::Status;
use shim_tests::req::{delete, exec, id_req, kill, start, state, wait};
use shim_tests::*;

/// Bound on anything a test waits for, so a lost answer fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

fn deadline(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(d.as_nanos()).unwrap())
}

/// Files written by fake-runc's `record=DIR` fault: (file name, lines).
fn records(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            (!name.ends_with(".tmp"))
                .then(|| (name, std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_owned).collect()))
        })
        .collect();
    out.sort();
    out
}

/// The lines of one section (`fds:`, `console-dir:`) of a record.
fn section<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    let start = lines.iter().position(|l| l == name).map_or(lines.len(), |i| i + 1);
    lines[start..].iter().take_while(|l| !l.ends_with(':')).filter(|l| !l.is_empty()).map(String::as_str).collect()
}

/// Kills the init, waits for it and deletes the container.
async fn kill_and_delete(client: &TaskClient, id: &str) {
    client.kill(deadline(LIMIT), &kill(id, "", 9)).await.unwrap();
    client.wait(deadline(LIMIT), &wait(id, "")).await.unwrap();
    client.delete(deadline(LIMIT), &delete(id, "")).await.unwrap();
}

/// Starts the added exec `exec_id`, waits for it and deletes it.
async fn run_exec_to_end(client: &TaskClient, id: &str, exec_id: &str) {
    client.start(deadline(LIMIT), &start(id, exec_id)).await.unwrap();
    client.wait(deadline(LIMIT), &wait(id, exec_id)).await.unwrap();
    client.delete(deadline(LIMIT), &delete(id, exec_id)).await.unwrap();
}

/// Item 8: every runtime child (create, start, exec, ps, kill, delete) has only stdio. Before
/// the fix fd 3, the shim's listening socket, was inherited by every runc call, so a runc left
/// behind by a killed shim kept the socket connectable and `start` could join a dead shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_children_inherit_only_stdio() {
    let mut env = TestEnv::new().await;
    let rec = env.dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    env.set_faults(&format!("*:record={}", rec.display()));
    let id = "edge-fds";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    // The events connection is open from here on.
    env.events.wait_for(LIMIT, "start", |e| e.iter().any(|r| r.topic == "/tasks/start")).await;
    shim.client.exec(deadline(LIMIT), &exec(id, "e1", &["sh", "-c", "exit 3"])).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "e1")).await.unwrap();
    assert_eq!(shim.client.wait(deadline(LIMIT), &wait(id, "e1")).await.unwrap().exit_status, 3);
    shim.client.delete(deadline(LIMIT), &delete(id, "e1")).await.unwrap();
    shim.client.pids(deadline(LIMIT), &id_req(|r: &mut api::PidsRequest| r.id = id.into())).await.unwrap();
    kill_and_delete(&shim.client, id).await;
    let recs = records(&rec);
    let cmds: Vec<&str> = recs.iter().filter_map(|(n, _)| n.split('-').next()).collect();
    for want in ["create", "start", "exec", "ps", "kill", "delete"] {
        assert!(cmds.contains(&want), "no {want} recorded: {cmds:?}");
    }
    for (name, lines) in &recs {
        let extra: Vec<&str> = section(lines, "fds:")
            .into_iter()
            .filter(|l| !["0 ", "1 ", "2 "].iter().any(|p| l.starts_with(p)))
            .collect();
        assert!(extra.is_empty(), "{name} inherited more than stdio: {extra:?}");
    }
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Connects to `path` from a thread whose effective gid is `egid` (only that thread's: the raw
/// syscall, not glibc's process-wide setresgid), then restores it. SO_PEERCRED records the
/// credentials of the connecting thread.
fn connect_with_egid(path: &Path, egid: u32) -> std::os::unix::net::UnixStream {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let keep = libc::gid_t::MAX; // -1: leave unchanged
                                     // SAFETY: setresgid(2) takes three integers and touches no memory; as a raw syscall it
                                     // changes only the calling thread's credentials, which this thread restores below.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, keep, egid, keep) };
        assert_eq!(rc, 0, "setresgid: {}", std::io::Error::last_os_error());
        let stream = std::os::unix::net::UnixStream::connect(&path);
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, keep, 0, keep) };
        assert_eq!(rc, 0);
        stream.unwrap()
    })
    .join()
    .unwrap()
}

async fn client_on(stream: std::os::unix::net::UnixStream) -> TaskClient {
    stream.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(stream).unwrap();
    TaskClient::new(ttrpc::asynchronous::Client::new(ttrpc::asynchronous::transport::Socket::from(stream)))
}

/// Item 9: a peer with our uid but another gid is refused, as the Go shim's
/// `UnixSocketRequireSameUser` does (before the fix only the uid was compared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_another_gid_is_refused() {
    let env = TestEnv::new().await;
    let id = "edge-gid";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let path = PathBuf::from(shim.address.trim_start_matches("unix://"));
    let same = client_on(connect_with_egid(&path, 0)).await;
    same.connect(deadline(LIMIT), &api::ConnectRequest::new()).await.expect("same uid and gid accepted");
    let other = client_on(connect_with_egid(&path, 4242)).await;
    let r = other.connect(deadline(Duration::from_secs(20)), &api::ConnectRequest::new()).await;
    assert!(r.is_err(), "a peer with gid 4242 was served: {r:?}");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Removes squatted paths when the test ends, also when it fails.
struct Squatted(Vec<PathBuf>);

impl Drop for Squatted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Item 9: the console socket dir is private (mode 0700, root) in the shim's own socket dir, not
/// a predictable `/tmp/pty<pid>-<n>` that any local user can create first: before the fix a
/// squatted name made every terminal Create and Exec fail ("File exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_socket_dir_is_private() {
    let mut env = TestEnv::new().await;
    let rec = env.dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    env.set_faults(&format!("create:record={0} exec:record={0}", rec.display()));
    let id = "edge-pty";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    edit_spec(&bundle, |spec| spec["process"]["terminal"] = serde_json::Value::Bool(true));
    let shim = env.start_shim(id, &bundle).await;
    let mut squatted = Squatted(Vec::new());
    for n in 0..8 {
        let p = PathBuf::from(format!("/tmp/pty{}-{n}", shim.pid));
        if std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&p).is_ok() {
            squatted.0.push(p);
        }
    }
    let out = env.fifo("pty-out");
    let reader = read_fifo(&out);
    let mut req = env.create_request(id, &bundle);
    req.terminal = true;
    req.stdout = out.display().to_string();
    shim.client.create(deadline(LIMIT), &req).await.expect("terminal create despite squatted /tmp names");
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    let exec_out = env.fifo("pty-exec-out");
    let exec_reader = read_fifo(&exec_out);
    let mut ex = exec(id, "e1", &["sh", "-c", "echo in-tty"]);
    ex.terminal = true;
    ex.stdout = exec_out.display().to_string();
    shim.client.exec(deadline(LIMIT), &ex).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "e1")).await.expect("terminal exec despite squatted /tmp names");
    assert_eq!(shim.client.wait(deadline(LIMIT), &wait(id, "e1")).await.unwrap().exit_status, 0);
    shim.client.delete(deadline(LIMIT), &delete(id, "e1")).await.unwrap();
    assert!(String::from_utf8_lossy(&exec_reader.await.unwrap()).contains("in-tty"));
    let socket_dir = Path::new(shim.address.trim_start_matches("unix://")).parent().unwrap().to_owned();
    let recs = records(&rec);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for (name, lines) in &recs {
        let console = section(lines, "console-dir:");
        let [line] = console.as_slice() else { panic!("{name}: no console dir recorded: {lines:?}") };
        let mut f = line.splitn(3, ' ');
        let (mode, owner, dir) = (f.next().unwrap(), f.next().unwrap(), Path::new(f.next().unwrap()));
        assert_eq!((mode, owner), ("700", "root"), "{name}: {line}");
        assert_eq!(dir.parent(), Some(socket_dir.as_path()), "{name}: console dir {dir:?}");
        assert!(!dir.exists(), "{name}: console dir {dir:?} left behind");
    }
    let meta = std::fs::metadata(&socket_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o022), (0, 0), "socket dir writable by others");
    kill_and_delete(&shim.client, id).await;
    drop(reader);
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Item 9: exec id `init` would share the init's pid file (`<bundle>/init.pid`, which `shim
/// delete` reads after a crash) and deleting that exec removed it: refused as InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_id_init_is_refused() {
    let env = TestEnv::new().await;
    let id = "edge-init";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    let pid = shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap().pid;
    let r = shim.client.exec(deadline(LIMIT), &exec(id, "init", &["true"])).await;
    if r.is_ok() {
        // Show the harm before failing: the exec's start overwrites, its delete removes init.pid.
        let _ = shim.client.start(deadline(LIMIT), &start(id, "init")).await;
        let _ = shim.client.wait(deadline(LIMIT), &wait(id, "init")).await;
        let _ = shim.client.delete(deadline(LIMIT), &delete(id, "init")).await;
        let left = std::fs::read_to_string(bundle.join("init.pid"));
        kill_and_delete(&shim.client, id).await;
        panic!("exec id \"init\" accepted; init.pid of {pid} afterwards: {left:?}");
    }
    assert_eq!(code_of(&r.unwrap_err()), ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(std::fs::read_to_string(bundle.join("init.pid")).unwrap().trim(), pid.to_string());
    kill_and_delete(&shim.client, id).await;
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Processes whose parent is `pid` and whose command line contains `needle`.
fn children_matching(pid: u32, needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).unwrap_or("");
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            ppid == pid.to_string() && String::from_utf8_lossy(&cmd).replace('\0', " ").contains(needle)
        })
        .collect()
}

/// Item 9: a runtime call that never returns is killed after the configured limit
/// (`SHIM_RUNC_TIMEOUT`, seconds) and its request fails with DeadlineExceeded; the container
/// stays usable. Before the fix the Start of the exec hung for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_runtime_call_is_killed_after_the_limit() {
    let mut env = TestEnv::new().await;
    env.set_shim_env("SHIM_RUNC_TIMEOUT", "3");
    env.set_faults("exec:hang");
    let id = "edge-hang";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    shim.client.exec(deadline(LIMIT), &exec(id, "e1", &["true"])).await.unwrap();
    let r = shim.client.start(deadline(LIMIT), &start(id, "e1")).await;
    let e = r.expect_err("a hung runc exec returned");
    let ttrpc::Error::RpcStatus(s) = &e else { panic!("no status (the request hung?): {e:?}") };
    assert_eq!(s.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{s:?}");
    assert!(s.message().contains("exec"), "{s:?}");
    assert!(children_matching(shim.pid, "sleep 1000000").is_empty(), "the hung runtime was not killed");
    // The container is fine: the init runs, a later exec works.
    let st = shim.client.state(deadline(LIMIT), &state(id, "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    env.set_faults("");
    shim.client.exec(deadline(LIMIT), &exec(id, "e2", &["true"])).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "e2")).await.unwrap();
    assert_eq!(shim.client.wait(deadline(LIMIT), &wait(id, "e2")).await.unwrap().exit_status, 0);
    kill_and_delete(&shim.client, id).await;
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Item 5: a `file://` log whose writes block (here a fifo nobody reads) does not stall the
/// shim: State answers meanwhile. Before the fix the write ran on the only runtime thread, so
/// no RPC was answered, nothing reaped and no event sent until the write returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_file_log_write_does_not_stall_the_shim() {
    let env = TestEnv::new().await;
    let id = "edge-filelog";
    let bundle = env.bundle(id, &["sh", "-c", "yes 0123456789abcdef | head -c 1048576; sleep 1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let log = env.fifo("file-log");
    // Held open for reading but not read: the pipe fills, then the shim's writes block.
    let held = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&log).unwrap();
    let mut req = env.create_request(id, &bundle);
    req.stdout = format!("file://{}", log.display());
    shim.client.create(deadline(LIMIT), &req).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    // Wait until the pipe is full (64 KiB by default) and the writer is stuck.
    let full = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the valid pointer.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&held), libc::FIONREAD, &mut n) };
        if n >= 65536 {
            break;
        }
        assert!(tokio::time::Instant::now() < full, "the log pipe never filled ({n} bytes)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = shim.client.state(deadline(Duration::from_secs(20)), &state(id, "")).await;
    let st = st.expect("State while a file:// write is blocked");
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    // Unblock: read the whole output.
    let drain = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = held;
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        while got < 1 << 20 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        }
        got
    });
    assert_eq!(tokio::task::spawn_blocking(move || drain.join().unwrap()).await.unwrap(), 1 << 20);
    kill_and_delete(&shim.client, id).await;
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Peak resident memory of `pid` in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Item 5: after a failed runtime call only the tail of runc's `log.json` is read (it grows
/// for the container's lifetime). Before the fix the whole file was read into memory on the
/// runtime thread: with a 64 MiB log the shim's peak RSS grew by more than 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runtime_call_reads_only_the_tail_of_log_json() {
    let mut env = TestEnv::new().await;
    env.set_faults("");
    let id = "edge-logjson";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    {
        use std::io::Write;
        let line = "{\"level\":\"info\",\"msg\":\"an old line of a long-lived container's runtime log\"}\n";
        let mut f = std::fs::OpenOptions::new().append(true).open(bundle.join("log.json")).unwrap();
        let chunk = line.repeat(4096);
        let mut written = 0;
        while written < 64 << 20 {
            f.write_all(chunk.as_bytes()).unwrap();
            written += chunk.len();
        }
    }
    let before = peak_rss_kib(shim.pid);
    // runc kill succeeds, then fake-runc logs an error to log.json and fails.
    env.set_faults("kill:fail-after");
    // SIGUSR1: the init (pid 1 of its namespace, no handler) ignores it.
    let e = shim.client.kill(deadline(LIMIT), &kill(id, "", 10)).await.expect_err("injected kill failure");
    env.set_faults("");
    let ttrpc::Error::RpcStatus(s) = &e else { panic!("{e:?}") };
    assert!(s.message().contains("injected failure after kill"), "{s:?}");
    let grown = peak_rss_kib(shim.pid).saturating_sub(before);
    assert!(grown < 8 << 10, "peak RSS grew by {grown} KiB reading a 64 MiB log.json");
    eprintln!("failed runtime call with a 64 MiB log.json: peak RSS +{grown} KiB");
    kill_and_delete(&shim.client, id).await;
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Item 6: at Shutdown the shim stays until every queued event reached containerd (a slow one
/// here: 300 ms per Forward, about 6 s for the queue). Before the fix it flushed for 2 s and
/// exited, dropping the rest (TaskDelete among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_queued_events() {
    let env = TestEnv::new().await;
    let id = "edge-flush";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    env.events.set_delay(Duration::from_millis(300));
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    for i in 0..4 {
        let e = format!("e{i}");
        shim.client.exec(deadline(LIMIT), &exec(id, &e, &["true"])).await.unwrap();
        run_exec_to_end(&shim.client, id, &e).await;
    }
    kill_and_delete(&shim.client, id).await;
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
    let gone = tokio::time::Instant::now() + LIMIT;
    while alive(shim.pid) {
        assert!(tokio::time::Instant::now() < gone, "shim still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = env.events.all();
    let topics = summarize(&events);
    // create, start, 4 × (exec-added, exec-started, exit), exit, delete
    assert_eq!(topics.len(), 16, "{topics:?}");
    assert_eq!(topics.last().map(String::as_str), Some("delete"), "{topics:?}");
}

/// `Threads:` and `RssAnon:` (KiB; the binary's own pages are file-backed and grow as code
/// paths are first used) of `pid`.
fn threads_and_rss(pid: u32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    (u32::try_from(field("Threads:").unwrap_or(0)).unwrap(), field("RssAnon:").unwrap_or(0))
}

/// Item 5, what the blocking pool costs: threads appear only while there is blocking work
/// (rootfs mount, 8 MiB through a `file://` log, unmount) and exit when idle. Budget: at most
/// 1 + 2 threads, back to 1 once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pool_threads_exit_when_idle() {
    let env = TestEnv::new().await;
    let id = "edge-pool";
    let bundle = env.bundle(id, &["sh", "-c", "yes 0123456789abcdef | head -c 8388608"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let (idle_threads, idle_rss) = threads_and_rss(shim.pid);
    assert_eq!(idle_threads, 1, "an idle shim has one thread");
    let pid = shim.pid;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&sampling);
    let sampler = std::thread::spawn(move || {
        let (mut threads, mut rss) = (0, 0);
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            let (t, r) = threads_and_rss(pid);
            (threads, rss) = (threads.max(t), rss.max(r));
            std::thread::sleep(Duration::from_millis(1));
        }
        (threads, rss)
    });
    let log = env.dir.join("logs/out.log");
    let mut req = env.create_request(id, &bundle);
    req.stdout = format!("file://{}", log.display());
    shim.client.create(deadline(LIMIT), &req).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    assert_eq!(shim.client.wait(deadline(LIMIT), &wait(id, "")).await.unwrap().exit_status, 0);
    shim.client.delete(deadline(LIMIT), &delete(id, "")).await.unwrap();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (peak_threads, peak_rss) = sampler.join().unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 8 << 20);
    assert!(peak_threads <= 3, "{peak_threads} threads");
    let busy_rss = threads_and_rss(shim.pid).1;
    let idle_again = tokio::time::Instant::now();
    while threads_and_rss(shim.pid).0 > 1 {
        assert!(idle_again.elapsed() < LIMIT, "blocking threads never exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = threads_and_rss(shim.pid);
    eprintln!(
        "blocking pool: threads idle {idle_threads}, peak {peak_threads}, 1 again {:.1}s after Delete; \
         RssAnon KiB idle {idle_rss}, peak {peak_rss}, after Delete {busy_rss}, idle again {}",
        idle_again.elapsed().as_secs_f64(),
        after.1
    );
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Item 9, the harm the limit bounds: while a `runc exec` hangs, the init's exit is held (an
/// exec is starting, SPEC §3.3); once the call is killed at the limit, the init's Wait and
/// TaskExit are released. Before the fix both waited for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_exec_does_not_hold_the_init_exit_for_good() {
    let mut env = TestEnv::new().await;
    env.set_shim_env("SHIM_RUNC_TIMEOUT", "3");
    env.set_faults("exec:hang");
    let id = "edge-hang-init";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    shim.client.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    shim.client.exec(deadline(LIMIT), &exec(id, "e1", &["true"])).await.unwrap();
    let client = shim.client.clone();
    let starting = tokio::spawn(async move { client.start(deadline(LIMIT), &start(id, "e1")).await });
    // The exec's runc is running (hung) once fake-runc has exec'd its sleep.
    let hung = tokio::time::Instant::now() + LIMIT;
    while children_matching(shim.pid, "sleep 1000000").is_empty() {
        assert!(tokio::time::Instant::now() < hung, "the exec's runtime never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shim.client.kill(deadline(LIMIT), &kill(id, "", 9)).await.unwrap();
    let w = shim.client.wait(deadline(LIMIT), &wait(id, "")).await.expect("init's Wait released");
    assert_eq!(w.exit_status, 137);
    let r = starting.await.unwrap();
    assert!(r.is_err(), "the hung exec start succeeded: {r:?}");
    env.events.wait_for(LIMIT, "init TaskExit", |e| summarize(e).iter().any(|s| s == &format!("exit {id} 137"))).await;
    shim.client.delete(deadline(LIMIT), &delete(id, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Item 6 through the binary: with containerd away and the queue's ceiling lowered to 12 events
/// (`SHIM_EVENT_QUEUE_MAX`), new Execs and Creates are refused with ResourceExhausted once the
/// queue is full, while what exists is still served (State, Kill, Wait, Delete). No lifecycle
/// event is dropped: once containerd is back, every start has its create/added before it and
/// every exit its start, and new work is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_queue_ceiling_refuses_new_work_and_drops_no_lifecycle_event() {
    let mut env = TestEnv::new().await;
    env.set_shim_env("SHIM_EVENT_QUEUE_MAX", "12");
    let id = "edge-ceiling";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let shim = env.start_shim(id, &bundle).await;
    let c = &shim.client;
    env.events.stop().await;
    c.create(deadline(LIMIT), &env.create_request(id, &bundle)).await.unwrap();
    c.start(deadline(LIMIT), &start(id, "")).await.unwrap();
    let mut execs = 0;
    let refused = loop {
        let e = format!("e{execs}");
        if let Err(err) = c.exec(deadline(LIMIT), &exec(id, &e, &["true"])).await {
            break err;
        }
        run_exec_to_end(c, id, &e).await;
        execs += 1;
        assert!(execs <= 12, "12 events queued, yet Exec is still accepted");
    };
    assert_eq!(code_of(&refused), ttrpc::Code::RESOURCE_EXHAUSTED, "{refused:?}");
    assert!(execs >= 1, "refused before the queue was full");
    eprintln!("Exec refused (ResourceExhausted) after {execs} execs with containerd away");
    let other = env.bundle("edge-ceiling-2", &["true"], &[]);
    let e = c.create(deadline(LIMIT), &env.create_request("edge-ceiling-2", &other)).await.unwrap_err();
    assert_eq!(code_of(&e), ttrpc::Code::RESOURCE_EXHAUSTED, "{e:?}");
    assert!(mounts_under(&other).is_empty(), "a refused Create mounted its rootfs");
    let st = c.state(deadline(LIMIT), &state(id, "")).await.unwrap();
    assert_eq!(st.status.enum_value(), Ok(Status::RUNNING));

    env.events.resume().await;
    let again = tokio::time::Instant::now() + LIMIT;
    while let Err(err) = c.exec(deadline(LIMIT), &exec(id, "after", &["true"])).await {
        assert_eq!(code_of(&err), ttrpc::Code::RESOURCE_EXHAUSTED, "{err:?}");
        assert!(tokio::time::Instant::now() < again, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_exec_to_end(c, id, "after").await;
    kill_and_delete(c, id).await;
    let n = execs + 1;
    // create, start, n × (exec-added, exec-started, exit), init exit, delete
    let events = env.events.wait_for(LIMIT, "every event", |ev| ev.len() >= 4 + 3 * n).await;
    let topics = summarize(&events);
    assert_eq!(topics.len(), 4 + 3 * n, "{topics:?}");
    let at = |t: &str| topics.iter().position(|x| x == t).unwrap_or_else(|| panic!("no {t}: {topics:?}"));
    assert!(at("create") < at("start"), "{topics:?}");
    let mut names: Vec<String> = (0..execs).map(|i| format!("e{i}")).collect();
    names.push("after".into());
    for e in &names {
        let added = events.iter().position(|r| {
            r.topic == "/tasks/exec-added"
                && r.decode::<containerd_shim_protos::events::task::TaskExecAdded>().exec_id == *e
        });
        let started = at(&format!("exec-started {e}"));
        assert!(added.is_some_and(|a| at("start") < a && a < started), "{e}: {topics:?}");
        let exit = events.iter().position(|r| {
            r.topic == "/tasks/exit" && r.decode::<containerd_shim_protos::events::task::TaskExit>().id == *e
        });
        assert!(exit.is_some_and(|x| started < x), "{e}: {topics:?}");
    }
    assert_eq!(topics.last().map(String::as_str), Some("delete"), "{topics:?}");
    let _ = c.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}

/// Builds `tests/preload/slow_mount.c` into `dir` and returns the library's path.
fn slow_mount_library(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload/slow_mount.c");
    let lib = dir.join("slow_mount.so");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("cc");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    lib
}

/// Item 5: a rootfs mount and unmount that each take 3 s (mount(2) and umount2(2) slowed by an
/// LD_PRELOAD library, `tests/preload/slow_mount.c`) do not stall the shim: another container's
/// State answers within 1 s meanwhile, during the Create and during the Delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rootfs_mount_or_unmount_does_not_stall_the_shim() {
    let mut env = TestEnv::new().await;
    let lib = slow_mount_library(&env.dir);
    env.set_shim_env("LD_PRELOAD", &lib.display().to_string());
    env.set_shim_env("SLOW_MOUNT_MARK", "edge-mnt-slow/rootfs");
    env.set_shim_env("SLOW_MOUNT_SECS", "3");
    let (other, slow) = ("edge-mnt-other", "edge-mnt-slow");
    let other_bundle = env.bundle(other, &["sleep", "1000"], &[]);
    let slow_bundle = env.bundle(slow, &["sleep", "1000"], &[]);
    let shim = env.start_shim(other, &other_bundle).await;
    env.track_container(slow, &slow_bundle);
    let c = shim.client.clone();
    c.create(deadline(LIMIT), &env.create_request(other, &other_bundle)).await.unwrap();
    c.start(deadline(LIMIT), &start(other, "")).await.unwrap();
    let answers_meanwhile = |what: &'static str| {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = std::time::Instant::now();
            let r = c.state(deadline(Duration::from_secs(1)), &state(other, "")).await;
            assert!(r.is_ok(), "State got no answer within 1 s during the slow {what}: {r:?}");
            t.elapsed()
        }
    };
    let req = env.create_request(slow, &slow_bundle);
    let creating = {
        let c = c.clone();
        tokio::spawn(async move { c.create(deadline(LIMIT), &req).await })
    };
    let during_mount = answers_meanwhile("mount").await;
    assert!(!creating.is_finished(), "the mount was not slowed (is LD_PRELOAD honoured?)");
    creating.await.unwrap().unwrap();
    let deleting = {
        let c = c.clone();
        tokio::spawn(async move { c.delete(deadline(LIMIT), &delete(slow, "")).await })
    };
    let during_unmount = answers_meanwhile("unmount").await;
    assert!(!deleting.is_finished(), "the unmount was not slowed");
    deleting.await.unwrap().unwrap();
    assert!(mounts_under(&slow_bundle).is_empty(), "rootfs still mounted");
    eprintln!("State during a 3 s mount: {during_mount:?}, during a 3 s unmount: {during_unmount:?}");
    kill_and_delete(&c, other).await;
    let _ = c.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
