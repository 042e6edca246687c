//! `fake-containerd`: stands in for the containerd binary that runs `shim start`, so tests can
//! check how the shim tells containerd versions apart. `fake-containerd --version` prints
//! containerd's version line with `$FAKE_CONTAINERD_VERSION` and appends a line to
//! `$FAKE_CONTAINERD_PROBES` (so tests count the probes); `fake-containerd CMD ARGS...` runs CMD
//! as its child with the same stdio and exits with its status.

use std::io::Write;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        if let Some(path) = std::env::var_os("FAKE_CONTAINERD_PROBES") {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "probe");
            }
        }
        let v = std::env::var("FAKE_CONTAINERD_VERSION").unwrap_or_else(|_| "1.6.20".into());
        println!("containerd github.com/containerd/containerd {v} 0123456789abcdef");
        return ExitCode::SUCCESS;
    }
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: fake-containerd --version | fake-containerd CMD ARGS...");
        return ExitCode::from(2);
    };
    match Command::new(cmd).args(rest).status() {
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("fake-containerd: {cmd}: {e}");
            ExitCode::from(1)
        }
    }
}
