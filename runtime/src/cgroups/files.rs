//! File reading and value parsing: the open-file cache Stats re-reads with `pread`, the
//! kernel's value formats, and what the metrics need from the host.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{malformed, CgroupError, Malformed};

pub(super) fn path_exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

pub(super) fn read_required(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

/// The [`FileCache`] of one cgroup, shared by the clones of its [`ContainerCgroup`].
#[derive(Clone, Default)]
pub(super) struct SharedFiles(Arc<Mutex<FileCache>>);

impl SharedFiles {
    pub(super) fn lock(&self) -> MutexGuard<'_, FileCache> {
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
pub(super) struct FileCache {
    /// Path → open file, or `None` for a file that does not exist; in first-read order.
    pub(super) files: Vec<(PathBuf, Option<File>)>,
    /// Where the next lookup starts: reads come in the same order on every call.
    next: usize,
    /// Calls so far; every [`RECHECK_MISSING`]th one looks for missing files again.
    calls: u64,
    buf: Vec<u8>,
    host: Option<Arc<HostInfo>>,
}

/// Whether `path` is `dir/name`, compared without building it.
pub(super) fn is_path(path: &Path, dir: &Path, name: &str) -> bool {
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
pub(super) const RECHECK_MISSING: u64 = 64;

impl FileCache {
    /// A cache whose host information is `host` instead of the real host's.
    #[cfg(test)]
    pub(super) fn with_host(host: HostInfo) -> Self {
        Self { host: Some(Arc::new(host)), ..Self::default() }
    }

    /// Starts one Stats call.
    pub(super) fn begin(&mut self) {
        self.calls += 1;
    }

    /// Block device names and huge page sizes, read at the first Stats.
    pub(super) fn host(&mut self) -> Arc<HostInfo> {
        self.host.get_or_insert_with(|| Arc::new(HostInfo::read())).clone()
    }

    /// The index of `dir/name` in `files`, opening it on first use.
    pub(super) fn slot(&mut self, dir: &Path, name: &str) -> Result<usize, CgroupError> {
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
    pub(super) fn exists(&mut self, dir: &Path, name: &str) -> Result<bool, CgroupError> {
        let i = self.slot(dir, name)?;
        Ok(self.files[i].1.is_some())
    }

    /// The content of `dir/name`; `None` when it does not exist (containerd's
    /// `IgnoreNotExist`). Valid until the next read.
    pub(super) fn read(&mut self, dir: &Path, name: &str) -> Result<Option<&str>, CgroupError> {
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
pub(super) fn at<T>(dir: &Path, file: &str, r: Result<T, Malformed>) -> Result<T, CgroupError> {
    r.map_err(|source| CgroupError::Parse { path: dir.join(file), source })
}

/// containerd's `parseUint`: a decimal u64; negative values (in or out of i64 range) read as 0.
pub(super) fn parse_uint(s: &str) -> Option<u64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let digits = s.strip_prefix('-')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(0)
}

/// Parses `key value` lines (memory.stat, cpu.stat, memory.events...), handing each pair to
/// `set`; blank lines are skipped. Nothing is allocated.
pub(super) fn for_each_kv(content: &str, mut set: impl FnMut(&str, u64)) -> Result<(), Malformed> {
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
pub(super) fn read_kv(
    f: &mut FileCache,
    dir: &Path,
    file: &str,
    set: impl FnMut(&str, u64),
) -> Result<bool, CgroupError> {
    let Some(text) = f.read(dir, file)? else { return Ok(false) };
    at(dir, file, for_each_kv(text, set))?;
    Ok(true)
}

/// Reads a single-value file, `max` standing for `max`; `None` when missing.
fn read_value(f: &mut FileCache, dir: &Path, file: &str, max: u64) -> Result<Option<u64>, CgroupError> {
    let Some(text) = f.read(dir, file)? else { return Ok(None) };
    let trimmed = text.trim();
    let value = if trimmed == "max" { Some(max) } else { parse_uint(trimmed) };
    at(dir, file, value.ok_or_else(|| malformed("not a number", trimmed))).map(Some)
}

/// cgroup v1 `readUint`: `max` reads as 0.
pub(super) fn v1_uint(f: &mut FileCache, dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    read_value(f, dir, file, 0)
}

/// cgroup v2 `getStatFileContentUint64`: `max` reads as `u64::MAX`, a missing file as 0.
pub(super) fn v2_uint(f: &mut FileCache, dir: &Path, file: &str) -> Result<u64, CgroupError> {
    Ok(read_value(f, dir, file, u64::MAX)?.unwrap_or(0))
}

/// A huge page size and the names of its hugetlb files, built once.
#[derive(Debug)]
pub(super) struct HugePage {
    /// `2MB`, `1GB`: the name the hugetlb controller uses.
    pub(super) size: String,
    /// v1: usage_in_bytes, max_usage_in_bytes, failcnt; v2: current, max, events.
    pub(super) files: [String; 6],
}

impl HugePage {
    pub(super) fn new(size: &str) -> Self {
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
pub(super) struct HostInfo {
    pub(super) devices: HashMap<(u64, u64), String>,
    pub(super) hugepages: Vec<HugePage>,
}

impl HostInfo {
    /// Reads both; either missing leaves it empty (containerd's behaviour on such hosts).
    pub(super) fn read() -> Self {
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
pub(super) fn parse_partitions(content: &str) -> HashMap<(u64, u64), String> {
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
pub(super) fn hugepage_size(dir_name: &str) -> Option<String> {
    let kb: u64 = dir_name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
    Some(match kb {
        kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
        kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
        kb => format!("{kb}KB"),
    })
}

/// rdma.current / rdma.max lines: `<device> hca_handle=<n|max> hca_object=<n|max>`.
pub(super) fn parse_rdma(content: &str) -> Vec<(String, u32, u32)> {
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
