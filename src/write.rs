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
use crate::checkpoint::{Checkpoint, CheckpointConnection};
use crate::engine::{BatchPlan, Engine, ScanConfig};
use crate::error::Error;
use crate::iter::FirstBatch;
use crate::key::Key;
use crate::machine::{Abort, Committed, EmptyLock, Failure, Next, Resume, Sent, WriteMachine};
use crate::moved::MoveWatch;
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::{PrepareKeys, PrepareModel, SeekQuery};
use crate::rows::{KeyRows, LoadedRow, ModelRows, Rows};
use crate::source::ConnectionSource;

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
            .finish()
    }
}

/// What the job writes per batch: given the connection (in the batch's
/// transaction), the batch's loaded rows and its key range, the rows written.
type WriteFn<'f, C, L, V> = dyn FnMut(&mut C, Vec<L>, &Bounds<V>) -> Result<u64, Abort> + 'f;

/// The write driver: runs each batch the [`WriteMachine`] plans as one
/// transaction with the job's write and its checkpoint, and sleeps as it says.
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
    let mut query = query?;
    let name = job.checkpoint.as_deref();
    if let Some(name) = name {
        crate::checkpoint::check_name(name)?;
    }
    let key_type = format!(
        "{} as {}",
        query.key().describe(),
        std::any::type_name::<K::Value>()
    );
    let mut m = WriteMachine::new(
        scan,
        &job,
        R::ORIGIN,
        query.bounds(),
        K::compare,
        key_type.clone(),
        S::DEFAULT_MAX_RETRIES,
    );
    query.set_statements(m.engine().config.cache_statements, m.batch_size());
    if let Some(name) = name {
        // The job's identity, from the bounds it was built with (before a
        // resume moves them).
        let (fingerprint, identity) = fingerprint(job.identity.as_ref(), &key_type, query.bounds());
        // Read (or create) the job's row, and store the fingerprint in a new one.
        let mut attempt = 0;
        let row = loop {
            attempt += 1;
            let started = source.run(attempt > 1, |c| {
                let row = c.start_checkpoint(name, &key_type)?;
                if m.claims(&row) {
                    return c.claim_checkpoint(name, &fingerprint);
                }
                Ok(row)
            });
            match started {
                Ok(row) => break row,
                Err(e) => std::thread::sleep(m.start_failed(attempt, e)?),
            }
        };
        match m.resume(name, &row, &fingerprint, &identity)? {
            Resume::Done => return Ok(m.finish()),
            Resume::After(after) => {
                if after.is_some() {
                    query.set_after(after);
                }
            }
        }
        if m.bounds_empty() {
            // Bounds that hold no key: the job is finished as it starts.
            finish_empty(&mut source, &mut m, name, &row)?;
        }
    }
    if m.bounds_empty() {
        return Ok(m.finish());
    }

    check_key_order(&mut source, &mut query, &mut rows, m.engine_mut())?;

    while let Some(plan) = m.next_batch()? {
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
        let committed = loop {
            let attempt = m.attempt();
            #[cfg(feature = "tracing")]
            span.record("attempt", attempt);
            let ran = run_batch(
                &mut source,
                &query,
                &mut rows,
                &m,
                name,
                plan,
                attempt,
                write,
            );
            match ran.map_or_else(|f| m.failed(*f), |c| Ok(Next::Committed(c)))? {
                Next::Committed(c) => break c,
                Next::Retry(delay) => std::thread::sleep(delay),
            }
        };
        let took = batch_started.elapsed();
        #[cfg(feature = "tracing")]
        {
            span.record("rows", committed.n);
            span.record("written", committed.written);
            span.record("elapsed_ms", took.as_secs_f64() * 1000.0);
        }
        let advanced = m.committed(committed, took);
        if advanced.after.is_some() {
            query.set_after(advanced.after);
        }
        match advanced.wait {
            None => break,
            Some(wait) if !wait.is_zero() => std::thread::sleep(wait),
            Some(_) => {}
        }
    }
    Ok(m.finish())
}

/// Runs attempt `attempt` at batch `plan` as one transaction: locks the
/// checkpoint row, loads the batch, writes it, advances the checkpoint.
#[allow(clippy::too_many_arguments)]
fn run_batch<S, B, K, R>(
    source: &mut S,
    query: &SeekQuery<B, K>,
    rows: &mut R,
    m: &WriteMachine<K::Value>,
    name: Option<&str>,
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
    R: Rows<S::Connection, B, K>,
{
    let mut rollback = None;
    // Set when the transaction's body is done: a failure after it is the COMMIT's.
    let mut sent = None;
    let ran = source.run(attempt > 1, |conn| {
        let result = conn.batch_transaction(|conn| -> Result<_, Abort> {
            if let Some(name) = name {
                let row = if m.first_attempt() {
                    lock_waiting(conn, name)
                } else {
                    conn.lock_checkpoint(name)
                };
                m.locked(name, row)?;
            }
            let mut loaded = rows.load(query, conn, plan.fetch())?;
            let checked = m
                .engine()
                .check(&plan, query.key(), query.bounds(), &mut loaded, |r| r.key())
                .map_err(Abort::Fail)?;
            let n = loaded.len();
            let first = loaded.first().map(|r| format!("{:?}", r.key().value));
            let last = checked.last.as_ref().map(|k| format!("{:?}", k.value));
            let written = match &checked.last {
                Some(hi) => {
                    let mut range = query.bounds().clone();
                    range.until = Some(hi.clone());
                    write(conn, loaded, &range)?
                }
                None => 0,
            };
            if let Some(name) = name {
                let at = m
                    .position(checked.last.as_ref(), n, written, checked.more)
                    .map_err(Abort::Fail)?;
                conn.advance_checkpoint(
                    name,
                    at.last_key.as_deref(),
                    at.rows,
                    at.batches,
                    at.done,
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

/// Marks the checkpoint of job `name`, whose bounds hold no key, done: in a
/// batch transaction that locks the row as a batch does, so that a run of the
/// job elsewhere is not overtaken. `row` is the row as the job started.
fn finish_empty<S, V>(
    source: &mut S,
    m: &mut WriteMachine<V>,
    name: &str,
    row: &Checkpoint,
) -> Result<(), Error>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    V: Clone + PartialEq + std::fmt::Debug,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut busy = false;
        let ran = source.run(attempt > 1, |conn| {
            conn.batch_transaction(|conn| {
                match m.empty_locked(conn.lock_checkpoint(name), row, attempt) {
                    EmptyLock::Done => Ok(()),
                    EmptyLock::Mark => {
                        let last = row.last_key.as_deref();
                        conn.advance_checkpoint(name, last, row.rows, row.batches, true)
                    }
                    EmptyLock::Busy(e) => {
                        busy = true;
                        Err(e)
                    }
                    EmptyLock::Failed(e) => Err(e),
                }
            })
        });
        match ran {
            Ok(()) => return Ok(()),
            Err(e) => std::thread::sleep(m.empty_failed(attempt, busy, e)?),
        }
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
            Err(e) if crate::checkpoint::is_lock_conflict(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(crate::source::retry_delay(attempt));
            }
            locked => return locked,
        }
    }
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
