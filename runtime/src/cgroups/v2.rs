//! cgroup v2 metrics (containerd's `cgroup2.Manager.Stat`), PSI included.

use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::MessageField;

use super::discovery::V2Dir;
use super::files::{at, for_each_kv, parse_rdma, read_kv, v2_uint, FileCache};
use super::oom_files::parse_memory_events;
use super::CgroupError;

/// Reads the v2 metrics of the cgroup directory `dir` (containerd's `cgroup2.Manager.Stat`),
/// PSI (cpu, memory and io pressure) included: containerd 2.3 passes it on to Kubernetes.
pub fn v2_metrics(dir: &V2Dir) -> Result<v2::Metrics, CgroupError> {
    v2_metrics_with(dir, &mut dir.files.lock())
}

pub(super) fn v2_metrics_with(dir: &Path, f: &mut FileCache) -> Result<v2::Metrics, CgroupError> {
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
pub(super) fn parse_io_stat(content: &str) -> Vec<v2::IOEntry> {
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
pub(super) fn parse_psi(content: &str) -> Option<v2::PSIStats> {
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
