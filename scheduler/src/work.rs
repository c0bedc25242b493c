//! Long polls for pull scheduling (cluster TLS).
//!
//! Under pull scheduling an executor learns of a task only when it polls, and
//! Ballista's poll loop sleeps 50 ms after every poll that brought no task.
//! Each stage hand-off therefore waited for the status to be processed
//! *and* for the next poll: measured on TPC-H SF1 as about 0.3 s per query,
//! doubling the cluster's time (`benchmarks/README.md`).
//!
//! The scheduler now holds a poll that found no task, for up to
//! [`POLL_HOLD`], when the executor has a free slot and runs no task (so it
//! has no status to report that the hold would delay). Ballista's
//! `on_work_available` callback (a job submitted, a stage made runnable)
//! bumps [`WorkSignal`]; a held poll then asks Ballista again and returns the
//! tasks it binds. It also asks again on a short backoff (1 ms doubling to
//! 50 ms), since Ballista skips the callback when a concurrent poll revived
//! the stage first.

use std::sync::Arc;
use std::time::Duration;

use ballista_scheduler::config::OnWorkAvailableFn;
use tokio::sync::watch;

/// The longest a poll is held. Far below Ballista's executor timeout (a
/// poll is also the executor's heartbeat) and its client request timeout.
pub const POLL_HOLD: Duration = Duration::from_millis(500);

/// A held poll also asks again on a timer, first after this, doubling up to
/// [`MAX_RETRY`]: Ballista signals new work only when its own event revives
/// a stage, not when a concurrent poll revived it first.
pub const FIRST_RETRY: Duration = Duration::from_millis(1);

/// See [`FIRST_RETRY`]; Ballista's own idle poll interval.
pub const MAX_RETRY: Duration = Duration::from_millis(50);

/// Counts "new work is available" events from Ballista's scheduler.
#[derive(Clone)]
pub struct WorkSignal(Arc<watch::Sender<u64>>);

impl Default for WorkSignal {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl WorkSignal {
    /// Ballista's `on_work_available` callback, bumping this signal.
    pub fn callback(&self) -> OnWorkAvailableFn {
        let sender = Arc::clone(&self.0);
        Arc::new(move |_reason| sender.send_modify(|n| *n = n.wrapping_add(1)))
    }

    /// A receiver that sees every bump after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bump_wakes_a_receiver_subscribed_before_it() {
        let signal = WorkSignal::default();
        let mut rx = signal.subscribe();
        let callback = signal.callback();
        callback(ballista_scheduler::config::WorkAvailableReason::JobSubmitted {
            job_id: "j".into(),
        });
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken")
            .expect("sender alive");
        assert_eq!(*rx.borrow_and_update(), 1);
        // No bump: the wait times out.
        assert!(tokio::time::timeout(Duration::from_millis(20), rx.changed()).await.is_err());
    }
}
