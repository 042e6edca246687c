//! Reading a runtime's JSON log (`--log <bundle>/log.json`): only its tail, which holds the
//! last error of a failed call (the log grows for the container's lifetime).

use std::io;
use std::path::Path;

/// How much of the end of a runtime JSON log is read for the error of a failed call.
pub const LOG_TAIL_BYTES: u64 = 64 << 10;

/// The last [`LOG_TAIL_BYTES`] of a file, from its first whole line.
pub(super) fn read_tail(path: &Path) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(match (start > 0, text.find('\n')) {
        // Cut inside a line: drop the partial first line.
        (true, Some(i)) => text[i + 1..].to_owned(),
        _ => text.into_owned(),
    })
}

/// Reads the last `"level":"error"` message from a runtime JSON log (its tail only).
pub(super) fn last_log_error(log: &Path) -> Option<String> {
    let text = read_tail(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("level")?.as_str()? == "error" {
            Some(v.get("msg")?.as_str()?.to_owned())
        } else {
            None
        }
    })
}
