//! OOM notifications for a container's cgroup.
//!
//! cgroup v1: an eventfd registered for `memory.oom_control` through `cgroup.event_control`;
//! the kernel signals it when the cgroup hits its limit and the OOM killer runs. The container's
//! actor owns the watch: it waits on it in its loop, and before it releases the init's exit it
//! polls it once more, so a TaskOOM caused by the kill is published before that TaskExit
//! (containerd 2.3 semantics, SPEC §3.3 item 7).
//!
//! Not yet: cgroup v2 (`memory.events` with inotify); on a pure v2 host no OOM events are
//! published.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

use crate::cgroups::OomControlFiles;
use crate::sys;

/// A registered OOM notification.
#[derive(Debug)]
pub struct OomWatch {
    efd: AsyncFd<OwnedFd>,
    control: OomControlFiles,
    _oom_control: File,
}

fn read_counter(fd: &OwnedFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let n = nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from)?;
    if n != 8 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short eventfd read"));
    }
    Ok(u64::from_ne_bytes(buf))
}

impl OomWatch {
    /// Registers for OOM notifications of a v1 memory cgroup.
    pub fn v1(files: &OomControlFiles) -> io::Result<OomWatch> {
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        let oom_control = File::open(&files.oom_control)?;
        let line = format!("{} {}", efd.as_fd().as_raw_fd(), oom_control.as_raw_fd());
        std::fs::write(&files.event_control, line)?;
        let efd = sys::async_fd(OwnedFd::from(efd))?;
        Ok(OomWatch { efd, control: files.clone(), _oom_control: oom_control })
    }

    /// Waits until the kernel signals; returns the number of OOM events since the last read.
    /// The cgroup's removal also signals: then the result is 0 and the watch should be dropped.
    pub async fn wait(&self) -> io::Result<u64> {
        loop {
            let mut guard = self.efd.readable().await?;
            match guard.try_io(|fd| read_counter(fd.get_ref())) {
                Ok(Ok(n)) => return Ok(if self.control.oom_control.exists() { n } else { 0 }),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// OOM events signalled and not yet read, without waiting.
    pub fn poll_now(&self) -> u64 {
        match read_counter(self.efd.get_ref()) {
            Ok(n) if self.control.oom_control.exists() => n,
            _ => 0,
        }
    }

    /// Whether the cgroup still exists.
    pub fn alive(&self) -> bool {
        self.control.oom_control.exists()
    }
}
