//! Kubernetes pods through containerd's CRI plugin, on each containerd version hack/install-deps.sh
//! unpacks (1.6, 1.7, 2.x), with this shim and, as the reference, with that version's Go shim.
//! The client is the kubelet's API (`k8s-cri`'s tonic client) over containerd's socket.
//!
//! Each test is one containerd version with one shim, running every check of [`CHECKS`] in
//! order and printing a pass table. A check that the shim is known not to pass on that version
//! carries its reason in [`expected_failure`]; it must then fail (a stale annotation fails the
//! test too), so nothing is skipped silently. `CRI_PODS` (default 5) sets the size of the
//! concurrent-pods check (`make cri-long`: 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use shim_tests::containerd::wait_until;
use shim_tests::cri::{v1 as cri, CriContainerd, Shim};

type Pod = (String, cri::PodSandboxConfig);

/// What the checks share: the long-running pod A with containers c1 (prints, loops) and c2
/// (exits 0 on SIGTERM).
struct Ctx {
    a: Pod,
    c1: String,
    c2: String,
}

type Check = fn(&CriContainerd, &mut Option<Ctx>);

const CHECKS: &[(&str, Check)] = &[
    ("one shim per pod (pause + 2 containers)", pod_grouping),
    ("ExecSync stdout/stderr/exit code", exec_sync),
    ("container log in CRI format at log_path", log_file),
    ("50 concurrent ExecSyncs across pods", exec_storm),
    ("ContainerStatus Completed/Error/OOMKilled", exit_status),
    ("ContainerStats/ListContainerStats", stats),
    ("UpdateContainerResources memory limit", update_resources),
    ("StopContainer grace period: SIGTERM, then SIGKILL", stop_grace),
    ("Stop/RemovePodSandbox leave nothing behind", teardown),
    ("concurrent pods of 3 containers", many_pods),
    ("containerd restart while pods run", restart),
    ("runc options from CRI config (BinaryName, Root, SystemdCgroup=false)", runc_options_wrap),
    ("runc options from CRI config (crun, Root, SystemdCgroup=false)", runc_options),
    ("runtime_type io.containerd.rsrunc.v2, options from config_path", runtimeoptions_path),
    ("runtime_type io.containerd.rsrunc.v2, options inline (config_body)", runtimeoptions_body),
    ("bad BinaryName: clear error, nothing left", bad_binary),
    ("unknown runtime option / missing options file: InvalidArgument naming them", bad_option),
    ("mount that cannot be made: error, pod keeps running", bad_mount),
    ("pod with its own network namespace (CNI bridge)", pod_netns),
];

/// The checks a shim is known not to pass on a version: (why, text the failure must contain,
/// so that an annotation cannot hide a different failure).
fn expected_failure(shim: Shim, version: &str, check: &str) -> Option<(&'static str, &'static str)> {
    const GO_RTOPTS: &str = "type with url runtimeoptions.v1.Options: not found";
    if version == "1.6" && check.contains("config_body") {
        let why = "containerd 1.6 sends runtimeoptions without config_body: inline options never reach a non-runc runtime type (use ConfigPath)";
        return Some((why, if shim == Shim::Go { GO_RTOPTS } else { "neither config_path nor config_body" }));
    }
    if shim == Shim::Go && (check.contains("rsrunc") || check.starts_with("unknown runtime option")) {
        let why = "the Go shim cannot decode runtimeoptions.v1.Options (what CRI sends for other runtime types)";
        return Some((why, GO_RTOPTS));
    }
    None
}

fn suite(version: &str, shim: Shim) {
    let c = CriContainerd::start(version, shim);
    let mut ctx = None;
    let mut rows = vec![];
    let mut bad = vec![];
    for (name, check) in CHECKS {
        let r = catch_unwind(AssertUnwindSafe(|| check(&c, &mut ctx)));
        let err = r.err().map(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let expected = expected_failure(shim, version, name);
        let row = match (&err, expected) {
            (None, None) => "pass".to_string(),
            (Some(e), Some((why, needle))) if e.contains(needle) => format!("expected failure: {why}"),
            (Some(e), Some((why, needle))) => {
                bad.push(format!("{name}: expected to fail with {needle:?} ({why}), failed otherwise: {e}"));
                "FAIL (another failure than annotated)".into()
            }
            (None, Some((why, _))) => {
                bad.push(format!("{name}: passed but annotated as an expected failure ({why})"));
                "UNEXPECTED PASS".into()
            }
            (Some(e), None) => {
                bad.push(format!("{name}: {e}"));
                "FAIL".into()
            }
        };
        if let Some(e) = &err {
            eprintln!("cri [{version} {shim:?}] {name}: {e}");
            // A failed check may leave its pods: remove them (pod A is kept for later checks)
            // so the next checks start clean.
            let keep = ctx.as_ref().map(|x: &Ctx| x.a.0.clone()).unwrap_or_default();
            let req = cri::ListPodSandboxRequest { filter: None };
            for p in c.call(|mut cl| async move { cl.list_pod_sandbox(req).await }).map(|r| r.items).unwrap_or_default()
            {
                if p.id != keep {
                    let _ = c.remove_pod(&p.id);
                }
            }
        }
        rows.push(format!("  {:<75} {row}", name));
    }
    eprintln!("cri: containerd {} ({}), {:?} shim:\n{}", c.version.key(), c.version.full(), shim, rows.join("\n"));
    drop(c);
    assert!(bad.is_empty(), "containerd {version} with the {shim:?} shim:\n{}", bad.join("\n"));
}

#[test]
fn containerd_2_rust_shim() {
    suite("2", Shim::Ours);
}
#[test]
fn containerd_2_go_shim() {
    suite("2", Shim::Go);
}
#[test]
fn containerd_1_7_rust_shim() {
    suite("1.7", Shim::Ours);
}
#[test]
fn containerd_1_7_go_shim() {
    suite("1.7", Shim::Go);
}
#[test]
fn containerd_1_6_rust_shim() {
    suite("1.6", Shim::Ours);
}
#[test]
fn containerd_1_6_go_shim() {
    suite("1.6", Shim::Go);
}

// --- helpers -------------------------------------------------------------------------------

const LOOP: &str = "while :; do sleep 1; done";

fn ctx(x: &mut Option<Ctx>) -> &Ctx {
    x.as_ref().expect("pod A was not created (first check failed)")
}

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split(' ').nth(1).unwrap().parse().unwrap()
}

fn exec_ok(c: &CriContainerd, id: &str, script: &str) -> String {
    let r = c.exec_sync(id, &["sh", "-c", script]).unwrap();
    assert_eq!(r.exit_code, 0, "exec {script:?} in {id}: {r:?}");
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn running(c: &CriContainerd, id: &str) -> bool {
    c.status(id).state == cri::ContainerState::ContainerRunning as i32
}

fn remove_pod_fully(c: &CriContainerd, pod: &str) {
    c.remove_pod(pod).unwrap_or_else(|e| panic!("removing pod {pod}: {e}"));
}

/// The shim socket of a task, from the bundle's `address` (1.x) or `bootstrap.json` (2.x).
fn shim_socket(c: &CriContainerd, id: &str) -> Option<String> {
    let b = c.bundle(id);
    let addr = std::fs::read_to_string(b.join("address")).ok().or_else(|| {
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("bootstrap.json")).ok()?).ok()?;
        Some(j.get("address")?.as_str()?.to_owned())
    })?;
    Some(addr.trim().trim_start_matches("unix://").to_owned())
}

fn mounts_mentioning(ids: &[&str]) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id)))
        .map(str::to_owned)
        .collect()
}

/// What a pod's processes hold on the machine, to check after removal.
struct Footprint {
    ids: Vec<String>,
    shim: u32,
    socket: Option<String>,
    cgroups: Vec<std::path::PathBuf>,
    runc_state: Vec<std::path::PathBuf>,
}

fn footprint(c: &CriContainerd, pod: &str, containers: &[&str], runc_root: &str) -> Footprint {
    let tasks = c.tasks();
    let (pod_pid, _) = tasks[pod];
    let mut cgroups = CriContainerd::cgroup_dirs(pod_pid);
    for id in containers {
        if let Some((pid, _)) = tasks.get(*id) {
            cgroups.extend(CriContainerd::cgroup_dirs(*pid));
        }
    }
    cgroups.retain(|p| p.exists());
    assert!(!cgroups.is_empty(), "no cgroups found for {pod}");
    let mut ids = vec![pod.to_owned()];
    ids.extend(containers.iter().map(|s| s.to_string()));
    let runc_state: Vec<_> = ids.iter().map(|id| c.dir.join(runc_root).join("k8s.io").join(id)).collect();
    assert!(runc_state[0].exists(), "{} missing", runc_state[0].display());
    Footprint { shim: ppid(pod_pid), socket: shim_socket(c, pod), ids, cgroups, runc_state }
}

fn assert_gone(c: &CriContainerd, f: &Footprint) {
    let gone = wait_until(Duration::from_secs(30), || !shim_tests::alive(f.shim));
    assert!(gone, "shim {} still alive", f.shim);
    if let Some(s) = &f.socket {
        assert!(!Path::new(s).exists(), "shim socket {s} left");
    }
    let ids: Vec<&str> = f.ids.iter().map(String::as_str).collect();
    let m = mounts_mentioning(&ids);
    assert!(m.is_empty(), "mounts left: {m:#?}");
    for cg in &f.cgroups {
        assert!(!cg.exists(), "cgroup {} left", cg.display());
    }
    for st in &f.runc_state {
        assert!(!st.exists(), "runc state {} left", st.display());
    }
    for id in &f.ids {
        assert!(!c.bundle(id).exists(), "bundle of {id} left");
    }
}

// --- checks --------------------------------------------------------------------------------

fn pod_grouping(c: &CriContainerd, x: &mut Option<Ctx>) {
    let before = c.shims().len();
    let a = c.run_pod("pod-a", "", false).unwrap();
    let c1 = c.start_container(&a.0, &a.1, "c1", &format!("echo hello-out; echo hello-err >&2; {LOOP}")).unwrap();
    let c2 = c.start_container(&a.0, &a.1, "c2", &format!("trap 'exit 0' TERM; {LOOP}")).unwrap();
    *x = Some(Ctx { a: a.clone(), c1: c1.clone(), c2: c2.clone() });
    let shims = c.shims();
    assert_eq!(shims.len(), before + 1, "one shim for the pod: {shims:?}");
    let tasks = c.tasks();
    for id in [&a.0, &c1, &c2] {
        let (pid, st) = tasks.get(id).unwrap_or_else(|| panic!("no task {id}: {tasks:?}"));
        assert_eq!(st, "RUNNING", "{id}");
        assert!(shims.contains(&ppid(*pid)), "{id} (pid {pid}) is not a child of a shim {shims:?}");
    }
    assert_eq!(ppid(tasks[&a.0].0), ppid(tasks[&c1].0));
    assert_eq!(ppid(tasks[&a.0].0), ppid(tasks[&c2].0));
}

fn exec_sync(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let r = c.exec_sync(&x.c1, &["sh", "-c", "echo out; echo err >&2; exit 3"]).unwrap();
    assert_eq!((r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code), (&b"out\n"[..], &b"err\n"[..], 3));
    let r = c.exec_sync(&x.c1, &["true"]).unwrap();
    assert_eq!((r.stdout.len(), r.exit_code), (0, 0));
    let r = c.exec_sync(&x.c2, &["cat", "/etc/hostname"]).unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
}

fn log_file(_c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let path = Path::new(&x.a.1.log_directory).join("c1.log");
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().count() >= 2
    });
    assert!(ok, "{}: {text:?}", path.display());
    let mut seen = HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(f.len(), 4, "{line:?}");
        assert!(f[0].contains('T') && f[0].len() >= 20, "timestamp {line:?}");
        assert_eq!(f[2], "F", "{line:?}");
        seen.insert((f[1].to_owned(), f[3].to_owned()));
    }
    assert!(seen.contains(&("stdout".into(), "hello-out".into())), "{text:?}");
    assert!(seen.contains(&("stderr".into(), "hello-err".into())), "{text:?}");
}

fn exec_storm(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let b = c.run_pod("pod-b", "", false).unwrap();
    let b1 = c.start_container(&b.0, &b.1, "b1", LOOP).unwrap();
    let targets = [x.c1.clone(), b1.clone()];
    let results = c.rt.block_on(async {
        let mut hs = vec![];
        for n in 0..50u32 {
            let mut cl = c.client.clone();
            let id = targets[n as usize % 2].clone();
            hs.push(tokio::spawn(async move {
                let req = cri::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["sh".into(), "-c".into(), format!("echo exec-{n}; echo err-{n} >&2; exit {}", n % 7)],
                    timeout: 120,
                };
                (n, cl.exec_sync(req).await.map(|r| r.into_inner()))
            }));
        }
        let mut out = vec![];
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    for (n, r) in results {
        let r = r.unwrap_or_else(|e| panic!("exec {n}: {e}"));
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("exec-{n}\n"), "exec {n}");
        assert_eq!(String::from_utf8_lossy(&r.stderr), format!("err-{n}\n"), "exec {n}");
        assert_eq!(i64::from(r.exit_code), i64::from(n % 7), "exec {n}");
    }
    let f = footprint(c, &b.0, &[&b1], "runc");
    remove_pod_fully(c, &b.0);
    assert_gone(c, &f);
}

fn exit_status(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let (pod, cfg) = (&x.a.0, &x.a.1);
    let ok = c.start_container(pod, cfg, "done0", "exit 0").unwrap();
    let err = c.start_container(pod, cfg, "done3", "exit 3").unwrap();
    let mut hog = c.container_config(cfg, "hog", "a=xxxxxxxxxxxxxxxx; while :; do a=\"$a$a\"; done");
    if let Some(r) = hog.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.memory_limit_in_bytes = 32 << 20;
    }
    let hog = c.create(pod, cfg, hog).unwrap();
    let req = cri::StartContainerRequest { container_id: hog.clone() };
    c.call(|mut cl| async move { cl.start_container(req).await }).unwrap();
    for (id, code, reason) in [(&ok, 0, "Completed"), (&err, 3, "Error"), (&hog, 137, "OOMKilled")] {
        let s = c.wait_exited(id);
        assert_eq!((s.exit_code, s.reason.as_str()), (code, reason), "{id}: {s:?}");
        // An instant exit can be reaped before CRI stamps started_at after Start returns:
        // order only against created_at.
        assert!(s.started_at >= s.created_at && s.finished_at > s.created_at, "{id} times: {s:?}");
    }
    for id in [&ok, &err, &hog] {
        c.remove_container(id).unwrap();
    }
    assert!(running(c, &x.c1) && running(c, &x.c2));
}

fn stats(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let _ = exec_ok(c, &x.c1, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done");
    let req = cri::ContainerStatsRequest { container_id: x.c1.clone() };
    let s = c.call(|mut cl| async move { cl.container_stats(req).await }).unwrap().stats.unwrap();
    let cpu = s.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
    let mem = s.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    assert!(cpu > 0 && mem > 0, "stats of c1: cpu {cpu} mem {mem}");
    let req = cri::ListContainerStatsRequest { filter: None };
    let all = c.call(|mut cl| async move { cl.list_container_stats(req).await }).unwrap().stats;
    for id in [&x.c1, &x.c2] {
        let s = all.iter().find(|s| s.attributes.as_ref().is_some_and(|a| &a.id == id));
        let s = s.unwrap_or_else(|| panic!("{id} not in ListContainerStats"));
        let mem = s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        assert!(mem > 0, "{id}: {s:?}");
    }
}

fn memory_limit_file(pid: u32) -> std::path::PathBuf {
    for d in CriContainerd::cgroup_dirs(pid) {
        for f in ["memory.limit_in_bytes", "memory.max"] {
            if d.join(f).exists() {
                return d.join(f);
            }
        }
    }
    panic!("no memory cgroup for {pid}");
}

fn update_resources(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let pid = c.tasks()[&x.c2].0;
    let file = memory_limit_file(pid);
    let req = cri::UpdateContainerResourcesRequest {
        container_id: x.c2.clone(),
        linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 48 << 20, ..Default::default() }),
        ..Default::default()
    };
    c.call(|mut cl| async move { cl.update_container_resources(req).await }).unwrap();
    let v = std::fs::read_to_string(&file).unwrap();
    assert_eq!(v.trim(), (48u64 << 20).to_string(), "{}", file.display());
}

fn stop_grace(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = ctx(x);
    let stubborn = c.start_container(&x.a.0, &x.a.1, "stubborn", &format!("trap '' TERM; {LOOP}")).unwrap();
    c.stop_container(&x.c2, 30).unwrap();
    let s = c.status(&x.c2);
    assert_eq!((s.state, s.exit_code), (cri::ContainerState::ContainerExited as i32, 0), "c2 handles TERM: {s:?}");
    c.stop_container(&stubborn, 2).unwrap();
    let s = c.status(&stubborn);
    assert_eq!((s.state, s.exit_code), (cri::ContainerState::ContainerExited as i32, 137), "stubborn: {s:?}");
    c.remove_container(&stubborn).unwrap();
    assert!(running(c, &x.c1));
}

fn teardown(c: &CriContainerd, x: &mut Option<Ctx>) {
    let x = x.take().expect("pod A was not created");
    let f = footprint(c, &x.a.0, &[&x.c1, &x.c2], "runc");
    remove_pod_fully(c, &x.a.0);
    assert_gone(c, &f);
    let req = cri::ListPodSandboxRequest { filter: None };
    let pods = c.call(|mut cl| async move { cl.list_pod_sandbox(req).await }).unwrap().items;
    assert!(pods.iter().all(|p| p.id != x.a.0), "pod still listed");
}

fn many_pods(c: &CriContainerd, _: &mut Option<Ctx>) {
    let n: usize = std::env::var("CRI_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let before = c.shims().len();
    let made: Vec<(Pod, Vec<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let pod = c.run_pod(&format!("many-{i}"), "", false).unwrap();
                    let ids =
                        (0..3).map(|k| c.start_container(&pod.0, &pod.1, &format!("m{k}"), LOOP).unwrap()).collect();
                    (pod, ids)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(c.shims().len(), before + n, "one shim per pod");
    let mut prints = vec![];
    for (pod, ids) in &made {
        for id in ids {
            assert_eq!(exec_ok(c, id, &format!("echo {id}")), format!("{id}\n"));
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        prints.push(footprint(c, &pod.0, &refs, "runc"));
    }
    std::thread::scope(|s| {
        for (pod, _) in &made {
            s.spawn(move || remove_pod_fully(c, &pod.0));
        }
    });
    for f in &prints {
        assert_gone(c, f);
    }
}

fn restart(c: &CriContainerd, _: &mut Option<Ctx>) {
    let mut pods = vec![];
    for i in 0..2 {
        let pod = c.run_pod(&format!("rs-{i}"), "", false).unwrap();
        let ids: Vec<String> =
            (0..2).map(|k| c.start_container(&pod.0, &pod.1, &format!("r{k}"), LOOP).unwrap()).collect();
        pods.push((pod, ids));
    }
    let shims_before: HashSet<u32> = c.shims().into_iter().collect();
    c.restart();
    assert_eq!(c.shims().into_iter().collect::<HashSet<_>>(), shims_before, "same shims after the restart");
    let req = cri::ListPodSandboxRequest { filter: None };
    let listed = c.call(|mut cl| async move { cl.list_pod_sandbox(req).await }).unwrap().items;
    for ((pod, _), ids) in &pods {
        let p = listed.iter().find(|p| &p.id == pod).unwrap_or_else(|| panic!("pod {pod} gone after restart"));
        assert_eq!(p.state, cri::PodSandboxState::SandboxReady as i32, "{pod}");
        for id in ids {
            assert!(running(c, id), "{id} not running after restart");
            assert_eq!(exec_ok(c, id, "echo alive"), "alive\n");
        }
    }
    let mut prints = vec![];
    for ((pod, _), ids) in &pods {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        prints.push(footprint(c, pod, &refs, "runc"));
        remove_pod_fully(c, pod);
    }
    for f in &prints {
        assert_gone(c, f);
    }
}

/// A pod with `handler` and one looping container that execs; then checks the shim got the
/// runc options (bundle's options.json) and used `root` (runc state), and removes the pod.
fn pod_with_handler(c: &CriContainerd, handler: &str, root: &str, binary: &str) {
    let name = c.unique(handler);
    let pod = c.run_pod(&name, handler, false).unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e}"));
    let id = c.start_container(&pod.0, &pod.1, "h", LOOP).unwrap();
    assert_eq!(exec_ok(c, &id, "echo via-handler"), "via-handler\n");
    let opts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle(&id).join("options.json")).unwrap()).unwrap();
    assert_eq!(opts.get("binary_name").and_then(|v| v.as_str()).unwrap_or(""), binary, "options.json: {opts}");
    assert!(opts.get("systemd_cgroup").and_then(|v| v.as_bool()) != Some(true), "options.json: {opts}");
    let state = c.dir.join(root).join("k8s.io").join(&id);
    assert!(state.exists(), "{} missing: Root did not reach the runtime", state.display());
    let pid = c.tasks()[&id].0;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines().all(|l| l.ends_with(":/") || l.contains(&format!("/{}/", c.cgroup_root))),
        "cgroupfs paths: {cg}"
    );
    let f = footprint(c, &pod.0, &[&id], root);
    remove_pod_fully(c, &pod.0);
    assert_gone(c, &f);
}

fn runc_options(c: &CriContainerd, _: &mut Option<Ctx>) {
    let wrap = shim_tests::containerd::repo().join("hack/crun-private-ns");
    pod_with_handler(c, "crun", "crun", wrap.to_str().unwrap());
}

fn runc_options_wrap(c: &CriContainerd, _: &mut Option<Ctx>) {
    let wrap = c.dir.join("bin/runc-wrap");
    pod_with_handler(c, "runc-wrap", "runc-wrap-root", wrap.to_str().unwrap());
    let log = std::fs::read_to_string(c.dir.join("runc-wrap.log")).unwrap_or_default();
    let root = format!("--root {}/runc-wrap-root/k8s.io", c.dir.display());
    assert!(log.lines().any(|l| l.contains(&root) && l.contains("create")), "runc-wrap log: {log}");
    assert!(!log.contains("systemd-cgroup"), "runc-wrap log: {log}");
}

fn runtimeoptions_path(c: &CriContainerd, _: &mut Option<Ctx>) {
    pod_with_handler(c, "rsrunc", "runc", "runc");
}

fn runtimeoptions_body(c: &CriContainerd, _: &mut Option<Ctx>) {
    pod_with_handler(c, "rsrunc-body", "runc", "runc");
}

fn no_new_shim_or_pod(c: &CriContainerd, shims_before: usize, name: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || c.shims().len() == shims_before),
        "a shim was left: {:?}",
        c.shims()
    );
    let req = cri::ListPodSandboxRequest { filter: None };
    let pods = c.call(|mut cl| async move { cl.list_pod_sandbox(req).await }).unwrap().items;
    let left: Vec<_> = pods.iter().filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name)).collect();
    assert!(left.is_empty(), "pod {name} left: {left:?}");
    let tasks = c.tasks();
    assert!(tasks.is_empty(), "tasks left: {tasks:?}");
    let m = mounts_mentioning(&[&c.dir.join("state").display().to_string()]);
    let m: Vec<_> = m.into_iter().filter(|l| l.contains("rootfs")).collect();
    assert!(m.is_empty(), "rootfs mounts left: {m:#?}");
}

fn bad_binary(c: &CriContainerd, _: &mut Option<Ctx>) {
    let before = c.shims().len();
    let name = c.unique("badbin");
    let e = c.run_pod(&name, "bad-binary", false).expect_err("RunPodSandbox with BinaryName /nonexistent/no-runc");
    assert!(e.message().contains("no-runc"), "error does not name the binary: {e}");
    no_new_shim_or_pod(c, before, &name);
}

fn bad_option(c: &CriContainerd, _: &mut Option<Ctx>) {
    let before = c.shims().len();
    for (handler, words) in
        [("bad-option", ["bad-option.toml", "NoSuchOption"]), ("bad-path", ["missing.toml", "config_path"])]
    {
        let name = c.unique(handler);
        let e = c.run_pod(&name, handler, false).expect_err(handler);
        for w in words {
            assert!(e.message().contains(w), "{handler}: error does not name {w}: {e}");
        }
        assert!(e.message().contains("InvalidArgument") || e.message().contains("invalid"), "{handler}: {e}");
        no_new_shim_or_pod(c, before, &name);
    }
}

fn bad_mount(c: &CriContainerd, _: &mut Option<Ctx>) {
    let pod = c.run_pod("pod-mount", "", false).unwrap();
    let good = c.start_container(&pod.0, &pod.1, "good", LOOP).unwrap();
    let file = c.tmp.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut cfg = c.container_config(&pod.1, "badmount", LOOP);
    cfg.mounts.push(cri::Mount {
        container_path: "/bin".into(),
        host_path: file.display().to_string(),
        ..Default::default()
    });
    let id = c.create(&pod.0, &pod.1, cfg).unwrap();
    let req = cri::StartContainerRequest { container_id: id.clone() };
    let e =
        c.call(|mut cl| async move { cl.start_container(req).await }).expect_err("start with a file mounted on /bin");
    assert!(e.message().contains("not a directory") || e.message().contains("mount"), "unclear error: {e}");
    assert!(running(c, &good), "the pod's other container stopped");
    assert_eq!(exec_ok(c, &good, "echo still"), "still\n");
    c.remove_container(&id).unwrap();
    assert!(!c.dir.join("runc/k8s.io").join(&id).exists(), "runc state of the failed container left");
    assert!(mounts_mentioning(&[&id]).is_empty(), "mounts of the failed container left");
    assert!(!c.bundle(&id).exists(), "bundle of the failed container left");
    let f = footprint(c, &pod.0, &[&good], "runc");
    remove_pod_fully(c, &pod.0);
    assert_gone(c, &f);
}

fn pod_netns(c: &CriContainerd, _: &mut Option<Ctx>) {
    let pod = c.run_pod("pod-net", "", true).unwrap();
    let id = c.start_container(&pod.0, &pod.1, "n", LOOP).unwrap();
    let addr = exec_ok(c, &id, "ip -4 addr show eth0");
    assert!(addr.contains("inet 10.231."), "no CNI address: {addr}");
    let f = footprint(c, &pod.0, &[&id], "runc");
    remove_pod_fully(c, &pod.0);
    assert_gone(c, &f);
    let m = mounts_mentioning(&[&c.dir.display().to_string()]);
    let m: Vec<_> =
        m.into_iter().filter(|l| l.contains("nsfs") && !l.contains(&format!("{}/netns ", c.dir.display()))).collect();
    assert!(m.is_empty(), "pod netns left: {m:#?}");
}
