//! Runtime options (`containerd.runc.v1.Options`), the bundle files that record them for
//! `delete`, identifier validation and the few `config.json` facts the shim needs.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::shim::oci::Options as ProtoOptions;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use serde::{Deserialize, Serialize};

/// Default runtime state root; the namespace is appended.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/containerd/runc";
/// Default runtime binary.
pub const DEFAULT_RUNTIME: &str = "runc";
/// Longest identifier containerd accepts.
pub const MAX_ID_LEN: usize = 76;

/// Errors decoding options or reading bundle files.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The options `Any` is of another type or does not decode.
    #[error("invalid runtime options {type_url:?}: {reason}")]
    Invalid {
        /// Its type URL.
        type_url: String,
        /// Why.
        reason: String,
    },
    /// A bundle file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The runc options the shim uses, with containerd's JSON field names (`options.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuncOptions {
    /// `--no-pivot` on create.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_pivot_root: bool,
    /// `--no-new-keyring` on create.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_new_keyring: bool,
    /// Cgroup the shim daemon is moved into by `start`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shim_cgroup: String,
    /// Owner of the container-side stdio pipes.
    #[serde(skip_serializing_if = "is_zero")]
    pub io_uid: u32,
    /// Group of the container-side stdio pipes.
    #[serde(skip_serializing_if = "is_zero")]
    pub io_gid: u32,
    /// The OCI runtime binary (`runc` when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binary_name: String,
    /// The runtime state root (`/run/containerd/runc` when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root: String,
    /// runc `--systemd-cgroup`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub systemd_cgroup: bool,
    /// CRIU work path for restore.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub criu_work_path: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl RuncOptions {
    /// Decodes the options `Any` containerd sends (empty means defaults).
    pub fn from_any(any: Option<&Any>) -> Result<Self, OptionsError> {
        let Some(any) = any else { return Ok(Self::default()) };
        if any.type_url.is_empty() && any.value.is_empty() {
            return Ok(Self::default());
        }
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if name != "containerd.runc.v1.Options" && name != "containerd.linux.runc.RuncOptions" {
            return Err(OptionsError::Invalid { type_url: any.type_url.clone(), reason: "not runc options".into() });
        }
        let o = ProtoOptions::parse_from_bytes(&any.value)
            .map_err(|e| OptionsError::Invalid { type_url: any.type_url.clone(), reason: e.to_string() })?;
        Ok(RuncOptions {
            no_pivot_root: o.no_pivot_root,
            no_new_keyring: o.no_new_keyring,
            shim_cgroup: o.shim_cgroup,
            io_uid: o.io_uid,
            io_gid: o.io_gid,
            binary_name: o.binary_name,
            root: o.root,
            systemd_cgroup: o.systemd_cgroup,
            criu_work_path: o.criu_work_path,
        })
    }

    /// The runtime binary to run.
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            DEFAULT_RUNTIME
        } else {
            &self.binary_name
        }
    }

    /// The runtime state root for `namespace`.
    pub fn root_for(&self, namespace: &str) -> PathBuf {
        let root = if self.root.is_empty() { DEFAULT_RUNTIME_ROOT } else { &self.root };
        Path::new(root).join(namespace)
    }

    /// Writes `options.json` and `runtime` into the bundle, for `delete`.
    pub fn write_to_bundle(&self, bundle: &Path) -> Result<(), OptionsError> {
        let io_err = |path: &Path, e: io::Error| OptionsError::Io { path: path.display().to_string(), source: e };
        let json = serde_json::to_vec(self).map_err(|e| io_err(bundle, io::Error::other(e)))?;
        let p = bundle.join("options.json");
        std::fs::write(&p, json).map_err(|e| io_err(&p, e))?;
        let p = bundle.join("runtime");
        std::fs::write(&p, self.binary()).map_err(|e| io_err(&p, e))?;
        Ok(())
    }

    /// Reads back what [`Self::write_to_bundle`] wrote; missing files mean defaults.
    pub fn read_from_bundle(bundle: &Path) -> Self {
        let mut o: RuncOptions = std::fs::read(bundle.join("options.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if o.binary_name.is_empty() {
            if let Ok(b) = std::fs::read_to_string(bundle.join("runtime")) {
                o.binary_name = b.trim().to_owned();
            }
        }
        o
    }
}

/// containerd's identifier rule: `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76 bytes.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("identifier must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        // Cut on a char boundary: the id may be any UTF-8.
        let head: String = id.chars().take(16).collect();
        return Err(format!("identifier {head:?}... ({} bytes) is longer than {MAX_ID_LEN}", id.len()));
    }
    let mut prev_sep = true;
    for c in id.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(format!("identifier {id:?} must match [A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(format!("identifier {id:?} must match [A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"));
    }
    Ok(())
}

/// The bundle's `config.json`, parsed loosely (only the fields the shim reads).
#[derive(Debug, Clone, Default)]
pub struct BundleSpec {
    value: serde_json::Value,
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Self, OptionsError> {
        let p = bundle.join("config.json");
        let bytes = std::fs::read(&p).map_err(|e| OptionsError::Io { path: p.display().to_string(), source: e })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| OptionsError::Io {
            path: p.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        Ok(BundleSpec { value })
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value.get("annotations")?.get(key)?.as_str()
    }

    /// Whether the container lacks a private pid namespace (host pid, or a joined one), in which
    /// case the shim must `kill --all` when the init exits (SPEC §4.3).
    pub fn shares_pid_namespace(&self) -> bool {
        let Some(ns) = self.value.pointer("/linux/namespaces").and_then(|v| v.as_array()) else {
            return true;
        };
        !ns.iter().any(|n| {
            n.get("type").and_then(|t| t.as_str()) == Some("pid")
                && n.get("path").and_then(|p| p.as_str()).unwrap_or("").is_empty()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "abc-123", "a.b_c-d", "A1"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        let multibyte = "é".repeat(60);
        for bad in ["", "-a", "a-", "a..b", "../x", "a/b", "a b", &"x".repeat(77), &multibyte, "héllo", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert!(validate_id(&"x".repeat(76)).is_ok());
    }

    #[test]
    fn options_roundtrip() {
        let mut p = ProtoOptions::new();
        p.binary_name = "crun".into();
        p.root = "/tmp/r".into();
        p.io_uid = 1000;
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = p.write_to_bytes().unwrap();
        let o = RuncOptions::from_any(Some(&any)).unwrap();
        assert_eq!(o.binary(), "crun");
        assert_eq!(o.root_for("ns"), PathBuf::from("/tmp/r/ns"));
        assert_eq!(o.io_uid, 1000);
        let mut bad = Any::new();
        bad.type_url = "something.Else".into();
        bad.value = vec![1];
        assert!(RuncOptions::from_any(Some(&bad)).is_err());
        assert_eq!(RuncOptions::from_any(None).unwrap().binary(), "runc");
    }

    #[test]
    fn pid_namespace() {
        let private: serde_json::Value =
            serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}});
        assert!(!BundleSpec { value: private }.shares_pid_namespace());
        let joined = serde_json::json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}});
        assert!(BundleSpec { value: joined }.shares_pid_namespace());
        let host = serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}});
        assert!(BundleSpec { value: host }.shares_pid_namespace());
    }
}
