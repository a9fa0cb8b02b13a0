//! How a session wakes its attached connection: one waker slot instead of a `Notify`, so an
//! idle connection's task waits without a waiter node of its own (a `Notified` future is
//! ~60 bytes in every idle connection; the slot is part of the session, which exists anyway).
//!
//! The slot belongs to one connection generation at a time. A newer generation (a takeover)
//! claims it on its first wait, and an older one can never take it back: a connection that
//! finds a newer generation in the slot is told to look at once (it then sees it was taken
//! over and ends). So a stale connection can neither steal the new one's wake-ups nor sleep
//! through its own end.
//!
//! Besides "deliveries were queued or you were kicked", the slot carries one more signal:
//! the connection's keep-alive timer fired (see `client::keep_alive_timers`), so keep-alive
//! needs no timer of its own in each connection either.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// What woke a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// The connection's keep-alive timer fired (its entry is gone; schedule the next).
    pub keep_alive: bool,
}

#[derive(Default)]
struct Slot {
    /// The newest generation that waited here.
    generation: u64,
    waker: Option<Waker>,
    /// Woken since the last wait returned (a permit, like `Notify::notify_one`'s).
    woken: bool,
    /// That generation's keep-alive timer fired.
    keep_alive_due: bool,
}

/// A session's wake-up for its attached connection.
#[derive(Default)]
pub(crate) struct WakeSlot(Mutex<Slot>);

impl WakeSlot {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the connection (or lets its next wait return at once).
    pub fn wake(&self) {
        let waker = {
            let mut slot = self.lock();
            slot.woken = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The keep-alive timer of `generation`'s connection fired.
    pub fn keep_alive_due(&self, generation: u64) {
        let waker = {
            let mut slot = self.lock();
            if slot.generation > generation {
                // That connection was taken over; its successor has its own timer.
                return;
            }
            if slot.generation < generation {
                // Fired before the connection's first wait (its first write blocked): it
                // claims the slot now, as it would then.
                slot.generation = generation;
                slot.waker = None;
                slot.woken = true;
            }
            slot.keep_alive_due = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once the keep-alive timer of the connection of `generation` fired since it
    /// last looked, leaving other wake-ups for [`WakeSlot::poll_woken`]: a connection
    /// blocked writing to its client waits for its keep-alive only.
    pub fn poll_keep_alive_due(&self, cx: &mut Context<'_>, generation: u64) -> Poll<()> {
        let mut slot = self.lock();
        if slot.generation > generation {
            // Taken over: the end of the blocked write lets it find out.
            return Poll::Pending;
        }
        if slot.generation < generation {
            slot.generation = generation;
            slot.waker = None;
            slot.keep_alive_due = false;
        }
        if std::mem::take(&mut slot.keep_alive_due) {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Ready once the connection of `generation` was woken since it last looked; otherwise
    /// registers `cx`'s waker. A connection older than the slot's newest is always ready:
    /// it must look, and it will find it was taken over.
    pub fn poll_woken(&self, cx: &mut Context<'_>, generation: u64) -> Poll<Wake> {
        let mut slot = self.lock();
        if slot.generation > generation {
            return Poll::Ready(Wake { keep_alive: false });
        }
        if slot.generation < generation {
            // A new connection: the old one's waker goes. A permit stays (a spurious pass
            // costs nothing; a lost one would leave deliveries unsent).
            slot.generation = generation;
            slot.waker = None;
            slot.keep_alive_due = false;
        }
        if slot.woken || slot.keep_alive_due {
            let keep_alive = std::mem::take(&mut slot.keep_alive_due);
            slot.woken = false;
            return Poll::Ready(Wake { keep_alive });
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_wake_before_the_wait_is_kept_and_one_after_it_wakes_the_waiter() {
        let slot = WakeSlot::default();
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        slot.wake();
        assert_eq!(
            slot.poll_woken(&mut cx, 1),
            Poll::Ready(Wake { keep_alive: false })
        );
        assert_eq!(
            slot.poll_woken(&mut cx, 1),
            Poll::Pending,
            "the permit was used"
        );
        slot.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(slot.poll_woken(&mut cx, 1).is_ready());
    }

    #[test]
    fn a_taken_over_connection_cannot_take_the_slot_back_and_is_told_to_look() {
        let slot = WakeSlot::default();
        let (old_count, old) = waker();
        let (new_count, new) = waker();
        assert!(slot
            .poll_woken(&mut Context::from_waker(&old), 1)
            .is_pending());
        assert!(slot
            .poll_woken(&mut Context::from_waker(&new), 2)
            .is_pending());
        // The old connection looks again: it does not replace the new one's waker.
        assert!(slot
            .poll_woken(&mut Context::from_waker(&old), 1)
            .is_ready());
        slot.wake();
        assert_eq!(
            new_count.0.load(Ordering::SeqCst),
            1,
            "the new connection is woken"
        );
        assert_eq!(old_count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_keep_alive_firing_reaches_its_own_generation_only() {
        let slot = WakeSlot::default();
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(slot.poll_woken(&mut cx, 3).is_pending());
        slot.keep_alive_due(2);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "an older connection's timer"
        );
        slot.keep_alive_due(3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            slot.poll_woken(&mut cx, 3),
            Poll::Ready(Wake { keep_alive: true })
        );
        assert!(slot.poll_woken(&mut cx, 3).is_pending(), "told once");
    }
}
