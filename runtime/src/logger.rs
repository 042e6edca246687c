//! Logging stdio targets (SPEC §5.1): `binary:///path?k=v` starts a logging process that reads
//! the container's stdout/stderr pipes; `file:///path` appends both streams to a file.
//!
//! The logger process is spawned through the reaper (its exit is routed to us, nobody else
//! waits for it) with fd 3 = stdout read end, fd 4 = stderr read end, fd 5 = the readiness pipe,
//! and `CONTAINER_ID`/`CONTAINER_NAMESPACE` in its environment. Setup waits until it writes a
//! byte to fd 5 or closes it. On delete the shim waits for it to exit by itself (it sees EOF
//! when the container's writers are gone), then SIGTERM, then SIGKILL.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shim_events::ExitInfo;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::reaper::Reaper;
use crate::sys;

/// How long setup waits for the logger to signal readiness.
pub const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a logger gets after SIGTERM before SIGKILL.
pub const LOGGER_TERM_GRACE: Duration = Duration::from_secs(2);

/// Where a process's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fifo (or nothing when the path is empty).
    Fifo(String),
    /// `file:///path`
    File(PathBuf),
    /// `binary:///path?k=v`: the program and its arguments (query pairs as `k v`).
    Binary(PathBuf, Vec<String>),
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a stdout URI as containerd passes it.
pub fn parse(uri: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Target::Fifo(uri.to_owned()));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_decode(path);
    if !path.starts_with('/') {
        return Err(format!("{uri:?}: path must be absolute"));
    }
    match scheme {
        "fifo" => Ok(Target::Fifo(path)),
        "file" => Ok(Target::File(PathBuf::from(path))),
        "binary" => {
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            Ok(Target::Binary(PathBuf::from(path), args))
        }
        other => Err(format!("{uri:?}: unsupported scheme {other:?}")),
    }
}

/// Opens (creating its directory) a log file for appending, mode 0644.
pub fn open_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().append(true).create(true).mode(0o644).open(path)
}

/// Copies a pipe into a shared log file until EOF. Each write runs on the blocking pool: a
/// log file on a slow (or network, or full) filesystem blocks in `write(2)`, which must not
/// stall the event loop.
pub async fn copy_to_file(fd: OwnedFd, file: std::sync::Arc<std::fs::File>) {
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let f = std::sync::Arc::clone(&file);
                let written = tokio::task::spawn_blocking(move || {
                    let r = (&*f).write_all(&buf[..n]);
                    (buf, r)
                })
                .await;
                match written {
                    Ok((b, Ok(()))) => buf = b,
                    Ok((_, Err(_))) | Err(_) => return,
                }
            }
        }
    }
}

/// A running logging binary.
#[derive(Debug)]
pub struct BinaryLogger {
    pid: u32,
    /// Its exit; `None` once received: the pid is reaped and may be another process's now.
    exit: Option<oneshot::Receiver<ExitInfo>>,
}

impl BinaryLogger {
    /// Starts `program args` with the read ends of the container's stdout/stderr pipes and waits
    /// until it is ready.
    pub async fn start(
        reaper: &Reaper,
        program: &Path,
        args: &[String],
        container_id: &str,
        namespace: &str,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<BinaryLogger> {
        let (ready_r, ready_w) = sys::pipe_cloexec()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        sys::pass_fds(&mut cmd, vec![(stdout, 3), (stderr, 4), (ready_w, 5)]);
        let spawned = reaper.spawn(&mut cmd);
        // Drops our copies of the pipe ends the logger now holds.
        drop(cmd);
        let (pid, exit) = spawned?;
        let mut logger = BinaryLogger { pid, exit: Some(exit) };
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(LOGGER_READY_TIMEOUT, ready.read(&mut byte)).await {
            Ok(Ok(_)) => Ok(logger),
            Ok(Err(e)) => {
                logger.stop(Duration::ZERO).await;
                Err(e)
            }
            Err(_) => {
                logger.stop(Duration::ZERO).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "logging binary did not become ready"))
            }
        }
    }

    /// The pid to signal if the logger may still be running; `None` once its exit was received
    /// (the pid is reaped and may belong to another process by now), and `None` when the
    /// reaper is gone without delivering it (whether the pid is still ours is unknown).
    pub fn live_pid(&mut self) -> Option<u32> {
        let rx = self.exit.as_mut()?;
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => Some(self.pid),
            Ok(_) | Err(oneshot::error::TryRecvError::Closed) => {
                self.exit = None;
                None
            }
        }
    }

    /// Waits up to `limit` for the exit; true once it was received (or cannot be anymore).
    async fn exited_within(&mut self, limit: Duration) -> bool {
        let Some(rx) = self.exit.as_mut() else { return true };
        match tokio::time::timeout(limit, rx).await {
            Ok(_) => {
                self.exit = None;
                true
            }
            Err(_) => false,
        }
    }

    /// Signals the logger if it has not been reaped. The exit is routed on this thread by the
    /// reaper, so between `live_pid` and `kill` the pid cannot be reaped and reused.
    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.live_pid() {
            let _ = sys::signal_pid(pid, Some(sig));
        }
    }

    /// Waits up to `limit` for the logger to exit by itself, then SIGTERM, then SIGKILL.
    pub async fn stop(&mut self, limit: Duration) {
        if self.exited_within(limit).await {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if self.exited_within(LOGGER_TERM_GRACE).await {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.exited_within(LOGGER_TERM_GRACE).await;
    }
}

impl Drop for BinaryLogger {
    fn drop(&mut self) {
        // Not stopped through `stop` (a failed setup, the shim tearing down): do not leave it.
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(parse("/run/x/stdout").unwrap(), Target::Fifo("/run/x/stdout".into()));
        assert_eq!(parse("fifo:///run/x").unwrap(), Target::Fifo("/run/x".into()));
        assert_eq!(parse("file:///var/log/a%20b.log").unwrap(), Target::File("/var/log/a b.log".into()));
        assert_eq!(
            parse("binary:///usr/bin/logger?--tag=web&-v").unwrap(),
            Target::Binary("/usr/bin/logger".into(), vec!["--tag".into(), "web".into(), "-v".into()])
        );
        assert!(parse("binary://relative/logger").is_err());
        assert!(parse("tcp:///x").is_err());
    }
}
