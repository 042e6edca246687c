//! Checkpoint: decode `CheckpointTaskRequest` (image path + `containerd.runc.v1.CheckpointOptions`)
//! into the runtime's checkpoint options.

use std::path::PathBuf;

use containerd_shim_protos::api::CheckpointTaskRequest;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use protobuf::Message;
use shim_runtime::oci::CheckpointOpts;

use crate::status::ShimError;

const OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

pub(super) fn options(req: &CheckpointTaskRequest) -> Result<CheckpointOpts, ShimError> {
    let invalid = |field, reason: String| ShimError::invalid_argument(field, reason);
    let o = match req.options.as_ref() {
        Some(any) if !(any.type_url.is_empty() && any.value.is_empty()) => {
            if any.type_url.rsplit('/').next() != Some(OPTIONS_TYPE) {
                return Err(invalid("options", format!("unexpected type {:?}", any.type_url)));
            }
            CheckpointOptions::parse_from_bytes(&any.value).map_err(|e| invalid("options", e.to_string()))?
        }
        _ => CheckpointOptions::new(),
    };
    // The request's path is the image path (the Go shim's); the option's is the client's copy.
    let image = if req.path.is_empty() { o.image_path.clone() } else { req.path.clone() };
    if image.is_empty() {
        return Err(invalid("path", "no checkpoint image path".into()));
    }
    Ok(CheckpointOpts {
        image_path: PathBuf::from(image),
        work_path: PathBuf::from(&o.work_path),
        exit: o.exit,
        open_tcp: o.open_tcp,
        external_unix_sockets: o.external_unix_sockets,
        terminal: o.terminal,
        file_locks: o.file_locks,
        empty_namespaces: o.empty_namespaces.clone(),
    })
}

#[cfg(test)]
mod tests {
    use protobuf::well_known_types::any::Any;

    use super::*;

    #[test]
    fn decodes_every_option() {
        let mut o = CheckpointOptions::new();
        o.exit = true;
        o.open_tcp = true;
        o.external_unix_sockets = true;
        o.terminal = true;
        o.file_locks = true;
        o.empty_namespaces = vec!["network".into()];
        o.work_path = "/w".into();
        let mut any = Any::new();
        any.type_url = OPTIONS_TYPE.into();
        any.value = o.write_to_bytes().unwrap_or_default();
        let mut req = CheckpointTaskRequest::new();
        req.path = "/img".into();
        req.options = protobuf::MessageField::some(any);
        let got = options(&req).ok();
        let want = CheckpointOpts {
            image_path: "/img".into(),
            work_path: "/w".into(),
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
        };
        assert_eq!(got, Some(want));
        req.path.clear();
        assert!(options(&req).is_err(), "no image path");
        req.path = "/img".into();
        req.options = protobuf::MessageField::some(Any::new());
        assert_eq!(options(&req).ok().map(|o| (o.exit, o.work_path)), Some((false, PathBuf::new())));
    }
}
