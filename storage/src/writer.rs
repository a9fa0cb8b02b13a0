//! The one writer thread. Every change to the store is a [`Batch`] sent to it; while one
//! RocksDB write is in progress the next requests queue up, and the writer takes all of
//! them (up to a cap) into the next write: group commit, so a thousand publishers cost a
//! handful of WAL writes, not a thousand. Requests are applied in the order they were
//! submitted, so changes to one session made under its lock reach the disk in that order.
//!
//! A [`Ticket`] says when a set of batches is durable at the configured level: each batch
//! submitted with a clone holds it, and when the last clone is dropped (the writer drops its
//! clones after the write, the submitter after its last submit) the [`Durable`] future
//! resolves — with an error if any of those writes failed. No RocksDB call runs on the
//! caller's thread. A unit ticket ([`Ticket::unit`]) also keeps its batches together: they
//! go into one RocksDB write, and their new data is stored or refused as a whole, so what
//! one inbound packet stores is never half on disk after a crash.
//!
//! The writer never lets RocksDB run out of disk: each batch's class is checked against
//! the free space when it is submitted, and refused at once below what the class needs
//! (see [`crate::space`]): new data below the watermark, bookkeeping below half of it,
//! while deletes and the operator's security changes always go through. Writes resume by
//! themselves once space is freed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::error::StorageError;
use crate::schema::Cf;
use crate::space::{Class, Space};

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// At once: writes go to RocksDB's memtable without the write-ahead log. Fastest; a
    /// crash loses what was not yet flushed to SST files.
    None,
    /// Once in the write-ahead log (not synced): survives a crash of the process, not of
    /// the machine.
    #[default]
    Wal,
    /// Once the write-ahead log is synced to the device: survives power loss.
    Fsync,
}

impl Durability {
    /// Whether acknowledgements wait for the writer.
    pub fn waits(self) -> bool {
        self != Durability::None
    }
}

/// One change.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::DeleteRange(_, a, b) => a.len() + b.len(),
        }
    }
}

/// Changes applied atomically, in order.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    bytes: usize,
    /// Its class when free space runs low, if set (unset: `Bookkeeping`, or `Shrink` for
    /// deletes only). `NewData` is also refused with [`StorageError::Busy`] when the
    /// writer is too far behind; the other classes only track what was already admitted.
    class: Option<Class>,
    /// Set if the write of this batch fails (after it was submitted).
    failure_flag: Option<Arc<AtomicBool>>,
    /// Refused for free space, its deletes are still written (see
    /// [`Batch::deletes_survive_refusal`]).
    keep_deletes: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    pub(crate) fn push(&mut self, op: Op) {
        self.bytes += op.bytes();
        self.ops.push(op);
    }

    pub(crate) fn mark_new_data(&mut self) {
        self.class = Some(Class::NewData);
    }

    /// A security-critical operator change: written from the reserved margin.
    pub(crate) fn mark_reserved(&mut self) {
        self.class = Some(Class::Reserved);
    }

    /// Its puts only track state that may be lost (e.g. QoS 1 in-flight packet ids: lost,
    /// a message is sent again as new), while its deletes must not be (acknowledged
    /// messages): refused for free space, the deletes alone are written.
    pub fn deletes_survive_refusal(&mut self) {
        self.keep_deletes = true;
    }

    /// `flag` is set if the write fails once submitted.
    pub(crate) fn flag_failure(&mut self, flag: Arc<AtomicBool>) {
        self.failure_flag = Some(flag);
    }

    /// Its class: what it was marked, `Shrink` if it only deletes, else `Bookkeeping`.
    pub fn class(&self) -> Class {
        if !self.ops.iter().any(|op| matches!(op, Op::Put(..))) {
            return Class::Shrink;
        }
        self.class.unwrap_or_default()
    }

    fn is_new_data(&self) -> bool {
        self.class() == Class::NewData
    }

    /// Whether it holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Moves every change of `other` to the end of this batch.
    pub fn append(&mut self, other: &mut Batch) {
        self.bytes += std::mem::take(&mut other.bytes);
        self.class = match (self.class, other.class.take()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.failure_flag.is_none() {
            self.failure_flag = other.failure_flag.take();
        }
        self.keep_deletes |= std::mem::take(&mut other.keep_deletes);
        self.ops.append(&mut other.ops);
    }
}

struct TicketInner {
    failed: AtomicBool,
    used: AtomicBool,
    /// Set for a unit ticket (see [`Ticket::unit`]).
    unit: Option<Unit>,
    tx: Mutex<Option<tokio::sync::oneshot::Sender<bool>>>,
}

/// What the writer knows of a unit: whether more of its batches may come, and the verdicts
/// made once for the whole unit, so it is written or refused as one.
struct Unit {
    /// Not sealed yet. Once it is, a wake-up request follows its last batch down the
    /// channel, and the writer does not end a RocksDB write before it has seen that.
    open: AtomicBool,
    /// A batch of its new data passed the checks for free space and for a writer too far
    /// behind: the rest of the unit is not refused for them (a refusal half-way would
    /// store half a message).
    admitted: AtomicBool,
    /// Wakes the writer when the unit is sealed (set at the first submit).
    wake: std::sync::OnceLock<mpsc::Sender<Request>>,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        let tx = self
            .tx
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(!self.failed.load(Ordering::Acquire));
        }
    }
}

/// Tracks when the batches submitted with it are durable (see the module header).
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

impl Ticket {
    /// A ticket and the future that resolves once it and every batch submitted with it
    /// are done.
    pub fn new() -> (Ticket, Durable) {
        Self::make(None)
    }

    /// A ticket whose batches are one unit: the writer puts all of them into one RocksDB
    /// write (never ending a write between two of them) and refuses all or none of their
    /// new data — what one inbound packet stores survives a crash whole or not at all. The
    /// submitter must [`seal`](Ticket::seal) it after its last batch; until then the writer
    /// waits for the rest (at most `UNIT_WAIT`, a guard against a unit never sealed).
    pub fn unit() -> (Ticket, Durable) {
        Self::make(Some(Unit {
            open: AtomicBool::new(true),
            admitted: AtomicBool::new(false),
            wake: std::sync::OnceLock::new(),
        }))
    }

    fn make(unit: Option<Unit>) -> (Ticket, Durable) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = TicketInner {
            failed: AtomicBool::new(false),
            used: AtomicBool::new(false),
            unit,
            tx: Mutex::new(Some(tx)),
        };
        (Ticket(Arc::new(inner)), Durable(rx))
    }

    /// Says the last batch of a unit was submitted (nothing for other tickets; repeating
    /// it does nothing).
    pub fn seal(&self) {
        let Some(unit) = &self.0.unit else {
            return;
        };
        if unit.open.swap(false, Ordering::AcqRel) {
            if let Some(wake) = unit.wake.get() {
                // The writer may be waiting for this unit's next batch: this is it.
                let _ = wake.send(Request {
                    batch: Batch::new(),
                    ticket: Some(self.clone()),
                    n: 0,
                    wake: true,
                });
            }
        }
    }

    fn same(&self, other: &Ticket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether any batch was submitted with it.
    pub fn is_used(&self) -> bool {
        self.0.used.load(Ordering::Acquire)
    }

    /// Whether it was marked failed.
    pub fn is_failed(&self) -> bool {
        self.0.failed.load(Ordering::Acquire)
    }

    /// Marks it failed (a batch that should have gone with it could not be submitted).
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

/// Resolves when a [`Ticket`]'s batches are durable: `Err` if any of them failed or the
/// writer stopped.
#[derive(Debug)]
pub struct Durable(tokio::sync::oneshot::Receiver<bool>);

impl Durable {
    /// The result if it is already known, without waiting.
    pub fn try_result(&mut self) -> Option<Result<(), StorageError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.0.try_recv() {
            Ok(true) => Some(Ok(())),
            Ok(false) => Some(Err(StorageError::WriteFailed(
                "a write this acknowledgement depends on failed".into(),
            ))),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(Err(StorageError::WriterStopped)),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(StorageError::WriteFailed(
                "a write this acknowledgement depends on failed".into(),
            )),
            Err(_) => Err(StorageError::WriterStopped),
        })
    }
}

struct Request {
    batch: Batch,
    ticket: Option<Ticket>,
    /// Submission number (see `Progress`); 0 for a wake-up.
    n: u64,
    /// Only wakes the writer: a unit was sealed (`ticket` is the unit), or — without a
    /// ticket — the writer is stopping. Not a submitted request.
    wake: bool,
}

/// How far the writer got: requests are numbered as they are submitted, and `written` is
/// the number of the last one the writer finished (written or failed), so a reader can wait
/// until everything submitted before it is visible.
#[derive(Default)]
struct Progress {
    written: Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Progress {
    fn set(&self, n: u64) {
        *self.written.lock().unwrap_or_else(PoisonError::into_inner) = n;
        self.changed.notify_all();
    }
}

/// Counters of the writer, for metrics and the performance report.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// RocksDB writes (each one group-committed batch).
    pub writes: AtomicU64,
    /// Changes written.
    pub ops: AtomicU64,
    /// Bytes of keys and values written.
    pub bytes: AtomicU64,
    /// Largest number of requests merged into one write.
    pub max_group: AtomicU64,
    /// Requests merged into writes, in total (divided by `writes`: the mean group size).
    pub requests: AtomicU64,
    /// Writes that failed.
    pub failures: AtomicU64,
    /// Batches refused because the writer was too far behind.
    pub refused_busy: AtomicU64,
    /// Bytes submitted and not yet written (a gauge).
    pub pending_bytes: AtomicUsize,
    /// 1 while the last write failed, 0 once one succeeds again (a gauge).
    pub failing: AtomicBool,
    /// Batches refused because free disk space was below what their class needs.
    pub refused_disk_low: AtomicU64,
    /// Requests submitted and not yet written (a gauge: the writer's queue depth).
    pub pending_requests: AtomicUsize,
    /// How long each RocksDB write (one group commit) took.
    pub write_latency: LatencyHistogram,
}

/// Upper bounds of the latency buckets, in microseconds.
pub const LATENCY_BOUNDS_MICROS: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// A latency histogram of plain counters (Prometheus buckets: each counts the
/// observations at or below its bound; the rest are only in `count`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket of [`LATENCY_BOUNDS_MICROS`], not cumulative.
    pub buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len()],
    /// Observations.
    pub count: AtomicU64,
    /// Sum of the observations, microseconds.
    pub sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, micros: u64) {
        if let Some(i) = LATENCY_BOUNDS_MICROS.iter().position(|&b| micros <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Most requests merged into one RocksDB write.
const MAX_GROUP: usize = 4096;
/// Most bytes merged into one RocksDB write (a unit may take it past this).
const MAX_GROUP_BYTES: usize = 8 << 20;
/// How long the writer waits for the rest of a unit before writing what it has: a unit is
/// submitted by one synchronous pass of its packet's handler, so only a bug (a unit never
/// sealed) makes it wait this long, and then it says so.
const UNIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The submitting side of the writer thread.
pub(crate) struct Writer {
    /// The channel, and the number of the last request sent on it (numbered under this
    /// lock, so numbers follow the channel's order).
    tx: Mutex<(Option<mpsc::Sender<Request>>, u64)>,
    progress: Arc<Progress>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) stats: Arc<WriterStats>,
    max_pending_bytes: usize,
    fault: Arc<AtomicBool>,
    space: Arc<Space>,
}

impl Writer {
    pub(crate) fn start(
        db: Arc<DB>,
        durability: Durability,
        max_pending_bytes: usize,
        disk: (std::path::PathBuf, u64),
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        let stats = Arc::new(WriterStats::default());
        let fault = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let space = Arc::new(Space::new(disk.0, disk.1));
        let thread = {
            let stats = stats.clone();
            let inject = fault.clone();
            let progress = progress.clone();
            let space = space.clone();
            std::thread::Builder::new()
                .name("messs-storage-writer".into())
                .spawn(move || {
                    run(&db, durability, &rx, &stats, &inject, &progress, &space);
                    // Nothing more will be written: release every waiter.
                    progress.set(u64::MAX);
                })
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the storage writer thread");
                None
            }
        };
        Writer {
            tx: Mutex::new((thread.as_ref().map(|_| tx), 0)),
            progress,
            thread: Mutex::new(thread),
            stats,
            max_pending_bytes,
            fault,
            space,
        }
    }

    /// Queues `batch` for the writer, unless its class may not be written with the free
    /// space there is (see [`crate::space`]) or — new data — more than
    /// `max_pending_bytes` wait. A refusal fails `ticket`.
    pub(crate) fn submit(
        &self,
        mut batch: Batch,
        ticket: Option<&Ticket>,
    ) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.admit(&batch, ticket) {
            let keep = batch.keep_deletes && matches!(e, StorageError::DiskLow { .. });
            if keep {
                batch.ops.retain(|op| !matches!(op, Op::Put(..)));
                batch.bytes = batch.ops.iter().map(Op::bytes).sum();
            }
            if !keep || batch.is_empty() {
                if let Some(t) = ticket {
                    t.fail();
                }
                return Err(e);
            }
        }
        self.stats
            .pending_bytes
            .fetch_add(batch.bytes, Ordering::Relaxed);
        self.stats.pending_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = batch.bytes;
        if let Some(t) = ticket {
            t.0.used.store(true, Ordering::Release);
        }
        let mut guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let (tx, last) = &mut *guard;
        if let (Some(u), Some(tx)) = (ticket.and_then(|t| t.0.unit.as_ref()), tx.as_ref()) {
            u.wake.get_or_init(|| tx.clone());
        }
        let request = Request {
            batch,
            ticket: ticket.cloned(),
            n: *last + 1,
            wake: false,
        };
        let sent = tx.as_ref().is_some_and(|tx| tx.send(request).is_ok());
        if sent {
            *last += 1;
        }
        drop(guard);
        if !sent {
            self.stats.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.pending_requests.fetch_sub(1, Ordering::Relaxed);
            if let Some(t) = ticket {
                t.fail();
            }
            return Err(StorageError::WriterStopped);
        }
        Ok(())
    }

    /// Whether `batch` may be queued: its class against the free space, and new data
    /// against the writer's backlog — once per unit, so a unit is admitted (or refused)
    /// whole.
    fn admit(&self, batch: &Batch, ticket: Option<&Ticket>) -> Result<(), StorageError> {
        let unit = ticket.and_then(|t| t.0.unit.as_ref());
        if !batch.is_new_data() {
            let class = batch.class();
            self.admit_space(class, batch.bytes)?;
            // Bookkeeping (subscriptions, session records, audit records) is small and
            // follows what was admitted, so it may go past the limit on new data — but
            // not without bound: clients cause it too (subscribe or connect churn), and
            // a writer that cannot keep up must not queue it in memory for ever.
            // Deletes and the operator's security changes are never refused.
            if class == Class::Bookkeeping {
                let pending = self.stats.pending_bytes.load(Ordering::Relaxed);
                let cap = self.max_pending_bytes.saturating_mul(BOOKKEEPING_SLACK);
                if pending > 0 && pending.saturating_add(batch.bytes) > cap {
                    self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    return Err(StorageError::Busy(pending));
                }
            }
            return Ok(());
        }
        if let (Some(u), Some(t)) = (unit, ticket) {
            if u.admitted.load(Ordering::Acquire) {
                // The rest of an admitted unit is not refused for a busy writer — up to a
                // hard cap on what waits: one publish fanned out to many persistent
                // sessions must not queue gigabytes. Past it the unit fails (its
                // acknowledgement is a refusal; what was queued of it may be written).
                let pending = self.stats.pending_bytes.load(Ordering::Relaxed);
                let cap = self.max_pending_bytes.saturating_mul(4).max(UNIT_CAP_MIN);
                if pending.saturating_add(batch.bytes) > cap {
                    self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    return Err(StorageError::Busy(pending));
                }
                self.space.count_admitted(batch.bytes as u64);
                return Ok(());
            }
            if t.is_failed() {
                // The rest of a unit already refused: its acknowledgement is a refusal, so
                // its new data is not stored either.
                return Err(StorageError::WriteFailed(
                    "refused with the rest of its unit".into(),
                ));
            }
        }
        self.admit_space(Class::NewData, batch.bytes)?;
        let pending = self.stats.pending_bytes.load(Ordering::Relaxed);
        if pending > 0 && pending + batch.bytes > self.max_pending_bytes {
            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::Busy(pending));
        }
        if let Some(u) = unit {
            u.admitted.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn admit_space(&self, class: Class, bytes: usize) -> Result<(), StorageError> {
        let pending = self.stats.pending_bytes.load(Ordering::Relaxed);
        let refused = self.space.admit(class, bytes, pending);
        if let Err(e) = &refused {
            self.stats.refused_disk_low.fetch_add(1, Ordering::Relaxed);
            if !self.stats.failing.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    error = %e,
                    "free disk space is below storage.min_free_disk_bytes: new messages that need storage are refused until space is freed (below half of it, session bookkeeping too; deletes and the operator's security changes still go through)"
                );
            }
        }
        refused
    }

    /// Whether free space is below the watermark (new data is refused).
    pub(crate) fn space_is_low(&self) -> bool {
        self.space.is_low()
    }

    /// Whether free space is below twice the watermark (see `Space::is_nearly_low`).
    pub(crate) fn space_is_nearly_low(&self) -> bool {
        self.space.is_nearly_low()
    }

    /// Blocks until every request submitted before this call was written (or failed).
    pub(crate) fn wait_written(&self) -> Result<(), StorageError> {
        let target = self.tx.lock().unwrap_or_else(PoisonError::into_inner).1;
        let mut written = self
            .progress
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *written < target {
            written = self
                .progress
                .changed
                .wait(written)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if *written == u64::MAX && target != u64::MAX {
            return Err(StorageError::WriterStopped);
        }
        Ok(())
    }

    /// Changes the free-space watermark (0: off).
    pub(crate) fn set_min_free(&self, bytes: u64) {
        self.space.set_min_free(bytes);
    }

    /// While `on`, every write fails as on a full disk (fault drills and tests).
    pub(crate) fn set_fault(&self, on: bool) {
        self.fault.store(on, Ordering::Release);
    }

    /// Stops accepting batches, lets the thread write what is queued, and waits for it.
    pub(crate) fn stop(&self) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .take();
        // Unit tickets hold a sender for their seal, so the channel may outlive this one:
        // tell the thread to end once it has written what is queued.
        if let Some(tx) = tx {
            let _ = tx.send(Request {
                batch: Batch::new(),
                ticket: None,
                n: 0,
                wake: true,
            });
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the storage writer thread panicked");
            }
        }
    }
}

fn run(
    db: &DB,
    durability: Durability,
    rx: &mpsc::Receiver<Request>,
    stats: &WriterStats,
    inject: &AtomicBool,
    progress: &Progress,
    space: &Space,
) {
    let mut opts = WriteOptions::default();
    match durability {
        Durability::None => opts.disable_wal(true),
        Durability::Wal => opts.set_sync(false),
        Durability::Fsync => opts.set_sync(true),
    }
    let mut tickets: Vec<Ticket> = Vec::new();
    // Flags to set if the write fails.
    let mut failure_flags: Vec<Arc<AtomicBool>> = Vec::new();
    // Units in the current write whose seal the writer has not seen yet.
    let mut open_units: Vec<Ticket> = Vec::new();
    let mut last_low_flush: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut wb = WriteBatch::default();
        let mut bytes = 0usize;
        let mut group = 0usize;
        let mut last_n = 0;
        let mut next = Some(first);
        let mut stopping = false;
        loop {
            let Some(request) = next.take() else {
                // Nothing more to take (or the write is full): the write still waits for
                // the rest of every unit in it, up to the unit's seal.
                if open_units.is_empty() {
                    break;
                }
                // A unit's submitter is mid-way through one packet's handler: its seal is
                // microseconds away. Parking here would cost a second wake-up of this
                // thread per packet, so look again a few times first.
                if let Some(r) = spin_for_next(rx) {
                    next = Some(r);
                    continue;
                }
                match rx.recv_timeout(UNIT_WAIT) {
                    Ok(r) => next = Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        tracing::error!(
                            "a unit of store writes was not sealed within {UNIT_WAIT:?}: writing it in parts"
                        );
                        open_units.clear();
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => open_units.clear(),
                }
                continue;
            };
            if request.wake {
                // A unit's seal: all of it is in this write now. Or the end.
                match &request.ticket {
                    Some(t) => open_units.retain(|u| !u.same(t)),
                    None => stopping = true,
                }
            } else {
                bytes += request.batch.bytes;
                group += 1;
                last_n = request.n;
                if let Some(t) = request.ticket.as_ref().filter(|t| t.0.unit.is_some()) {
                    if !open_units.iter().any(|u| u.same(t)) {
                        open_units.push(t.clone());
                    }
                }
                let flag = request.batch.failure_flag;
                if flag.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
                    // Queued behind a failed write it depends on (an audit record linked
                    // to one that is not on disk): dropped, and its ticket failed.
                    if let Some(t) = &request.ticket {
                        t.fail();
                    }
                } else {
                    for op in &request.batch.ops {
                        apply(db, &mut wb, op);
                    }
                    tickets.extend(request.ticket);
                    failure_flags.extend(flag);
                }
            }
            if !stopping && group < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if group == 0 {
            // Only wake-ups: nothing was submitted.
            if stopping {
                break;
            }
            continue;
        }
        let injected = inject.load(Ordering::Acquire);
        let ops = wb.len();
        let started = std::time::Instant::now();
        let result = if injected {
            Err("injected fault: no space left on device".to_string())
        } else {
            db.write_opt(wb, &opts).map_err(|e| e.to_string())
        };
        stats
            .write_latency
            .record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        match result {
            Ok(()) => {
                // Still refusing for lack of disk: failing until space is back.
                if !space.is_low() && stats.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("storage writes succeed again");
                }
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                stats.requests.fetch_add(group as u64, Ordering::Relaxed);
                stats.max_group.fetch_max(group as u64, Ordering::Relaxed);
                if space.is_low() && last_low_flush.is_none_or(|at| at.elapsed() >= LOW_FLUSH_EVERY)
                {
                    last_low_flush = Some(std::time::Instant::now());
                    flush_memtables(db);
                }
            }
            Err(e) => {
                if !stats.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "storage write failed; publishes that need storage are refused until writes succeed");
                }
                stats.failures.fetch_add(1, Ordering::Relaxed);
                for t in &tickets {
                    t.fail();
                }
                for f in &failure_flags {
                    f.store(true, Ordering::Release);
                }
            }
        }
        stats.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
        stats.pending_requests.fetch_sub(group, Ordering::Relaxed);
        progress.set(last_n);
        // Dropping the writer's clones resolves tickets whose submitter is done.
        tickets.clear();
        failure_flags.clear();
        if stopping {
            break;
        }
    }
}

/// How far past `max_pending_bytes` bookkeeping may queue (a multiple of it): new data stops
/// at the limit, so this is room for the records that follow what was admitted.
const BOOKKEEPING_SLACK: usize = 2;

/// The least hard cap on bytes waiting for the writer past which even the rest of an
/// admitted unit is refused (the cap is four times `max_pending_bytes`, at least this).
const UNIT_CAP_MIN: usize = 64 << 20;

/// How long the writer spins (yielding) for the rest of an open unit before it parks.
const UNIT_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The next request if one comes within `UNIT_SPIN`.
fn spin_for_next(rx: &mpsc::Receiver<Request>) -> Option<Request> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = rx.try_recv() {
            return Some(r);
        }
        if started.elapsed() >= UNIT_SPIN {
            return None;
        }
        std::thread::yield_now();
    }
}

/// While free space is low, how often the writer flushes the memtables.
const LOW_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Flushes every memtable to table files, so RocksDB can delete the write-ahead log files
/// they kept alive: on a low disk the log holds what deletes freed (acknowledged messages,
/// drained queues) until the next flush, which at the log's size limit may never come.
fn flush_memtables(db: &DB) {
    let names = Cf::ALL
        .iter()
        .map(|cf| cf.name())
        .chain(std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME));
    for name in names {
        if let Some(cf) = db.cf_handle(name) {
            if let Err(e) = db.flush_cf(cf) {
                tracing::warn!(error = %e, cf = name, "flushing a memtable on a low disk failed");
            }
        }
    }
}

fn apply(db: &DB, wb: &mut WriteBatch, op: &Op) {
    let Some(cf) = db.cf_handle(cf_name(op)) else {
        // Every family is created at open; a missing one cannot happen after it.
        tracing::error!(cf = cf_name(op), "column family missing; change dropped");
        return;
    };
    match op {
        Op::Put(_, k, v) => wb.put_cf(cf, k, v),
        Op::Delete(_, k) => wb.delete_cf(cf, k),
        Op::DeleteRange(_, from, to) => wb.delete_range_cf(cf, from, to),
    }
}

fn cf_name(op: &Op) -> &'static str {
    match op {
        Op::Put(cf, ..) | Op::Delete(cf, _) | Op::DeleteRange(cf, ..) => cf.name(),
    }
}
