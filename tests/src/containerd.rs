//! A private, real containerd (1.6, 1.7 or 2.x, as hack/install-deps.sh unpacked them) for
//! end-to-end tests with that version's `ctr`, using the built shim as `containerd-shim-runc-v2`
//! (hack/containerd-up.sh puts its directory first in PATH), or that version's own Go shim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::shim_binary;

pub const IMAGE: &str = "docker.io/library/shimtest:latest";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A containerd version hack/install-deps.sh installs (`CONTAINERD_VERSION` of the hack/ scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1_6,
    V1_7,
    V2,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::V1_6, Version::V1_7, Version::V2];

    /// The key of hack/install-deps.sh and `CONTAINERD_VERSION`: "1.6", "1.7", "2".
    pub fn key(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
            Version::V2 => "2",
        }
    }

    /// `CONTAINERD_VERSION` from the environment, else 1.6.
    pub fn from_env() -> Version {
        Version::from_key(std::env::var("CONTAINERD_VERSION").as_deref().unwrap_or("1.6"))
    }

    /// The version of a [`Version::key`]: "1.6", "1.7" or "2".
    pub fn from_key(key: &str) -> Version {
        match key {
            "1.6" => Version::V1_6,
            "1.7" => Version::V1_7,
            "2" => Version::V2,
            other => panic!("containerd version {other}: expected 1.6, 1.7 or 2"),
        }
    }

    fn line(self) -> (String, PathBuf) {
        let deps = std::env::var("SHIM_DEPS_DIR").unwrap_or_else(|_| "/var/cache/shim-runc-rs".into());
        let file = Path::new(&deps).join("containerd").join(format!("{}.version", self.key()));
        let line = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run hack/install-deps.sh)", file.display()));
        let mut f = line.trim_end().split('\t');
        let (_, full, bin) = (f.next(), f.next().unwrap().to_owned(), f.next().unwrap());
        (full, PathBuf::from(bin))
    }

    /// The version containerd reports, e.g. "2.1.9+unknown".
    pub fn full(self) -> String {
        self.line().0
    }

    /// The directory holding this version's containerd, ctr and Go shim.
    pub fn bin_dir(self) -> PathBuf {
        self.line().1
    }

    /// The task API version containerd uses with a shim: 2 for 1.x, 3 for 2.x.
    pub fn task_api(self) -> u32 {
        if self == Version::V2 {
            3
        } else {
            2
        }
    }
}

/// What a [`Containerd`] runs; `Setup::default()` follows the environment (`CONTAINERD_VERSION`,
/// `E2E_GO_SHIM`).
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub version: Version,
    /// Run that version's own Go shim (the reference) instead of the built one.
    pub go_shim: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup { version: Version::from_env(), go_shim: std::env::var_os("E2E_GO_SHIM").is_some() }
    }
}

/// A private containerd; stopped and cleaned up (hack/containerd-down.sh) on drop.
pub struct Containerd {
    pub tmp: PathBuf,
    pub dir: PathBuf,
    /// runc's state root for `ctr run --runc-root` (DIR/runc), keeping runc state private.
    pub runc_root: String,
    /// `--fifo-dir` for `ctr run` and `ctr tasks exec` (DIR/fifo).
    pub fifo: String,
    pub setup: Setup,
    /// The version containerd reports (from hack/install-deps.sh's version file).
    pub full_version: String,
    /// This version's `ctr`.
    pub ctr_bin: PathBuf,
    /// Digits unique to this instance (`PIDN`), for argv that tests find in /proc.
    pub tag: String,
    /// The containerd namespace of this instance (`e2e-PID-N`): unique, so cgroups
    /// (`/sys/fs/cgroup/*/NS/ID`) of tests running at once never collide.
    pub ns: String,
}

impl Containerd {
    /// A containerd as the environment says ([`Setup::default`]).
    pub fn start() -> Containerd {
        Containerd::start_with(Setup::default())
    }

    /// A containerd of `version` with the built shim (or the Go shim if `E2E_GO_SHIM` is set).
    pub fn start_version(version: Version) -> Containerd {
        Containerd::start_with(Setup { version, ..Setup::default() })
    }

    pub fn start_with(setup: Setup) -> Containerd {
        // One dir per instance: tests of one binary run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = PathBuf::from(format!("/tmp/e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = tmp.join("c");
        let (runc_root, fifo) = (dir.join("runc").display().to_string(), dir.join("fifo").display().to_string());
        let (full_version, bin_dir) = setup.version.line();
        let ctr_bin = bin_dir.join("ctr");
        let ns = format!("e2e-{}-{n}", std::process::id());
        let tag = format!("{}{n}", std::process::id());
        let c = Containerd { dir, tmp, runc_root, fifo, setup, full_version, ctr_bin, ns, tag };
        eprintln!(
            "containerd {} ({}) with {}",
            c.full_version,
            setup.version.key(),
            if setup.go_shim { "its Go shim" } else { "the built shim" }
        );
        run_ok(Command::new(repo().join("hack/mkimage.sh")).arg(c.tmp.join("image.tar")));
        run_ok(&mut c.up());
        run_ok(&mut c.ctr(&["images", "import", c.tmp.join("image.tar").to_str().unwrap()]));
        c
    }

    /// hack/containerd-up.sh for this instance's dir, version and shim.
    fn up(&self) -> Command {
        let mut up = Command::new(repo().join("hack/containerd-up.sh"));
        up.arg(&self.dir).env("CONTAINERD_VERSION", self.setup.version.key());
        // 1.7 and 2.x log forwarded events (see `forwarded`) at trace level only.
        if self.setup.version != Version::V1_6 {
            up.env("CONTAINERD_LOG_LEVEL", "trace");
        }
        if !self.setup.go_shim {
            up.arg(shim_binary().parent().unwrap());
        }
        up
    }

    pub fn version(&self) -> Version {
        self.setup.version
    }

    /// The shim binary containerd runs for this instance (ours, or the version's Go shim).
    pub fn shim_exe(&self) -> PathBuf {
        if self.setup.go_shim {
            self.setup.version.bin_dir().join("containerd-shim-runc-v2").canonicalize().unwrap()
        } else {
            shim_binary().canonicalize().unwrap()
        }
    }

    pub fn socket(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }

    /// `ctr` against this containerd in its namespace, bounded by `timeout`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"]).arg(&self.ctr_bin).args(["-a", &self.socket(), "-n", &self.ns]).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `ctr run` with this containerd's private runc root and fifo dir.
    pub fn run_args(&self) -> Vec<&str> {
        vec!["run", "--runc-root", &self.runc_root, "--fifo-dir", &self.fifo]
    }

    pub fn tasks(&self) -> String {
        String::from_utf8(run_ok(&mut self.ctr(&["tasks", "ls"])).stdout).unwrap()
    }

    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.tasks().lines().any(|l| l.starts_with(id) && l.contains(status)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{id} never reached {status}: {}", self.tasks());
    }

    /// `ctr events` for this containerd, written to `log` until the child is killed.
    pub fn subscribe_events(&self, log: &Path) -> std::process::Child {
        let child = Command::new(&self.ctr_bin)
            .args(["-a", &self.socket(), "events"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        child
    }

    /// Pids of shim processes serving this containerd.
    pub fn shims(&self) -> Vec<u32> {
        shims_of(&self.socket())
    }

    /// `ctr tasks exec --exec-id EXEC_ID CONTAINER sh -c CODE` with this containerd's fifo dir,
    /// stdout and stderr piped.
    pub fn spawn_exec(&self, container: &str, exec_id: &str, code: &str) -> std::process::Child {
        self.ctr(&["tasks", "exec", "--fifo-dir", &self.fifo, "--exec-id", exec_id, container, "sh", "-c", code])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Pids of the processes (shim daemons, zombies included) whose argv has `-address SOCKET`.
pub fn shims_of(socket: &str) -> Vec<u32> {
    let needle = format!("-address\0{socket}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
        })
        .collect()
}

/// Stops the private containerd under `dir` and cleans up after it (hack/containerd-down.sh);
/// a failure is reported, not raised (this runs in `Drop`).
pub fn containerd_down(dir: &Path) {
    let out = Command::new(repo().join("hack/containerd-down.sh")).arg(dir).output();
    if let Ok(o) = out {
        if !o.status.success() {
            eprintln!("containerd-down failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        containerd_down(&self.dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// CPU time (ns) of all threads of `pid`, from schedstat.
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Containerd {
    /// The pid of the `ctr tasks ls` row for `id`, if it has one.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.tasks().lines().find(|l| l.split_whitespace().next() == Some(id))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// `ctr tasks ps id`: (pid, exec id) per process; the init's exec id is empty.
    pub fn ps(&self, id: &str) -> Vec<(u32, String)> {
        let out = run_ok(&mut self.ctr(&["tasks", "ps", id]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let pid = l.split_whitespace().next()?.parse().ok()?;
                // 1.6: `&ProcessDetails{ExecID:x1,...}`; 1.7 and 2.x: `exec_id:"x1"`.
                let exec = match (l.split_once("ExecID:"), l.split_once("exec_id:\"")) {
                    (Some((_, r)), _) => r.split(',').next().unwrap_or(""),
                    (None, Some((_, r))) => r.split('"').next().unwrap_or(""),
                    (None, None) => "",
                };
                Some((pid, exec.to_owned()))
            })
            .collect()
    }

    /// containerd's pid (from `containerd.pid`).
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("containerd.pid")).unwrap().trim().parse().unwrap()
    }

    /// Starts containerd again on the same dir (after it died); images and state are kept.
    pub fn restart(&self) {
        run_ok(&mut self.up());
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Number of events of `topic` in this namespace that containerd logged as received from a
    /// shim (`event forwarded`: debug level in 1.6, trace in 1.7 and 2.x), in `log`.
    pub fn forwarded(&self, log: &str, topic: &str) -> usize {
        let needle = format!("msg=\"event forwarded\" ns={} topic={topic} ", self.ns);
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// The bundle containerd made for `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.join("state/io.containerd.runtime.v2.task").join(&self.ns).join(id)
    }

    /// The shim socket containerd derives for a (non-grouped) container `id`.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        self.socket_for(&format!("{}/{}/{id}", self.socket(), self.ns))
    }

    /// The debug socket the Go shim (1.7 and 2.x, with `-debug`) listens on beside its socket.
    pub fn go_debug_socket(&self, id: &str) -> PathBuf {
        self.socket_for(&format!("{}/{}/{id}/debug", self.socket(), self.ns))
    }

    fn socket_for(&self, joined: &str) -> PathBuf {
        let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(joined.as_bytes()).unwrap();
        }
        let hash = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        Path::new("/run/containerd/s").join(hash.split_whitespace().next().unwrap())
    }
}

/// Cgroup directories named `id` under the namespace `ns` parent in every mounted hierarchy.
pub fn cgroups_of(ns: &str, id: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup ") || t.starts_with("cgroup2 ")))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join(ns).join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Pids of live processes whose argv is exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            (std::fs::read(format!("/proc/{pid}/cmdline")).ok()? == want && crate::alive(pid)).then_some(pid)
        })
        .collect()
}

/// Waits (bounded by `limit`) until `done` holds; returns whether it did.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Setup {
    /// `version` with the built shim.
    pub fn ours(version: Version) -> Setup {
        Setup { version, go_shim: false }
    }

    /// `version` with its own Go shim, the reference.
    pub fn go(version: Version) -> Setup {
        Setup { version, go_shim: true }
    }

    /// "ours" or "go", for messages.
    pub fn shim_name(&self) -> &'static str {
        if self.go_shim {
            "go"
        } else {
            "ours"
        }
    }
}

/// Runs one generated e2e case (see [`e2e_versions`](crate::e2e_versions)) and says which
/// containerd and shim it ran. With `xfail: (marker, reason)`, the case hits a known bug of the
/// reference Go shim: a failure whose message contains `marker` is reported as expected, with
/// the reason; any other failure fails the test; a run where the bug did not show is reported
/// as such (some of these bugs are races that do not show every time).
pub fn run_case(name: &str, setup: Setup, xfail: Option<(&str, &str)>, body: fn(Setup)) {
    eprintln!(
        "{name}: containerd {} ({}) with {} shim",
        setup.version.full(),
        setup.version.key(),
        if setup.go_shim { "its Go" } else { "our" }
    );
    let Some((marker, reason)) = xfail else {
        return body(setup);
    };
    match std::panic::catch_unwind(|| body(setup)) {
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            if !msg.as_deref().is_some_and(|m| m.contains(marker)) {
                eprintln!("{name}: failed, but not with the known Go-shim bug ({marker:?}): {msg:?}");
                std::panic::resume_unwind(e);
            }
            eprintln!("{name}: EXPECTED FAILURE of the Go shim: {reason}");
        }
        Ok(()) => eprintln!("{name}: passed; the known Go-shim bug did not show this time: {reason}"),
    }
}

/// One `#[test]` per containerd version for `fn body(Setup)`, with the built shim:
/// `e2e_versions!(body => body_v1_6, body_v1_7, body_v2);`, and, with `reference`, the same
/// against each version's own Go shim (the reference, run by `make test-reference`), each
/// optionally marked `xfail "marker" "reason"` for a known Go-shim bug (a failure whose message
/// contains the marker is the expected one, see [`run_case`]):
/// `e2e_versions!(reference body => body_go_v1_6 xfail "execs failed" "containerd#8557", body_go_v1_7, body_go_v2);`
#[macro_export]
macro_rules! e2e_versions {
    ($body:ident => $v16:ident, $v17:ident, $v2:ident) => {
        $crate::e2e_versions!(@one $body, $v16, V1_6, ours, None);
        $crate::e2e_versions!(@one $body, $v17, V1_7, ours, None);
        $crate::e2e_versions!(@one $body, $v2, V2, ours, None);
    };
    (reference $body:ident =>
        $v16:ident $(xfail $m16:literal $r16:literal)?,
        $v17:ident $(xfail $m17:literal $r17:literal)?,
        $v2:ident $(xfail $m2:literal $r2:literal)? $(,)?) => {
        $crate::e2e_versions!(@go $body, $v16, V1_6, [$($m16 $r16)?]);
        $crate::e2e_versions!(@go $body, $v17, V1_7, [$($m17 $r17)?]);
        $crate::e2e_versions!(@go $body, $v2, V2, [$($m2 $r2)?]);
    };
    (@go $body:ident, $name:ident, $v:ident, []) => {
        $crate::e2e_versions!(@one $body, $name, $v, go, None, ignore);
    };
    (@go $body:ident, $name:ident, $v:ident, [$m:literal $r:literal]) => {
        $crate::e2e_versions!(@one $body, $name, $v, go, Some(($m, $r)), ignore);
    };
    (@one $body:ident, $name:ident, $v:ident, $shim:ident, $xfail:expr $(, $ignore:ident)?) => {
        #[test]
        $(#[$ignore = "reference run with the Go shim: make test-reference"])?
        fn $name() {
            $crate::containerd::run_case(
                stringify!($name),
                $crate::containerd::Setup::$shim($crate::containerd::Version::$v),
                $xfail,
                $body,
            );
        }
    };
}

/// `method` asked of the shim at `address` directly, under the task service name
/// `containerd.task.v{api}.Task`: what a containerd speaking that task API version sends.
pub fn task_call_raw<Req: protobuf::Message, Resp: protobuf::Message>(
    address: &str,
    api: u32,
    method: &str,
    request: &Req,
) -> Result<Resp, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ttrpc::asynchronous::Client::connect(address).await.map_err(|e| e.to_string())?;
        let mut req = ttrpc::Request::new();
        req.set_service(format!("containerd.task.v{api}.Task"));
        req.set_method(method.into());
        req.set_timeout_nano(30_000_000_000);
        req.payload = request.write_to_bytes().unwrap();
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if resp.status.code() != ttrpc::Code::OK {
            return Err(format!("{:?}: {}", resp.status.code(), resp.status.message));
        }
        Resp::parse_from_bytes(&resp.payload).map_err(|e| e.to_string())
    })
}

/// `State` of `id`'s init through [`task_call_raw`].
pub fn task_state_raw(address: &str, api: u32, id: &str) -> Result<containerd_shim_protos::api::StateResponse, String> {
    task_call_raw(address, api, "State", &crate::req::state(id, ""))
}

impl Containerd {
    /// The shim address containerd holds for `id`: `address` in the bundle, written by the shim;
    /// on 2.x also `bootstrap.json`, written by containerd from the shim's `start` answer.
    pub fn shim_address(&self, id: &str) -> String {
        let b = self.bundle(id);
        match std::fs::read_to_string(b.join("bootstrap.json")) {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                v["address"].as_str().unwrap().to_owned()
            }
            Err(_) => std::fs::read_to_string(b.join("address")).unwrap().trim().to_owned(),
        }
    }

    /// Checks how containerd talks to `id`'s shim. 2.x: the shim answered `start` with the
    /// version-3 JSON (containerd wrote it to the bundle's `bootstrap.json`: version 3, ttrpc,
    /// the address the shim wrote to `address`, if it writes one: the 2.x Go shim does not), and
    /// the shim serves `containerd.task.v3.Task`. 1.x: no `bootstrap.json` (the plain address
    /// line) and `containerd.task.v2.Task`. Returns the address.
    pub fn check_bootstrap(&self, id: &str) -> String {
        let b = self.bundle(id);
        let written = std::fs::read_to_string(b.join("address")).ok().map(|a| a.trim().to_owned());
        let bootstrap = std::fs::read_to_string(b.join("bootstrap.json"));
        let address = match self.version() {
            Version::V2 => {
                let json = bootstrap.expect("containerd 2.x writes bootstrap.json");
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                assert_eq!(v["version"], 3, "start answered with the version-3 JSON: {json}");
                assert_eq!(v["protocol"], "ttrpc", "{json}");
                let address = v["address"].as_str().unwrap().to_owned();
                if let Some(w) = &written {
                    assert_eq!(w, &address, "{json}");
                }
                if !self.setup.go_shim {
                    assert!(written.is_some(), "our shim writes `address` for every version");
                }
                address
            }
            Version::V1_6 | Version::V1_7 => {
                assert!(bootstrap.is_err(), "containerd 1.x writes no bootstrap.json");
                written.expect("the shim writes `address`")
            }
        };
        let api = self.version().task_api();
        let st = task_state_raw(&address, api, id)
            .unwrap_or_else(|e| panic!("State through containerd.task.v{api}.Task at {address}: {e}"));
        assert_eq!(st.id, id);
        eprintln!("{id}: containerd {} talks task v{api} to the shim at {address}", self.full_version);
        address
    }
}
