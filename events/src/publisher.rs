//! The one publisher task: a FIFO of events forwarded to containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward` on `TTRPC_ADDRESS`.
//!
//! Policy:
//! - One queue for the whole shim, drained by one task, so events leave in the order they were
//!   queued (and per-container order, which the sequencer established, is kept).
//! - A failed `Forward` is retried *in place*: the head event is re-sent after a capped backoff
//!   and a fresh connection, and nothing behind it overtakes it. Nothing is dropped because
//!   containerd is away (the Go shim gives up after 5 tries, SPEC §3.2).
//! - [`Publisher::publish`] never blocks its caller (the container actors and the reaper path):
//!   the queue is unbounded. Memory is bounded in practice by the number of lifecycle facts the
//!   shim produces while containerd is down; a hard ceiling with a logged policy is tracked in the
//!   reliability issue.
//! - [`Publisher::flush`] waits, with a bound, until everything queued before it was delivered;
//!   the shim calls it before exiting on `Shutdown`.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use protobuf::well_known_types::timestamp::Timestamp;
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
}

#[derive(Debug)]
enum Queued {
    Event { event: Event, at: SystemTime },
    Flush(oneshot::Sender<()>),
}

/// Handle to the publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Publisher {
    /// Starts the publisher task on the current tokio runtime. The task ends when every
    /// `Publisher` handle is dropped and the queue is drained.
    pub fn start(config: PublisherConfig) -> (Publisher, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(config, rx));
        (Publisher { tx }, handle)
    }

    /// Queues an event. Never blocks.
    pub fn publish(&self, event: Event) {
        tracing::debug!(topic = event.topic(), container_id = event.container_id(), "queue event");
        if self.tx.send(Queued::Event { event, at: SystemTime::now() }).is_err() {
            tracing::error!("event publisher is gone; event not queued");
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

async fn run(config: PublisherConfig, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let address = if config.ttrpc_address.contains("://") {
        config.ttrpc_address.clone()
    } else {
        format!("unix://{}", config.ttrpc_address)
    };
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let (event, at) = match item {
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Queued::Event { event, at } => (event, at),
        };
        let request = match envelope(&config.namespace, &event, at) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(topic = event.topic(), error = %e, "cannot encode event");
                continue;
            }
        };
        let mut backoff = MIN_BACKOFF;
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            match deliver(&address, &mut client, &request).await {
                Ok(()) => break,
                Err(e) => {
                    client = None;
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(
                            topic = event.topic(),
                            container_id = event.container_id(),
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
