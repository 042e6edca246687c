//! Every `unsafe` of the runtime crate lives here, each block with the reason it is sound.
//!
//! Syscalls the rest of the crate needs and that `nix`/`std` do not offer safely: the child
//! subreaper bit, fd passing to children, adopting inherited fds, signalling one pid or a
//! process group, pty and pipe ioctls, and `malloc_trim`. Also the small fd helpers several
//! modules share (a close-on-exec pipe, a memfd reachable by path), so each is written once.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes this process the child subreaper of its descendants (`PR_SET_CHILD_SUBREAPER`), so
/// container processes reparent to the shim when their `runc` parent exits.
pub fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Takes ownership of an fd this process inherited from its parent (the listener on fd 3).
///
/// Returns `None` when `fd` is not open. Call at most once per fd, before anything else could
/// have opened, closed or adopted it.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    let open = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok();
    if !open {
        return None;
    }
    // SAFETY: the fd is open (checked above), was inherited across exec so nothing in this
    // process owns it yet, and callers adopt each inherited fd once at startup.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` (`None`: only check that the process exists) to the one process `pid`.
///
/// A pid that names no single process (0, or one that does not fit `pid_t`, which `kill(2)`
/// would read as a process group or "every process") is refused with `ESRCH`: the caller
/// holds no such process. Callers must only pass pids they have not reaped yet.
pub fn signal_pid(pid: u32, signal: Option<nix::sys::signal::Signal>) -> nix::Result<()> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal),
        _ => Err(nix::errno::Errno::ESRCH),
    }
}

/// Marks every open fd numbered `first` or above close-on-exec: what the daemon inherited
/// (the listener on fd 3, anything containerd or a test harness left open), so that no child
/// (runc, a logging binary) inherits it. Fds this process opens itself are close-on-exec
/// already (std, nix and tokio open everything with `O_CLOEXEC`/`SOCK_CLOEXEC`).
pub fn cloexec_inherited_fds(first: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|fd| *fd >= first)
        .collect();
    // The directory's own fd is among them and closed by now: EBADF, skipped.
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// SIGKILLs the process group led by `leader` (a runtime call spawned in its own group). Only
/// for a leader not reaped yet: while it is unreaped its pid, and so the group id, cannot be
/// reused.
pub fn kill_process_group(leader: u32) -> nix::Result<()> {
    match i32::try_from(leader) {
        Ok(p) if p > 1 => nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL),
        _ => Err(nix::errno::Errno::ESRCH),
    }
}

/// Makes `fd` the child's fd `target` (close-on-exec cleared), keeping `fd` alive in the
/// parent until `cmd` is dropped.
pub fn pass_fd(cmd: &mut Command, fd: OwnedFd, target: RawFd) {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only dup2(2) and
    // fcntl(2), both async-signal-safe; `raw` stays open in the parent (owned by the closure's
    // captured `fd`) until the Command, and so the closure, is dropped after spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if raw == target {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Receives one fd sent with `SCM_RIGHTS` on `sock` (runc's `--console-socket` protocol: one
/// message carrying the pty master and its name). Extra fds in the message are closed.
pub fn recv_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut name = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for this message;
                // nothing else refers to it, so this is its single owner.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let mut fds = received.into_iter();
    fds.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "console socket message carried no fd"))
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `fd` is a live borrowed descriptor; TIOCSWINSZ reads one `winsize` from the valid
    // pointer we pass and writes nothing back.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes written into the pipe or fifo `fd` (either end) and not yet read (`FIONREAD`).
pub fn pipe_unread(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is a live borrowed descriptor; FIONREAD writes one `c_int` through the valid
    // pointer to our local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Whether the write end `fd` of a pipe or fifo still has a reader: without one, the kernel
/// reports POLLERR on it.
pub fn pipe_has_reader(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid `pollfd` (our local) for a live descriptor; a zero timeout never blocks.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc >= 0 && p.revents & libc::POLLERR == 0
}

/// Hangs up the terminal whose master is `master`, as closing the last master fd would (the
/// kernel's pty close calls `tty_vhangup` on the slave): the slave's session gets SIGHUP and
/// its further terminal IO fails. The slave is reached with `TIOCGPTPEER` (so no path in the
/// container's devpts is needed) and hung up with `TIOCVHANGUP` (CAP_SYS_ADMIN, as the shim has).
pub fn hangup_pty(master: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `master` is a live borrowed descriptor; TIOCGPTPEER takes an int flags argument,
    // touches no memory of ours and returns a new descriptor or -1.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `slave` was just returned by the kernel as a new open descriptor that nothing
    // else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: `slave` is open (owned above); TIOCVHANGUP takes no argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCVHANGUP, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers an owned fd (a pty master) with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is a valid open descriptor that the `AsyncFd` now owns; it stays open
    // and `as_raw_fd` returns the same number until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

/// Makes each `(fd, target)` the child's fd `target` (close-on-exec cleared). Sources are first
/// duplicated above every target, so a source whose number is another pair's target is not
/// clobbered. The parent's fds live until `cmd` is dropped.
pub fn pass_fds(cmd: &mut Command, fds: Vec<(OwnedFd, RawFd)>) {
    use std::os::fd::AsRawFd;
    let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let floor = pairs.iter().map(|(_, t)| *t).max().unwrap_or(0) + 1;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2) and
    // dup2(2), which are async-signal-safe; `pairs` was allocated before the fork and is only
    // read. The sources stay open in the parent (owned by the captured `fds`) until the Command
    // is dropped after spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fds;
            let mut high = [0 as RawFd; 8];
            for (i, (src, _)) in pairs.iter().enumerate().take(high.len()) {
                let d = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor);
                if d < 0 {
                    return Err(io::Error::last_os_error());
                }
                high[i] = d;
            }
            for (i, (_, target)) in pairs.iter().enumerate().take(high.len()) {
                if libc::dup2(high[i], *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Bytes readable by a child through a path, without a file on any disk: a `memfd`
/// reached as `/proc/<shim pid>/fd/<n>` (opening that path gives a fresh open file
/// description at offset 0). The memory is released on drop.
#[derive(Debug)]
pub struct MemFile {
    fd: OwnedFd,
}

impl MemFile {
    /// A memory file holding `bytes`; `name` only shows in `/proc/*/fd` links.
    pub fn new(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<MemFile> {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let fd = memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).map_err(std::io::Error::from)?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, bytes)?;
        Ok(MemFile { fd: file.into() })
    }

    /// The path another process of the same user opens to read the bytes.
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }
}

/// Returns free heap pages to the kernel (`malloc_trim(0)`). glibc keeps freed memory in the
/// heap for reuse; after a burst of execs (each with its copy buffers) that is most of the
/// shim's anonymous memory. Cheap when little is free.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it takes no
    // pointers from us and is thread-safe in glibc (it locks every arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
