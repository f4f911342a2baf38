//! Batched writes: [`update_all`](crate::RunChunkedDsl::update_all),
//! [`delete_all`](crate::RunChunkedDsl::delete_all) and
//! [`for_each_batch`](crate::RunChunkedDsl::for_each_batch).
//!
//! A write job is a scan whose every batch is one transaction:
//!
//! ```text
//! BEGIN                                         -- SQLite: BEGIN IMMEDIATE; MySQL: READ COMMITTED
//! [SAVEPOINT; SELECT ... FROM chunked_checkpoints WHERE name = $job FOR UPDATE NOWAIT; RELEASE SAVEPOINT]
//!   -- a first attempt: while the row is locked, rolled back to the savepoint and tried again, up to 5 s
//! SELECT <key> FROM t WHERE (<filters>) AND key > $lo ORDER BY key LIMIT <n + 1>
//! [SELECT ... generated key columns, UPDATE triggers of t]   -- update_all, first batch only
//! [SELECT count(*) FROM t WHERE key > $lo AND key <= $hi; SAVEPOINT]  -- t has UPDATE triggers
//! UPDATE t SET <changes> WHERE (<filters>) AND key > $lo AND key <= $hi
//!   -- or DELETE FROM t WHERE ..., or your closure with the batch's rows
//! [SELECT count(*) FROM t WHERE key > $lo AND key <= $hi; RELEASE SAVEPOINT]
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
use std::time::{Duration, Instant};

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::query_builder::{AsChangeset, DeleteStatement, IntoUpdateTarget, QueryFragment};
use diesel::query_dsl::methods::{ExecuteDsl, FilterDsl};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, Db, ModelBase};
use crate::checkpoint::{is_lock_conflict, Checkpoint, CheckpointConnection};
use crate::engine::{Engine, ScanConfig};
use crate::error::Error;
use crate::iter::FirstBatch;
use crate::key::Key;
use crate::moved::MoveWatch;
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::{PrepareKeys, PrepareModel, SeekQuery};
use crate::rows::{KeyRows, LoadedRow, ModelRows, Rows};
use crate::source::{connection_lost, user_error_connection_lost, AttemptError, ConnectionSource};
use crate::stored::StoredKey;

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
    /// Batches that had to be run again after a transient failure.
    pub retries: u64,
    /// The size of the last batch asked for (see
    /// [`target_batch_time`](Chunked::target_batch_time)).
    pub batch_size: u64,
    /// Time this run took, pauses included.
    pub elapsed: Duration,
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
    fn with_identity(mut self, kind: &'static str, sql: String) -> Self {
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
fn fingerprint<V: std::fmt::Debug>(
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
fn debug_sql<DB, T>(fragment: &T) -> String
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
fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The wait after a batch: the pause and what the throttle asked for, added
/// without overflow (a sum beyond `Duration::MAX` is `Duration::MAX`).
fn wait_after(pause: Option<Duration>, throttle: Option<Duration>) -> Duration {
    pause
        .unwrap_or_default()
        .saturating_add(throttle.unwrap_or_default())
}

impl std::fmt::Debug for WriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteConfig")
            .field("pause", &self.pause)
            .field("throttle", &self.throttle.is_some())
            .field("target_batch_time", &self.target_batch_time)
            .field("checkpoint", &self.checkpoint)
            .field("identity", &self.identity)
            .finish()
    }
}

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

/// Why a batch's transaction was rolled back.
pub(crate) enum Abort {
    /// A database error: retried if transient.
    Db(diesel::result::Error),
    /// The job stops with this error.
    Fail(Error),
    /// The closure of `for_each_batch` failed: the job stops with
    /// [`Error::Batch`].
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

/// A batch whose transaction body ran to its end, so that its `COMMIT` is
/// sent next: the keys of its first and last rows (`Debug`-formatted), none
/// for an empty batch.
struct Sent {
    keys: Option<(String, String)>,
}

/// One committed batch.
struct Committed<V> {
    n: usize,
    written: u64,
    last: Option<StoredKey<V>>,
    more: bool,
}

/// What the job writes per batch: given the connection (in the batch's
/// transaction), the batch's loaded rows and its key range, the rows written.
type WriteFn<'f, C, L, V> = dyn FnMut(&mut C, Vec<L>, &Bounds<V>) -> Result<u64, Abort> + 'f;

/// The write driver: runs each batch the [`Engine`] plans as one transaction
/// with the job's write and its checkpoint.
pub(crate) fn run_job<S, B, K, R>(
    mut source: S,
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
    R: Rows<S::Connection, B, K>,
{
    let started = Instant::now();
    let mut query = query?;
    let name = job.checkpoint.as_deref();
    if let Some(name) = name {
        crate::checkpoint::check_name(name)?;
    }
    let sizer = job
        .target_batch_time
        .map(|t| BatchSizer::new(t, scan.batch_size, job.min_batch_size, job.max_batch_size));
    let mut scan = scan;
    if let Some(sizer) = &sizer {
        // The first batch too is within [min_batch_size, max_batch_size].
        scan.batch_size = sizer.first(scan.batch_size);
    }
    let mut sizer = sizer;
    query.set_statements(scan.cache_statements, scan.batch_size);
    let mut engine = Engine::new(
        scan.clone(),
        R::ORIGIN,
        Some(query.bounds()),
        K::compare,
        None,
    );
    let key_type = format!(
        "{} as {}",
        query.key().describe(),
        std::any::type_name::<K::Value>()
    );
    let mut report = WriteReport {
        rows: 0,
        batches: 0,
        last_key: None,
        resumed_after: None,
        total_rows: 0,
        total_batches: 0,
        done: false,
        retries: 0,
        batch_size: scan.batch_size,
        elapsed: Duration::ZERO,
    };
    if let Some(name) = name {
        // The job's identity, from the bounds it was built with (before a
        // resume moves them).
        let (fingerprint, identity) = fingerprint(job.identity.as_ref(), &key_type, query.bounds());
        // Read (or create) the job's row, and store the fingerprint in a new
        // one; a broken connection is retried as a batch is.
        let plan = crate::engine::BatchPlan { batch: 1, limit: 1 };
        let mut attempt = 0;
        let row = loop {
            attempt += 1;
            let started = source.run(attempt > 1, |c| {
                let row = c.start_checkpoint(name, &key_type)?;
                if row.query_fingerprint.is_none() && row.key_type == key_type {
                    return c.claim_checkpoint(name, &fingerprint);
                }
                Ok(row)
            });
            match started {
                Ok(row) => break row,
                Err(crate::source::AttemptError::Query(e))
                    if crate::checkpoint::table_problem(&e).is_some() =>
                {
                    let problem = crate::checkpoint::table_problem(&e);
                    return Err(engine.fail(problem.unwrap_or(Error::Query {
                        context: "starting the checkpoint",
                        source: e,
                    })));
                }
                Err(e) => {
                    let delay = engine.failed::<K::Value>(
                        &plan,
                        attempt,
                        S::DEFAULT_MAX_RETRIES,
                        e,
                        None,
                    )?;
                    std::thread::sleep(delay);
                }
            }
        };
        if row.key_type != key_type {
            return Err(engine.fail(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: row.key_type,
                expected: key_type,
            }));
        }
        if row.query_fingerprint.as_deref() != Some(fingerprint.as_str()) {
            // Another job's checkpoint: resuming after its last key would skip
            // rows of this one.
            let stored = row.query_fingerprint.as_deref().unwrap_or("none");
            return Err(engine.fail(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: format!("{} and query {stored}", row.key_type),
                expected: format!(
                    "{key_type} and query {fingerprint} ({})",
                    shortened(&identity.replace('\n', "; "), 1000)
                ),
            }));
        }
        report.total_rows = row.rows;
        report.total_batches = row.batches;
        if row.done {
            report.done = true;
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        if let Some(json) = &row.last_key {
            let key: StoredKey<K::Value> =
                serde_json::from_str(json).map_err(|e| Error::CheckpointMismatch {
                    name: name.to_string(),
                    stored: format!("{} (last key {json}: {e})", row.key_type),
                    expected: key_type.clone(),
                })?;
            report.resumed_after = Some(key.value.clone());
            report.last_key = Some(key.value.clone());
            query.set_after(Some(key));
        }
        if engine.end == Some(crate::engine::EndReason::EmptyBounds) {
            // Bounds that hold no key: the job is finished as it starts.
            finish_empty(&mut source, &mut engine, name, &row)?;
        }
    }
    if engine.end == Some(crate::engine::EndReason::EmptyBounds) {
        report.done = true;
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    check_key_order(&mut source, &mut query, &mut rows, &mut engine)?;

    loop {
        let plan = match engine.plan()? {
            Some(plan) => plan,
            None => break,
        };
        #[cfg(feature = "tracing")]
        let span = tracing::info_span!(
            "chunked_write_batch",
            batch = plan.batch,
            key = %query.key().describe(),
            after = ?query.bounds().after,
            limit = plan.limit,
            rows = tracing::field::Empty,
            written = tracing::field::Empty,
            attempt = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        let batch_started = Instant::now();
        let mut attempt = 0u32;
        let committed = loop {
            attempt += 1;
            engine.attempted();
            #[cfg(feature = "tracing")]
            span.record("attempt", attempt);
            let mut failure = None;
            let mut adopted = None;
            let mut busy = false;
            // Set when the transaction's body is done: a failure after it is
            // the COMMIT's.
            let mut sent: Option<Sent> = None;
            // The closure failed because its connection broke: nothing committed.
            let mut lost_user = None;
            let (q, loader, engine_ref) = (&query, &mut rows, &engine);
            let (total_rows, total_batches) = (report.total_rows, report.total_batches);
            let ran = source.run(attempt > 1, |conn| {
                let result = conn.batch_transaction(|conn| -> Result<_, Abort> {
                    if let Some(name) = name {
                        lock(conn, name, total_batches, attempt > 1)?;
                    }
                    let mut loaded = loader.load(q, conn, plan.fetch())?;
                    let checked = engine_ref
                        .check(&plan, q.key(), q.bounds(), &mut loaded, |r| r.key())
                        .map_err(Abort::Fail)?;
                    let n = loaded.len();
                    let first = loaded.first().map(|r| format!("{:?}", r.key().value));
                    let last = checked.last.as_ref().map(|k| format!("{:?}", k.value));
                    let written = match &checked.last {
                        Some(hi) => {
                            let mut range = q.bounds().clone();
                            range.until = Some(hi.clone());
                            write(conn, loaded, &range)?
                        }
                        None => 0,
                    };
                    if let Some(name) = name {
                        // An empty batch keeps the position it started after.
                        let last = match checked.last.as_ref().or(q.bounds().after.as_ref()) {
                            Some(k) => Some(serde_json::to_string(k).map_err(|e| {
                                Abort::Fail(Error::Query {
                                    context: "writing the checkpoint",
                                    source: diesel::result::Error::SerializationError(e.into()),
                                })
                            })?),
                            None => None,
                        };
                        let batches = total_batches + u64::from(n > 0);
                        conn.advance_checkpoint(
                            name,
                            last.as_deref(),
                            total_rows + written,
                            batches,
                            !checked.more,
                        )?;
                    }
                    sent = Some(Sent {
                        keys: first.zip(last),
                    });
                    Ok(Committed {
                        n,
                        written,
                        last: checked.last,
                        more: checked.more,
                    })
                });
                match result {
                    Ok(c) => Ok(c),
                    Err(Abort::Db(e)) => Err(e),
                    Err(Abort::Fail(e)) => {
                        failure = Some(e);
                        Err(diesel::result::Error::RollbackTransaction)
                    }
                    Err(Abort::Committed(row)) => {
                        adopted = Some(row);
                        Err(diesel::result::Error::RollbackTransaction)
                    }
                    Err(Abort::Busy(e)) => {
                        busy = true;
                        Err(e)
                    }
                    // The closure's error is its connection's: the batch did not
                    // commit, and is retried as any batch whose connection broke.
                    Err(Abort::User(source)) if user_error_connection_lost(&*source) => {
                        let e = diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::ClosedConnection,
                            Box::new(source.to_string()),
                        );
                        lost_user = Some(source);
                        Err(e)
                    }
                    Err(Abort::User(source)) => {
                        failure = Some(Error::Batch {
                            batch: plan.batch,
                            last_committed: q
                                .bounds()
                                .after
                                .as_ref()
                                .map(|k| format!("{:?}", k.value)),
                            source,
                        });
                        Err(diesel::result::Error::RollbackTransaction)
                    }
                }
            });
            match ran {
                Ok(c) => break c,
                Err(e) => {
                    if let Some(row) = adopted {
                        let totals = (report.total_rows, report.total_batches);
                        break committed_by_checkpoint(*row, totals, &key_type)?;
                    }
                    if let Some(f) = failure {
                        report.elapsed = started.elapsed();
                        return Err(engine.fail(f));
                    }
                    let max = scan.max_retries.unwrap_or(S::DEFAULT_MAX_RETRIES);
                    if busy {
                        if attempt > max {
                            return Err(engine.fail(Error::CheckpointBusy {
                                name: name.unwrap_or_default().to_string(),
                            }));
                        }
                        engine.retries += 1;
                        std::thread::sleep(crate::source::retry_delay(attempt));
                        continue;
                    }
                    if let Some(source) = lost_user {
                        if attempt > max {
                            report.elapsed = started.elapsed();
                            return Err(engine.fail(Error::Batch {
                                batch: plan.batch,
                                last_committed: query
                                    .bounds()
                                    .after
                                    .as_ref()
                                    .map(|k| format!("{:?}", k.value)),
                                source,
                            }));
                        }
                        engine.retries += 1;
                        std::thread::sleep(crate::source::retry_delay(attempt));
                        continue;
                    }
                    // The COMMIT was sent and its answer lost: the batch may have
                    // committed. Only a checkpoint can tell, on a retry (see
                    // `lock`); a batch is never run again blindly.
                    let e = match (sent, e) {
                        (Some(sent), AttemptError::Query(source)) if connection_lost(&source) => {
                            let retry = name.is_some() && attempt <= max;
                            match sent.keys {
                                _ if retry => AttemptError::Query(source),
                                Some((first, last)) => {
                                    report.elapsed = started.elapsed();
                                    return Err(engine.fail(Error::CommitUnknown {
                                        batch: plan.batch,
                                        after: query
                                            .bounds()
                                            .after
                                            .as_ref()
                                            .map(|k| format!("{:?}", k.value)),
                                        first,
                                        last,
                                        checkpoint: name.map(str::to_owned),
                                        source: Box::new(source),
                                    }));
                                }
                                // An empty batch wrote no row (only, with a
                                // checkpoint, that the job is done): whether it
                                // committed or not, no row is left.
                                None => {
                                    break Committed {
                                        n: 0,
                                        written: 0,
                                        last: None,
                                        more: false,
                                    };
                                }
                            }
                        }
                        (_, e) => e,
                    };
                    let after = query.bounds().after.as_ref();
                    let delay = engine.failed(&plan, attempt, S::DEFAULT_MAX_RETRIES, e, after)?;
                    std::thread::sleep(delay);
                }
            }
        };
        let took = batch_started.elapsed();
        #[cfg(feature = "tracing")]
        {
            span.record("rows", committed.n);
            span.record("written", committed.written);
            span.record("elapsed_ms", took.as_secs_f64() * 1000.0);
        }
        let next = engine.count(&plan, committed.n, committed.last, committed.more);
        if committed.n > 0 {
            report.batches += 1;
            report.total_batches += 1;
        }
        report.rows += committed.written;
        report.total_rows += committed.written;
        if let Some(k) = next {
            report.last_key = Some(k.value.clone());
            query.set_after(Some(k));
        }
        if !committed.more {
            report.done = true;
        }
        if engine.is_done() {
            break;
        }
        if let Some(sizer) = sizer.as_mut() {
            let size = sizer.next(engine.config.batch_size, committed.n as u64, took);
            engine.config.batch_size = size;
            report.batch_size = size;
        }
        let stats = BatchStats {
            batch: plan.batch,
            rows: committed.written,
            duration: took,
            total_rows: report.rows,
            elapsed: started.elapsed(),
            next_batch_size: engine.config.batch_size,
        };
        let wait = wait_after(job.pause, job.throttle.as_ref().and_then(|t| t(&stats)));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    report.retries = engine.retries;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Marks the checkpoint of job `name`, whose bounds hold no key, done: in a
/// batch transaction that locks the row as a batch does, so that a run of the
/// job elsewhere is not overtaken. `row` is the row as the job started.
fn finish_empty<S>(
    source: &mut S,
    engine: &mut Engine,
    name: &str,
    row: &Checkpoint,
) -> Result<(), Error>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
{
    let plan = crate::engine::BatchPlan { batch: 1, limit: 1 };
    let busy = || Error::CheckpointBusy {
        name: name.to_string(),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut failure = None;
        let ran = source.run(attempt > 1, |conn| {
            conn.batch_transaction(|conn| match conn.lock_checkpoint(name) {
                // An attempt before this one committed, and its answer was lost.
                Ok(Some(now)) if attempt > 1 && now.done && now.batches == row.batches => Ok(()),
                Ok(Some(now)) if !now.done && now.batches == row.batches => conn
                    .advance_checkpoint(name, row.last_key.as_deref(), row.rows, row.batches, true),
                Ok(_) => {
                    failure = Some(busy());
                    Err(diesel::result::Error::RollbackTransaction)
                }
                Err(e) if is_lock_conflict(&e) && attempt == 1 => {
                    failure = Some(busy());
                    Err(e)
                }
                Err(e) => Err(e),
            })
        });
        match ran {
            Ok(()) => return Ok(()),
            Err(_) if failure.is_some() => {
                return Err(engine.fail(failure.unwrap_or_else(busy)));
            }
            Err(e) => {
                let delay = engine.failed::<()>(&plan, attempt, S::DEFAULT_MAX_RETRIES, e, None)?;
                std::thread::sleep(delay);
            }
        }
    }
}

/// Locks the checkpoint row of job `name` in the batch's transaction, and
/// checks that no other runner committed a batch since this one's last.
///
/// On a retry, a row one batch ahead is this runner's own last attempt, which
/// committed although its connection broke before the answer came back: the
/// batch is taken as done ([`Abort::Committed`]), not written again. So is a
/// row at the same batch that says the job is done: the last attempt was the
/// job's final, empty batch, which counts no batch.
fn lock<C: CheckpointConnection>(
    conn: &mut C,
    name: &str,
    batches: u64,
    retry: bool,
) -> Result<(), Abort> {
    let busy = || {
        Abort::Fail(Error::CheckpointBusy {
            name: name.to_string(),
        })
    };
    let locked = if retry {
        conn.lock_checkpoint(name)
    } else {
        lock_waiting(conn, name)
    };
    match locked {
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

/// How long the first attempt of a batch waits for the checkpoint row that
/// another transaction holds, before the job stops with
/// [`Error::CheckpointBusy`].
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// [`lock_checkpoint`](CheckpointConnection::lock_checkpoint) in a savepoint
/// of the batch's transaction, tried again (after
/// [`retry_delay`](crate::source::retry_delay)) while the row is locked, for
/// at most [`LOCK_WAIT`]. A runner that died inside a batch holds the row
/// until the server notices its closed connection and rolls its transaction
/// back, so a run started right after the crash waits for that instead of
/// stopping. A live runner is no less excluded: once the row is free, `lock`
/// finds it moved on by the other runner's batch.
///
/// The savepoint keeps the batch's transaction usable after a failed lock
/// (PostgreSQL aborts a transaction on any error).
fn lock_waiting<C: CheckpointConnection>(
    conn: &mut C,
    name: &str,
) -> diesel::QueryResult<Option<Checkpoint>> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match conn.transaction(|conn| conn.lock_checkpoint(name)) {
            Err(e) if is_lock_conflict(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(crate::source::retry_delay(attempt));
            }
            locked => return locked,
        }
    }
}

/// The batch a retry found committed by the attempt before it, as the
/// checkpoint row records it; `totals` are the rows and batches before it.
fn committed_by_checkpoint<V: DeserializeOwned>(
    row: Checkpoint,
    (total_rows, total_batches): (u64, u64),
    key_type: &str,
) -> Result<Committed<V>, Error> {
    let last = match &row.last_key {
        Some(json) => Some(serde_json::from_str::<StoredKey<V>>(json).map_err(|e| {
            Error::CheckpointMismatch {
                name: row.name.clone(),
                stored: format!("{} (last key {json}: {e})", row.key_type),
                expected: key_type.to_string(),
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

/// The checks a scan runs before its first batch, run before a write job's
/// first batch too, by the same code ([`FirstBatch::run`]): a key the
/// database cannot order and compare consistently (a string column type on
/// MySQL/MariaDB, a key held unique by an index in another collation than it
/// is compared in on SQLite and PostgreSQL) is [`Error::UnsupportedKey`]; a
/// start key given as a Rust value on a key the backend stores in forms of its
/// own is probed, and [`Error::StoredForm`] when the row before it is stored
/// so; a composite key whose batches would each sort the remaining rows is
/// [`Error::SortsEveryBatch`] unless the job allows sorts, or else ordered by
/// its unique prefix.
fn check_key_order<S, B, K, R>(
    source: &mut S,
    query: &mut SeekQuery<B, K>,
    rows: &mut R,
    engine: &mut Engine,
) -> Result<(), Error>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    let mut first = FirstBatch {
        query,
        rows,
        engine,
    };
    let steps = first.steps(<Db<S> as KeysetBackend>::STORED_FORMS);
    first.run(source, steps)
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
pub trait UpdateJob<'a, S: ConnectionSource, V> {
    /// The key's value type.
    type Value;
    #[doc(hidden)]
    fn run_update(self, source: S, changes: V) -> Result<WriteReport<Self::Value>, Error>;
}

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S, V> UpdateJob<'a, S, V> for Chunked<Q, K>
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
    type Value = K::Value;

    fn run_update(self, source: S, changes: V) -> Result<WriteReport<K::Value>, Error> {
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

/// What the schema says can move the key of the table whose key columns
/// render as `key_sql`; nothing when they cannot be read.
fn read_move_watch<C: CheckpointConnection>(
    conn: &mut C,
    key_sql: Option<&str>,
) -> diesel::QueryResult<MoveWatch> {
    let Some(Ok(key)) = key_sql.map(crate::unique::sql::key_columns) else {
        return Ok(MoveWatch::default());
    };
    let table = key[0].table.clone();
    let columns: Vec<&str> = key
        .iter()
        .filter(|k| k.table == table)
        .map(|k| k.column.as_str())
        .collect();
    let causes = conn.key_move_causes(table.schema.as_deref(), &table.table, &columns)?;
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

/// Runs a batch's `UPDATE` on a table whose triggers may move keys, and
/// checks that no row left the batch's key range: the table's rows in the
/// range (whatever the query's filters) are counted before the `UPDATE` and
/// after it. Fewer after means the `UPDATE` moved keys out of the range, or
/// another transaction deleted rows of it in between; the `UPDATE` is rolled
/// back to a savepoint and the range counted again to tell which. When the
/// range is as it was, the rows left because of the `UPDATE`:
/// [`Guard::Moved`]. Otherwise the check runs again against the new count
/// (three times at most, then [`Guard::Moved`]: the range never held still).
/// Rows another writer adds to the range while the `UPDATE` runs can hide a
/// move in that batch, but a trigger that moves keys moves them in the next
/// batch too.
fn guarded_update<C: diesel::Connection>(
    conn: &mut C,
    mut update: impl FnMut(&mut C) -> diesel::QueryResult<u64>,
    mut count: impl FnMut(&mut C) -> diesel::QueryResult<i64>,
) -> Result<u64, Guard> {
    const ATTEMPTS: u32 = 3;
    let mut before = count(conn)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let done = conn.transaction(|conn| {
            let written = update(conn)?;
            let after = count(conn)?;
            if after < before {
                return Err(Guard::Moved(u64::try_from(before - after).unwrap_or(0)));
            }
            Ok(written)
        });
        match done {
            Err(Guard::Moved(moved)) => {
                let again = count(conn)?;
                if again == before || attempt >= ATTEMPTS {
                    return Err(Guard::Moved(moved));
                }
                before = again;
            }
            other => return other,
        }
    }
}

/// A batch's key range, in the scan's order, for an error.
fn describe_range<V: std::fmt::Debug>(range: &Bounds<V>) -> String {
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
fn render_sql<DB, T>(fragment: &T) -> Option<String>
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
fn key_set_in<K: Key>(key: &K, set: &str) -> Option<String> {
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
pub trait DeleteJob<'a, S: ConnectionSource> {
    /// The key's value type.
    type Value;
    #[doc(hidden)]
    fn run_delete(self, source: S) -> Result<WriteReport<Self::Value>, Error>;
}

/// The `DELETE` of a batch's key range.
pub type RangeDelete<Q, K> = DeleteStatement<
    <RangeTarget<Q, K> as HasTable>::Table,
    <RangeTarget<Q, K> as IntoUpdateTarget>::WhereClause,
>;

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S> DeleteJob<'a, S> for Chunked<Q, K>
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
    type Value = K::Value;

    fn run_delete(self, source: S) -> Result<WriteReport<K::Value>, Error> {
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
pub trait ForEachBatch<'a, S: ConnectionSource, M> {
    /// The key's value type.
    type Value;
    #[doc(hidden)]
    fn run_for_each<E, F>(self, source: S, f: F) -> Result<WriteReport<Self::Value>, Error>
    where
        F: FnMut(&mut S::Connection, Vec<M>) -> Result<(), E>,
        E: From<diesel::result::Error> + Into<Box<dyn std::error::Error + Send + Sync>>;
}

impl<'a, Q, K, S, M> ForEachBatch<'a, S, M> for Chunked<Q, K>
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
{
    type Value = K::Value;

    fn run_for_each<E, F>(self, source: S, mut f: F) -> Result<WriteReport<K::Value>, Error>
    where
        F: FnMut(&mut S::Connection, Vec<M>) -> Result<(), E>,
        E: From<diesel::result::Error> + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
    fn into_job<'a, DB: diesel::backend::Backend>(
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
    use super::{fnv1a, wait_after, BatchSizer};
    use std::time::Duration;

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
    fn long_texts_are_shortened() {
        assert_eq!(super::shortened("abc", 3), "abc");
        assert_eq!(super::shortened("abcd", 3), "abc…");
        assert_eq!(super::shortened("ééééé", 2), "éé…");
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
    fn fnv1a_is_the_published_hash() {
        // The FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
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
}
