//! The OCI layer's error type and the one classifier of runc/crun failure messages.

use std::io;

/// Errors of the OCI runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The runtime binary does not exist (the text containerd's tests look for).
    #[error("exec: \"{binary}\": executable file not found in $PATH")]
    BinaryNotFound {
        /// The binary name as configured.
        binary: String,
    },
    /// The runtime could not be spawned for another reason.
    #[error("failed to start {binary}: {source}")]
    Spawn {
        /// The binary name.
        binary: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The process the operation was aimed at has already exited.
    #[error("process already finished")]
    ProcessFinished,
    /// The runtime has no such container.
    #[error("no such container")]
    ContainerNotFound,
    /// The runtime ran and failed.
    #[error("OCI runtime {op} failed: {message}")]
    Failed {
        /// The runtime subcommand.
        op: &'static str,
        /// The runtime's last error message (log.json), or its stderr.
        message: String,
    },
    /// The runtime did not return within the limit and was killed.
    #[error("OCI runtime {op} did not return within {}s and was killed", limit.as_secs())]
    TimedOut {
        /// The runtime subcommand.
        op: &'static str,
        /// The limit.
        limit: std::time::Duration,
    },
    /// Local IO around the runtime call (pipes, pid files, output).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Classifies a runtime's failure message into a typed error. The only place that matches on
/// runc/crun text.
pub fn classify(op: &'static str, message: &str) -> OciError {
    let m = message.to_ascii_lowercase();
    if m.contains("container not running")
        || m.contains("no such process")
        || m.contains("process already finished")
        || m.contains("container is stopped")
    {
        OciError::ProcessFinished
    } else if m.contains("does not exist") || m.contains("container not found") {
        OciError::ContainerNotFound
    } else {
        OciError::Failed { op, message: message.trim().to_owned() }
    }
}
