//! Update: decode the LinuxResources (JSON in an `Any`) for `runc update --resources -`.
//! Annotations are ignored, as in the Go shim.

use containerd_shim_protos::api::UpdateTaskRequest;

use crate::status::ShimError;

/// Largest resources document accepted.
const MAX_RESOURCES_BYTES: usize = 1 << 20;

pub(super) fn resources(req: &UpdateTaskRequest) -> Result<Vec<u8>, ShimError> {
    let invalid = |reason: String| ShimError::invalid_argument("resources", reason);
    let any = req.resources.as_ref().ok_or_else(|| invalid("missing".into()))?;
    if !any.type_url.ends_with("opencontainers/runtime-spec/1/LinuxResources") {
        return Err(invalid(format!("unexpected type {:?}", any.type_url)));
    }
    if any.value.len() > MAX_RESOURCES_BYTES {
        return Err(invalid(format!("{} bytes is over {MAX_RESOURCES_BYTES}", any.value.len())));
    }
    let value: serde_json::Value = serde_json::from_slice(&any.value).map_err(|e| invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(invalid("not a JSON object".into()));
    }
    Ok(any.value.clone())
}
