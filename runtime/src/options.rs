//! Runtime options (`containerd.runc.v1.Options`, or runc options read through the generic
//! `runtimeoptions.v1.Options` CRI sends for other runtime types), the bundle files that record
//! them for `delete`, identifier validation and the few `config.json` facts the shim needs.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::shim::oci::Options as ProtoOptions;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, UnknownValueRef};
use serde::{Deserialize, Serialize};

/// Default runtime state root; the namespace is appended.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/containerd/runc";
/// Default runtime binary.
pub const DEFAULT_RUNTIME: &str = "runc";
/// Longest identifier containerd accepts.
pub const MAX_ID_LEN: usize = 76;
/// The generic options message containerd's CRI sends for runtime types other than
/// `io.containerd.runc.v2` (`type_url` = 1, `config_path` = 2, `config_body` = 3).
pub const RUNTIMEOPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

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

/// The runc options as TOML (`runtimeoptions` `config_path` / `config_body`), with the names
/// of containerd's CRI config. `TypeUrl`/`ConfigPath`/`ConfigBody` are the runtimeoptions
/// fields themselves, present when containerd sends the whole options table as the body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "PascalCase")]
#[allow(dead_code)] // accepted, not used by this shim (as in the Go shim)
struct TomlRuncOptions {
    #[serde(alias = "no_pivot_root")]
    no_pivot_root: bool,
    #[serde(alias = "no_new_keyring")]
    no_new_keyring: bool,
    #[serde(alias = "shim_cgroup")]
    shim_cgroup: String,
    #[serde(alias = "io_uid")]
    io_uid: u32,
    #[serde(alias = "io_gid")]
    io_gid: u32,
    #[serde(alias = "binary_name")]
    binary_name: String,
    #[serde(alias = "root")]
    root: String,
    #[serde(alias = "systemd_cgroup")]
    systemd_cgroup: bool,
    #[serde(alias = "criu_path")]
    criu_path: String,
    #[serde(alias = "criu_image_path")]
    criu_image_path: String,
    #[serde(alias = "criu_work_path")]
    criu_work_path: String,
    #[serde(alias = "task_api_address")]
    task_api_address: String,
    #[serde(alias = "task_api_version")]
    task_api_version: u32,
    type_url: String,
    config_path: String,
    config_body: Option<toml::Value>,
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
        if name == RUNTIMEOPTIONS_TYPE {
            return Self::from_runtimeoptions(any);
        }
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

    /// Runc options from a `runtimeoptions.v1.Options`: the TOML file at `config_path` or, when
    /// there is none, the TOML in `config_body` (the runtime's whole `options` table, which
    /// containerd 1.7 and 2.x send), with the runc option names of the CRI config
    /// (`BinaryName`, `Root`, `SystemdCgroup`, ...; snake_case names are accepted too). Both
    /// empty is an error (the options were lost on the way). An unreadable file or an unknown or mistyped key is an error that
    /// names the file (or `config_body`) and the key.
    fn from_runtimeoptions(any: &Any) -> Result<Self, OptionsError> {
        let invalid = |reason: String| OptionsError::Invalid { type_url: any.type_url.clone(), reason };
        let msg = Empty::parse_from_bytes(&any.value).map_err(|e| invalid(e.to_string()))?;
        let field = |n: u32| match msg.special_fields.unknown_fields().get(n) {
            Some(UnknownValueRef::LengthDelimited(b)) => Ok(b.to_vec()),
            None => Ok(Vec::new()),
            Some(_) => Err(invalid(format!("field {n} is not length-delimited"))),
        };
        let config_path = String::from_utf8(field(2)?).map_err(|_| invalid("config_path is not UTF-8".into()))?;
        let (source, text) = if !config_path.is_empty() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| invalid(format!("config_path {config_path}: {e}")))?;
            (format!("config_path {config_path}"), text)
        } else {
            let body = field(3)?;
            if body.is_empty() {
                // containerd 1.6 sends this for a runtime's inline options table: refuse rather
                // than run with defaults the user did not ask for.
                return Err(invalid(
                    "neither config_path nor config_body is set (containerd 1.6 does not pass a \
                     runtime's inline options to a runtime type other than io.containerd.runc.v2): \
                     put the runc options in a TOML file and set ConfigPath"
                        .into(),
                ));
            }
            let text = String::from_utf8(body).map_err(|_| invalid("config_body is not UTF-8".into()))?;
            ("config_body".to_owned(), text)
        };
        let t: TomlRuncOptions = toml::from_str(&text).map_err(|e| {
            // Name the line (and so the key) the error is about.
            let at = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count()).map(|n| {
                let line = text.lines().nth(n).unwrap_or_default().trim();
                format!(" (line {}: `{line}`)", n + 1)
            });
            invalid(format!("{source}: {}{}", e.message(), at.unwrap_or_default()))
        })?;
        Ok(RuncOptions {
            no_pivot_root: t.no_pivot_root,
            no_new_keyring: t.no_new_keyring,
            shim_cgroup: t.shim_cgroup,
            io_uid: t.io_uid,
            io_gid: t.io_gid,
            binary_name: t.binary_name,
            root: t.root,
            systemd_cgroup: t.systemd_cgroup,
            criu_work_path: t.criu_work_path,
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

    /// A `runtimeoptions.v1.Options` as containerd's CRI encodes it.
    fn runtimeoptions(config_path: &str, config_body: &str) -> Any {
        let mut v = Vec::new();
        for (n, f) in [(1u8, "runtimeoptions.v1.Options"), (2, config_path), (3, config_body)] {
            if f.is_empty() {
                continue;
            }
            v.push(n << 3 | 2);
            assert!(f.len() < 128);
            v.push(u8::try_from(f.len()).unwrap());
            v.extend_from_slice(f.as_bytes());
        }
        let mut any = Any::new();
        any.type_url = RUNTIMEOPTIONS_TYPE.into();
        any.value = v;
        any
    }

    #[test]
    fn runtimeoptions_config_path() {
        let dir = std::env::temp_dir().join(format!("rtopts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "BinaryName = \"crun\"\nRoot = \"/r\"\nSystemdCgroup = true\nio_uid = 7\n").unwrap();
        let o = RuncOptions::from_any(Some(&runtimeoptions(good.to_str().unwrap(), ""))).unwrap();
        assert_eq!((o.binary(), o.root.as_str(), o.systemd_cgroup, o.io_uid), ("crun", "/r", true, 7));

        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "Root = \"/r\"\nNoSuchOption = true\n").unwrap();
        let e = RuncOptions::from_any(Some(&runtimeoptions(unknown.to_str().unwrap(), ""))).unwrap_err().to_string();
        assert!(e.contains("unknown.toml") && e.contains("NoSuchOption") && e.contains("config_path"), "{e}");

        let typed = dir.join("typed.toml");
        std::fs::write(&typed, "SystemdCgroup = \"yes\"\n").unwrap();
        let e = RuncOptions::from_any(Some(&runtimeoptions(typed.to_str().unwrap(), ""))).unwrap_err().to_string();
        assert!(e.contains("typed.toml") && e.contains("SystemdCgroup"), "{e}");

        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "Root = \n").unwrap();
        let e = RuncOptions::from_any(Some(&runtimeoptions(broken.to_str().unwrap(), ""))).unwrap_err().to_string();
        assert!(e.contains("broken.toml"), "{e}");

        let missing = dir.join("missing.toml");
        let e = RuncOptions::from_any(Some(&runtimeoptions(missing.to_str().unwrap(), ""))).unwrap_err().to_string();
        assert!(e.contains("config_path") && e.contains("missing.toml") && e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runtimeoptions_config_body() {
        let o = RuncOptions::from_any(Some(&runtimeoptions("", "BinaryName = 'runc'\nRoot = '/x'\nConfigPath = ''\n")))
            .unwrap();
        assert_eq!((o.binary(), o.root.as_str()), ("runc", "/x"));
        let e = RuncOptions::from_any(Some(&runtimeoptions("", "Bogus = 1"))).unwrap_err().to_string();
        assert!(e.contains("config_body") && e.contains("Bogus"), "{e}");
        // Neither: what containerd 1.6 sends for an inline options table it cannot pass on.
        // Refused, so that options the user wrote are never silently dropped.
        let e = RuncOptions::from_any(Some(&runtimeoptions("", ""))).unwrap_err().to_string();
        assert!(e.contains("neither config_path nor config_body") && e.contains("ConfigPath"), "{e}");
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
