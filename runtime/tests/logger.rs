//! The binary logger's process handling (issue 15 item 4): after a clean stop the logger's pid
//! is reaped and must never be signalled again; an unknown pid is never signalled.
//! Own test binary: the reaper calls `waitpid(-1)`, which must not steal other tests' children.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use shim_runtime::logger::BinaryLogger;
use shim_runtime::reaper::Reaper;
use shim_runtime::sys;

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// A logger that exits by itself (EOF on its pipes) is reaped by `stop`; afterwards the shim
/// holds no pid to signal, so dropping it sends nothing (before the fix, `Drop` read the
/// consumed exit channel as "still running" and SIGKILLed the reaped pid).
#[tokio::test]
async fn a_stopped_logger_is_never_signalled_again() {
    let reaper = Reaper::new();
    let reap = tokio::spawn(reaper.run().unwrap());
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    // Ready at once (closes fd 5), then reads both pipes to EOF, as a logging binary does.
    let script = "exec 5>&-; cat <&3 >/dev/null; cat <&4 >/dev/null".to_owned();
    let mut logger =
        BinaryLogger::start(&reaper, Path::new("/bin/sh"), &["-c".to_owned(), script], "c", "ns", out_r, err_r)
            .await
            .unwrap();
    let pid = logger.live_pid().expect("running: its pipes are still open");
    drop((out_w, err_w));
    logger.stop(Duration::from_secs(30)).await;
    assert_eq!(logger.live_pid(), None, "logger {pid} was reaped by stop(), yet would be signalled");
    drop(logger);
    reap.abort();
}

/// Pid 0 (and pids that do not fit a pid_t) are refused instead of becoming kill(0, ...), which
/// signals the shim's own process group. Checked with signal 0, which sends nothing.
#[test]
fn unknown_pids_are_never_signalled() {
    for pid in [0, u32::MAX, u32::try_from(i32::MAX).unwrap() + 1] {
        assert_eq!(sys::signal_pid(pid, None), Err(nix::errno::Errno::ESRCH), "pid {pid}");
    }
    assert_eq!(sys::signal_pid(std::process::id(), None), Ok(()));
}
