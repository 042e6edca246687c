//! OOM notifications for a container's cgroup.
//!
//! cgroup v1: an eventfd registered for `memory.oom_control` through `cgroup.event_control`;
//! the kernel signals it when the cgroup hits its limit and the OOM killer runs. The container's
//! actor owns the watch: it waits on it in its loop, and before it releases the init's exit it
//! polls it once more, so a TaskOOM caused by the kill is published before that TaskExit
//! (containerd 2.3 semantics, SPEC §3.3 item 7).
//!
//! cgroup v2: an inotify watch (`IN_MODIFY`) on the cgroup's `memory.events`; each
//! notification re-reads the file and counts an event when `oom_kill` went up since the last
//! read (as containerd's cgroups v2 event loop; `oom` is not used because it is also charged to
//! ancestors, containerd#6323).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::cgroups::{read_memory_events, OomControlFiles};
use crate::sys;

/// A registered OOM notification.
#[derive(Debug)]
pub struct OomWatch {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    V1 { efd: AsyncFd<OwnedFd>, control: OomControlFiles, _oom_control: File },
    V2(V2Watch),
}

/// The v2 watch: the inotify instance, a duplicate of its fd registered with the reactor (same
/// open file, so readiness and reads are shared), and the last `oom_kill` seen.
#[derive(Debug)]
struct V2Watch {
    inotify: Inotify,
    ready: AsyncFd<OwnedFd>,
    events: PathBuf,
    last_oom_kill: AtomicU64,
}

impl V2Watch {
    /// OOM kills since the last call (0 also when the file is gone or unreadable).
    fn new_kills(&self) -> u64 {
        let dir = self.events.parent().unwrap_or(Path::new("/"));
        let Ok(Some(ev)) = read_memory_events(dir) else { return 0 };
        let before = self.last_oom_kill.fetch_max(ev.oom_kill, Ordering::AcqRel);
        ev.oom_kill.saturating_sub(before)
    }

    /// Consumes the queued inotify events; whether the watch was removed (cgroup deleted).
    fn drain(&self) -> io::Result<bool> {
        let mut removed = false;
        loop {
            match self.inotify.read_events() {
                Ok(evs) if evs.is_empty() => return Ok(removed),
                Ok(evs) => removed |= evs.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)),
                Err(nix::errno::Errno::EAGAIN) => return Ok(removed),
                Err(e) => return Err(e.into()),
            }
        }
    }
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
        Ok(OomWatch { kind: Kind::V1 { efd, control: files.clone(), _oom_control: oom_control } })
    }

    /// Watches `<dir>/memory.events` of a v2 cgroup. OOM kills before this call are not counted.
    pub fn v2(dir: &Path) -> io::Result<OomWatch> {
        let events = dir.join("memory.events");
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        inotify.add_watch(&events, AddWatchFlags::IN_MODIFY)?;
        let ready = sys::async_fd(inotify.as_fd().try_clone_to_owned()?)?;
        let watch = V2Watch { inotify, ready, events, last_oom_kill: AtomicU64::new(0) };
        // The baseline: read after the watch exists, so no kill falls between the two.
        let _ = watch.new_kills();
        Ok(OomWatch { kind: Kind::V2(watch) })
    }

    /// Waits until the kernel signals; returns the number of OOM events since the last read.
    /// The cgroup's removal also signals: then the result is 0 and the watch should be dropped.
    pub async fn wait(&self) -> io::Result<u64> {
        match &self.kind {
            Kind::V1 { efd, control, .. } => loop {
                let mut guard = efd.readable().await?;
                match guard.try_io(|fd| read_counter(fd.get_ref())) {
                    Ok(Ok(n)) => return Ok(if control.oom_control.exists() { n } else { 0 }),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
            Kind::V2(w) => loop {
                let mut guard = w.ready.readable().await?;
                let removed = match guard.try_io(|_| w.drain()) {
                    Ok(r) => r?,
                    Err(_would_block) => continue,
                };
                // Readiness is edge-based in tokio: clear it, the drain emptied the queue.
                guard.clear_ready();
                let n = w.new_kills();
                if n > 0 || removed || !w.events.exists() {
                    return Ok(n);
                }
            },
        }
    }

    /// OOM events signalled and not yet read, without waiting.
    pub fn poll_now(&self) -> u64 {
        match &self.kind {
            Kind::V1 { efd, control, .. } => match read_counter(efd.get_ref()) {
                Ok(n) if control.oom_control.exists() => n,
                _ => 0,
            },
            // The file is the truth; the inotify queue may lag behind it.
            Kind::V2(w) => w.new_kills(),
        }
    }

    /// Whether the cgroup still exists.
    pub fn alive(&self) -> bool {
        match &self.kind {
            Kind::V1 { control, .. } => control.oom_control.exists(),
            Kind::V2(w) => w.events.exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    fn events(oom_kill: u64) -> String {
        format!("low 0\nhigh 0\nmax 3\noom 2\noom_kill {oom_kill}\noom_group_kill 0\n")
    }

    fn fake_cgroup(name: &str, oom_kill: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oom-v2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.events"), events(oom_kill)).unwrap();
        dir
    }

    async fn wait(w: &OomWatch) -> u64 {
        tokio::time::timeout(Duration::from_secs(10), w.wait()).await.expect("oom watch signalled").unwrap()
    }

    #[tokio::test]
    async fn v2_counts_oom_kill_increases_only() {
        let dir = fake_cgroup("count", 5);
        let w = OomWatch::v2(&dir).unwrap();
        // Kills before the watch are the baseline; nothing is pending.
        assert_eq!(w.poll_now(), 0);
        assert!(w.alive());
        // A modification that does not raise oom_kill (e.g. `max` going up) is not an event:
        // wait keeps waiting, then returns the 2 kills of the next change.
        std::fs::write(dir.join("memory.events"), events(5).replace("max 3", "max 9")).unwrap();
        let writer = {
            let dir = dir.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(dir.join("memory.events"), events(7)).unwrap();
            })
        };
        assert_eq!(wait(&w).await, 2);
        writer.await.unwrap();
        // poll_now reads the file even before inotify is drained: TaskOOM before TaskExit.
        std::fs::write(dir.join("memory.events"), events(8)).unwrap();
        assert_eq!(w.poll_now(), 1);
        // That kill was counted once: the queued notification now finds nothing new.
        std::fs::write(dir.join("memory.events"), events(9)).unwrap();
        assert_eq!(wait(&w).await, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn v2_removal_ends_the_watch() {
        let dir = fake_cgroup("gone", 0);
        let w = OomWatch::v2(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(wait(&w).await, 0);
        assert!(!w.alive());
        assert_eq!(w.poll_now(), 0);
    }

    #[test]
    fn v2_needs_the_file() {
        let dir = std::env::temp_dir().join(format!("oom-v2-none-{}", std::process::id()));
        assert!(OomWatch::v2(&dir).is_err());
    }
}
