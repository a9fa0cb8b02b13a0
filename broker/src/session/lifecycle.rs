//! The values the session table's transitions take and give (see `table`): how a
//! connection ended, what a transition leaves for the caller to do, a connection's hold on
//! a session and why it could not get one, and the limits a new session gets.

use std::sync::Arc;

use super::{Session, SessionLimits};
use crate::message::Message;
use crate::security::auth::Access;

/// What a transition leaves for the caller to do once no session lock is held.
pub(crate) enum Effect {
    /// Publish this session's will through the choke point, checked there against its
    /// client's rights (if known: see `PendingWill::access`).
    PublishWill(Arc<Session>, Arc<Message>, Option<Box<Access>>),
}

/// A connection's will, to publish when it ends abnormally.
pub(crate) struct Will {
    pub message: Message,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// Its client's rights (see `PendingWill::access`).
    pub access: Option<Box<Access>>,
}

/// The effects of one transition, in the order they must be applied.
pub(crate) type Effects = Vec<Effect>;

/// A connection's hold on a session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// The generation this attach created; detach is a no-op if another attach followed.
    pub generation: u64,
}

/// Why a connection could not get a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachRefused {
    /// `max_sessions`, the tenant's quota or the session byte budget is reached.
    Quota,
    /// The handshake deadline passed while waiting for another CONNECT of this client id.
    Timeout,
}

/// How a connection ended, as far as the session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// DISCONNECT 0x00: the will is discarded.
    Clean,
    /// Any abnormal end: the will is published (after its delay).
    Abnormal,
    /// Another connection took the session over (the will is published as for Abnormal; the
    /// new owner decides the session's fate).
    TakenOver,
    /// The broker is shutting down: no will, no timers.
    Shutdown,
}

/// The limits the table applies when it makes a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableLimits {
    /// Sessions the broker holds at most (connected and offline).
    pub max_sessions: usize,
    /// Each session's own limits.
    pub session: SessionLimits,
}
