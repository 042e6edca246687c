//! Checkpoint of a container's init with `runc checkpoint` (CRIU), as the Go shim does it
//! (SPEC §2.1): the default work dir is `<bundle>/work/criu-work` and is removed afterwards;
//! on failure CRIU's `dump.log` is copied to `<bundle>/criu-dump.log` and its error lines are
//! put into the returned error, so a kernel or CRIU problem reads as such.

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};
use crate::io::{IoContext, ProcessIo, StdioConfig};
use crate::oci::{read_pid_file, CheckpointOpts, OciError, OciRuntime, RestoreOpts, RuntimeStdio};
use crate::reaper::Subscription;

/// What a Create from a checkpoint leaves for Start: as in the Go shim, `runc restore` runs at
/// Start (the init has no pid before).
#[derive(Debug, Clone)]
pub struct PendingRestore {
    /// `--image-path`: the checkpoint images.
    pub image_path: PathBuf,
    /// `--no-pivot`
    pub no_pivot: bool,
    /// The runc option CriuWorkPath (empty: `<bundle>/work`).
    pub criu_work_path: String,
}

/// Start of an init created from a checkpoint: sets up its stdio, subscribes, restores, and
/// returns the restored init's pid, its IO copies and the subscription to claim it with. A
/// failure leaves no runtime state behind (the container stays created, as in the Go shim).
pub async fn restore_init(
    runtime: &OciRuntime,
    bundle: &Path,
    stdio: &StdioConfig,
    (uid, gid): (u32, u32),
    ctx: IoContext<'_>,
    plan: &PendingRestore,
) -> Result<(u32, ProcessIo, Subscription)> {
    let id = ctx.container_id;
    let pid_file = bundle.join("init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let (prepared, rt_stdio) = ProcessIo::prepare(stdio, uid, gid, ctx).await?;
    let opts = RestoreOpts {
        image_path: plan.image_path.clone(),
        no_pivot: plan.no_pivot,
        console_socket: prepared.console_socket().map(Path::to_path_buf),
        ..RestoreOpts::default()
    };
    // Subscribe before the runtime can start the init (SPEC §4.7 no. 3).
    let subscription = ctx.reaper.subscribe();
    let result = async {
        restore(runtime, id, bundle, &pid_file, opts, rt_stdio, &plan.criu_work_path).await?;
        let io = prepared.finish(stdio).await?;
        Ok::<_, RuntimeError>((read_pid_file(&pid_file)?, io))
    }
    .await;
    match result {
        Ok((pid, io)) => Ok((pid, io, subscription)),
        Err(e) => {
            if let Err(d) = runtime.delete(id, Some(&bundle.join("log.json")), true).await {
                tracing::debug!(container_id = id, error = %d, "after a failed restore: runtime delete");
            }
            Err(e)
        }
    }
}

/// Where the Go shim copies CRIU's dump log on failure.
pub const DUMP_LOG: &str = "criu-dump.log";
/// Most CRIU error lines quoted in an error.
const MAX_CRIU_LINES: usize = 3;

/// Checkpoints `id`. `opts.work_path` empty means the default (temporary) work dir.
pub async fn checkpoint(runtime: &OciRuntime, id: &str, bundle: &Path, mut opts: CheckpointOpts) -> Result<()> {
    let temporary = opts.work_path.as_os_str().is_empty();
    // containerd links `<bundle>/work` to the shim's work dir; without it (runc only makes the
    // last path element) it is made here, and then it is ours to remove.
    let work_parent = bundle.join("work");
    let made_parent = temporary && !work_parent.exists();
    if made_parent {
        std::fs::create_dir(&work_parent)
            .map_err(|e| OciError::Io { what: format!("mkdir {}", work_parent.display()), source: e })?;
    }
    if temporary {
        opts.work_path = work_parent.join("criu-work");
    }
    let result = runtime.checkpoint(id, bundle, &opts).await;
    let result = result.map_err(|e| explain(e, bundle, &opts.work_path, "dump.log", DUMP_LOG));
    if temporary {
        let _ = std::fs::remove_dir_all(&opts.work_path);
        if made_parent {
            let _ = std::fs::remove_dir(&work_parent);
        }
    }
    result
}

/// Restores `id` from the images in `image` (`runc restore`), with the init's stdio. The work
/// dir is `criu_work_path`, else `<bundle>/work` (containerd's link to the shim's work dir;
/// made and removed here when it is missing). A failure quotes CRIU's errors and leaves its
/// log in `<bundle>/criu-restore.log`.
pub async fn restore(
    runtime: &OciRuntime,
    id: &str,
    bundle: &Path,
    pid_file: &Path,
    mut opts: RestoreOpts,
    stdio: RuntimeStdio,
    criu_work_path: &str,
) -> Result<()> {
    opts.work_path = restore_work_path(bundle, criu_work_path);
    let made = !opts.work_path.exists();
    let result = runtime
        .restore(id, bundle, pid_file, &opts, stdio)
        .await
        .map_err(|e| explain(e, bundle, &opts.work_path, "restore.log", RESTORE_LOG));
    if made {
        let _ = std::fs::remove_dir_all(&opts.work_path);
    }
    result
}

/// Where a failed restore's CRIU log is copied.
pub const RESTORE_LOG: &str = "criu-restore.log";

/// Adds CRIU's own error lines and the copied log's path to a failed checkpoint's error.
fn explain(e: OciError, bundle: &Path, work: &Path, log: &str, copy_to: &str) -> RuntimeError {
    let OciError::Failed { op, message } = e else { return e.into() };
    let dump = bundle.join(copy_to);
    let copied = std::fs::copy(work.join(log), &dump).is_ok();
    let criu = if copied { criu_errors(&std::fs::read_to_string(&dump).unwrap_or_default()) } else { Vec::new() };
    // runc's text ends with "log file: <work>/dump.log", which is removed: name the copy instead.
    let mut message = if copied { message.lines().next().unwrap_or_default().to_owned() } else { message };
    if !criu.is_empty() {
        message = format!("{message}: criu: {}", criu.join("; "));
    }
    if copied {
        message = format!("{message} (path= {})", dump.display());
    }
    OciError::Failed { op, message }.into()
}

/// The first few `Error (file:line): text` lines of a CRIU log, without the generic ones
/// ("exited, status=1" of a helper, "Dumping FAILED.") unless nothing else is there.
pub fn criu_errors(log: &str) -> Vec<String> {
    let all: Vec<String> = log
        .lines()
        .filter_map(|l| {
            let at = l.find("Error (")?;
            Some(l[at..].trim().to_owned())
        })
        .collect();
    let generic = |l: &String| l.contains("exited, status=") || l.ends_with("FAILED.");
    let specific: Vec<String> = all.iter().filter(|l| !generic(l)).cloned().collect();
    let chosen = if specific.is_empty() { all } else { specific };
    chosen.into_iter().take(MAX_CRIU_LINES).collect()
}

/// The default restore work dir (`--work-path`): `criu_work_path` or `<bundle>/work`.
pub fn restore_work_path(bundle: &Path, criu_work_path: &str) -> PathBuf {
    if criu_work_path.is_empty() {
        bundle.join("work")
    } else {
        PathBuf::from(criu_work_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_criu_error_lines() {
        let log = "(00.000010) Version: 3.17.1\n\
                   (00.001000) Error (criu/kerndat.c:1234): Can't do something: Operation not permitted\n\
                   (00.002000) Warn  (criu/x.c:1): meh\n\
                   (00.002500) Error (criu/util.c:642): exited, status=1\n\
                   (00.003000) Error (criu/cr-dump.c:2093): Dumping FAILED.\n";
        assert_eq!(criu_errors(log), vec!["Error (criu/kerndat.c:1234): Can't do something: Operation not permitted"]);
        assert_eq!(
            criu_errors("Error (criu/cr-dump.c:2093): Dumping FAILED.\n"),
            vec!["Error (criu/cr-dump.c:2093): Dumping FAILED."]
        );
        assert!(criu_errors("all fine\n").is_empty());
    }
}
