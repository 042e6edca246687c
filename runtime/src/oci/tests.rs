//! Unit tests of the OCI layer: the classifier and the log tail.

use super::log_tail::read_tail;
use super::*;

#[test]
fn classifies_recorded_runtime_messages() {
    // runc 1.1
    assert!(matches!(classify("kill", "container not running"), OciError::ProcessFinished));
    assert!(matches!(classify("kill", "os: process already finished"), OciError::ProcessFinished));
    assert!(matches!(classify("kill", "container \"abc\" does not exist"), OciError::ContainerNotFound));
    // crun
    assert!(matches!(
        classify("kill", "error opening file `/run/crun/abc/status`: No such file or directory; container not found"),
        OciError::ContainerNotFound
    ));
    assert!(matches!(classify("kill", "kill container: No such process"), OciError::ProcessFinished));
    let other = classify("create", "exec: \"nope\": executable file not found in $PATH\n");
    assert_eq!(other.to_string(), "OCI runtime create failed: exec: \"nope\": executable file not found in $PATH");
}

#[test]
fn last_error_comes_from_json_log() {
    let dir = std::env::temp_dir().join(format!("oci-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log.json");
    std::fs::write(
        &log,
        "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"second\"}\n{\"level\":\"info\",\"msg\":\"i\"}\n",
    )
    .unwrap();
    assert_eq!(last_log_error(&log).as_deref(), Some("second"));
    // Longer than the tail: only whole lines of the tail are read.
    let filler = "{\"level\":\"error\",\"msg\":\"old\"}\n".repeat(10_000);
    std::fs::write(&log, format!("{filler}{{\"level\":\"error\",\"msg\":\"new\"}}\n")).unwrap();
    assert_eq!(last_log_error(&log).as_deref(), Some("new"));
    let tail = read_tail(&log).unwrap();
    assert!(tail.len() as u64 <= LOG_TAIL_BYTES && tail.starts_with('{'), "{}", &tail[..40]);
    std::fs::remove_dir_all(&dir).unwrap();
}
