//! cgroup v1 metrics (containerd's `cgroup1.Stat(IgnoreNotExist)`).

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_protos::cgroups::metrics as v1;
use protobuf::MessageField;

use super::discovery::V1Paths;
use super::files::{at, parse_rdma, read_kv, v1_uint, FileCache};
use super::{malformed, CgroupError, Malformed};

/// `USER_HZ`: cpuacct.stat counts in these ticks; a constant on Linux (containerd hardcodes it).
const CLOCK_TICKS: u64 = 100;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Reads the v1 metrics of a container from its controller directories (containerd's
/// `cgroup1.Stat(IgnoreNotExist)`). Controllers that are absent or have lost files are skipped.
pub fn v1_metrics(dirs: &V1Paths) -> Result<v1::Metrics, CgroupError> {
    v1_metrics_with(dirs, &mut dirs.files.lock())
}

pub(super) fn v1_metrics_with(dirs: &V1Paths, f: &mut FileCache) -> Result<v1::Metrics, CgroupError> {
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
pub(super) fn v1_blkio(
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
