//! Create: decode the request (options, mounts, stdio), reserve the id, call the runtime.

use containerd_shim_protos::api::{CreateTaskRequest, CreateTaskResponse};
use shim_runtime::container::Shared;
use shim_runtime::create::CreateParams;
use shim_runtime::io::StdioConfig;
use shim_runtime::mount::MountSpec;
use shim_runtime::options::RuncOptions;

use crate::status::ShimError;

pub(super) async fn create(
    shared: &Shared,
    namespace: &str,
    req: CreateTaskRequest,
) -> Result<CreateTaskResponse, ShimError> {
    super::check_id(&req.id)?;
    let options = RuncOptions::from_any(req.options.as_ref()).map_err(shim_runtime::RuntimeError::from)?;
    let reservation = shared.registry.reserve(&req.id)?;
    tracing::info!(container_id = %req.id, bundle = %req.bundle, mounts = req.rootfs.len(), "create");
    let params = CreateParams {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req
            .rootfs
            .iter()
            .map(|m| MountSpec { kind: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
            .collect(),
        stdio: StdioConfig { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        checkpoint: req.checkpoint,
        options,
        namespace: namespace.to_owned(),
    };
    // On its own task: a request that ends now (deadline, closed connection) cannot leave
    // the Create half-done.
    let pid = shim_runtime::create::create_detached(shared, params, reservation).await?;
    let mut r = CreateTaskResponse::new();
    r.pid = pid;
    Ok(r)
}
