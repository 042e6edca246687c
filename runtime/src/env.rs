//! Numbers from the shim's environment: its tuning knobs (`SHIM_RUNC_TIMEOUT`,
//! `SHIM_EXEC_CONCURRENCY`, `SHIM_EVENT_QUEUE_MAX`), each read once per process by its user.

/// `name` parsed as a `T`: `None` when it is unset, and also, with a warning saying it is not
/// `what`, when it does not parse (the caller then uses its default).
pub fn number<T: std::str::FromStr>(name: &str, what: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(value = %v, "{name} is not {what}; using the default");
            None
        }
    }
}
