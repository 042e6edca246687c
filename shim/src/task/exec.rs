//! Exec: decode and validate the OCI process spec (JSON in an `Any`), set `terminal`, encode it
//! once, and register the exec.

use containerd_shim_protos::api::ExecProcessRequest;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use shim_runtime::container::{ContainerHandle, ExecSpec};
use shim_runtime::io::StdioConfig;

use crate::status::ShimError;

/// The exec id the init's files use.
const RESERVED_EXEC_ID: &str = "init";

/// Largest process spec accepted (the ttrpc message limit is 4 MiB).
const MAX_SPEC_BYTES: usize = 1 << 20;

pub(super) async fn exec(container: ContainerHandle, req: ExecProcessRequest) -> Result<Empty, ShimError> {
    let invalid = |field, reason: String| ShimError::invalid_argument(field, reason);
    if req.exec_id.is_empty() {
        return Err(invalid("exec_id", "must not be empty".into()));
    }
    super::check_exec_id(&req.exec_id)?;
    if req.exec_id == RESERVED_EXEC_ID {
        // Its pid file would be the init's (`<bundle>/init.pid`, read by `shim delete`).
        return Err(invalid("exec_id", format!("{RESERVED_EXEC_ID:?} is reserved for the init process")));
    }
    let spec = req.spec.as_ref().ok_or_else(|| invalid("spec", "missing process spec".into()))?;
    if !spec.type_url.ends_with("opencontainers/runtime-spec/1/Process") {
        return Err(invalid("spec", format!("unexpected type {:?}", spec.type_url)));
    }
    if spec.value.len() > MAX_SPEC_BYTES {
        return Err(invalid("spec", format!("{} bytes is over {MAX_SPEC_BYTES}", spec.value.len())));
    }
    let mut process: serde_json::Value =
        serde_json::from_slice(&spec.value).map_err(|e| invalid("spec", e.to_string()))?;
    let obj = process.as_object_mut().ok_or_else(|| invalid("spec", "not a JSON object".into()))?;
    if obj.get("args").is_none_or(|a| a.as_array().is_none_or(|a| a.is_empty())) {
        return Err(invalid("spec", "args must be a non-empty array".into()));
    }
    obj.insert("terminal".into(), serde_json::Value::Bool(req.terminal));
    // Encoded once, as runc reads it: each start attempt shares these bytes.
    let encoded = serde_json::to_vec(&process).map_err(|e| invalid("spec", e.to_string()))?;
    // Never log the spec: it carries the environment.
    // Debug, not info: one line per exec is a write to the log fifo and a copy in containerd.
    tracing::debug!(exec_id = %req.exec_id, spec_bytes = spec.value.len(), "exec");
    let stdio = StdioConfig { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
    container.exec(req.exec_id, ExecSpec::from(encoded), stdio).await?;
    Ok(Empty::new())
}
