//! Typed task events and their topics and type URLs, in one place.

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use protobuf::well_known_types::any::Any;
use protobuf::Message;

/// A task event as published to containerd.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `/tasks/create`
    Create(TaskCreate),
    /// `/tasks/start`
    Start(TaskStart),
    /// `/tasks/exec-added`
    ExecAdded(TaskExecAdded),
    /// `/tasks/exec-started`
    ExecStarted(TaskExecStarted),
    /// `/tasks/exit`
    Exit(TaskExit),
    /// `/tasks/delete`
    Delete(TaskDelete),
    /// `/tasks/paused`
    Paused(TaskPaused),
    /// `/tasks/resumed`
    Resumed(TaskResumed),
    /// `/tasks/oom`
    Oom(TaskOOM),
}

impl Event {
    /// The topic string containerd routes on.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
            Event::Oom(_) => "/tasks/oom",
        }
    }

    /// The container the event is about.
    pub fn container_id(&self) -> &str {
        match self {
            Event::Create(e) => &e.container_id,
            Event::Start(e) => &e.container_id,
            Event::ExecAdded(e) => &e.container_id,
            Event::ExecStarted(e) => &e.container_id,
            Event::Exit(e) => &e.container_id,
            Event::Delete(e) => &e.container_id,
            Event::Paused(e) => &e.container_id,
            Event::Resumed(e) => &e.container_id,
            Event::Oom(e) => &e.container_id,
        }
    }

    /// Encodes the event as the `Any` containerd expects (type URL `containerd.events.<Type>`,
    /// the name containerd's typeurl registry uses, not the `type.googleapis.com/` form).
    pub fn to_any(&self) -> Result<Any, protobuf::Error> {
        let (name, value) = match self {
            Event::Create(e) => ("TaskCreate", e.write_to_bytes()?),
            Event::Start(e) => ("TaskStart", e.write_to_bytes()?),
            Event::ExecAdded(e) => ("TaskExecAdded", e.write_to_bytes()?),
            Event::ExecStarted(e) => ("TaskExecStarted", e.write_to_bytes()?),
            Event::Exit(e) => ("TaskExit", e.write_to_bytes()?),
            Event::Delete(e) => ("TaskDelete", e.write_to_bytes()?),
            Event::Paused(e) => ("TaskPaused", e.write_to_bytes()?),
            Event::Resumed(e) => ("TaskResumed", e.write_to_bytes()?),
            Event::Oom(e) => ("TaskOOM", e.write_to_bytes()?),
        };
        let mut any = Any::new();
        any.type_url = format!("containerd.events.{name}");
        any.value = value;
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_uses_containerd_type_urls() {
        let mut e = TaskExit::new();
        e.container_id = "c".into();
        e.exit_status = 3;
        let any = Event::Exit(e.clone()).to_any().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        assert_eq!(TaskExit::parse_from_bytes(&any.value).unwrap(), e);
        assert_eq!(Event::Exit(e).topic(), "/tasks/exit");
    }
}
