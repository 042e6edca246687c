//! Tests of the container's core: every request in every state, the interleavings of exits and
//! OCI completions with requests, and (property test) the event order contract over random
//! lifecycles. No root, no runc, no tokio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, UNIX_EPOCH};

use containerd_shim_protos::events::task::TaskCreate;
use shim_events::{Event, ExitInfo, ProcessId, Refusal};

use super::core::{Core, CoreConfig, Effect, Effects, KillPlan, Teardown};
use super::handle::ExecSpec;
use crate::checkpoint::PendingRestore;
use crate::error::RuntimeError;
use crate::io::StdioConfig;
use crate::process::State;

const INIT_PID: u32 = 10;

fn config(shares_pid_ns: bool, restore: bool) -> CoreConfig {
    CoreConfig {
        id: "c".into(),
        bundle: "/bundle".into(),
        pid: if restore { 0 } else { INIT_PID },
        stdio: StdioConfig::default(),
        rootfs_mounted: true,
        restore: restore.then(|| PendingRestore {
            image_path: "/img".into(),
            no_pivot: false,
            criu_work_path: String::new(),
        }),
        shares_pid_ns,
    }
}

/// A created container and the effects of its creation.
fn created_with(shares_pid_ns: bool, restore: bool) -> (Core<()>, Effects) {
    let mut c = Core::new(config(shares_pid_ns, restore), ());
    let mut ev = TaskCreate::new();
    ev.container_id = "c".into();
    let out = c.created(ev);
    (c, out)
}

fn created() -> Core<()> {
    created_with(false, false).0
}

fn exit(pid: u32, status: u32) -> ExitInfo {
    ExitInfo { pid, status, at: UNIX_EPOCH + Duration::from_secs(u64::from(pid)) }
}

fn exec_pid(i: usize) -> u32 {
    100 + u32::try_from(i).unwrap()
}

fn spec() -> ExecSpec {
    ExecSpec::from(&br#"{"args":["true"]}"#[..])
}

fn exec(e: &str) -> ProcessId {
    ProcessId::Exec(e.into())
}

/// Wrong-state answers: FailedPrecondition in the code table.
fn is_precondition(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::State(_) | RuntimeError::StartRefused { .. } | RuntimeError::ExecActive { .. })
}

/// The events among effects, by short name (`exit:<id>` for a TaskExit).
fn events(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(ev) => Some(match ev {
                Event::Create(_) => "create".to_owned(),
                Event::Start(_) => "start".to_owned(),
                Event::ExecAdded(e) => format!("added:{}", e.exec_id),
                Event::ExecStarted(e) => format!("started:{}", e.exec_id),
                Event::Exit(e) => format!("exit:{}", e.id),
                Event::Delete(_) => "delete".to_owned(),
                Event::Paused(_) => "paused".to_owned(),
                Event::Resumed(_) => "resumed".to_owned(),
                Event::Oom(_) => "oom".to_owned(),
            }),
            _ => None,
        })
        .collect()
}

fn start_init_ok(c: &mut Core<()>) -> Effects {
    assert!(c.start_init().unwrap().is_none());
    let (out, r) = c.init_started(Ok(None));
    assert_eq!(r.unwrap(), INIT_PID);
    out
}

fn add_and_start_exec(c: &mut Core<()>, e: &str, pid: u32) -> Effects {
    let mut out = c.add_exec(e.into(), spec(), StdioConfig::default(), ()).unwrap();
    c.start_exec(e).unwrap();
    let (more, r) = c.exec_started(e, Ok(pid));
    assert_eq!(r.unwrap(), pid);
    out.extend(more);
    out
}

/// A container whose init is in `state`.
fn init_in(state: State) -> Core<()> {
    let mut c = created();
    match state {
        State::Created => {}
        State::Starting => {
            c.start_init().unwrap();
        }
        State::Running => {
            start_init_ok(&mut c);
        }
        State::Pausing => {
            start_init_ok(&mut c);
            c.pause(true).unwrap();
        }
        State::Paused => {
            start_init_ok(&mut c);
            c.pause(true).unwrap();
            c.paused(true, Ok(())).1.unwrap();
        }
        State::Stopped => {
            start_init_ok(&mut c);
            c.exited(ProcessId::Init, exit(INIT_PID, 0), false);
        }
        State::Deleted => {
            c.init_deleted(Ok(())).1.unwrap();
        }
    }
    assert_eq!(c.init().state, state);
    c
}

#[test]
fn happy_path_effects_in_order() {
    let (mut c, mut out) = created_with(false, false);
    out.extend(start_init_ok(&mut c));
    out.extend(add_and_start_exec(&mut c, "e", 100));
    let exec_exit = c.exited(exec("e"), exit(100, 3), false);
    assert_eq!(
        exec_exit[..],
        [Effect::IoExited(exec("e")), exec_exit[1].clone(), Effect::ReleaseWaiters(exec("e"), exit(100, 3)),],
        "state, then TaskExit, then waiters"
    );
    out.extend(exec_exit);
    out.extend(c.exited(ProcessId::Init, exit(INIT_PID, 0), false));
    let (deleted, (), forget) = c.delete_exec("e").unwrap();
    assert_eq!((deleted.pid, deleted.status), (100, 3));
    assert_eq!(forget, [Effect::Forget(exec("e"), 100)]);
    assert_eq!(c.delete_init().unwrap(), Teardown { runtime_delete: true, rootfs_mounted: true });
    let (end, r) = c.init_deleted(Ok(()));
    assert_eq!(r.unwrap().status, 0);
    assert_eq!(end.last(), Some(&Effect::LeaveRegistry));
    assert!(end.contains(&Effect::Forget(ProcessId::Init, INIT_PID)));
    out.extend(end);
    assert_eq!(events(&out), ["create", "start", "added:e", "started:e", "exit:e", "exit:c", "delete"]);
    assert!(out.contains(&Effect::Claim(exec("e"), 100)));
}

/// Every init request in every init state: the answer of the Go shim's state table (SPEC
/// §2.3), wrong states as FailedPrecondition.
#[test]
fn every_init_request_in_every_state() {
    use State::*;
    // (state, start, delete, pause, resume, update, checkpoint, exec)
    let table = [
        (Created, true, true, false, false, true, false, true),
        (Starting, false, false, false, false, true, false, true),
        (Running, false, false, true, false, true, true, true),
        (Pausing, false, false, false, false, true, true, true),
        (Paused, false, false, false, true, true, true, false),
        (Stopped, false, true, false, false, false, false, false),
        (Deleted, false, false, false, false, false, false, false),
    ];
    assert_eq!(table.map(|t| t.0), State::ALL);
    for (state, start, delete, pause, resume, update, checkpoint, exec_ok) in table {
        let check = |what: &str, ok: bool, r: Result<(), RuntimeError>| match r {
            Ok(()) => assert!(ok, "{what} in {state:?} must be refused"),
            Err(e) => {
                assert!(!ok, "{what} in {state:?} refused: {e}");
                assert!(is_precondition(&e), "{what} in {state:?}: {e:?}");
            }
        };
        check("start", start, init_in(state).start_init().map(drop));
        check("delete", delete, init_in(state).delete_init().map(drop));
        check("pause", pause, init_in(state).pause(true));
        check("resume", resume, init_in(state).pause(false));
        check("update", update, init_in(state).update());
        check("checkpoint", checkpoint, init_in(state).checkpoint());
        check("exec", exec_ok, init_in(state).add_exec("x".into(), spec(), StdioConfig::default(), ()).map(drop));
        // Kill goes to runc in every state but deleted; SIGKILL of a frozen init thaws it.
        match init_in(state).kill(None, 9) {
            Ok(KillPlan::Runtime { thaw }) => assert_eq!(thaw, state == Paused, "{state:?}"),
            Ok(p) => panic!("{p:?}"),
            Err(e) => assert!(state == Deleted && matches!(e, RuntimeError::ProcessFinished), "{e:?}"),
        }
        // State: a call in flight is not visible.
        assert_eq!(init_in(state).state(None).unwrap().state, state.reported());
    }
}

/// An exec in `state`, in a running container.
fn exec_in(state: State) -> Core<()> {
    let mut c = created();
    start_init_ok(&mut c);
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    match state {
        State::Created => {}
        State::Starting => {
            c.start_exec("e").unwrap();
        }
        State::Running => {
            c.start_exec("e").unwrap();
            c.exec_started("e", Ok(100)).1.unwrap();
        }
        State::Stopped => {
            c.start_exec("e").unwrap();
            c.exec_started("e", Ok(100)).1.unwrap();
            c.exited(exec("e"), exit(100, 0), false);
        }
        _ => unreachable!(),
    }
    assert_eq!(c.process(Some("e")).unwrap().state, state);
    c
}

#[test]
fn every_exec_request_in_every_state() {
    use State::*;
    // (state, start, delete, resize); exec states are created, starting, running, stopped.
    for (state, start, delete, resize) in [
        (Created, true, true, true),
        (Starting, false, false, true),
        (Running, false, false, true),
        (Stopped, false, true, false),
    ] {
        let check = |what: &str, ok: bool, r: Result<(), RuntimeError>| match r {
            Ok(()) => assert!(ok, "{what} in {state:?} must be refused"),
            Err(e) => assert!(!ok && is_precondition(&e), "{what} in {state:?}: {e:?}"),
        };
        check("start", start, exec_in(state).start_exec("e").map(drop));
        check("delete", delete, exec_in(state).delete_exec("e").map(drop));
        check("resize", resize, exec_in(state).resize(Some("e")).map(drop));
        match (state, exec_in(state).kill(Some("e"), 9)) {
            (Running, Ok(KillPlan::Signal { pid: 100 })) => {}
            (Stopped, Err(RuntimeError::ProcessFinished)) => {}
            (Created | Starting, Err(e)) if is_precondition(&e) => {}
            (s, r) => panic!("kill in {s:?}: {r:?}"),
        }
        assert_eq!(exec_in(state).state(Some("e")).unwrap().state, state.reported());
    }
    // Unknown execs: NotFound for every request.
    let mut c = created();
    let nf = |r: Result<(), RuntimeError>| assert!(matches!(r, Err(RuntimeError::ProcessNotFound { .. })), "{r:?}");
    nf(c.start_exec("nope").map(drop));
    nf(c.delete_exec("nope").map(drop));
    nf(c.kill(Some("nope"), 9).map(drop));
    nf(c.resize(Some("nope")).map(drop));
    nf(c.state(Some("nope")).map(drop));
    nf(c.res_mut(Some("nope")).map(drop));
    assert!(matches!(
        c.add_exec("e".into(), spec(), StdioConfig::default(), ()).and(c.add_exec(
            "e".into(),
            spec(),
            StdioConfig::default(),
            ()
        )),
        Err(RuntimeError::AlreadyExists { .. })
    ));
}

#[test]
fn init_exit_during_exec_start_waits_for_the_exec() {
    let mut c = created();
    start_init_ok(&mut c);
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    c.start_exec("e").unwrap();
    assert!(events(&c.exited(ProcessId::Init, exit(INIT_PID, 137), false)).is_empty(), "held behind the exec");
    assert_eq!(c.state(None).unwrap().state, State::Running, "not reported exited while held");
    // No other exec may start once the init's exit was seen.
    c.add_exec("f".into(), spec(), StdioConfig::default(), ()).unwrap();
    assert!(matches!(c.start_exec("f"), Err(RuntimeError::StartRefused { refusal: Refusal::InitExited, .. })));
    let (out, _) = c.exec_started("e", Ok(100));
    assert_eq!(events(&out), ["started:e"]);
    let out = c.exited(exec("e"), exit(100, 137), false);
    assert_eq!(events(&out), ["exit:e", "exit:c"]);
    assert_eq!(c.init().state, State::Stopped);
}

#[test]
fn init_exit_during_failed_exec_start_is_released_by_the_failure() {
    let mut c = created();
    start_init_ok(&mut c);
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    c.start_exec("e").unwrap();
    assert!(c.exited(ProcessId::Init, exit(INIT_PID, 1), false).is_empty());
    let (out, r) = c.exec_started("e", Err((RuntimeError::ProcessFinished, None)));
    assert!(r.is_err());
    let never = ExitInfo { pid: 0, status: 0, at: UNIX_EPOCH };
    assert_eq!(out[0], Effect::ReleaseWaiters(exec("e"), never), "waiters released with status 0 (SPEC §4.9)");
    assert_eq!(events(&out), ["exit:c"]);
    assert_eq!(c.process(Some("e")).unwrap().state, State::Created);
}

#[test]
fn half_started_exec_is_stopped_and_never_named_by_an_event() {
    let mut c = created();
    start_init_ok(&mut c);
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    c.start_exec("e").unwrap();
    let (out, r) = c.exec_started("e", Err((RuntimeError::ProcessFinished, Some(exit(100, 137)))));
    assert!(r.is_err());
    assert!(events(&out).is_empty());
    assert_eq!(out, [Effect::ReleaseWaiters(exec("e"), exit(100, 137))]);
    assert!(is_precondition(&c.start_exec("e").unwrap_err()), "cannot be started again");
    assert_eq!(c.delete_exec("e").unwrap().0.status, 137);
}

#[test]
fn delete_during_start_is_refused() {
    let mut c = created();
    c.start_init().unwrap();
    assert!(is_precondition(&c.delete_init().unwrap_err()));
    let mut c = exec_in(State::Starting);
    assert!(is_precondition(&c.delete_exec("e").unwrap_err()));
    // A created init with a starting exec: TaskDelete would precede the exec's exit.
    let mut c = created();
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    c.start_exec("e").unwrap();
    assert!(matches!(c.delete_init(), Err(RuntimeError::ExecActive { state: "starting", .. })));
    c.exec_started("e", Ok(100)).1.unwrap();
    assert!(matches!(c.delete_init(), Err(RuntimeError::ExecActive { state: "running", .. })));
}

#[test]
fn exit_during_pause_wins() {
    let mut c = init_in(State::Pausing);
    let out = c.exited(ProcessId::Init, exit(INIT_PID, 137), false);
    assert_eq!(events(&out), ["exit:c"]);
    let (out, r) = c.paused(true, Ok(()));
    r.unwrap();
    assert!(events(&out).is_empty(), "no TaskPaused after the exit");
    assert_eq!(c.init().state, State::Stopped);
    // Same for resume.
    let mut c = init_in(State::Paused);
    c.pause(false).unwrap();
    c.exited(ProcessId::Init, exit(INIT_PID, 137), false);
    assert!(events(&c.paused(false, Ok(())).0).is_empty());
    assert_eq!(c.init().state, State::Stopped);
}

#[test]
fn failed_pause_leaves_the_init_running() {
    let mut c = init_in(State::Pausing);
    let (out, r) = c.paused(true, Err(RuntimeError::ProcessFinished));
    assert!(r.is_err() && out.is_empty());
    assert_eq!(c.init().state, State::Running);
    assert!(c.pause(true).is_ok(), "can be paused again");
}

#[test]
fn exits_of_unknown_or_deleted_processes_do_nothing() {
    let mut c = created();
    start_init_ok(&mut c);
    assert!(c.exited(exec("nope"), exit(7, 0), false).is_empty());
    let mut c = exec_in(State::Stopped);
    c.delete_exec("e").unwrap();
    assert!(c.exited(exec("e"), exit(100, 0), false).is_empty());
    // An exec that never started: its exit (a stale pid) is dropped.
    let mut c = exec_in(State::Created);
    assert!(c.exited(exec("e"), exit(100, 0), false).is_empty());
    // A second exit of the init is dropped.
    let mut c = init_in(State::Stopped);
    assert!(c.exited(ProcessId::Init, exit(INIT_PID, 0), false).is_empty());
}

#[test]
fn init_exit_before_start_follows_create() {
    let (mut c, _) = created_with(false, false);
    let out = c.exited(ProcessId::Init, exit(INIT_PID, 1), false);
    assert_eq!(events(&out), ["exit:c"]);
    assert!(is_precondition(&c.start_init().unwrap_err()));
}

#[test]
fn oom_is_reported_before_the_init_exit() {
    let mut c = init_in(State::Running);
    let out = c.exited(ProcessId::Init, exit(INIT_PID, 137), true);
    assert_eq!(events(&out), ["oom", "exit:c"]);
}

#[test]
fn shared_pid_namespace_holds_the_init_exit_until_kill_all_returned() {
    let (mut c, _) = created_with(true, false);
    start_init_ok(&mut c);
    let out = c.exited(ProcessId::Init, exit(INIT_PID, 0), false);
    assert_eq!(out, [Effect::KillAll(exit(INIT_PID, 0))]);
    assert!(c.exited(ProcessId::Init, exit(INIT_PID, 0), false).is_empty(), "one kill --all");
    c.add_exec("e".into(), spec(), StdioConfig::default(), ()).unwrap();
    assert!(matches!(c.start_exec("e"), Err(RuntimeError::StartRefused { refusal: Refusal::InitExited, .. })));
    assert_eq!(c.state(None).unwrap().state, State::Running);
    assert_eq!(events(&c.killed_all(exit(INIT_PID, 0))), ["exit:c"]);
}

#[test]
fn restore_claims_the_restored_init_after_task_start() {
    let (mut c, _) = created_with(false, true);
    assert!(!c.delete_init().unwrap().runtime_delete, "nothing to runc delete before the restore");
    let plan = c.start_init().unwrap();
    assert!(plan.is_some());
    let (out, r) = c.init_started(Ok(Some(42)));
    assert_eq!(r.unwrap(), 42);
    assert_eq!(events(&out), ["start"]);
    assert_eq!(out.last(), Some(&Effect::Claim(ProcessId::Init, 42)));
    assert_eq!(c.init().pid, 42);
    assert!(c.delete_init().is_err());
    c.exited(ProcessId::Init, exit(42, 0), false);
    assert!(c.delete_init().unwrap().runtime_delete);
}

#[test]
fn failed_init_start_leaves_it_created() {
    let mut c = created();
    c.start_init().unwrap();
    let (out, r) = c.init_started(Err(RuntimeError::ProcessFinished));
    assert!(r.is_err() && out.is_empty());
    assert_eq!(c.init().state, State::Created);
    assert!(c.delete_init().is_ok());
}

#[test]
fn exec_reports_paused_while_its_container_is() {
    let mut c = exec_in(State::Running);
    c.pause(true).unwrap();
    assert_eq!(c.state(Some("e")).unwrap().state, State::Running, "pausing");
    c.paused(true, Ok(())).1.unwrap();
    assert_eq!(c.state(Some("e")).unwrap().state, State::Paused);
}

/// A SIGKILL sent while `runc pause` is in flight can reach a process that is frozen before it
/// dies (cgroup v1 freezer: a frozen task does not die until thawed), and then nothing would
/// thaw it: its Wait would never return. Once the pause returned, the init must be thawed, as
/// a SIGKILL of a paused init is.
#[test]
fn sigkill_during_pause_thaws_once_paused() {
    let mut c = init_in(State::Pausing);
    assert_eq!(c.kill(None, 9).unwrap(), KillPlan::Runtime { thaw: false }, "not frozen yet");
    let (out, r) = c.paused(true, Ok(()));
    r.unwrap();
    assert_eq!(events(&out), ["paused"]);
    assert_eq!(out.last(), Some(&Effect::Thaw), "{out:?}");
    // Once: a later pause and resume are plain.
    c.pause(false).unwrap();
    c.paused(false, Ok(())).1.unwrap();
    c.pause(true).unwrap();
    assert!(!c.paused(true, Ok(())).0.contains(&Effect::Thaw));
    // Another signal, or a failed pause, needs no thaw.
    let mut c = init_in(State::Pausing);
    c.kill(None, 15).unwrap();
    assert!(!c.paused(true, Ok(())).0.contains(&Effect::Thaw));
    let mut c = init_in(State::Pausing);
    c.kill(None, 9).unwrap();
    assert!(c.paused(true, Err(RuntimeError::ProcessFinished)).0.is_empty());
}

#[path = "tests_prop.rs"]
mod property;
