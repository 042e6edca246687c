//! A private, real containerd (Debian's package) for end-to-end tests with `ctr`, using the
//! built shim as `containerd-shim-runc-v2` (hack/containerd-up.sh puts its directory first in PATH).
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

/// A private containerd; stopped and cleaned up (hack/containerd-down.sh) on drop.
pub struct Containerd {
    pub tmp: PathBuf,
    pub dir: PathBuf,
    /// runc's state root for `ctr run --runc-root` (DIR/runc), keeping runc state private.
    pub runc_root: String,
    /// `--fifo-dir` for `ctr run` and `ctr tasks exec` (DIR/fifo).
    pub fifo: String,
}

impl Containerd {
    pub fn start() -> Containerd {
        // One dir per instance: tests of one binary run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = PathBuf::from(format!("/tmp/e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = tmp.join("c");
        let (runc_root, fifo) = (dir.join("runc").display().to_string(), dir.join("fifo").display().to_string());
        let c = Containerd { dir, tmp, runc_root, fifo };
        let shim_dir = shim_binary().parent().unwrap().to_path_buf();
        run_ok(Command::new(repo().join("hack/mkimage.sh")).arg(c.tmp.join("image.tar")));
        let mut up = Command::new(repo().join("hack/containerd-up.sh"));
        up.arg(&c.dir);
        // E2E_GO_SHIM=1 runs the same test against the system (Go) shim, for comparison.
        if std::env::var("E2E_GO_SHIM").is_err() {
            up.arg(&shim_dir);
        }
        run_ok(&mut up);
        run_ok(&mut c.ctr(&["images", "import", c.tmp.join("image.tar").to_str().unwrap()]));
        c
    }

    pub fn socket(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }

    /// `ctr` against this containerd in namespace NS, bounded by `timeout`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120", "ctr", "-a", &self.socket(), "-n", NS]).args(args).stdin(Stdio::null());
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
        let child = Command::new("ctr")
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
        let mut up = Command::new(repo().join("hack/containerd-up.sh"));
        up.arg(&self.dir);
        if std::env::var("E2E_GO_SHIM").is_err() {
            up.arg(shim_binary().parent().unwrap());
        }
        run_ok(&mut up);
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
