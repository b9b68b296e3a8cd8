//! The bounded, drainable job queue between request handlers and a worker thread that owns a
//! model — the one admission pattern of every service. `push` admits or rejects atomically
//! under one lock (a full queue answers at once, never after a race), returns the position, and
//! wakes the worker; the worker `take`s batches, waiting a moment for company when idle.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::EngineError;

/// A queue of `T` for one worker.
#[derive(Debug)]
pub struct JobQueue<T> {
    worker: String,
    limit: usize,
    state: Mutex<QueueState<T>>,
    wake: Condvar,
}

#[derive(Debug)]
struct QueueState<T> {
    waiting: VecDeque<T>,
    accepting: bool,
    stop: bool,
}

impl<T> JobQueue<T> {
    /// An empty queue holding at most `limit` jobs for `worker` (named in errors).
    pub fn new(worker: impl Into<String>, limit: usize) -> Self {
        Self {
            worker: worker.into(),
            limit,
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                accepting: true,
                stop: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn shutting_down(&self) -> EngineError {
        EngineError::ShuttingDown {
            worker: self.worker.clone(),
        }
    }

    /// Queues `job`, returning how many jobs are ahead of it; a full queue or a draining worker
    /// rejects it at once. `on_admit` runs under the queue's lock with the new length (so
    /// counters the caller keeps never disagree with the queue).
    pub fn push(&self, job: T, on_admit: impl FnOnce(usize)) -> Result<usize, EngineError> {
        let mut state = self.state.lock().map_err(|_| self.shutting_down())?;
        if !state.accepting {
            return Err(self.shutting_down());
        }
        if state.waiting.len() >= self.limit {
            return Err(EngineError::QueueFull {
                worker: self.worker.clone(),
                limit: self.limit,
            });
        }
        let position = state.waiting.len();
        state.waiting.push_back(job);
        on_admit(state.waiting.len());
        drop(state);
        self.wake.notify_one();
        Ok(position)
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.waiting.len())
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every waiting job `abandoned` says nobody waits for any more.
    pub fn remove_abandoned(&self, abandoned: impl Fn(&T) -> bool) -> Vec<T> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        // Called at every step boundary: nothing to rebuild in the usual case.
        if !state.waiting.iter().any(&abandoned) {
            return Vec::new();
        }
        let (gone, kept): (Vec<T>, Vec<T>) =
            state.waiting.drain(..).partition(|job| abandoned(job));
        state.waiting = kept.into();
        gone
    }

    /// Visits every waiting job with the number of jobs ahead of it.
    pub fn for_each_waiting(&self, mut visit: impl FnMut(usize, &mut T)) {
        if let Ok(mut state) = self.state.lock() {
            for (ahead, job) in state.waiting.iter_mut().enumerate() {
                visit(ahead, job);
            }
        }
    }

    /// Stops accepting jobs; queued ones are still taken.
    pub fn drain(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.accepting = false;
        }
    }

    /// Stops accepting jobs and tells the worker to stop at its next `take`.
    pub fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.accepting = false;
            state.stop = true;
        }
        self.wake.notify_all();
    }

    /// The worker's side: up to `max` jobs. When `idle` (nothing running), blocks until a job
    /// arrives, then waits up to `batch_wait` for more to share the first step. `None` means
    /// stop.
    pub fn take(&self, max: usize, idle: bool, batch_wait: Duration) -> Option<Vec<T>> {
        let mut state = self.state.lock().ok()?;
        if idle {
            while state.waiting.is_empty() && !state.stop {
                state = self.wake.wait(state).ok()?;
            }
            let until = Instant::now() + batch_wait;
            while state.waiting.len() < max && !state.stop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                state = self.wake.wait_timeout(state, until - now).ok()?.0;
            }
        }
        if state.stop {
            return None;
        }
        let count = max.min(state.waiting.len());
        Some(state.waiting.drain(..count).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_rejects_at_once_and_positions_count_the_jobs_ahead() {
        let queue = JobQueue::new("test", 2);
        assert_eq!(queue.push(1, |_| {}).ok(), Some(0));
        assert_eq!(queue.push(2, |len| assert_eq!(len, 2)).ok(), Some(1));
        assert!(matches!(
            queue.push(3, |_| {}),
            Err(EngineError::QueueFull { limit: 2, .. })
        ));
        assert_eq!(queue.take(8, true, Duration::ZERO), Some(vec![1, 2]));
    }

    #[test]
    fn abandoned_jobs_leave_the_queue_in_order() {
        let queue = JobQueue::new("test", 8);
        for job in 1..=5 {
            assert!(queue.push(job, |_| {}).is_ok());
        }
        assert_eq!(queue.remove_abandoned(|job| job % 2 == 0), vec![2, 4]);
        assert_eq!(queue.take(8, false, Duration::ZERO), Some(vec![1, 3, 5]));
    }

    #[test]
    fn a_drained_queue_refuses_new_jobs_but_hands_out_queued_ones() {
        let queue = JobQueue::new("test", 4);
        assert!(queue.push(1, |_| {}).is_ok());
        queue.drain();
        assert!(matches!(
            queue.push(2, |_| {}),
            Err(EngineError::ShuttingDown { .. })
        ));
        assert_eq!(queue.take(1, false, Duration::ZERO), Some(vec![1]));
        queue.stop();
        assert_eq!(queue.take(1, true, Duration::ZERO), None);
    }

    #[test]
    fn an_idle_worker_waits_for_company_up_to_the_batch_wait() {
        let queue = std::sync::Arc::new(JobQueue::new("test", 4));
        assert!(queue.push(1, |_| {}).is_ok());
        let pusher = queue.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            pusher.push(2, |_| {}).ok()
        });
        let taken = queue.take(2, true, Duration::from_secs(5));
        assert_eq!(late.join().ok().flatten(), Some(1));
        assert_eq!(taken, Some(vec![1, 2]));
    }
}
