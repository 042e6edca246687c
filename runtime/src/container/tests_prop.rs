//! Property test of the core: random lifecycles of an init and up to four execs, requests,
//! exits and OCI completions interleaved in any order the shell allows (a completion only for
//! a call in flight, an exec's exit only once its start returned a pid, exits of unknown and
//! deleted processes at any time), checked against the event order contract (SPEC §3.3).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

const EXECS: usize = 4;

#[derive(Debug, Default)]
struct World {
    init_starting: bool,
    exec_starting: HashSet<usize>,
    exec_live: HashSet<usize>,
    pausing: Option<bool>,
    deleting: bool,
    kill_all: Option<ExitInfo>,
    init_exited: bool,
    done: bool,
}

fn name(i: usize) -> String {
    format!("e{i}")
}

/// Applies the `choice`-th kind of input with argument `arg`, if the world allows it now.
fn step(c: &mut Core<()>, w: &mut World, choice: u8, arg: u8, log: &mut Effects) {
    let i = usize::from(arg) % EXECS;
    let e = name(i);
    match choice % 15 {
        0 => {
            if c.start_init().is_ok() {
                w.init_starting = true;
            }
        }
        1 if w.init_starting => {
            w.init_starting = false;
            let r = if arg.is_multiple_of(3) { Err(RuntimeError::ProcessFinished) } else { Ok(None) };
            log.extend(c.init_started(r).0);
        }
        2 => {
            if let Ok(out) = c.add_exec(e, spec(), StdioConfig::default(), ()) {
                log.extend(out);
            }
        }
        3 => {
            if c.start_exec(&e).is_ok() {
                w.exec_starting.insert(i);
            }
        }
        4 if w.exec_starting.contains(&i) => {
            w.exec_starting.remove(&i);
            let r = match arg / 4 % 3 {
                0 => Ok(exec_pid(i)),
                1 => Err((RuntimeError::ProcessFinished, None)),
                _ => Err((RuntimeError::ProcessFinished, Some(exit(exec_pid(i), 137)))),
            };
            let ok = r.is_ok();
            log.extend(c.exec_started(&e, r).0);
            if ok {
                w.exec_live.insert(i);
            }
        }
        5 if !w.init_exited => {
            w.init_exited = true;
            let out = c.exited(ProcessId::Init, exit(INIT_PID, u32::from(arg)), arg.is_multiple_of(5));
            for eff in &out {
                if let Effect::KillAll(x) = eff {
                    w.kill_all = Some(*x);
                }
            }
            log.extend(out);
        }
        6 if w.exec_live.contains(&i) => {
            w.exec_live.remove(&i);
            log.extend(c.exited(exec(&e), exit(exec_pid(i), u32::from(arg)), false));
        }
        7 => {
            let pause = arg.is_multiple_of(2);
            if w.pausing.is_none() && c.pause(pause).is_ok() {
                w.pausing = Some(pause);
            }
        }
        8 => {
            if let Some(pause) = w.pausing.take() {
                let r = if arg.is_multiple_of(4) { Err(RuntimeError::ProcessFinished) } else { Ok(()) };
                log.extend(c.paused(pause, r).0);
            }
        }
        9 => {
            if let Ok((_, (), out)) = c.delete_exec(&e) {
                w.exec_live.remove(&i);
                log.extend(out);
            }
        }
        10 => {
            if !w.deleting && c.delete_init().is_ok() {
                w.deleting = true;
            }
        }
        11 if w.deleting => {
            w.deleting = false;
            let r = if arg.is_multiple_of(4) { Err(RuntimeError::ProcessFinished) } else { Ok(()) };
            let (out, r) = c.init_deleted(r);
            w.done = r.is_ok();
            log.extend(out);
        }
        12 => {
            if let Some(x) = w.kill_all.take() {
                log.extend(c.killed_all(x));
            }
        }
        13 => {
            // Exits nobody asked for: unknown execs, and execs that are not running.
            let stray = if arg.is_multiple_of(2) { exec("stray") } else { exec(&e) };
            if !w.exec_live.contains(&i) {
                log.extend(c.exited(stray, exit(7, 0), false));
            }
        }
        _ => {
            let _ = c.kill(if arg.is_multiple_of(2) { None } else { Some(&e) }, 9);
        }
    }
}

/// Checks the event order contract on everything the core asked the shell to do.
fn check(log: &[Effect]) -> Result<(), String> {
    let ev = events(log);
    let pos = |s: &str| ev.iter().position(|x| x == s);
    let count = |s: &str| ev.iter().filter(|x| *x == s).count();
    if ev.first().map(String::as_str) != Some("create") {
        return Err(format!("TaskCreate is not first: {ev:?}"));
    }
    for once in ["create", "start", "exit:c", "delete"] {
        if count(once) > 1 {
            return Err(format!("{once} twice: {ev:?}"));
        }
    }
    if let Some(d) = pos("delete") {
        if d != ev.len() - 1 {
            return Err(format!("events after TaskDelete: {ev:?}"));
        }
    }
    let init_exit = pos("exit:c");
    if let (Some(s), Some(x)) = (pos("start"), init_exit) {
        if s > x {
            return Err(format!("TaskStart after the init's TaskExit: {ev:?}"));
        }
    }
    for i in 0..EXECS {
        let e = name(i);
        let (added, started, exited) =
            (pos(&format!("added:{e}")), pos(&format!("started:{e}")), pos(&format!("exit:{e}")));
        if count(&format!("started:{e}")) > 1 || count(&format!("exit:{e}")) > 1 {
            return Err(format!("{e} started or exited twice: {ev:?}"));
        }
        match (added, started, exited) {
            (_, None, Some(_)) => return Err(format!("exit of {e} without its start: {ev:?}")),
            (None, Some(_), _) => return Err(format!("{e} started without being added: {ev:?}")),
            (Some(a), Some(s), x) if a > s || x.is_some_and(|x| x < s) => {
                return Err(format!("{e} out of order: {ev:?}"))
            }
            _ => {}
        }
        if let (Some(s), Some(ix)) = (started, init_exit) {
            if s > ix {
                return Err(format!("{e} started after the init's exit: {ev:?}"));
            }
            if exited.is_none_or(|x| x > ix) {
                return Err(format!("the init's exit precedes the exit of started exec {e}: {ev:?}"));
            }
        }
    }
    for (k, x) in ev.iter().enumerate() {
        if (x == "paused" || x == "resumed") && (pos("start").is_none_or(|s| s > k) || init_exit.is_some_and(|i| i < k))
        {
            return Err(format!("{x} outside the running init: {ev:?}"));
        }
    }
    // Waiters are released right after their process's TaskExit (or without one for a failed
    // start, whose exec was never announced started).
    for (k, eff) in log.iter().enumerate() {
        if let Effect::ReleaseWaiters(p, _) = eff {
            let id = match p {
                ProcessId::Init => "c".to_owned(),
                ProcessId::Exec(e) => e.clone(),
            };
            let after_exit = k > 0 && matches!(&log[k - 1], Effect::Publish(Event::Exit(x)) if x.id == id);
            let announced = ev.contains(&format!("started:{id}")) || id == "c";
            if !after_exit && announced {
                return Err(format!("waiters of {id} released without their TaskExit just before: {log:?}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn effects_keep_the_event_order(
        shares_pid_ns in any::<bool>(),
        inputs in prop::collection::vec((any::<u8>(), any::<u8>()), 1..80),
    ) {
        let (mut c, mut log) = created_with(shares_pid_ns, false);
        let mut w = World::default();
        let mut published: HashMap<String, usize> = HashMap::new();
        for (choice, arg) in inputs {
            step(&mut c, &mut w, choice, arg, &mut log);
            if w.done {
                break;
            }
        }
        for e in events(&log) {
            *published.entry(e).or_default() += 1;
        }
        if let Err(why) = check(&log) {
            return Err(TestCaseError::fail(why));
        }
        // The state agrees with the events.
        if published.contains_key("exit:c") {
            prop_assert!(matches!(c.init().state, State::Stopped | State::Deleted));
        }
        if published.contains_key("delete") {
            prop_assert_eq!(c.init().state, State::Deleted);
            prop_assert_eq!(log.last(), Some(&Effect::LeaveRegistry));
        }
    }
}
