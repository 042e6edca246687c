//! The daemon: ttrpc server on the inherited listener, shut down on `Shutdown` (no container
//! left) or SIGTERM/SIGINT.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shim_events::publisher::{ForwardTimeouts, QueueLimits};
use shim_events::{Publisher, PublisherConfig};
use shim_runtime::container::Shared;
use shim_runtime::reaper::Reaper;
use shim_runtime::registry::Registry;
use shim_runtime::sys;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::Flags;
use crate::task::{TaskService, SERVICE_NAMES};
use crate::transport::ServiceFilter;

/// Longest the daemon stays after Shutdown (or SIGTERM) to deliver queued events. It leaves
/// earlier once the queue is empty, or once containerd is known gone (its socket refuses).
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the daemon waits, on SIGTERM or SIGINT, for Creates still in the runtime to end:
/// answered while ttrpc still waits for requests in flight, else rolled back (their requesters
/// are gone once the connections close).
const CREATE_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most threads of the blocking pool. Two: one slow unmount does not hold up a file log.
const BLOCKING_THREADS: usize = 2;
/// A blocking-pool thread exits after this long idle, so an idle shim has one thread.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Stack of a blocking-pool thread: they run a syscall or a short read/write, no deep calls.
const BLOCKING_STACK: usize = 256 << 10;

/// The environment variable that lowers (or raises) the event queue's ceiling in events (the
/// byte ceiling stays at its default): `SHIM_EVENT_QUEUE_MAX=<events>`.
const EVENT_QUEUE_MAX_ENV: &str = "SHIM_EVENT_QUEUE_MAX";

/// The event queue's ceiling: the default, or [`EVENT_QUEUE_MAX_ENV`] when set to a number > 0.
fn queue_limits() -> QueueLimits {
    let mut limits = QueueLimits::default();
    let max = shim_runtime::env::number::<std::num::NonZeroUsize>(EVENT_QUEUE_MAX_ENV, "a positive number of events");
    if let Some(n) = max {
        limits.max_events = n.get();
    }
    limits
}

fn take_listener(flags: &Flags) -> Result<StdUnixListener> {
    if !flags.socket.is_empty() {
        let path = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket);
        let _ = std::fs::remove_file(path);
        return StdUnixListener::bind(path).with_context(|| format!("listen on {path}"));
    }
    let fd = sys::adopt_inherited_fd(3).context("no listener on fd 3 (run through `start`)")?;
    // Inherited without close-on-exec (so `start` could pass it); marked by the caller's
    // `cloexec_inherited_fds`, so no runtime child keeps the shim's socket connectable.
    Ok(StdUnixListener::from(fd))
}

/// Accepts connections, refusing peers whose uid or gid differs from ours (SO_PEERCRED), as
/// the Go shim's `UnixSocketRequireSameUser` handshake does; each accepted connection goes
/// through [`ServiceFilter`] so unknown services answer `Unimplemented`.
fn same_user_listener(listener: UnixListener) -> ttrpc::asynchronous::transport::Listener {
    let (euid, egid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let stream = futures::stream::unfold(listener, move |listener| async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => match conn.peer_cred() {
                    Ok(cred) if cred.uid() == euid && cred.gid() == egid => {
                        return Some((Ok(ServiceFilter::new(conn, &SERVICE_NAMES)), listener));
                    }
                    Ok(cred) => {
                        tracing::warn!(uid = cred.uid(), gid = cred.gid(), "refused connection from another user")
                    }
                    Err(e) => tracing::warn!(error = %e, "refused connection without credentials"),
                },
                Err(e) => return Some((Err::<ServiceFilter<_>, _>(e), listener)),
            }
        }
    });
    ttrpc::asynchronous::transport::Listener::new(stream)
}

/// Runs the daemon until shutdown. Startup order: subreaper and logging (done by the caller) →
/// listener, inherited fds close-on-exec → runtime → reaper → publisher → server.
pub fn serve(flags: &Flags) -> Result<()> {
    let listener = take_listener(flags)?;
    sys::cloexec_inherited_fds(3).context("mark inherited fds close-on-exec")?;
    listener.set_nonblocking(true)?;
    let socket_path: Option<PathBuf> = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Into::into));
    if let Some(dir) = socket_path.as_deref().and_then(std::path::Path::parent) {
        shim_runtime::console::set_private_base(dir);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The blocking pool (rootfs mount/umount, file:// log writes, runtime log reads): at most
        // BLOCKING_THREADS, started on demand, gone after BLOCKING_KEEP_ALIVE idle.
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .thread_stack_size(BLOCKING_STACK)
        .thread_name("shim-blocking")
        .build()?;
    rt.block_on(async {
        let reaper = Reaper::new();
        let reap = tokio::spawn(reaper.run().context("install SIGCHLD handler")?);
        let (publisher, publisher_task) = Publisher::start(PublisherConfig {
            ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            namespace: flags.namespace.clone(),
            limits: queue_limits(),
            timeouts: ForwardTimeouts::default(),
        });
        let registry = Arc::new(Registry::default());
        let shared = Shared { reaper, publisher: publisher.clone(), registry: Arc::clone(&registry) };
        let shutdown = Arc::new(Notify::new());
        let service = TaskService::new(shared, flags.namespace.clone(), Arc::clone(&shutdown));
        let listener = UnixListener::from_std(listener)?;
        let mut server = ttrpc::asynchronous::Server::new()
            .add_listener(same_user_listener(listener))
            .register_service(service.services());
        server.start().await.context("start ttrpc server")?;
        tracing::info!(namespace = %flags.namespace, id = %flags.id, "shim serving");
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = shutdown.notified() => tracing::info!("shutdown requested"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        // No new connections (`start` must not join a shim that is leaving), and no more
        // requests on the open ones while events still go out. ttrpc's disconnect waits up to
        // 5 s per connection for its writer, so it runs beside the drain, not before it.
        if let Some(path) = &socket_path {
            let _ = std::fs::remove_file(path);
        }
        let disconnect = tokio::spawn(async move { server.disconnect().await });
        // A Create cut off here would leave a runtime container and a mounted rootfs that no
        // one knows of: let it end first (answered, or rolled back once its requester is gone).
        if tokio::time::timeout(CREATE_SETTLE_TIMEOUT, registry.creates_ended()).await.is_err() {
            tracing::warn!(timeout = ?CREATE_SETTLE_TIMEOUT, "exiting with a Create still in the runtime");
        }
        let report = publisher.drain(EXIT_FLUSH_TIMEOUT).await;
        if report.undelivered == 0 {
            tracing::info!(delivered = report.delivered, "every queued event delivered; exiting");
        } else {
            tracing::warn!(
                delivered = report.delivered,
                undelivered = report.undelivered,
                containerd_gone = report.containerd_gone,
                "exiting with undelivered events"
            );
        }
        disconnect.abort();
        reap.abort();
        publisher_task.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}
