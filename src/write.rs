//! Batched writes: [`update_all`](crate::RunChunkedDsl::update_all),
//! [`delete_all`](crate::RunChunkedDsl::delete_all) and
//! [`for_each_batch`](crate::RunChunkedDsl::for_each_batch).
//!
//! A write job is a scan whose every batch is one transaction:
//!
//! ```text
//! BEGIN          -- SQLite: BEGIN IMMEDIATE; MySQL: SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN
//! [SET LOCAL synchronous_commit = off]     -- async_commit(), PostgreSQL
//! [SELECT ... FROM chunked_checkpoints WHERE name = $job FOR UPDATE NOWAIT]
//!   -- a first attempt: while the row is locked, rolled back and begun again, up to 5 s
//! SELECT <key> FROM t WHERE (<filters>) AND key > $lo ORDER BY key LIMIT <n + 1>
//! [SELECT ... generated key columns, UPDATE triggers of t]   -- update_all, first batch only
//! [SELECT count(*) FROM t WHERE key > $lo AND key <= $hi; SAVEPOINT]  -- t has UPDATE triggers
//! UPDATE t SET <changes> WHERE (<filters>) AND key > $lo AND key <= $hi
//!   -- or DELETE FROM t WHERE ..., or your closure with the batch's rows
//! [SELECT count(*) FROM t WHERE key > $lo AND key <= $hi; RELEASE SAVEPOINT]
//! [SET LOCAL synchronous_commit = on]      -- async_commit(), PostgreSQL: the job's last batch
//! [UPDATE chunked_checkpoints SET last_key = $hi, rows_done = .., batches_done = .. WHERE name = $job]
//! COMMIT
//! ```
//!
//! `$hi` is the last key of the batch, found in the same transaction, so the
//! range statement writes each row the query matches at most once, also when
//! it changes the columns the query filters on. The next batch starts after
//! `$hi`. A batch whose `COMMIT` was sent is never run again blindly: when
//! the answer is lost, a retry learns from the checkpoint row whether the
//! batch committed, and a job without a checkpoint stops with
//! [`Error::CommitUnknown`]. Between batches the job holds no transaction, no
//! lock and (on a pool) no connection; it may pause ([`Chunked::pause`]), ask
//! a closure how long to wait ([`Chunked::throttle`]), and size the next
//! batch toward a target time ([`Chunked::target_batch_time`]).
//!
//! A row whose key an `update_all` moves ahead of the scan would be met, and
//! written, again by a later batch. A `SET` list that names a key column is
//! [`Error::KeyChanged`] before any batch. A key the `UPDATE` changes without
//! naming it is caught too: a generated key column (or, on MySQL/MariaDB, one
//! with `ON UPDATE CURRENT_TIMESTAMP`) is [`Error::KeyMayMove`] in the first
//! batch, before it writes; on a table with `UPDATE` triggers (or PostgreSQL
//! rules) each batch counts the table's rows in its key range before and
//! after its `UPDATE`, and rows gone from it stop the job with
//! [`Error::KeyMoved`], that batch rolled back. (On MySQL/MariaDB a trigger
//! can only change the row being updated by naming the column, so a trigger
//! that never names a key column costs nothing.) A table without either costs
//! the one read of its schema. `delete_all` moves nothing, and the closure of
//! `for_each_batch` is not checked: it may write what it likes, and a row
//! whose key it moves ahead of the scan is met again.

use std::sync::Arc;
use std::time::Duration;

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::query_builder::{AsChangeset, DeleteStatement, IntoUpdateTarget, QueryFragment};
use diesel::query_dsl::methods::{ExecuteDsl, FilterDsl};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, Db, ModelBase};
use crate::checkpoint::CheckpointConnection;
use crate::engine::{BatchPlan, ScanConfig};
use crate::error::Error;
use crate::health::sql::ReadHealth;
use crate::key::Key;
use crate::machine::{Abort, Committed, EmptyLock, Failure, LockWait, Step, WriteMachine};
use crate::moved::{MoveWatch, RangeGuard};
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::{PrepareKeys, PrepareModel, SeekQuery};
use crate::rows::{KeyRows, LoadedRow, ModelRows, RowType, Rows};
use crate::source::{Blocking, ConnectionSource};

/// What a write job did in the run that returned it; a resumed job's earlier
/// runs are in its checkpoint (see [`checkpoint::status`](crate::checkpoint::status)).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// let report = posts::table
///     .filter(posts::published.eq(false))
///     .chunked_by(posts::id)
///     .batch_size(1)
///     .update_all(conn, posts::published.eq(true))?;
/// assert_eq!((report.rows, report.batches, report.last_key), (2, 2, Some(4)));
/// assert!(report.done);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriteReport<V> {
    /// Rows written in this run (affected by the `UPDATE`/`DELETE`), or handed
    /// to the closure of `for_each_batch`.
    pub rows: u64,
    /// Batches committed in this run.
    pub batches: u64,
    /// The last committed key.
    pub last_key: Option<V>,
    /// The key this run resumed after, from its checkpoint.
    pub resumed_after: Option<V>,
    /// Rows of all runs of the job (this run's without a checkpoint).
    pub total_rows: u64,
    /// Batches of all runs of the job (this run's without a checkpoint).
    pub total_batches: u64,
    /// Whether the job is finished: no rows were left (not only `limit_total`).
    pub done: bool,
    /// Whether the job stopped because its [`Control`](crate::Control) was
    /// cancelled (then `done` is false).
    pub cancelled: bool,
    /// Batches that had to be run again after a transient failure.
    pub retries: u64,
    /// The size of the last batch asked for (see
    /// [`target_batch_time`](Chunked::target_batch_time)).
    pub batch_size: u64,
    /// Time this run took, pauses included.
    pub elapsed: Duration,
    /// Each wait on a health signal (see
    /// [`throttle_on`](Chunked::throttle_on)): the signal, the reading,
    /// how long, before which batch.
    pub waits: Vec<crate::health::HealthWait>,
    /// The time spent waiting on health signals (two signals waited on at
    /// once count once).
    pub waited: Duration,
}

/// The last committed batch, handed to a [`throttle`](Chunked::throttle)
/// closure between batches.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchStats {
    /// The batch's number in this run, from 1.
    pub batch: u64,
    /// Rows the batch wrote.
    pub rows: u64,
    /// How long the batch's transaction took.
    pub duration: Duration,
    /// Rows written in this run so far.
    pub total_rows: u64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// The size the next batch will ask for.
    pub next_batch_size: u64,
    /// How long the batch waited on health signals before it ran (see
    /// [`throttle_on`](Chunked::throttle_on)).
    pub waited: Duration,
    /// The waits on health signals that held this batch back: signal,
    /// reading, how long.
    pub waits: Vec<crate::health::HealthWait>,
}

/// A closure that says how long to wait before the next batch.
pub(crate) type Throttle = Arc<dyn Fn(&BatchStats) -> Option<Duration> + Send + Sync>;

/// A write job's settings, from the builder.
#[derive(Clone, Default)]
pub(crate) struct WriteConfig {
    pub(crate) pause: Option<Duration>,
    pub(crate) throttle: Option<Throttle>,
    pub(crate) target_batch_time: Option<Duration>,
    pub(crate) min_batch_size: Option<u64>,
    pub(crate) max_batch_size: Option<u64>,
    pub(crate) checkpoint: Option<String>,
    /// What the job writes, for its checkpoint's fingerprint: set by the
    /// terminal (`update_all`, `delete_all`, `for_each_batch`).
    pub(crate) identity: Option<JobIdentity>,
    /// The job's handle ([`Chunked::control`]).
    pub(crate) control: crate::Control,
    /// The job's observer ([`Chunked::observe`]).
    pub(crate) observer: Option<Arc<dyn WriteObserver>>,
    /// Its health signals ([`Chunked::throttle_on`]).
    pub(crate) health: Vec<crate::health::Health>,
    /// [`Chunked::health_interval`].
    pub(crate) health_interval: Option<Duration>,
    /// [`Chunked::unreadable_limit`].
    pub(crate) unreadable_limit: Option<Duration>,
    /// [`Chunked::async_commit`].
    pub(crate) async_commit: bool,
    /// [`Chunked::on_conflict_do_nothing`].
    pub(crate) skip_conflicts: bool,
}

/// What a write job tells as it runs: an extension point whose methods do
/// nothing unless you override them, as r2d2's `HandleEvent`. Set one with
/// [`Chunked::observe`]; it is called on the job's thread (or task), between
/// a batch's `COMMIT` and the next batch, so it should return quickly.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use diesel_chunked_iterator::prelude::*;
/// use diesel_chunked_iterator::{BatchStats, WriteObserver};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// #[derive(Default)]
/// struct Rows(AtomicU64);
/// impl WriteObserver for Rows {
///     fn on_batch(&self, stats: &BatchStats) {
///         self.0.store(stats.total_rows, Ordering::Relaxed); // export a metric
///     }
/// }
/// let rows = Arc::new(Rows::default());
/// posts::table
///     .chunked_by(posts::id)
///     .batch_size(2)
///     .observe(Arc::clone(&rows))
///     .update_all(conn, posts::published.eq(true))?;
/// assert_eq!(rows.0.load(Ordering::Relaxed), 5);
/// # Ok(()) }
/// ```
pub trait WriteObserver: Send + Sync + 'static {
    /// After each committed batch that held rows (the last one included).
    fn on_batch(&self, stats: &BatchStats) {
        let _ = stats;
    }

    /// After attempt `attempt` at batch `batch` failed for a reason worth
    /// another, which runs after `wait`.
    fn on_retry(&self, batch: u64, attempt: u32, wait: Duration) {
        let _ = (batch, attempt, wait);
    }
}

impl<T: WriteObserver + ?Sized> WriteObserver for Arc<T> {
    fn on_batch(&self, stats: &BatchStats) {
        (**self).on_batch(stats);
    }

    fn on_retry(&self, batch: u64, attempt: u32, wait: Duration) {
        (**self).on_retry(batch, attempt, wait);
    }
}

/// What decides which rows a write job writes, besides its key and bounds:
/// its kind and its query's SQL with the bind values (see
/// [What identifies a job](crate::checkpoint#what-identifies-a-job)).
#[derive(Debug, Clone)]
pub(crate) struct JobIdentity {
    pub(crate) kind: &'static str,
    pub(crate) sql: String,
}

impl WriteConfig {
    /// This configuration for a job of `kind` whose query renders as `sql`.
    pub(crate) fn with_identity(mut self, kind: &'static str, sql: String) -> Self {
        self.identity = Some(JobIdentity { kind, sql });
        self
    }
}

/// The 64-bit FNV-1a hash of `bytes`: the same in every process and on every
/// platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The fingerprint of a job (stored in its checkpoint): `<kind> <16 hex
/// digits>`, the hash of its kind, key, query and bounds; and the text hashed.
pub(crate) fn fingerprint<V: std::fmt::Debug>(
    identity: Option<&JobIdentity>,
    key_type: &str,
    bounds: &Bounds<V>,
) -> (String, String) {
    let (kind, sql) = match identity {
        Some(id) => (id.kind, id.sql.as_str()),
        None => ("write", ""),
    };
    let text = format!(
        "{kind}\nkey {key_type}\n{sql}\nafter {:?} until {:?} lower {:?} upper {:?} desc {}",
        bounds.after, bounds.until, bounds.lower, bounds.upper, bounds.desc
    );
    (format!("{kind} {:016x}", fnv1a(text.as_bytes())), text)
}

/// The SQL of `fragment` on `DB` with its bind values, as `debug_query` shows
/// it; a fixed text if it cannot be rendered (the job then fails on its first
/// statement anyway).
pub(crate) fn debug_sql<DB, T>(fragment: &T) -> String
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    T: QueryFragment<DB>,
{
    use std::fmt::Write;
    let mut sql = String::new();
    match write!(sql, "{}", diesel::debug_query::<DB, _>(fragment)) {
        Ok(()) => sql,
        Err(_) => "(not renderable)".to_string(),
    }
}

/// `text`, cut to at most `max` characters (an ellipsis marks the cut).
pub(crate) fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

impl std::fmt::Debug for WriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteConfig")
            .field("pause", &self.pause)
            .field("throttle", &self.throttle.is_some())
            .field("target_batch_time", &self.target_batch_time)
            .field("checkpoint", &self.checkpoint)
            .field("identity", &self.identity)
            .field("skip_conflicts", &self.skip_conflicts)
            .finish()
    }
}

/// What the job writes per batch: given the connection (in the batch's
/// transaction), the batch's loaded rows and its key range, the rows written.
type WriteFn<'f, C, L, V> = dyn FnMut(&mut C, Vec<L>, &Bounds<V>) -> Result<u64, Abort> + 'f;

/// The write driver: runs each [`Step`] the [`WriteMachine`] asks for, each
/// batch one transaction with the job's write and its checkpoint, and sleeps
/// as it says.
pub(crate) fn run_job<S, B, K, R>(
    source: S,
    query: Result<SeekQuery<B, K>, Error>,
    rows: R,
    scan: ScanConfig,
    job: WriteConfig,
    write: &mut WriteFn<'_, S::Connection, R::Loaded, K::Value>,
) -> Result<WriteReport<K::Value>, Error>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    R: Rows<S::Connection, B, K>,
{
    run_job_reading(source, Here, query, rows, scan, job, write)
}

/// Where a write job reads its rows and runs the checks before its first
/// batch: on the connection of its batch's transaction ([`Here`]), or on
/// another source ([`Elsewhere`]: the source database of a job writing to
/// another one).
pub(crate) trait ReadSide<S: ConnectionSource, B, K: Key, R: RowType<K>> {
    /// Runs the checks before the first batch.
    fn check(
        &mut self,
        first: &mut crate::iter::FirstBatch<'_, B, K, R>,
        source: &mut S,
        steps: crate::iter::FirstSteps,
    ) -> Result<(), Error>;
    /// Whether keys read here may be stored in forms of the backend's own.
    fn stored_forms(&self) -> bool;
    /// Loads a batch; `conn` is the batch transaction's.
    fn load(
        &mut self,
        rows: &mut R,
        query: &SeekQuery<B, K>,
        conn: &mut S::Connection,
        limit: i64,
    ) -> diesel::QueryResult<Vec<R::Loaded>>;
    /// Before the first step and after each committed batch: what the read
    /// side does once the job's source has committed (a move to another
    /// database deletes there what the destination holds now).
    /// `fingerprint` is the job's (see [`WriteMachine::fingerprint`]).
    fn catch_up(&mut self, source: &mut S, fingerprint: &str) -> Result<(), Error> {
        let _ = (source, fingerprint);
        Ok(())
    }
}

/// A job reads on the connection of its batch's transaction.
pub(crate) struct Here;

impl<S, B, K, R> ReadSide<S, B, K, R> for Here
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    fn check(
        &mut self,
        first: &mut crate::iter::FirstBatch<'_, B, K, R>,
        source: &mut S,
        steps: crate::iter::FirstSteps,
    ) -> Result<(), Error> {
        first.run(source, steps)
    }

    fn stored_forms(&self) -> bool {
        <Db<S> as KeysetBackend>::STORED_FORMS
    }

    fn load(
        &mut self,
        rows: &mut R,
        query: &SeekQuery<B, K>,
        conn: &mut S::Connection,
        limit: i64,
    ) -> diesel::QueryResult<Vec<R::Loaded>> {
        rows.load(query, conn, limit)
    }
}

/// A job reads on connections of source `Src`, another database than the
/// one its batches write to.
pub(crate) struct Elsewhere<Src>(pub(crate) Src);

impl<S, Src, B, K, R> ReadSide<S, B, K, R> for Elsewhere<Src>
where
    S: ConnectionSource,
    Src: ConnectionSource,
    Src::Connection: crate::unique::UniqueIndexes,
    Db<Src>: KeysetBackend,
    K: Key,
    R: Rows<Src::Connection, B, K>,
{
    fn check(
        &mut self,
        first: &mut crate::iter::FirstBatch<'_, B, K, R>,
        _source: &mut S,
        steps: crate::iter::FirstSteps,
    ) -> Result<(), Error> {
        first.run(&mut self.0, steps)
    }

    fn stored_forms(&self) -> bool {
        <Db<Src> as KeysetBackend>::STORED_FORMS
    }

    fn load(
        &mut self,
        rows: &mut R,
        query: &SeekQuery<B, K>,
        _conn: &mut S::Connection,
        limit: i64,
    ) -> diesel::QueryResult<Vec<R::Loaded>> {
        self.0
            .run(false, |conn| rows.load(query, conn, limit))
            .map_err(source_unreachable)
    }
}

/// The error of a batch's load on the source of another database: a
/// connection to it that could not be had is a connection error, retried
/// like one.
pub(crate) fn source_unreachable(e: crate::source::AttemptError) -> diesel::result::Error {
    match e {
        crate::source::AttemptError::Query(e) => e,
        #[allow(unreachable_patterns)]
        other => diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ClosedConnection,
            Box::new(format!("the source database: {other}")),
        ),
    }
}

/// [`run_job`], reading where `reads` says.
pub(crate) fn run_job_reading<S, D, B, K, R>(
    mut source: S,
    mut reads: D,
    query: Result<SeekQuery<B, K>, Error>,
    mut rows: R,
    scan: ScanConfig,
    job: WriteConfig,
    write: &mut WriteFn<'_, S::Connection, R::Loaded, K::Value>,
) -> Result<WriteReport<K::Value>, Error>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    R: RowType<K>,
    D: ReadSide<S, B, K, R>,
{
    let (mut query, mut m) = start_job(query, &rows, scan, &job, S::DEFAULT_MAX_RETRIES)?;
    loop {
        match m.step()? {
            Step::Start { retry } => {
                let name = m.checkpoint().unwrap_or_default();
                let row = source.run(retry, |c| {
                    let row = c.start_checkpoint(name, m.key_type())?;
                    match m.claims(&row) {
                        true => c.claim_checkpoint(name, m.fingerprint()),
                        false => Ok(row),
                    }
                });
                m.started(row)?;
                reads.catch_up(&mut source, m.fingerprint())?;
            }
            Step::FinishEmpty { attempt } => {
                let name = m.checkpoint().unwrap_or_default();
                let mut busy = false;
                let done = source.run(attempt > 1, |conn| {
                    conn.batch_transaction(|conn| {
                        match m.empty_locked(conn.lock_checkpoint(name), attempt) {
                            EmptyLock::Done => Ok(()),
                            EmptyLock::Mark(at) => at.write(conn, name),
                            EmptyLock::Busy(e) => {
                                busy = true;
                                Err(e)
                            }
                            EmptyLock::Failed(e) => Err(e),
                        }
                    })
                });
                m.emptied(done, busy)?;
            }
            Step::Checks => {
                let stored_forms = reads.stored_forms();
                let (mut first, steps) = m.first_batch(&mut query, &mut rows, stored_forms);
                reads.check(&mut first, &mut source, steps)?;
                m.checked();
            }
            Step::Seek(after) => query.set_after(Some(after)),
            Step::Batch { plan, attempt } => {
                let ran = {
                    let _span = m.trace().enter();
                    run_batch(
                        &mut source,
                        &mut reads,
                        &query,
                        &mut rows,
                        &m,
                        plan,
                        attempt,
                        write,
                    )
                };
                let committed = ran.is_ok();
                m.ran(ran)?;
                if committed {
                    reads.catch_up(&mut source, m.fingerprint())?;
                }
            }
            Step::Probe => {
                let outcomes = m.signals().read_blocking(|kind, limit, table| {
                    source
                        .run(false, |c| Ok(c.read_health(kind, limit, table, None)))
                        .unwrap_or_else(|e| Err(crate::health::Unread::Failed(e.to_string())))
                });
                m.probed(outcomes)?;
            }
            Step::Wait(wait) => std::thread::sleep(wait),
            Step::Done => return Ok(m.finish()),
        }
    }
}

/// A write job's prepared query and its machine.
type Started<B, K> = (SeekQuery<B, K>, WriteMachine<<K as Key>::Value>);

/// The prepared query of a write job and its machine, or why it cannot
/// run: what both drivers start from.
pub(crate) fn start_job<B, K, R>(
    query: Result<SeekQuery<B, K>, Error>,
    _rows: &R,
    scan: ScanConfig,
    job: &WriteConfig,
    default_retries: u32,
) -> Result<Started<B, K>, Error>
where
    K: Key,
    R: crate::rows::RowType<K>,
{
    let mut query = query?;
    if let Some(name) = job.checkpoint.as_deref() {
        crate::checkpoint::check_name(name)?;
    }
    if job.async_commit && job.checkpoint.is_none() {
        return Err(Error::AsyncCommit {
            reason: "it needs a checkpoint: a batch whose COMMIT a server crash loses must be \
                     run again by the next run, which only a checkpoint (lost with it) tells"
                .into(),
        });
    }
    if job.skip_conflicts {
        let kind = job.identity.as_ref().map_or("this job", |id| id.kind);
        if !matches!(kind, "copy_into" | "move_into" | "copy_to" | "move_to") {
            return Err(Error::OptionUnsupported {
                option: "on_conflict_do_nothing",
                job: kind,
                reason: "it applies to the jobs that insert rows: copy_into, move_into, \
                         copy_to and move_to",
            });
        }
    }
    let key_type = format!(
        "{} as {}",
        query.key().describe(),
        std::any::type_name::<K::Value>()
    );
    let mut m = WriteMachine::new(
        scan,
        job,
        R::ORIGIN,
        query.bounds(),
        K::compare,
        key_type,
        default_retries,
    );
    query.set_statements(m.engine().config.cache_statements, m.batch_size());
    m.set_signals(crate::health::Signals::of(job.health.clone(), query.key()));
    Ok((query, m))
}

/// Runs attempt `attempt` at batch `plan` as one transaction: locks the
/// checkpoint row, loads the batch, writes it, advances the checkpoint.
#[allow(clippy::too_many_arguments)]
fn run_batch<S, D, B, K, R>(
    source: &mut S,
    reads: &mut D,
    query: &SeekQuery<B, K>,
    rows: &mut R,
    m: &WriteMachine<K::Value>,
    plan: BatchPlan,
    attempt: u32,
    write: &mut WriteFn<'_, S::Connection, R::Loaded, K::Value>,
) -> Result<Committed<K::Value>, Box<Failure>>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    R: RowType<K>,
    D: ReadSide<S, B, K, R>,
{
    let name = m.checkpoint();
    let mut rollback = None;
    // Set when the transaction's body is done: a failure after it is the COMMIT's.
    let mut sent = None;
    let ran = source.run(attempt > 1, |conn| {
        let restore = match m.async_commit() {
            true => crate::commit::RelaxCommit::relax_connection(conn)?,
            false => None,
        };
        let mut waiting = LockWait::new();
        let result = loop {
            let mut wait = None;
            let result = conn.batch_transaction(|conn| -> Result<_, Abort> {
                if m.async_commit() {
                    crate::commit::RelaxCommit::relax_commit(conn)?;
                }
                if let Some(name) = name {
                    let row = conn.lock_checkpoint(name);
                    if let Some(w) = waiting.again(m, &row) {
                        wait = Some(w);
                        return Err(Abort::Db(diesel::result::Error::RollbackTransaction));
                    }
                    m.locked(name, row)?;
                }
                let mut loaded = reads.load(rows, query, conn, plan.fetch())?;
                let batch =
                    m.loaded(&plan, query.key(), query.bounds(), &mut loaded, |r| r.key())?;
                let n = loaded.len();
                let written = match &batch.range {
                    Some(range) => write(conn, loaded, range)?,
                    None => 0,
                };
                let (position, keys, committed) = m.wrote(batch, n, written)?;
                if m.commits_durably(&committed) {
                    crate::commit::RelaxCommit::durable_commit(conn)?;
                }
                if let (Some(name), Some(at)) = (name, position) {
                    at.write(conn, name)?;
                }
                sent = Some(keys);
                Ok(committed)
            });
            // Only a rollback that went through leaves the connection fit to
            // begin again: a failed one's error is the attempt's.
            match (wait, &result) {
                (Some(wait), Err(Abort::Db(diesel::result::Error::RollbackTransaction))) => {
                    std::thread::sleep(wait)
                }
                _ => break result,
            }
        };
        if let Some(sql) = restore {
            // The batch is decided: a setting that cannot be put back leaves
            // later commits of this connection unflushed, not this batch's
            // outcome unknown.
            let _ = crate::commit::RelaxCommit::restore_connection(conn, sql);
        }
        result.map_err(|abort| {
            let (e, why) = abort.split();
            rollback = why;
            e
        })
    });
    ran.map_err(|error| {
        Box::new(Failure {
            error,
            rollback,
            sent,
        })
    })
}

/// `update_all` / `delete_all` need a query of one table that Diesel can
/// update: not a join, not a boxed query, no `.select(..)`.
#[diagnostic::on_unimplemented(
    message = "`update_all` / `delete_all` need a query of one table that Diesel can update or delete from",
    label = "not an UPDATE/DELETE target (a join, a boxed query or a custom .select(..)?)",
    note = "to write per batch from a join or anything else, use `for_each_batch(conn, |conn, rows: Vec<M>| ...)`, \
            which hands each batch's rows to your closure inside the batch's transaction"
)]
pub trait UpdatableQuery {}

impl<Q: IntoUpdateTarget> UpdatableQuery for Q {}

/// The range statement's target: the user's query with the batch's key range.
pub type RangeTarget<Q, K> = diesel::dsl::Filter<Q, SeekPredicate<K>>;

/// Everything `update_all` needs: the query's batches can load their keys, and
/// `UPDATE <table> SET <changes> WHERE <the query's filters> AND <range>` runs
/// on the source's connection.
#[diagnostic::on_unimplemented(
    message = "`update_all` needs a query of one table that Diesel can UPDATE, and changes of that table",
    label = "not an UPDATE target with these changes (a join, a boxed query, a custom .select(..), or changes of another table?)",
    note = "to write per batch from a join or anything else, use `for_each_batch(conn, |conn, rows: Vec<M>| ...)`, \
            which hands each batch's rows to your closure inside the batch's transaction"
)]
pub trait UpdateJob<'a, S, V, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on a blocking
    /// source, a future of it on an async one.
    type Output;
    fn run_update(self, source: S, changes: V) -> Self::Output;
}

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S, V> UpdateJob<'a, S, V, Blocking> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    Q: UpdatableQuery + Clone + PrepareKeys<'a, K, Db<S>> + FilterDsl<SeekPredicate<K>>,
    RangeTarget<Q, K>: IntoUpdateTarget,
    V: AsChangeset<Target = <RangeTarget<Q, K> as HasTable>::Table> + Clone,
    V::Changeset: QueryFragment<Db<S>>,
    Db<S>: Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    diesel::dsl::Update<RangeTarget<Q, K>, V>:
        diesel::query_builder::AsQuery + ExecuteDsl<S::Connection>,
    KeyRows: Rows<S::Connection, <Q as PrepareKeys<'a, K, Db<S>>>::Base, K>,
    K::Selection: QueryFragment<Db<S>>,
    RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
    RangeCount<Q, K>: diesel::query_dsl::LoadQuery<'a, S::Connection, i64>,
    diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
        diesel::query_dsl::methods::SelectDsl<diesel::dsl::count_star>,
    Q: QueryFragment<Db<S>>,
{
    type Output = Result<WriteReport<K::Value>, Error>;

    fn run_update(self, source: S, changes: V) -> Self::Output {
        let set = render_sql::<Db<S>, _>(&changes.clone().as_changeset());
        if let Some(column) = set.as_deref().and_then(|set| key_set_in(&self.key, set)) {
            let columns = self.key.describe();
            return Err(Error::KeyChanged { column, columns });
        }
        let key_sql = render_sql::<Db<S>, _>(&self.key.selection());
        let (key, query, scan, job, seek) = self.into_job::<'a, Db<S>>();
        // Read in the first batch's transaction, before its UPDATE.
        let mut watch: Option<MoveWatch> = None;
        let sql = format!(
            "SET {}\n{}",
            debug_sql::<Db<S>, _>(&changes.clone().as_changeset()),
            debug_sql::<Db<S>, _>(&query)
        );
        let job = job.with_identity("update_all", sql);
        run_job(source, seek, KeyRows, scan, job, &mut |conn, _, range| {
            let watch = match &mut watch {
                Some(w) => w,
                None => watch.insert(read_move_watch(conn, key_sql.as_deref())?),
            };
            if let Some(reason) = &watch.refused {
                return Err(Abort::Fail(Error::KeyMayMove {
                    columns: key.describe(),
                    reason: reason.clone(),
                }));
            }
            let update = |conn: &mut S::Connection| -> diesel::QueryResult<u64> {
                let target = FilterDsl::filter(
                    query.clone(),
                    SeekPredicate::new(key, BoundsCell::new(range.clone())),
                );
                let stmt = diesel::update(target).set(changes.clone());
                Ok(ExecuteDsl::execute(stmt, conn)? as u64)
            };
            if watch.watched.is_empty() {
                return Ok(update(conn)?);
            }
            let count = |conn: &mut S::Connection| -> diesel::QueryResult<i64> {
                let table = <RangeTarget<Q, K> as HasTable>::table();
                let in_range = FilterDsl::filter(
                    table,
                    SeekPredicate::new(key, BoundsCell::new(range.clone())),
                );
                let counted = diesel::query_dsl::methods::SelectDsl::select(
                    in_range,
                    diesel::dsl::count_star(),
                );
                diesel::RunQueryDsl::get_result(counted, conn)
            };
            guarded_update(conn, update, count).map_err(|moved| match moved {
                Guard::Db(e) => Abort::Db(e),
                Guard::Moved(moved) => Abort::Fail(Error::KeyMoved {
                    columns: key.describe(),
                    range: describe_range(range),
                    moved,
                    cause: watch.watched.join(", "),
                }),
            })
        })
    }
}

/// The table of an `update_all` query.
pub type RangeTable<Q, K> = <RangeTarget<Q, K> as HasTable>::Table;

/// `SELECT count(*) FROM <table> WHERE <range>`: the rows of a batch's key
/// range, whatever the query's filters: what a batch counts before and after its
/// `UPDATE` when the table has `UPDATE` triggers.
pub type RangeCount<Q, K> =
    diesel::dsl::Count<diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>>;

/// The table of the key whose columns render as `key_sql`, and its columns
/// of that table; `None` when they cannot be read.
pub(crate) fn key_columns_of(
    key_sql: Option<&str>,
) -> Option<(crate::unique::sql::TableName, Vec<String>)> {
    let key = crate::unique::sql::key_columns(key_sql?).ok()?;
    let table = key.first()?.table.clone();
    let columns = key
        .iter()
        .filter(|k| k.table == table)
        .map(|k| k.column.clone())
        .collect();
    Some((table, columns))
}

/// What the schema says can move the key of the table whose key columns
/// render as `key_sql`; nothing when they cannot be read.
fn read_move_watch<C: CheckpointConnection>(
    conn: &mut C,
    key_sql: Option<&str>,
) -> diesel::QueryResult<MoveWatch> {
    let Some((table, columns)) = key_columns_of(key_sql) else {
        return Ok(MoveWatch::default());
    };
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let causes = conn.key_move_causes(table.schema.as_deref(), &table.table, &names)?;
    Ok(MoveWatch::new(&table.to_string(), causes))
}

/// Why a [`guarded_update`] did not write.
enum Guard {
    Db(diesel::result::Error),
    /// This many rows left the batch's range.
    Moved(u64),
}

impl From<diesel::result::Error> for Guard {
    fn from(e: diesel::result::Error) -> Self {
        Guard::Db(e)
    }
}

/// Runs a batch's `UPDATE` on a table whose triggers may move keys, as
/// [`RangeGuard`] decides: `Guard::Moved` when rows left the batch's range.
fn guarded_update<C: diesel::Connection>(
    conn: &mut C,
    mut update: impl FnMut(&mut C) -> diesel::QueryResult<u64>,
    mut count: impl FnMut(&mut C) -> diesel::QueryResult<i64>,
) -> Result<u64, Guard> {
    let mut guard = RangeGuard::new(count(conn)?);
    loop {
        let done = conn.transaction(|conn| {
            let written = update(conn)?;
            guard.updated(count(conn)?).map_err(Guard::Moved)?;
            Ok(written)
        });
        match done {
            Err(Guard::Moved(moved)) => {
                guard.recounted(moved, count(conn)?).map_err(Guard::Moved)?;
            }
            other => return other,
        }
    }
}

/// A batch's key range, in the scan's order, for an error.
pub(crate) fn describe_range<V: std::fmt::Debug>(range: &Bounds<V>) -> String {
    let after = range
        .after
        .as_ref()
        .map(|k| format!("after key {:?}", k.value));
    let until = range
        .until
        .as_ref()
        .map(|k| format!("up to key {:?}", k.value));
    match (after, until) {
        (Some(a), Some(u)) => format!("{a} {u}"),
        (Some(a), None) => a,
        (None, Some(u)) => format!("from the start {u}"),
        (None, None) => "of the whole scan".into(),
    }
}

/// The SQL Diesel renders for `fragment` on backend `DB`, binds as placeholders.
pub(crate) fn render_sql<DB, T>(fragment: &T) -> Option<String>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    T: QueryFragment<DB>,
{
    let mut builder = DB::QueryBuilder::default();
    fragment.to_sql(&mut builder, &DB::default()).ok()?;
    Some(diesel::query_builder::QueryBuilder::finish(builder))
}

/// The first column of `key` that the rendered `SET` list `set` assigns
/// (`"title" = $1, "n" = "n" + $2`: the names before the top-level `=` of each
/// item, unquoted).
pub(crate) fn key_set_in<K: Key>(key: &K, set: &str) -> Option<String> {
    let assigned: Vec<String> = crate::query::top_level_items(set)
        .into_iter()
        .filter_map(|item| item.split_once('='))
        .map(|(lhs, _)| {
            let name = lhs.trim().rsplit('.').next().unwrap_or("");
            name.trim_matches(|c| c == '"' || c == '`').to_string()
        })
        .collect();
    key.names()
        .into_iter()
        .find(|(_, column)| assigned.iter().any(|a| a == column))
        .map(|(table, column)| format!("{table}.{column}"))
}

/// Everything `delete_all` needs: the query's batches can load their keys, and
/// `DELETE FROM <table> WHERE <the query's filters> AND <range>` runs on the
/// source's connection.
#[diagnostic::on_unimplemented(
    message = "`delete_all` needs a query of one table that Diesel can DELETE from",
    label = "not a DELETE target (a join, a boxed query or a custom .select(..)?)",
    note = "to write per batch from a join or anything else, use `for_each_batch(conn, |conn, rows: Vec<M>| ...)`, \
            which hands each batch's rows to your closure inside the batch's transaction"
)]
pub trait DeleteJob<'a, S, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on a blocking
    /// source, a future of it on an async one.
    type Output;
    fn run_delete(self, source: S) -> Self::Output;
}

/// The `DELETE` of a batch's key range.
pub type RangeDelete<Q, K> = DeleteStatement<
    <RangeTarget<Q, K> as HasTable>::Table,
    <RangeTarget<Q, K> as IntoUpdateTarget>::WhereClause,
>;

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S> DeleteJob<'a, S, Blocking> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    Q: UpdatableQuery + Clone + PrepareKeys<'a, K, Db<S>> + FilterDsl<SeekPredicate<K>>,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeDelete<Q, K>: ExecuteDsl<S::Connection>,
    KeyRows: Rows<S::Connection, <Q as PrepareKeys<'a, K, Db<S>>>::Base, K>,
    Q: QueryFragment<Db<S>>,
    Db<S>: Default,
    <Db<S> as Backend>::QueryBuilder: Default,
{
    type Output = Result<WriteReport<K::Value>, Error>;

    fn run_delete(self, source: S) -> Self::Output {
        let (key, query, scan, job, seek) = self.into_job::<'a, Db<S>>();
        let job = job.with_identity("delete_all", debug_sql::<Db<S>, _>(&query));
        run_job(source, seek, KeyRows, scan, job, &mut |conn, _, range| {
            let target = FilterDsl::filter(
                query.clone(),
                SeekPredicate::new(key, BoundsCell::new(range.clone())),
            );
            Ok(ExecuteDsl::execute(diesel::delete(target), conn)? as u64)
        })
    }
}

/// Everything `for_each_batch::<M>` needs: the query's batches load as
/// `load_batches::<M>` loads them, on a connection that has the checkpoint
/// statements.
pub trait ForEachBatch<'a, S, M, F, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on a blocking
    /// source, a future of it on an async one.
    type Output;
    fn run_for_each(self, source: S, f: F) -> Self::Output;
}

impl<'a, Q, K, S, M, F, E> ForEachBatch<'a, S, M, F, Blocking> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    Q: PrepareModel<'a, K, M, Db<S>>,
    ModelRows<M>: Rows<S::Connection, ModelBase<'a, Q, K, M, Db<S>>, K, Item = M>,
    Q: QueryFragment<Db<S>>,
    Db<S>: Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    F: FnMut(&mut S::Connection, Vec<M>) -> Result<(), E>,
    E: From<diesel::result::Error> + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<WriteReport<K::Value>, Error>;

    fn run_for_each(self, source: S, mut f: F) -> Self::Output {
        let (bounds, scan, job) = (self.bounds(), self.config(), self.write.clone());
        let job = job.with_identity("for_each_batch", debug_sql::<Db<S>, _>(&self.query));
        let (seek, key_columns) = match self.query.prepare_model(self.key, bounds) {
            Ok((q, at)) => (Ok(q), at),
            Err(e) => (Err(e), [0; 3]),
        };
        let rows = ModelRows::new(key_columns);
        run_job(source, seek, rows, scan, job, &mut |conn, loaded, _| {
            let n = loaded.len() as u64;
            let items = loaded.into_iter().map(|r| r.into_parts().1).collect();
            match f(conn, items) {
                Ok(()) => Ok(n),
                Err(e) => Err(Abort::User(e.into())),
            }
        })
    }
}

impl<Q, K: Key> Chunked<Q, K> {
    /// Splits the builder for a write job: the key, the query (kept for the
    /// range statements), the configurations and the prepared key scan.
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_job<'a, DB: diesel::backend::Backend>(
        self,
    ) -> (
        K,
        Q,
        ScanConfig,
        WriteConfig,
        Result<SeekQuery<<Q as PrepareKeys<'a, K, DB>>::Base, K>, Error>,
    )
    where
        Q: Clone + PrepareKeys<'a, K, DB>,
    {
        let (key, bounds, scan, job) = (self.key, self.bounds(), self.config(), self.write.clone());
        let query = self.query;
        let seek = query.clone().prepare_keys(key, bounds);
        (key, query, scan, job, seek)
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[cfg(feature = "sqlite")]
    #[test]
    fn a_drop_in_the_range_is_a_move_only_when_the_range_is_otherwise_unchanged() {
        use super::{guarded_update, Guard};
        use diesel::{Connection, RunQueryDsl, SqliteConnection};
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        diesel::sql_query("CREATE TABLE t (n INTEGER NOT NULL)")
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query("INSERT INTO t VALUES (0)")
            .execute(&mut conn)
            .unwrap();
        let update = |c: &mut SqliteConnection| {
            diesel::sql_query("UPDATE t SET n = n + 1")
                .execute(c)
                .map(|n| n as u64)
        };
        let n = |c: &mut SqliteConnection| {
            diesel::sql_query("SELECT n FROM t").load::<N>(c).unwrap()[0].n
        };
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            n: i32,
        }
        // The counts of the range: 10 before; 9 after the UPDATE; 8 once it is
        // rolled back (another writer deleted rows meanwhile), so the UPDATE
        // runs again against 8, and 8 are left after it.
        let mut counts = [10, 9, 8, 8].into_iter();
        let done = guarded_update(&mut conn, update, |_| Ok(counts.next().unwrap()));
        assert!(matches!(done, Ok(1)));
        assert_eq!(counts.next(), None);
        assert_eq!(
            n(&mut conn),
            1,
            "the first UPDATE rolled back, the second kept"
        );
        // 10 before, 9 after, 10 again without the UPDATE: it moved a row.
        let mut counts = [10, 9, 10].into_iter();
        let done = guarded_update(&mut conn, update, |_| Ok(counts.next().unwrap()));
        assert!(matches!(done, Err(Guard::Moved(1))));
        assert_eq!(n(&mut conn), 1, "the UPDATE rolled back");
        // A range that keeps changing: a move after three tries.
        let mut counts = [10, 9, 8, 7, 6, 5, 4].into_iter();
        let done = guarded_update(&mut conn, update, |_| Ok(counts.next().unwrap()));
        assert!(matches!(done, Err(Guard::Moved(1))));
        assert_eq!(counts.next(), None);
        assert_eq!(n(&mut conn), 1);
    }

    #[test]
    fn long_texts_are_shortened() {
        assert_eq!(super::shortened("abc", 3), "abc");
        assert_eq!(super::shortened("abcd", 3), "abc…");
        assert_eq!(super::shortened("ééééé", 2), "éé…");
    }

    #[test]
    fn fnv1a_is_the_published_hash() {
        // The FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
