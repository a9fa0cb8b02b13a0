//! One connection's packet limiter. Every PUBLISH, SUBSCRIBE, UNSUBSCRIBE and PINGREQ is
//! charged one message and its size in bytes. A connection over its rate is **throttled**:
//! its socket is not read until the debt is repaid, so TCP holds the sender back and the
//! broker keeps nothing extra. A connection that stays throttled — in debt at every packet
//! — for as long as `disconnect_multiple` bursts take at its rate is **disconnected** (v5:
//! 0x96 Message rate too high): it is not catching up, it is pushing.
//!
//! Acknowledgements are not charged: they answer the broker's own deliveries, and slowing
//! them would slow the client's subscriptions instead of its publishing.

use std::time::Duration;

use super::bucket::TokenBucket;
use super::tenant::TenantRates;

/// Bytes a connection owes its tenant's shared rate before it settles, whatever the
/// number of messages (see `Limiter::charge`).
const BATCH_BYTES: u64 = 64 * 1024;

/// A connection's limits; zero rates are no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottlePolicy {
    pub messages_per_sec: u32,
    pub messages_burst: u32,
    pub bytes_per_sec: u64,
    pub bytes_burst: u64,
    /// Bursts' worth of time throttled without a break before the connection is closed
    /// (0: throttle only).
    pub disconnect_multiple: u32,
}

/// The names a device's registry entry may override (`messs device set-limit`).
pub const DEVICE_NAMES: &[&str] = &[
    "messages_per_sec",
    "messages_burst",
    "bytes_per_sec",
    "bytes_burst",
    "disconnect_multiple",
];

impl ThrottlePolicy {
    pub fn is_off(&self) -> bool {
        self.messages_per_sec == 0 && self.bytes_per_sec == 0
    }

    /// This policy with a device's overrides; names not in `DEVICE_NAMES` are ignored
    /// (the registry refuses them when they are set).
    ///
    /// The operator's policy is a ceiling: an override can only make a limit stricter. A
    /// zero in an override (no limit) or a value above the operator's falls back to the
    /// operator's value, so a tenant admin, who may set its devices' overrides, cannot lift
    /// them above what the operator configured.
    pub fn with(self, overrides: &[(String, u64)]) -> Self {
        let get = |name: &str| {
            overrides
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
        };
        let messages_per_sec = stricter(
            u64::from(self.messages_per_sec),
            get("messages_per_sec").unwrap_or(u64::from(self.messages_per_sec)),
        );
        let bytes_per_sec = stricter(
            self.bytes_per_sec,
            get("bytes_per_sec").unwrap_or(self.bytes_per_sec),
        );
        let messages_burst = burst_within(
            (
                u64::from(self.messages_per_sec),
                u64::from(self.messages_burst),
            ),
            messages_per_sec,
            get("messages_burst"),
        );
        let bytes_burst = burst_within(
            (self.bytes_per_sec, self.bytes_burst),
            bytes_per_sec,
            get("bytes_burst"),
        );
        let disconnect_multiple = stricter(
            u64::from(self.disconnect_multiple),
            get("disconnect_multiple").unwrap_or(u64::from(self.disconnect_multiple)),
        );
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        ThrottlePolicy {
            messages_per_sec: narrow(messages_per_sec),
            messages_burst: narrow(messages_burst),
            bytes_per_sec,
            bytes_burst,
            disconnect_multiple: narrow(disconnect_multiple),
        }
    }
}

/// The stricter of two limits where zero is "no limit".
fn stricter(ceiling: u64, wanted: u64) -> u64 {
    match (ceiling, wanted) {
        (0, w) => w,
        (c, 0) => c,
        (c, w) => c.min(w),
    }
}

/// A device's burst under the operator's `(rate, burst)` ceiling, at the device's
/// effective `rate` (a zero burst means "one second at the rate", as in `TokenBucket`).
fn burst_within((ceiling_rate, ceiling_burst): (u64, u64), rate: u64, wanted: Option<u64>) -> u64 {
    let wanted = match wanted.unwrap_or(ceiling_burst) {
        0 => rate,
        b => b,
    };
    if ceiling_rate == 0 {
        return wanted;
    }
    let ceiling = if ceiling_burst == 0 {
        ceiling_rate
    } else {
        ceiling_burst
    };
    wanted.min(ceiling)
}

/// What the connection does after a charged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: read on.
    Go,
    /// Over: read nothing for this long.
    Pause(Duration),
    /// Throttled for too long: close (0x96).
    Disconnect,
}

/// The buckets of one connection.
#[derive(Debug)]
pub struct Throttle {
    policy: ThrottlePolicy,
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Since when (µs) the connection has been pushing: every packet found it in debt or
    /// came with more already waiting behind it.
    throttled_since: Option<u64>,
}

impl Throttle {
    /// A limiter for `policy`, or `None` if it limits nothing.
    pub fn new(policy: ThrottlePolicy, now_us: u64) -> Option<Self> {
        if policy.is_off() {
            return None;
        }
        let bucket =
            |rate: u64, burst: u64| (rate > 0).then(|| TokenBucket::new(rate, burst, now_us));
        Some(Throttle {
            policy,
            messages: bucket(
                u64::from(policy.messages_per_sec),
                u64::from(policy.messages_burst),
            ),
            bytes: bucket(policy.bytes_per_sec, policy.bytes_burst),
            throttled_since: None,
        })
    }

    /// Takes a changed policy (reload) at once, keeping what the connection owes.
    pub fn set_policy(&mut self, policy: ThrottlePolicy, now_us: u64) {
        fn update(slot: &mut Option<TokenBucket>, rate: u64, burst: u64, now_us: u64) {
            match (slot.as_mut(), rate) {
                (_, 0) => *slot = None,
                (Some(b), _) => b.set_limit(rate, burst, now_us),
                (None, _) => *slot = Some(TokenBucket::new(rate, burst, now_us)),
            }
        }
        update(
            &mut self.messages,
            u64::from(policy.messages_per_sec),
            u64::from(policy.messages_burst),
            now_us,
        );
        update(
            &mut self.bytes,
            policy.bytes_per_sec,
            policy.bytes_burst,
            now_us,
        );
        self.policy = policy;
    }

    /// Charges one packet of `bytes` at `now_us` (to the message rate too if `message`: a
    /// PUBLISH, SUBSCRIBE, UNSUBSCRIBE or PINGREQ; acknowledgements pay bytes only);
    /// `more_waiting`: the client has sent more behind it already.
    ///
    /// A packet within the rate ends a push only if nothing waits behind it. A pause that
    /// overshoots (a busy runtime wakes the connection late) lets a pushing client's next
    /// packet or two through without debt, but its data is already waiting; a client at
    /// its rate sends its next packet later.
    pub fn charge(
        &mut self,
        message: bool,
        bytes: usize,
        now_us: u64,
        more_waiting: bool,
    ) -> Verdict {
        // A packet that finds the connection out of debt, with nothing behind it, ends a
        // push even if its own cost puts the connection in debt again: a quiet client
        // whose one large packet cost more than the patience is not pushing.
        let found_in_debt = [&mut self.messages, &mut self.bytes]
            .into_iter()
            .flatten()
            .any(|b| b.in_debt(now_us));
        if !found_in_debt && !more_waiting {
            self.throttled_since = None;
        }
        let wait_m = self
            .messages
            .as_mut()
            .filter(|_| message)
            .map_or(Duration::ZERO, |b| b.charge(1, now_us));
        let wait_b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.charge(bytes as u64, now_us));
        let wait = wait_m.max(wait_b);
        if wait.is_zero() {
            if !more_waiting {
                self.throttled_since = None;
            }
            return Verdict::Go;
        }
        let since = *self.throttled_since.get_or_insert(now_us);
        if self.policy.disconnect_multiple > 0 {
            let burst_time = [&self.messages, &self.bytes]
                .into_iter()
                .flatten()
                .map(TokenBucket::burst_time)
                .max()
                .unwrap_or(Duration::ZERO);
            let patience = burst_time.saturating_mul(self.policy.disconnect_multiple);
            if Duration::from_micros(now_us.saturating_sub(since)) > patience {
                return Verdict::Disconnect;
            }
        }
        Verdict::Pause(wait)
    }
}

/// What one connection applies per packet: its own buckets, and what it owes its
/// tenant's shared ones. The shared counter is charged in small batches (see
/// `TenantRates::batch`), so a tenant's connections on different cores rarely touch the
/// same cache line; the clock is read once per read pass, not per packet.
#[derive(Debug, Default)]
pub struct Limiter {
    pub own: Option<Throttle>,
    owed_messages: u32,
    owed_bytes: u64,
    now_ns: u64,
}

impl Limiter {
    /// A limiter with the connection's own buckets.
    pub fn with_own(own: Throttle) -> Self {
        Limiter {
            own: Some(own),
            ..Limiter::default()
        }
    }

    /// The time of this read pass (every packet of one pass is charged at it).
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Charges a packet of `bytes` (`message` and `more_waiting`: see [`Throttle::charge`]) to
    /// the connection's buckets and, if the tenant limits packets, to what it owes the
    /// tenant: the connection's verdict and the tenant's wait.
    pub fn charge(
        &mut self,
        message: bool,
        bytes: usize,
        more_waiting: bool,
        tenant: &TenantRates,
    ) -> (Verdict, Duration) {
        if self.now_ns == 0 {
            self.now_ns = crate::clock::mono_ns();
        }
        let own = match self.own.as_mut() {
            Some(t) => t.charge(message, bytes, self.now_ns / 1000, more_waiting),
            None => Verdict::Go,
        };
        if !tenant.limits_packets() {
            self.owed_messages = 0;
            self.owed_bytes = 0;
            return (own, Duration::ZERO);
        }
        self.owed_messages += u32::from(message);
        self.owed_bytes += bytes as u64;
        // Settled every `batch` messages, or sooner once acknowledgements alone owe
        // `BATCH_BYTES` (they pay bytes, not messages).
        if self.owed_messages < tenant.batch() && self.owed_bytes < BATCH_BYTES {
            return (own, Duration::ZERO);
        }
        let wait = tenant.charge(self.owed_messages, self.owed_bytes, self.now_ns);
        self.owed_messages = 0;
        self.owed_bytes = 0;
        (own, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_override_only_lowers_the_operators_limits() {
        let operator = ThrottlePolicy {
            messages_per_sec: 100,
            messages_burst: 0,
            bytes_per_sec: 10_000,
            bytes_burst: 20_000,
            disconnect_multiple: 3,
        };
        let set = |pairs: &[(&str, u64)]| {
            operator.with(
                &pairs
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), *v))
                    .collect::<Vec<_>>(),
            )
        };
        // Zero (no limit) and higher values fall back to the operator's.
        let lifted = set(&[
            ("messages_per_sec", 0),
            ("messages_burst", 1_000_000),
            ("bytes_per_sec", 1 << 40),
            ("bytes_burst", 0),
            ("disconnect_multiple", 0),
        ]);
        assert_eq!(lifted.messages_per_sec, 100);
        assert_eq!(
            lifted.messages_burst, 100,
            "the operator's burst is its rate"
        );
        assert_eq!(lifted.bytes_per_sec, 10_000);
        assert_eq!(
            lifted.bytes_burst, 10_000,
            "burst 0 is one second at the rate"
        );
        assert_eq!(lifted.disconnect_multiple, 3);
        // Lower values apply.
        let lowered = set(&[("messages_per_sec", 5), ("disconnect_multiple", 1)]);
        assert_eq!(lowered.messages_per_sec, 5);
        assert_eq!(lowered.messages_burst, 5);
        assert_eq!(lowered.bytes_per_sec, 10_000);
        assert_eq!(lowered.bytes_burst, 20_000);
        assert_eq!(lowered.disconnect_multiple, 1);
        // Where the operator sets no limit, an override is the only one.
        let open = ThrottlePolicy::default().with(&[("messages_per_sec".into(), 7)]);
        assert_eq!((open.messages_per_sec, open.messages_burst), (7, 7));
        assert_eq!(open.disconnect_multiple, 0);
    }

    fn policy(rate: u32, burst: u32, multiple: u32) -> ThrottlePolicy {
        ThrottlePolicy {
            messages_per_sec: rate,
            messages_burst: burst,
            disconnect_multiple: multiple,
            ..Default::default()
        }
    }

    /// Sends `offered` packets a second for `secs`, obeying every pause; returns packets
    /// accepted and whether it was disconnected.
    fn run(t: &mut Throttle, offered: u64, secs: u64) -> (u64, bool) {
        run_late(t, offered, secs, 0)
    }

    /// As `run`, with every pause ending `late_us` after it should.
    fn run_late(t: &mut Throttle, offered: u64, secs: u64, late_us: u64) -> (u64, bool) {
        let gap = 1_000_000 / offered;
        let (mut now, mut next_send, mut sent) = (0u64, 0u64, 0u64);
        while now < secs * 1_000_000 {
            now = now.max(next_send);
            let more_waiting = next_send + gap <= now;
            match t.charge(true, 100, now, more_waiting) {
                Verdict::Go => {}
                Verdict::Pause(d) => now += d.as_micros() as u64 + late_us,
                Verdict::Disconnect => return (sent, true),
            }
            sent += 1;
            next_send += gap;
        }
        (sent, false)
    }

    #[test]
    fn off_is_none() {
        assert!(Throttle::new(ThrottlePolicy::default(), 0).is_none());
    }

    #[test]
    fn under_the_rate_nothing_waits() {
        let mut t = Throttle::new(policy(100, 10, 5), 0).unwrap();
        let (sent, cut) = run(&mut t, 90, 20);
        assert!(!cut);
        assert!((1800..=1802).contains(&sent), "{sent}");
    }

    #[test]
    fn over_the_rate_is_held_to_it_and_a_sustained_push_is_cut() {
        // Twice the rate, no disconnect: held to 100/s (plus the first burst).
        let mut t = Throttle::new(policy(100, 10, 0), 0).unwrap();
        let (sent, cut) = run(&mut t, 200, 10);
        assert!(!cut);
        assert!((1000..=1011).contains(&sent), "{sent}");
        // With a multiple of 5 (5 bursts of 10 at 100/s: half a second), the same sender
        // is cut after about half a second of being held back.
        let mut t = Throttle::new(policy(100, 10, 5), 0).unwrap();
        let (sent, cut) = run(&mut t, 200, 10);
        assert!(cut);
        // (A packet that finds its debt just paid, with nothing behind it yet, restarts
        // the count: a packet or two more than the bare half second.)
        assert!((55..=75).contains(&sent), "{sent}");
        // Pauses that end late (a busy broker) let some packets through without debt: the
        // push is cut all the same, as what the client sent waits behind them.
        let mut t = Throttle::new(policy(100, 10, 5), 0).unwrap();
        let (sent, cut) = run_late(&mut t, 200, 10, 25_000);
        assert!(cut, "a push through late pauses");
        assert!(sent < 100, "{sent}");
        // A client at just under its rate, with pauses as late, is never cut.
        let mut t = Throttle::new(policy(100, 10, 5), 0).unwrap();
        let (_, cut) = run_late(&mut t, 99, 10, 25_000);
        assert!(!cut);
    }

    #[test]
    fn a_burst_then_quiet_is_throttled_but_never_cut() {
        let mut t = Throttle::new(policy(100, 10, 5), 0).unwrap();
        // 40 at once: 30 owed, 0.3 s of pause, less than the 0.5 s of patience.
        let mut now = 0;
        for _ in 0..40 {
            match t.charge(true, 1, now, false) {
                Verdict::Disconnect => panic!("cut"),
                Verdict::Pause(d) => now += d.as_micros() as u64,
                Verdict::Go => {}
            }
        }
        // Quiet for a second, then one packet: back to normal.
        assert_eq!(t.charge(true, 1, now + 1_000_000, false), Verdict::Go);
    }

    #[test]
    fn bytes_limit_on_its_own() {
        let mut t = Throttle::new(
            ThrottlePolicy {
                bytes_per_sec: 1000,
                bytes_burst: 1000,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(t.charge(true, 1000, 0, false), Verdict::Go);
        assert_eq!(
            t.charge(true, 500, 0, false),
            Verdict::Pause(Duration::from_millis(500))
        );
        let big_packets = ThrottlePolicy {
            bytes_per_sec: 2000,
            bytes_burst: 1000,
            disconnect_multiple: 3,
            ..Default::default()
        };
        // The outside audit's finding: one packet larger than the burst (here 1.5 s of
        // debt, as long as the patience of 3 bursts) then a quiet one after the pause was
        // closed as pushing. The quiet one finds the debt paid: not a push.
        let mut t = Throttle::new(big_packets, 0).unwrap();
        let Verdict::Pause(wait) = t.charge(true, 4000, 0, false) else {
            panic!("no pause")
        };
        let after = wait.as_micros() as u64 + 100_000;
        assert_ne!(t.charge(true, 2, after, false), Verdict::Disconnect);
        // The same, pushing (more waits behind every packet): cut.
        let mut t = Throttle::new(big_packets, 0).unwrap();
        let mut now = 0;
        let cut = (0..10).any(|_| match t.charge(true, 4000, now, true) {
            Verdict::Pause(d) => {
                now += d.as_micros() as u64;
                false
            }
            Verdict::Go => false,
            Verdict::Disconnect => true,
        });
        assert!(cut, "a push of large packets is cut");
        // A reload that lifts the limit lifts the debt's future cost too.
        t.set_policy(ThrottlePolicy::default(), 0);
        assert_eq!(t.charge(true, 10_000, 0, false), Verdict::Go);
    }
}
