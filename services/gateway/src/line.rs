//! The gateway's waiting line: who is ahead of whom, and a signal whenever that changes, so each
//! waiting request can re-send its `queue_position` as the line moves.
//!
//! Slots go to waiters in arrival order (tokio's semaphore is fair), so a waiter's position is
//! 1 + the number of waiters that joined before it and are still waiting.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Debug, Default)]
struct State {
    next: u64,
    waiting: BTreeSet<u64>,
}

/// The line; cheap to share.
#[derive(Debug)]
pub struct WaitLine {
    state: Mutex<State>,
    moved: watch::Sender<u64>,
}

impl Default for WaitLine {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            moved: watch::channel(0).0,
        }
    }
}

impl WaitLine {
    /// Joins the end of the line; leaving (dropping the place) moves everyone behind.
    pub fn join(self: &Arc<Self>) -> Place {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let number = state.next;
        state.next += 1;
        state.waiting.insert(number);
        Place {
            line: self.clone(),
            number,
            moved: self.moved.subscribe(),
        }
    }
}

/// One waiter's place in the line.
#[derive(Debug)]
pub struct Place {
    line: Arc<WaitLine>,
    number: u64,
    moved: watch::Receiver<u64>,
}

impl Place {
    /// 1 + the waiters ahead of this one: 1 is next.
    pub fn position(&self) -> usize {
        let state = self.line.state.lock().unwrap_or_else(|p| p.into_inner());
        1 + state.waiting.range(..self.number).count()
    }

    /// Resolves when someone ahead (or anyone) leaves the line.
    pub async fn moved(&mut self) {
        if self.moved.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.line.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&self.number);
        drop(state);
        self.line.moved.send_modify(|count| *count += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn positions_move_up_as_waiters_ahead_leave() {
        let line = Arc::new(WaitLine::default());
        let first = line.join();
        let second = line.join();
        let mut third = line.join();
        assert_eq!(
            (first.position(), second.position(), third.position()),
            (1, 2, 3)
        );
        drop(second);
        third.moved().await;
        assert_eq!(third.position(), 2, "a waiter ahead left");
        drop(first);
        third.moved().await;
        assert_eq!(third.position(), 1, "next");
    }
}
