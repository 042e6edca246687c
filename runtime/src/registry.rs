//! `id → ContainerHandle`: the only map shared by RPC handlers. A std `Mutex` guards single map
//! operations; it is never held across an await, a runtime call or IO.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::container::handle::ContainerHandle;
use crate::container::Spawned;
use crate::error::{Result, RuntimeError};

#[derive(Debug)]
enum Slot {
    /// A Create is in flight for this id.
    Creating,
    /// The container's handle and its actor's task: a finished task here is an actor that
    /// ended without its init being deleted (a bug): the id is freed and the end logged.
    Ready(ContainerHandle, tokio::task::JoinHandle<()>),
}

/// The containers of this shim.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
    /// Woken whenever a Create ends (its reservation fulfilled or dropped).
    create_ended: tokio::sync::Notify,
}

/// A reserved id; dropping it without [`Reservation::fulfill`] frees the id again.
#[derive(Debug)]
pub struct Reservation {
    registry: Arc<Registry>,
    id: String,
    fulfilled: bool,
}

impl Reservation {
    /// Publishes the container under the reserved id.
    pub fn fulfill(mut self, Spawned { handle, task }: Spawned) {
        self.registry.lock().insert(self.id.clone(), Slot::Ready(handle, task));
        self.fulfilled = true;
        self.registry.create_ended.notify_waiters();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.fulfilled {
            self.registry.lock().remove(&self.id);
            self.registry.create_ended.notify_waiters();
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Single inserts/removes only: a poisoned map is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `id` for a Create. `AlreadyExists` if it is taken or being created.
    pub fn reserve(self: &Arc<Self>, id: &str) -> Result<Reservation> {
        let mut slots = self.lock();
        if slots.contains_key(id) {
            return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
        }
        slots.insert(id.to_owned(), Slot::Creating);
        Ok(Reservation { registry: Arc::clone(self), id: id.to_owned(), fulfilled: false })
    }

    /// The container `id`.
    pub fn get(&self, id: &str) -> Result<ContainerHandle> {
        let mut slots = self.lock();
        match slots.get(id) {
            Some(Slot::Ready(_, task)) if task.is_finished() => {
                tracing::error!(container_id = %id, "container actor ended while its container existed");
                slots.remove(id);
                Err(RuntimeError::Gone { id: id.to_owned() })
            }
            Some(Slot::Ready(h, _)) => Ok(h.clone()),
            _ => Err(RuntimeError::ContainerNotFound { id: id.to_owned() }),
        }
    }

    /// Forgets `id` (its init was deleted).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether no container exists or is being created.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Returns once no Create is in flight. The daemon awaits this before it exits on SIGTERM, so
    /// a Create that is in the runtime finishes, or rolls back, instead of being cut off.
    pub async fn creates_ended(&self) {
        loop {
            let ended = self.create_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.lock().values().any(|s| matches!(s, Slot::Creating)) {
                return;
            }
            ended.await;
        }
    }

    /// Number of containers, including those being created.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `creates_ended` waits while any Create holds a reservation, and returns once the last
    /// one is fulfilled or dropped.
    #[tokio::test]
    async fn creates_ended_waits_for_every_reservation() {
        let registry = Arc::new(Registry::default());
        let (a, b) = (registry.reserve("a").unwrap(), registry.reserve("b").unwrap());
        let waiter = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.creates_ended().await }
        });
        let settle = || async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        assert!(!waiter.is_finished(), "returned with two Creates in flight");
        drop(a);
        settle().await;
        assert!(!waiter.is_finished(), "returned with one Create in flight");
        let task = tokio::spawn(std::future::pending::<()>());
        b.fulfill(Spawned { handle: ContainerHandle::detached("b"), task });
        settle().await;
        assert!(waiter.is_finished(), "still waiting with no Create in flight");
        registry.remove("b");
    }

    #[tokio::test]
    async fn an_actor_that_ended_without_its_delete_frees_its_id() {
        let registry = Arc::new(Registry::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stopped.await;
        });
        registry.reserve("c").unwrap().fulfill(Spawned { handle: ContainerHandle::detached("c"), task });
        assert!(registry.get("c").is_ok(), "running actor");
        drop(stop);
        // Let the task finish.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(registry.get("c"), Err(RuntimeError::Gone { .. })));
        assert!(registry.is_empty(), "its id is free again");
        assert!(matches!(registry.get("c"), Err(RuntimeError::ContainerNotFound { .. })));
    }
}
