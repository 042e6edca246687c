//! `containerd-shim-runc-v2`: a Rust drop-in for containerd's Go runc shim.
//!
//! Startup order (fixed): parse flags → set child subreaper (every action, as the Go shim
//! does) → `-v`/`-info`/`start`/`delete` short paths (`delete` first marks inherited fds
//! close-on-exec) → for the daemon: point stderr at the bundle's `log` fifo, install logging,
//! take the listener and mark every other inherited fd close-on-exec, build the
//! single-threaded tokio runtime, start the reaper (SIGCHLD) before anything is spawned, then
//! the publisher and the ttrpc server ([`server::serve`]).

mod bootproto;
mod bootstrap;
mod cli;
mod info;
mod server;
mod status;
mod task;
mod transport;

use std::process::ExitCode;

use cli::Action;

fn init_logging(debug: bool) {
    // The Go shim dup2s the bundle's `log` fifo onto stderr, so panics land in containerd's log.
    if let Ok(log) = std::fs::OpenOptions::new().write(true).custom_flags(libc_nonblock()).open("log") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 2);
    }
    let level = if debug { tracing::Level::DEBUG } else { tracing::Level::INFO };
    // stderr is containerd's `log` fifo: while containerd is down (or slow) a write fails with
    // EPIPE (or EAGAIN). Such a log line is dropped. tracing-subscriber would otherwise report the
    // failure with `eprintln!`, which panics on the same broken stderr and kills the task that
    // logged (a container's actor: every later RPC on it answered "being deleted").
    // Under `-debug` each RPC and each OCI call is a span whose close is logged with the
    // container, exec and pid and its duration, so containerd's debug log reads as a story; at
    // the default level the spans are disabled and cost a level check.
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
}

use std::os::unix::fs::OpenOptionsExt;

fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

fn main() -> ExitCode {
    // runc must not see systemd's NOTIFY_SOCKET (containerd under Type=notify passes it on):
    // dropped here, while the process has one thread, rather than per runc call (see
    // `oci::OciRuntime::command`: removing it from every Command copies the whole environment).
    std::env::remove_var("NOTIFY_SOCKET");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flags, action) = match cli::parse(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Set for every action, as the Go shim does, so runtime helpers reparent to us.
    if let Err(e) = shim_runtime::sys::set_child_subreaper() {
        eprintln!("set child subreaper: {e}");
    }
    let result = match action {
        Action::Version => {
            info::print_version();
            Ok(())
        }
        Action::Info => info::print_info(),
        Action::Start => bootstrap::start(&flags),
        Action::Delete => {
            // `delete` runs runc too: nothing containerd left open may reach it.
            if let Err(e) = shim_runtime::sys::cloexec_inherited_fds(3) {
                eprintln!("mark inherited fds close-on-exec: {e}");
            }
            bootstrap::delete(&flags)
        }
        Action::Serve => {
            init_logging(flags.debug);
            server::serve(&flags)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "shim failed");
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
