//! The OCI runtime CLI driver (runc, or crun through `BinaryName`).
//!
//! Every invocation is spawned through the [`Reaper`] (registered under the spawn lock) and
//! awaited on its routed exit; nothing here calls `wait`. runc's own error text goes to
//! `--log <bundle>/log.json` (its stdio may be the container's), and is turned into a typed
//! [`OciError`] by the one classifier, [`classify`]. Only the tail of that log is read
//! ([`LOG_TAIL_BYTES`], off the event loop): it grows for the container's lifetime.
//!
//! Every call runs in its own process group and has a time limit ([`call_timeout`]: 5 minutes,
//! `SHIM_RUNC_TIMEOUT` seconds in the shim's environment, 0 for none). A call over the limit
//! is SIGKILLed with its whole group (`runc init` and what it started for this call) and fails
//! with [`OciError::TimedOut`], so a hung runtime cannot hold a request (or an init's exit
//! waiting for that request) forever.
//!
//! Layout: the driver here; [`OciError`] and [`classify`] in `error`, the log tail in `log_tail`.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;

use crate::gate::Gate;
use crate::reaper::Reaper;
use crate::sys;

mod error;
mod log_tail;
#[cfg(test)]
mod tests;

pub use error::{classify, OciError};
use log_tail::last_log_error;
pub use log_tail::LOG_TAIL_BYTES;

/// The container-side stdio given to `runc create`/`runc exec` (the container inherits it).
#[derive(Debug, Default)]
pub struct RuntimeStdio {
    /// stdin of the process; `/dev/null` when absent.
    pub stdin: Option<OwnedFd>,
    /// stdout of the process; `/dev/null` when absent.
    pub stdout: Option<OwnedFd>,
    /// stderr of the process; `/dev/null` when absent.
    pub stderr: Option<OwnedFd>,
}

/// Options of `runc create`.
#[derive(Debug, Default, Clone)]
pub struct CreateOpts {
    /// `--no-pivot`
    pub no_pivot: bool,
    /// `--no-new-keyring`
    pub no_new_keyring: bool,
    /// `--console-socket`
    pub console_socket: Option<PathBuf>,
}

/// Options of `runc checkpoint` (containerd's `CheckpointOptions` plus the paths).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckpointOpts {
    /// `--image-path`: where CRIU writes the images.
    pub image_path: PathBuf,
    /// `--work-path`: CRIU's logs and work files.
    pub work_path: PathBuf,
    /// Stop the container after the dump (otherwise `--leave-running`).
    pub exit: bool,
    /// `--tcp-established`
    pub open_tcp: bool,
    /// `--ext-unix-sk`
    pub external_unix_sockets: bool,
    /// `--shell-job`
    pub terminal: bool,
    /// `--file-locks`
    pub file_locks: bool,
    /// `--empty-ns` for each.
    pub empty_namespaces: Vec<String>,
}

/// Options of `runc restore`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreOpts {
    /// `--image-path`: the checkpoint images.
    pub image_path: PathBuf,
    /// `--work-path`: CRIU's logs.
    pub work_path: PathBuf,
    /// `--no-pivot`
    pub no_pivot: bool,
    /// `--console-socket`
    pub console_socket: Option<PathBuf>,
}

/// How long a killed runtime call is waited for (SIGKILL: it is reaped at once unless stuck
/// in the kernel).
const KILLED_REAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One OCI runtime configuration (binary, state root, cgroup driver).
#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: String,
    root: PathBuf,
    systemd_cgroup: bool,
    reaper: Reaper,
    /// Admission of `exec` calls (FIFO, bounded; see [`crate::gate`]).
    exec_gate: Gate,
}

/// Default limit of one runtime call.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The environment variable that sets the limit (seconds; 0: none).
pub const CALL_TIMEOUT_ENV: &str = "SHIM_RUNC_TIMEOUT";

/// The limit of one runtime call: [`CALL_TIMEOUT_ENV`] if set and valid, else
/// [`DEFAULT_CALL_TIMEOUT`]. Read once per process.
pub fn call_timeout() -> Option<std::time::Duration> {
    static LIMIT: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match crate::env::number::<u64>(CALL_TIMEOUT_ENV, "a number of seconds") {
        Some(0) => None,
        Some(s) => Some(std::time::Duration::from_secs(s)),
        None => Some(DEFAULT_CALL_TIMEOUT),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), OciError> {
    sys::pipe_cloexec().map_err(|source| OciError::Io { what: "pipe".into(), source })
}

async fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = Vec::new();
    rx.read_to_end(&mut buf).await?;
    Ok(buf)
}

impl OciRuntime {
    /// A runtime driver. `root` is the runtime's state root *including* the namespace.
    pub fn new(binary: impl Into<String>, root: impl Into<PathBuf>, systemd_cgroup: bool, reaper: Reaper) -> Self {
        OciRuntime { binary: binary.into(), root: root.into(), systemd_cgroup, reaper, exec_gate: Gate::for_exec() }
    }

    /// The binary name.
    pub fn binary(&self) -> &str {
        &self.binary
    }

    fn command(&self, log: Option<&Path>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        // Only when set: `env_remove` makes std copy the whole environment into a map and
        // rebuild envp on every spawn (a fifth of the shim's instructions per exec, callgrind).
        // The shim daemon drops it from its own environment at start, so runc calls inherit the
        // environment as it is.
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        // Its own process group, so a call over the time limit is killed with what it started
        // (posix_spawn supports this: no pre-exec hook needed).
        cmd.process_group(0);
        // No pre-exec hook (the Go shim sets Pdeathsig): without one, std spawns with
        // posix_spawn, i.e. vfork, instead of copying the shim's page tables per runc call. A
        // runc left running by a dying shim finishes its one command and exits; the container's
        // processes are cleaned up by `shim delete` (kill --all, runc delete --force) either way.
        cmd
    }

    /// Runs one runtime command to completion. `stdio` becomes the runtime's stdio (and so the
    /// container's, for create/exec); without it, stdout is captured and returned and stderr is
    /// captured for the error text.
    async fn run(
        &self,
        op: &'static str,
        log: Option<&Path>,
        args: Vec<OsString>,
        stdio: Option<RuntimeStdio>,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, OciError> {
        let mut cmd = self.command(log);
        cmd.args(&args);
        let mut captured = None;
        let mut stdin_writer = None;
        match stdio {
            Some(s) => {
                cmd.stdin(s.stdin.map_or_else(Stdio::null, Stdio::from));
                cmd.stdout(s.stdout.map_or_else(Stdio::null, Stdio::from));
                cmd.stderr(s.stderr.map_or_else(Stdio::null, Stdio::from));
            }
            None => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
                match input {
                    Some(data) => {
                        let (in_r, in_w) = pipe()?;
                        cmd.stdin(Stdio::from(in_r));
                        stdin_writer = Some((in_w, data));
                    }
                    None => {
                        cmd.stdin(Stdio::null());
                    }
                }
                captured = Some((out_r, err_r));
            }
        }
        let spawned = self.reaper.spawn(&mut cmd);
        // Close our copies of the child's ends now, so EOF arrives when the child exits.
        drop(cmd);
        let (pid, exit_rx) = spawned.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OciError::BinaryNotFound { binary: self.binary.clone() },
            _ => OciError::Spawn { binary: self.binary.clone(), source: e },
        })?;
        tracing::debug!(op, pid, "runtime spawned");
        let mut exit_rx = exit_rx;
        let finished = async {
            if let Some((fd, data)) = stdin_writer {
                let mut tx = tokio::net::unix::pipe::Sender::from_owned_fd(fd)
                    .map_err(|e| OciError::Io { what: "runtime stdin".into(), source: e })?;
                use tokio::io::AsyncWriteExt;
                tx.write_all(&data).await.map_err(|e| OciError::Io { what: "runtime stdin".into(), source: e })?;
            }
            let (stdout, stderr) = match captured {
                Some((out, err)) => {
                    let (o, e) = tokio::join!(read_all(out), read_all(err));
                    (o.unwrap_or_default(), e.unwrap_or_default())
                }
                None => (Vec::new(), Vec::new()),
            };
            let exit = (&mut exit_rx)
                .await
                .map_err(|_| OciError::Io { what: format!("{op}: exit lost"), source: io::ErrorKind::Other.into() })?;
            Ok::<_, OciError>((exit, stdout, stderr))
        };
        let (exit, stdout, stderr) = match call_timeout() {
            None => finished.await?,
            Some(limit) => match tokio::time::timeout(limit, finished).await {
                Ok(r) => r?,
                Err(_) => return Err(self.kill_timed_out(op, pid, limit, exit_rx).await),
            },
        };
        if exit.status == 0 {
            return Ok(stdout);
        }
        let tail = match log {
            Some(log) => {
                let log = log.to_owned();
                tokio::task::spawn_blocking(move || last_log_error(&log)).await.ok().flatten()
            }
            None => None,
        };
        let message = tail
            .or_else(|| {
                let s = String::from_utf8_lossy(&stderr).trim().to_owned();
                (!s.is_empty()).then_some(s)
            })
            .unwrap_or_else(|| format!("exit status {}", exit.status));
        Err(classify(op, &message))
    }

    /// Kills a runtime call over its limit with its process group and reaps it.
    async fn kill_timed_out(
        &self,
        op: &'static str,
        pid: u32,
        limit: std::time::Duration,
        mut exit_rx: tokio::sync::oneshot::Receiver<shim_events::ExitInfo>,
    ) -> OciError {
        // The reaper routes exits on this thread: no exit received yet means not reaped yet, so
        // the group id is still this call's.
        if matches!(exit_rx.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
            tracing::error!(op, pid, limit_s = limit.as_secs(), "runtime call over its time limit: killing it");
            if let Err(e) = crate::sys::kill_process_group(pid) {
                tracing::warn!(op, pid, errno = %e, "kill runtime process group");
            }
            if tokio::time::timeout(KILLED_REAP_WAIT, exit_rx).await.is_err() {
                tracing::warn!(op, pid, "killed runtime call not reaped yet");
            }
        }
        OciError::TimedOut { op, limit }
    }

    /// `runc create`. The init's pid is in `pid_file` afterwards.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        opts: &CreateOpts,
        stdio: RuntimeStdio,
    ) -> Result<(), OciError> {
        let mut args: Vec<OsString> =
            vec!["create".into(), "--bundle".into(), bundle.into(), "--pid-file".into(), pid_file.into()];
        if let Some(s) = &opts.console_socket {
            args.push("--console-socket".into());
            args.push(s.into());
        }
        if opts.no_pivot {
            args.push("--no-pivot".into());
        }
        if opts.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(id.into());
        self.run("create", Some(&bundle.join("log.json")), args, Some(stdio), None).await.map(|_| ())
    }

    /// `runc start`.
    pub async fn start(&self, id: &str, bundle: &Path) -> Result<(), OciError> {
        self.run("start", Some(&bundle.join("log.json")), vec!["start".into(), id.into()], None, None).await.map(|_| ())
    }

    /// `runc exec --detach` of the process spec in `process_file`.
    pub async fn exec(
        &self,
        id: &str,
        bundle: &Path,
        process_file: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: RuntimeStdio,
    ) -> Result<(), OciError> {
        let mut args: Vec<OsString> = vec![
            "exec".into(),
            "--process".into(),
            process_file.into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.into(),
        ];
        if let Some(s) = console_socket {
            args.push("--console-socket".into());
            args.push(s.into());
        }
        args.push(id.into());
        // In arrival order, a few at once: under a storm, execs finish in the order they came.
        let log = bundle.join("log.json");
        self.exec_gate.run(self.run("exec", Some(&log), args, Some(stdio), None)).await.map(|_| ())
    }

    /// `runc kill [--all] ID SIGNAL`.
    pub async fn kill(&self, id: &str, bundle: &Path, signal: u32, all: bool) -> Result<(), OciError> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.push(id.into());
        args.push(signal.to_string().into());
        self.run("kill", Some(&bundle.join("log.json")), args, None, None).await.map(|_| ())
    }

    /// `runc delete [--force]`. A container the runtime does not know is not an error.
    pub async fn delete(&self, id: &str, log: Option<&Path>, force: bool) -> Result<(), OciError> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        match self.run("delete", log, args, None, None).await {
            Ok(_) | Err(OciError::ContainerNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `runc pause`.
    pub async fn pause(&self, id: &str, bundle: &Path) -> Result<(), OciError> {
        self.run("pause", Some(&bundle.join("log.json")), vec!["pause".into(), id.into()], None, None).await.map(|_| ())
    }

    /// `runc resume`.
    pub async fn resume(&self, id: &str, bundle: &Path) -> Result<(), OciError> {
        self.run("resume", Some(&bundle.join("log.json")), vec!["resume".into(), id.into()], None, None)
            .await
            .map(|_| ())
    }

    /// `runc update --resources -` with the LinuxResources JSON on stdin.
    pub async fn update(&self, id: &str, bundle: &Path, resources: Vec<u8>) -> Result<(), OciError> {
        let args = vec!["update".into(), "--resources".into(), "-".into(), id.into()];
        self.run("update", Some(&bundle.join("log.json")), args, None, Some(resources)).await.map(|_| ())
    }

    /// `runc checkpoint` with the flags of `opts` (go-runc's order).
    pub async fn checkpoint(&self, id: &str, bundle: &Path, opts: &CheckpointOpts) -> Result<(), OciError> {
        let mut args: Vec<OsString> = vec!["checkpoint".into()];
        args.push("--image-path".into());
        args.push(opts.image_path.clone().into());
        args.push("--work-path".into());
        args.push(opts.work_path.clone().into());
        for (on, flag) in [
            (opts.open_tcp, "--tcp-established"),
            (opts.external_unix_sockets, "--ext-unix-sk"),
            (opts.terminal, "--shell-job"),
            (opts.file_locks, "--file-locks"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        for ns in &opts.empty_namespaces {
            args.push("--empty-ns".into());
            args.push(ns.into());
        }
        if !opts.exit {
            args.push("--leave-running".into());
        }
        args.push(id.into());
        self.run("checkpoint", Some(&bundle.join("log.json")), args, None, None).await.map(|_| ())
    }

    /// `runc restore --detach --no-subreaper` (go-runc's order). The init's pid is in
    /// `pid_file` afterwards; `stdio` becomes its stdio, as for create.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        opts: &RestoreOpts,
        stdio: RuntimeStdio,
    ) -> Result<(), OciError> {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "--image-path".into(),
            opts.image_path.clone().into(),
            "--work-path".into(),
            opts.work_path.clone().into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.into(),
        ];
        if opts.no_pivot {
            args.push("--no-pivot".into());
        }
        args.push("--no-subreaper".into());
        if let Some(s) = &opts.console_socket {
            args.push("--console-socket".into());
            args.push(s.into());
        }
        args.push("--bundle".into());
        args.push(bundle.into());
        args.push(id.into());
        self.run("restore", Some(&bundle.join("log.json")), args, Some(stdio), None).await.map(|_| ())
    }

    /// `runc ps --format json`: the pids in the container's cgroup.
    pub async fn ps(&self, id: &str, bundle: &Path) -> Result<Vec<u32>, OciError> {
        let out = self
            .run(
                "ps",
                Some(&bundle.join("log.json")),
                vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                None,
                None,
            )
            .await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out).ok();
        pids.ok_or_else(|| OciError::Failed { op: "ps", message: "unparsable output".into() })
    }
}

/// Reads a pid file written by the runtime.
pub fn read_pid_file(path: &Path) -> Result<u32, OciError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| OciError::Io { what: format!("read pid file {}", path.display()), source: e })?;
    text.trim().parse::<u32>().map_err(|e| OciError::Io {
        what: format!("parse pid file {}", path.display()),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// Runs `program args` through the reaper and returns its stdout (for one-shot helpers such as
/// `containerd --version` and `runc features`). Fails on a non-zero exit.
pub async fn capture(reaper: &Reaper, program: &Path, args: &[&str]) -> Result<Vec<u8>, OciError> {
    let (out_r, out_w) = pipe()?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(out_w)).stderr(Stdio::null());
    let spawned = reaper.spawn(&mut cmd);
    drop(cmd);
    let binary = program.display().to_string();
    let (_, exit_rx) = spawned.map_err(|e| OciError::Spawn { binary: binary.clone(), source: e })?;
    let out = read_all(out_r).await.map_err(|e| OciError::Io { what: format!("read {binary}"), source: e })?;
    let exit = exit_rx
        .await
        .map_err(|_| OciError::Io { what: format!("{binary}: exit lost"), source: io::ErrorKind::Other.into() })?;
    if exit.status != 0 {
        return Err(OciError::Failed { op: "capture", message: format!("{binary} exited with {}", exit.status) });
    }
    Ok(out)
}
