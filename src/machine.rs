//! A write job's state machine, without I/O: everything a job decides between
//! the statements its driver ([`run_job`](crate::write::run_job)) runs.
//!
//! The machine wraps the scan's [`Engine`] and owns the job's counters (its
//! [`WriteReport`]), the position its checkpoint records, the batch size
//! (toward [`target_batch_time`](crate::Chunked::target_batch_time)), the wait
//! after a batch, the attempt counter, and what each failed attempt means:
//!
//! A driver (the blocking one in `write.rs`, the async one in
//! `stream/write.rs`) is one loop over [`Step`]s; each step is one statement
//! or transaction, or a wait, and its outcome is handed back:
//!
//! ```text
//! loop {
//!     match m.step()? {
//!         Step::Start { retry }       => m.started(read or create the checkpoint row)?,
//!         Step::FinishEmpty { .. }    => m.emptied(mark the row done, in a batch transaction)?,
//!         Step::Checks                => { the checks before the first batch; m.checked() }
//!         Step::Seek(key)             => the query's next batch starts after key,
//!         Step::Batch { plan, .. }    => m.ran(the batch's transaction)?,
//!           (inside it: m.locked(..), m.loaded(..), m.position(..))
//!         Step::Wait(d)               => sleep d,
//!         Step::Done                  => return Ok(m.finish()),
//!     }
//! }
//! ```
//!
//! What a failed attempt means (retry after a back-off, a batch committed
//! after all, a lost `COMMIT` answer, a busy checkpoint, a closure's error) is
//! decided by [`WriteMachine::failed`]; the counters, the checkpoint's next
//! position, the batch size and the wait after a batch by
//! [`WriteMachine::committed`].

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{is_lock_conflict, Checkpoint};
use crate::engine::{BatchPlan, Checked, EndReason, Engine, KeyOrigin, ScanConfig};
use crate::error::Error;
use crate::key::Key;
use crate::predicate::Bounds;
use crate::source::{connection_lost, user_error_connection_lost, AttemptError};
use crate::stored::StoredKey;

mod gate;
use crate::trace::Trace;
use crate::write::{BatchStats, Throttle, WriteConfig, WriteReport};
use gate::Gate;

/// Adapts the batch size toward a target time per batch.
///
/// The rule: keep an exponentially smoothed time per row (each new batch
/// weighs half); the ideal size is `target / time per row`; the next size is
/// the ideal, but at most 1.2 × and at least 0.5 × the current size (grow
/// slowly, shrink fast), and within `[min, max]`.
#[derive(Debug, Clone)]
pub(crate) struct BatchSizer {
    target: Duration,
    min: u64,
    max: u64,
    per_row: Option<f64>,
}

impl BatchSizer {
    pub(crate) fn new(target: Duration, start: u64, min: Option<u64>, max: Option<u64>) -> Self {
        let largest = crate::engine::MAX_BATCH_SIZE;
        let min = min.unwrap_or(1).clamp(1, largest);
        let max = max.unwrap_or(start.saturating_mul(10)).clamp(min, largest);
        Self {
            target,
            min,
            max,
            per_row: None,
        }
    }

    /// The size of the first batch: `start` (the builder's `batch_size`) within
    /// `[min, max]`. A `batch_size` of 0 or above `i64::MAX` stays as it is, to
    /// be refused as any scan's.
    pub(crate) fn first(&self, start: u64) -> u64 {
        if start == 0 || start > crate::engine::MAX_BATCH_SIZE {
            return start;
        }
        start.clamp(self.min, self.max)
    }

    /// The size after a batch of `rows` rows, asked for as `current`, took `took`.
    pub(crate) fn next(&mut self, current: u64, rows: u64, took: Duration) -> u64 {
        if rows == 0 {
            return current.clamp(self.min, self.max);
        }
        let sample = took.as_secs_f64() / rows as f64;
        let per_row = match self.per_row {
            Some(p) => 0.5 * p + 0.5 * sample,
            None => sample,
        };
        self.per_row = Some(per_row);
        let current = current as f64;
        let ideal = if per_row > 0.0 {
            self.target.as_secs_f64() / per_row
        } else {
            f64::INFINITY
        };
        let next = ideal.clamp((current * 0.5).ceil(), (current * 1.2).floor().max(current));
        (next as u64).clamp(self.min, self.max)
    }
}

/// The wait after a batch: the pause and what the throttle asked for, added
/// without overflow (a sum beyond `Duration::MAX` is `Duration::MAX`).
pub(crate) fn wait_after(pause: Option<Duration>, throttle: Option<Duration>) -> Duration {
    pause
        .unwrap_or_default()
        .saturating_add(throttle.unwrap_or_default())
}

/// How long the first attempt of a batch waits for the checkpoint row that
/// another transaction holds, before the job stops with
/// [`Error::CheckpointBusy`].
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(5);

/// After attempt `attempt` (started at `started`) at locking the checkpoint
/// row in a batch's first attempt found it `locked`: how long to wait before
/// trying again, or `None` to go on with what it found. A row another
/// transaction holds is tried again (after
/// [`retry_delay`](crate::source::retry_delay)) for at most [`LOCK_WAIT`]: a
/// runner that died inside a batch holds the row until the server notices its
/// closed connection and rolls its transaction back, so a run started right
/// after the crash waits for that instead of stopping. A live runner is no
/// less excluded: once the row is free, [`WriteMachine::locked`] finds it
/// moved on by the other runner's batch.
pub(crate) fn lock_retry<T>(
    started: Instant,
    attempt: u32,
    locked: &diesel::QueryResult<T>,
) -> Option<Duration> {
    match locked {
        Err(e) if is_lock_conflict(e) && started.elapsed() < LOCK_WAIT => {
            Some(crate::source::retry_delay(attempt))
        }
        _ => None,
    }
}

/// How the first attempt of a batch waits for a checkpoint row that another
/// transaction holds: the driver rolls the batch's transaction back (nothing
/// ran in it but the lock), waits as [`again`](Self::again) says, and begins
/// it again. No savepoint is needed around the lock, which keeps a batch two
/// statements shorter.
#[derive(Debug)]
pub(crate) struct LockWait {
    started: Instant,
    tries: u32,
}

impl LockWait {
    /// Before the batch's first transaction.
    pub(crate) fn new() -> Self {
        LockWait {
            started: Instant::now(),
            tries: 0,
        }
    }

    /// After the batch's transaction locked the checkpoint row as `locked`
    /// says: how long to wait before beginning the transaction again, or
    /// `None` to go on with what it found (and let
    /// [`WriteMachine::locked`] judge it). Only a first attempt waits, as
    /// [`lock_retry`] says; a retry is the machine's own.
    pub(crate) fn again<V: Clone + PartialEq + std::fmt::Debug, T>(
        &mut self,
        m: &WriteMachine<V>,
        locked: &diesel::QueryResult<T>,
    ) -> Option<Duration> {
        if !m.first_attempt() {
            return None;
        }
        self.tries += 1;
        lock_retry(self.started, self.tries, locked)
    }
}

/// Why a batch's transaction was rolled back.
#[allow(missing_debug_implementations)]
pub enum Abort {
    /// A database error: retried if transient.
    Db(diesel::result::Error),
    /// The job stops with this error.
    Fail(Error),
    /// The closure of `for_each_batch` failed: the job stops with
    /// [`Error::Batch`], unless the error is its connection's.
    User(Box<dyn std::error::Error + Send + Sync>),
    /// On a retry, the checkpoint row was still locked: retried after a delay
    /// while attempts are left.
    Busy(diesel::result::Error),
    /// A retry found that the attempt before it committed after all (its
    /// connection broke between `COMMIT` and the answer): the checkpoint row
    /// has this run's next batch.
    Committed(Box<Checkpoint>),
}

impl From<diesel::result::Error> for Abort {
    fn from(e: diesel::result::Error) -> Self {
        Abort::Db(e)
    }
}

impl Abort {
    /// The error the transaction and the connection source see, and what the
    /// machine is to know besides.
    ///
    /// A closure's error that is its connection's (see
    /// [`user_error_connection_lost`]) is handed on as a closed connection, so
    /// that a pool discards the connection; the batch did not commit, and is
    /// retried as any batch whose connection broke.
    pub(crate) fn split(self) -> (diesel::result::Error, Option<Rollback>) {
        use diesel::result::{DatabaseErrorKind, Error as E};
        match self {
            Abort::Db(e) => (e, None),
            Abort::Fail(e) => (E::RollbackTransaction, Some(Rollback::Fail(e))),
            Abort::Committed(row) => (E::RollbackTransaction, Some(Rollback::Committed(row))),
            Abort::Busy(e) => (e, Some(Rollback::Busy)),
            Abort::User(source) if user_error_connection_lost(&*source) => {
                let e = E::DatabaseError(
                    DatabaseErrorKind::ClosedConnection,
                    Box::new(source.to_string()),
                );
                (e, Some(Rollback::UserLost(source)))
            }
            Abort::User(source) => (E::RollbackTransaction, Some(Rollback::User(source))),
        }
    }
}

/// What rolled an attempt's transaction back, besides its database error.
pub(crate) enum Rollback {
    /// The job stops with this error.
    Fail(Error),
    /// The closure of `for_each_batch` failed.
    User(Box<dyn std::error::Error + Send + Sync>),
    /// The closure of `for_each_batch` failed because its connection broke.
    UserLost(Box<dyn std::error::Error + Send + Sync>),
    /// On a retry, the checkpoint row was still locked.
    Busy,
    /// The attempt before committed the batch; the checkpoint row says so.
    Committed(Box<Checkpoint>),
}

/// A batch whose transaction body ran to its end, so that its `COMMIT` is
/// sent next: the keys of its first and last rows (`Debug`-formatted), none
/// for an empty batch.
pub(crate) struct Sent {
    pub(crate) keys: Option<(String, String)>,
}

/// One failed attempt at a batch.
pub(crate) struct Failure {
    /// What the connection source returned.
    pub(crate) error: AttemptError,
    /// What rolled the transaction back, if the body did.
    pub(crate) rollback: Option<Rollback>,
    /// Set when the body ran to its end: the failure is the `COMMIT`'s.
    pub(crate) sent: Option<Sent>,
}

/// One committed batch.
#[derive(Debug, PartialEq)]
pub(crate) struct Committed<V> {
    /// Rows the batch loaded (0: the batch was empty).
    pub(crate) n: usize,
    /// Rows it wrote.
    pub(crate) written: u64,
    /// Its last key.
    pub(crate) last: Option<StoredKey<V>>,
    /// Whether rows are left after it.
    pub(crate) more: bool,
}

/// What to do after a failed attempt, if not stop.
#[derive(Debug, PartialEq)]
pub(crate) enum Next<V> {
    /// Wait this long and run the batch again.
    Retry(Duration),
    /// The batch is committed after all, as this says.
    Committed(Committed<V>),
}

/// What the checkpoint row says after a batch, written in its transaction.
#[derive(Debug, PartialEq)]
pub(crate) struct Position {
    /// The last key (JSON), or the one the batch started after if it was empty.
    pub(crate) last_key: Option<String>,
    /// Rows of all runs.
    pub(crate) rows: u64,
    /// Batches of all runs.
    pub(crate) batches: u64,
    /// Whether the job is finished.
    pub(crate) done: bool,
}

impl Position {
    /// Writes this position in the checkpoint row of job `name`, inside the
    /// batch's transaction on `conn`.
    pub(crate) fn write<C: crate::checkpoint::CheckpointConnection>(
        &self,
        conn: &mut C,
        name: &str,
    ) -> diesel::QueryResult<()> {
        let last = self.last_key.as_deref();
        conn.advance_checkpoint(name, last, self.rows, self.batches, self.done)
    }
}

/// Where a job with a checkpoint starts.
#[derive(Debug, PartialEq)]
pub(crate) enum Resume<V> {
    /// The checkpoint says the job is finished: nothing to run.
    Done,
    /// After this key, or where the bounds say.
    After(Option<StoredKey<V>>),
}

/// What marking a job done whose bounds hold no key does with its locked
/// checkpoint row.
#[derive(Debug)]
pub(crate) enum EmptyLock {
    /// Nothing: an attempt before this one marked it, and its answer was lost.
    Done,
    /// Mark the row done: write this position.
    Mark(Position),
    /// Another runner holds the job: roll back with this error, and stop with
    /// [`Error::CheckpointBusy`].
    Busy(diesel::result::Error),
    /// Roll back with this error (retried if transient).
    Failed(diesel::result::Error),
}

/// After a committed batch: where the next starts, and how long to wait
/// before it (`None`: the job is over).
#[derive(Debug, PartialEq)]
pub(crate) struct Advanced<V> {
    pub(crate) after: Option<StoredKey<V>>,
    pub(crate) wait: Option<Duration>,
}

/// The plan statements outside a batch (the checkpoint's start) count as.
const SETUP: BatchPlan = BatchPlan { batch: 1, limit: 1 };

/// The state of one write job.
pub(crate) struct WriteMachine<V> {
    engine: Engine,
    sizer: Option<BatchSizer>,
    pause: Option<Duration>,
    throttle: Option<Throttle>,
    checkpoint: Option<String>,
    /// The key's columns and Rust type, as its checkpoint stores them.
    key_type: String,
    default_retries: u32,
    report: WriteReport<V>,
    /// Where the next batch starts: the last committed key.
    after: Option<StoredKey<V>>,
    plan: BatchPlan,
    started: Instant,
    /// Where the job is (see [`step`](Self::step)).
    phase: Phase,
    /// A wait to hand out before the next step.
    wait: Option<Duration>,
    /// A new lower bound to hand out before the next step.
    seek: Option<StoredKey<V>>,
    /// The attempt at the current statement outside a batch.
    setup_attempt: u32,
    /// The checkpoint row as the job started.
    start_row: Option<Checkpoint>,
    /// The job's fingerprint, and the text it hashes.
    fingerprint: (String, String),
    /// When the current batch's first attempt started.
    batch_started: Option<Instant>,
    /// The current batch's tracing span.
    trace: Trace,
    /// The job's handle: read between batches.
    control: crate::Control,
    /// Told of each committed batch and each retry.
    observer: Option<std::sync::Arc<dyn crate::WriteObserver>>,
    /// The health signals the job reads between batches.
    signals: crate::health::Signals,
    /// When they are read, and what their readings mean.
    gate: Gate,
    /// Whether the next batch is planned (and waits only for the signals).
    planned: bool,
    /// How long the current batch waited on the signals.
    waited: Duration,
    /// The waits that held the current batch back.
    waits: Vec<crate::health::HealthWait>,
    /// [`async_commit`](crate::Chunked::async_commit).
    async_commit: bool,
}

/// Where a job is between two [`Step`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Reading (or creating) the checkpoint row.
    Start,
    /// Marking the checkpoint of a job whose bounds hold no key done.
    Empty,
    /// The checks before the first batch.
    Checks,
    /// Batches; `running` while the current one has not committed.
    Batch { running: bool },
    /// Over.
    Over,
}

/// What a write job's driver does next: one statement, one transaction, or a
/// wait (see the [module docs](self)).
#[derive(Debug, PartialEq)]
pub(crate) enum Step<V> {
    /// Read the checkpoint row, creating it if it is missing, and store the
    /// job's fingerprint in it if [`claims`](WriteMachine::claims) says so;
    /// hand the row to [`started`](WriteMachine::started). `retry`: an
    /// attempt after a failed one.
    Start { retry: bool },
    /// In a batch transaction: lock the checkpoint row, ask
    /// [`empty_locked`](WriteMachine::empty_locked) what to do, do it; hand
    /// the outcome to [`emptied`](WriteMachine::emptied).
    FinishEmpty { attempt: u32 },
    /// Run the checks before the first batch on the machine's engine
    /// ([`FirstBatch`](crate::iter::FirstBatch)), then call
    /// [`checked`](WriteMachine::checked).
    Checks,
    /// The query's batches start after this key from now on.
    Seek(StoredKey<V>),
    /// Run attempt `attempt` at batch `plan` as one transaction; hand the
    /// outcome to [`ran`](WriteMachine::ran).
    Batch { plan: BatchPlan, attempt: u32 },
    /// Read the job's health [`signals`](WriteMachine::signals), outside any
    /// transaction, and hand the outcomes to
    /// [`probed`](WriteMachine::probed).
    Probe,
    /// Sleep this long, holding no transaction and no connection.
    Wait(Duration),
    /// The job is over: [`finish`](WriteMachine::finish) is its report.
    Done,
}

/// A loaded batch, checked inside its transaction (see
/// [`WriteMachine::loaded`]).
pub(crate) struct Loaded<V> {
    /// Its last key and whether rows are left after it.
    pub(crate) checked: Checked<V>,
    /// Its key range: the scan's bounds up to its last key; `None` when the
    /// batch is empty.
    pub(crate) range: Option<Bounds<V>>,
    /// The keys of its first and last rows, `Debug`-formatted.
    keys: Option<(String, String)>,
}

impl<V: Clone + PartialEq + std::fmt::Debug> WriteMachine<V> {
    /// A job scanning `bounds` with these settings; `default_retries` is the
    /// connection source's (used unless `max_retries` is set).
    pub(crate) fn new(
        scan: ScanConfig,
        job: &WriteConfig,
        origin: KeyOrigin,
        bounds: &Bounds<V>,
        compare: fn(&V, &V) -> Option<std::cmp::Ordering>,
        key_type: String,
        default_retries: u32,
    ) -> Self {
        let sizer = job
            .target_batch_time
            .map(|t| BatchSizer::new(t, scan.batch_size, job.min_batch_size, job.max_batch_size));
        let mut scan = scan;
        if let Some(sizer) = &sizer {
            // The first batch too is within [min_batch_size, max_batch_size].
            scan.batch_size = sizer.first(scan.batch_size);
        }
        let batch_size = scan.batch_size;
        let fingerprint = crate::write::fingerprint(job.identity.as_ref(), &key_type, bounds);
        Self {
            engine: Engine::new(scan, origin, Some(bounds), compare, None),
            sizer,
            pause: job.pause,
            throttle: job.throttle.clone(),
            checkpoint: job.checkpoint.clone(),
            key_type,
            default_retries,
            report: WriteReport {
                rows: 0,
                batches: 0,
                last_key: None,
                resumed_after: None,
                total_rows: 0,
                total_batches: 0,
                done: false,
                cancelled: false,
                retries: 0,
                batch_size,
                elapsed: Duration::ZERO,
                waits: Vec::new(),
                waited: Duration::ZERO,
            },
            after: bounds.after.clone(),
            plan: SETUP,
            started: Instant::now(),
            phase: match &job.checkpoint {
                Some(_) => Phase::Start,
                None => Phase::Checks,
            },
            wait: None,
            seek: None,
            setup_attempt: 0,
            start_row: None,
            fingerprint,
            batch_started: None,
            trace: Trace::none(),
            control: job.control.clone(),
            observer: job.observer.clone(),
            gate: Gate::new(
                !job.health.is_empty(),
                job.health_interval,
                job.unreadable_limit,
            ),
            signals: crate::health::Signals::default(),
            planned: false,
            waited: Duration::ZERO,
            waits: Vec::new(),
            async_commit: job.async_commit,
        }
    }

    /// What the driver does next.
    ///
    /// A wait or a new lower bound is handed out first; then the step of the
    /// job's phase: the checkpoint row (with a checkpoint), marking it done
    /// (bounds that hold no key), the checks before the first batch, and the
    /// batches, each until it commits.
    ///
    /// Between batches (and before the first) the job's [`Control`] is read:
    /// a cancelled job is over, a paused one waits in steps of
    /// [`POLL`](crate::control::POLL), and a wait longer than that is handed
    /// out in such steps so that a cancel cuts it short. Inside a batch
    /// (its retries) the handle is not read.
    ///
    /// [`Control`]: crate::Control
    pub(crate) fn step(&mut self) -> Result<Step<V>, Error> {
        let between = !matches!(self.phase, Phase::Batch { running: true } | Phase::Over);
        if between && self.control.is_cancelled() {
            self.phase = Phase::Over;
            (self.wait, self.seek) = (None, None);
            self.report.cancelled = true;
        }
        if let Some(wait) = self.wait.take() {
            let poll = crate::control::POLL;
            if between && wait > poll {
                self.wait = Some(wait - poll);
                return Ok(Step::Wait(poll));
            }
            return Ok(Step::Wait(wait));
        }
        if let Some(key) = self.seek.take() {
            return Ok(Step::Seek(key));
        }
        if between && self.phase != Phase::Over {
            if self.control.is_paused() {
                return Ok(Step::Wait(crate::control::POLL));
            }
            if let Some(size) = self.control.take_batch_size() {
                self.engine.config.batch_size = size;
                self.report.batch_size = size;
            }
            if let Some(pause) = self.control.take_pause() {
                self.pause = Some(pause);
            }
        }
        match self.phase {
            Phase::Start => {
                self.setup_attempt += 1;
                Ok(Step::Start {
                    retry: self.setup_attempt > 1,
                })
            }
            Phase::Empty => {
                self.setup_attempt += 1;
                Ok(Step::FinishEmpty {
                    attempt: self.setup_attempt,
                })
            }
            Phase::Checks if self.bounds_empty() => {
                self.phase = Phase::Over;
                Ok(Step::Done)
            }
            Phase::Checks => Ok(Step::Checks),
            Phase::Batch { running } => {
                if !running {
                    if !self.planned {
                        if self.next_batch()?.is_none() {
                            self.phase = Phase::Over;
                            return Ok(Step::Done);
                        }
                        self.planned = true;
                    }
                    if self.gate.due(Instant::now()) {
                        return Ok(Step::Probe);
                    }
                    self.planned = false;
                    self.waited = self.gate.take_before_batch();
                    self.waits = match self.waited.is_zero() {
                        true => Vec::new(),
                        false => self.gate.closed_before(self.plan.batch),
                    };
                    self.phase = Phase::Batch { running: true };
                    self.batch_started = Some(Instant::now());
                    self.trace = Trace::write(&self.plan, &self.key_type, self.after.as_ref());
                    if !self.waits.is_empty() {
                        let reasons: Vec<String> =
                            self.waits.iter().map(|w| w.to_string()).collect();
                        self.trace.waited(self.waited, &reasons.join("; "));
                    }
                }
                let attempt = self.attempt();
                self.trace.attempt(attempt);
                Ok(Step::Batch {
                    plan: self.plan,
                    attempt,
                })
            }
            Phase::Over => Ok(Step::Done),
        }
    }

    /// The checkpoint row as [`Step::Start`] read it, or why it could not:
    /// a transient failure is tried again after a wait; a row of another job
    /// stops the job.
    pub(crate) fn started(&mut self, row: Result<Checkpoint, AttemptError>) -> Result<(), Error>
    where
        V: DeserializeOwned,
    {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                self.wait = Some(self.start_failed(self.setup_attempt, e)?);
                return Ok(());
            }
        };
        self.setup_attempt = 0;
        let name = self.checkpoint.clone().unwrap_or_default();
        let (fingerprint, identity) = self.fingerprint.clone();
        match self.resume(&name, &row, &fingerprint, &identity)? {
            Resume::Done => self.phase = Phase::Over,
            Resume::After(after) => {
                self.seek = after;
                self.phase = match self.bounds_empty() {
                    true => Phase::Empty,
                    false => Phase::Checks,
                };
                self.start_row = Some(row);
            }
        }
        Ok(())
    }

    /// The outcome of [`Step::FinishEmpty`]; `busy` when
    /// [`empty_locked`](Self::empty_locked) said [`EmptyLock::Busy`].
    pub(crate) fn emptied(
        &mut self,
        done: Result<(), AttemptError>,
        busy: bool,
    ) -> Result<(), Error> {
        match done {
            Ok(()) => self.phase = Phase::Over,
            Err(e) => self.wait = Some(self.empty_failed(self.setup_attempt, busy, e)?),
        }
        Ok(())
    }

    /// [`Step::Checks`]: what the checks before the first batch run on
    /// (`query`, its row loader `rows` and the machine's engine), and which
    /// of them to run on a backend whose
    /// [`STORED_FORMS`](crate::backend::KeysetBackend) is `stored_forms`.
    pub(crate) fn first_batch<'s, B, K, R>(
        &'s mut self,
        query: &'s mut crate::query::SeekQuery<B, K>,
        rows: &'s mut R,
        stored_forms: bool,
    ) -> (
        crate::iter::FirstBatch<'s, B, K, R>,
        crate::iter::FirstSteps,
    )
    where
        K: Key<Value = V>,
        R: crate::rows::RowType<K>,
    {
        let first = crate::iter::FirstBatch {
            query,
            rows,
            engine: &mut self.engine,
        };
        let steps = first.steps(stored_forms);
        (first, steps)
    }

    /// The checks before the first batch passed.
    pub(crate) fn checked(&mut self) {
        if self.phase == Phase::Checks {
            self.phase = Phase::Batch { running: false };
        }
    }

    /// The outcome of [`Step::Batch`]: a committed batch is counted, and the
    /// next step is the wait after it (if any) and the next batch; a failed
    /// attempt is judged by [`failed`](Self::failed).
    pub(crate) fn ran(&mut self, outcome: Result<Committed<V>, Box<Failure>>) -> Result<(), Error>
    where
        V: DeserializeOwned,
    {
        let next = match outcome {
            Ok(c) => Next::Committed(c),
            Err(f) => self.failed(*f).inspect_err(|e| self.trace.failed(e))?,
        };
        let c = match next {
            Next::Retry(delay) => {
                if let Some(observer) = &self.observer {
                    observer.on_retry(self.plan.batch, self.engine.attempts(), delay);
                }
                self.wait = Some(delay);
                return Ok(());
            }
            Next::Committed(c) => c,
        };
        let took = self
            .batch_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.trace.committed(c.n, c.written);
        let advanced = self.committed(c, took);
        self.seek = advanced.after;
        match advanced.wait {
            None => self.phase = Phase::Over,
            Some(wait) => {
                self.phase = Phase::Batch { running: false };
                if !wait.is_zero() {
                    self.wait = Some(wait);
                }
            }
        }
        Ok(())
    }

    /// The current batch's tracing span: a driver runs the batch's
    /// statements in it.
    pub(crate) fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The job's checkpoint, if it has one.
    pub(crate) fn checkpoint(&self) -> Option<&str> {
        self.checkpoint.as_deref()
    }

    /// The key's columns and Rust type, as the checkpoint stores them.
    pub(crate) fn key_type(&self) -> &str {
        &self.key_type
    }

    /// The fingerprint [`Step::Start`] stores in a row the job
    /// [`claims`](Self::claims).
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint.0
    }

    /// Checks a loaded batch of `rows` (in the statement's order, `key_of`
    /// reading a row's key) inside its transaction, and drops its look-ahead
    /// row: what the batch writes, and its key range. The batch's numbers are
    /// counted once it commits.
    pub(crate) fn loaded<K: Key<Value = V>, T>(
        &self,
        plan: &BatchPlan,
        key: &K,
        bounds: &Bounds<V>,
        rows: &mut Vec<T>,
        key_of: impl Fn(&T) -> &StoredKey<V>,
    ) -> Result<Loaded<V>, Abort> {
        let first = rows.first().map(|r| format!("{:?}", key_of(r).value));
        let checked = self
            .engine
            .check(plan, key, bounds, rows, &key_of)
            .map_err(Abort::Fail)?;
        let last = checked.last.as_ref().map(|k| format!("{:?}", k.value));
        let range = checked.last.as_ref().map(|hi| {
            let mut range = bounds.clone();
            range.until = Some(hi.clone());
            range
        });
        Ok(Loaded {
            checked,
            range,
            keys: first.zip(last),
        })
    }

    /// What a batch's transaction ends with, once its body ran: the
    /// checkpoint's position (with a checkpoint), and what the driver keeps
    /// to tell a lost `COMMIT` answer ([`Sent`]) and the batch committed.
    #[allow(clippy::type_complexity)]
    pub(crate) fn wrote(
        &self,
        batch: Loaded<V>,
        n: usize,
        written: u64,
    ) -> Result<(Option<Position>, Sent, Committed<V>), Abort>
    where
        V: Serialize,
    {
        let Loaded { checked, keys, .. } = batch;
        let position = match self.checkpoint {
            Some(_) => Some(
                self.position(checked.last.as_ref(), n, written, checked.more)
                    .map_err(Abort::Fail)?,
            ),
            None => None,
        };
        let committed = Committed {
            n,
            written,
            last: checked.last,
            more: checked.more,
        };
        Ok((position, Sent { keys }, committed))
    }

    /// The size the next batch asks for.
    pub(crate) fn batch_size(&self) -> u64 {
        self.engine.config.batch_size
    }

    /// The scan's engine: its checks of a loaded batch.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the bounds hold no key: no batch runs.
    pub(crate) fn bounds_empty(&self) -> bool {
        self.engine.end == Some(EndReason::EmptyBounds)
    }

    /// What to do after attempt `attempt` at a statement outside a batch (the
    /// checkpoint's start) failed with `e`: wait and try again, or stop.
    pub(crate) fn setup_failed(
        &mut self,
        attempt: u32,
        e: AttemptError,
    ) -> Result<Duration, Error> {
        self.engine
            .failed_at::<V>(&SETUP, attempt, self.default_retries, e, None)
    }

    /// As [`setup_failed`](Self::setup_failed), for reading (or creating) the
    /// checkpoint row: a missing or unusable checkpoint table stops the job
    /// with what is wrong with it.
    pub(crate) fn start_failed(
        &mut self,
        attempt: u32,
        e: AttemptError,
    ) -> Result<Duration, Error> {
        #[allow(irrefutable_let_patterns)] // without a pool feature, the only kind
        if let AttemptError::Query(q) = &e {
            if let Some(problem) = crate::checkpoint::table_problem(q) {
                return Err(self.engine.fail(problem));
            }
        }
        self.setup_failed(attempt, e)
    }

    /// Judges the checkpoint row as attempt `attempt` at marking a job done
    /// whose bounds hold no key locked it (`now`), against the row as the job
    /// started.
    pub(crate) fn empty_locked(
        &self,
        now: diesel::QueryResult<Option<Checkpoint>>,
        attempt: u32,
    ) -> EmptyLock {
        let Some(row) = &self.start_row else {
            return EmptyLock::Failed(diesel::result::Error::NotFound);
        };
        match now {
            // An attempt before this one committed, and its answer was lost.
            Ok(Some(now)) if attempt > 1 && now.done && now.batches == row.batches => {
                EmptyLock::Done
            }
            Ok(Some(now)) if !now.done && now.batches == row.batches => EmptyLock::Mark(Position {
                last_key: row.last_key.clone(),
                rows: row.rows,
                batches: row.batches,
                done: true,
            }),
            Ok(_) => EmptyLock::Busy(diesel::result::Error::RollbackTransaction),
            Err(e) if is_lock_conflict(&e) && attempt == 1 => EmptyLock::Busy(e),
            Err(e) => EmptyLock::Failed(e),
        }
    }

    /// What to do after attempt `attempt` at marking a job done whose bounds
    /// hold no key failed with `e` (`busy`: [`EmptyLock::Busy`]).
    pub(crate) fn empty_failed(
        &mut self,
        attempt: u32,
        busy: bool,
        e: AttemptError,
    ) -> Result<Duration, Error> {
        if busy {
            let name = self.checkpoint.clone().unwrap_or_default();
            return Err(self.engine.fail(Error::CheckpointBusy { name }));
        }
        self.setup_failed(attempt, e)
    }

    /// Whether the job stores its fingerprint in checkpoint row `row`, just
    /// read or created: a row of its key that has none (new, or made before
    /// rows had fingerprints).
    pub(crate) fn claims(&self, row: &Checkpoint) -> bool {
        row.query_fingerprint.is_none() && row.key_type == self.key_type
    }

    /// Takes the job's checkpoint row `row` of job `name`: refuses another
    /// job's (another key, or another query than `fingerprint`, which hashes
    /// `identity`), and resumes after its last key.
    pub(crate) fn resume(
        &mut self,
        name: &str,
        row: &Checkpoint,
        fingerprint: &str,
        identity: &str,
    ) -> Result<Resume<V>, Error>
    where
        V: DeserializeOwned,
    {
        let key_type = self.key_type.clone();
        if row.key_type != key_type {
            return Err(self.engine.fail(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: row.key_type.clone(),
                expected: key_type,
            }));
        }
        if row.query_fingerprint.as_deref() != Some(fingerprint) {
            // Another job's checkpoint: resuming after its last key would skip
            // rows of this one.
            let stored = row.query_fingerprint.as_deref().unwrap_or("none");
            return Err(self.engine.fail(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: format!("{} and query {stored}", row.key_type),
                expected: format!(
                    "{key_type} and query {fingerprint} ({})",
                    crate::write::shortened(&identity.replace('\n', "; "), 1000)
                ),
            }));
        }
        self.report.total_rows = row.rows;
        self.report.total_batches = row.batches;
        if row.done {
            self.report.done = true;
            return Ok(Resume::Done);
        }
        let Some(json) = &row.last_key else {
            return Ok(Resume::After(None));
        };
        let key: StoredKey<V> = serde_json::from_str(json).map_err(|e| {
            self.engine.fail(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: format!("{} (last key {json}: {e})", row.key_type),
                expected: key_type,
            })
        })?;
        self.report.resumed_after = Some(key.value.clone());
        self.report.last_key = Some(key.value.clone());
        self.after = Some(key.clone());
        Ok(Resume::After(Some(key)))
    }

    /// The next batch to run, `Ok(None)` at the end.
    pub(crate) fn next_batch(&mut self) -> Result<Option<BatchPlan>, Error> {
        let plan = self.engine.plan()?;
        if let Some(plan) = plan {
            self.plan = plan;
        }
        Ok(plan)
    }

    /// Whether each batch's `COMMIT` may return before its log is flushed
    /// ([`async_commit`](crate::Chunked::async_commit)).
    pub(crate) fn async_commit(&self) -> bool {
        self.async_commit
    }

    /// Whether the batch about to commit as `c` waits for its log after all
    /// in a job whose commits do not
    /// ([`async_commit`](crate::Chunked::async_commit)): the batch that ends
    /// the job (no rows left, or `limit_total` reached), so that a job that
    /// reports its end has every batch on disk, a flushed commit flushing
    /// the log of every commit before it.
    pub(crate) fn commits_durably(&self, c: &Committed<V>) -> bool {
        self.async_commit && self.engine.would_end(c.n, c.more)
    }

    /// The health signals a [`Step::Probe`] reads.
    pub(crate) fn signals(&self) -> &crate::health::Signals {
        &self.signals
    }

    /// The job's health signals (the gate knows from the job's settings
    /// whether it has any).
    pub(crate) fn set_signals(&mut self, signals: crate::health::Signals) {
        self.signals = signals;
    }

    /// The signals as [`Step::Probe`] read them: go on, or wait and read them
    /// again, or stop.
    pub(crate) fn probed(&mut self, outcomes: Vec<crate::health::Outcome>) -> Result<(), Error> {
        self.probed_at(outcomes, Instant::now())
    }

    /// [`probed`](Self::probed) at `now`.
    pub(crate) fn probed_at(
        &mut self,
        outcomes: Vec<crate::health::Outcome>,
        now: Instant,
    ) -> Result<(), Error> {
        if let Some(wait) = self.gate.probed(outcomes, now, self.plan.batch)? {
            self.wait = Some(wait);
        }
        Ok(())
    }

    /// Starts an attempt at the current batch: its number, from 1 (a later
    /// one is a retry).
    pub(crate) fn attempt(&mut self) -> u32 {
        self.engine.attempt()
    }

    /// The rows and batches of all runs so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.report.total_rows, self.report.total_batches)
    }

    /// Whether the batch's attempt running now is its first: a first attempt
    /// waits a while for a checkpoint row another transaction holds (see
    /// [`LockWait`]), a retry does not.
    pub(crate) fn first_attempt(&self) -> bool {
        self.engine.attempts() <= 1
    }

    /// Judges the checkpoint row of job `name` as the batch's transaction
    /// locked it (`now`), and checks that no other runner committed a batch
    /// since this one's last.
    ///
    /// On a retry, a row one batch ahead is this runner's own last attempt,
    /// which committed although its connection broke before the answer came
    /// back: the batch is taken as done ([`Abort::Committed`]), not written
    /// again. So is a row at the same batch that says the job is done: the
    /// last attempt was the job's final, empty batch, which counts no batch.
    pub(crate) fn locked(
        &self,
        name: &str,
        now: diesel::QueryResult<Option<Checkpoint>>,
    ) -> Result<(), Abort> {
        let (batches, retry) = (self.report.total_batches, self.engine.attempts() > 1);
        let busy = || {
            Abort::Fail(Error::CheckpointBusy {
                name: name.to_string(),
            })
        };
        match now {
            Ok(Some(row)) if row.batches == batches && !row.done => Ok(()),
            Ok(Some(row)) if retry && row.batches == batches + 1 => {
                Err(Abort::Committed(Box::new(row)))
            }
            Ok(Some(row)) if retry && row.batches == batches && row.done => {
                Err(Abort::Committed(Box::new(row)))
            }
            Ok(_) => Err(busy()),
            // On a retry, the lock may still be held by this runner's own attempt
            // before, whose connection died and whose transaction the server is
            // still rolling back: wait and try again, as for a broken connection.
            Err(e) if is_lock_conflict(&e) && retry => Err(Abort::Busy(e)),
            Err(e) if is_lock_conflict(&e) => Err(busy()),
            Err(e) => Err(Abort::Db(e)),
        }
    }

    /// What the checkpoint row records once the current batch commits: `n`
    /// rows loaded ending at `last`, `written` written, rows left if `more`.
    /// An empty batch keeps the position it started after.
    pub(crate) fn position(
        &self,
        last: Option<&StoredKey<V>>,
        n: usize,
        written: u64,
        more: bool,
    ) -> Result<Position, Error>
    where
        V: Serialize,
    {
        let last_key = match last.or(self.after.as_ref()) {
            Some(k) => Some(serde_json::to_string(k).map_err(|e| Error::Query {
                context: "writing the checkpoint",
                source: diesel::result::Error::SerializationError(e.into()),
            })?),
            None => None,
        };
        Ok(Position {
            last_key,
            rows: self.report.total_rows + written,
            batches: self.report.total_batches + u64::from(n > 0),
            done: !more,
        })
    }

    /// What to do after the current attempt failed as `f` says: retry after a
    /// delay, take the batch as committed, or stop with the error.
    pub(crate) fn failed(&mut self, f: Failure) -> Result<Next<V>, Error>
    where
        V: DeserializeOwned,
    {
        let (attempt, plan) = (self.engine.attempts(), self.plan);
        let may_retry = self.engine.may_retry(attempt, self.default_retries);
        match f.rollback {
            Some(Rollback::Committed(row)) => {
                return match self.adopt(*row) {
                    Ok(c) => Ok(Next::Committed(c)),
                    Err(e) => Err(self.engine.fail(e)),
                }
            }
            Some(Rollback::Fail(e)) => return Err(self.engine.fail(e)),
            Some(Rollback::User(source)) => {
                let e = self.batch_error(source);
                return Err(self.engine.fail(e));
            }
            Some(Rollback::Busy) if !may_retry => {
                let name = self.checkpoint.clone().unwrap_or_default();
                return Err(self.engine.fail(Error::CheckpointBusy { name }));
            }
            Some(Rollback::UserLost(source)) if !may_retry => {
                let e = self.batch_error(source);
                return Err(self.engine.fail(e));
            }
            Some(Rollback::Busy | Rollback::UserLost(_)) => {
                return Ok(Next::Retry(self.engine.retry(attempt)));
            }
            None => {}
        }
        // The COMMIT was sent and its answer lost: the batch may have
        // committed. Only a checkpoint can tell, on a retry (see `locked`);
        // a batch is never run again blindly.
        let e = match (f.sent, f.error) {
            (Some(sent), AttemptError::Query(source)) if connection_lost(&source) => {
                let retry = self.checkpoint.is_some() && may_retry;
                match sent.keys {
                    _ if retry => AttemptError::Query(source),
                    Some((first, last)) => {
                        let e = Error::CommitUnknown {
                            batch: plan.batch,
                            after: self.after_text(),
                            first,
                            last,
                            checkpoint: self.checkpoint.clone(),
                            source: Box::new(source),
                        };
                        return Err(self.engine.fail(e));
                    }
                    // An `async_commit` job's empty last batch carries its
                    // one flushed commit (see `commits_durably`): lost, the
                    // batches before it may not be on disk, so the job stops
                    // with the error; a run again redoes what a crash took.
                    None if self.async_commit => AttemptError::Query(source),
                    // An empty batch wrote no row (only, with a checkpoint,
                    // that the job is done): whether it committed or not, no
                    // row is left.
                    None => {
                        return Ok(Next::Committed(Committed {
                            n: 0,
                            written: 0,
                            last: None,
                            more: false,
                        }))
                    }
                }
            }
            (_, e) => e,
        };
        let after = self.after.as_ref();
        let delay = self.engine.failed(&plan, self.default_retries, e, after)?;
        Ok(Next::Retry(delay))
    }

    /// Counts the current batch, committed as `c` in `took`: where the next
    /// starts, and how long to wait before it (`None`: the job is over).
    pub(crate) fn committed(&mut self, c: Committed<V>, took: Duration) -> Advanced<V> {
        let next = self.engine.count(&self.plan, c.n, c.last, c.more);
        let report = &mut self.report;
        if c.n > 0 {
            report.batches += 1;
            report.total_batches += 1;
        }
        report.rows += c.written;
        report.total_rows += c.written;
        if let Some(k) = &next {
            report.last_key = Some(k.value.clone());
            self.after = Some(k.clone());
        }
        if !c.more {
            report.done = true;
        }
        let over = self.engine.is_done();
        if let (Some(sizer), false) = (self.sizer.as_mut(), over) {
            let size = sizer.next(self.engine.config.batch_size, c.n as u64, took);
            self.engine.config.batch_size = size;
            self.report.batch_size = size;
        }
        let stats = BatchStats {
            batch: self.plan.batch,
            rows: c.written,
            duration: took,
            total_rows: self.report.rows,
            elapsed: self.started.elapsed(),
            next_batch_size: self.engine.config.batch_size,
            waited: self.waited,
            waits: self.waits.clone(),
        };
        if c.n > 0 {
            if let Some(observer) = &self.observer {
                observer.on_batch(&stats);
            }
        }
        if over {
            return Advanced {
                after: next,
                wait: None,
            };
        }
        let asked = self.throttle.as_ref().and_then(|t| t(&stats));
        Advanced {
            after: next,
            wait: Some(wait_after(self.pause, asked)),
        }
    }

    /// The job's report.
    pub(crate) fn finish(mut self) -> WriteReport<V> {
        self.gate.close_all(Instant::now(), self.plan.batch);
        self.report.waits = std::mem::take(&mut self.gate.closed);
        self.report.waited = self.gate.total();
        if self.bounds_empty() {
            self.report.done = true;
        }
        self.report.retries = self.engine.retries;
        self.report.elapsed = self.started.elapsed();
        self.report
    }

    /// The batch a retry found committed by the attempt before it, as the
    /// checkpoint row records it.
    fn adopt(&self, row: Checkpoint) -> Result<Committed<V>, Error>
    where
        V: DeserializeOwned,
    {
        let (total_rows, total_batches) = self.totals();
        let last = match &row.last_key {
            Some(json) => Some(serde_json::from_str::<StoredKey<V>>(json).map_err(|e| {
                Error::CheckpointMismatch {
                    name: row.name.clone(),
                    stored: format!("{} (last key {json}: {e})", row.key_type),
                    expected: self.key_type.clone(),
                }
            })?),
            None => None,
        };
        let written = row.rows.saturating_sub(total_rows);
        // A batch of rows counts as one even if it wrote none (rows changed by
        // others between its read and its write), as the checkpoint counts it.
        let n = if row.batches > total_batches {
            written.max(1)
        } else {
            0
        };
        Ok(Committed {
            n: usize::try_from(n).unwrap_or(usize::MAX),
            written,
            last,
            more: !row.done,
        })
    }

    /// The last committed key, `Debug`-formatted, for an error.
    fn after_text(&self) -> Option<String> {
        self.after.as_ref().map(|k| format!("{:?}", k.value))
    }

    /// The error of the current batch whose closure failed with `source`.
    fn batch_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
        Error::Batch {
            batch: self.plan.batch,
            last_committed: self.after_text(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    use std::sync::{Arc, Mutex};

    const KEY_TYPE: &str = "t.id as i64";

    fn scan(batch_size: u64, limit_total: Option<u64>, max_retries: Option<u32>) -> ScanConfig {
        ScanConfig {
            batch_size,
            limit_total,
            max_retries,
            cache_statements: false,
            allow_sort: false,
            prefetch: 0,
        }
    }

    fn key(v: i64) -> StoredKey<i64> {
        StoredKey::new(v, None)
    }

    fn bounds(after: Option<i64>) -> Bounds<i64> {
        Bounds {
            after: after.map(key),
            until: None,
            lower: None,
            upper: None,
            desc: false,
            probe: false,
            cache: false,
            only: None,
        }
    }

    /// A machine whose bounds start after `after`, on a source that retries
    /// `default_retries` times (a pool: 3; a lent connection: 0).
    fn machine(
        scan: ScanConfig,
        job: &WriteConfig,
        after: Option<i64>,
        default_retries: u32,
    ) -> WriteMachine<i64> {
        let compare = |a: &i64, b: &i64| a.partial_cmp(b);
        let bounds = bounds(after);
        let key_type = KEY_TYPE.to_string();
        let origin = KeyOrigin::Rows;
        WriteMachine::new(
            scan,
            job,
            origin,
            &bounds,
            compare,
            key_type,
            default_retries,
        )
    }

    fn with_checkpoint() -> WriteConfig {
        WriteConfig {
            checkpoint: Some("job".into()),
            ..WriteConfig::default()
        }
    }

    fn lost() -> DieselError {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection unexpectedly".to_string()),
        )
    }

    fn lock_conflict() -> DieselError {
        DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("could not obtain lock on row in relation".to_string()),
        )
    }

    /// An attempt whose statements failed with `e`, before its COMMIT.
    fn failed_with(e: DieselError) -> Failure {
        Failure {
            error: AttemptError::Query(e),
            rollback: None,
            sent: None,
        }
    }

    /// An attempt whose COMMIT was sent for keys `keys`, and whose answer was
    /// lost with the connection.
    fn commit_lost(keys: Option<(&str, &str)>) -> Failure {
        Failure {
            error: AttemptError::Query(lost()),
            rollback: None,
            sent: Some(Sent {
                keys: keys.map(|(a, b)| (a.to_string(), b.to_string())),
            }),
        }
    }

    /// An attempt whose transaction body stopped with `abort`, as the driver
    /// hands it on.
    fn aborted(abort: Abort) -> Failure {
        let (e, rollback) = abort.split();
        Failure {
            error: AttemptError::Query(e),
            rollback,
            sent: None,
        }
    }

    fn row(rows: u64, batches: u64, last: Option<i64>, done: bool) -> Checkpoint {
        Checkpoint {
            name: "job".into(),
            key_type: KEY_TYPE.into(),
            last_key: last.map(|k| serde_json::to_string(&key(k)).unwrap()),
            rows,
            batches,
            done,
            updated_at: String::new(),
            query_fingerprint: Some("fp".into()),
        }
    }

    fn batch(n: usize, last: Option<i64>, more: bool) -> Committed<i64> {
        Committed {
            n,
            written: n as u64,
            last: last.map(key),
            more,
        }
    }

    fn retry_delay(next: Result<Next<i64>, Error>) -> Duration {
        match next {
            Ok(Next::Retry(d)) => d,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn transient_failures_are_retried_with_back_off_up_to_the_cap() {
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), Some(0), 3);
        let plan = m.next_batch().unwrap().unwrap();
        assert_eq!((plan.batch, plan.limit, plan.fetch()), (1, 10, 11));
        // The back-off doubles (each wait is between half its ceiling and it).
        for (attempt, ceiling) in [(1, 5), (2, 10), (3, 20)] {
            assert_eq!(m.attempt(), attempt);
            let d = retry_delay(m.failed(failed_with(lost())));
            assert!(d >= ms(ceiling) / 2 && d <= ms(ceiling), "{d:?}");
        }
        assert_eq!(m.attempt(), 4);
        match m.failed(failed_with(lost())) {
            Err(Error::Database {
                batch: 1,
                attempts: 4,
                last_key: Some(after),
                ..
            }) => assert!(after.contains('0'), "{after}"),
            other => panic!("{other:?}"),
        }
        assert!(m.engine().is_done());
        assert_eq!(m.engine().queries, 4);
        assert_eq!(m.finish().retries, 3);

        // `max_retries` overrides the source's default.
        let mut m = machine(scan(10, None, Some(1)), &WriteConfig::default(), None, 3);
        m.next_batch().unwrap();
        m.attempt();
        retry_delay(m.failed(failed_with(lost())));
        m.attempt();
        assert!(matches!(
            m.failed(failed_with(lost())),
            Err(Error::Database { attempts: 2, .. })
        ));

        // A lent connection is not retried; an error of the query never is.
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), None, 0);
        m.next_batch().unwrap();
        m.attempt();
        assert!(matches!(
            m.failed(failed_with(lost())),
            Err(Error::Database { attempts: 1, .. })
        ));
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), None, 3);
        m.next_batch().unwrap();
        m.attempt();
        assert!(matches!(
            m.failed(failed_with(DieselError::NotFound)),
            Err(Error::Database {
                attempts: 1,
                last_key: None,
                source: DieselError::NotFound,
                ..
            })
        ));
        assert_eq!(m.finish().retries, 0);
    }

    #[test]
    fn a_lost_commit_without_a_checkpoint_is_commit_unknown() {
        // Even on a pool with retries left: the batch is never run again blindly.
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), Some(20), 3);
        m.next_batch().unwrap();
        m.attempt();
        match m.failed(commit_lost(Some(("21", "30")))) {
            Err(e @ Error::CommitUnknown { .. }) => {
                assert!(
                    e.to_string().starts_with("batch 1 may have committed"),
                    "{e}"
                );
                let Error::CommitUnknown {
                    batch,
                    after,
                    first,
                    last,
                    checkpoint,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(batch, 1);
                assert_eq!(after.as_deref(), Some("20"));
                assert_eq!((first.as_str(), last.as_str()), ("21", "30"));
                assert_eq!(checkpoint, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.finish().retries, 0);

        // An empty final batch wrote nothing: committed or not, the job is done.
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), None, 0);
        m.next_batch().unwrap();
        m.attempt();
        let next = m.failed(commit_lost(None)).unwrap();
        assert_eq!(next, Next::Committed(batch(0, None, false)));
        let Next::Committed(c) = next else {
            unreachable!()
        };
        assert_eq!(m.committed(c, ms(1)).wait, None);
        let report = m.finish();
        assert!(report.done);
        assert_eq!((report.rows, report.batches), (0, 0));

        // Not with `async_commit`: that batch's COMMIT was the job's one
        // flushed commit, so without a retry left the job stops with the error.
        let relaxed = WriteConfig {
            async_commit: true,
            ..with_checkpoint()
        };
        let mut m = machine(scan(10, None, None), &relaxed, None, 0);
        m.next_batch().unwrap();
        m.attempt();
        match m.failed(commit_lost(None)) {
            Err(Error::Database { attempts: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(!m.finish().done);
        // With a retry left it is retried, as any lost COMMIT of a
        // checkpointed job, and the checkpoint row tells.
        let mut m = machine(scan(10, None, None), &relaxed, None, 3);
        m.next_batch().unwrap();
        m.attempt();
        retry_delay(m.failed(commit_lost(None)));
    }

    #[test]
    fn a_lost_commit_with_a_checkpoint_adopts_the_batch_the_checkpoint_records() {
        let job = with_checkpoint();
        let mut m = machine(scan(10, None, None), &job, None, 3);
        // Two batches (10 rows, up to key 5) committed in earlier runs.
        let resumed = m.resume("job", &row(10, 2, Some(5), false), "fp", "id");
        assert_eq!(resumed.unwrap(), Resume::After(Some(key(5))));
        assert_eq!(m.totals(), (10, 2));
        m.next_batch().unwrap();
        // The first attempt: the row is where this run left it.
        assert_eq!(m.attempt(), 1);
        assert!(m
            .locked("job", Ok(Some(row(10, 2, Some(5), false))))
            .is_ok());
        let at = m.position(Some(&key(8)), 3, 3, true).unwrap();
        let stored = serde_json::to_string(&key(8)).unwrap();
        assert_eq!(
            at,
            Position {
                last_key: Some(stored),
                rows: 13,
                batches: 3,
                done: false
            }
        );
        // Its COMMIT's answer is lost: retried, since the checkpoint can tell.
        retry_delay(m.failed(commit_lost(Some(("6", "8")))));
        // The retry finds the row one batch ahead: that attempt committed.
        assert_eq!(m.attempt(), 2);
        let lock = m.locked("job", Ok(Some(row(13, 3, Some(8), false))));
        let Err(abort) = lock else {
            panic!("the batch was committed")
        };
        let next = m.failed(aborted(abort)).unwrap();
        assert_eq!(next, Next::Committed(batch(3, Some(8), true)));
        let Next::Committed(c) = next else {
            unreachable!()
        };
        let advanced = m.committed(c, ms(1));
        assert_eq!(advanced.after, Some(key(8)));
        assert_eq!(advanced.wait, Some(Duration::ZERO));
        // The next batch starts after 8, counted from there.
        let plan = m.next_batch().unwrap().unwrap();
        assert_eq!(plan.batch, 2);
        assert_eq!(m.attempt(), 1);
        assert!(m
            .locked("job", Ok(Some(row(13, 3, Some(8), false))))
            .is_ok());
        let report = m.finish();
        assert_eq!(
            (
                report.rows,
                report.batches,
                report.total_rows,
                report.total_batches
            ),
            (3, 1, 13, 3)
        );
        assert_eq!(
            (report.last_key, report.resumed_after, report.retries),
            (Some(8), Some(5), 1)
        );

        // A retry that finds the job's final, empty batch committed.
        let mut m = machine(scan(10, None, None), &job, None, 3);
        m.resume("job", &row(10, 2, Some(5), false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        m.attempt();
        retry_delay(m.failed(commit_lost(None)));
        m.attempt();
        let Err(abort) = m.locked("job", Ok(Some(row(10, 2, Some(5), true)))) else {
            panic!("the batch was committed")
        };
        assert_eq!(
            m.failed(aborted(abort)).unwrap(),
            Next::Committed(batch(0, Some(5), false))
        );

        // No retries left: the checkpoint cannot tell.
        let mut m = machine(scan(10, None, None), &job, None, 0);
        m.next_batch().unwrap();
        m.attempt();
        assert!(matches!(
            m.failed(commit_lost(Some(("1", "10")))),
            Err(Error::CommitUnknown { checkpoint: Some(name), .. }) if name == "job"
        ));
    }

    #[test]
    fn a_moved_checkpoint_is_another_runner() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.resume("job", &row(10, 2, Some(5), false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        // On a first attempt, a row ahead is another runner's batch.
        m.attempt();
        let abort = m.locked("job", Ok(Some(row(13, 3, Some(8), false))));
        let Err(abort) = abort else { panic!() };
        match m.failed(aborted(abort)) {
            Err(e @ Error::CheckpointBusy { .. }) => {
                assert!(e
                    .to_string()
                    .starts_with("job \"job\" is being run by another process"))
            }
            other => panic!("{other:?}"),
        }
        // A row two batches ahead, or gone, is too, also on a retry.
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.resume("job", &row(10, 2, Some(5), false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        m.attempt();
        m.attempt();
        for now in [Some(row(20, 4, Some(9), false)), None] {
            let Err(abort) = m.locked("job", Ok(now)) else {
                panic!()
            };
            assert!(matches!(
                m.failed(aborted(abort)),
                Err(Error::CheckpointBusy { .. })
            ));
        }
    }

    #[test]
    fn a_busy_checkpoint_row_on_a_retry_is_retried_then_checkpoint_busy() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.resume("job", &row(0, 0, None, false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        // Locked on the first attempt: another runner holds the job.
        m.attempt();
        let Err(abort) = m.locked("job", Err(lock_conflict())) else {
            panic!()
        };
        assert!(matches!(
            m.failed(aborted(abort)),
            Err(Error::CheckpointBusy { name }) if name == "job"
        ));

        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.resume("job", &row(0, 0, None, false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        m.attempt();
        retry_delay(m.failed(failed_with(lost())));
        // On a retry, the lock may be the broken attempt's, still rolling back.
        for attempt in 2..=3 {
            assert_eq!(m.attempt(), attempt);
            let Err(abort) = m.locked("job", Err(lock_conflict())) else {
                panic!()
            };
            let ceiling = ms(5 << (attempt - 1));
            let d = retry_delay(m.failed(aborted(abort)));
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?}");
        }
        assert_eq!(m.attempt(), 4);
        let Err(abort) = m.locked("job", Err(lock_conflict())) else {
            panic!()
        };
        assert!(matches!(
            m.failed(aborted(abort)),
            Err(Error::CheckpointBusy { name }) if name == "job"
        ));
        assert_eq!(m.finish().retries, 3);
    }

    /// A first attempt that finds the checkpoint row held begins its
    /// transaction again after growing delays; a row it could lock, another
    /// error, or a retry goes on to `locked` at once.
    #[test]
    fn an_async_commit_job_commits_the_batch_that_ends_it_durably() {
        let relaxed = WriteConfig {
            async_commit: true,
            ..with_checkpoint()
        };
        let mut m = machine(scan(10, None, None), &relaxed, None, 3);
        m.next_batch().unwrap().unwrap();
        // rows left after it: relaxed
        assert!(!m.commits_durably(&batch(10, Some(10), true)));
        // the last batch, full or not, and an empty last batch: durable
        assert!(m.commits_durably(&batch(10, Some(10), false)));
        assert!(m.commits_durably(&batch(3, Some(3), false)));
        assert!(m.commits_durably(&batch(0, None, false)));

        // `limit_total` 25: the third batch reaches it, rows left or not.
        let mut m = machine(scan(10, Some(25), None), &relaxed, None, 3);
        for last in [10, 20] {
            m.next_batch().unwrap().unwrap();
            assert!(!m.commits_durably(&batch(10, Some(last), true)));
            m.committed(batch(10, Some(last), true), ms(1));
        }
        let plan = m.next_batch().unwrap().unwrap();
        assert_eq!(plan.limit, 5);
        assert!(m.commits_durably(&batch(5, Some(25), true)));
        assert!(m.commits_durably(&batch(4, Some(24), false)));

        // Without `async_commit` every commit waits anyway: nothing to undo.
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.next_batch().unwrap().unwrap();
        assert!(!m.commits_durably(&batch(10, Some(10), false)));
    }

    #[test]
    fn a_first_attempt_waits_for_a_held_row_and_a_retry_does_not() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        m.resume("job", &row(0, 0, None, false), "fp", "id")
            .unwrap();
        m.next_batch().unwrap();
        assert_eq!(m.attempt(), 1);
        let mut waiting = LockWait::new();
        let held: diesel::QueryResult<Option<Checkpoint>> = Err(lock_conflict());
        let mut delays = Vec::new();
        for _ in 0..4 {
            delays.push(waiting.again(&m, &held).expect("a held row is waited for"));
        }
        for (i, d) in delays.iter().enumerate() {
            let ceiling = ms(5 << i);
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{i}: {d:?}");
        }
        let free: diesel::QueryResult<Option<Checkpoint>> = Ok(Some(row(0, 0, None, false)));
        assert_eq!(waiting.again(&m, &free), None);
        let other: diesel::QueryResult<Option<Checkpoint>> = Err(lost());
        assert_eq!(waiting.again(&m, &other), None);
        // Past LOCK_WAIT the row is taken as held by a live runner.
        let mut late = LockWait {
            started: Instant::now() - LOCK_WAIT,
            tries: 0,
        };
        assert_eq!(late.again(&m, &held), None);
        assert!(matches!(
            m.locked("job", held),
            Err(Abort::Fail(Error::CheckpointBusy { .. }))
        ));

        // A retry: the machine's own delays, not these.
        m.attempt();
        let mut waiting = LockWait::new();
        assert_eq!(waiting.again(&m, &Err::<(), _>(lock_conflict())), None);
    }

    #[derive(Debug)]
    struct Wrapped(DieselError);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_closure_error_stops_the_job_unless_it_is_a_lost_connection() {
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), Some(7), 3);
        m.next_batch().unwrap();
        m.attempt();
        let f = aborted(Abort::User("no such customer".into()));
        assert!(matches!(
            f.error,
            AttemptError::Query(DieselError::RollbackTransaction)
        ));
        match m.failed(f) {
            Err(e @ Error::Batch { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "batch 1 failed and was rolled back (last committed key 7): \
                     no such customer"
                );
            }
            other => panic!("{other:?}"),
        }

        // Its connection broke: the pool is told so, and the batch retried.
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), Some(7), 1);
        m.next_batch().unwrap();
        m.attempt();
        let f = aborted(Abort::User(Box::new(Wrapped(lost()))));
        let AttemptError::Query(e) = &f.error else {
            panic!()
        };
        assert!(connection_lost(e));
        retry_delay(m.failed(f));
        m.attempt();
        let f = aborted(Abort::User(Box::new(Wrapped(lost()))));
        match m.failed(f) {
            Err(Error::Batch {
                batch: 1,
                last_committed,
                source,
            }) => {
                assert_eq!(last_committed.as_deref(), Some("7"));
                assert_eq!(source.to_string(), "wrapped");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.finish().retries, 1);
    }

    #[test]
    fn an_error_of_the_batch_stops_the_job_without_a_retry() {
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), None, 3);
        m.next_batch().unwrap();
        m.attempt();
        let e = Error::KeyMayMove {
            columns: "t.id".into(),
            reason: "generated".into(),
        };
        assert!(matches!(
            m.failed(aborted(Abort::Fail(e))),
            Err(Error::KeyMayMove { .. })
        ));
        assert!(m.engine().is_done());
        assert!(m.next_batch().unwrap().is_none());
    }

    #[test]
    fn an_empty_batch_ends_the_job() {
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), None, 0);
        m.next_batch().unwrap();
        m.attempt();
        // Nothing to record but the start position: none.
        let at = m.position(None, 0, 0, false).unwrap();
        assert_eq!((at.last_key, at.batches, at.done), (None, 0, true));
        let advanced = m.committed(batch(0, None, false), ms(1));
        assert_eq!(
            advanced,
            Advanced {
                after: None,
                wait: None
            }
        );
        assert!(m.next_batch().unwrap().is_none());
        let report = m.finish();
        assert!(report.done);
        assert_eq!((report.rows, report.batches, report.last_key), (0, 0, None));

        // A batch of rows with none after it ends it too.
        let mut m = machine(scan(10, None, None), &WriteConfig::default(), Some(2), 0);
        m.next_batch().unwrap();
        m.attempt();
        assert_eq!(m.committed(batch(4, Some(6), false), ms(1)).wait, None);
        let report = m.finish();
        assert!(report.done);
        assert_eq!(
            (report.rows, report.batches, report.last_key),
            (4, 1, Some(6))
        );

        // An empty batch keeps the position it started after.
        let m = machine(scan(10, None, None), &WriteConfig::default(), Some(2), 0);
        let at = m.position(None, 0, 0, false).unwrap();
        assert_eq!(at.last_key, Some(serde_json::to_string(&key(2)).unwrap()));
    }

    #[test]
    fn bounds_that_hold_no_key_end_the_job_before_any_batch() {
        let compare = |a: &i64, b: &i64| a.partial_cmp(b);
        let mut b = bounds(Some(5));
        b.until = Some(key(5));
        let job = WriteConfig::default();
        let mut m = WriteMachine::new(
            scan(10, None, None),
            &job,
            KeyOrigin::Rows,
            &b,
            compare,
            KEY_TYPE.into(),
            0,
        );
        assert!(m.bounds_empty());
        assert!(m.next_batch().unwrap().is_none());
        assert!(m.finish().done);
    }

    #[test]
    fn limit_total_caps_the_last_batch_and_the_job() {
        let mut m = machine(scan(10, Some(15), None), &WriteConfig::default(), None, 0);
        let plan = m.next_batch().unwrap().unwrap();
        assert_eq!(plan.limit, 10);
        m.attempt();
        assert!(m.committed(batch(10, Some(10), true), ms(1)).wait.is_some());
        let plan = m.next_batch().unwrap().unwrap();
        assert_eq!((plan.batch, plan.limit), (2, 5));
        m.attempt();
        let advanced = m.committed(batch(5, Some(15), true), ms(1));
        assert_eq!(
            advanced,
            Advanced {
                after: Some(key(15)),
                wait: None
            }
        );
        assert!(m.next_batch().unwrap().is_none());
        let report = m.finish();
        // Rows are left: the job is not done, only this run.
        assert!(!report.done);
        assert_eq!(
            (report.rows, report.batches, report.last_key),
            (15, 2, Some(15))
        );
    }

    #[test]
    fn batches_are_sized_toward_the_target_time_within_min_and_max() {
        let sized = |batch_size, min, max| {
            let job = WriteConfig {
                target_batch_time: Some(ms(100)),
                min_batch_size: min,
                max_batch_size: max,
                ..WriteConfig::default()
            };
            machine(scan(batch_size, None, None), &job, None, 0)
        };
        // The first batch is within [min, max] too.
        let mut m = sized(1000, None, Some(10));
        assert_eq!(m.batch_size(), 10);
        assert_eq!(m.next_batch().unwrap().unwrap().limit, 10);
        assert_eq!(m.finish().batch_size, 10);
        let mut m = sized(5, Some(40), None);
        assert_eq!(m.next_batch().unwrap().unwrap().limit, 40);
        // Sizes a scan refuses stay refused.
        let mut m = sized(0, Some(40), None);
        assert!(matches!(
            m.next_batch(),
            Err(Error::InvalidBatchSize { batch_size: 0 })
        ));

        // Fast batches grow by 1.2× at most, up to the max; a slow one halves,
        // down to the min.
        let mut m = sized(1000, Some(700), Some(1300));
        let mut sizes = vec![];
        for (n, took) in [(1000, 10), (1200, 10), (1300, 10_000), (700, 10_000)] {
            let plan = m.next_batch().unwrap().unwrap();
            assert_eq!(plan.limit, n as i64);
            m.attempt();
            let last = Some(plan.batch as i64 * 10_000);
            m.committed(batch(n, last, true), ms(took));
            sizes.push(m.batch_size());
        }
        assert_eq!(sizes, [1200, 1300, 700, 700]);
        assert_eq!(m.finish().batch_size, 700);

        // Without a target, the size stays.
        let mut m = machine(scan(100, None, None), &WriteConfig::default(), None, 0);
        m.next_batch().unwrap();
        m.attempt();
        m.committed(batch(100, Some(100), true), ms(10_000));
        assert_eq!(m.batch_size(), 100);
    }

    #[test]
    fn pause_and_throttle_waits_add_up_saturating() {
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        let job = WriteConfig {
            pause: Some(ms(5)),
            throttle: Some(Arc::new(move |s: &BatchStats| {
                log.lock().unwrap().push(s.clone());
                Some(ms(7))
            })),
            ..WriteConfig::default()
        };
        let mut m = machine(scan(10, None, None), &job, None, 0);
        m.next_batch().unwrap();
        m.attempt();
        assert_eq!(
            m.committed(batch(10, Some(10), true), ms(3)).wait,
            Some(ms(12))
        );
        // No wait after the last batch, and the throttle is not asked.
        m.next_batch().unwrap();
        m.attempt();
        assert_eq!(m.committed(batch(4, Some(14), false), ms(3)).wait, None);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(
            (s.batch, s.rows, s.duration, s.total_rows, s.next_batch_size),
            (1, 10, ms(3), 10, 10)
        );

        let saturating = |pause, asked| {
            let job = WriteConfig {
                pause,
                throttle: Some(Arc::new(move |_: &BatchStats| asked)),
                ..WriteConfig::default()
            };
            let mut m = machine(scan(10, None, None), &job, None, 0);
            m.next_batch().unwrap();
            m.attempt();
            m.committed(batch(10, Some(10), true), ms(1)).wait
        };
        let max = Duration::MAX;
        assert_eq!(saturating(Some(max), Some(ms(1000))), Some(max));
        assert_eq!(saturating(Some(max), Some(max)), Some(max));
        assert_eq!(saturating(None, Some(max)), Some(max));
        assert_eq!(saturating(None, None), Some(Duration::ZERO));
    }

    #[test]
    fn a_checkpoint_of_another_job_is_refused_and_a_finished_one_runs_nothing() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        let mut new = row(0, 0, None, false);
        assert!(!m.claims(&new));
        new.query_fingerprint = None;
        assert!(m.claims(&new));
        new.key_type = "t.id as i32".into();
        assert!(!m.claims(&new));
        let mut other_key = row(0, 0, None, false);
        other_key.key_type = "t.id as i32".into();
        match m.resume("job", &other_key, "fp", "id") {
            Err(e @ Error::CheckpointMismatch { .. }) => assert_eq!(
                e.to_string(),
                "job \"job\" has a checkpoint of key t.id as i32, not t.id as i64; use another \
                 job name, or checkpoint::reset the job to start it over"
            ),
            other => panic!("{other:?}"),
        }
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        match m.resume("job", &row(0, 0, None, false), "fp2", "update_all\nSET x") {
            Err(Error::CheckpointMismatch {
                stored, expected, ..
            }) => {
                assert_eq!(stored, "t.id as i64 and query fp");
                assert_eq!(expected, "t.id as i64 and query fp2 (update_all; SET x)");
            }
            other => panic!("{other:?}"),
        }
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        let mut bad = row(0, 0, None, false);
        bad.last_key = Some("\"x\"".into());
        assert!(matches!(
            m.resume("job", &bad, "fp", "id"),
            Err(Error::CheckpointMismatch { .. })
        ));

        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        let resumed = m.resume("job", &row(30, 3, Some(9), true), "fp", "id");
        assert_eq!(resumed.unwrap(), Resume::Done);
        let report = m.finish();
        assert!(report.done);
        assert_eq!(
            (report.total_rows, report.total_batches, report.rows),
            (30, 3, 0)
        );
    }

    #[test]
    fn a_job_with_empty_bounds_marks_its_checkpoint_done_once() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 3);
        let start = row(10, 2, Some(5), false);
        m.start_row = Some(start.clone());
        let is = |lock: EmptyLock, want: &str| {
            let got = format!("{lock:?}");
            assert!(got.starts_with(want), "{got}");
        };
        is(m.empty_locked(Ok(Some(start.clone())), 1), "Mark");
        // On a retry, a row already done is the attempt before's.
        let mut done = start.clone();
        done.done = true;
        is(m.empty_locked(Ok(Some(done.clone())), 2), "Done");
        // On a first attempt it is another runner's; so is a row moved on.
        is(m.empty_locked(Ok(Some(done)), 1), "Busy");
        is(
            m.empty_locked(Ok(Some(row(13, 3, Some(8), false))), 2),
            "Busy",
        );
        is(m.empty_locked(Ok(None), 1), "Busy");
        is(m.empty_locked(Err(lock_conflict()), 1), "Busy");
        is(m.empty_locked(Err(lost()), 1), "Failed");
        // A lost connection is retried; a busy row stops the job.
        let d = m.empty_failed(1, false, AttemptError::Query(lost()));
        assert!(d.unwrap() <= ms(5));
        let busy = AttemptError::Query(lock_conflict());
        assert!(matches!(
            m.empty_failed(1, true, busy),
            Err(Error::CheckpointBusy { name }) if name == "job"
        ));
    }

    #[test]
    fn the_checkpoint_start_is_retried_as_a_batch_is() {
        let mut m = machine(scan(10, None, None), &with_checkpoint(), None, 1);
        let d = m.start_failed(1, AttemptError::Query(lost())).unwrap();
        assert!(d <= ms(5));
        assert!(matches!(
            m.start_failed(2, AttemptError::Query(lost())),
            Err(Error::Database { attempts: 2, .. })
        ));
    }

    #[test]
    fn the_first_batch_is_within_min_and_max() {
        let s = Duration::from_secs(1);
        assert_eq!(BatchSizer::new(s, 1000, None, Some(10)).first(1000), 10);
        assert_eq!(BatchSizer::new(s, 5, Some(40), None).first(5), 40);
        assert_eq!(
            BatchSizer::new(s, 100, Some(10), Some(1000)).first(100),
            100
        );
        // min above max: the min wins, as for every later batch
        assert_eq!(BatchSizer::new(s, 100, Some(50), Some(20)).first(100), 50);
        // sizes a scan refuses stay refused
        assert_eq!(BatchSizer::new(s, 0, None, Some(10)).first(0), 0);
        let huge = u64::MAX;
        assert_eq!(BatchSizer::new(s, huge, None, None).first(huge), huge);
        // the default max (10 × the start) stays a valid LIMIT
        let big = crate::engine::MAX_BATCH_SIZE;
        let mut sizer = BatchSizer::new(s, big, None, None);
        assert_eq!(sizer.next(big, big, Duration::from_nanos(1)), big);
    }

    #[test]
    fn waits_saturate() {
        let max = Duration::MAX;
        assert_eq!(wait_after(Some(max), Some(Duration::from_secs(1))), max);
        assert_eq!(wait_after(Some(max), Some(max)), max);
        assert_eq!(wait_after(None, Some(max)), max);
        assert_eq!(wait_after(None, None), Duration::ZERO);
        let ms = Duration::from_millis;
        assert_eq!(wait_after(Some(ms(5)), Some(ms(7))), ms(12));
    }

    #[test]
    fn batch_size_grows_slowly_and_shrinks_fast() {
        let ms = Duration::from_millis;
        let mut s = BatchSizer::new(ms(100), 1000, None, Some(5000));
        // 10 ms for 1000 rows: far under target, grow by at most 1.2×
        assert_eq!(s.next(1000, 1000, ms(10)), 1200);
        assert_eq!(s.next(1200, 1200, ms(12)), 1440);
        // suddenly 10× slower per row: shrink at most by half
        let mut s = BatchSizer::new(ms(100), 1000, None, None);
        assert_eq!(s.next(1000, 1000, ms(1000)), 500);
        // on target: stay
        let mut s = BatchSizer::new(ms(100), 1000, None, None);
        assert_eq!(s.next(1000, 1000, ms(100)), 1000);
        // bounds apply
        let mut s = BatchSizer::new(ms(100), 1000, Some(800), Some(1100));
        assert_eq!(s.next(1000, 1000, ms(10)), 1100);
        assert_eq!(s.next(1000, 1000, ms(10_000)), 800);
        // smoothing: one fast batch after slow ones does not jump to the ideal
        let mut s = BatchSizer::new(ms(100), 1000, None, None);
        assert_eq!(s.next(1000, 1000, ms(200)), 500);
        assert_eq!(s.next(500, 500, ms(10)), 600); // per row (0.2 + 0.02) / 2 ms
    }

    // A whole job driven through its steps with scripted outcomes: what the
    // drivers see, without a database.

    diesel::table! {
        t (id) {
            id -> BigInt,
        }
    }

    /// A machine of job `job` over all keys, in batches of `batch_size`.
    fn stepped(job: &WriteConfig, batch_size: u64, default_retries: u32) -> WriteMachine<i64> {
        machine(scan(batch_size, None, None), job, None, default_retries)
    }

    /// A checkpoint row of the job of `m`, with its fingerprint.
    fn own_row(
        m: &WriteMachine<i64>,
        rows: u64,
        batches: u64,
        last: Option<i64>,
        done: bool,
    ) -> Checkpoint {
        Checkpoint {
            query_fingerprint: Some(m.fingerprint().to_string()),
            ..row(rows, batches, last, done)
        }
    }

    /// Runs the body of a batch's transaction as a driver does, on `keys`
    /// loaded (the plan's look-ahead row included): what it commits.
    fn body(
        m: &WriteMachine<i64>,
        plan: &BatchPlan,
        after: Option<i64>,
        keys: &[i64],
    ) -> Result<(Option<Position>, Sent, Committed<i64>), Abort> {
        let bounds = bounds(after);
        let mut rows: Vec<StoredKey<i64>> = keys.iter().map(|&k| key(k)).collect();
        let batch = m.loaded(plan, &crate::key::Single(t::id), &bounds, &mut rows, |r| r)?;
        let n = rows.len();
        m.wrote(batch, n, n as u64)
    }

    #[test]
    fn a_checkpointed_job_through_a_failed_start_and_a_lost_commit() {
        let job = WriteConfig {
            checkpoint: Some("job".into()),
            pause: Some(Duration::from_millis(7)),
            ..WriteConfig::default()
        };
        let mut m = stepped(&job, 10, 3);
        // The checkpoint row: the first read loses its connection.
        assert_eq!(m.step().unwrap(), Step::Start { retry: false });
        m.started(Err(AttemptError::Query(lost()))).unwrap();
        assert!(matches!(m.step().unwrap(), Step::Wait(d) if d <= Duration::from_millis(5)));
        assert_eq!(m.step().unwrap(), Step::Start { retry: true });
        // Two batches (20 rows, up to key 5) committed in earlier runs.
        let start = own_row(&m, 20, 2, Some(5), false);
        assert!(!m.claims(&start), "a row with a fingerprint is not claimed");
        m.started(Ok(start)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Seek(key(5)));
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();

        // Batch 1 of this run: keys 6..=15 and the look-ahead row 16.
        let plan = match m.step().unwrap() {
            Step::Batch { plan, attempt: 1 } => plan,
            other => panic!("{other:?}"),
        };
        assert_eq!((plan.batch, plan.fetch()), (1, 11));
        assert!(m
            .locked("job", Ok(Some(own_row(&m, 20, 2, Some(5), false))))
            .is_ok());
        let (at, _, committed) = body(&m, &plan, Some(5), &(6..=16).collect::<Vec<_>>())
            .ok()
            .unwrap();
        let at = at.unwrap();
        assert_eq!((at.rows, at.batches, at.done), (30, 3, false));
        m.ran(Ok(committed)).unwrap();
        // The pause, then the next batch after key 15.
        assert_eq!(m.step().unwrap(), Step::Wait(Duration::from_millis(7)));
        assert_eq!(m.step().unwrap(), Step::Seek(key(15)));

        // Batch 2: keys 16..=20, the last; its COMMIT answer is lost.
        let plan = match m.step().unwrap() {
            Step::Batch { plan, attempt: 1 } => plan,
            other => panic!("{other:?}"),
        };
        let (at, sent, _) = body(&m, &plan, Some(15), &(16..=20).collect::<Vec<_>>())
            .ok()
            .unwrap();
        assert!(at.unwrap().done);
        let failure = Failure {
            error: AttemptError::Query(lost()),
            rollback: None,
            sent: Some(sent),
        };
        m.ran(Err(Box::new(failure))).unwrap();
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        // The retry finds the row one batch ahead: the batch committed.
        assert!(matches!(m.step().unwrap(), Step::Batch { attempt: 2, .. }));
        let ahead = own_row(&m, 35, 4, Some(20), true);
        let abort = m.locked("job", Ok(Some(ahead))).unwrap_err();
        let (error, rollback) = abort.split();
        let failure = Failure {
            error: AttemptError::Query(error),
            rollback,
            sent: None,
        };
        m.ran(Err(Box::new(failure))).unwrap();
        assert_eq!(m.step().unwrap(), Step::Seek(key(20)));
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert_eq!(
            (
                report.rows,
                report.batches,
                report.total_rows,
                report.total_batches
            ),
            (15, 2, 35, 4)
        );
        assert_eq!(
            (report.last_key, report.resumed_after, report.done),
            (Some(20), Some(5), true)
        );
        assert_eq!(report.retries, 2);
    }

    #[test]
    fn a_batch_with_a_duplicate_or_a_backward_key_is_not_written() {
        let mut m = stepped(&WriteConfig::default(), 3, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        let Step::Batch { plan, .. } = m.step().unwrap() else {
            panic!()
        };
        let refused = |keys: &[i64]| match body(&m, &plan, Some(0), keys) {
            Err(Abort::Fail(e)) => e,
            Ok(_) => panic!("{keys:?} accepted"),
            Err(_) => panic!("{keys:?}: not a failure of the job"),
        };
        assert!(matches!(
            refused(&[1, 2, 2, 3]),
            Error::DuplicateKey { batch: 1, .. }
        ));
        // The look-ahead row counts too: a duplicate across the batch's end.
        assert!(matches!(refused(&[1, 2, 3, 3]), Error::DuplicateKey { .. }));
        assert!(matches!(
            refused(&[1, 3, 2]),
            Error::InconsistentOrder { .. }
        ));
        assert!(matches!(refused(&[0, 1]), Error::InconsistentOrder { .. }));
        // A good batch: 3 rows kept, the look-ahead row says more are left.
        let (_, _, c) = body(&m, &plan, Some(0), &[1, 2, 3, 4]).ok().unwrap();
        assert_eq!((c.n, c.last, c.more), (3, Some(key(3)), true));
    }

    #[test]
    fn a_job_without_a_checkpoint_or_keys_is_done_at_once() {
        let job = WriteConfig::default();
        let mut m = stepped(&job, 10, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        let Step::Batch { plan, .. } = m.step().unwrap() else {
            panic!()
        };
        let (at, sent, c) = body(&m, &plan, None, &[]).ok().unwrap();
        assert!(at.is_none() && sent.keys.is_none());
        m.ran(Ok(c)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert!(report.done);
        assert_eq!((report.rows, report.batches, report.last_key), (0, 0, None));
    }

    #[test]
    fn a_control_pauses_resizes_and_cancels_between_batches() {
        let job = WriteConfig {
            pause: Some(Duration::from_millis(120)),
            ..WriteConfig::default()
        };
        let control = job.control.clone();
        let mut m = stepped(&job, 3, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        let Step::Batch { plan, .. } = m.step().unwrap() else {
            panic!()
        };
        // Paused inside the batch: the batch goes on and commits.
        control.pause();
        let (_, _, c) = body(&m, &plan, None, &[1, 2, 3, 4]).ok().unwrap();
        m.ran(Ok(c)).unwrap();
        // The pause after it comes in slices, then the handle holds the job.
        assert_eq!(m.step().unwrap(), Step::Wait(crate::control::POLL));
        assert_eq!(m.step().unwrap(), Step::Wait(crate::control::POLL));
        assert_eq!(m.step().unwrap(), Step::Wait(Duration::from_millis(20)));
        assert_eq!(m.step().unwrap(), Step::Seek(key(3)));
        assert_eq!(m.step().unwrap(), Step::Wait(crate::control::POLL));
        assert_eq!(m.step().unwrap(), Step::Wait(crate::control::POLL));
        // Resumed with another batch size and no pause.
        control.set_batch_size(5).unwrap();
        assert!(matches!(
            control.set_batch_size(0),
            Err(Error::InvalidBatchSize { batch_size: 0 })
        ));
        control.set_pause(Duration::ZERO);
        control.resume();
        let Step::Batch { plan, attempt: 1 } = m.step().unwrap() else {
            panic!()
        };
        assert_eq!((plan.batch, plan.limit), (2, 5));
        let (_, _, c) = body(&m, &plan, Some(3), &[4, 5, 6, 7, 8, 9]).ok().unwrap();
        m.ran(Ok(c)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Seek(key(8)));
        // Cancelled between batches: over, not done, at the last commit.
        control.cancel();
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert_eq!(
            (report.rows, report.batches, report.last_key),
            (8, 2, Some(8))
        );
        assert_eq!(
            (report.done, report.cancelled, report.batch_size),
            (false, true, 5)
        );
    }

    #[test]
    fn a_cancel_does_not_cut_into_a_batch_or_its_retries() {
        let job = WriteConfig::default();
        let control = job.control.clone();
        let mut m = stepped(&job, 3, 3);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        let Step::Batch { plan, .. } = m.step().unwrap() else {
            panic!()
        };
        m.ran(Err(Box::new(failed_with(lost())))).unwrap();
        control.cancel();
        // The retry's wait and the retry itself still run.
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        assert!(matches!(m.step().unwrap(), Step::Batch { attempt: 2, .. }));
        let (_, _, c) = body(&m, &plan, None, &[1, 2, 3, 4]).ok().unwrap();
        m.ran(Ok(c)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert_eq!(
            (report.batches, report.cancelled, report.done),
            (1, true, false)
        );
    }

    /// A signal's outcome: readings of `values` against `limit`.
    fn read(signal: &str, values: &[f64], limit: f64) -> crate::health::Outcome {
        crate::health::Outcome {
            signal: signal.to_string(),
            read: Ok(values
                .iter()
                .enumerate()
                .map(|(i, &v)| crate::health::Reading::new(format!("replica {}", i + 1), v, limit))
                .collect()),
        }
    }

    fn unreadable(signal: &str, why: &str) -> crate::health::Outcome {
        crate::health::Outcome {
            signal: signal.to_string(),
            read: Err(crate::health::Unread::Failed(why.to_string())),
        }
    }

    /// A job with one (never read) custom signal, its health read every 100 ms
    /// and given up after 1 s unreadable.
    fn with_health() -> WriteConfig {
        struct Never;
        impl crate::health::Signal for Never {
            fn name(&self) -> String {
                "never".into()
            }
            fn read(&self) -> Result<Vec<crate::health::Reading>, String> {
                unreachable!("the test hands the machine its outcomes")
            }
        }
        WriteConfig {
            health: vec![Never.into()],
            health_interval: Some(ms(100)),
            unreadable_limit: Some(Duration::from_secs(1)),
            ..WriteConfig::default()
        }
    }

    #[test]
    fn signals_are_read_before_the_first_batch_and_hold_it_while_over() {
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        let job = WriteConfig {
            throttle: Some(Arc::new(move |s: &BatchStats| {
                log.lock().unwrap().push(s.clone());
                None
            })),
            ..with_health()
        };
        let mut m = stepped(&job, 3, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        assert_eq!(m.step().unwrap(), Step::Probe);
        let t0 = Instant::now();
        m.probed_at(vec![read("lag", &[0.5, 3.0], 2.0)], t0)
            .unwrap();
        assert_eq!(m.step().unwrap(), Step::Wait(ms(50)));
        assert_eq!(m.step().unwrap(), Step::Wait(ms(50)));
        // read again after the wait: worse, then unreadable, then fine
        assert_eq!(m.step().unwrap(), Step::Probe);
        m.probed_at(vec![read("lag", &[4.0, 1.0], 2.0)], t0 + ms(100))
            .unwrap();
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        assert_eq!(m.step().unwrap(), Step::Probe);
        m.probed_at(vec![unreadable("lag", "replica 2: gone")], t0 + ms(200))
            .unwrap();
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        assert_eq!(m.step().unwrap(), Step::Probe);
        m.probed_at(vec![read("lag", &[0.1, 0.2], 2.0)], t0 + ms(300))
            .unwrap();
        let Step::Batch { plan, attempt: 1 } = m.step().unwrap() else {
            panic!()
        };
        assert_eq!(
            plan.batch, 1,
            "the batch held back is the first, planned once"
        );
        let (_, _, c) = body(&m, &plan, None, &[1, 2, 3, 4]).ok().unwrap();
        m.ran(Ok(c)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Seek(key(3)));
        // read 300 ms ahead of the clock: not due again within the interval
        let Step::Batch { plan, .. } = m.step().unwrap() else {
            panic!()
        };
        assert_eq!(plan.batch, 2);
        let (_, _, c) = body(&m, &plan, Some(3), &[4, 5]).ok().unwrap();
        m.ran(Ok(c)).unwrap();
        assert_eq!(m.step().unwrap(), Step::Seek(key(5)));
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert!(report.done);
        assert_eq!(report.waited, ms(300));
        assert_eq!(report.waits.len(), 1, "{:?}", report.waits);
        let wait = &report.waits[0];
        assert_eq!(
            (wait.signal.as_str(), wait.batch, wait.waited),
            ("lag", 1, ms(300))
        );
        let worst = wait.reading.as_ref().unwrap();
        assert_eq!((worst.source.as_str(), worst.value), ("replica 1", 4.0));
        assert_eq!(wait.error.as_deref(), Some("replica 2: gone"));
        assert_eq!(
            wait.to_string(),
            "lag: replica 1: 4 > 2, waited 300.0ms before batch 1"
        );
        // the batch it held back says so; the next did not wait
        let seen = seen.lock().unwrap();
        assert_eq!((seen[0].batch, seen[0].waited), (1, ms(300)));
        assert_eq!(seen[0].waits, report.waits);
    }

    #[test]
    fn a_signal_unreadable_for_the_limit_stops_the_job_and_one_unsupported_at_once() {
        let job = with_health();
        let mut m = stepped(&job, 3, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        assert_eq!(m.step().unwrap(), Step::Probe);
        let t0 = Instant::now();
        m.probed_at(vec![unreadable("lag", "down")], t0).unwrap();
        // readable again resets the clock
        m.probed_at(vec![read("lag", &[1.0], 2.0)], t0 + ms(900))
            .unwrap();
        m.probed_at(vec![unreadable("lag", "down")], t0 + ms(1000))
            .unwrap();
        m.probed_at(vec![unreadable("lag", "down")], t0 + ms(1900))
            .unwrap();
        let err = m
            .probed_at(vec![unreadable("lag", "still down")], t0 + ms(2000))
            .unwrap_err();
        assert!(
            matches!(&err, Error::HealthUnreadable { signal, reason, waited }
                if signal == "lag" && reason == "still down" && *waited == ms(1000)),
            "{err:?}"
        );

        // two signals of one name: one readable does not reset the other's clock
        let mut m = stepped(&job, 3, 0);
        let both = |why: &str| {
            vec![
                read("replica_lag", &[0.1], 2.0),
                unreadable("replica_lag", why),
            ]
        };
        m.probed_at(both("r2 down"), t0).unwrap();
        m.probed_at(both("r2 down"), t0 + ms(900)).unwrap();
        let err = m
            .probed_at(both("r2 still down"), t0 + ms(1000))
            .unwrap_err();
        assert!(
            matches!(&err, Error::HealthUnreadable { reason, .. } if reason == "r2 still down"),
            "{err:?}"
        );

        let mut m = stepped(&job, 3, 0);
        let unsupported = crate::health::Outcome {
            signal: "mysql_threads_running".into(),
            read: Err(crate::health::Unread::Unsupported(
                "MySQL/MariaDB only".into(),
            )),
        };
        let err = m.probed_at(vec![unsupported], t0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "health signal mysql_threads_running cannot be read here: MySQL/MariaDB only"
        );
    }

    #[test]
    fn a_cancel_ends_a_health_wait_and_the_report_keeps_it() {
        let job = with_health();
        let control = job.control.clone();
        let mut m = stepped(&job, 3, 0);
        assert_eq!(m.step().unwrap(), Step::Checks);
        m.checked();
        assert_eq!(m.step().unwrap(), Step::Probe);
        m.probed_at(vec![read("load", &[40.0], 32.0)], Instant::now())
            .unwrap();
        assert!(matches!(m.step().unwrap(), Step::Wait(_)));
        control.cancel();
        assert_eq!(m.step().unwrap(), Step::Done);
        let report = m.finish();
        assert_eq!(
            (report.cancelled, report.done, report.batches),
            (true, false, 0)
        );
        assert_eq!(report.waits.len(), 1);
        assert_eq!(
            (report.waits[0].signal.as_str(), report.waits[0].batch),
            ("load", 1)
        );
    }
}
