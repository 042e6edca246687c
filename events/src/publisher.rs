//! The one publisher task: a FIFO of events forwarded to containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward` on `TTRPC_ADDRESS`.
//!
//! Policy:
//! - One queue for the whole shim, drained by one task, so events leave in the order they were
//!   queued (and per-container order, which the sequencer established, is kept).
//! - A failed `Forward` is retried *in place*: the head event is re-sent after a capped backoff
//!   and a fresh connection, and nothing behind it overtakes it. Nothing is dropped because
//!   containerd is away (the Go shim gives up after 5 tries, SPEC §3.2).
//! - Permanent refusals: containerd answering `InvalidArgument` (a malformed envelope) or
//!   `NotFound` (its namespace is gone) would refuse the event forever; it is logged as an
//!   error with its topic and container and skipped, so the events behind it go out. Every
//!   other failure (no socket, refused, reset, `Unavailable`, ...) is transient: retried.
//! - A slow containerd: a `Forward` is sent without a deadline and its answer waited for on
//!   the same connection (a warning every [`ForwardTimeouts::answer`]). It is re-sent only when
//!   the connection breaks or after [`ForwardTimeouts::abandon`] (60 s) without an answer. So
//!   delivery is at-least-once, and a duplicate is possible only then (containerd restarted
//!   after taking the event, or did not answer for a minute). A duplicate is byte-identical
//!   (same envelope and timestamp) and is sent before anything queued after it; containerd's
//!   consumers treat a repeated TaskExit of the same process as already handled (CRI updates
//!   an exited container's status once). Giving up instead would lose TaskExit, which nothing
//!   can rebuild.
//! - [`Publisher::publish`] never blocks its caller (the container actors and the reaper path).
//! - Memory ceiling ([`QueueLimits`], default 65 536 events or 16 MiB of encoded envelopes,
//!   whichever is reached first): events are counted from `publish` until delivered. No event
//!   another one depends on is ever dropped: create, start, exec-added and exec-started (a later
//!   exit or delete needs them), exit, OOM and delete are always queued. Above the ceiling only
//!   paused/resumed notifications are dropped, and new work is refused instead: the shim asks
//!   [`Publisher::over_ceiling`] before Create and Exec, so the lifecycle events still to come
//!   are bounded by the processes that exist. Drops are logged as warnings, rate-limited to the
//!   1st, 2nd, 4th, 8th, ... drop of an episode, each stating how many were dropped so far;
//!   when an event is delivered again after drops, one info line gives the episode's total.
//!   [`Publisher::stats`] exposes the counters.
//! - [`Publisher::flush`] waits, with a bound, until everything queued before it was delivered.
//!   [`Publisher::drain`] is the shim's exit path: it waits until the queue is delivered, or
//!   containerd is known gone (its socket is missing or refuses connections), or a bound
//!   passes, and reports the counts.

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
/// How long an unanswered `Forward` is waited for before it is re-sent on a new connection.
const FORWARD_ABANDON: Duration = Duration::from_secs(60);
/// How often [`Publisher::drain`] looks at the queue.
const DRAIN_POLL: Duration = Duration::from_millis(20);
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
    /// How long a `Forward` may take.
    pub timeouts: ForwardTimeouts,
}

/// How long the publisher waits for containerd to answer one `Forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardTimeouts {
    /// After this long without an answer, a warning is logged.
    pub answer: Duration,
    /// After this long without an answer, the connection is dropped and the event re-sent.
    pub abandon: Duration,
}

impl Default for ForwardTimeouts {
    fn default() -> Self {
        ForwardTimeouts { answer: FORWARD_TIMEOUT, abandon: FORWARD_ABANDON }
    }
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
    /// Paused/resumed events dropped over the ceiling since start.
    pub dropped: u64,
    /// Events containerd refused for good (skipped) since start.
    pub rejected: u64,
}

/// What [`Publisher::drain`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Events delivered (or refused for good) while draining.
    pub delivered: u64,
    /// Events still queued when it returned.
    pub undelivered: usize,
    /// Whether it stopped because containerd's socket was missing or refused connections.
    pub containerd_gone: bool,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicUsize,
    bytes: AtomicUsize,
    dropped: AtomicU64,
    rejected: AtomicU64,
    /// Events taken off the queue (delivered or refused for good).
    done: AtomicU64,
    /// Connection attempts that found no containerd (no socket, or refused).
    gone: AtomicU64,
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

/// Only paused/resumed may be dropped over the ceiling: no later event depends on them, and the
/// container's state is in State either way. Every other event is either needed by a later one
/// (create, start, exec-added, exec-started) or carries what containerd cannot learn again
/// (exit, OOM, delete).
fn droppable(event: &Event) -> bool {
    matches!(event, Event::Paused(_) | Event::Resumed(_))
}

/// containerd would refuse this event every time: skip it rather than block the queue.
fn permanent(status: &ttrpc::Status) -> bool {
    matches!(status.code(), ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::NOT_FOUND)
}

impl Publisher {
    /// Starts the publisher task on the current tokio runtime. The task ends when every
    /// `Publisher` handle is dropped and the queue is drained.
    pub fn start(config: PublisherConfig) -> (Publisher, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let handle = tokio::spawn(run(config.ttrpc_address, config.timeouts, rx, Arc::clone(&counters)));
        (Publisher { tx, namespace: config.namespace.into(), limits: config.limits, counters }, handle)
    }

    /// Queues an event, or drops it if it is a paused/resumed notification and the queue is over
    /// its ceiling. Never blocks.
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
        if droppable(&event) && (events >= self.limits.max_events || bytes.saturating_add(size) > self.limits.max_bytes)
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
                    "event queue over its ceiling (containerd unreachable?): paused/resumed event dropped"
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
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        }
    }

    /// Whether the queue is at its ceiling: the shim then refuses new work (Create, Exec), whose
    /// lifecycle events could not be dropped.
    pub fn over_ceiling(&self) -> bool {
        let c = &self.counters;
        c.events.load(Ordering::Relaxed) >= self.limits.max_events
            || c.bytes.load(Ordering::Relaxed) >= self.limits.max_bytes
    }

    /// The exit path: waits until everything queued before this call was delivered, or
    /// containerd is known gone (a connection attempt after this call found no socket or was
    /// refused), or `limit` passes.
    pub async fn drain(&self, limit: Duration) -> DrainReport {
        let c = &self.counters;
        let (done0, gone0) = (c.done.load(Ordering::Relaxed), c.gone.load(Ordering::Relaxed));
        let (tx, mut rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + limit;
        let mut containerd_gone = false;
        if self.tx.send(Queued::Flush(tx)).is_ok() {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(DRAIN_POLL) => {
                        if c.gone.load(Ordering::Relaxed) > gone0 {
                            containerd_gone = true;
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                }
            }
        }
        DrainReport {
            delivered: c.done.load(Ordering::Relaxed) - done0,
            undelivered: c.events.load(Ordering::Relaxed),
            containerd_gone,
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

/// How one delivery attempt ended.
enum Outcome {
    Delivered,
    /// containerd refused it for good.
    Refused(ttrpc::Status),
    /// Worth retrying.
    Failed(String),
}

async fn run(
    ttrpc_address: String,
    timeouts: ForwardTimeouts,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    counters: Arc<Counters>,
) {
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
            let outcome = deliver(&address, &mut client, &request, timeouts, &counters).await;
            let failure = match outcome {
                Outcome::Delivered => None,
                Outcome::Refused(status) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        topic,
                        container_id,
                        code = ?status.code(),
                        message = status.message(),
                        "containerd refused the event for good; skipped"
                    );
                    None
                }
                Outcome::Failed(e) => Some(e),
            };
            let Some(e) = failure else {
                counters.events.fetch_sub(1, Ordering::Relaxed);
                counters.bytes.fetch_sub(size, Ordering::Relaxed);
                counters.done.fetch_add(1, Ordering::Relaxed);
                let dropped = counters.episode.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::info!(dropped, "events are delivered again; paused/resumed events dropped meanwhile");
                }
                break;
            };
            client = None;
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(topic, container_id, attempt, error = %e, "event delivery failed; retrying in place");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Connects to containerd's ttrpc socket; a missing or refusing socket counts as "gone".
async fn connect(address: &str, counters: &Counters) -> Result<EventsClient, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.is_empty() {
        // No TTRPC_ADDRESS: nobody to deliver to, ever.
        counters.gone.fetch_add(1, Ordering::Relaxed);
        return Err("no events address (TTRPC_ADDRESS is empty)".into());
    }
    if !path.starts_with('/') {
        // Not a filesystem path (an abstract socket): ttrpc's own connect.
        let c = ttrpc::asynchronous::Client::connect(address).await.map_err(|e| e.to_string())?;
        return Ok(EventsClient::new(c));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(stream) => Ok(EventsClient::new(ttrpc::asynchronous::Client::new(
            ttrpc::asynchronous::transport::Socket::from(stream),
        ))),
        Err(e) => {
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) {
                counters.gone.fetch_add(1, Ordering::Relaxed);
            }
            Err(format!("connect {path}: {e}"))
        }
    }
}

async fn deliver(
    address: &str,
    client: &mut Option<EventsClient>,
    request: &ForwardRequest,
    timeouts: ForwardTimeouts,
    counters: &Counters,
) -> Outcome {
    let c = match client {
        Some(c) => c,
        None => match connect(address, counters).await {
            Ok(c) => client.insert(c),
            Err(e) => return Outcome::Failed(e),
        },
    };
    // No deadline on the request: containerd must not drop an event half-way because it was
    // slow, and an answer that comes late is still an answer (no re-send, no duplicate).
    let ctx = ttrpc::context::Context::default();
    let call = c.forward(ctx, request);
    tokio::pin!(call);
    let started = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(timeouts.answer, &mut call).await {
            Ok(Ok(_)) => return Outcome::Delivered,
            Ok(Err(ttrpc::Error::RpcStatus(s))) if permanent(&s) => return Outcome::Refused(s),
            Ok(Err(e)) => return Outcome::Failed(e.to_string()),
            Err(_) => {
                let waited = started.elapsed();
                if waited >= timeouts.abandon {
                    return Outcome::Failed(format!("no answer within {}s; re-sending", waited.as_secs()));
                }
                tracing::warn!(
                    waited_ms = waited.as_millis(),
                    "containerd has not answered a Forward yet; still waiting"
                );
            }
        }
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
mod tests;
