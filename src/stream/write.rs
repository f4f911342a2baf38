//! The async driver of write jobs: `update_all`, `delete_all` and
//! `for_each_batch` on diesel-async connections and pools. It runs the
//! [`Step`]s of the same [`WriteMachine`] as the blocking driver
//! ([`run_job`](crate::write::run_job)), the same statements, awaited; every
//! decision is the machine's.

use std::panic::AssertUnwindSafe;

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::query_builder::{AsChangeset, IntoUpdateTarget, QueryFragment};
use diesel::query_dsl::methods::FilterDsl;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{AsyncConnectionSource, AsyncDb, AsyncRows};
use crate::backend::KeysetBackend;
use crate::builder::{Chunked, ModelBase};
use crate::checkpoint::{end_transaction, AsyncCheckpointConnection, Checkpoint};
use crate::engine::{BatchPlan, ScanConfig};
use crate::error::Error;
use crate::health::sql::AsyncReadHealth;
use crate::health::{Outcome, Unread};
use crate::iter::{FirstBatch, FirstSteps};
use crate::key::Key;
use crate::machine::{
    Abort, Committed, EmptyLock, Failure, LockWait, Position, Step, WriteMachine,
};
use crate::moved::{MoveWatch, RangeGuard};
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::{PrepareKeys, PrepareModel, SeekQuery};
use crate::rows::RowType;
use crate::rows::{KeyRows, LoadedRow, ModelRows};
use crate::source::NonBlocking;
use crate::write::{
    debug_sql, describe_range, key_columns_of, key_set_in, render_sql, start_job, DeleteJob,
    Elsewhere, ForEachBatch, Here, RangeCount, RangeDelete, RangeTable, RangeTarget,
    UpdatableQuery, UpdateJob, WriteConfig, WriteReport,
};

/// What an async write job writes per batch, in the batch's transaction.
pub trait BatchWrite<C, L, V>: Send {
    /// Writes the batch's loaded `rows`, whose key range is `range`, on
    /// `conn`: the rows written.
    fn write<'c>(
        &'c mut self,
        conn: &'c mut C,
        rows: Vec<L>,
        range: &'c Bounds<V>,
    ) -> BoxFuture<'c, Result<u64, Abort>>;
}

/// The async write driver: runs each [`Step`] the [`WriteMachine`] asks for
/// on connections of `source`, each batch one transaction with the job's
/// write and its checkpoint, and sleeps (on the runtime's timer) as it says.
pub(crate) async fn run_job<S, B, K, R, W>(
    source: S,
    query: Result<SeekQuery<B, K>, Error>,
    rows: R,
    scan: ScanConfig,
    job: WriteConfig,
    write: W,
) -> Result<WriteReport<K::Value>, Error>
where
    S: AsyncConnectionSource,
    S::Connection: AsyncCheckpointConnection,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send,
    K::Value: Serialize + DeserializeOwned + Send + Sync,
    R: AsyncRows<S::Connection, B, K>,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
    W: BatchWrite<S::Connection, R::Loaded, K::Value>,
{
    run_job_reading(source, Here, query, rows, scan, job, write).await
}

/// Where an async write job reads its batches: the async twin of
/// [`ReadSide`](crate::write::ReadSide).
pub(crate) trait AsyncReadSide<S: AsyncConnectionSource, B, K: Key, R: RowType<K>>:
    Send
{
    /// Runs the checks before the first batch.
    fn check<'x>(
        &'x mut self,
        first: &'x mut FirstBatch<'_, B, K, R>,
        source: &'x mut S,
        steps: FirstSteps,
    ) -> BoxFuture<'x, Result<(), Error>>;
    /// Whether keys read here may be stored in forms of the backend's own.
    fn stored_forms(&self) -> bool;
    /// Loads a batch; `conn` is the batch transaction's.
    fn load<'x>(
        &'x mut self,
        rows: &'x mut R,
        query: &'x mut SeekQuery<B, K>,
        conn: &'x mut S::Connection,
        limit: i64,
    ) -> BoxFuture<'x, diesel::QueryResult<Vec<R::Loaded>>>;
    /// Before the first step and after each committed batch (see
    /// [`ReadSide::catch_up`](crate::write::ReadSide::catch_up)).
    fn catch_up<'x>(
        &'x mut self,
        source: &'x mut S,
        fingerprint: &'x str,
    ) -> BoxFuture<'x, Result<(), Error>> {
        let _ = (source, fingerprint);
        Box::pin(async { Ok(()) })
    }
}

impl<S, B, K, R> AsyncReadSide<S, B, K, R> for Here
where
    S: AsyncConnectionSource,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send,
    R: AsyncRows<S::Connection, B, K>,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    fn check<'x>(
        &'x mut self,
        first: &'x mut FirstBatch<'_, B, K, R>,
        source: &'x mut S,
        steps: FirstSteps,
    ) -> BoxFuture<'x, Result<(), Error>> {
        Box::pin(super::scan::first_steps(source, first, steps))
    }

    fn stored_forms(&self) -> bool {
        AsyncDb::<S>::STORED_FORMS
    }

    fn load<'x>(
        &'x mut self,
        rows: &'x mut R,
        query: &'x mut SeekQuery<B, K>,
        conn: &'x mut S::Connection,
        limit: i64,
    ) -> BoxFuture<'x, diesel::QueryResult<Vec<R::Loaded>>> {
        rows.load_async(query, conn, limit)
    }
}

impl<S, Src, B, K, R> AsyncReadSide<S, B, K, R> for Elsewhere<Src>
where
    S: AsyncConnectionSource,
    Src: AsyncConnectionSource,
    AsyncDb<Src>: KeysetBackend,
    K: Key + Send,
    R: AsyncRows<Src::Connection, B, K>,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    fn check<'x>(
        &'x mut self,
        first: &'x mut FirstBatch<'_, B, K, R>,
        _source: &'x mut S,
        steps: FirstSteps,
    ) -> BoxFuture<'x, Result<(), Error>> {
        Box::pin(super::scan::first_steps(&mut self.0, first, steps))
    }

    fn stored_forms(&self) -> bool {
        AsyncDb::<Src>::STORED_FORMS
    }

    fn load<'x>(
        &'x mut self,
        rows: &'x mut R,
        query: &'x mut SeekQuery<B, K>,
        _conn: &'x mut S::Connection,
        limit: i64,
    ) -> BoxFuture<'x, diesel::QueryResult<Vec<R::Loaded>>> {
        Box::pin(async move {
            let mut state = (rows, query);
            self.0
                .run(false, &mut state, |c, (rows, query)| {
                    rows.load_async(query, c, limit)
                })
                .await
                .map_err(crate::write::source_unreachable)
        })
    }
}

/// [`run_job`], reading where `reads` says.
pub(crate) async fn run_job_reading<S, D, B, K, R, W>(
    mut source: S,
    mut reads: D,
    query: Result<SeekQuery<B, K>, Error>,
    mut rows: R,
    scan: ScanConfig,
    job: WriteConfig,
    mut write: W,
) -> Result<WriteReport<K::Value>, Error>
where
    S: AsyncConnectionSource,
    S::Connection: AsyncCheckpointConnection,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send,
    K::Value: Serialize + DeserializeOwned + Send + Sync,
    R: RowType<K> + Send,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
    D: AsyncReadSide<S, B, K, R>,
    W: BatchWrite<S::Connection, R::Loaded, K::Value>,
{
    let (mut query, mut m) = start_job(query, &rows, scan, &job, S::DEFAULT_MAX_RETRIES)?;
    loop {
        match m.step()? {
            Step::Start { retry } => {
                let row = source
                    .run(retry, &mut m, |c, m| Box::pin(start(c, m)))
                    .await;
                m.started(row)?;
                reads.catch_up(&mut source, m.fingerprint()).await?;
            }
            Step::FinishEmpty { attempt } => {
                let mut state = (&mut m, false);
                let done = source
                    .run(attempt > 1, &mut state, |c, (m, busy)| {
                        Box::pin(finish_empty(c, m, attempt, busy))
                    })
                    .await;
                let busy = state.1;
                m.emptied(done, busy)?;
            }
            Step::Checks => {
                let stored_forms = reads.stored_forms();
                let (mut first, steps) = m.first_batch(&mut query, &mut rows, stored_forms);
                reads.check(&mut first, &mut source, steps).await?;
                m.checked();
            }
            Step::Seek(after) => query.set_after(Some(after)),
            Step::Batch { plan, attempt } => {
                let mut batch = Batch {
                    m: &m,
                    query: &mut query,
                    rows: &mut rows,
                    reads: &mut reads,
                    write: &mut write,
                    plan,
                    rollback: None,
                    sent: None,
                    _source: std::marker::PhantomData::<fn() -> S>,
                };
                let ran = source.run(attempt > 1, &mut batch, |c, b| Box::pin(b.run(c)));
                let ran = batch_trace(&m, ran).await;
                let ran = ran.map_err(|error| {
                    Box::new(Failure {
                        error,
                        rollback: batch.rollback.take(),
                        sent: batch.sent.take(),
                    })
                });
                let committed = ran.is_ok();
                m.ran(ran)?;
                if committed {
                    reads.catch_up(&mut source, m.fingerprint()).await?;
                }
            }
            Step::Probe => {
                let outcomes = probe(&mut source, m.signals()).await;
                m.probed(outcomes)?;
            }
            Step::Wait(wait) => tokio::time::sleep(wait).await,
            Step::Done => return Ok(m.finish()),
        }
    }
}

/// [`Step::Probe`]: reads the signals, those on the job's source through it,
/// the others (blocking reads) on tokio's blocking pool.
async fn probe<S>(source: &mut S, signals: &crate::health::Signals) -> Vec<Outcome>
where
    S: AsyncConnectionSource,
    S::Connection: AsyncCheckpointConnection,
{
    let mut outcomes = Vec::with_capacity(signals.list.len());
    for h in &signals.list {
        let read = match h.on_job_source() {
            Some(kind) => {
                let mut args = (kind, h.limit, signals.table.clone());
                source
                    .run(false, &mut args, |c, (kind, limit, table)| {
                        Box::pin(async move { Ok(c.read_health(*kind, *limit, table).await) })
                    })
                    .await
                    .unwrap_or_else(|e| Err(Unread::Failed(e.to_string())))
            }
            None => h.read_elsewhere_async().await,
        };
        outcomes.push(Outcome {
            signal: h.name(),
            read,
        });
    }
    outcomes
}

/// `future`, in the current batch's tracing span.
fn batch_trace<V: Clone + PartialEq + std::fmt::Debug, F: std::future::Future>(
    m: &WriteMachine<V>,
    future: F,
) -> crate::trace::Instrumented<F> {
    m.trace().instrument(future)
}

/// [`Step::Start`]: reads (or creates) the checkpoint row, and stores the
/// job's fingerprint in a row it claims.
async fn start<C, V>(c: &mut C, m: &mut WriteMachine<V>) -> diesel::QueryResult<Checkpoint>
where
    C: AsyncCheckpointConnection,
    V: Clone + PartialEq + std::fmt::Debug,
{
    let name = m.checkpoint().unwrap_or_default();
    let row = c.start_checkpoint(name, m.key_type()).await?;
    match m.claims(&row) {
        true => c.claim_checkpoint(name, m.fingerprint()).await,
        false => Ok(row),
    }
}

/// [`Step::FinishEmpty`]: marks the checkpoint of a job whose bounds hold no
/// key done, in a batch transaction that locks the row as a batch does.
async fn finish_empty<C, V>(
    c: &mut C,
    m: &mut WriteMachine<V>,
    attempt: u32,
    busy: &mut bool,
) -> diesel::QueryResult<()>
where
    C: AsyncCheckpointConnection,
    V: Clone + PartialEq + std::fmt::Debug,
{
    let name = m.checkpoint().unwrap_or_default();
    c.begin_batch().await?;
    let body = AssertUnwindSafe(async {
        let now = c.lock_checkpoint(name).await;
        match m.empty_locked(now, attempt) {
            EmptyLock::Done => Ok(()),
            EmptyLock::Mark(at) => advance(c, name, &at).await,
            EmptyLock::Busy(e) => {
                *busy = true;
                Err(e)
            }
            EmptyLock::Failed(e) => Err(e),
        }
    })
    .catch_unwind()
    .await;
    end_transaction(c, body).await
}

/// Writes checkpoint position `at` of job `name`.
async fn advance<C: AsyncCheckpointConnection>(
    c: &mut C,
    name: &str,
    at: &Position,
) -> diesel::QueryResult<()> {
    c.advance_checkpoint(name, at.last_key.as_deref(), at.rows, at.batches, at.done)
        .await
}

/// One attempt at one batch, and what the driver learns from it besides its
/// outcome: what rolled it back, and whether its `COMMIT` was sent.
struct Batch<'b, V, Q, R, D, W, S> {
    m: &'b WriteMachine<V>,
    query: &'b mut Q,
    rows: &'b mut R,
    reads: &'b mut D,
    write: &'b mut W,
    plan: BatchPlan,
    rollback: Option<crate::machine::Rollback>,
    sent: Option<crate::machine::Sent>,
    _source: std::marker::PhantomData<fn() -> S>,
}

impl<V, B, K, R, D, W, S> Batch<'_, V, SeekQuery<B, K>, R, D, W, S>
where
    K: Key<Value = V>,
    V: Clone + PartialEq + std::fmt::Debug + Serialize + Send + Sync,
    S: AsyncConnectionSource,
    S::Connection: AsyncCheckpointConnection,
    R: RowType<K>,
    D: AsyncReadSide<S, B, K, R>,
    W: BatchWrite<S::Connection, R::Loaded, V>,
{
    /// Runs the attempt as one transaction on `c`: locks the checkpoint row,
    /// loads the batch, writes it, advances the checkpoint.
    async fn run(&mut self, c: &mut S::Connection) -> diesel::QueryResult<Committed<V>> {
        let restore = match self.m.async_commit() {
            true => crate::commit::AsyncRelaxCommit::relax_connection(c).await?,
            false => None,
        };
        let mut waiting = LockWait::new();
        let ended = loop {
            let mut wait = None;
            let ended = match c.begin_batch().await {
                Ok(()) => {
                    let body = AssertUnwindSafe(self.body(c, &mut waiting, &mut wait))
                        .catch_unwind()
                        .await;
                    match wait {
                        // The rollback's own error, if any, is the attempt's.
                        Some(_) => match crate::checkpoint::rollback(c).await {
                            Ok(()) => Err(Abort::Db(diesel::result::Error::RollbackTransaction)),
                            Err(e) => {
                                wait = None;
                                Err(Abort::Db(e))
                            }
                        },
                        None => end_transaction(c, body).await,
                    }
                }
                Err(e) => Err(Abort::Db(e)),
            };
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => break ended,
            }
        };
        if let Some(sql) = restore {
            // As the blocking driver: the batch is decided.
            let _ = crate::commit::AsyncRelaxCommit::restore_connection(c, sql).await;
        }
        match ended {
            Ok(committed) => Ok(committed),
            Err(abort) => {
                let (e, why) = abort.split();
                self.rollback = why;
                Err(e)
            }
        }
    }

    /// The statements of the batch's transaction.
    /// A checkpoint row another transaction holds on a first attempt rolls
    /// the transaction back with `wait` set, as [`LockWait`] says.
    async fn body(
        &mut self,
        c: &mut S::Connection,
        waiting: &mut LockWait,
        wait: &mut Option<std::time::Duration>,
    ) -> Result<Committed<V>, Abort> {
        if self.m.async_commit() {
            crate::commit::AsyncRelaxCommit::relax_commit(c).await?;
        }
        let name = self.m.checkpoint();
        if let Some(name) = name {
            let row = c.lock_checkpoint(name).await;
            if let Some(w) = waiting.again(self.m, &row) {
                *wait = Some(w);
                return Err(Abort::Db(diesel::result::Error::RollbackTransaction));
            }
            self.m.locked(name, row)?;
        }
        let plan = self.plan;
        let mut loaded = self
            .reads
            .load(self.rows, self.query, c, plan.fetch())
            .await?;
        let query = &*self.query;
        let batch = self
            .m
            .loaded(&plan, query.key(), query.bounds(), &mut loaded, |r| r.key())?;
        let n = loaded.len();
        let written = match &batch.range {
            Some(range) => self.write.write(c, loaded, range).await?,
            None => 0,
        };
        let (position, keys, committed) = self.m.wrote(batch, n, written)?;
        if self.m.commits_durably(&committed) {
            crate::commit::AsyncRelaxCommit::durable_commit(c).await?;
        }
        if let (Some(name), Some(at)) = (name, position) {
            advance(c, name, &at).await?;
        }
        self.sent = Some(keys);
        Ok(committed)
    }
}

/// The `UPDATE` of `update_all`, and what the schema says can move its key
/// (read in the first batch's transaction).
#[allow(missing_debug_implementations)]
pub struct UpdateWrite<Q, K, V> {
    query: Q,
    key: K,
    changes: V,
    key_sql: Option<String>,
    watch: Option<MoveWatch>,
}

impl<Q, K, V, C, L> BatchWrite<C, L, K::Value> for UpdateWrite<Q, K, V>
where
    C: AsyncCheckpointConnection,
    K: Key + Send,
    K::Value: Send + Sync,
    L: Send,
    Q: FilterDsl<SeekPredicate<K>> + Clone + Send,
    RangeTarget<Q, K>: IntoUpdateTarget,
    V: AsChangeset<Target = RangeTable<Q, K>> + Clone + Send,
    diesel::dsl::Update<RangeTarget<Q, K>, V>:
        diesel::query_builder::AsQuery + diesel_async::methods::ExecuteDsl<C> + Send,
    RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
    diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
        diesel::query_dsl::methods::SelectDsl<diesel::dsl::count_star>,
    for<'q> RangeCount<Q, K>: diesel_async::methods::LoadQuery<'q, C, i64> + Send,
{
    fn write<'c>(
        &'c mut self,
        conn: &'c mut C,
        _rows: Vec<L>,
        range: &'c Bounds<K::Value>,
    ) -> BoxFuture<'c, Result<u64, Abort>> {
        Box::pin(async move {
            let watch = match &mut self.watch {
                Some(w) => w,
                None => {
                    let watch = read_move_watch(conn, self.key_sql.as_deref()).await?;
                    self.watch.insert(watch)
                }
            };
            let key = self.key;
            if let Some(reason) = &watch.refused {
                let columns = key.describe();
                let reason = reason.clone();
                return Err(Abort::Fail(Error::KeyMayMove { columns, reason }));
            }
            let watched = watch.watched.join(", ");
            // Built anew for each statement: a closure holding the query
            // across an await would need it to be `Sync`.
            macro_rules! update {
                () => {
                    diesel::update(FilterDsl::filter(
                        self.query.clone(),
                        SeekPredicate::new(key, BoundsCell::new(range.clone())),
                    ))
                    .set(self.changes.clone())
                };
            }
            macro_rules! count {
                () => {
                    diesel::query_dsl::methods::SelectDsl::select(
                        FilterDsl::filter(
                            <RangeTarget<Q, K> as HasTable>::table(),
                            SeekPredicate::new(key, BoundsCell::new(range.clone())),
                        ),
                        diesel::dsl::count_star(),
                    )
                };
            }
            if watched.is_empty() {
                let n = diesel_async::RunQueryDsl::execute(update!(), &mut *conn).await?;
                return Ok(n as u64);
            }
            // A table whose triggers may move keys: the range is counted
            // before and after the UPDATE, in a savepoint, as `RangeGuard`
            // decides.
            let before = diesel_async::RunQueryDsl::get_result::<i64>(count!(), &mut *conn).await?;
            let mut guard = RangeGuard::new(before);
            loop {
                crate::checkpoint::begin_savepoint(&mut *conn).await?;
                let n = match diesel_async::RunQueryDsl::execute(update!(), &mut *conn).await {
                    Ok(n) => n as u64,
                    Err(e) => return end_transaction(&mut *conn, Ok(Err(e.into()))).await,
                };
                let after = diesel_async::RunQueryDsl::get_result::<i64>(count!(), &mut *conn);
                let moved = match after.await.map(|after| guard.updated(after)) {
                    Ok(Ok(())) => return end_transaction(&mut *conn, Ok(Ok(n))).await,
                    Ok(Err(moved)) => moved,
                    Err(e) => return end_transaction(&mut *conn, Ok(Err(e.into()))).await,
                };
                crate::checkpoint::rollback(&mut *conn).await?;
                let again =
                    diesel_async::RunQueryDsl::get_result::<i64>(count!(), &mut *conn).await?;
                if let Err(moved) = guard.recounted(moved, again) {
                    return Err(Abort::Fail(Error::KeyMoved {
                        columns: key.describe(),
                        range: describe_range(range),
                        moved,
                        cause: watched,
                    }));
                }
            }
        })
    }
}

/// What the schema says can move the key of the table whose key columns
/// render as `key_sql`; nothing when they cannot be read.
async fn read_move_watch<C: AsyncCheckpointConnection>(
    conn: &mut C,
    key_sql: Option<&str>,
) -> diesel::QueryResult<MoveWatch> {
    let Some((table, columns)) = key_columns_of(key_sql) else {
        return Ok(MoveWatch::default());
    };
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let causes = conn
        .key_move_causes(table.schema.as_deref(), &table.table, &names)
        .await?;
    Ok(MoveWatch::new(&table.to_string(), causes))
}

/// The `DELETE` of `delete_all`.
#[allow(missing_debug_implementations)]
pub struct DeleteWrite<Q, K> {
    query: Q,
    key: K,
}

impl<Q, K, C, L> BatchWrite<C, L, K::Value> for DeleteWrite<Q, K>
where
    C: AsyncCheckpointConnection,
    K: Key + Send,
    K::Value: Send + Sync,
    L: Send,
    Q: FilterDsl<SeekPredicate<K>> + Clone + Send,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
{
    fn write<'c>(
        &'c mut self,
        conn: &'c mut C,
        _rows: Vec<L>,
        range: &'c Bounds<K::Value>,
    ) -> BoxFuture<'c, Result<u64, Abort>> {
        let predicate = SeekPredicate::new(self.key, BoundsCell::new(range.clone()));
        let delete = diesel::delete(FilterDsl::filter(self.query.clone(), predicate));
        Box::pin(async move {
            let n = diesel_async::RunQueryDsl::execute(delete, conn).await?;
            Ok(n as u64)
        })
    }
}

/// A closure of `for_each_batch` on an async source: an async closure (or
/// any function returning a future) that takes the connection and the batch,
/// and whose future is `Send`, as diesel-async's `AsyncFunc` asks of a
/// transaction's. Implemented for every such closure.
pub trait BatchFn<C, T, R>:
    AsyncFnMut(C, T) -> R + FnMut(C, T) -> <Self as BatchFn<C, T, R>>::Fut
{
    /// The closure's future.
    type Fut: std::future::Future<Output = R>;
}

impl<F, C, T, Fut, R> BatchFn<C, T, R> for F
where
    F: AsyncFnMut(C, T) -> R + FnMut(C, T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    type Fut = Fut;
}

/// The closure of `for_each_batch`.
#[allow(missing_debug_implementations)]
pub struct ForEachWrite<F, M, E> {
    f: F,
    _batch: std::marker::PhantomData<fn(Vec<M>) -> E>,
}

impl<F, M, E, C, L, V> BatchWrite<C, L, V> for ForEachWrite<F, M, E>
where
    C: AsyncCheckpointConnection,
    L: LoadedRow<V, M> + Send,
    V: Sync,
    M: Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: for<'c> BatchFn<&'c mut C, Vec<M>, Result<(), E>, Fut: Send> + Send,
{
    fn write<'c>(
        &'c mut self,
        conn: &'c mut C,
        rows: Vec<L>,
        _range: &'c Bounds<V>,
    ) -> BoxFuture<'c, Result<u64, Abort>> {
        let n = rows.len() as u64;
        let items: Vec<M> = rows.into_iter().map(|r| r.into_parts().1).collect();
        let done = (self.f)(conn, items);
        Box::pin(async move {
            match done.await {
                Ok(()) => Ok(n),
                Err(e) => Err(Abort::User(e.into())),
            }
        })
    }
}

#[diagnostic::do_not_recommend]
impl<'a, 'f, Q, K, S, V> UpdateJob<'a, S, V, NonBlocking<'f>> for Chunked<Q, K>
where
    K: Key + Send + 'f,
    K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
    S: AsyncConnectionSource + 'f,
    S::Connection: AsyncCheckpointConnection,
    AsyncDb<S>: KeysetBackend + Default,
    <AsyncDb<S> as Backend>::QueryBuilder: Default,
    Q: UpdatableQuery + Clone + Send + 'f + PrepareKeys<'a, K, AsyncDb<S>>,
    Q: FilterDsl<SeekPredicate<K>> + QueryFragment<AsyncDb<S>>,
    <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base: Send + 'f,
    KeyRows: AsyncRows<S::Connection, <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base, K>,
    K::Selection: QueryFragment<AsyncDb<S>>,
    V: Clone + Send + 'f + AsChangeset,
    V::Changeset: QueryFragment<AsyncDb<S>>,
    <KeyRows as RowType<K>>::Loaded: Send,
    UpdateWrite<Q, K, V>: BatchWrite<S::Connection, <KeyRows as RowType<K>>::Loaded, K::Value> + 'f,
{
    type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;

    fn run_update(self, source: S, changes: V) -> Self::Output {
        let set = render_sql::<AsyncDb<S>, _>(&changes.clone().as_changeset());
        if let Some(column) = set.as_deref().and_then(|set| key_set_in(&self.key, set)) {
            let columns = self.key.describe();
            return Box::pin(async move { Err(Error::KeyChanged { column, columns }) });
        }
        let key_sql = render_sql::<AsyncDb<S>, _>(&self.key.selection());
        let (key, query, scan, job, seek) = self.into_job::<'a, AsyncDb<S>>();
        let sql = format!(
            "SET {}\n{}",
            debug_sql::<AsyncDb<S>, _>(&changes.clone().as_changeset()),
            debug_sql::<AsyncDb<S>, _>(&query)
        );
        let job = job.with_identity("update_all", sql);
        let write = UpdateWrite {
            query,
            key,
            changes,
            key_sql,
            watch: None,
        };
        Box::pin(run_job(source, seek, KeyRows, scan, job, write))
    }
}

#[diagnostic::do_not_recommend]
impl<'a, 'f, Q, K, S> DeleteJob<'a, S, NonBlocking<'f>> for Chunked<Q, K>
where
    K: Key + Send + 'f,
    K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
    S: AsyncConnectionSource + 'f,
    S::Connection: AsyncCheckpointConnection,
    AsyncDb<S>: KeysetBackend + Default,
    <AsyncDb<S> as Backend>::QueryBuilder: Default,
    Q: UpdatableQuery + Clone + Send + 'f + PrepareKeys<'a, K, AsyncDb<S>>,
    Q: FilterDsl<SeekPredicate<K>> + QueryFragment<AsyncDb<S>>,
    <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base: Send + 'f,
    KeyRows: AsyncRows<S::Connection, <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base, K>,
    <KeyRows as RowType<K>>::Loaded: Send,
    DeleteWrite<Q, K>: BatchWrite<S::Connection, <KeyRows as RowType<K>>::Loaded, K::Value> + 'f,
{
    type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;

    fn run_delete(self, source: S) -> Self::Output {
        let (key, query, scan, job, seek) = self.into_job::<'a, AsyncDb<S>>();
        let job = job.with_identity("delete_all", debug_sql::<AsyncDb<S>, _>(&query));
        let write = DeleteWrite { query, key };
        Box::pin(run_job(source, seek, KeyRows, scan, job, write))
    }
}

impl<'a, 'f, Q, K, S, M, F, E> ForEachBatch<'a, S, M, F, NonBlocking<'f>> for Chunked<Q, K>
where
    K: Key + Send + 'f,
    K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
    S: AsyncConnectionSource + 'f,
    S::Connection: AsyncCheckpointConnection,
    AsyncDb<S>: KeysetBackend + Default,
    <AsyncDb<S> as Backend>::QueryBuilder: Default,
    Q: PrepareModel<'a, K, M, AsyncDb<S>> + QueryFragment<AsyncDb<S>>,
    ModelBase<'a, Q, K, M, AsyncDb<S>>: Send + 'f,
    ModelRows<M>: AsyncRows<S::Connection, ModelBase<'a, Q, K, M, AsyncDb<S>>, K>,
    <ModelRows<M> as RowType<K>>::Loaded: Send,
    M: Send + 'f,
    E: 'f,
    F: for<'c> AsyncFnMut(&'c mut S::Connection, Vec<M>) -> Result<(), E>
        + for<'c> BatchFn<&'c mut S::Connection, Vec<M>, Result<(), E>, Fut: Send>
        + Send
        + 'f,
    ForEachWrite<F, M, E>:
        BatchWrite<S::Connection, <ModelRows<M> as RowType<K>>::Loaded, K::Value>,
{
    type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;

    fn run_for_each(self, source: S, f: F) -> Self::Output {
        let (bounds, scan, job) = (self.bounds(), self.config(), self.write.clone());
        let job = job.with_identity("for_each_batch", debug_sql::<AsyncDb<S>, _>(&self.query));
        let (seek, key_columns) = match self.query.prepare_model(self.key, bounds) {
            Ok((q, at)) => (Ok(q), at),
            Err(e) => (Err(e), [0; 3]),
        };
        let write = ForEachWrite {
            f,
            _batch: std::marker::PhantomData,
        };
        Box::pin(run_job(
            source,
            seek,
            ModelRows::new(key_columns),
            scan,
            job,
            write,
        ))
    }
}
