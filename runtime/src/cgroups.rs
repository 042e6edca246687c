//! A container's cgroup: where it is, and what containerd's Stats (and, later, the OOM watcher)
//! read from it.
//!
//! Discovery reads `/proc/<pid>/cgroup` and the shim's `/proc/self/mountinfo`; the parsers take
//! file contents (pure) and thin wrappers read the real files. The version is chosen as
//! containerd's `cgroups.Mode()` does: cgroup2 mounted at `/sys/fs/cgroup` means v2, anything
//! else (legacy or hybrid) means v1.
//!
//! Stats follow containerd's `cgroups/v3` library (`cgroup1.Stat(IgnoreNotExist)` and
//! `cgroup2.Manager.Stat`) and produce its protobuf `Metrics` messages: a missing file is
//! skipped (the field keeps its default), an unreadable or malformed one is an error naming the
//! path. Limits follow containerd too: v2 `max` is `u64::MAX`, v1 `max` (pids) is 0.
//!
//! Non-goals: creating, updating, freezing or deleting cgroups (runc does that), and watching
//! for OOM (this module only names the files a watcher needs). No logging: errors carry paths.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};

/// Type URL of the `Any` carrying cgroup v1 metrics, as containerd's typeurl registry names it.
pub const V1_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of the `Any` carrying cgroup v2 metrics.
pub const V2_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Where the unified hierarchy lives on a cgroup v2 host (containerd's `unifiedMountpoint`).
const UNIFIED_MOUNTPOINT: &str = "/sys/fs/cgroup";
/// `USER_HZ`: cpuacct.stat counts in these ticks; a constant on Linux (containerd hardcodes it).
const CLOCK_TICKS: u64 = 100;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Errors of the cgroup layer, each naming the file or process it is about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file exists but could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's content is not what the kernel writes.
    #[error("parse {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Malformed,
    },
    /// None of the process's cgroup directories exists any more.
    #[error("cgroup of pid {pid} has been deleted")]
    Deleted {
        /// The process whose cgroup was looked up.
        pid: u32,
    },
    /// The metrics message did not encode.
    #[error("encode cgroup metrics: {source}")]
    Encode {
        /// Why.
        #[source]
        source: protobuf::Error,
    },
}

/// What is wrong with a file's content; [`CgroupError::Parse`] adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn malformed(what: &str, line: &str) -> Malformed {
    Malformed(format!("{what}: {line:?}"))
}

// ---- Discovery -----------------------------------------------------------------------------

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
/// Clones share the directories and the [open files](FileCache) Stats re-reads.
#[derive(Clone, Default)]
pub struct V1Paths {
    dirs: Arc<BTreeMap<String, PathBuf>>,
    files: SharedFiles,
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

/// A container's cgroup v2 directory. Derefs to the path; clones share the [open
/// files](FileCache) Stats re-reads.
#[derive(Clone)]
pub struct V2Dir {
    dir: Arc<Path>,
    files: SharedFiles,
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

/// The cgroup v1 files of the OOM notification protocol: write `"<eventfd> <fd of oom_control>"`
/// into `event_control`, then each 8-byte read of the eventfd is one OOM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomControlFiles {
    /// `memory.oom_control` of the container's memory cgroup.
    pub oom_control: PathBuf,
    /// `cgroup.event_control` of the same directory.
    pub event_control: PathBuf,
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

/// A container's cgroup, in the version containerd would use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerCgroup {
    /// Legacy or hybrid host: one directory per v1 controller.
    V1(V1Paths),
    /// Unified host: the container's cgroup2 directory.
    V2(V2Dir),
}

impl ContainerCgroup {
    /// Finds the cgroup of `pid` from `/proc/<pid>/cgroup` and the shim's mount table, keeping
    /// only directories that exist (containerd's `cgroup1.Load`).
    pub fn load(pid: u32) -> Result<Self, CgroupError> {
        let cgroup_file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let cgroup = read_required(&cgroup_file)?;
        let mountinfo = read_required(Path::new("/proc/self/mountinfo"))?;
        let found =
            Self::resolve(&cgroup, &mountinfo).map_err(|source| CgroupError::Parse { path: cgroup_file, source })?;
        let found = match found {
            Self::V1(paths) => Self::V1(paths.iter().filter(|(_, d)| path_exists(d)).collect()),
            Self::V2(dir) => Self::V2(dir),
        };
        if found.exists() {
            Ok(found)
        } else {
            Err(CgroupError::Deleted { pid })
        }
    }

    /// Pure resolution from `/proc/<pid>/cgroup` and `/proc/self/mountinfo` contents.
    pub fn resolve(proc_cgroup: &str, mountinfo: &str) -> Result<Self, Malformed> {
        let mounts = parse_mountinfo(mountinfo);
        let cg = parse_proc_cgroup(proc_cgroup)?;
        if is_unified(&mounts) {
            return resolve_v2(&cg, &mounts).map(|dir| Self::V2(dir.into()));
        }
        let paths = resolve_v1(&cg, &mounts)?;
        if paths.is_empty() {
            return Err(Malformed("no cgroup v1 controller of the process is mounted".into()));
        }
        Ok(Self::V1(paths))
    }

    /// Whether the cgroup is still there (any v1 controller directory, or the v2 directory).
    pub fn exists(&self) -> bool {
        match self {
            Self::V1(paths) => paths.iter().any(|(_, d)| path_exists(d)),
            Self::V2(dir) => path_exists(dir),
        }
    }

    /// The container's metrics as the `Any` containerd's Stats reply carries. The first call
    /// opens the files; later ones (from any clone) re-read them.
    pub fn stats(&self) -> Result<Any, CgroupError> {
        let (type_url, encoded) = match self {
            Self::V1(paths) => (V1_METRICS_TYPE_URL, v1_metrics(paths)?.write_to_bytes()),
            Self::V2(dir) => (V2_METRICS_TYPE_URL, v2_metrics(dir)?.write_to_bytes()),
        };
        let mut any = Any::new();
        any.type_url = type_url.to_owned();
        any.value = encoded.map_err(|source| CgroupError::Encode { source })?;
        Ok(any)
    }
}

// ---- File reading and value parsing --------------------------------------------------------

fn path_exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

fn read_required(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

/// The [`FileCache`] of one cgroup, shared by the clones of its [`ContainerCgroup`].
#[derive(Clone, Default)]
struct SharedFiles(Arc<Mutex<FileCache>>);

impl SharedFiles {
    fn lock(&self) -> MutexGuard<'_, FileCache> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The files Stats reads, each opened at its first read and re-read with `pread` afterwards:
/// no path walk, open or close per call (containerd's Go shim and the first version of this one
/// spent most of a Stats call there). kernfs regenerates a file's content on a read at offset
/// 0, so a re-read is as fresh as a new open. A file that did not exist at its first read is
/// remembered as missing (the kernel creates all of a controller's files at mkdir), and so is
/// one whose cgroup has been removed since (`ENODEV`). Content goes into one reused buffer.
#[derive(Default)]
struct FileCache {
    /// Path → open file, or `None` for a file that does not exist; in first-read order.
    files: Vec<(PathBuf, Option<File>)>,
    /// Where the next lookup starts: reads come in the same order on every call.
    next: usize,
    /// Calls so far; every [`RECHECK_MISSING`]th one looks for missing files again.
    calls: u64,
    buf: Vec<u8>,
    host: Option<Arc<HostInfo>>,
}

/// Whether `path` is `dir/name`, compared without building it.
fn is_path(path: &Path, dir: &Path, name: &str) -> bool {
    let (p, d) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    let d = d.strip_suffix(b"/").unwrap_or(d);
    p.len() == d.len() + 1 + name.len() && p.starts_with(d) && p[d.len()] == b'/' && p.ends_with(name.as_bytes())
}

/// Reads the whole file from offset 0 into `buf` (grown as needed) and returns its length. A
/// short read is the end: kernfs produces a cgroup file as one record, so a read returns all of
/// it that fits, and regular files are short only at the end; that saves a second `pread` per
/// file.
fn pread_all(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(16 * 1024, 0);
    }
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let want = buf.len() - len;
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok(len),
            Ok(n) => {
                len += n;
                if n < want {
                    return Ok(len);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How often (in Stats calls) files remembered as missing are looked for again: a v2
/// controller enabled after the container started (its parent's `cgroup.subtree_control`) adds
/// its files to the existing directory.
const RECHECK_MISSING: u64 = 64;

impl FileCache {
    /// Starts one Stats call.
    fn begin(&mut self) {
        self.calls += 1;
    }

    /// Block device names and huge page sizes, read at the first Stats.
    fn host(&mut self) -> Arc<HostInfo> {
        self.host.get_or_insert_with(|| Arc::new(HostInfo::read())).clone()
    }

    /// The index of `dir/name` in `files`, opening it on first use.
    fn slot(&mut self, dir: &Path, name: &str) -> Result<usize, CgroupError> {
        let n = self.files.len();
        let found = (0..n).map(|k| (self.next + k) % n).find(|&i| is_path(&self.files[i].0, dir, name));
        let recheck = self.calls.is_multiple_of(RECHECK_MISSING);
        let i = match found {
            Some(i) if recheck && self.files[i].1.is_none() => {
                let path = &self.files[i].0;
                match File::open(path) {
                    Ok(file) => self.files[i].1 = Some(file),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CgroupError::Read { path: path.clone(), source }),
                }
                i
            }
            Some(i) => i,
            None => {
                let path = dir.join(name);
                let file = match File::open(&path) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(source) => return Err(CgroupError::Read { path, source }),
                };
                self.files.push((path, file));
                n
            }
        };
        self.next = i + 1;
        Ok(i)
    }

    /// Whether `dir/name` exists.
    fn exists(&mut self, dir: &Path, name: &str) -> Result<bool, CgroupError> {
        let i = self.slot(dir, name)?;
        Ok(self.files[i].1.is_some())
    }

    /// The content of `dir/name`; `None` when it does not exist (containerd's
    /// `IgnoreNotExist`). Valid until the next read.
    fn read(&mut self, dir: &Path, name: &str) -> Result<Option<&str>, CgroupError> {
        let i = self.slot(dir, name)?;
        let Self { files, buf, .. } = self;
        let (path, slot) = &mut files[i];
        let Some(file) = slot.as_ref() else { return Ok(None) };
        let len = match pread_all(file, buf) {
            Ok(len) => len,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) || e.kind() == io::ErrorKind::NotFound => {
                *slot = None;
                return Ok(None);
            }
            Err(source) => return Err(CgroupError::Read { path: path.clone(), source }),
        };
        match std::str::from_utf8(&buf[..len]) {
            Ok(text) => Ok(Some(text)),
            Err(_) => Err(CgroupError::Parse { path: path.clone(), source: Malformed("not UTF-8".into()) }),
        }
    }
}

/// Names `dir/file` in a parse error (built only on failure).
fn at<T>(dir: &Path, file: &str, r: Result<T, Malformed>) -> Result<T, CgroupError> {
    r.map_err(|source| CgroupError::Parse { path: dir.join(file), source })
}

/// containerd's `parseUint`: a decimal u64; negative values (in or out of i64 range) read as 0.
fn parse_uint(s: &str) -> Option<u64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let digits = s.strip_prefix('-')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(0)
}

/// Parses `key value` lines (memory.stat, cpu.stat, memory.events...), handing each pair to
/// `set`; blank lines are skipped. Nothing is allocated.
fn for_each_kv(content: &str, mut set: impl FnMut(&str, u64)) -> Result<(), Malformed> {
    for line in content.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(malformed("expected `key value`", line));
        };
        set(key, parse_uint(value).ok_or_else(|| malformed("not a number", line))?);
    }
    Ok(())
}

/// Reads a key-value file into `set`; false when the file is missing.
fn read_kv(f: &mut FileCache, dir: &Path, file: &str, set: impl FnMut(&str, u64)) -> Result<bool, CgroupError> {
    let Some(text) = f.read(dir, file)? else { return Ok(false) };
    at(dir, file, for_each_kv(text, set))?;
    Ok(true)
}

/// Sets the protobuf field named as the kernel's key (keys with no field are ignored; a
/// missing key leaves 0, as containerd's map lookups do).
macro_rules! set_field {
    ($msg:expr, $key:expr, $value:expr; $($field:ident),+ $(,)?) => {
        match $key {
            $( stringify!($field) => $msg.$field = $value, )+
            _ => {}
        }
    };
}

/// Reads a single-value file, `max` standing for `max`; `None` when missing.
fn read_value(f: &mut FileCache, dir: &Path, file: &str, max: u64) -> Result<Option<u64>, CgroupError> {
    let Some(text) = f.read(dir, file)? else { return Ok(None) };
    let trimmed = text.trim();
    let value = if trimmed == "max" { Some(max) } else { parse_uint(trimmed) };
    at(dir, file, value.ok_or_else(|| malformed("not a number", trimmed))).map(Some)
}

/// cgroup v1 `readUint`: `max` reads as 0.
fn v1_uint(f: &mut FileCache, dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    read_value(f, dir, file, 0)
}

/// cgroup v2 `getStatFileContentUint64`: `max` reads as `u64::MAX`, a missing file as 0.
fn v2_uint(f: &mut FileCache, dir: &Path, file: &str) -> Result<u64, CgroupError> {
    Ok(read_value(f, dir, file, u64::MAX)?.unwrap_or(0))
}

/// A huge page size and the names of its hugetlb files, built once.
#[derive(Debug)]
struct HugePage {
    /// `2MB`, `1GB`: the name the hugetlb controller uses.
    size: String,
    /// v1: usage_in_bytes, max_usage_in_bytes, failcnt; v2: current, max, events.
    files: [String; 6],
}

impl HugePage {
    fn new(size: &str) -> Self {
        let file = |name: &str| format!("hugetlb.{size}.{name}");
        Self {
            size: size.to_owned(),
            files: ["usage_in_bytes", "max_usage_in_bytes", "failcnt", "current", "max", "events"].map(file),
        }
    }
}

/// What the metrics need from the host rather than the cgroup: block device names
/// (`/proc/partitions`) and huge page sizes (`/sys/kernel/mm/hugepages`).
#[derive(Debug, Default)]
struct HostInfo {
    devices: HashMap<(u64, u64), String>,
    hugepages: Vec<HugePage>,
}

impl HostInfo {
    /// Reads both; either missing leaves it empty (containerd's behaviour on such hosts).
    fn read() -> Self {
        let devices = std::fs::read_to_string("/proc/partitions").map(|p| parse_partitions(&p)).unwrap_or_default();
        let mut names: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        let hugepages = names.iter().filter_map(|n| hugepage_size(n)).map(|s| HugePage::new(&s)).collect();
        Self { devices, hugepages }
    }
}

/// `/proc/partitions` → (major, minor) → `/dev/<name>`; the header and odd lines are skipped.
fn parse_partitions(content: &str) -> HashMap<(u64, u64), String> {
    let mut out = HashMap::new();
    for line in content.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [major, minor, _, name, ..] = f[..] {
            if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
                out.entry((major, minor)).or_insert_with(|| format!("/dev/{name}"));
            }
        }
    }
    out
}

/// `hugepages-2048kB` → `2MB`, the name the hugetlb controller uses in its file names.
fn hugepage_size(dir_name: &str) -> Option<String> {
    let kb: u64 = dir_name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
    Some(match kb {
        kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
        kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
        kb => format!("{kb}KB"),
    })
}

/// rdma.current / rdma.max lines: `<device> hca_handle=<n|max> hca_object=<n|max>`.
fn parse_rdma(content: &str) -> Vec<(String, u32, u32)> {
    let value = |v: &str| if v == "max" { Some(u32::MAX) } else { u32::try_from(parse_uint(v)?).ok() };
    let mut out = Vec::new();
    for line in content.lines() {
        let [device, a, b] = line.split_whitespace().collect::<Vec<_>>()[..] else { continue };
        let (mut handles, mut objects) = (0, 0);
        for kv in [a, b] {
            match kv.split_once('=').and_then(|(k, v)| Some((k, value(v)?))) {
                Some(("hca_handle", v)) => handles = v,
                Some(("hca_object", v)) => objects = v,
                _ => {}
            }
        }
        out.push((device.to_owned(), handles, objects));
    }
    out
}

// ---- cgroup v1 metrics ---------------------------------------------------------------------

/// Reads the v1 metrics of a container from its controller directories (containerd's
/// `cgroup1.Stat(IgnoreNotExist)`). Controllers that are absent or have lost files are skipped.
pub fn v1_metrics(dirs: &V1Paths) -> Result<v1::Metrics, CgroupError> {
    v1_metrics_with(dirs, &mut dirs.files.lock())
}

fn v1_metrics_with(dirs: &V1Paths, f: &mut FileCache) -> Result<v1::Metrics, CgroupError> {
    f.begin();
    let host = f.host();
    let mut m = v1::Metrics::new();
    let mut cpu = v1::CPUStat::new();
    cpu.usage = MessageField::some(v1_cpu_usage(f, dirs.get("cpuacct"))?);
    cpu.throttling = MessageField::some(v1_throttling(f, dirs.get("cpu"))?);
    m.cpu = MessageField::some(cpu);
    if let Some(dir) = dirs.get("pids") {
        if let Some(current) = v1_uint(f, dir, "pids.current")? {
            let mut p = v1::PidsStat::new();
            p.current = current;
            p.limit = v1_uint(f, dir, "pids.max")?.unwrap_or(0);
            m.pids = MessageField::some(p);
        }
    }
    if let Some(dir) = dirs.get("memory") {
        v1_memory(f, dir, &mut m)?;
    }
    if let Some(dir) = dirs.get("blkio") {
        m.blkio = MessageField::some(v1_blkio(f, dir, &host.devices)?);
    }
    if let Some(dir) = dirs.get("hugetlb") {
        for page in &host.hugepages {
            let [usage, max, failcnt, ..] = &page.files;
            let Some(usage) = v1_uint(f, dir, usage)? else { continue };
            let mut h = v1::HugetlbStat::new();
            h.pagesize.clone_from(&page.size);
            h.usage = usage;
            h.max = v1_uint(f, dir, max)?.unwrap_or(0);
            h.failcnt = v1_uint(f, dir, failcnt)?.unwrap_or(0);
            m.hugetlb.push(h);
        }
    }
    if let Some(dir) = dirs.get("rdma") {
        m.rdma = v1_rdma(f, dir)?.into();
    }
    Ok(m)
}

fn v1_cpu_usage(f: &mut FileCache, dir: Option<&Path>) -> Result<v1::CPUUsage, CgroupError> {
    let mut usage = v1::CPUUsage::new();
    let Some(dir) = dir else { return Ok(usage) };
    let (mut user, mut system) = (None, None);
    let found = read_kv(f, dir, "cpuacct.stat", |k, v| match k {
        "user" => user = Some(v),
        "system" => system = Some(v),
        _ => {}
    })?;
    if found {
        let ticks = |v: Option<u64>, key: &str| {
            let v = at(dir, "cpuacct.stat", v.ok_or_else(|| malformed("missing field", key)))?;
            Ok::<_, CgroupError>(v.saturating_mul(NANOS_PER_SEC) / CLOCK_TICKS)
        };
        usage.user = ticks(user, "user")?;
        usage.kernel = ticks(system, "system")?;
    }
    usage.total = v1_uint(f, dir, "cpuacct.usage")?.unwrap_or(0);
    if let Some(text) = f.read(dir, "cpuacct.usage_percpu")? {
        let values = text.split_whitespace().map(|v| v.parse::<u64>().map_err(|_| malformed("not a number", v)));
        usage.per_cpu = at(dir, "cpuacct.usage_percpu", values.collect())?;
    }
    Ok(usage)
}

fn v1_throttling(f: &mut FileCache, dir: Option<&Path>) -> Result<v1::Throttle, CgroupError> {
    let mut t = v1::Throttle::new();
    if let Some(dir) = dir {
        read_kv(f, dir, "cpu.stat", |k, v| match k {
            "nr_periods" => t.periods = v,
            "nr_throttled" => t.throttled_periods = v,
            "throttled_time" => t.throttled_time = v,
            _ => {}
        })?;
    }
    Ok(t)
}

/// Memory: present once `memory.stat` is readable, as in containerd.
fn v1_memory(f: &mut FileCache, dir: &Path, m: &mut v1::Metrics) -> Result<(), CgroupError> {
    let mut s = v1::MemoryStat::new();
    let found = read_kv(f, dir, "memory.stat", |k, v| match k {
        "pgpgin" => s.pg_pg_in = v,
        "pgpgout" => s.pg_pg_out = v,
        "pgfault" => s.pg_fault = v,
        "pgmajfault" => s.pg_maj_fault = v,
        "total_pgpgin" => s.total_pg_pg_in = v,
        "total_pgpgout" => s.total_pg_pg_out = v,
        "total_pgfault" => s.total_pg_fault = v,
        "total_pgmajfault" => s.total_pg_maj_fault = v,
        "hierarchical_memsw_limit" => s.hierarchical_swap_limit = v,
        k => set_field!(s, k, v; cache, rss, rss_huge, mapped_file, dirty, writeback, inactive_anon,
            active_anon, inactive_file, active_file, unevictable, hierarchical_memory_limit, total_cache,
            total_rss, total_rss_huge, total_mapped_file, total_dirty, total_writeback, total_inactive_anon,
            total_active_anon, total_inactive_file, total_active_file, total_unevictable),
    })?;
    if !found {
        return Ok(());
    }
    let [usage, swap, kernel, tcp] = &V1_MEMORY_ENTRY_FILES;
    s.usage = MessageField::some(v1_memory_entry(f, dir, usage)?);
    s.swap = MessageField::some(v1_memory_entry(f, dir, swap)?);
    s.kernel = MessageField::some(v1_memory_entry(f, dir, kernel)?);
    s.kernel_tcp = MessageField::some(v1_memory_entry(f, dir, tcp)?);
    m.memory = MessageField::some(s);
    let mut oom = v1::MemoryOomControl::new();
    if read_kv(f, dir, "memory.oom_control", |k, v| set_field!(oom, k, v; oom_kill_disable, under_oom, oom_kill))? {
        m.memory_oom_control = MessageField::some(oom);
    }
    Ok(())
}

/// usage, max usage, failcnt and limit of memory, memory+swap, kernel and kernel TCP memory.
const V1_MEMORY_ENTRY_FILES: [[&str; 4]; 4] = [
    ["memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt", "memory.limit_in_bytes"],
    [
        "memory.memsw.usage_in_bytes",
        "memory.memsw.max_usage_in_bytes",
        "memory.memsw.failcnt",
        "memory.memsw.limit_in_bytes",
    ],
    [
        "memory.kmem.usage_in_bytes",
        "memory.kmem.max_usage_in_bytes",
        "memory.kmem.failcnt",
        "memory.kmem.limit_in_bytes",
    ],
    [
        "memory.kmem.tcp.usage_in_bytes",
        "memory.kmem.tcp.max_usage_in_bytes",
        "memory.kmem.tcp.failcnt",
        "memory.kmem.tcp.limit_in_bytes",
    ],
];

fn v1_memory_entry(f: &mut FileCache, dir: &Path, files: &[&str; 4]) -> Result<v1::MemoryEntry, CgroupError> {
    let mut e = v1::MemoryEntry::new();
    e.usage = v1_uint(f, dir, files[0])?.unwrap_or(0);
    e.max = v1_uint(f, dir, files[1])?.unwrap_or(0);
    e.failcnt = v1_uint(f, dir, files[2])?.unwrap_or(0);
    e.limit = v1_uint(f, dir, files[3])?.unwrap_or(0);
    Ok(e)
}

/// Blkio: the CFQ `*_recursive` files when the kernel has them and they hold entries, otherwise
/// the throttle files (all current kernels), exactly as containerd chooses.
fn v1_blkio(
    f: &mut FileCache,
    dir: &Path,
    devices: &HashMap<(u64, u64), String>,
) -> Result<v1::BlkIOStat, CgroupError> {
    let mut st = v1::BlkIOStat::new();
    let mut found = 0;
    if f.exists(dir, "blkio.io_serviced_recursive")? {
        let files = [
            ("blkio.sectors_recursive", &mut st.sectors_recursive),
            ("blkio.io_service_bytes_recursive", &mut st.io_service_bytes_recursive),
            ("blkio.io_serviced_recursive", &mut st.io_serviced_recursive),
            ("blkio.io_queued_recursive", &mut st.io_queued_recursive),
            ("blkio.io_service_time_recursive", &mut st.io_service_time_recursive),
            ("blkio.io_wait_time_recursive", &mut st.io_wait_time_recursive),
            ("blkio.io_merged_recursive", &mut st.io_merged_recursive),
            ("blkio.time_recursive", &mut st.io_time_recursive),
        ];
        for (name, entries) in files {
            *entries = v1_blkio_entries(f, dir, name, devices)?;
            found += entries.len();
        }
    }
    if found == 0 {
        st.io_serviced_recursive = v1_blkio_entries(f, dir, "blkio.throttle.io_serviced", devices)?;
        st.io_service_bytes_recursive = v1_blkio_entries(f, dir, "blkio.throttle.io_service_bytes", devices)?;
    }
    Ok(st)
}

/// One blkio line, `major:minor [op] value`; `None` for blank and `Total n` lines.
fn parse_blkio_line(line: &str) -> Result<Option<(u64, u64, &str, u64)>, Malformed> {
    let mut f = line.split([' ', ':']).filter(|s| !s.is_empty());
    let fields = (f.next(), f.next(), f.next(), f.next(), f.next());
    let (major, minor, op, value) = match fields {
        (None, ..) | (Some("Total"), Some(_), None, ..) => return Ok(None),
        (Some(major), Some(minor), Some(value), None, _) => (major, minor, "", value),
        (Some(major), Some(minor), Some(op), Some(value), None) => (major, minor, op, value),
        _ => return Err(malformed("invalid blkio line", line)),
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| malformed("not a number", line));
    Ok(Some((num(major)?, num(minor)?, op, num(value)?)))
}

fn v1_blkio_entries(
    f: &mut FileCache,
    dir: &Path,
    name: &str,
    devices: &HashMap<(u64, u64), String>,
) -> Result<Vec<v1::BlkIOEntry>, CgroupError> {
    let Some(text) = f.read(dir, name)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((major, minor, op, value)) = at(dir, name, parse_blkio_line(line))? else { continue };
        let mut e = v1::BlkIOEntry::new();
        (e.major, e.minor, e.value) = (major, minor, value);
        op.clone_into(&mut e.op);
        e.device = devices.get(&(major, minor)).cloned().unwrap_or_default();
        out.push(e);
    }
    Ok(out)
}

fn v1_rdma(f: &mut FileCache, dir: &Path) -> Result<Option<v1::RdmaStat>, CgroupError> {
    let Some(current) = f.read(dir, "rdma.current")?.map(str::to_owned) else { return Ok(None) };
    let Some(max) = f.read(dir, "rdma.max")? else { return Ok(None) };
    // A device removed between the two reads: containerd reports nothing rather than a mismatch.
    if current.split('\n').count() != max.split('\n').count() {
        return Ok(None);
    }
    let entries = |text: &str| {
        let to_entry = |(device, hca_handles, hca_objects)| v1::RdmaEntry {
            device,
            hca_handles,
            hca_objects,
            ..Default::default()
        };
        parse_rdma(text).into_iter().map(to_entry).collect()
    };
    Ok(Some(v1::RdmaStat { current: entries(&current), limit: entries(max), ..Default::default() }))
}

// ---- cgroup v2 metrics ---------------------------------------------------------------------

/// Reads the v2 metrics of the cgroup directory `dir` (containerd's `cgroup2.Manager.Stat`),
/// PSI (cpu, memory and io pressure) included: containerd 2.3 passes it on to Kubernetes.
pub fn v2_metrics(dir: &V2Dir) -> Result<v2::Metrics, CgroupError> {
    v2_metrics_with(dir, &mut dir.files.lock())
}

fn v2_metrics_with(dir: &Path, f: &mut FileCache) -> Result<v2::Metrics, CgroupError> {
    f.begin();
    let host = f.host();
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = v2_uint(f, dir, "pids.current")?;
    pids.limit = v2_uint(f, dir, "pids.max")?;
    m.pids = MessageField::some(pids);
    m.cpu = MessageField::some(v2_cpu(f, dir)?);
    m.memory = MessageField::some(v2_memory(f, dir)?);
    if let Some(text) = f.read(dir, "memory.events")? {
        let present = !text.trim().is_empty();
        let events = at(dir, "memory.events", parse_memory_events(text))?;
        if present {
            m.memory_events = MessageField::some(events.to_proto());
        }
    }
    let mut io = v2::IOStat::new();
    io.usage = f.read(dir, "io.stat")?.map(parse_io_stat).unwrap_or_default();
    io.psi = read_psi(f, dir, "io.pressure")?.into();
    m.io = MessageField::some(io);
    let mut rdma = |file: &str| -> Result<Vec<v2::RdmaEntry>, CgroupError> {
        let text = f.read(dir, file)?.unwrap_or_default();
        let to_entry = |(device, hca_handles, hca_objects)| v2::RdmaEntry {
            device,
            hca_handles,
            hca_objects,
            ..Default::default()
        };
        Ok(parse_rdma(text).into_iter().map(to_entry).collect())
    };
    let (current, limit) = (rdma("rdma.current")?, rdma("rdma.max")?);
    m.rdma = MessageField::some(v2::RdmaStat { current, limit, ..Default::default() });
    for page in &host.hugepages {
        let [.., current, max, events] = &page.files;
        let mut h = v2::HugeTlbStat::new();
        h.pagesize.clone_from(&page.size);
        h.current = v2_uint(f, dir, current)?;
        h.max = v2_uint(f, dir, max)?;
        // containerd reads this one leniently: anything unreadable is 0.
        if let Ok(Some(text)) = f.read(dir, events) {
            let mut failcnt = 0;
            if for_each_kv(text, |k, v| {
                if k == "max" {
                    failcnt = v
                }
            })
            .is_ok()
            {
                h.failcnt = failcnt;
            }
        }
        m.hugetlb.push(h);
    }
    Ok(m)
}

fn v2_cpu(f: &mut FileCache, dir: &Path) -> Result<v2::CPUStat, CgroupError> {
    let mut cpu = v2::CPUStat::new();
    let found = read_kv(f, dir, "cpu.stat", |k, v| {
        set_field!(cpu, k, v; usage_usec, user_usec, system_usec, nr_periods, nr_throttled, throttled_usec,
            nr_bursts, burst_usec);
    })?;
    if found {
        cpu.psi = read_psi(f, dir, "cpu.pressure")?.into();
    }
    Ok(cpu)
}

/// Memory: all zero when `memory.stat` is missing (controller not enabled), as in containerd.
fn v2_memory(f: &mut FileCache, dir: &Path) -> Result<v2::MemoryStat, CgroupError> {
    let mut s = v2::MemoryStat::new();
    let found = read_kv(f, dir, "memory.stat", |k, v| {
        set_field!(s, k, v; anon, file, kernel_stack, slab, sock, shmem, file_mapped, file_dirty, file_writeback,
            anon_thp, inactive_anon, active_anon, inactive_file, active_file, unevictable, slab_reclaimable,
            slab_unreclaimable, pgfault, pgmajfault, workingset_refault, workingset_activate,
            workingset_nodereclaim, pgrefill, pgscan, pgsteal, pgactivate, pgdeactivate, pglazyfree,
            pglazyfreed, thp_fault_alloc, thp_collapse_alloc);
    })?;
    if !found {
        return Ok(s);
    }
    s.usage = v2_uint(f, dir, "memory.current")?;
    s.usage_limit = v2_uint(f, dir, "memory.max")?;
    s.max_usage = v2_uint(f, dir, "memory.peak")?;
    s.swap_usage = v2_uint(f, dir, "memory.swap.current")?;
    s.swap_limit = v2_uint(f, dir, "memory.swap.max")?;
    s.swap_max_usage = v2_uint(f, dir, "memory.swap.peak")?;
    s.psi = read_psi(f, dir, "memory.pressure")?.into();
    Ok(s)
}

/// io.stat lines: `major:minor rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`. Lenient as
/// containerd: unknown or bad pairs are skipped, a bad device number ends the list.
fn parse_io_stat(content: &str) -> Vec<v2::IOEntry> {
    let mut out = Vec::new();
    for line in content.lines() {
        let mut parts = line.split(' ');
        let Some((major, minor)) = parts.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { break };
        let mut e = v2::IOEntry { major, minor, ..Default::default() };
        for (key, value) in parts.filter_map(|kv| kv.split_once('=')) {
            let Ok(value) = value.parse::<u64>() else { continue };
            match key {
                "rbytes" => e.rbytes = value,
                "wbytes" => e.wbytes = value,
                "rios" => e.rios = value,
                "wios" => e.wios = value,
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

fn read_psi(f: &mut FileCache, dir: &Path, file: &str) -> Result<Option<v2::PSIStats>, CgroupError> {
    Ok(f.read(dir, file)?.and_then(parse_psi))
}

/// Pressure files: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` (and `full ...`).
/// Malformed content gives `None`, as containerd logs and drops it.
fn parse_psi(content: &str) -> Option<v2::PSIStats> {
    let mut psi = v2::PSIStats::new();
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            _ => continue,
        };
        let mut data = v2::PSIData::new();
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => data.avg10 = value.parse().ok()?,
                "avg60" => data.avg60 = value.parse().ok()?,
                "avg300" => data.avg300 = value.parse().ok()?,
                "total" => data.total = value.parse().ok()?,
                _ => {}
            }
        }
        *slot = MessageField::some(data);
    }
    Some(psi)
}

// ---- OOM helpers (cgroup v2) ---------------------------------------------------------------

/// The counters of a v2 `memory.events` file. An OOM watcher compares `oom_kill` with the last
/// value it saw (containerd#6323: `oom` is also charged to ancestors, `oom_kill` is not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage went over `memory.low`.
    pub low: u64,
    /// Times usage was throttled over `memory.high`.
    pub high: u64,
    /// Times usage hit `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked for this cgroup.
    pub oom: u64,
    /// Processes of this cgroup killed by the OOM killer.
    pub oom_kill: u64,
    /// Group kills (`memory.oom.group`).
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    fn to_proto(self) -> v2::MemoryEvents {
        v2::MemoryEvents {
            low: self.low,
            high: self.high,
            max: self.max,
            oom: self.oom,
            oom_kill: self.oom_kill,
            oom_group_kill: self.oom_group_kill,
            ..Default::default()
        }
    }
}

/// Parses `memory.events` content; keys it does not know are ignored.
pub fn parse_memory_events(content: &str) -> Result<MemoryEvents, Malformed> {
    let mut ev = MemoryEvents::default();
    for_each_kv(content, |k, v| set_field!(ev, k, v; low, high, max, oom, oom_kill, oom_group_kill))?;
    Ok(ev)
}

/// Reads `<dir>/memory.events`; `None` when the file is gone (cgroup deleted or no memory
/// controller).
pub fn read_memory_events(dir: &Path) -> Result<Option<MemoryEvents>, CgroupError> {
    let path = dir.join("memory.events");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    parse_memory_events(&text).map(Some).map_err(|source| CgroupError::Parse { path, source })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Debian 11 style hybrid host (systemd), as seen by a shim: v1 controllers under
    /// /sys/fs/cgroup/<controllers>, cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID_MOUNTINFO: &str = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
33 25 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,blkio
34 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
35 25 0:32 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,hugetlb
36 25 0:33 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,devices
37 25 0:34 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,freezer
38 25 0:35 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:21 - cgroup cgroup rw,cpuset
39 28 259:1 / /var/lib/containerd rw,relatime shared:30 - ext4 /dev/nvme0n1p1 rw
";

    /// `/proc/<pid>/cgroup` of a container runc created with the cgroupfs driver on that host.
    const HYBRID_PROC_CGROUP: &str = "\
12:cpuset:/default/redis
11:freezer:/default/redis
10:devices:/default/redis
9:hugetlb:/default/redis
8:pids:/default/redis
7:blkio:/default/redis
6:net_cls,net_prio:/default/redis
5:memory:/default/redis
4:cpu,cpuacct:/default/redis
1:name=systemd:/default/redis
0::/default/redis
";

    /// Debian 12 style unified host.
    const UNIFIED_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
30 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,errors=remount-ro
";

    const UNIFIED_PROC_CGROUP: &str = "0::/k8s.io/4f1c2b7d\n";

    static SEQ: AtomicU32 = AtomicU32::new(0);

    /// A scratch directory tree standing in for cgroupfs, removed on drop.
    struct TempTree(PathBuf);

    impl TempTree {
        fn new(tag: &str) -> Self {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("shim-cgroups-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, content: &str) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }

        fn dir(&self, rel: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(&path).unwrap();
            path
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_hybrid_proc_cgroup_with_combined_and_named_hierarchies() {
        let cg = parse_proc_cgroup(HYBRID_PROC_CGROUP).unwrap();
        assert_eq!(cg.v1.len(), 12);
        for c in ["cpu", "cpuacct", "net_cls", "net_prio", "memory", "name=systemd", "pids", "blkio"] {
            assert_eq!(cg.v1.get(c).map(String::as_str), Some("/default/redis"), "{c}");
        }
        assert_eq!(cg.unified.as_deref(), Some("/default/redis"));
    }

    #[test]
    fn parses_unified_proc_cgroup_and_rejects_malformed_lines() {
        let cg = parse_proc_cgroup(UNIFIED_PROC_CGROUP).unwrap();
        assert!(cg.v1.is_empty());
        assert_eq!(cg.unified.as_deref(), Some("/k8s.io/4f1c2b7d"));
        // A path may itself contain colons: only the first two separate fields.
        let cg = parse_proc_cgroup("0::/a:b\n").unwrap();
        assert_eq!(cg.unified.as_deref(), Some("/a:b"));
        assert!(parse_proc_cgroup("4:memory\n").is_err());
    }

    #[test]
    fn parses_mountinfo_fields_and_escapes() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 14);
        let cpu = &mounts[4];
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.root, "/");
        assert_eq!(cpu.fs_type, "cgroup");
        assert_eq!(cpu.super_options, ["rw", "cpu", "cpuacct"]);
        // No optional fields, an escaped space, and a junk line that is skipped.
        let mounts = parse_mountinfo(
            "40 25 0:36 /a\\040b /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\nnot a mountinfo line\n",
        );
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].root, "/a b");
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my cgroups"));
        assert_eq!(mounts[0].super_options, ["rw", "memory"]);
    }

    #[test]
    fn detects_the_cgroup_mode_like_containerd() {
        assert!(!is_unified(&parse_mountinfo(HYBRID_MOUNTINFO)));
        assert!(is_unified(&parse_mountinfo(UNIFIED_MOUNTINFO)));
        let legacy: String =
            HYBRID_MOUNTINFO.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
        assert!(!is_unified(&parse_mountinfo(&legacy)));
        // cgroup2 over a tmpfs on /sys/fs/cgroup: the last mount is the visible one.
        let stacked =
            "25 22 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n26 25 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(is_unified(&parse_mountinfo(stacked)));
    }

    #[test]
    fn resolves_hybrid_host_to_v1_controller_directories() {
        let ContainerCgroup::V1(paths) = ContainerCgroup::resolve(HYBRID_PROC_CGROUP, HYBRID_MOUNTINFO).unwrap() else {
            panic!("hybrid host must use v1");
        };
        let dir = |c| paths.get(c).map(Path::to_path_buf);
        assert_eq!(dir("memory"), Some(PathBuf::from("/sys/fs/cgroup/memory/default/redis")));
        assert_eq!(dir("cpu"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/default/redis")));
        assert_eq!(dir("cpuacct"), dir("cpu"));
        assert_eq!(dir("net_prio"), Some(PathBuf::from("/sys/fs/cgroup/net_cls,net_prio/default/redis")));
        assert_eq!(dir("name=systemd"), Some(PathBuf::from("/sys/fs/cgroup/systemd/default/redis")));
        assert_eq!(paths.iter().count(), 12);
        let oom = paths.oom_files().unwrap();
        assert_eq!(oom.oom_control, Path::new("/sys/fs/cgroup/memory/default/redis/memory.oom_control"));
        assert_eq!(oom.event_control, Path::new("/sys/fs/cgroup/memory/default/redis/cgroup.event_control"));
    }

    #[test]
    fn resolves_unified_host_to_the_cgroup2_directory() {
        let found = ContainerCgroup::resolve(UNIFIED_PROC_CGROUP, UNIFIED_MOUNTINFO).unwrap();
        assert_eq!(found, ContainerCgroup::V2(PathBuf::from("/sys/fs/cgroup/k8s.io/4f1c2b7d").into()));
        let err = ContainerCgroup::resolve("1:name=systemd:/x\n", UNIFIED_MOUNTINFO).unwrap_err();
        assert!(err.0.contains("0::"), "{err}");
    }

    #[test]
    fn strips_the_mount_root_of_nested_hierarchies_and_skips_unmounted_controllers() {
        // Inside a container without a cgroup namespace: the hierarchy's /docker/abc is mounted.
        let mounts = parse_mountinfo(
            "31 25 0:28 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:29 /docker/abcdef /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n",
        );
        let cg = parse_proc_cgroup("5:memory:/docker/abc/sub\n8:pids:/docker/abc/sub\n3:rdma:/\n").unwrap();
        let paths = resolve_v1(&cg, &mounts).unwrap();
        assert_eq!(paths.get("memory"), Some(Path::new("/sys/fs/cgroup/memory/sub")));
        // /docker/abcdef is not a parent of /docker/abc/sub: the path is taken as is.
        assert_eq!(paths.get("pids"), Some(Path::new("/sys/fs/cgroup/pids/docker/abc/sub")));
        assert_eq!(paths.get("rdma"), None);
    }

    #[test]
    fn rejects_paths_that_escape_the_mount() {
        let cg = parse_proc_cgroup("0::/../../etc\n").unwrap();
        assert!(resolve_v2(&cg, &parse_mountinfo(UNIFIED_MOUNTINFO)).is_err());
        let cg = parse_proc_cgroup("5:memory:relative\n").unwrap();
        assert!(resolve_v1(&cg, &parse_mountinfo(HYBRID_MOUNTINFO)).is_err());
    }

    #[test]
    fn parses_numbers_like_containerd() {
        assert_eq!(parse_uint("42"), Some(42));
        assert_eq!(parse_uint("-1"), Some(0));
        assert_eq!(parse_uint("-99999999999999999999999"), Some(0));
        assert_eq!(parse_uint("abc"), None);
        assert_eq!(parse_uint("-"), None);
        assert_eq!(hugepage_size("hugepages-2048kB").as_deref(), Some("2MB"));
        assert_eq!(hugepage_size("hugepages-1048576kB").as_deref(), Some("1GB"));
        assert_eq!(hugepage_size("hugepages-64kB").as_deref(), Some("64KB"));
        assert_eq!(hugepage_size("other"), None);
    }

    const V1_MEMORY_STAT: &str = "\
cache 4096000
rss 1052672
rss_huge 2097152
shmem 0
mapped_file 1234
dirty 8192
writeback 4096
swap 0
pgpgin 2000
pgpgout 1500
pgfault 3000
pgmajfault 7
inactive_anon 100
active_anon 200
inactive_file 300
active_file 400
unevictable 16
hierarchical_memory_limit 268435456
hierarchical_memsw_limit 9223372036854771712
total_cache 5096000
total_rss 2052672
total_rss_huge 2097152
total_shmem 0
total_mapped_file 2234
total_dirty 9192
total_writeback 5096
total_swap 0
total_pgpgin 3000
total_pgpgout 2500
total_pgfault 4000
total_pgmajfault 8
total_inactive_anon 101
total_active_anon 201
total_inactive_file 301
total_active_file 401
total_unevictable 17
";

    const PARTITIONS: &str =
        "major minor  #blocks  name\n\n 259        0   20971520 nvme0n1\n   8        0   1048576 sda\n";

    /// A v1 container cgroup as the kernel lays it out, with cpu and cpuacct combined.
    fn v1_tree() -> (TempTree, V1Paths) {
        let t = TempTree::new("v1");
        t.write("memory/c1/memory.stat", V1_MEMORY_STAT);
        for (file, value) in [
            ("usage_in_bytes", "5148672"),
            ("max_usage_in_bytes", "6000000"),
            ("failcnt", "3"),
            ("limit_in_bytes", "268435456"),
            ("memsw.usage_in_bytes", "5148673"),
            ("memsw.max_usage_in_bytes", "6000001"),
            ("memsw.failcnt", "0"),
            ("memsw.limit_in_bytes", "9223372036854771712"),
            ("kmem.usage_in_bytes", "300000"),
            ("kmem.max_usage_in_bytes", "400000"),
            ("kmem.failcnt", "0"),
            ("kmem.limit_in_bytes", "9223372036854771712"),
            ("kmem.tcp.usage_in_bytes", "0"),
            ("kmem.tcp.max_usage_in_bytes", "0"),
            ("kmem.tcp.failcnt", "0"),
            ("kmem.tcp.limit_in_bytes", "9223372036854771712"),
        ] {
            t.write(&format!("memory/c1/memory.{file}"), &format!("{value}\n"));
        }
        t.write("memory/c1/memory.oom_control", "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n");
        t.write("cpu,cpuacct/c1/cpuacct.stat", "user 150\nsystem 50\n");
        t.write("cpu,cpuacct/c1/cpuacct.usage", "2000000000\n");
        t.write("cpu,cpuacct/c1/cpuacct.usage_percpu", "1000000000 600000000 400000000 0 \n");
        t.write("cpu,cpuacct/c1/cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n");
        t.write("pids/c1/pids.current", "3\n");
        t.write("pids/c1/pids.max", "max\n");
        let io =
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 12288\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 12288\nTotal 12288\n";
        t.write("blkio/c1/blkio.throttle.io_service_bytes", io);
        t.write("blkio/c1/blkio.throttle.io_serviced", "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n");
        t.write("hugetlb/c1/hugetlb.2MB.usage_in_bytes", "2097152\n");
        t.write("hugetlb/c1/hugetlb.2MB.max_usage_in_bytes", "4194304\n");
        t.write("hugetlb/c1/hugetlb.2MB.failcnt", "1\n");
        let paths = [
            ("memory", t.0.join("memory/c1")),
            ("cpu", t.0.join("cpu,cpuacct/c1")),
            ("cpuacct", t.0.join("cpu,cpuacct/c1")),
            ("pids", t.0.join("pids/c1")),
            ("blkio", t.0.join("blkio/c1")),
            ("hugetlb", t.0.join("hugetlb/c1")),
        ]
        .into_iter()
        .collect();
        (t, paths)
    }

    fn v1_metrics_on(dirs: &V1Paths, host: HostInfo) -> Result<v1::Metrics, CgroupError> {
        v1_metrics_with(dirs, &mut FileCache { host: Some(Arc::new(host)), ..FileCache::default() })
    }

    fn v2_metrics_on(dir: &Path, sizes: &[String]) -> Result<v2::Metrics, CgroupError> {
        let host = HostInfo { devices: HashMap::new(), hugepages: sizes.iter().map(|s| HugePage::new(s)).collect() };
        v2_metrics_with(dir, &mut FileCache { host: Some(Arc::new(host)), ..FileCache::default() })
    }

    fn host() -> HostInfo {
        HostInfo { devices: parse_partitions(PARTITIONS), hugepages: vec![HugePage::new("1GB"), HugePage::new("2MB")] }
    }

    #[test]
    fn v1_metrics_read_every_controller() {
        let (_t, paths) = v1_tree();
        let m = v1_metrics_on(&paths, host()).unwrap();

        let usage = &m.cpu.usage;
        assert_eq!((usage.total, usage.user, usage.kernel), (2_000_000_000, 1_500_000_000, 500_000_000));
        assert_eq!(usage.per_cpu, [1_000_000_000, 600_000_000, 400_000_000, 0]);
        let th = &m.cpu.throttling;
        assert_eq!((th.periods, th.throttled_periods, th.throttled_time), (10, 2, 5000));

        assert_eq!((m.pids.current, m.pids.limit), (3, 0), "v1 pids `max` reads as 0, as in containerd");

        let mem = &m.memory;
        assert_eq!((mem.cache, mem.rss, mem.rss_huge, mem.mapped_file), (4_096_000, 1_052_672, 2_097_152, 1234));
        assert_eq!((mem.dirty, mem.writeback, mem.pg_pg_in, mem.pg_pg_out), (8192, 4096, 2000, 1500));
        assert_eq!((mem.pg_fault, mem.pg_maj_fault), (3000, 7));
        assert_eq!((mem.inactive_anon, mem.active_anon, mem.inactive_file, mem.active_file), (100, 200, 300, 400));
        assert_eq!(mem.unevictable, 16);
        assert_eq!(
            (mem.hierarchical_memory_limit, mem.hierarchical_swap_limit),
            (268_435_456, 9_223_372_036_854_771_712)
        );
        assert_eq!(
            (mem.total_cache, mem.total_rss, mem.total_rss_huge, mem.total_mapped_file),
            (5_096_000, 2_052_672, 2_097_152, 2234)
        );
        assert_eq!(
            (mem.total_dirty, mem.total_writeback, mem.total_pg_pg_in, mem.total_pg_pg_out),
            (9192, 5096, 3000, 2500)
        );
        assert_eq!((mem.total_pg_fault, mem.total_pg_maj_fault, mem.total_unevictable), (4000, 8, 17));
        assert_eq!(
            (mem.total_inactive_anon, mem.total_active_anon, mem.total_inactive_file, mem.total_active_file),
            (101, 201, 301, 401)
        );
        let e = &mem.usage;
        assert_eq!((e.usage, e.max, e.failcnt, e.limit), (5_148_672, 6_000_000, 3, 268_435_456));
        let e = &mem.swap;
        assert_eq!((e.usage, e.max, e.failcnt, e.limit), (5_148_673, 6_000_001, 0, 9_223_372_036_854_771_712));
        assert_eq!((mem.kernel.usage, mem.kernel.max), (300_000, 400_000));
        assert_eq!(mem.kernel_tcp.limit, 9_223_372_036_854_771_712);
        let oom = &m.memory_oom_control;
        assert_eq!((oom.oom_kill_disable, oom.under_oom, oom.oom_kill), (0, 1, 2));

        // No CFQ files on this kernel: the throttle files, device named; the per-device Total is
        // an entry with op "Total" as in containerd, the grand `Total n` line is dropped.
        let bytes = &m.blkio.io_service_bytes_recursive;
        assert_eq!(bytes.len(), 6);
        assert_eq!((bytes[5].op.as_str(), bytes[5].value), ("Total", 12288));
        assert_eq!((bytes[0].major, bytes[0].minor, bytes[0].op.as_str(), bytes[0].value), (8, 0, "Read", 4096));
        assert_eq!(bytes[0].device, "/dev/sda");
        assert_eq!(bytes[1].op, "Write");
        let ops = &m.blkio.io_serviced_recursive;
        assert_eq!(ops.iter().map(|e| e.value).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(m.blkio.sectors_recursive.is_empty());

        // 1GB has no files in this cgroup and is skipped.
        assert_eq!(m.hugetlb.len(), 1);
        let h = &m.hugetlb[0];
        assert_eq!((h.pagesize.as_str(), h.usage, h.max, h.failcnt), ("2MB", 2_097_152, 4_194_304, 1));
        assert!(m.rdma.is_none());
    }

    #[test]
    fn v1_blkio_prefers_cfq_recursive_files_when_they_hold_entries() {
        let t = TempTree::new("cfq");
        let dir = t.dir("blkio/c1");
        t.write("blkio/c1/blkio.throttle.io_serviced", "8:0 Read 99\n");
        t.write("blkio/c1/blkio.io_serviced_recursive", "Total 0\n");
        let devices = parse_partitions(PARTITIONS);
        // Present but empty: fall back to the throttle files.
        assert_eq!(v1_blkio(&mut FileCache::default(), &dir, &devices).unwrap().io_serviced_recursive[0].value, 99);
        t.write("blkio/c1/blkio.io_serviced_recursive", "259:0 Read 5\n259:0 Write 6\nTotal 11\n");
        t.write("blkio/c1/blkio.time_recursive", "259:0 1234\n");
        let st = v1_blkio(&mut FileCache::default(), &dir, &devices).unwrap();
        assert_eq!(st.io_serviced_recursive.iter().map(|e| e.value).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(st.io_serviced_recursive[0].device, "/dev/nvme0n1");
        let time = &st.io_time_recursive[0];
        assert_eq!((time.op.as_str(), time.value), ("", 1234));
    }

    #[test]
    fn v1_missing_files_and_controllers_are_skipped() {
        let t = TempTree::new("sparse");
        // Memory without swap accounting, kmem or oom_control; pids at a root without pids.max.
        t.write("memory/memory.stat", "cache 1\nrss 2\n");
        t.write("memory/memory.usage_in_bytes", "10\n");
        t.write("pids/pids.current", "7\n");
        let paths: V1Paths = [
            ("memory", t.0.join("memory")),
            ("pids", t.0.join("pids")),
            ("cpuacct", t.0.join("gone")),
            ("blkio", t.0.join("gone")),
        ]
        .into_iter()
        .collect();
        let m = v1_metrics_on(&paths, HostInfo::default()).unwrap();
        assert_eq!((m.memory.cache, m.memory.rss, m.memory.usage.usage), (1, 2, 10));
        assert_eq!((m.memory.swap.usage, m.memory.kernel.limit), (0, 0));
        assert!(m.memory_oom_control.is_none());
        assert_eq!((m.pids.current, m.pids.limit), (7, 0));
        assert_eq!(m.cpu.usage.total, 0);
        assert!(m.cpu.throttling.is_some());
        assert!(m.blkio.io_service_bytes_recursive.is_empty());
        assert!(m.hugetlb.is_empty());
        // Nothing at all: still a valid message with the cpu skeleton containerd always sends.
        let m = v1_metrics_on(&V1Paths::default(), HostInfo::default()).unwrap();
        assert!(m.cpu.usage.is_some() && m.memory.is_none() && m.pids.is_none());
    }

    #[test]
    fn v1_malformed_or_unreadable_files_are_errors_naming_the_path() {
        let t = TempTree::new("bad");
        t.write("memory/memory.stat", "cache lots\n");
        let paths: V1Paths = [("memory", t.0.join("memory"))].into_iter().collect();
        let err = v1_metrics_on(&paths, HostInfo::default()).unwrap_err();
        assert!(matches!(&err, CgroupError::Parse { path, .. } if path.ends_with("memory.stat")), "{err}");
        assert!(err.to_string().contains("memory.stat"), "{err}");

        t.write("cpuacct/cpuacct.stat", "user 1\n");
        let paths: V1Paths = [("cpuacct", t.0.join("cpuacct"))].into_iter().collect();
        let err = v1_metrics_on(&paths, HostInfo::default()).unwrap_err();
        assert!(err.to_string().contains("system"), "{err}");

        // A directory where a file should be: a read error, not a silent skip.
        t.dir("pids/pids.current");
        let paths: V1Paths = [("pids", t.0.join("pids"))].into_iter().collect();
        let err = v1_metrics_on(&paths, HostInfo::default()).unwrap_err();
        assert!(matches!(&err, CgroupError::Read { path, .. } if path.ends_with("pids.current")), "{err}");
    }

    #[test]
    fn v1_rdma_entries() {
        let t = TempTree::new("rdma");
        t.write("rdma/rdma.current", "mlx4_0 hca_handle=2 hca_object=2000\n");
        t.write("rdma/rdma.max", "mlx4_0 hca_handle=max hca_object=5000\n");
        let paths: V1Paths = [("rdma", t.0.join("rdma"))].into_iter().collect();
        let m = v1_metrics_on(&paths, HostInfo::default()).unwrap();
        let (cur, max) = (&m.rdma.current[0], &m.rdma.limit[0]);
        assert_eq!((cur.device.as_str(), cur.hca_handles, cur.hca_objects), ("mlx4_0", 2, 2000));
        assert_eq!((max.hca_handles, max.hca_objects), (u32::MAX, 5000));
    }

    const V2_MEMORY_STAT: &str = "\
anon 1048576
file 4194304
kernel 200000
kernel_stack 16384
pagetables 4096
percpu 0
sock 512
vmalloc 0
shmem 8
zswap 0
file_mapped 1234
file_dirty 8192
file_writeback 4096
swapcached 0
anon_thp 2097152
file_thp 0
inactive_anon 100
active_anon 200
inactive_file 300
active_file 400
unevictable 16
slab_reclaimable 5000
slab_unreclaimable 6000
slab 11000
workingset_refault_anon 0
workingset_refault_file 10
workingset_refault 10
workingset_activate 5
workingset_restore_anon 0
workingset_nodereclaim 3
pgscan 21
pgsteal 22
pgscan_kswapd 0
pgfault 3000
pgmajfault 7
pgrefill 23
pgactivate 24
pgdeactivate 25
pglazyfree 26
pglazyfreed 27
thp_fault_alloc 28
thp_collapse_alloc 29
";

    fn v2_tree() -> TempTree {
        let t = TempTree::new("v2");
        t.write("c1/cpu.stat", "usage_usec 2500000\nuser_usec 1500000\nsystem_usec 1000000\nnr_periods 20\nnr_throttled 4\nthrottled_usec 70000\nnr_bursts 1\nburst_usec 9\n");
        t.write(
            "c1/cpu.pressure",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=456\n",
        );
        t.write("c1/memory.stat", V2_MEMORY_STAT);
        t.write("c1/memory.current", "5242880\n");
        t.write("c1/memory.max", "max\n");
        t.write("c1/memory.peak", "6291456\n");
        t.write("c1/memory.swap.current", "4096\n");
        t.write("c1/memory.swap.max", "1073741824\n");
        t.write("c1/memory.events", "low 0\nhigh 1\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n");
        t.write("c1/pids.current", "2\n");
        t.write("c1/pids.max", "100\n");
        t.write("c1/io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=10 wbytes=20 rios=3 wios=4 dbytes=0 dios=0\n");
        t.write("c1/hugetlb.2MB.current", "0\n");
        t.write("c1/hugetlb.2MB.max", "max\n");
        t.write("c1/hugetlb.2MB.events", "max 3\n");
        t.write(
            "c1/memory.pressure",
            "some avg10=0.50 avg60=0.10 avg300=0.02 total=9000\nfull avg10=0.25 avg60=0.05 avg300=0.01 total=4000\n",
        );
        t.write(
            "c1/io.pressure",
            "some avg10=3.00 avg60=2.00 avg300=1.00 total=777\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        t
    }

    #[test]
    fn v2_metrics_read_every_file() {
        let t = v2_tree();
        let m = v2_metrics_on(&t.0.join("c1"), &["2MB".into()]).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (2, 100));

        let cpu = &m.cpu;
        assert_eq!((cpu.usage_usec, cpu.user_usec, cpu.system_usec), (2_500_000, 1_500_000, 1_000_000));
        assert_eq!((cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec), (20, 4, 70_000));
        assert_eq!((cpu.nr_bursts, cpu.burst_usec), (1, 9));
        assert_eq!((cpu.psi.some.avg10, cpu.psi.some.avg60, cpu.psi.some.total), (1.5, 0.25, 123_456));
        assert_eq!(cpu.psi.full.total, 456);

        let mem = &m.memory;
        assert_eq!((mem.usage, mem.usage_limit, mem.max_usage), (5_242_880, u64::MAX, 6_291_456));
        assert_eq!((mem.swap_usage, mem.swap_limit, mem.swap_max_usage), (4096, 1_073_741_824, 0));
        assert_eq!(
            (mem.anon, mem.file, mem.kernel_stack, mem.slab, mem.sock, mem.shmem),
            (1_048_576, 4_194_304, 16_384, 11_000, 512, 8)
        );
        assert_eq!((mem.file_mapped, mem.file_dirty, mem.file_writeback, mem.anon_thp), (1234, 8192, 4096, 2_097_152));
        assert_eq!(
            (mem.inactive_anon, mem.active_anon, mem.inactive_file, mem.active_file, mem.unevictable),
            (100, 200, 300, 400, 16)
        );
        assert_eq!((mem.slab_reclaimable, mem.slab_unreclaimable, mem.pgfault, mem.pgmajfault), (5000, 6000, 3000, 7));
        assert_eq!((mem.workingset_refault, mem.workingset_activate, mem.workingset_nodereclaim), (10, 5, 3));
        assert_eq!((mem.pgrefill, mem.pgscan, mem.pgsteal, mem.pgactivate, mem.pgdeactivate), (23, 21, 22, 24, 25));
        assert_eq!((mem.pglazyfree, mem.pglazyfreed, mem.thp_fault_alloc, mem.thp_collapse_alloc), (26, 27, 28, 29));
        let psi = &mem.psi;
        assert_eq!((psi.some.avg10, psi.some.avg60, psi.some.avg300, psi.some.total), (0.5, 0.1, 0.02, 9000));
        assert_eq!((psi.full.avg10, psi.full.total), (0.25, 4000));
        let psi = &m.io.psi;
        assert_eq!((psi.some.avg10, psi.some.avg300, psi.some.total, psi.full.total), (3.0, 1.0, 777, 0));

        let ev = &m.memory_events;
        assert_eq!((ev.low, ev.high, ev.max, ev.oom, ev.oom_kill, ev.oom_group_kill), (0, 1, 12, 2, 1, 0));

        let io = &m.io.usage;
        assert_eq!(io.len(), 2);
        assert_eq!(
            (io[0].major, io[0].minor, io[0].rbytes, io[0].wbytes, io[0].rios, io[0].wios),
            (8, 0, 4096, 8192, 1, 2)
        );
        assert_eq!((io[1].major, io[1].minor, io[1].wios), (253, 1, 4));

        assert!(m.rdma.is_some() && m.rdma.current.is_empty());
        let h = &m.hugetlb[0];
        assert_eq!((h.pagesize.as_str(), h.current, h.max, h.failcnt), ("2MB", 0, u64::MAX, 3));
    }

    #[test]
    fn v2_missing_files_read_as_defaults() {
        let t = TempTree::new("v2-empty");
        let dir = t.dir("c1");
        let m = v2_metrics_on(&dir, &["2MB".into()]).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (0, 0));
        assert_eq!(m.cpu.usage_usec, 0);
        assert_eq!(m.memory.usage, 0);
        assert!(m.memory_events.is_none(), "containerd leaves memory_events out when the file is missing");
        assert!(m.io.usage.is_empty());
        assert_eq!(m.hugetlb.len(), 1, "one entry per host page size, as containerd");

        t.write("c1/memory.stat", "anon\n");
        let err = v2_metrics_on(&dir, &[]).unwrap_err();
        assert!(matches!(&err, CgroupError::Parse { path, .. } if path.ends_with("memory.stat")), "{err}");
    }

    #[test]
    fn stats_re_read_the_files_they_opened_and_see_new_content() {
        let t = v2_tree();
        let cg = ContainerCgroup::V2(t.0.join("c1").into());
        let decode = |cg: &ContainerCgroup| v2::Metrics::parse_from_bytes(&cg.stats().unwrap().value).unwrap();
        let m = decode(&cg);
        assert_eq!((m.pids.current, m.cpu.usage_usec, m.cpu.psi.some.total), (2, 2_500_000, 123_456));
        let ContainerCgroup::V2(dir) = &cg else { unreachable!() };
        let opened = |dir: &V2Dir| {
            let f = dir.files.lock();
            (f.files.len(), f.files.iter().filter(|(_, file)| file.is_some()).count())
        };
        let (known, open) = opened(dir);
        assert!(open >= 15 && known > open, "{known} files looked up, {open} open");

        // New content in the same files (same inodes, as the kernel's files stay): a clone of the
        // cgroup, as the container actor hands out for each Stats, re-reads them, opens nothing.
        std::fs::write(t.0.join("c1/pids.current"), "7\n").unwrap();
        std::fs::write(t.0.join("c1/cpu.stat"), "usage_usec 9\nuser_usec 1\n").unwrap();
        std::fs::write(t.0.join("c1/cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        let clone = cg.clone();
        let m = decode(&clone);
        assert_eq!((m.pids.current, m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec), (7, 9, 1, 0));
        assert_eq!(m.cpu.psi.some.total, 5);
        assert!(m.cpu.psi.full.is_none());
        assert_eq!(opened(dir), (known, open));

        // A file that appears later (a controller enabled afterwards) is found again within
        // RECHECK_MISSING calls; until then it reads as missing, as at the first call.
        t.write("c1/memory.swap.peak", "8192\n");
        let peaks: Vec<u64> = (0..RECHECK_MISSING).map(|_| decode(&cg).memory.swap_max_usage).collect();
        assert_eq!(peaks[0], 0);
        assert_eq!(peaks.last(), Some(&8192));
        assert_eq!(opened(dir), (known, open + 1));
    }

    #[test]
    fn files_larger_than_the_buffer_are_read_whole() {
        let t = TempTree::new("big");
        let lines: String =
            (0..2000).map(|i| format!("8:{i} rbytes={i} wbytes=1 rios=2 wios=3 dbytes=0 dios=0\n")).collect();
        assert!(lines.len() > 64 * 1024);
        t.write("c1/io.stat", &lines);
        let dir = t.0.join("c1");
        let mut f = FileCache::default();
        for _ in 0..2 {
            let io = parse_io_stat(f.read(&dir, "io.stat").unwrap().unwrap());
            assert_eq!(io.len(), 2000);
            assert_eq!((io[1999].minor, io[1999].rbytes, io[1999].wios), (1999, 1999, 3));
        }
        assert!(f.read(&dir, "nothing").unwrap().is_none());
        assert!(!f.exists(&dir, "nothing").unwrap() && f.exists(&dir, "io.stat").unwrap());
        assert!(is_path(Path::new("/a/b/c.stat"), Path::new("/a/b/"), "c.stat"));
        assert!(!is_path(Path::new("/a/bc.stat"), Path::new("/a/b"), "c.stat"));
    }

    /// A cgroup of our own on the host's cgroup2 mount (hybrid or unified), removed on drop.
    struct RealCgroup(PathBuf);

    impl Drop for RealCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn a_real_cgroup_is_re_read_fresh_and_reads_as_gone_once_removed() {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let Some(mount) = mounts.iter().find(|m| m.fs_type == "cgroup2") else {
            eprintln!("no cgroup2 mount: skipped");
            return;
        };
        let cg = RealCgroup(mount.mount_point.join(format!("shim-cgroups-test-{}", std::process::id())));
        if let Err(e) = std::fs::create_dir(&cg.0) {
            eprintln!("cannot make a cgroup ({e}): skipped");
            return;
        }
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        std::fs::write(cg.0.join("cgroup.procs"), child.id().to_string()).unwrap();
        let cgroup = ContainerCgroup::V2(cg.0.clone().into());
        let usage = || v2::Metrics::parse_from_bytes(&cgroup.stats().unwrap().value).unwrap().cpu.usage_usec;
        let first = usage();
        // The same open cpu.stat, read again at offset 0, shows the CPU the loop has used since.
        let mut later = first;
        for _ in 0..10_000 {
            later = usage();
            if later > first {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(later > first, "cpu.stat re-read through the open file did not change: {first}");
        std::fs::remove_dir(&cg.0).unwrap();
        // Removed under the open files: reads fail with ENODEV, which reads as missing files.
        let m = v2::Metrics::parse_from_bytes(&cgroup.stats().unwrap().value).unwrap();
        assert_eq!((m.cpu.usage_usec, m.pids.current), (0, 0));
        assert!(!cgroup.exists());
    }

    #[test]
    fn memory_events_for_the_oom_watcher() {
        let t = v2_tree();
        let dir = t.0.join("c1");
        let ev = read_memory_events(&dir).unwrap().unwrap();
        assert_eq!(ev, MemoryEvents { low: 0, high: 1, max: 12, oom: 2, oom_kill: 1, oom_group_kill: 0 });
        assert_eq!(read_memory_events(&t.0.join("gone")).unwrap(), None);
        // Older kernels have no oom_group_kill; unknown future keys are ignored.
        let ev = parse_memory_events("low 0\nhigh 0\nmax 0\noom 4\noom_kill 3\nsock_throttled 9\n").unwrap();
        assert_eq!((ev.oom, ev.oom_kill, ev.oom_group_kill), (4, 3, 0));
        assert!(parse_memory_events("oom_kill one\n").is_err());
    }

    #[test]
    fn io_stat_and_psi_parsing_is_lenient_like_containerd() {
        let io = parse_io_stat(
            "8:0 rbytes=1 wbytes=x rios=2 junk\n\nbad line\n8:16 rbytes=5\nx:y rbytes=9\n8:32 rbytes=7\n",
        );
        assert_eq!(
            io.iter().map(|e| (e.minor, e.rbytes, e.wbytes, e.rios)).collect::<Vec<_>>(),
            [(0, 1, 0, 2), (16, 5, 0, 0)]
        );
        assert!(parse_psi("some avg10=oops\n").is_none());
        let psi = parse_psi("some avg10=0.10 avg60=0.20 avg300=0.30 total=40\n").unwrap();
        assert_eq!((psi.some.avg300, psi.some.total), (0.3, 40));
        assert!(psi.full.is_none());
    }

    #[test]
    fn stats_wraps_metrics_in_containerd_type_urls() {
        let (_t1, paths) = v1_tree();
        let cg = ContainerCgroup::V1(paths);
        assert!(cg.exists());
        let any = cg.stats().unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.memory.usage.usage, m.pids.current), (5_148_672, 3));

        let t2 = v2_tree();
        let cg = ContainerCgroup::V2(t2.0.join("c1").into());
        let any = cg.stats().unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.memory.usage, m.memory_events.oom_kill), (5_242_880, 1));

        assert!(!ContainerCgroup::V2(t2.0.join("gone").into()).exists());
        assert!(!ContainerCgroup::V1([("memory", t2.0.join("gone"))].into_iter().collect()).exists());
    }

    #[test]
    fn loads_the_cgroup_of_this_process() {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            eprintln!("no /proc: skipped");
            return;
        };
        let cg = ContainerCgroup::load(std::process::id()).unwrap();
        assert!(cg.exists());
        let any = cg.stats().unwrap();
        match &cg {
            ContainerCgroup::V1(paths) => {
                assert!(!is_unified(&parse_mountinfo(&mountinfo)));
                assert_eq!(any.type_url, V1_METRICS_TYPE_URL);
                let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
                if paths.get("cpuacct").is_some() {
                    assert!(m.cpu.usage.total > 0, "{paths:?}");
                }
                if paths.get("memory").is_some() {
                    assert!(m.memory.usage.usage > 0, "{paths:?}");
                    assert!(paths.oom_files().unwrap().oom_control.exists());
                }
            }
            ContainerCgroup::V2(dir) => {
                assert!(is_unified(&parse_mountinfo(&mountinfo)));
                assert_eq!(any.type_url, V2_METRICS_TYPE_URL);
                let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
                assert!(m.cpu.usage_usec > 0, "{dir:?}");
            }
        }
        let err = ContainerCgroup::load(u32::MAX).unwrap_err();
        assert!(matches!(err, CgroupError::Read { .. }), "{err}");
    }
}
