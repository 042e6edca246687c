//! Unit tests of the cgroup layer: parsers, resolution, and metrics over scratch trees.

use std::sync::atomic::{AtomicU32, Ordering};

use std::collections::HashMap;

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::Message;

use super::files::*;
use super::v1::*;
use super::v2::*;
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
    let mounts =
        parse_mountinfo("40 25 0:36 /a\\040b /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\nnot a mountinfo line\n");
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
    v1_metrics_with(dirs, &mut FileCache::with_host(host))
}

fn v2_metrics_on(dir: &Path, sizes: &[String]) -> Result<v2::Metrics, CgroupError> {
    let host = HostInfo { devices: HashMap::new(), hugepages: sizes.iter().map(|s| HugePage::new(s)).collect() };
    v2_metrics_with(dir, &mut FileCache::with_host(host))
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
    assert_eq!((mem.hierarchical_memory_limit, mem.hierarchical_swap_limit), (268_435_456, 9_223_372_036_854_771_712));
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
    let io =
        parse_io_stat("8:0 rbytes=1 wbytes=x rios=2 junk\n\nbad line\n8:16 rbytes=5\nx:y rbytes=9\n8:32 rbytes=7\n");
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
