//! Faults end to end through a private, real containerd with `ctr` (issue 9, SPEC §4.7 nos. 20
//! and 21): the shim SIGKILLed in the middle of an exec storm, and containerd SIGKILLed and
//! restarted while a storm is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::api::{StateResponse, WaitResponse};
use containerd_shim_protos::types::task::Status;
use shim_tests::containerd::{
    cgroups_of, pids_with_argv, run_ok, task_call_raw, wait_until, Containerd, Setup, Version, IMAGE,
};
use shim_tests::e2e_versions;
use shim_tests::{alive, mounts_under, req};

fn spawn_quiet(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// Waits for every child (bounded), killing the ones that outlive the bound.
fn reap_all(children: Vec<Child>) -> Vec<Option<i32>> {
    children
        .into_iter()
        .map(|mut ch| {
            let done = wait_until(Duration::from_secs(60), || ch.try_wait().unwrap().is_some());
            if !done {
                let _ = ch.kill();
            }
            ch.wait().unwrap().code()
        })
        .collect()
}

/// SPEC §4.7 no. 21: the shim is SIGKILLed while ~50 `ctr tasks exec` are in flight. containerd
/// runs `shim delete`, reports TaskExit 137, and nothing of the container is left.
fn killed_shim_mid_storm_leaves_nothing(setup: Setup) {
    let c = Containerd::start_with(setup);
    let fifo = &c.fifo;
    let id = "t-shimkill";
    let events_log = c.tmp.join("events.log");
    let mut events = c.subscribe_events(&events_log);

    // Distinctive argv (unique to this containerd) so survivors can be found in /proc.
    let (init_secs, exec_secs) = (format!("8{}", c.tag), format!("9{}", c.tag));
    let init_argv = ["sleep", init_secs.as_str()];
    let exec_argv = ["sleep", exec_secs.as_str()];
    let mut args = c.run_args();
    args.extend(["-d", IMAGE, id]);
    args.extend(init_argv);
    run_ok(&mut c.ctr(&args));
    c.wait_status(id, "RUNNING");
    let init_pid = c.task_pid(id).unwrap();
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim = shims[0];
    let socket = c.shim_socket(id);
    assert!(socket.exists());

    let n = 50;
    let children: Vec<Child> = (0..n)
        .map(|i| {
            let exec_id = format!("x{i}");
            let mut a = vec!["tasks", "exec", "--fifo-dir", fifo, "--exec-id", &exec_id, id];
            a.extend(exec_argv);
            spawn_quiet(c.ctr(&a))
        })
        .collect();
    // Mid-storm: some execs run, others are still on their way.
    let mut execs = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            execs = c.ps(id).into_iter().filter(|(_, e)| !e.is_empty()).map(|(p, _)| p).collect();
            execs.len() >= 10
        }),
        "execs never started"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.cast_signed()), nix::sys::signal::Signal::SIGKILL).unwrap();
    eprintln!("shim {shim} SIGKILLed with {} of {n} execs running", execs.len());
    let codes = reap_all(children);
    assert!(codes.iter().all(|c| *c != Some(0)), "an exec of a killed shim reported success: {codes:?}");

    // containerd reports the task's end: exactly one TaskExit 137 for the init, and TaskDelete.
    let exits = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("/tasks/exit") && l.contains(&format!("\"container_id\":\"{id}\"")))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&events_log).unwrap();
            !exits(&log).is_empty() && log.contains("/tasks/delete")
        }),
        "no TaskExit/TaskDelete after the shim died: {}",
        std::fs::read_to_string(&events_log).unwrap()
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(&events_log).unwrap();
    let init_exits: Vec<_> = exits(&log).into_iter().filter(|l| l.contains(&format!("\"id\":\"{id}\""))).collect();
    assert_eq!(init_exits.len(), 1, "{init_exits:#?}");
    assert!(init_exits[0].contains("\"exit_status\":137"), "{init_exits:?}");
    assert!(init_exits[0].contains(&format!("\"pid\":{init_pid}")), "{init_exits:?}");
    let _ = events.kill();
    let _ = events.wait();

    // containerd 1.6 drops a task whose shim died; a later `tasks delete` finds nothing.
    assert!(wait_until(Duration::from_secs(10), || c.task_pid(id).is_none()), "{}", c.tasks());
    let del = c.ctr(&["tasks", "delete", id]).output().unwrap();
    assert!(
        del.status.success() || String::from_utf8_lossy(&del.stderr).contains("not found"),
        "tasks delete: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    run_ok(&mut c.ctr(&["containers", "delete", id]));

    // Nothing left: processes (init, every exec recorded and any started later), runc state,
    // rootfs mount, cgroups, shim socket.
    assert!(wait_until(Duration::from_secs(10), || !alive(init_pid)), "init {init_pid} survived");
    for p in &execs {
        assert!(wait_until(Duration::from_secs(10), || !alive(*p)), "exec {p} survived");
    }
    assert!(
        wait_until(Duration::from_secs(10), || pids_with_argv(&exec_argv).is_empty()),
        "exec processes survived: {:?}",
        pids_with_argv(&exec_argv)
    );
    assert!(pids_with_argv(&init_argv).is_empty());
    // containerd's `shim delete` (runc delete --force) may still be running under load.
    let state = c.dir.join("runc").join(&c.ns).join(id);
    assert!(
        wait_until(Duration::from_secs(30), || !state.exists()),
        "runc state left; containerd's log on delete:\n{}",
        c.log().lines().filter(|l| l.contains("delete")).collect::<Vec<_>>().join("\n")
    );
    assert!(mounts_under(&c.dir).is_empty(), "mounts left: {:?}", mounts_under(&c.dir));
    assert!(cgroups_of(&c.ns, id).is_empty(), "cgroups left: {:?}", cgroups_of(&c.ns, id));
    assert!(!c.bundle(id).exists(), "bundle left");
    // Last: a socket left behind (the Go shim's case) is removed before failing, so the
    // machine is left as found; no one else can own this path (it hashes our containerd's
    // socket, namespace and id).
    let debug_socket = c.go_debug_socket(id);
    let left: Vec<_> = [&socket, &debug_socket].into_iter().filter(|s| s.exists()).collect();
    for s in &left {
        let _ = std::fs::remove_file(s);
    }
    assert!(left.is_empty(), "shim socket left: {left:?}");
}

/// How long containerd stays down in [`containerd_restart_mid_storm_loses_no_event`]: longer than
/// the Go shim's event retries last (about 15 s, then it drops the event).
const OUTAGE: Duration = Duration::from_secs(25);

/// SPEC §4.7 no. 20: containerd is SIGKILLed while 100 execs are in flight and restarted. The
/// shim keeps serving, the container stays RUNNING, an exec that exited during the downtime
/// reports its real status, and every exec that started gets its TaskExit delivered (0 lost),
/// though containerd stays away for [`OUTAGE`].
fn containerd_restart_mid_storm_loses_no_event(setup: Setup) {
    let c = Containerd::start_with(setup);
    let fifo = &c.fifo;
    let id = "t-restart";
    let mut args = c.run_args();
    args.extend(["-d", IMAGE, id, "sleep", "9221"]);
    run_ok(&mut c.ctr(&args));
    c.wait_status(id, "RUNNING");
    let init_pid = c.task_pid(id).unwrap();
    let shim = c.shims();
    assert_eq!(shim.len(), 1);
    let shim = shim[0];
    let address = c.check_bootstrap(id);

    // An exec that exits with 42 once told to, which happens while containerd is down.
    let go = c.bundle(id).join("rootfs/late-go");
    let late_script = "while [ ! -e /late-go ]; do sleep 0.05; done; exit 42";
    run_ok(&mut c.ctr(&["tasks", "exec", "-d", "--fifo-dir", fifo, "--exec-id", "late", id, "sh", "-c", late_script]));
    let late_pid = c.ps(id).into_iter().find(|(_, e)| e == "late").unwrap().0;

    let n = 100;
    let children: Vec<Child> = (0..n)
        .map(|i| {
            let exec_id = format!("s{i}");
            let code = format!("sleep 1; exit {}", i % 7);
            spawn_quiet(c.ctr(&["tasks", "exec", "--fifo-dir", fifo, "--exec-id", &exec_id, id, "sh", "-c", &code]))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || c.forwarded(&c.log(), "/tasks/exec-started") >= 21),
        "storm never got going"
    );
    let cpid = c.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(cpid.cast_signed()), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(cpid)), "containerd survived SIGKILL");
    let killed_at = std::time::Instant::now();
    let log_at_kill = c.log().len();
    let codes = reap_all(children);
    let ok = codes.iter().enumerate().filter(|(i, c)| **c == Some(i32::try_from(i % 7).unwrap())).count();

    // containerd is down: the late exec exits, and every exec still running finishes.
    std::fs::write(&go, b"").unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(late_pid)), "late exec did not exit");
    let children_of_shim = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                stat.rsplit_once(") ").and_then(|(_, r)| r.split(' ').nth(1)?.parse::<u32>().ok()) == Some(shim)
            })
            .filter(|p| *p != init_pid && alive(*p))
            .count()
    };
    assert!(wait_until(Duration::from_secs(30), || children_of_shim() == 0), "execs still running");
    assert!(alive(shim), "the shim must survive containerd's death");
    // containerd stays down past the Go shim's retry budget (5 requeues, 1 + 2 + ... + 5 s,
    // SPEC §3.2), so an exit published during the outage must survive a long one, not only a
    // restart that happens to be quick: the same outage on every machine, however loaded.
    let down = killed_at.elapsed();
    if down < OUTAGE {
        std::thread::sleep(OUTAGE - down);
    }

    // 2.x reconnects through the bundle's bootstrap.json (1.x through `address`): with the
    // shim's `address` file gone, only bootstrap.json can lead containerd back to the shim.
    let bootstrap = std::fs::read_to_string(c.bundle(id).join("bootstrap.json")).ok();
    if c.version() == Version::V2 {
        let _ = std::fs::remove_file(c.bundle(id).join("address"));
        assert!(!c.bundle(id).join("address").exists());
    }
    c.restart();
    assert_eq!(std::fs::read_to_string(c.bundle(id).join("bootstrap.json")).ok(), bootstrap);
    assert_eq!(c.shims(), vec![shim], "the same shim serves after the restart");
    assert!(
        c.tasks().lines().any(|l| l.starts_with(id) && l.contains("RUNNING")),
        "{}\ncontainerd log since the kill:\n{}",
        c.tasks(),
        &c.log()[log_at_kill..]
    );
    assert_eq!(c.task_pid(id), Some(init_pid));
    assert!(c.ps(id).iter().any(|(p, e)| *p == init_pid && e.is_empty()), "Pids lists the init");
    let out =
        c.ctr(&["tasks", "exec", "--fifo-dir", fifo, "--exec-id", "after", id, "sh", "-c", "exit 5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));

    // The exec that exited while containerd was away reports its real status to a client that
    // connects after the restart, as containerd's does (with the version's task API).
    let api = c.version().task_api();
    let st: StateResponse = task_call_raw(&address, api, "State", &req::state(id, "late")).unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    assert_eq!(st.exit_status, 42);
    let w: WaitResponse = task_call_raw(&address, api, "Wait", &req::wait(id, "late")).unwrap();
    assert_eq!(w.exit_status, 42);
    let st: StateResponse = task_call_raw(&address, api, "State", &req::state(id, "")).unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);

    // Every exec that started (TaskExecStarted received by containerd) gets its TaskExit
    // received by containerd, across the restart: none lost, none doubled.
    let counts = || {
        let log = c.log();
        (c.forwarded(&log, "/tasks/exec-started"), c.forwarded(&log, "/tasks/exit"))
    };
    wait_until(Duration::from_secs(30), || {
        let (s, e) = counts();
        s == e
    });
    std::thread::sleep(Duration::from_millis(500));
    let (started, exited) = counts();
    let after = &c.log()[log_at_kill..];
    eprintln!(
        "containerd restart: {ok} of {n} storm `ctr tasks exec` got their exit code before the kill; {started} execs started, \
         {exited} TaskExit received ({} TaskExit and {} TaskExecStarted delivered after the restart); lost: {}",
        c.forwarded(after, "/tasks/exit"),
        c.forwarded(after, "/tasks/exec-started"),
        started.saturating_sub(exited)
    );
    assert_eq!(started, exited, "TaskExit events lost or doubled across the restart");
    assert!(c.forwarded(after, "/tasks/exit") >= 2, "the late exit and the new exec's exit came after");

    run_ok(&mut c.ctr(&["tasks", "kill", "-s", "SIGKILL", id]));
    c.wait_status(id, "STOPPED");
    run_ok(&mut c.ctr(&["tasks", "delete", id]));
    run_ok(&mut c.ctr(&["containers", "delete", id]));
    assert!(wait_until(Duration::from_secs(10), || !alive(shim)), "shim did not exit after delete");
}

e2e_versions!(killed_shim_mid_storm_leaves_nothing => killed_shim_mid_storm_v1_6, killed_shim_mid_storm_v1_7, killed_shim_mid_storm_v2);
e2e_versions!(reference killed_shim_mid_storm_leaves_nothing =>
    killed_shim_mid_storm_go_v1_6 xfail "shim socket left" "Go shim behaviour: containerd runs `shim delete` after the SIGKILL, and the Go shim's delete does not remove the dead shim's socket in /run/containerd/s (ours removes a socket nothing listens on)",
    killed_shim_mid_storm_go_v1_7 xfail "shim socket left" "Go shim behaviour: containerd runs `shim delete` after the SIGKILL, and the Go shim's delete does not remove the dead shim's socket in /run/containerd/s (ours removes a socket nothing listens on)",
    killed_shim_mid_storm_go_v2 xfail "shim socket left" "Go shim behaviour: containerd runs `shim delete` after the SIGKILL, and the Go shim's delete does not remove the dead shim's socket in /run/containerd/s (ours removes a socket nothing listens on)",
);
e2e_versions!(containerd_restart_mid_storm_loses_no_event => containerd_restart_mid_storm_v1_6, containerd_restart_mid_storm_v1_7, containerd_restart_mid_storm_v2);
e2e_versions!(reference containerd_restart_mid_storm_loses_no_event =>
    containerd_restart_mid_storm_go_v1_6 xfail "TaskExit events lost" "Go shim bug: a Forward that fails is requeued at most 5 times (1, 2, ... 5 s apart) and then dropped, so every event published while containerd is down for longer than about 15 s is lost (SPEC §3.2); ours retries in place until containerd is back",
    containerd_restart_mid_storm_go_v1_7 xfail "TaskExit events lost" "Go shim bug: a Forward that fails is requeued at most 5 times (1, 2, ... 5 s apart) and then dropped, so every event published while containerd is down for longer than about 15 s is lost (SPEC §3.2); ours retries in place until containerd is back",
    containerd_restart_mid_storm_go_v2 xfail "TaskExit events lost" "Go shim bug: a Forward that fails is requeued at most 5 times (1, 2, ... 5 s apart) and then dropped, so every event published while containerd is down for longer than about 15 s is lost (SPEC §3.2); ours retries in place until containerd is back");
