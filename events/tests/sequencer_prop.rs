//! Property test of the sequencer's contract: random lifecycles of an init and up to five
//! execs, with the facts of each process arriving in any interleaving the runtime allows
//! (a process's own facts in order; its exit at any time after its start began, even before the
//! start completed; the init's exit at any time, even before `created`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use containerd_shim_protos::events::task::{TaskCreate, TaskExecAdded, TaskExecStarted, TaskStart};
use proptest::prelude::*;
use shim_events::{Event, ExitInfo, ProcessId, Sequencer, Step};

#[derive(Debug, Clone)]
struct ExecPlan {
    start_ok: bool,
    status: u32,
}

#[derive(Debug, Clone)]
struct Plan {
    init_start: Option<bool>,
    init_exits: bool,
    execs: Vec<ExecPlan>,
    picks: Vec<usize>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::option::of(any::<bool>()),
        any::<bool>(),
        prop::collection::vec(
            (any::<bool>(), 0u32..256).prop_map(|(start_ok, status)| ExecPlan { start_ok, status }),
            0..6,
        ),
        prop::collection::vec(any::<usize>(), 64),
    )
        .prop_map(|(init_start, init_exits, execs, picks)| Plan { init_start, init_exits, execs, picks })
}

/// One "thread" of facts.
#[derive(Debug, Clone, PartialEq)]
enum Fact {
    Created,
    InitStarting,
    InitStartDone(bool),
    InitExit,
    ExecAdded(usize),
    ExecStarting(usize),
    ExecStartDone(usize, bool),
    ExecExit(usize),
}

struct Threads {
    /// Sequential facts per thread; a thread is blocked until its `after` fact was delivered.
    queues: Vec<(Option<Fact>, Vec<Fact>)>,
}

fn run(plan: &Plan) -> (Vec<Step>, HashMap<usize, bool>, bool) {
    let mut init = vec![Fact::Created];
    if let Some(ok) = plan.init_start {
        init.extend([Fact::InitStarting, Fact::InitStartDone(ok)]);
    }
    let mut t = Threads { queues: vec![(None, init)] };
    if plan.init_exits {
        t.queues.push((None, vec![Fact::InitExit]));
    }
    for (i, e) in plan.execs.iter().enumerate() {
        t.queues.push((
            Some(Fact::Created),
            vec![Fact::ExecAdded(i), Fact::ExecStarting(i), Fact::ExecStartDone(i, e.start_ok)],
        ));
        if e.start_ok {
            t.queues.push((Some(Fact::ExecStarting(i)), vec![Fact::ExecExit(i)]));
        }
    }
    let mut seq = Sequencer::new("c");
    let mut out = Vec::new();
    let mut delivered: Vec<Fact> = Vec::new();
    let mut admitted: HashMap<usize, bool> = HashMap::new();
    let mut refused: Vec<usize> = Vec::new();
    let mut pick = plan.picks.iter().cycle();
    loop {
        let ready: Vec<usize> = (0..t.queues.len())
            .filter(|&i| {
                let (after, q) = &t.queues[i];
                let blocked_by_refusal = q.first().is_some_and(|f| match f {
                    Fact::ExecStartDone(e, _) | Fact::ExecExit(e) => refused.contains(e),
                    _ => false,
                });
                !q.is_empty() && !blocked_by_refusal && after.as_ref().is_none_or(|a| delivered.contains(a))
            })
            .collect();
        if ready.is_empty() {
            break;
        }
        let i = ready[pick.next().unwrap() % ready.len()];
        let fact = t.queues[i].1.remove(0);
        let exit = |pid: u32, status: u32| ExitInfo { pid, status, at: UNIX_EPOCH };
        let steps = match &fact {
            Fact::Created => seq.created(TaskCreate::new()),
            Fact::InitStarting => {
                if seq.init_starting().is_err() {
                    // The actor refuses the start; the rest of the init's start never happens.
                    t.queues[i].1.clear();
                }
                vec![]
            }
            Fact::InitStartDone(true) => seq.init_started(TaskStart::new()),
            Fact::InitStartDone(false) => seq.init_start_failed(),
            Fact::InitExit => seq.exited(&ProcessId::Init, exit(1, 137)),
            Fact::ExecAdded(e) => {
                let mut ev = TaskExecAdded::new();
                ev.exec_id = format!("e{e}");
                seq.exec_added(ev)
            }
            Fact::ExecStarting(e) => {
                let ok = seq.exec_starting(&format!("e{e}")).is_ok();
                admitted.insert(*e, ok);
                if !ok {
                    refused.push(*e);
                }
                vec![]
            }
            Fact::ExecStartDone(e, true) => {
                let mut ev = TaskExecStarted::new();
                ev.exec_id = format!("e{e}");
                ev.pid = 100 + u32::try_from(*e).unwrap();
                seq.exec_started(ev)
            }
            Fact::ExecStartDone(e, false) => seq.exec_start_failed(&format!("e{e}")),
            Fact::ExecExit(e) => seq.exited(
                &ProcessId::Exec(format!("e{e}")),
                exit(100 + u32::try_from(*e).unwrap(), plan.execs[*e].status),
            ),
        };
        out.extend(steps);
        delivered.push(fact);
    }
    let init_exit_seen = delivered.contains(&Fact::InitExit);
    (out, admitted, init_exit_seen)
}

fn position(out: &[Step], pred: impl Fn(&Step) -> bool) -> Vec<usize> {
    out.iter().enumerate().filter(|(_, s)| pred(s)).map(|(i, _)| i).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn contract_holds_under_any_interleaving(plan in plan()) {
        let (out, admitted, init_exit_seen) = run(&plan);
        // TaskCreate first.
        prop_assert!(matches!(out.first(), Some(Step::Publish(Event::Create(_)))));
        let init_exits = position(&out, |s| matches!(s, Step::Exited(ProcessId::Init, _)));
        prop_assert!(init_exits.len() <= 1, "one init exit at most: {out:?}");
        // The init exit follows TaskStart when a start succeeded.
        let start = position(&out, |s| matches!(s, Step::Publish(Event::Start(_))));
        prop_assert!(start.len() <= 1);
        if let (Some(&x), Some(&st)) = (init_exits.first(), start.first()) {
            prop_assert!(st < x, "start before init exit: {out:?}");
        }
        for (i, e) in plan.execs.iter().enumerate() {
            let id = format!("e{i}");
            let started = position(&out, |s| matches!(s, Step::Publish(Event::ExecStarted(ev)) if ev.exec_id == id));
            let exits = position(&out, |s| matches!(s, Step::Exited(ProcessId::Exec(x), _) if *x == id));
            let was_admitted = admitted.get(&i).copied().unwrap_or(false);
            if !was_admitted || !e.start_ok {
                prop_assert!(started.is_empty() && exits.is_empty(), "{id} never started: {out:?}");
                continue;
            }
            // Started exec: exactly one started, then exactly one exit (liveness: its exit was delivered).
            prop_assert_eq!(started.len(), 1, "{} started once: {:?}", id, out);
            prop_assert_eq!(exits.len(), 1, "{} exits once: {:?}", id, out);
            prop_assert!(started[0] < exits[0], "{id} start before exit: {out:?}");
            if let Step::Exited(_, x) = &out[exits[0]] {
                prop_assert_eq!(x.status, e.status);
            }
            // Admitted execs exit before the init.
            if let Some(&ix) = init_exits.first() {
                prop_assert!(exits[0] < ix, "{id} exit before init exit: {out:?}");
            }
        }
        // Liveness: once every fact arrived, a seen init exit is released.
        prop_assert_eq!(init_exits.len(), usize::from(init_exit_seen), "init exit released: {:?}", out);
    }
}
