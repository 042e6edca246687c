//! Process stdio: pipes given to the container, copied to and from containerd's fifos.
//!
//! Non-terminal mode (SPEC §5.1): for each requested stream the shim makes a pipe; the
//! container-side end becomes the runtime's (and so the process's) stdio and the shim copies
//! between its end and the fifo, one task per stream.
//! - stdout/stderr fifos are opened write-only, non-blocking, retried until the client's reader
//!   is there (bounded by [`FIFO_OPEN_TIMEOUT`]): data written before the client opened its end
//!   would be discarded by the kernel when the last fd closes. Then the shim also holds a read
//!   handle, so writes never fail with EPIPE while containerd restarts (as the Go shim does).
//! - the stdin fifo is opened for reading, plus a keep-alive write handle so the reader sees EOF
//!   only after `CloseIO` *and* the client closing its writer (SPEC §5.1). At EOF the pipe to the
//!   process is closed and the process sees EOF.
//!
//! Terminal mode (SPEC §5.2) goes through [`crate::console`]: a console socket for the runtime,
//! then copies between the pty master and the fifos.
//!
//! A `file://` or `binary://` stdout goes to [`crate::logger`] instead (stdout and stderr both,
//! in either mode; with a terminal, the master's output is copied into the logger's stdout
//! pipe, as the Go shim's `copyConsole`); stdin stays a fifo. Any other scheme, or a scheme on
//! stdin or stderr of a fifo stdout, is an error ([`IoError::Unsupported`]), not a silent
//! fallback.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::console::{self, ConsoleSocket, Pty};
use crate::logger::{self, BinaryLogger, Target};
use crate::oci::RuntimeStdio;
use crate::reaper::Reaper;

/// Who the stdio belongs to (for logging binaries' environment) and the reaper to spawn them.
#[derive(Debug, Clone, Copy)]
pub struct IoContext<'a> {
    /// The reaper.
    pub reaper: &'a Reaper,
    /// Container id.
    pub container_id: &'a str,
    /// containerd namespace.
    pub namespace: &'a str,
}

/// Copy buffer size, one per stream.
const COPY_BUFFER: usize = 32 * 1024;
/// How long Create/Exec wait for the client to open its end of an output fifo (Go: 30 s); past
/// it the request fails instead of hanging.
pub const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors setting up stdio.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A stdio URI the shim does not handle (a scheme other than `file://` or `binary://` on
    /// stdout, any scheme on stdin or stderr beside a fifo stdout, an output path that is not a
    /// fifo).
    #[error("unsupported stdio {stream} {uri:?}: stdout takes a fifo, file:// or binary://, stdin and stderr a fifo")]
    Unsupported {
        /// Which stream.
        stream: &'static str,
        /// The URI as given.
        uri: String,
    },
    /// The console socket could not be made, or the runtime sent no pty master.
    #[error("console: {0}")]
    Console(#[source] io::Error),
    /// Opening a fifo or making a pipe failed.
    #[error("{what} {path}: {source}")]
    Open {
        /// What was being opened.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The stdio a process was asked to have, as containerd passed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioConfig {
    /// stdin fifo path, or empty.
    pub stdin: String,
    /// stdout fifo path, or empty.
    pub stdout: String,
    /// stderr fifo path, or empty.
    pub stderr: String,
    /// Whether a terminal was requested.
    pub terminal: bool,
}

/// The shim's side of one process's stdio: the copy tasks and the stdin keep-alive.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdin_keepalive: Option<std::fs::File>,
    input: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    console: Option<Pty>,
    exited: Option<watch::Sender<bool>>,
    logger: Option<BinaryLogger>,
}

/// Stdio set up before the runtime runs; [`Prepared::finish`] completes it afterwards.
#[derive(Debug)]
pub enum Prepared {
    /// Pipes and copies are ready.
    Pipes(ProcessIo),
    /// A console socket the runtime will send the pty master to; with a `file://` or
    /// `binary://` stdout, the logger is already running and reads the write end kept here.
    Console(ConsoleSocket, Option<(ProcessIo, OwnedFd)>),
}

impl Prepared {
    /// The console socket path for the runtime, in terminal mode.
    pub fn console_socket(&self) -> Option<&Path> {
        match self {
            Prepared::Pipes(_) => None,
            Prepared::Console(c, _) => Some(c.path()),
        }
    }

    /// After the runtime returned: in terminal mode, receive the master and start the copies.
    pub async fn finish(self, cfg: &StdioConfig) -> Result<ProcessIo, IoError> {
        match self {
            Prepared::Pipes(io) => Ok(io),
            Prepared::Console(socket, logged) => {
                let pty = socket.receive().await.map_err(IoError::Console)?;
                ProcessIo::terminal(cfg, pty, logged).await
            }
        }
    }
}

fn fifo_path(stream: &'static str, uri: &str) -> Result<Option<String>, IoError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    if path.contains("://") {
        return Err(IoError::Unsupported { stream, uri: uri.to_owned() });
    }
    Ok(Some(path.to_owned()))
}

fn make_pipe(path: &str) -> Result<(OwnedFd, OwnedFd), IoError> {
    crate::sys::pipe_cloexec().map_err(|source| IoError::Open { what: "pipe for", path: path.to_owned(), source })
}

fn chown_fd(fd: &OwnedFd, uid: u32, gid: u32, path: &str) -> Result<(), IoError> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    nix::unistd::fchown(fd.as_raw_fd(), Some(uid.into()), Some(gid.into())).map_err(|e| IoError::Open {
        what: "chown pipe for",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Makes the stdout and stderr pipes of a logged process: the write ends (owned by `uid`/`gid`)
/// go into `rt` for the runtime, the read ends are returned for the logger.
fn output_pipes(rt: &mut RuntimeStdio, what: &str, uid: u32, gid: u32) -> Result<(OwnedFd, OwnedFd), IoError> {
    let (out_r, out_w) = make_pipe(what)?;
    let (err_r, err_w) = make_pipe(what)?;
    chown_fd(&out_w, uid, gid, what)?;
    chown_fd(&err_w, uid, gid, what)?;
    rt.stdout = Some(out_w);
    rt.stderr = Some(err_w);
    Ok((out_r, err_r))
}

async fn copy<R, W>(mut from: R, mut to: W, stream: &'static str)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = tokio::io::BufReader::with_capacity(COPY_BUFFER, &mut from);
    if let Err(e) = tokio::io::copy_buf(&mut reader, &mut to).await {
        tracing::debug!(stream, error = %e, "stdio copy ended");
    }
}

impl ProcessIo {
    /// Before the runtime runs: in pipe mode, open the fifos, make the pipes and start the
    /// copies; in terminal mode, make the console socket. Returns the container side of the
    /// stdio for the runtime. `uid`/`gid` own the container-side pipe ends.
    pub async fn prepare(
        cfg: &StdioConfig,
        uid: u32,
        gid: u32,
        ctx: IoContext<'_>,
    ) -> Result<(Prepared, RuntimeStdio), IoError> {
        let target = logger::parse(&cfg.stdout).map_err(|uri| IoError::Unsupported { stream: "stdout", uri })?;
        if cfg.terminal {
            // A logger with a terminal (as the Go shim's copyConsole): the logger gets its
            // pipes now; the terminal's output is copied into the stdout pipe once the master
            // arrives, and stderr (merged into the terminal) is closed at once.
            let logged = match target {
                Target::Fifo(_) => None,
                Target::File(path) => Some(Self::to_file(&path, uid, gid).await?),
                Target::Binary(program, args) => Some(Self::to_binary(&program, &args, uid, gid, ctx).await?),
            };
            let logged = match logged {
                Some((io, RuntimeStdio { stdout: Some(out_w), .. })) => Some((io, out_w)),
                Some(_) => return Err(IoError::Unsupported { stream: "stdout", uri: cfg.stdout.clone() }),
                None => None,
            };
            let socket = ConsoleSocket::new().map_err(IoError::Console)?;
            return Ok((Prepared::Console(socket, logged), RuntimeStdio::default()));
        }
        let (io, rt) = match target {
            Target::Fifo(_) => Self::pipes(cfg, uid, gid).await?,
            Target::File(path) => {
                let (mut io, mut rt) = Self::to_file(&path, uid, gid).await?;
                Self::stdin_pipe(&mut io, &mut rt, cfg, uid, gid)?;
                (io, rt)
            }
            Target::Binary(program, args) => {
                let (mut io, mut rt) = Self::to_binary(&program, &args, uid, gid, ctx).await?;
                Self::stdin_pipe(&mut io, &mut rt, cfg, uid, gid)?;
                (io, rt)
            }
        };
        Ok((Prepared::Pipes(io), rt))
    }

    /// `file://`: both streams appended to one file (stdout and stderr only; stdin is the
    /// caller's, which differs between pipe and terminal mode).
    /// The file is opened on the blocking pool (a slow or remote filesystem).
    async fn to_file(path: &Path, uid: u32, gid: u32) -> Result<(ProcessIo, RuntimeStdio), IoError> {
        let shown = path.display().to_string();
        let owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || logger::open_file(&owned))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        let file = opened.map_err(|e| IoError::Open { what: "open log file", path: shown.clone(), source: e })?;
        let file = Arc::new(file);
        let mut io = ProcessIo::default();
        let mut rt = RuntimeStdio::default();
        let (out_r, err_r) = output_pipes(&mut rt, &shown, uid, gid)?;
        io.outputs.push(tokio::spawn(logger::copy_to_file(out_r, Arc::clone(&file))));
        io.outputs.push(tokio::spawn(logger::copy_to_file(err_r, file)));
        Ok((io, rt))
    }

    /// `binary://`: a logging process reads both streams (stdin is the caller's, as for
    /// `file://`).
    async fn to_binary(
        program: &Path,
        args: &[String],
        uid: u32,
        gid: u32,
        ctx: IoContext<'_>,
    ) -> Result<(ProcessIo, RuntimeStdio), IoError> {
        let shown = program.display().to_string();
        let mut io = ProcessIo::default();
        let mut rt = RuntimeStdio::default();
        let (out_r, err_r) = output_pipes(&mut rt, &shown, uid, gid)?;
        let logger = BinaryLogger::start(ctx.reaper, program, args, ctx.container_id, ctx.namespace, out_r, err_r)
            .await
            .map_err(|e| IoError::Open { what: "start logging binary", path: shown, source: e })?;
        io.logger = Some(logger);
        Ok((io, rt))
    }

    fn stdin_pipe(
        io: &mut ProcessIo,
        rt: &mut RuntimeStdio,
        cfg: &StdioConfig,
        uid: u32,
        gid: u32,
    ) -> Result<(), IoError> {
        let Some(path) = fifo_path("stdin", &cfg.stdin)? else { return Ok(()) };
        let open = |e: io::Error| IoError::Open { what: "open stdin fifo", path: path.clone(), source: e };
        let (fifo, keepalive) = open_input(&path)?;
        let (r, w) = make_pipe(&path)?;
        chown_fd(&r, uid, gid, &path)?;
        let tx = pipe::Sender::from_owned_fd(w).map_err(open)?;
        io.input = Some(tokio::spawn(copy(fifo, tx, "stdin")));
        io.stdin_keepalive = Some(keepalive);
        rt.stdin = Some(r);
        Ok(())
    }

    async fn terminal(cfg: &StdioConfig, pty: Pty, logged: Option<(ProcessIo, OwnedFd)>) -> Result<ProcessIo, IoError> {
        let (exited_tx, exited_rx) = watch::channel(false);
        let mut io = ProcessIo::default();
        if let Some((logger_io, out_w)) = logged {
            io = logger_io;
            let to_logger = pipe::Sender::from_owned_fd(out_w).map_err(|e| IoError::Open {
                what: "terminal output to",
                path: cfg.stdout.clone(),
                source: e,
            })?;
            let pty = Arc::clone(&pty);
            io.outputs.push(tokio::spawn(async move {
                let mut to_logger = to_logger;
                console::output(pty, &mut to_logger, exited_rx).await;
            }));
        } else if let Some(path) = fifo_path("stdout", &cfg.stdout)? {
            let (mut fifo, keep_reader) = open_output(&path).await?;
            let pty = Arc::clone(&pty);
            io.outputs.push(tokio::spawn(async move {
                console::output(pty, &mut fifo, exited_rx).await;
                drop(keep_reader);
                read_by_client(&fifo).await;
            }));
        }
        if let Some(path) = fifo_path("stdin", &cfg.stdin)? {
            let (fifo, keepalive) = open_input(&path)?;
            io.input = Some(tokio::spawn(console::input(fifo, Arc::clone(&pty))));
            io.stdin_keepalive = Some(keepalive);
        }
        io.console = Some(pty);
        io.exited = Some(exited_tx);
        Ok(io)
    }

    /// Sets the terminal's window size; a no-op without a terminal (as in the Go shim).
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        match &self.console {
            Some(pty) => console::resize(pty, width, height),
            None => Ok(()),
        }
    }

    /// The process exited: a terminal's output is drained of what is buffered and then ends.
    pub fn process_exited(&self) {
        if let Some(tx) = &self.exited {
            tx.send_replace(true);
        }
    }

    async fn pipes(cfg: &StdioConfig, uid: u32, gid: u32) -> Result<(ProcessIo, RuntimeStdio), IoError> {
        let stdout = fifo_path("stdout", &cfg.stdout)?;
        let stderr = fifo_path("stderr", &cfg.stderr)?;
        let mut io = ProcessIo::default();
        let mut rt = RuntimeStdio::default();

        for (stream, path) in [("stdout", stdout), ("stderr", stderr)] {
            let Some(path) = path else { continue };
            let (mut fifo, keep_reader) = open_output(&path).await?;
            let (r, w) = make_pipe(&path)?;
            chown_fd(&w, uid, gid, &path)?;
            let rx = pipe::Receiver::from_owned_fd(r).map_err(|e| IoError::Open {
                what: "pipe for",
                path: path.clone(),
                source: e,
            })?;
            io.outputs.push(tokio::spawn(async move {
                copy(rx, &mut fifo, stream).await;
                drop(keep_reader);
                read_by_client(&fifo).await;
            }));
            if stream == "stdout" {
                rt.stdout = Some(w);
            } else {
                rt.stderr = Some(w);
            }
        }
        Self::stdin_pipe(&mut io, &mut rt, cfg, uid, gid)?;
        Ok((io, rt))
    }

    /// Closes the shim's own write handle on the stdin fifo (`CloseIO`).
    pub fn close_stdin(&mut self) {
        self.stdin_keepalive = None;
    }

    /// Waits up to `limit` for the output copies to reach EOF, then stops every copy.
    /// Returns whether the output was fully drained.
    pub async fn drain(&mut self, limit: Duration) -> bool {
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
        let drained = tokio::time::timeout(limit, async {
            for h in outputs {
                let _ = h.await;
            }
        })
        .await
        .is_ok();
        for a in aborts {
            a.abort();
        }
        if let Some(mut logger) = self.logger.take() {
            logger.stop(limit).await;
        }
        self.shutdown();
        drained
    }

    fn shutdown(&mut self) {
        self.stdin_keepalive = None;
        self.console = None;
        self.exited = None;
        if let Some(h) = self.input.take() {
            h.abort();
        }
        for h in self.outputs.drain(..) {
            h.abort();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

/// The shim's own extra handle on a fifo (`write`: the write end, else the read end):
/// non-blocking, so the open returns at once, and close-on-exec, so no child inherits it.
fn open_extra_end(path: &str, write: bool) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(!write).write(write).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

/// Opens a stdin fifo for reading, plus the shim's keep-alive write handle (closed by CloseIO).
fn open_input(path: &str) -> Result<(pipe::Receiver, std::fs::File), IoError> {
    let open = |e: io::Error| IoError::Open { what: "open stdin fifo", path: path.to_owned(), source: e };
    let fifo = pipe::OpenOptions::new().open_receiver(path).map_err(open)?;
    let keepalive = open_extra_end(path, true).map_err(open)?;
    Ok((fifo, keepalive))
}

/// After the last write into an output fifo: waits until the client has read it all (the fifo
/// is empty) or no reader is left. The copy counts as drained only then, so Delete does not
/// answer while output sits unread: ctr 1.7 and 2.x close their fifo readers as soon as
/// DeleteProcess returns (containerd 82ec62b86, `cio.Cancel` closes the pipes), and what they
/// had not read yet would be lost. Bounded by the drain limit of Delete, which aborts the copy.
async fn read_by_client(fifo: &pipe::Sender) {
    use std::os::fd::AsFd;
    let mut backoff = Duration::from_micros(200);
    while crate::sys::pipe_unread(fifo.as_fd()).is_ok_and(|n| n > 0) && crate::sys::pipe_has_reader(fifo.as_fd()) {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

async fn open_output(path: &str) -> Result<(pipe::Sender, std::fs::File), IoError> {
    let open = |e: io::Error| IoError::Open { what: "open output fifo", path: path.to_owned(), source: e };
    let meta = std::fs::metadata(Path::new(path)).map_err(open)?;
    if !meta.file_type().is_fifo() {
        return Err(IoError::Unsupported { stream: "output", uri: path.to_owned() });
    }
    let deadline = tokio::time::Instant::now() + FIFO_OPEN_TIMEOUT;
    let mut backoff = Duration::from_millis(1);
    let sender = loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Ok(s) => break s,
            // ENXIO: no reader yet. Wait for the client rather than write into a fifo nobody
            // holds open.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(open(e)),
        }
    };
    let reader = open_extra_end(path, false).map_err(open)?;
    Ok((sender, reader))
}
