//! `ShimError` and the only mapping from errors to ttrpc codes (STYLE item 12).

use shim_runtime::cgroups::CgroupError;
use shim_runtime::io::IoError;
use shim_runtime::oci::OciError;
use shim_runtime::RuntimeError;
use ttrpc::Code;

/// Errors of the protocol edge.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Not implemented by this shim yet.
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    /// The event queue is at its ceiling (containerd is not taking events): new work, whose
    /// lifecycle events could not be dropped, is refused until it drains.
    #[error("event queue full ({queued} events undelivered): containerd is not taking events")]
    EventsBacklog {
        /// Events queued.
        queued: usize,
    },
    /// A request handler panicked (a bug); the caller still gets an answer.
    #[error("{0} failed: internal error")]
    Panicked(String),
    /// From the runtime layer.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ShimError {
    /// A request field that does not decode or is out of range: the runtime layer's
    /// [`RuntimeError::InvalidArgument`], the one such error (so one message and one code).
    pub fn invalid_argument(field: &'static str, reason: String) -> Self {
        ShimError::Runtime(RuntimeError::InvalidArgument { field, reason })
    }
}

/// The ttrpc code for an error.
pub fn code(e: &ShimError) -> Code {
    match e {
        ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
        ShimError::Panicked(_) => Code::INTERNAL,
        ShimError::EventsBacklog { .. } => Code::RESOURCE_EXHAUSTED,
        ShimError::Runtime(r) => match r {
            RuntimeError::ContainerNotFound { .. }
            | RuntimeError::ProcessNotFound { .. }
            | RuntimeError::ProcessFinished
            | RuntimeError::Gone { .. } => Code::NOT_FOUND,
            RuntimeError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            RuntimeError::Cancelled { .. } => Code::CANCELLED,
            RuntimeError::InvalidArgument { .. } | RuntimeError::Options(_) => Code::INVALID_ARGUMENT,
            RuntimeError::State(_) | RuntimeError::StartRefused { .. } | RuntimeError::ExecActive { .. } => {
                Code::FAILED_PRECONDITION
            }
            RuntimeError::Unimplemented(_) => Code::UNIMPLEMENTED,
            RuntimeError::Cgroup(CgroupError::Deleted { .. }) => Code::NOT_FOUND,
            RuntimeError::Cgroup(_) => Code::INTERNAL,
            RuntimeError::Oci(o) => match o {
                OciError::ProcessFinished | OciError::ContainerNotFound => Code::NOT_FOUND,
                OciError::BinaryNotFound { .. } | OciError::Failed { .. } | OciError::Spawn { .. } => Code::UNKNOWN,
                OciError::TimedOut { .. } => Code::DEADLINE_EXCEEDED,
                OciError::Io { .. } => Code::INTERNAL,
            },
            RuntimeError::Io(IoError::Unsupported { .. }) => Code::INVALID_ARGUMENT,
            RuntimeError::Io(IoError::Open { .. } | IoError::Console(_))
            | RuntimeError::Mount(_)
            | RuntimeError::Sys { .. } => Code::INTERNAL,
        },
    }
}

/// The ttrpc status for an error (code and message).
pub fn status(e: &ShimError) -> ttrpc::Status {
    ttrpc::get_status(code(e), e.to_string())
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(status(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shim_runtime::process::State;

    #[test]
    fn mapping_table() {
        let rt = |e| ShimError::Runtime(e);
        let cases: Vec<(ShimError, Code)> = vec![
            (rt(RuntimeError::ContainerNotFound { id: "x".into() }), Code::NOT_FOUND),
            (rt(RuntimeError::ProcessNotFound { exec_id: "e".into() }), Code::NOT_FOUND),
            (rt(RuntimeError::ProcessFinished), Code::NOT_FOUND),
            (rt(RuntimeError::Cancelled { id: "x".into() }), Code::CANCELLED),
            (rt(RuntimeError::AlreadyExists { id: "x".into() }), Code::ALREADY_EXISTS),
            (rt(RuntimeError::InvalidArgument { field: "id", reason: "r".into() }), Code::INVALID_ARGUMENT),
            (rt(RuntimeError::State(State::Running.can_delete().unwrap_err())), Code::FAILED_PRECONDITION),
            (
                rt(RuntimeError::StartRefused { id: "c".into(), refusal: shim_events::Refusal::InitExited }),
                Code::FAILED_PRECONDITION,
            ),
            (rt(RuntimeError::ExecActive { exec_id: "e".into(), state: "running" }), Code::FAILED_PRECONDITION),
            (rt(RuntimeError::Oci(OciError::ProcessFinished)), Code::NOT_FOUND),
            (rt(RuntimeError::Oci(OciError::BinaryNotFound { binary: "no-runc".into() })), Code::UNKNOWN),
            (
                rt(RuntimeError::Oci(OciError::TimedOut { op: "exec", limit: std::time::Duration::from_secs(300) })),
                Code::DEADLINE_EXCEEDED,
            ),
            (rt(RuntimeError::Io(IoError::Console(std::io::ErrorKind::TimedOut.into()))), Code::INTERNAL),
            (ShimError::invalid_argument("f", "r".into()), Code::INVALID_ARGUMENT),
            (ShimError::Unimplemented("pause"), Code::UNIMPLEMENTED),
            (ShimError::Panicked("State".into()), Code::INTERNAL),
            (ShimError::EventsBacklog { queued: 65_536 }, Code::RESOURCE_EXHAUSTED),
            (rt(RuntimeError::Cgroup(CgroupError::Deleted { pid: 1 })), Code::NOT_FOUND),
        ];
        for (e, c) in cases {
            assert_eq!(code(&e), c, "{e}");
        }
        assert_eq!(ShimError::invalid_argument("signal", "0".into()).to_string(), "invalid signal: 0");
        let e: ttrpc::Error =
            ShimError::Runtime(RuntimeError::Oci(OciError::BinaryNotFound { binary: "no-runc".into() })).into();
        assert!(format!("{e:?}").contains("\\\"no-runc\\\"") || format!("{e:?}").contains("\"no-runc\""));
    }
}
