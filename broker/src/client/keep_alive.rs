//! The keep-alive rule as a sans-IO state machine: a client that sends nothing for one and a
//! half times its Keep Alive is closed [MQTT-3.1.2-22] — unless the broker itself stopped
//! reading it (a pause for a full subscriber queue, a rate limit), which restarts the
//! clock. Time is an input (tokio's monotonic `Instant`, which paused-time tests drive);
//! the client task owns the timer and asks this what a firing means.

use std::time::Duration;

use tokio::time::Instant;

/// What a firing keep-alive timer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAliveVerdict {
    /// Nothing came in time: close the connection.
    Expired,
    /// Not due yet (a packet came meanwhile, or reading was paused): fire again then.
    RearmAt(Instant),
}

/// A connection's keep-alive deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    /// One and a half times the negotiated Keep Alive, in milliseconds (at most 65,535 s x
    /// 1.5 fits; 4 bytes, not a 16-byte `Duration`: this is in every idle connection);
    /// `None`: no keep-alive.
    grace_ms: Option<std::num::NonZeroU32>,
    /// On the `clock::mono_ns` scale (8 bytes, not a 16-byte `Instant`).
    deadline_ns: u64,
}

impl KeepAlive {
    /// The rule for a connection whose keep-alive grace is `grace`, starting at `now`.
    pub(crate) fn new(grace: Option<Duration>, now: Instant) -> Self {
        let grace_ms = grace
            .map(|g| u32::try_from(g.as_millis()).unwrap_or(u32::MAX))
            .and_then(std::num::NonZeroU32::new);
        let mut k = KeepAlive {
            grace_ms,
            deadline_ns: 0,
        };
        k.set_deadline(now + k.grace().unwrap_or(Duration::ZERO));
        k
    }

    fn grace(&self) -> Option<Duration> {
        self.grace_ms
            .map(|ms| Duration::from_millis(u64::from(ms.get())))
    }

    /// Whether there is a keep-alive at all (a timer is needed).
    pub(crate) fn is_on(&self) -> bool {
        self.grace_ms.is_some()
    }

    /// When the timer should fire first.
    pub(crate) fn deadline(&self) -> Instant {
        crate::clock::instant_at_ns(self.deadline_ns)
    }

    fn set_deadline(&mut self, at: Instant) {
        self.deadline_ns = crate::clock::mono_ns_at(at);
    }

    /// Input was read at `now` (or reading resumes after the broker's pause): the clock
    /// starts again.
    pub(crate) fn on_input(&mut self, now: Instant) {
        if let Some(grace) = self.grace() {
            self.set_deadline(now + grace);
        }
    }

    /// The timer fired at `now`; `paused`: the broker is not reading this client (its
    /// silence is the broker's doing, so it does not count).
    pub(crate) fn on_timer(&mut self, now: Instant, paused: bool) -> KeepAliveVerdict {
        let Some(grace) = self.grace() else {
            return KeepAliveVerdict::RearmAt(self.deadline());
        };
        if crate::clock::mono_ns_at(now) < self.deadline_ns {
            return KeepAliveVerdict::RearmAt(self.deadline());
        }
        if paused {
            self.set_deadline(now + grace);
            return KeepAliveVerdict::RearmAt(self.deadline());
        }
        KeepAliveVerdict::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(1500);

    #[tokio::test(start_paused = true)]
    async fn silence_for_the_grace_expires_and_input_restarts_the_clock() {
        let start = Instant::now();
        let mut k = KeepAlive::new(Some(GRACE), start);
        assert_eq!(k.deadline(), start + GRACE);
        tokio::time::advance(Duration::from_millis(1000)).await;
        k.on_input(Instant::now());
        // The timer set for the first deadline fires early: rearm, not expire.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            k.on_timer(Instant::now(), false),
            KeepAliveVerdict::RearmAt(start + Duration::from_millis(2500))
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(
            k.on_timer(Instant::now(), false),
            KeepAliveVerdict::RearmAt(_)
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.on_timer(Instant::now(), false), KeepAliveVerdict::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_of_the_brokers_making_does_not_count() {
        let mut k = KeepAlive::new(Some(GRACE), Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert_eq!(
            k.on_timer(now, true),
            KeepAliveVerdict::RearmAt(now + GRACE),
            "paused by the broker: another grace"
        );
        tokio::time::advance(GRACE).await;
        assert_eq!(k.on_timer(Instant::now(), false), KeepAliveVerdict::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn no_keep_alive_never_expires() {
        let mut k = KeepAlive::new(None, Instant::now());
        assert!(!k.is_on());
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(matches!(
            k.on_timer(Instant::now(), false),
            KeepAliveVerdict::RearmAt(_)
        ));
        k.on_input(Instant::now());
    }
}
