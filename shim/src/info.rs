//! `-v` and `-info`.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Result;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use shim_runtime::options::RuncOptions;

/// Name containerd knows this runtime by.
const RUNTIME_NAME: &str = "io.containerd.runc.v2";
/// Version of this shim.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `-v`: the Go shim's format.
pub fn print_version() {
    let name = std::env::args()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    print!(
        "{}:\n  Version:  {VERSION}\n  Revision: {}\n  Rust version: {}\n\n",
        name.unwrap_or_else(|| "containerd-shim-runc-v2".into()),
        option_env!("SHIM_REVISION").unwrap_or("unknown"),
        option_env!("SHIM_RUSTC_VERSION").unwrap_or("unknown"),
    );
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Some(PathBuf::from(binary));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(binary)).find(|p| p.is_file())
}

/// `-info`: a RuntimeInfo proto with the runtime's `features` JSON (SPEC §1.1).
pub fn print_info() -> Result<()> {
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let options = if input.is_empty() { None } else { Any::parse_from_bytes(&input).ok() };
    let opts = RuncOptions::from_any(options.as_ref())?;
    let binary = find_in_path(opts.binary())
        .ok_or_else(|| anyhow::anyhow!("exec: {:?}: executable file not found in $PATH", opts.binary()))?;
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.into();
    let mut v = RuntimeVersion::new();
    v.version = VERSION.into();
    v.revision = option_env!("SHIM_REVISION").unwrap_or("").into();
    info.version = protobuf::MessageField::some(v);
    if let Some(o) = options {
        info.options = protobuf::MessageField::some(o);
    }
    if let Ok(json) = crate::bootstrap::capture_output(&binary, &["features"]) {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into();
        any.value = json;
        info.features = protobuf::MessageField::some(any);
    }
    std::io::stdout().write_all(&info.write_to_bytes()?)?;
    Ok(())
}
