//! Terminal mode: the console socket runc sends the pty master to, and the copies between the
//! master and containerd's fifos (SPEC §5.2).
//!
//! - [`ConsoleSocket`] is a listening unix socket in a private temp dir, passed to runc as
//!   `--console-socket`; runc connects and sends the master with `SCM_RIGHTS`. The dir is removed
//!   when the socket is dropped.
//! - The master is shared (`Arc<AsyncFd>`) by the output copy, the input copy and ResizePty; the
//!   fd closes when the last of them is gone, so Delete leaves no pty fd behind.
//! - Output: master → stdout fifo until EIO (every slave closed). When the process exits, what
//!   the pty still buffers is drained without waiting, then the copy ends, so a background child
//!   that keeps the slave open cannot hold the output open (as the Go shim's console shutdown).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::sys;

/// How long to wait for runc to send the pty master after it returned.
pub const CONSOLE_RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer size.
const BUFFER: usize = 32 * 1024;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The pty master, shared by the copies and ResizePty.
pub type Pty = Arc<AsyncFd<OwnedFd>>;

/// A listening console socket in its own temp dir.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Option<StdUnixListener>,
}

impl ConsoleSocket {
    /// Binds a new socket under `$XDG_RUNTIME_DIR` (or `/tmp`), in a mode-0700 dir.
    pub fn new() -> io::Result<ConsoleSocket> {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("pty{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let mut sock = ConsoleSocket { path: dir.join("pty.sock"), dir, listener: None };
        std::fs::set_permissions(&sock.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        sock.listener = Some(StdUnixListener::bind(&sock.path)?);
        Ok(sock)
    }

    /// The socket path to give runc.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and receives the pty master (after runc returned).
    pub async fn receive(mut self) -> io::Result<Pty> {
        let listener = self.listener.take().ok_or_else(|| io::Error::other("console socket already used"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let fd = tokio::time::timeout(CONSOLE_RECEIVE_TIMEOUT, async {
            let (stream, _) = listener.accept().await?;
            stream.readable().await?;
            let std_stream = stream.into_std()?;
            sys::recv_fd(&std_stream)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "runtime sent no console"))??;
        pty(fd)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.listener = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wraps a pty master for async IO.
pub fn pty(master: OwnedFd) -> io::Result<Pty> {
    let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(Arc::new(sys::async_fd(master)?))
}

/// Sets the window size.
pub fn resize(pty: &Pty, width: u32, height: u32) -> io::Result<()> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    sys::set_winsize(std::os::fd::AsFd::as_fd(pty.get_ref()), clamp(height), clamp(width))
}

fn read_now(pty: &Pty, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(pty.as_raw_fd(), buf).map_err(io::Error::from)
}

async fn read(pty: &Pty, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = pty.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(pty: &Pty, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = pty.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

fn is_eof(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

/// Copies the master to `out` until every slave is closed, or until the process exited and the
/// pty has nothing more buffered.
pub async fn output(pty: Pty, out: &mut pipe::Sender, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; BUFFER];
    let mut done = *exited.borrow();
    loop {
        if done {
            // Drain what is buffered now, without waiting for more.
            loop {
                match read_now(&pty, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        tokio::select! {
            r = read(&pty, &mut buf) => match r {
                Ok(0) => return,
                Ok(n) => {
                    if out.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !is_eof(&e) {
                        tracing::debug!(error = %e, "console read ended");
                    }
                    return;
                }
            },
            changed = exited.changed() => {
                done = changed.is_err() || *exited.borrow();
            }
        }
    }
}

/// Copies the stdin fifo to the master until the fifo reaches EOF, then hangs the terminal up.
pub async fn input(mut stdin: pipe::Receiver, pty: Pty) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if write_all(&pty, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    // stdin ended: the shim's keep-alive writer is gone (CloseIO) and so is the client's. The Go
    // shim then closes the console, which hangs the terminal up; do the same, so an interactive
    // session (`kubectl exec -it`, `ctr run -t`) whose client went away does not live on.
    if let Err(e) = sys::hangup_pty(std::os::fd::AsFd::as_fd(pty.get_ref())) {
        tracing::debug!(error = %e, "terminal hangup after stdin EOF");
    }
}
