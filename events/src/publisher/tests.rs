//! Unit tests of the publisher against a fake containerd events server over ttrpc.

#![allow(clippy::unwrap_used)]

use super::*;
use containerd_shim_protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskStart,
};
use containerd_shim_protos::shim_async::{create_events, Events};
use protobuf::well_known_types::empty::Empty;
use std::sync::Mutex;

/// What the fake events server does with one Forward: the topic and how many Forwards of
/// that topic it has seen before this one.
type Script = Arc<dyn Fn(&str, usize) -> Action + Send + Sync>;

#[derive(Clone, Copy, Debug)]
enum Action {
    Accept,
    /// Answer with this code (the event is not recorded).
    Reject(ttrpc::Code),
    /// Record it, then answer after this long.
    Slow(Duration),
}

/// A fake containerd `Events` endpoint recording (topic, container id).
#[derive(Clone)]
struct Recorder {
    got: Arc<Mutex<Vec<(String, String)>>>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    script: Script,
}

use std::collections::HashMap;

impl Default for Recorder {
    fn default() -> Self {
        Recorder::scripted(|_, _| Action::Accept)
    }
}

impl Recorder {
    fn scripted(f: impl Fn(&str, usize) -> Action + Send + Sync + 'static) -> Self {
        Recorder { got: Arc::default(), seen: Arc::default(), script: Arc::new(f) }
    }

    fn got(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Events for Recorder {
    async fn forward(&self, _ctx: &ttrpc::asynchronous::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope.into_option().unwrap();
        let v = &env.event.value;
        let id = match env.topic.as_str() {
            "/tasks/start" => TaskStart::parse_from_bytes(v).unwrap().container_id,
            "/tasks/exit" => TaskExit::parse_from_bytes(v).unwrap().container_id,
            "/tasks/oom" => TaskOOM::parse_from_bytes(v).unwrap().container_id,
            "/tasks/delete" => TaskDelete::parse_from_bytes(v).unwrap().container_id,
            "/tasks/exec-added" => TaskExecAdded::parse_from_bytes(v).unwrap().container_id,
            "/tasks/exec-started" => TaskExecStarted::parse_from_bytes(v).unwrap().container_id,
            "/tasks/paused" => TaskPaused::parse_from_bytes(v).unwrap().container_id,
            t => t.to_owned(),
        };
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(env.topic.clone()).or_default();
            *n += 1;
            *n - 1
        };
        match (self.script)(&env.topic, n) {
            Action::Accept => self.got.lock().unwrap().push((env.topic, id)),
            Action::Reject(code) => return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(code, "refused"))),
            Action::Slow(d) => {
                self.got.lock().unwrap().push((env.topic, id));
                tokio::time::sleep(d).await;
            }
        }
        Ok(Empty::new())
    }
}

fn start(id: &str) -> Event {
    let mut e = TaskStart::new();
    e.container_id = id.into();
    Event::Start(e)
}

fn exit(id: &str) -> Event {
    let mut e = TaskExit::new();
    e.container_id = id.into();
    Event::Exit(e)
}

fn socket(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("publisher-test-{}-{name}.sock", std::process::id()))
}

async fn serve(path: &std::path::Path, recorder: &Recorder) -> ttrpc::asynchronous::Server {
    let _ = std::fs::remove_file(path);
    let svc: Arc<dyn Events + Send + Sync> = Arc::new(recorder.clone());
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(create_events(svc));
    server.start().await.unwrap();
    server
}

fn publisher_with(
    path: &std::path::Path,
    limits: QueueLimits,
    timeouts: ForwardTimeouts,
) -> (Publisher, JoinHandle<()>) {
    Publisher::start(PublisherConfig {
        ttrpc_address: path.display().to_string(),
        namespace: "ns".into(),
        limits,
        timeouts,
    })
}

fn publisher(path: &std::path::Path, limits: QueueLimits) -> (Publisher, JoinHandle<()>) {
    publisher_with(path, limits, ForwardTimeouts::default())
}

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(t, i)| ((*t).to_owned(), (*i).to_owned())).collect()
}

/// containerd away and the queue over its ceiling: events a later event depends on
/// (create, start, exec-added, exec-started) and exits, OOMs and deletes are all kept;
/// only paused/resumed notifications are dropped. Once containerd is back, everything kept
/// arrives in order. (Before: starts were dropped, so TaskExit came without its TaskStart.)
#[tokio::test]
async fn over_the_ceiling_no_event_a_later_one_depends_on_is_dropped() {
    let path = socket("events");
    let (p, task) = publisher(&path, QueueLimits { max_events: 4, max_bytes: 1 << 20 });
    let mut kept = Vec::new();
    let mut dropped = 0;
    for i in 0..6 {
        let id = format!("c{i}");
        p.publish(start(&id));
        kept.push(("/tasks/start".to_owned(), id.clone()));
        let mut added = TaskExecAdded::new();
        added.container_id = id.clone();
        p.publish(Event::ExecAdded(added));
        kept.push(("/tasks/exec-added".to_owned(), id.clone()));
        let mut started = TaskExecStarted::new();
        started.container_id = id.clone();
        p.publish(Event::ExecStarted(started));
        kept.push(("/tasks/exec-started".to_owned(), id.clone()));
        let mut paused = TaskPaused::new();
        paused.container_id = id.clone();
        p.publish(Event::Paused(paused));
        if i == 0 {
            kept.push(("/tasks/paused".to_owned(), id.clone()));
        } else {
            dropped += 1;
        }
        p.publish(exit(&id));
        kept.push(("/tasks/exit".to_owned(), id.clone()));
    }
    let stats = p.stats();
    assert_eq!((stats.queued_events, stats.dropped), (kept.len(), dropped));
    assert!(p.over_ceiling(), "new work is refused at the ceiling");
    let recorder = Recorder::default();
    let mut server = serve(&path, &recorder).await;
    assert!(p.flush(Duration::from_secs(20)).await);
    assert_eq!(recorder.got(), kept);
    assert_eq!(p.stats().queued_events, 0);
    assert!(!p.over_ceiling());
    server.shutdown().await.unwrap();
    drop(p);
    task.abort();
    let _ = std::fs::remove_file(&path);
}

/// The byte ceiling works the same way.
#[tokio::test]
async fn over_the_byte_ceiling_paused_is_dropped_lifecycle_kept() {
    let path = socket("bytes");
    let (p, task) = publisher(&path, QueueLimits { max_events: usize::MAX, max_bytes: 300 });
    let long = "x".repeat(100);
    for _ in 0..5 {
        p.publish(start(&long));
    }
    let s = p.stats();
    assert_eq!((s.queued_events, s.dropped), (5, 0), "{s:?}");
    assert!(s.queued_bytes > 300);
    let mut paused = TaskPaused::new();
    paused.container_id = long.clone();
    p.publish(Event::Paused(paused));
    assert_eq!(p.stats().dropped, 1);
    drop(p);
    task.abort();
}

/// containerd refuses an event for good (InvalidArgument; NotFound, e.g. of the namespace):
/// it is logged and skipped, the events behind it are delivered. A transient refusal
/// (Unavailable) is retried in place. (Before: the refused event was retried at the head
/// forever and nothing behind it was delivered.)
#[tokio::test]
async fn a_permanently_rejected_event_is_skipped_a_transient_one_retried() {
    let path = socket("reject");
    let recorder = Recorder::scripted(|topic, n| match (topic, n) {
        ("/tasks/oom", _) => Action::Reject(ttrpc::Code::INVALID_ARGUMENT),
        ("/tasks/delete", _) => Action::Reject(ttrpc::Code::NOT_FOUND),
        ("/tasks/exit", 0 | 1) => Action::Reject(ttrpc::Code::UNAVAILABLE),
        _ => Action::Accept,
    });
    let mut server = serve(&path, &recorder).await;
    let (p, task) = publisher(&path, QueueLimits::default());
    p.publish(start("a"));
    let mut oom = TaskOOM::new();
    oom.container_id = "a".into();
    p.publish(Event::Oom(oom));
    p.publish(exit("a"));
    let mut del = TaskDelete::new();
    del.container_id = "a".into();
    p.publish(Event::Delete(del));
    p.publish(start("b"));
    assert!(p.flush(Duration::from_secs(20)).await, "queue stuck behind a refused event");
    assert_eq!(recorder.got(), owned(&[("/tasks/start", "a"), ("/tasks/exit", "a"), ("/tasks/start", "b")]));
    assert_eq!(p.stats().queued_events, 0);
    server.shutdown().await.unwrap();
    drop(p);
    task.abort();
    let _ = std::fs::remove_file(&path);
}

/// containerd accepted an event but answers after the Forward timeout: the publisher waits
/// for that answer on the same connection instead of re-sending, so containerd gets no
/// duplicate TaskExit and nothing overtakes it. (Before: the exit was re-sent on a new
/// connection, recorded twice, and the delete could land before the late original.)
#[tokio::test]
async fn a_slow_forward_is_waited_for_not_sent_twice() {
    let path = socket("slow");
    let recorder = Recorder::scripted(|topic, n| match (topic, n) {
        ("/tasks/exit", 0) => Action::Slow(Duration::from_millis(1500)),
        _ => Action::Accept,
    });
    let mut server = serve(&path, &recorder).await;
    let timeouts = ForwardTimeouts { answer: Duration::from_millis(200), abandon: Duration::from_secs(30) };
    let (p, task) = publisher_with(&path, QueueLimits::default(), timeouts);
    p.publish(start("a"));
    p.publish(exit("a"));
    let mut del = TaskDelete::new();
    del.container_id = "a".into();
    p.publish(Event::Delete(del));
    assert!(p.flush(Duration::from_secs(20)).await);
    // Let a late duplicate land, if one was sent.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(recorder.got(), owned(&[("/tasks/start", "a"), ("/tasks/exit", "a"), ("/tasks/delete", "a")]));
    server.shutdown().await.unwrap();
    drop(p);
    task.abort();
    let _ = std::fs::remove_file(&path);
}

/// The exit path with containerd gone (no socket): `drain` returns as soon as a connection
/// attempt finds nothing, not after its bound, and reports what is left.
#[tokio::test]
async fn drain_stops_once_containerd_is_known_gone() {
    let path = socket("gone");
    let _ = std::fs::remove_file(&path);
    let (p, task) = publisher(&path, QueueLimits::default());
    p.publish(start("a"));
    p.publish(exit("a"));
    let report = p.drain(Duration::from_secs(600)).await;
    assert_eq!(report, DrainReport { delivered: 0, undelivered: 2, containerd_gone: true });
    drop(p);
    task.abort();
}

/// No events address at all (TTRPC_ADDRESS unset): nobody will ever take the events.
#[tokio::test]
async fn drain_without_an_address_does_not_wait() {
    let (p, task) = publisher(std::path::Path::new(""), QueueLimits::default());
    p.publish(exit("a"));
    let report = p.drain(Duration::from_secs(600)).await;
    assert_eq!(report, DrainReport { delivered: 0, undelivered: 1, containerd_gone: true });
    drop(p);
    task.abort();
}

/// With containerd there, `drain` returns once everything is delivered, with the count.
#[tokio::test]
async fn drain_delivers_everything_queued() {
    let path = socket("drain");
    let recorder = Recorder::scripted(|_, _| Action::Slow(Duration::from_millis(50)));
    let mut server = serve(&path, &recorder).await;
    let (p, task) = publisher(&path, QueueLimits::default());
    for i in 0..10 {
        p.publish(start(&format!("c{i}")));
    }
    let report = p.drain(Duration::from_secs(60)).await;
    assert_eq!(report, DrainReport { delivered: 10, undelivered: 0, containerd_gone: false });
    assert_eq!(recorder.got().len(), 10);
    server.shutdown().await.unwrap();
    drop(p);
    task.abort();
    let _ = std::fs::remove_file(&path);
}
