//! Admission of concurrent runtime calls: first come, first run, a bounded number at once,
//! and never a stall.
//!
//! Under an exec storm (N `runc exec` in flight against one container, a probe storm) the
//! runtime processes share the machine's CPUs: with all N running at once the scheduler
//! decides which finishes first, and an exec started early can finish after most of those
//! started after it (issue 16 item 5: the spread of exec latency came from `runc exec` itself,
//! not from the shim's queues; hack/exec-phases.py). Letting only a few run at once, in arrival
//! order, keeps the CPUs as busy and makes execs finish in the order they came.
//!
//! The shim's environment can change the bound: `SHIM_EXEC_CONCURRENCY=N` ([`EXEC_CONCURRENCY_ENV`];
//! 0 for none, every call at once, as before the gate).
//!
//! A call holds its place for at most [`GATE_HOLD`]: a runtime call that hangs (or is simply
//! slow) gives its place to the next one after that and runs on without it, so one slow call
//! delays the others by at most that long, and never stalls them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// `runc exec` calls of one container running at once, per CPU of the machine. When all
/// places are taken, a call waits in arrival order (FIFO) for one to free up.
pub const EXEC_CALLS_PER_CPU: usize = 2;
/// The fewest places, whatever the CPU count.
pub const MIN_EXEC_CALLS: usize = 4;
/// Longest one call keeps its place; after that it runs on without one (see the module doc).
/// A `runc exec --detach` takes ~10 ms of CPU on an idle machine.
pub const GATE_HOLD: Duration = Duration::from_secs(1);

/// The environment variable that sets the places of [`Gate::for_exec`] (a number; 0: no
/// bound, every call runs at once, as without the gate).
pub const EXEC_CONCURRENCY_ENV: &str = "SHIM_EXEC_CONCURRENCY";

/// [`EXEC_CONCURRENCY_ENV`] if set and a number (0 meaning no bound), read once per process.
fn exec_places() -> Option<usize> {
    static PLACES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *PLACES.get_or_init(|| {
        crate::env::number::<usize>(EXEC_CONCURRENCY_ENV, "a number").map(|n| {
            if n == 0 {
                Semaphore::MAX_PERMITS
            } else {
                n
            }
        })
    })
}

/// A FIFO admission gate. Cheap to clone; clones share the places.
#[derive(Debug, Clone)]
pub struct Gate {
    places: Arc<Semaphore>,
    hold: Duration,
}

impl Gate {
    /// A gate with `places` places (at least 1), each held for at most `hold`.
    pub fn new(places: usize, hold: Duration) -> Gate {
        Gate { places: Arc::new(Semaphore::new(places.max(1))), hold }
    }

    /// The gate of one container's `runc exec` calls: [`EXEC_CALLS_PER_CPU`] per CPU, at least
    /// [`MIN_EXEC_CALLS`].
    pub fn for_exec() -> Gate {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Gate::new(exec_places().unwrap_or((cpus * EXEC_CALLS_PER_CPU).max(MIN_EXEC_CALLS)), GATE_HOLD)
    }

    /// Runs `call` once a place is free (in arrival order), holding the place until it
    /// finishes or for [`Gate::new`]'s `hold`, whichever comes first. `call` is not polled
    /// before it has a place.
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        // The semaphore is never closed: acquire only fails on a closed one.
        let place = Arc::clone(&self.places).acquire_owned().await.ok();
        let mut call = std::pin::pin!(call);
        tokio::select! {
            biased;
            out = &mut call => out,
            () = tokio::time::sleep(self.hold) => {
                drop(place);
                call.await
            }
        }
    }

    /// Free places now (for tests).
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// Five calls through two places: at most two run at once, and they start in the order
    /// they arrived, whichever finishes first.
    #[tokio::test(start_paused = true)]
    async fn bounded_and_in_arrival_order() {
        let gate = Gate::new(2, Duration::from_secs(3600));
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut finish = Vec::new();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..5 {
            let (tx, rx) = oneshot::channel::<()>();
            finish.push(Some(tx));
            let (gate, started) = (gate.clone(), Arc::clone(&started));
            calls.spawn(async move {
                gate.run(async move {
                    started.lock().unwrap().push(i);
                    let _ = rx.await;
                })
                .await;
            });
            // Arrival order is spawn order: let each call reach the gate before the next.
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert_eq!(*started.lock().unwrap(), vec![0, 1]);
        // The second finishes first: the third takes its place, not a later one.
        finish[1].take().unwrap().send(()).unwrap();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*started.lock().unwrap(), vec![0, 1, 2]);
        for tx in finish.iter_mut().filter_map(Option::take) {
            let _ = tx.send(());
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        while calls.join_next().await.is_some() {}
        assert_eq!(*started.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(gate.available(), 2);
    }

    /// A call that never returns gives its place up after the hold; the next one runs.
    #[tokio::test(start_paused = true)]
    async fn a_hung_call_gives_its_place_up() {
        let gate = Gate::new(1, Duration::from_secs(1));
        let hung = tokio::spawn({
            let gate = gate.clone();
            async move { gate.run(std::future::pending::<()>()).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(gate.available(), 0);
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.run(async { 7 }).await }
        });
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(!next.is_finished(), "ran before the hung call's hold ended");
        let next = tokio::time::timeout(Duration::from_secs(10), next).await;
        assert_eq!(next.expect("the place was not given up").unwrap(), 7);
        assert!(!hung.is_finished());
        hung.abort();
    }
}
