//! Create: everything before a container's actor exists. Rolls back what it did on failure:
//! no runtime container, mount or stdio copy is left behind by a failed Create.
//!
//! A Create runs on a task of its own ([`create_detached`]), not inside the request's future:
//! ttrpc drops a handler's future when the request's deadline passes or its connection
//! closes, and a rollback that only runs when awaited would then never run. The task owns the
//! id's [`Reservation`] until it ends; if the requester is gone by the time the container
//! exists, the task rolls it back instead of publishing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::events::task::TaskCreate;
use tokio::sync::oneshot;

use crate::container::{self, NewContainer, Shared, Spawned};
use crate::error::{Result, RuntimeError};
use crate::io::{IoContext, ProcessIo, StdioConfig};
use crate::mount::{self, MountSpec};
use crate::oci::{read_pid_file, CreateOpts, OciRuntime};
use crate::options::{validate_id, BundleSpec, RuncOptions};
use crate::registry::Reservation;

pub(crate) fn watch_oom(cgroup: &crate::cgroups::ContainerCgroup) -> Option<crate::oom::OomWatch> {
    match cgroup {
        crate::cgroups::ContainerCgroup::V1(paths) => {
            let files = paths.oom_files()?;
            crate::oom::OomWatch::v1(&files)
                .map_err(|e| tracing::debug!(error = %e, "no oom notifications for this cgroup"))
                .ok()
        }
        crate::cgroups::ContainerCgroup::V2(dir) => crate::oom::OomWatch::v2(dir)
            .map_err(|e| tracing::debug!(error = %e, "no oom notifications for this cgroup"))
            .ok(),
    }
}

/// A decoded CreateTaskRequest.
#[derive(Debug, Clone)]
pub struct CreateParams {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: String,
    /// Rootfs mounts to mount on `<bundle>/rootfs`.
    pub rootfs: Vec<MountSpec>,
    /// Init stdio.
    pub stdio: StdioConfig,
    /// Checkpoint images to restore from (`runc restore` instead of `runc create`).
    pub checkpoint: String,
    /// Runtime options.
    pub options: RuncOptions,
    /// The containerd namespace.
    pub namespace: String,
}

fn bundle_path(raw: &str) -> Result<PathBuf> {
    let invalid =
        |reason: &str| RuntimeError::InvalidArgument { field: "bundle", reason: format!("{raw:?}: {reason}") };
    let p = Path::new(raw);
    if !p.is_absolute() {
        return Err(invalid("must be an absolute path"));
    }
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(invalid("must not contain .."));
    }
    if !p.join("config.json").is_file() {
        return Err(invalid("has no config.json"));
    }
    Ok(p.to_path_buf())
}

/// Undoes a partial Create when dropped unarmed.
struct Rollback<'a> {
    rootfs: Option<PathBuf>,
    runtime: Option<(&'a OciRuntime, &'a str, PathBuf)>,
}

impl Rollback<'_> {
    async fn run(self) {
        if let Some((runtime, id, log)) = self.runtime {
            if let Err(e) = runtime.delete(id, Some(&log), true).await {
                tracing::warn!(container_id = id, error = %e, "rollback: runtime delete failed");
            }
        }
        if let Some(rootfs) = self.rootfs {
            if let Err(e) = mount::unmount_all_off_loop(&rootfs).await {
                tracing::warn!(path = %rootfs.display(), error = %e, "rollback: unmount failed");
            }
        }
    }
}

/// Creates a container on a task that is not cancelled with the caller: dropping the returned
/// future (a request past its deadline, a closed connection) does not stop the Create half-way.
/// The task publishes the container under `reservation` and returns its init pid; when the
/// caller is gone by the time `runc create` has returned, it rolls the container back instead.
pub async fn create_detached(shared: &Shared, params: CreateParams, reservation: Reservation) -> Result<u32> {
    let (tx, rx) = oneshot::channel();
    let shared = shared.clone();
    let id = params.id.clone();
    // Owned by the reservation: the id stays taken (and Shutdown refused) until the task ends.
    tokio::spawn(async move {
        let result = create(&shared, params, &tx).await.map(|(pid, handle)| {
            reservation.fulfill(handle);
            pid
        });
        let _ = tx.send(result);
    });
    rx.await.map_err(|_| RuntimeError::Gone { id })?
}

/// Creates a container and starts its actor; returns the init pid and the handle. The id must
/// already be reserved by the caller. A Create whose `requester` is gone once the runtime has
/// created the container is rolled back and fails with `Cancelled`.
async fn create(
    shared: &Shared,
    params: CreateParams,
    requester: &oneshot::Sender<Result<u32>>,
) -> Result<(u32, Spawned)> {
    validate_id(&params.id).map_err(|reason| RuntimeError::InvalidArgument { field: "id", reason })?;
    let bundle = bundle_path(&params.bundle)?;
    let spec = BundleSpec::load(&bundle)?;
    // Checkpoint images that are not there fail the Create, not the Start that restores.
    if !params.checkpoint.is_empty() && !Path::new(&params.checkpoint).is_dir() {
        return Err(RuntimeError::InvalidArgument {
            field: "checkpoint",
            reason: format!("{:?} is not a directory", params.checkpoint),
        });
    }
    let opts = &params.options;
    opts.write_to_bundle(&bundle)?;
    let runtime = Arc::new(OciRuntime::new(
        opts.binary(),
        opts.root_for(&params.namespace),
        opts.systemd_cgroup,
        shared.reaper.clone(),
    ));

    let mut rollback = Rollback { rootfs: None, runtime: None };
    let rootfs_mounted = !params.rootfs.is_empty();
    if rootfs_mounted {
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| RuntimeError::Sys { what: format!("mkdir {}", rootfs.display()), source: e })?;
        mount::mount_all_off_loop(&params.rootfs, &rootfs).await?;
        rollback.rootfs = Some(rootfs);
    }

    // From a checkpoint, Create only records it: Start restores (as the Go shim does).
    let restore = (!params.checkpoint.is_empty()).then(|| crate::checkpoint::PendingRestore {
        image_path: PathBuf::from(&params.checkpoint),
        no_pivot: opts.no_pivot_root,
        criu_work_path: opts.criu_work_path.clone(),
    });
    let result = async {
        if restore.is_some() {
            return Ok(None);
        }
        let ctx = IoContext { reaper: &shared.reaper, container_id: &params.id, namespace: &params.namespace };
        let (prepared, rt_stdio) = ProcessIo::prepare(&params.stdio, opts.io_uid, opts.io_gid, ctx).await?;
        let pid_file = bundle.join("init.pid");
        let create_opts = CreateOpts {
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
            console_socket: prepared.console_socket().map(Path::to_path_buf),
        };
        // Subscribe before the runtime can start the init, so an exit before we know its pid
        // is matched afterwards (SPEC §4.7 no. 3).
        let subscription = shared.reaper.subscribe();
        let created =
            runtime.create(&params.id, &bundle, &pid_file, &create_opts, rt_stdio).await.map_err(RuntimeError::from);
        // Whatever happened, the runtime may hold state for the id from here on.
        rollback.runtime = Some((&runtime, &params.id, bundle.join("log.json")));
        created?;
        let io = prepared.finish(&params.stdio).await?;
        let pid = read_pid_file(&pid_file)?;
        Ok::<_, RuntimeError>(Some((pid, io, subscription)))
    }
    .await;

    let result = match result {
        Ok(_) if requester.is_closed() => {
            tracing::warn!(container_id = %params.id, "create cancelled by its requester: rolling back");
            Err(RuntimeError::Cancelled { id: params.id.clone() })
        }
        other => other,
    };
    let (pid, io, subscription) = match result {
        Ok(Some((pid, io, subscription))) => (pid, Some(io), Some(subscription)),
        Ok(None) => (0, None, None),
        Err(e) => {
            rollback.run().await;
            return Err(e);
        }
    };

    let mut event = TaskCreate::new();
    event.container_id = params.id.clone();
    event.bundle = params.bundle.clone();
    event.rootfs = params
        .rootfs
        .iter()
        .map(|m| {
            let mut pm = containerd_shim_protos::types::mount::Mount::new();
            pm.type_ = m.kind.clone();
            pm.source = m.source.clone();
            pm.options = m.options.clone();
            pm
        })
        .collect();
    event.io = protobuf::MessageField::some(container::task_io(&params.stdio));
    event.checkpoint = params.checkpoint.clone();
    event.pid = pid;

    // Watched from Create on (containerd 2.2+): an init OOM-killed right after start is seen.
    let cgroup = (pid != 0).then(|| crate::cgroups::ContainerCgroup::load(pid).ok()).flatten();
    let handle = container::spawn(
        NewContainer {
            id: params.id.clone(),
            bundle,
            runtime: Arc::clone(&runtime),
            pid,
            stdio: params.stdio,
            io,
            rootfs_mounted,
            restore,
            shares_pid_ns: spec.shares_pid_namespace(),
            io_owner: (opts.io_uid, opts.io_gid),
            namespace: params.namespace.clone(),
            oom: cgroup.as_ref().and_then(watch_oom),
            cgroup,
            event,
        },
        subscription,
        shared.clone(),
    );
    Ok((pid, handle))
}
