//! Discovery: which cgroup a process is in, from `/proc/<pid>/cgroup` and the shim's
//! `/proc/self/mountinfo` (pure parsers over file contents), and the directories that follow.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::SharedFiles;
use super::oom_files::OomControlFiles;
use super::{malformed, Malformed};

/// Where the unified hierarchy lives on a cgroup v2 host (containerd's `unifiedMountpoint`).
const UNIFIED_MOUNTPOINT: &str = "/sys/fs/cgroup";

/// The fields of one `/proc/<pid>/mountinfo` line that cgroup resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem (field 4), unescaped.
    pub root: String,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// Filesystem type, after the ` - ` separator (`cgroup`, `cgroup2`, `tmpfs`...).
    pub fs_type: String,
    /// Super options; for cgroup v1 they name the controllers (`rw,cpu,cpuacct`, `name=systemd`).
    pub super_options: Vec<String>,
}

/// Parses mountinfo content. Malformed lines are skipped, as containerd does.
pub fn parse_mountinfo(content: &str) -> Vec<MountInfo> {
    content.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let fields: Vec<&str> = line.split(' ').collect();
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
    let (fs_type, super_options) = (fields.get(sep + 1)?, fields.get(sep + 3)?);
    Some(MountInfo {
        root: unescape_octal(root),
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type: (*fs_type).to_owned(),
        super_options: super_options.split(',').map(str::to_owned).collect(),
    })
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in mountinfo paths.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        let code = digits.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A process's cgroup membership, from `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// v1 controller (`memory`, `cpuacct`, `name=systemd`...) → path inside its hierarchy.
    /// Combined hierarchies (`cpu,cpuacct`) give one entry per controller.
    pub v1: BTreeMap<String, String>,
    /// The unified (`0::`) path, when the line is present.
    pub unified: Option<String>,
}

/// Parses `/proc/<pid>/cgroup` content (`hierarchy-id:controllers:path` per line).
pub fn parse_proc_cgroup(content: &str) -> Result<ProcCgroup, Malformed> {
    let mut out = ProcCgroup::default();
    for line in content.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("invalid cgroup entry", line));
        };
        if controllers.is_empty() {
            out.unified = Some(path.to_owned());
        }
        for c in controllers.split(',').filter(|c| !c.is_empty()) {
            out.v1.insert(c.to_owned(), path.to_owned());
        }
    }
    Ok(out)
}

/// Whether the host is in cgroup v2 unified mode: the last mount on `/sys/fs/cgroup` is cgroup2,
/// or cgroup2 is mounted and no v1 hierarchy is.
pub fn is_unified(mounts: &[MountInfo]) -> bool {
    let top = mounts.iter().rev().find(|m| m.mount_point == Path::new(UNIFIED_MOUNTPOINT));
    if let Some(top) = top {
        if top.fs_type == "cgroup2" {
            return true;
        }
    }
    !mounts.iter().any(|m| m.fs_type == "cgroup") && mounts.iter().any(|m| m.fs_type == "cgroup2")
}

/// The directories of a container's cgroup v1 controllers: controller name → absolute path.
/// Clones share the directories and the open files Stats re-reads (`files::FileCache`).
#[derive(Clone, Default)]
pub struct V1Paths {
    pub(super) dirs: Arc<BTreeMap<String, PathBuf>>,
    pub(super) files: SharedFiles,
}

impl PartialEq for V1Paths {
    fn eq(&self, other: &Self) -> bool {
        self.dirs == other.dirs
    }
}

impl Eq for V1Paths {}

impl fmt::Debug for V1Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.dirs.iter()).finish()
    }
}

impl V1Paths {
    /// The directory of `controller` (`memory`, `cpuacct`, `name=systemd`...), if resolved.
    pub fn get(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }

    /// Controller → directory, in controller name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.dirs.iter().map(|(c, d)| (c.as_str(), d.as_path()))
    }

    /// Whether no controller was resolved.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// The files a v1 OOM watcher registers an eventfd with, if the memory controller is known.
    pub fn oom_files(&self) -> Option<OomControlFiles> {
        self.get("memory").map(|dir| OomControlFiles {
            oom_control: dir.join("memory.oom_control"),
            event_control: dir.join("cgroup.event_control"),
        })
    }
}

impl<C: Into<String>, P: Into<PathBuf>> FromIterator<(C, P)> for V1Paths {
    fn from_iter<I: IntoIterator<Item = (C, P)>>(iter: I) -> Self {
        let dirs = iter.into_iter().map(|(c, p)| (c.into(), p.into())).collect();
        Self { dirs: Arc::new(dirs), files: SharedFiles::default() }
    }
}

/// A container's cgroup v2 directory. Derefs to the path; clones share the open files Stats
/// re-reads (`files::FileCache`).
#[derive(Clone)]
pub struct V2Dir {
    dir: Arc<Path>,
    pub(super) files: SharedFiles,
}

impl V2Dir {
    /// The directory `dir`, with no file opened yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Arc::from(dir.into()), files: SharedFiles::default() }
    }
}

impl From<PathBuf> for V2Dir {
    fn from(dir: PathBuf) -> Self {
        Self::new(dir)
    }
}

impl std::ops::Deref for V2Dir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.dir
    }
}

impl AsRef<Path> for V2Dir {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}

impl PartialEq for V2Dir {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
    }
}

impl Eq for V2Dir {}

impl fmt::Debug for V2Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.dir.fmt(f)
    }
}

/// Joins a cgroup path under the mount that holds it: the part of `cg_path` below the mount's
/// root is appended to the mount point (a nested or namespaced mount's root is not repeated).
fn join_under(mount: &MountInfo, cg_path: &str) -> Result<PathBuf, Malformed> {
    if !cg_path.starts_with('/') || cg_path.split('/').any(|c| c == "..") {
        return Err(malformed("cgroup path is not absolute and clean", cg_path));
    }
    let rel = strip_root(&mount.root, cg_path).unwrap_or(cg_path);
    Ok(mount.mount_point.join(rel.trim_start_matches('/')))
}

fn strip_root<'a>(root: &str, cg_path: &'a str) -> Option<&'a str> {
    if root == "/" {
        return Some(cg_path);
    }
    let rest = cg_path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Resolves each v1 controller of `cg` to its directory through the mount whose super options
/// name it (preferring a mount whose root contains the path). Controllers with no mount are
/// left out.
pub fn resolve_v1(cg: &ProcCgroup, mounts: &[MountInfo]) -> Result<V1Paths, Malformed> {
    let mut dirs = BTreeMap::new();
    for (controller, path) in &cg.v1 {
        let mount = mounts
            .iter()
            .filter(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))
            .min_by_key(|m| strip_root(&m.root, path).is_none());
        if let Some(mount) = mount {
            dirs.insert(controller.clone(), join_under(mount, path)?);
        }
    }
    Ok(V1Paths { dirs: Arc::new(dirs), files: SharedFiles::default() })
}

/// Resolves the unified path of `cg` under the cgroup2 mount (preferring `/sys/fs/cgroup`).
pub fn resolve_v2(cg: &ProcCgroup, mounts: &[MountInfo]) -> Result<PathBuf, Malformed> {
    let path = cg.unified.as_deref().ok_or_else(|| Malformed("no unified (0::) cgroup entry".into()))?;
    let mount = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup2")
        .min_by_key(|m| (strip_root(&m.root, path).is_none(), m.mount_point != Path::new(UNIFIED_MOUNTPOINT)))
        .ok_or_else(|| Malformed("no cgroup2 mount".into()))?;
    join_under(mount, path)
}
