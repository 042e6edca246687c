//! A private, real containerd (1.6, 1.7 or 2.x, as hack/install-deps.sh unpacked them) for
//! end-to-end tests with that version's `ctr`, using the built shim as `containerd-shim-runc-v2`
//! (hack/containerd-up.sh puts its directory first in PATH), or that version's own Go shim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::shim_binary;

pub const IMAGE: &str = "docker.io/library/shimtest:latest";
pub const NS: &str = "e2e";

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
        match std::env::var("CONTAINERD_VERSION").as_deref() {
            Ok("1.7") => Version::V1_7,
            Ok("2") => Version::V2,
            Ok("1.6") | Err(_) => Version::V1_6,
            Ok(other) => panic!("CONTAINERD_VERSION={other}: expected 1.6, 1.7 or 2"),
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
        let c = Containerd { dir, tmp, runc_root, fifo, setup, full_version, ctr_bin };
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

    /// `ctr` against this containerd in namespace NS, bounded by `timeout`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"]).arg(&self.ctr_bin).args(["-a", &self.socket(), "-n", NS]).args(args);
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
        let needle = format!("-address\0{}\0", self.socket());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let out = Command::new(repo().join("hack/containerd-down.sh")).arg(&self.dir).output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("containerd-down failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
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
                let exec = l.split("ExecID:").nth(1).map(|r| r.split(',').next().unwrap_or("").to_owned());
                Some((pid, exec.unwrap_or_default()))
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

    /// Number of events of `topic` in namespace NS that containerd logged as received from a
    /// shim (`event forwarded`, debug level), in `log`.
    pub fn forwarded(log: &str, topic: &str) -> usize {
        let needle = format!("msg=\"event forwarded\" ns={NS} topic={topic} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// The bundle containerd made for `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.join("state/io.containerd.runtime.v2.task").join(NS).join(id)
    }

    /// The shim socket containerd derives for a (non-grouped) container `id`.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let joined = format!("{}/{NS}/{id}", self.socket());
        let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(joined.as_bytes()).unwrap();
        }
        let hash = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        Path::new("/run/containerd/s").join(hash.split_whitespace().next().unwrap())
    }
}

/// Cgroup directories named `id` under the NS parent in every mounted hierarchy.
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup ") || t.starts_with("cgroup2 ")))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join(NS).join(id))
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
