//! The runtime layer's one error enum. `shim::status` maps it to ttrpc codes.

use crate::cgroups::CgroupError;
use crate::io::IoError;
use crate::mount::MountError;
use crate::oci::OciError;
use crate::options::OptionsError;
use crate::process::InvalidTransition;

/// Errors of the runtime layer, each carrying what it is about.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such container.
    #[error("container {id} not created")]
    ContainerNotFound {
        /// The container id.
        id: String,
    },
    /// No such exec process.
    #[error("process does not exist {exec_id}")]
    ProcessNotFound {
        /// The exec id.
        exec_id: String,
    },
    /// The process has already exited.
    #[error("process already finished")]
    ProcessFinished,
    /// A container or exec with that id exists.
    #[error("id {id} already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// A malformed request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The process's state does not allow the request.
    #[error(transparent)]
    State(#[from] InvalidTransition),
    /// The sequencer refuses the start: the init's exit was observed (no exec may start, SPEC
    /// §4.7 no. 9), or the process already began to start.
    #[error("container {id}: {refusal}")]
    StartRefused {
        /// The container id.
        id: String,
        /// Why.
        refusal: shim_events::Refusal,
    },
    /// The init cannot be deleted while an exec is starting or running (its exit would follow
    /// TaskDelete).
    #[error("cannot delete the init process while exec {exec_id} is {state}")]
    ExecActive {
        /// The exec id.
        exec_id: String,
        /// Its state's name.
        state: &'static str,
    },
    /// Not implemented by this shim yet.
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    /// The OCI runtime failed.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// Stdio setup failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Rootfs mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The container's cgroup is gone or unreadable.
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// Bad options or bundle.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A local system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request ended (deadline, closed connection) before the container existed; what it
    /// had done was rolled back.
    #[error("create of {id} cancelled by its requester")]
    Cancelled {
        /// The container id.
        id: String,
    },
    /// The container's actor is gone (deleted meanwhile).
    #[error("container {id} is being deleted")]
    Gone {
        /// The container id.
        id: String,
    },
}

/// Result of the runtime layer.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
