//! Test support: drive the *built* shim binary the way containerd does (`start`, then ttrpc on
//! the printed address), with real runc, a busybox bundle and a fake containerd events server
//! that records what the shim publishes.
//!
//! Everything a test creates lives under one temp dir and is removed by [`TestEnv`]'s `Drop`,
//! also when the test fails: shims it started are killed by pid, `shim delete` runs for every
//! container (runc state, rootfs mount), the shim sockets are removed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::shim_async::{create_events, Events, TaskClient};
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::Message;

/// The namespace tests run in.
pub const NAMESPACE: &str = "shimtest";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Path of the built shim binary (`SHIM_BIN`, or the workspace's target dir).
pub fn shim_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SHIM_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("containerd-shim-runc-v2");
        if p.exists() {
            return p;
        }
    }
    panic!("shim binary not built: run `cargo build -p shim` first or set SHIM_BIN");
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Topic.
    pub topic: String,
    /// Namespace of the envelope.
    pub namespace: String,
    /// The event payload.
    pub event: Any,
}

impl Recorded {
    /// Decodes the payload as `M`.
    pub fn decode<M: Message>(&self) -> M {
        M::parse_from_bytes(&self.event.value).unwrap()
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Recorded>>>, Arc<Mutex<Duration>>);

#[async_trait]
impl Events for Recorder {
    async fn forward(&self, _ctx: &ttrpc::asynchronous::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let delay = *self.1.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let env = req.envelope.into_option().unwrap_or_default();
        self.0.lock().unwrap().push(Recorded {
            topic: env.topic,
            namespace: env.namespace,
            event: env.event.into_option().unwrap_or_default(),
        });
        Ok(Empty::new())
    }
}

/// A fake containerd `Events` ttrpc endpoint that records every forwarded event.
pub struct EventServer {
    path: PathBuf,
    recorder: Recorder,
    server: Option<ttrpc::asynchronous::Server>,
}

impl EventServer {
    /// Starts listening on `path`.
    pub async fn start(path: &Path) -> EventServer {
        let mut s = EventServer { path: path.to_owned(), recorder: Recorder::default(), server: None };
        s.resume().await;
        s
    }

    /// Stops serving (containerd "down"); recorded events are kept.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Serves again on the same path (containerd "back").
    pub async fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let svc: Arc<dyn Events + Send + Sync> = Arc::new(self.recorder.clone());
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", self.path.display()))
            .unwrap()
            .register_service(create_events(svc));
        server.start().await.unwrap();
        self.server = Some(server);
    }

    /// Makes every later Forward take `delay` before it is recorded and answered (a slow
    /// containerd).
    pub fn set_delay(&self, delay: Duration) {
        *self.recorder.1.lock().unwrap() = delay;
    }

    /// Everything recorded so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.recorder.0.lock().unwrap().clone()
    }

    /// How many events were recorded (without copying them).
    pub fn count(&self) -> usize {
        self.recorder.0.lock().unwrap().len()
    }

    /// Waits until `pred` holds for the recorded events, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; events: {:?}", summarize(&all));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `topic id status` lines, for assertions and messages.
pub fn summarize(events: &[Recorded]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.topic.as_str() {
            "/tasks/exit" => {
                let x: TaskExit = e.decode();
                format!("exit {} {}", x.id, x.exit_status)
            }
            "/tasks/exec-started" => {
                let x: TaskExecStarted = e.decode();
                format!("exec-started {}", x.exec_id)
            }
            t => t.trim_start_matches("/tasks/").to_owned(),
        })
        .collect()
}

/// A temp dir with a busybox rootfs, a fake events server and cleanup of everything started.
pub struct TestEnv {
    /// The temp dir.
    pub dir: PathBuf,
    /// The recorded-events server.
    pub events: EventServer,
    shims: Mutex<Vec<(u32, PathBuf)>>,
    containers: Mutex<Vec<(String, PathBuf)>>,
    faults: Option<String>,
    runtime: Option<PathBuf>,
    shim_env: Vec<(String, String)>,
}

impl TestEnv {
    /// A fresh environment.
    pub async fn new() -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("shimtest-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).expect("busybox-static installed");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        assert!(list.status.success());
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        let events = EventServer::start(&dir.join("events.sock")).await;
        TestEnv {
            dir,
            events,
            shims: Mutex::new(Vec::new()),
            containers: Mutex::new(Vec::new()),
            faults: None,
            runtime: None,
            shim_env: Vec::new(),
        }
    }

    /// The fake containerd gRPC address (input to the shim socket hash only).
    pub fn grpc_address(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }

    /// The runc root tests use (so no state lands in /run/containerd/runc).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Makes containers created from now on use `hack/fake-runc`, and sets the faults it
    /// injects (see that script for the syntax); takes effect at its next invocation.
    pub fn set_faults(&mut self, faults: &str) {
        std::fs::create_dir_all(self.runc_root()).unwrap();
        std::fs::write(self.runc_root().join("fake-runc-faults"), faults).unwrap();
        self.faults = Some(faults.to_owned());
    }

    /// Path of `hack/fake-runc`.
    pub fn fake_runc() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("hack/fake-runc")
    }

    /// `hack/crun-private-ns`: Debian's crun, runnable on this cgroup v1 hybrid host.
    pub fn crun_wrapper() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("hack/crun-private-ns")
    }

    /// Sets an environment variable for shims started from now on (as containerd's own
    /// environment reaches its shims).
    pub fn set_shim_env(&mut self, key: &str, value: &str) {
        self.shim_env.push((key.to_owned(), value.to_owned()));
    }

    /// Makes containers created from now on use `binary` as the OCI runtime (BinaryName).
    pub fn set_runtime(&mut self, binary: &Path) {
        self.runtime = Some(binary.to_owned());
    }

    /// Runtime options pointing runc at [`Self::runc_root`] (and at fake-runc with faults, or
    /// at the runtime given to [`Self::set_runtime`]).
    pub fn options(&self) -> Any {
        let mut o = Options::new();
        o.root = self.runc_root().display().to_string();
        if self.faults.is_some() {
            o.binary_name = Self::fake_runc().display().to_string();
        } else if let Some(rt) = &self.runtime {
            o.binary_name = rt.display().to_string();
        }
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = o.write_to_bytes().unwrap();
        any
    }

    /// Makes a bundle for `id` running `args`; `annotations` go into config.json.
    pub fn bundle(&self, id: &str, args: &[&str], annotations: &[(&str, &str)]) -> PathBuf {
        let b = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        let caps = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        let ann: serde_json::Map<String, serde_json::Value> =
            annotations.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                "env": ["PATH=/bin", "HOME=/"], "cwd": "/", "noNewPrivileges": true,
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "shimtest",
            "annotations": ann,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            },
        });
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        b
    }

    /// A bind mount of the shared busybox rootfs, as containerd passes snapshot mounts.
    pub fn rootfs_mounts(&self) -> Vec<api::Mount> {
        let mut m = api::Mount::new();
        m.type_ = "bind".into();
        m.source = self.dir.join("rootfs").display().to_string();
        m.options = vec!["rbind".into(), "rw".into()];
        vec![m]
    }

    /// Makes a fifo at `name` in the temp dir.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    /// Runs `shim start` for container `id` in `bundle` and connects to it.
    pub async fn start_shim(&self, id: &str, bundle: &Path) -> Shim {
        let out = self.shim_command(bundle, id, "start").output().unwrap();
        assert!(out.status.success(), "shim start failed: {}", String::from_utf8_lossy(&out.stderr));
        let address = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(address.starts_with("unix:///run/containerd/s/"), "address {address:?}");
        let client = connect(&address).await;
        let resp = client.connect(ctx(), &api::ConnectRequest::new()).await.unwrap();
        self.shims.lock().unwrap().push((resp.shim_pid, PathBuf::from(address.trim_start_matches("unix://"))));
        self.containers.lock().unwrap().push((id.to_owned(), bundle.to_owned()));
        Shim { address, client, pid: resp.shim_pid }
    }

    /// A `shim <flags> <action>` command as containerd runs it.
    pub fn shim_command(&self, bundle: &Path, id: &str, action: &str) -> Command {
        let mut cmd = Command::new(shim_binary());
        cmd.current_dir(bundle)
            .args([
                "-namespace",
                NAMESPACE,
                "-address",
                &self.grpc_address(),
                "-publish-binary",
                "/bin/false",
                "-id",
                id,
                action,
            ])
            .env("TTRPC_ADDRESS", self.dir.join("events.sock"))
            .env("SHIM_BOOTSTRAP_FORMAT", "plain")
            .envs(self.shim_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Records a shim daemon (pid, socket path) for cleanup, for shims started by hand.
    pub fn track_shim(&self, pid: u32, socket: &Path) {
        self.shims.lock().unwrap().push((pid, socket.to_owned()));
    }

    /// Records a container for cleanup (for containers created in a shim started elsewhere).
    pub fn track_container(&self, id: &str, bundle: &Path) {
        self.containers.lock().unwrap().push((id.to_owned(), bundle.to_owned()));
    }

    /// A CreateTaskRequest for `id` in `bundle` with the test rootfs and options.
    pub fn create_request(&self, id: &str, bundle: &Path) -> api::CreateTaskRequest {
        let mut r = api::CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = bundle.display().to_string();
        r.rootfs = self.rootfs_mounts();
        r.options = protobuf::MessageField::some(self.options());
        r
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (pid, socket) in self.shims.lock().unwrap().drain(..) {
            if pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.cast_signed()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::fs::remove_file(socket);
        }
        for (id, bundle) in self.containers.lock().unwrap().drain(..) {
            if bundle.exists() {
                let _ = self.shim_command(&bundle, &id, "delete").output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A started shim and its client.
pub struct Shim {
    /// The address `start` printed.
    pub address: String,
    /// Task API client (task.v3).
    pub client: TaskClient,
    /// The daemon's pid.
    pub pid: u32,
}

/// Deadline of every request sent with [`ctx`]: a Wait whose exit was lost fails the test
/// with "Request deadline elapsed" instead of hanging it (and the suite with it).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// A context with the default deadline, [`RPC_TIMEOUT`].
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(RPC_TIMEOUT)
}

/// A ttrpc task client on `address`.
pub async fn connect(address: &str) -> TaskClient {
    TaskClient::new(ttrpc::asynchronous::Client::connect(address).await.unwrap())
}

/// The ttrpc status code of an error.
pub fn code_of(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not an rpc status: {other:?}"),
    }
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    pid_alive(pid)
}

/// Reads a fifo to EOF in the background. A fifo that reaches no EOF within [`RPC_TIMEOUT`]
/// (an output copy that never ends) fails the task, so awaiting it fails the test instead of
/// hanging it.
pub fn read_fifo(path: &Path) -> tokio::task::JoinHandle<Vec<u8>> {
    let rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(path).unwrap();
    let shown = path.display().to_string();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut rx = rx;
        let mut buf = Vec::new();
        match tokio::time::timeout(RPC_TIMEOUT, rx.read_to_end(&mut buf)).await {
            Ok(_) => buf,
            Err(_) => panic!("{shown}: no EOF within {RPC_TIMEOUT:?} ({} bytes read)", buf.len()),
        }
    })
}

/// Mount points under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// Task API requests for a container `id` and an exec id (empty for the init).
/// Rewrites a bundle's `config.json` in place (e.g. to ask for a terminal or set resources).
pub fn edit_spec(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    f(&mut spec);
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// A private real containerd for end-to-end tests.
pub mod containerd;
pub mod cri;

pub mod req {
    use containerd_shim_protos::api;
    use protobuf::well_known_types::any::Any;

    /// An OCI process spec running `args` as root with PATH=/bin, as the `Any` Exec carries.
    pub fn process_spec(args: &[&str]) -> Any {
        let spec = serde_json::json!({
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/",
        });
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&spec).unwrap();
        any
    }

    /// Exec request running `args`.
    pub fn exec(id: &str, exec_id: &str, args: &[&str]) -> api::ExecProcessRequest {
        let mut m = api::ExecProcessRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m.spec = protobuf::MessageField::some(process_spec(args));
        m
    }

    /// Start request.
    pub fn start(id: &str, exec_id: &str) -> api::StartRequest {
        let mut m = api::StartRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m
    }

    /// Wait request.
    pub fn wait(id: &str, exec_id: &str) -> api::WaitRequest {
        let mut m = api::WaitRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m
    }

    /// State request.
    pub fn state(id: &str, exec_id: &str) -> api::StateRequest {
        let mut m = api::StateRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m
    }

    /// Delete request.
    pub fn delete(id: &str, exec_id: &str) -> api::DeleteRequest {
        let mut m = api::DeleteRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m
    }

    /// Any request, built by `set` from its default (for fields the builders here do not take).
    pub fn id_req<M: protobuf::Message + Default>(set: impl FnOnce(&mut M)) -> M {
        let mut m = M::default();
        set(&mut m);
        m
    }

    /// Kill request with `signal`.
    pub fn kill(id: &str, exec_id: &str, signal: u32) -> api::KillRequest {
        let mut m = api::KillRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m.signal = signal;
        m
    }

    /// ResizePty request.
    pub fn resize(id: &str, exec_id: &str, width: u32, height: u32) -> api::ResizePtyRequest {
        let mut m = api::ResizePtyRequest::new();
        m.id = id.into();
        m.exec_id = exec_id.into();
        m.width = width;
        m.height = height;
        m
    }
}
