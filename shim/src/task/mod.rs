//! The ttrpc task service: thin adapters (decode → runtime → encode). Served under both
//! `containerd.task.v3.Task` and `containerd.task.v2.Task` (identical messages).
//!
//! Each handler only decodes, calls the runtime and encodes; errors go through
//! `crate::status`. Decoders with more than a few lines live in their own files.

mod checkpoint;
mod create;
mod exec;
mod update;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use futures::FutureExt;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use shim_events::publisher::timestamp;
use shim_runtime::container::Shared;
use shim_runtime::options::validate_id;
use shim_runtime::process::State;
use tokio::sync::Notify;
use tracing::Instrument;
use ttrpc::asynchronous::{MethodHandler, TtrpcContext};

use crate::status::ShimError;

/// Service names the task service answers to.
pub const SERVICE_NAMES: [&str; 2] = ["containerd.task.v3.Task", "containerd.task.v2.Task"];

/// The task service state shared by all connections.
#[derive(Debug)]
pub struct TaskService {
    shared: Shared,
    namespace: String,
    shutdown: Arc<Notify>,
}

fn exec_opt(exec_id: &str) -> Option<String> {
    (!exec_id.is_empty()).then(|| exec_id.to_owned())
}

fn check_id(id: &str) -> Result<(), ShimError> {
    validate_id(id).map_err(|reason| ShimError::invalid_argument("id", reason))
}

fn check_exec_id(exec_id: &str) -> Result<(), ShimError> {
    if exec_id.is_empty() {
        return Ok(());
    }
    validate_id(exec_id).map_err(|reason| ShimError::invalid_argument("exec_id", reason))
}

fn status_of(state: State) -> Status {
    match state {
        State::Created | State::Starting => Status::CREATED,
        State::Running | State::Pausing => Status::RUNNING,
        State::Paused => Status::PAUSED,
        State::Stopped | State::Deleted => Status::STOPPED,
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

/// The span of one RPC: method, container id, exec id, and the pid once known (never the
/// process spec: it carries the environment). At the default (info) level it is disabled and
/// costs a level check; under `-debug` its close is logged with its duration.
fn rpc_span(method: &'static str, id: &str, exec_id: &str) -> tracing::Span {
    tracing::debug_span!("rpc", method, container_id = id, exec_id, pid = tracing::field::Empty)
}

/// Runs an RPC handler in its span; a failure is logged (debug) in it.
async fn traced<T>(span: tracing::Span, f: impl std::future::Future<Output = TtrpcResult<T>>) -> TtrpcResult<T> {
    async move {
        let r = f.await;
        if let Err(e) = &r {
            tracing::debug!(error = ?e, "rpc failed");
        }
        r
    }
    .instrument(span)
    .await
}

impl TaskService {
    /// A service over the shim's shared state; `shutdown` is notified when Shutdown finds no
    /// container left.
    pub fn new(shared: Shared, namespace: String, shutdown: Arc<Notify>) -> Self {
        TaskService { shared, namespace, shutdown }
    }

    /// The ttrpc service map, under both task API names. Every method is wrapped so that an
    /// undecodable request payload answers InvalidArgument (ttrpc's generated code says Unknown).
    pub fn services(self) -> HashMap<String, ttrpc::asynchronous::Service> {
        let svc: Arc<dyn Task + Send + Sync> = Arc::new(self);
        let mut out = HashMap::new();
        for name in SERVICE_NAMES {
            for (_, mut service) in containerd_shim_protos::shim_async::create_task(Arc::clone(&svc)) {
                service.methods = service
                    .methods
                    .into_iter()
                    .map(|(m, h)| (m, Box::new(DecodeCheck(h)) as Box<dyn MethodHandler + Send + Sync>))
                    .collect();
                out.insert(name.to_owned(), service);
            }
        }
        out
    }

    /// Refuses new work while the event queue is at its ceiling (see `shim_events::publisher`).
    fn check_event_backlog(&self) -> Result<(), ShimError> {
        let p = &self.shared.publisher;
        if p.over_ceiling() {
            return Err(ShimError::EventsBacklog { queued: p.stats().queued_events });
        }
        Ok(())
    }

    fn container(&self, id: &str) -> Result<shim_runtime::container::ContainerHandle, ShimError> {
        check_id(id)?;
        Ok(self.shared.registry.get(id)?)
    }
}

/// The prefix ttrpc's generated handlers give a request payload that does not decode.
const UNPACK_ERROR: &str = "Unpack request error";

/// A generated method handler whose payload-decoding failure answers InvalidArgument, and
/// whose panic (a bug) answers Internal instead of leaving the caller without a reply forever
/// (ttrpc drops the request's task silently). Release builds have `panic = "abort"`: there a
/// panic ends the daemon, which containerd notices, rather than a silent hang.
struct DecodeCheck(Box<dyn MethodHandler + Send + Sync>);

#[async_trait]
impl MethodHandler for DecodeCheck {
    async fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> TtrpcResult<ttrpc::Response> {
        let method = req.method.clone();
        let error = match AssertUnwindSafe(self.0.handler(ctx, req)).catch_unwind().await {
            Ok(Err(ttrpc::Error::Others(msg))) if msg.starts_with(UNPACK_ERROR) => {
                tracing::debug!(error = %msg, "undecodable request payload");
                ShimError::invalid_argument("payload", msg)
            }
            Ok(other) => return other,
            Err(_) => {
                tracing::error!(method = %method.escape_debug(), "request handler panicked");
                ShimError::Panicked(method)
            }
        };
        let mut r = ttrpc::Response::new();
        r.set_status(crate::status::status(&error));
        Ok(r)
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let span = rpc_span("state", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            let s = self.container(&req.id)?.state(exec_opt(&req.exec_id)).await.map_err(ShimError::from)?;
            let mut r = StateResponse::new();
            r.id = s.id;
            r.bundle = s.bundle.display().to_string();
            r.pid = s.pid;
            r.status = status_of(s.state).into();
            r.stdin = s.stdio.stdin;
            r.stdout = s.stdio.stdout;
            r.stderr = s.stdio.stderr;
            r.terminal = s.stdio.terminal;
            if let Some(exit) = s.exit {
                r.exit_status = exit.status;
                r.exited_at = protobuf::MessageField::some(timestamp(exit.at));
            }
            Ok(r)
        })
        .await
    }

    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let span = rpc_span("create", &req.id, "");
        traced(span, async move {
            self.check_event_backlog()?;
            Ok(create::create(&self.shared, &self.namespace, req).await?)
        })
        .await
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let span = rpc_span("start", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            let pid = self.container(&req.id)?.start(exec_opt(&req.exec_id)).await.map_err(ShimError::from)?;
            tracing::Span::current().record("pid", pid);
            let mut r = StartResponse::new();
            r.pid = pid;
            Ok(r)
        })
        .await
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let span = rpc_span("delete", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            let d = self.container(&req.id)?.delete(exec_opt(&req.exec_id)).await.map_err(ShimError::from)?;
            // A deleted process's buffers are free now: give the pages back (idle RSS budget).
            shim_runtime::sys::trim_heap();
            let mut r = DeleteResponse::new();
            r.pid = d.pid;
            r.exit_status = d.status;
            r.exited_at = protobuf::MessageField::some(timestamp(d.at));
            Ok(r)
        })
        .await
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let span = rpc_span("pids", &req.id, "");
        traced(span, async move {
            let pids = self.container(&req.id)?.pids().await.map_err(ShimError::from)?;
            let mut r = PidsResponse::new();
            for (pid, exec_id) in pids {
                let mut p = ProcessInfo::new();
                p.pid = pid;
                if let Some(exec_id) = exec_id {
                    let mut d = ProcessDetails::new();
                    d.exec_id = exec_id;
                    let mut any = Any::new();
                    any.type_url = "containerd.runc.v1.ProcessDetails".into();
                    any.value = d.write_to_bytes().map_err(|e| ShimError::invalid_argument("pids", e.to_string()))?;
                    p.info = protobuf::MessageField::some(any);
                }
                r.processes.push(p);
            }
            Ok(r)
        })
        .await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("kill", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            if req.signal == 0 || req.signal > 64 {
                return Err(ShimError::invalid_argument("signal", req.signal.to_string()).into());
            }
            self.container(&req.id)?
                .kill(exec_opt(&req.exec_id), req.signal, req.all)
                .await
                .map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("exec", &req.id, &req.exec_id);
        traced(span, async move {
            self.check_event_backlog()?;
            Ok(exec::exec(self.container(&req.id)?, req).await?)
        })
        .await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let span = rpc_span("stats", &req.id, "");
        traced(span, async move {
            let cgroup = self.container(&req.id)?.cgroup().await.map_err(ShimError::from)?;
            // Read outside the container's actor: Stats never waits behind it, nor it behind Stats.
            let stats = cgroup.stats().map_err(|e| ShimError::from(shim_runtime::RuntimeError::from(e)))?;
            let mut r = StatsResponse::new();
            r.stats = protobuf::MessageField::some(stats);
            Ok(r)
        })
        .await
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("pause", &req.id, "");
        traced(span, async move {
            self.container(&req.id)?.pause().await.map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("resume", &req.id, "");
        traced(span, async move {
            self.container(&req.id)?.resume().await.map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("update", &req.id, "");
        traced(span, async move {
            let container = self.container(&req.id)?;
            let resources = update::resources(&req)?;
            container.update(resources).await.map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("checkpoint", &req.id, "");
        traced(span, async move {
            let container = self.container(&req.id)?;
            let opts = checkpoint::options(&req)?;
            container.checkpoint(opts).await.map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("resize_pty", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            self.container(&req.id)?
                .resize(exec_opt(&req.exec_id), req.width, req.height)
                .await
                .map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let span = rpc_span("close_io", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            self.container(&req.id)?.close_io(exec_opt(&req.exec_id)).await.map_err(ShimError::from)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let span = rpc_span("wait", &req.id, &req.exec_id);
        traced(span, async move {
            check_exec_id(&req.exec_id)?;
            let mut watch = self.container(&req.id)?.wait(exec_opt(&req.exec_id)).await.map_err(ShimError::from)?;
            let exit = match watch.wait_for(Option::is_some).await {
                Ok(v) => *v,
                Err(_) => None,
            };
            let exit = exit.ok_or_else(|| ShimError::from(shim_runtime::RuntimeError::Gone { id: req.id.clone() }))?;
            let mut r = WaitResponse::new();
            r.exit_status = exit.status;
            r.exited_at = protobuf::MessageField::some(timestamp(exit.at));
            Ok(r)
        })
        .await
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let span = rpc_span("connect", &req.id, "");
        traced(span, async move {
            // As the Go shim: an unknown (or empty) id still answers, with task_pid 0; a malformed
            // one is refused like everywhere else.
            if !req.id.is_empty() {
                check_id(&req.id)?;
            }
            let mut r = ConnectResponse::new();
            r.shim_pid = std::process::id();
            if let Ok(h) = self.container(&req.id) {
                if let Ok(s) = h.state(None).await {
                    r.task_pid = s.pid;
                }
            }
            Ok(r)
        })
        .await
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let span = rpc_span("shutdown", &req.id, "");
        traced(span, async move {
            // The id is informational (the Go shim ignores it); a malformed one is still refused.
            if !req.id.is_empty() {
                check_id(&req.id)?;
            }
            if self.shared.registry.is_empty() {
                self.shutdown.notify_one();
            }
            Ok(Empty::new())
        })
        .await
    }
}
