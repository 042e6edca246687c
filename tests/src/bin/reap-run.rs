//! `reap-run CMD ARGS...`: runs CMD as a child subreaper, so daemonized shims (double-forked
//! orphans) reparent here instead of to the VM's init, which does not reap them. Reaps every
//! orphan as it exits. When CMD exits, any descendant still alive is one the tests leaked: it
//! is listed, killed (SIGKILL, by pid, children of this process only) and reaped, and the exit
//! status is CMD's, or 1 if CMD succeeded but left processes behind.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command: state ppid ...
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut f = rest.split(' ');
        let state = f.next()?;
        let ppid = f.next()?;
        (ppid == me && state != "Z").then_some(pid)
    })
    .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

fn reap_nohang() {
    while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: reap-run CMD [ARGS...]");
        return ExitCode::from(2);
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("reap-run: set subreaper: {e}");
        return ExitCode::from(2);
    }
    let child = match Command::new(cmd).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reap-run: {cmd}: {e}");
            return ExitCode::from(127);
        }
    };
    let main_pid = i32::try_from(child.id()).unwrap_or(-1);
    drop(child);
    let mut status = 1u8;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == main_pid => {
                status = u8::try_from(code).unwrap_or(1);
                break;
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == main_pid => {
                status = 128u8.saturating_add(u8::try_from(sig as i32).unwrap_or(0));
                break;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    // Leftovers: give orphans that are already exiting a moment, then kill the rest.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut leaked = Vec::new();
    loop {
        reap_nohang();
        let left = children();
        if left.is_empty() {
            break;
        }
        if Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        for pid in left {
            if !leaked.contains(&pid) {
                eprintln!("reap-run: killing leftover process {pid}: {}", cmdline(pid));
                leaked.push(pid);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !leaked.is_empty() && status == 0 {
        eprintln!("reap-run: {} process(es) were left behind", leaked.len());
        status = 1;
    }
    ExitCode::from(status)
}
