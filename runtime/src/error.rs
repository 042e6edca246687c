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
    /// A precondition other than a state transition (init exited, exec not started).
    #[error("{0}")]
    Precondition(String),
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
