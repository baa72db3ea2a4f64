//! A timer precise to tens of microseconds, for the offers a `Paced` server delays.
//!
//! tokio's timer wheel has a 1 ms resolution and fires up to a millisecond late. Paced answer
//! times differ by `max_delay / capacity` per request in flight (312 µs at the defaults), so on
//! tokio's timer alone servers one, two and three requests apart all answer on the same tick and
//! the race between them is a coin toss. This timer waits on a condition variable in its own
//! thread instead (a futex timeout on Linux, precise to the kernel's timer slack, 50 µs by
//! default) and wakes the driver through a [`Notify`].
//!
//! One thread per paced server, asleep unless an offer is due; it stops when the timer is
//! dropped.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Keeps one permit if the driver is not waiting when the deadline passes, so the wake-up
    /// is not lost (a spurious one costs a clock check).
    fired: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data behind the lock; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct PreciseTimer {
    shared: Arc<Shared>,
}

impl PreciseTimer {
    /// Starts the timer thread; an error when the system refuses a thread.
    pub fn new() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        thread::Builder::new()
            .name("volley-timer".into())
            .spawn(move || run(&worker))?;
        Ok(Self { shared })
    }

    /// Sets the one deadline to wake at (None: none), replacing the previous one.
    pub fn arm(&self, deadline: Option<Instant>) {
        let mut state = self.shared.state();
        if state.deadline != deadline {
            state.deadline = deadline;
            self.shared.changed.notify_one();
        }
    }

    /// Resolves once the armed deadline has passed.
    pub async fn fired(&self) {
        self.shared.fired.notified().await;
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.changed.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut state = shared.state();
    loop {
        if state.stop {
            return;
        }
        state = match state.deadline {
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if deadline <= now {
                    state.deadline = None;
                    shared.fired.notify_one();
                    continue;
                }
                shared
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn l1_precise_timer_fires_within_a_fraction_of_a_millisecond() {
        let timer = PreciseTimer::new().unwrap();
        let mut late = Vec::new();
        for _ in 0..20 {
            let deadline = Instant::now() + Duration::from_micros(300);
            timer.arm(Some(deadline));
            timer.fired().await;
            let now = Instant::now();
            assert!(now >= deadline, "never early");
            late.push(now - deadline);
        }
        late.sort();
        // The median, so that one descheduled wake-up on a busy machine cannot fail the test;
        // tokio's own timer would be ~1 ms late here.
        assert!(late[10] < Duration::from_micros(700), "{late:?}");
    }

    #[tokio::test]
    async fn l1_rearming_replaces_the_deadline() {
        let timer = PreciseTimer::new().unwrap();
        timer.arm(Some(Instant::now() + Duration::from_secs(60)));
        let soon = Instant::now() + Duration::from_millis(1);
        timer.arm(Some(soon));
        tokio::time::timeout(Duration::from_secs(5), timer.fired())
            .await
            .expect("the earlier deadline fired");
        assert!(Instant::now() >= soon);
        timer.arm(None);
    }
}
