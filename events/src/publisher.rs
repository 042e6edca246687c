//! The one publisher task: a FIFO of events forwarded to containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward` on `TTRPC_ADDRESS`.
//!
//! Policy:
//! - One queue for the whole shim, drained by one task, so events leave in the order they were
//!   queued (and per-container order, which the sequencer established, is kept).
//! - A failed `Forward` is retried *in place*: the head event is re-sent after a capped backoff
//!   and a fresh connection, and nothing behind it overtakes it. Nothing is dropped because
//!   containerd is away (the Go shim gives up after 5 tries, SPEC §3.2).
//! - [`Publisher::publish`] never blocks its caller (the container actors and the reaper path).
//! - Memory ceiling ([`QueueLimits`], default 65 536 events or 16 MiB of encoded envelopes,
//!   whichever is reached first): events are counted from `publish` until delivered. Above the
//!   ceiling, a *non-exit* event (create, start, exec-added, exec-started, paused, resumed) is
//!   dropped, never an exit: `TaskExit`, `TaskOOM` and `TaskDelete` are always queued, even
//!   over the ceiling (they are bounded by the number of processes and containers, each exits
//!   and is deleted once). Drops are logged as warnings, rate-limited to the 1st, 2nd, 4th, 8th,
//!   ... drop of an episode, each stating how many were dropped so far; when an event is
//!   delivered again after drops, one info line gives the episode's total. [`Publisher::stats`]
//!   exposes the counters.
//! - [`Publisher::flush`] waits, with a bound, until everything queued before it was delivered;
//!   the shim calls it before exiting on `Shutdown`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::topics::Event;

/// Timeout of one `Forward` call, as in the Go shim.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed delivery; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between two delivery attempts of the same event.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where and as whom events are published.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// containerd's ttrpc socket (`TTRPC_ADDRESS`), a path or `unix://` address.
    pub ttrpc_address: String,
    /// The containerd namespace stamped on every envelope.
    pub namespace: String,
    /// The queue's memory ceiling.
    pub limits: QueueLimits,
}

/// The publisher queue's ceiling (see the module docs for what happens above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most events queued (undelivered) before non-exit events are dropped.
    pub max_events: usize,
    /// Most encoded bytes queued before non-exit events are dropped.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_events: 65_536, max_bytes: 16 << 20 }
    }
}

/// A snapshot of the queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Events published and not yet delivered.
    pub queued_events: usize,
    /// Their encoded size.
    pub queued_bytes: usize,
    /// Non-exit events dropped over the ceiling since start.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicUsize,
    bytes: AtomicUsize,
    dropped: AtomicU64,
    /// Drops of the current episode (reset when an event is delivered again).
    episode: AtomicU64,
}

#[derive(Debug)]
enum Queued {
    Event { request: ForwardRequest, size: usize, topic: &'static str, container_id: String },
    Flush(oneshot::Sender<()>),
}

/// Handle to the publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Queued>,
    namespace: Arc<str>,
    limits: QueueLimits,
    counters: Arc<Counters>,
}

/// Exits, OOMs and deletes are never dropped: they carry what containerd cannot learn again.
fn never_dropped(event: &Event) -> bool {
    matches!(event, Event::Exit(_) | Event::Oom(_) | Event::Delete(_))
}

impl Publisher {
    /// Starts the publisher task on the current tokio runtime. The task ends when every
    /// `Publisher` handle is dropped and the queue is drained.
    pub fn start(config: PublisherConfig) -> (Publisher, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let handle = tokio::spawn(run(config.ttrpc_address, rx, Arc::clone(&counters)));
        (Publisher { tx, namespace: config.namespace.into(), limits: config.limits, counters }, handle)
    }

    /// Queues an event, or drops it if it is not an exit and the queue is over its ceiling.
    /// Never blocks.
    pub fn publish(&self, event: Event) {
        let (topic, container_id) = (event.topic(), event.container_id().to_owned());
        let request = match envelope(&self.namespace, &event, SystemTime::now()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(topic, container_id, error = %e, "cannot encode event");
                return;
            }
        };
        let size = usize::try_from(request.compute_size()).unwrap_or(usize::MAX);
        let c = &self.counters;
        let (events, bytes) = (c.events.load(Ordering::Relaxed), c.bytes.load(Ordering::Relaxed));
        if !never_dropped(&event)
            && (events >= self.limits.max_events || bytes.saturating_add(size) > self.limits.max_bytes)
        {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            let n = c.episode.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    topic,
                    container_id,
                    dropped = n,
                    queued_events = events,
                    queued_bytes = bytes,
                    max_events = self.limits.max_events,
                    max_bytes = self.limits.max_bytes,
                    "event queue over its ceiling (containerd unreachable?): non-exit event dropped"
                );
            }
            return;
        }
        tracing::debug!(topic, container_id, "queue event");
        c.events.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(size, Ordering::Relaxed);
        if self.tx.send(Queued::Event { request, size, topic, container_id }).is_err() {
            c.events.fetch_sub(1, Ordering::Relaxed);
            c.bytes.fetch_sub(size, Ordering::Relaxed);
            tracing::error!("event publisher is gone; event not queued");
        }
    }

    /// The queue's counters now.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            queued_events: self.counters.events.load(Ordering::Relaxed),
            queued_bytes: self.counters.bytes.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until every event queued before this call was delivered, or `limit` passes.
    /// Returns whether the queue was drained.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Queued::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

async fn run(ttrpc_address: String, mut rx: mpsc::UnboundedReceiver<Queued>, counters: Arc<Counters>) {
    let address = if ttrpc_address.contains("://") { ttrpc_address.clone() } else { format!("unix://{ttrpc_address}") };
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let (request, size, topic, container_id) = match item {
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Queued::Event { request, size, topic, container_id } => (request, size, topic, container_id),
        };
        let mut backoff = MIN_BACKOFF;
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            match deliver(&address, &mut client, &request).await {
                Ok(()) => {
                    counters.events.fetch_sub(1, Ordering::Relaxed);
                    counters.bytes.fetch_sub(size, Ordering::Relaxed);
                    let dropped = counters.episode.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        tracing::info!(dropped, "events are delivered again; non-exit events dropped meanwhile");
                    }
                    break;
                }
                Err(e) => {
                    client = None;
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(
                            topic,
                            container_id,
                            attempt,
                            error = %e,
                            "event delivery failed; retrying in place"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn deliver(
    address: &str,
    client: &mut Option<EventsClient>,
    request: &ForwardRequest,
) -> Result<(), ttrpc::Error> {
    let c = match client {
        Some(c) => c,
        None => client.insert(EventsClient::new(ttrpc::asynchronous::Client::connect(address).await?)),
    };
    let timeout_ns = i64::try_from(FORWARD_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
    match tokio::time::timeout(FORWARD_TIMEOUT, c.forward(ttrpc::context::with_timeout(timeout_ns), request)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(ttrpc::Error::Others("forward timed out".into())),
    }
}

fn envelope(namespace: &str, event: &Event, at: SystemTime) -> Result<ForwardRequest, protobuf::Error> {
    let mut env = Envelope::new();
    env.timestamp = protobuf::MessageField::some(timestamp(at));
    env.namespace = namespace.to_owned();
    env.topic = event.topic().to_owned();
    env.event = protobuf::MessageField::some(event.to_any()?);
    let mut req = ForwardRequest::new();
    req.envelope = protobuf::MessageField::some(env);
    Ok(req)
}

/// Converts a wall-clock time to a protobuf timestamp (times before the epoch become the epoch).
pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use containerd_shim_protos::events::task::{TaskDelete, TaskExit, TaskOOM, TaskStart};
    use containerd_shim_protos::shim_async::{create_events, Events};
    use protobuf::well_known_types::empty::Empty;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

    #[async_trait::async_trait]
    impl Events for Recorder {
        async fn forward(&self, _ctx: &ttrpc::asynchronous::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let env = req.envelope.into_option().unwrap();
            let id = match env.topic.as_str() {
                "/tasks/start" => TaskStart::parse_from_bytes(&env.event.value).unwrap().container_id,
                "/tasks/exit" => TaskExit::parse_from_bytes(&env.event.value).unwrap().container_id,
                "/tasks/oom" => TaskOOM::parse_from_bytes(&env.event.value).unwrap().container_id,
                "/tasks/delete" => TaskDelete::parse_from_bytes(&env.event.value).unwrap().container_id,
                t => t.to_owned(),
            };
            self.0.lock().unwrap().push((env.topic, id));
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

    fn publisher(path: &std::path::Path, limits: QueueLimits) -> (Publisher, JoinHandle<()>) {
        Publisher::start(PublisherConfig { ttrpc_address: path.display().to_string(), namespace: "ns".into(), limits })
    }

    /// containerd away: above the event ceiling starts are dropped, exits, OOMs and deletes
    /// never; once containerd is back, what was kept arrives in order.
    #[tokio::test]
    async fn over_the_event_ceiling_only_non_exit_events_are_dropped() {
        let path = socket("events");
        let (p, task) = publisher(&path, QueueLimits { max_events: 4, max_bytes: 1 << 20 });
        let mut sent = Vec::new();
        for i in 0..10 {
            let id = format!("c{i}");
            p.publish(start(&id));
            sent.push(("/tasks/start", id.clone()));
            if i % 3 == 0 {
                p.publish(exit(&id));
                sent.push(("/tasks/exit", id.clone()));
                let mut oom = TaskOOM::new();
                oom.container_id = id.clone();
                p.publish(Event::Oom(oom));
                sent.push(("/tasks/oom", id.clone()));
                let mut del = TaskDelete::new();
                del.container_id = id.clone();
                p.publish(Event::Delete(del));
                sent.push(("/tasks/delete", id));
            }
        }
        let stats = p.stats();
        // Queue order: start c0, exit/oom/delete c0 (4 = ceiling), start c1 dropped, start c2
        // dropped, start c3 dropped, exit/oom/delete c3 kept, ...
        let kept: Vec<(&str, String)> = sent
            .iter()
            .enumerate()
            .filter(|(n, (t, _))| *n == 0 || *t != "/tasks/start")
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(stats.queued_events, kept.len());
        assert_eq!(stats.dropped, u64::try_from(sent.len() - kept.len()).unwrap());
        assert!(stats.queued_bytes > 0);
        let recorder = Recorder::default();
        let mut server = serve(&path, &recorder).await;
        assert!(p.flush(Duration::from_secs(20)).await);
        let got = recorder.0.lock().unwrap().clone();
        let want: Vec<(String, String)> = kept.iter().map(|(t, i)| ((*t).to_owned(), i.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(p.stats(), QueueStats { queued_events: 0, queued_bytes: 0, dropped: stats.dropped });
        // Under the ceiling again: a start is queued and delivered.
        p.publish(start("again"));
        assert!(p.flush(Duration::from_secs(20)).await);
        assert_eq!(recorder.0.lock().unwrap().last().unwrap(), &("/tasks/start".to_owned(), "again".to_owned()));
        server.shutdown().await.unwrap();
        drop(p);
        task.abort();
        let _ = std::fs::remove_file(&path);
    }

    /// The byte ceiling works the same way.
    #[tokio::test]
    async fn over_the_byte_ceiling_starts_are_dropped_exits_kept() {
        let path = socket("bytes");
        let (p, task) = publisher(&path, QueueLimits { max_events: usize::MAX, max_bytes: 300 });
        let long = "x".repeat(100);
        for _ in 0..5 {
            p.publish(start(&long));
        }
        let s = p.stats();
        assert!(s.queued_bytes <= 300 && s.queued_events >= 1 && s.dropped >= 1, "{s:?}");
        assert_eq!(s.queued_events + usize::try_from(s.dropped).unwrap(), 5);
        for _ in 0..5 {
            p.publish(exit(&long));
        }
        let s2 = p.stats();
        assert_eq!((s2.queued_events, s2.dropped), (s.queued_events + 5, s.dropped));
        assert!(s2.queued_bytes > 300);
        drop(p);
        task.abort();
    }
}
