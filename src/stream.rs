//! Scans as [`Stream`]s on diesel-async connections (feature `async`).
//!
//! The async twins of `load_iter` / `load_batches` are `load_stream` /
//! `load_batches_stream` ([`RunChunkedAsyncDsl`]): the same statements, bounds,
//! checks, counters and errors, driven by the same [`ScanCore`] as the
//! iterators; only the connection is awaited instead of blocked on. Sources are
//! `&mut` an async connection ([`AsyncConnectionSource`]) and, with the features
//! `deadpool` and `bb8`, diesel-async's pools.
//!
//! ```
//! # include!("../tests/doc/setup.rs");
//! use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
//! use diesel_async::AsyncConnection;
//! use diesel_chunked_iterator::prelude::*;
//! use futures_util::TryStreamExt;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Runtime::new()?;
//! # rt.block_on(async {
//! # let path = std::env::temp_dir().join(format!("doc-stream-{}.db", std::process::id()));
//! # let url = path.to_string_lossy().into_owned();
//! # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
//! let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
//! let mut posts = posts::table
//!     .chunked_by(posts::id)
//!     .batch_size(2)
//!     .desc()
//!     .load_stream::<Post>(&mut conn);
//! let mut ids = Vec::new();
//! while let Some(post) = posts.try_next().await? {
//!     ids.push(post.id);
//! }
//! assert_eq!(ids, [5, 4, 3, 2, 1]);
//! assert_eq!(posts.progress().queries, 3);
//! # drop(posts); drop(conn); std::fs::remove_file(&path)?;
//! # Ok::<_, Box<dyn std::error::Error>>(()) })?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncConnectionCore};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, KeyedBase, ModelBase};
use crate::engine::{BatchPlan, EndReason, Progress};
use crate::error::Error;
use crate::explain::{Explained, PlanLine};
use crate::iter::{BatchResult, ScanCore};
use crate::key::{Key, KeyPositions};
use crate::query::{with_key_columns, Batch, KeyedModel, PrepareKeyed, PrepareModel, SeekQuery};
use crate::rows::{KeyedRows, LoadedRow, ModelRows, RowType};
use crate::source::AttemptError;
use crate::stored::StoredKey;

#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[path = "async_source.rs"]
mod async_source;

/// The backend an async connection source talks to.
pub type AsyncDb<S> = <<S as AsyncConnectionSource>::Connection as AsyncConnectionCore>::Backend;

/// A source of async connections for a scan: the async twin of
/// [`ConnectionSource`](crate::ConnectionSource).
///
/// Implemented for `&mut C` of every diesel-async connection (every batch runs
/// on it; no retry) and, with the features `deadpool` / `bb8`, for
/// `&deadpool::Pool<AsyncDieselConnectionManager<C>>` and
/// `&bb8::Pool<AsyncDieselConnectionManager<C>>`: one connection per batch,
/// back in the pool before the batch is handed out, transient failures retried
/// as with r2d2.
pub trait AsyncConnectionSource: Send {
    /// The connection type.
    type Connection: AsyncConnection + AsyncKeyCheck + 'static;

    /// How often a failed batch is retried unless `max_retries` says otherwise.
    const DEFAULT_MAX_RETRIES: u32;

    /// Runs `f` on a connection with `state`: one attempt at one batch.
    ///
    /// `retry` is false for a batch's first attempt and true for every later
    /// one; a pool then checks the connection it is given first (see
    /// [`ConnectionSource::run`](crate::ConnectionSource::run)).
    fn run<'s, T, R, F>(
        &'s mut self,
        retry: bool,
        state: &'s mut T,
        f: F,
    ) -> BoxFuture<'s, Result<R, AttemptError>>
    where
        T: Send + ?Sized,
        R: Send + 's,
        F: for<'c> FnOnce(&'c mut Self::Connection, &'c mut T) -> BoxFuture<'c, QueryResult<R>>
            + Send
            + 's;
}

impl<C: AsyncConnection + AsyncKeyCheck + 'static> AsyncConnectionSource for &mut C {
    type Connection = C;
    const DEFAULT_MAX_RETRIES: u32 = 0;

    fn run<'s, T, R, F>(
        &'s mut self,
        _retry: bool,
        state: &'s mut T,
        f: F,
    ) -> BoxFuture<'s, Result<R, AttemptError>>
    where
        T: Send + ?Sized,
        R: Send + 's,
        F: for<'c> FnOnce(&'c mut C, &'c mut T) -> BoxFuture<'c, QueryResult<R>> + Send + 's,
    {
        Box::pin(async move { f(&mut **self, state).await.map_err(AttemptError::Query) })
    }
}

/// The checks of a key before a scan, on an async connection: the async twin
/// of what a scan asks of [`UniqueIndexes`](crate::UniqueIndexes). Only
/// MySQL/MariaDB runs statements for them: its string key columns
/// ([`UniqueIndexes::key_column_problem`](crate::UniqueIndexes::key_column_problem))
/// and the unique column sets that let a composite key order by a prefix.
#[doc(hidden)]
pub trait AsyncKeyCheck {
    /// Why the database cannot scan by the key whose columns render as
    /// `key_sql`, if it cannot.
    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        let _ = key_sql;
        Box::pin(async { Ok(None) })
    }

    /// The unique column sets of `table` in `schema` (see
    /// [`UniqueIndexes::unique_column_sets_in`](crate::UniqueIndexes::unique_column_sets_in)),
    /// asked only where a composite key may order by a unique prefix.
    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>> {
        let _ = (schema, table);
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[cfg(feature = "postgres")]
impl AsyncKeyCheck for diesel_async::AsyncPgConnection {}

#[cfg(feature = "sqlite")]
impl AsyncKeyCheck
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
}

#[cfg(feature = "mysql")]
impl AsyncKeyCheck for diesel_async::AsyncMysqlConnection {
    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        Box::pin(crate::unique::key_problem_async(self, key_sql))
    }

    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>> {
        Box::pin(crate::unique::unique_column_sets_async(self, schema, table))
    }
}

/// How the rows of a batch are loaded on an async connection: the async twin
/// of [`Rows`](crate::Rows).
pub trait AsyncRows<Conn, B, K: Key>: RowType<K> + Send {
    /// Loads one batch.
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<Self::Loaded>>>;

    /// The backend's plan of one batch of `limit` rows, as reported.
    #[doc(hidden)]
    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>>;
}

/// Runs one batch of a prepared query on async connection `Conn`, loading
/// `U`s: the async twin of [`LoadBatch`](crate::query::LoadBatch).
pub trait AsyncLoadBatch<Conn, U> {
    /// Loads at most `limit` rows after the current bound.
    fn load_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<U>>>;
}

impl<B, K, Conn, U> AsyncLoadBatch<Conn, U> for SeekQuery<B, K>
where
    K: Key,
    Conn: AsyncConnectionCore,
    U: Send + 'static,
    for<'q> Batch<'q, B, K, &'q mut B>: diesel_async::methods::LoadQuery<'q, Conn, U>,
{
    fn load_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<U>>> {
        diesel_async::RunQueryDsl::load(self.batch_mut(limit), conn).boxed()
    }
}

/// Runs `EXPLAIN` of one batch of a prepared query on async connection
/// `Conn`: the async twin of [`ExplainBatch`](crate::explain::ExplainBatch).
#[doc(hidden)]
pub trait AsyncExplainBatch<Conn> {
    /// The plan of the batch of `limit` rows after the current bound, line by line.
    fn explain_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>>;
}

impl<B, K, Conn> AsyncExplainBatch<Conn> for SeekQuery<B, K>
where
    K: Key,
    Conn: AsyncConnectionCore,
    for<'q> Explained<Batch<'q, B, K, &'q mut B>>:
        diesel_async::methods::LoadQuery<'q, Conn, PlanLine>,
{
    fn explain_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        let lines = diesel_async::RunQueryDsl::load(Explained(self.batch_mut(limit)), conn);
        Box::pin(async move { Ok(lines.await?.into_iter().map(|l: PlanLine| l.0).collect()) })
    }
}

/// Sets where rows' keys are read from around each `poll` of a load: the rows
/// are read inside `poll`, on whatever thread polls, and never across an
/// `.await`.
struct WithKeyColumns<F> {
    at: KeyPositions,
    load: F,
}

impl<F: Future + Unpin> Future for WithKeyColumns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let at = self.at;
        with_key_columns(at, || self.load.poll_unpin(cx))
    }
}

impl<Conn, B, K, M> AsyncRows<Conn, B, K> for ModelRows<M>
where
    K: Key,
    SeekQuery<B, K>: AsyncLoadBatch<Conn, KeyedModel<K, M>> + AsyncExplainBatch<Conn>,
{
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<KeyedModel<K, M>>>> {
        let load = query.load_batch_async(conn, limit);
        Box::pin(WithKeyColumns {
            at: self.key_columns,
            load,
        })
    }

    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        query.explain_batch_async(conn, limit)
    }
}

impl<Conn, B, K, U, F> AsyncRows<Conn, B, K> for KeyedRows<U, F>
where
    K: Key,
    U: Send,
    K::Value: Send,
    F: FnMut(&U) -> K::Value + Send,
    SeekQuery<B, K>: AsyncLoadBatch<Conn, U> + AsyncExplainBatch<Conn>,
{
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<(StoredKey<K::Value>, U)>>> {
        let load = query.load_batch_async(conn, limit);
        Box::pin(async move { Ok(self.keyed(load.await?)) })
    }

    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        query.explain_batch_async(conn, limit)
    }
}

/// The async driver of a scan: runs what its [`ScanCore`] asks for on a
/// connection of the source, awaiting a timer between retries.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct AsyncScan<S, B, K: Key, R> {
    source: S,
    core: ScanCore<B, K, R>,
}

impl<S, B, K, R> AsyncScan<S, B, K, R>
where
    S: AsyncConnectionSource,
    AsyncDb<S>: KeysetBackend,
    K: Key,
    R: AsyncRows<S::Connection, B, K>,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    /// The checks before the first batch.
    async fn first_steps(&mut self, plan: &BatchPlan) -> Result<(), Error> {
        let steps = self.core.first_steps(plan, AsyncDb::<S>::STORED_FORMS);
        if let Some(mut key_sql) = steps.key_check {
            self.core.key_check_attempted();
            let problem = self
                .source
                .run(false, &mut key_sql, |conn, sql| conn.key_problem(sql))
                .await;
            self.core.key_checked(problem)?;
        }
        if steps.probe {
            if let Some(mut state) = self.core.probe_query() {
                let rows = self
                    .source
                    .run(false, &mut state, |conn, (query, loader)| {
                        loader.load_async(query, conn, 1)
                    })
                    .await;
                self.core.probed(rows)?;
            }
        }
        if let Some(check) = steps.order {
            if let Some((query, loader)) = self.core.order_query() {
                let mut state = (&check, query, loader);
                let found =
                    self.source
                        .run(false, &mut state, |conn, (check, query, loader)| {
                            Box::pin(async move {
                                let prefix = match check.table() {
                                    Some((schema, table)) => check
                                        .prefix(&conn.unique_column_sets_in(schema, table).await?),
                                    None => 0,
                                };
                                let plan = match check.needs_plan(prefix) {
                                    true => Some(loader.explain_async(query, conn, 2).await?),
                                    false => None,
                                };
                                Ok((prefix, plan))
                            })
                        })
                        .await;
                self.core.order_checked::<AsyncDb<S>>(&check, found)?;
            }
        }
        Ok(())
    }

    /// Loads the next non-empty batch, or `None` at the end.
    async fn next_batch(&mut self) -> BatchResult<R::Loaded> {
        let plan = match self.core.engine.plan() {
            Ok(Some(plan)) => plan,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = self.first_steps(&plan).await {
            return Some(Err(e));
        }
        let trace = self.core.trace(&plan);
        let fetch = plan.fetch();
        let mut attempt = 0u32;
        let rows = loop {
            attempt += 1;
            let mut state = self.core.attempt(&trace, attempt)?;
            let loaded = self
                .source
                .run(attempt > 1, &mut state, |conn, (query, loader)| {
                    loader.load_async(query, conn, fetch)
                })
                .await;
            match loaded {
                Ok(rows) => break rows,
                Err(e) => {
                    match self
                        .core
                        .failed(&plan, &trace, attempt, S::DEFAULT_MAX_RETRIES, e)
                    {
                        Ok(delay) => tokio::time::sleep(delay).await,
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        };
        self.core.loaded(&plan, &trace, rows)
    }
}

/// One batch being loaded: the scan is moved into the future and comes back
/// with the batch.
type Loading<'a, S, B, K, R> = BoxFuture<
    'a,
    (
        BatchResult<<R as RowType<K>>::Loaded>,
        Box<AsyncScan<S, B, K, R>>,
    ),
>;

enum State<'a, S, B, K: Key, R: RowType<K>> {
    Idle(Box<AsyncScan<S, B, K, R>>),
    Loading(Loading<'a, S, B, K, R>),
}

/// The state both streams share: the scan, idle or loading a batch, and the
/// counters as of the last batch handed out.
struct Batches<'a, S, B, K: Key, R: RowType<K>> {
    state: State<'a, S, B, K, R>,
    rows: u64,
    last_key: Option<StoredKey<K::Value>>,
    /// Counters and end reason while a batch is loading.
    snapshot: (Progress<K::Value>, Option<EndReason>),
}

impl<'a, S, B, K: Key, R: RowType<K>> Batches<'a, S, B, K, R> {
    fn new(scan: AsyncScan<S, B, K, R>) -> Self {
        let snapshot = (scan.core.engine.progress(0, None), scan.core.engine.end);
        Self {
            state: State::Idle(Box::new(scan)),
            rows: 0,
            last_key: None,
            snapshot,
        }
    }

    fn progress(&self) -> Progress<K::Value> {
        match &self.state {
            State::Idle(scan) => {
                let last = self.last_key.as_ref().map(|k| k.value.clone());
                scan.core.engine.progress(self.rows, last)
            }
            State::Loading(_) => self.snapshot.0.clone(),
        }
    }

    fn end_reason(&self) -> Option<EndReason> {
        match &self.state {
            State::Idle(scan) => scan.core.engine.end,
            State::Loading(_) => self.snapshot.1,
        }
    }

    fn handed_out(&mut self, rows: u64, last: Option<StoredKey<K::Value>>) {
        self.rows += rows;
        if last.is_some() {
            self.last_key = last;
        }
    }
}

impl<'a, S, B, K, R> Batches<'a, S, B, K, R>
where
    S: AsyncConnectionSource + 'a,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send + 'a,
    K::Value: Send,
    B: 'a,
    R: AsyncRows<S::Connection, B, K> + 'a,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<BatchResult<R::Loaded>> {
        loop {
            match &mut self.state {
                State::Idle(scan) => {
                    if scan.core.engine.is_done() && scan.core.engine.rows_left() == Some(0) {
                        return Poll::Ready(None);
                    }
                    self.snapshot = (self.progress(), self.end_reason());
                    let State::Idle(mut scan) = std::mem::replace(
                        &mut self.state,
                        State::Loading(Box::pin(futures_util::future::pending())),
                    ) else {
                        unreachable!()
                    };
                    self.state = State::Loading(Box::pin(async move {
                        let batch = scan.next_batch().await;
                        (batch, scan)
                    }));
                }
                State::Loading(load) => {
                    let (batch, scan) = std::task::ready!(load.poll_unpin(cx));
                    self.state = State::Idle(scan);
                    return Poll::Ready(batch);
                }
            }
        }
    }
}

/// Yields one `Vec` per query: the async twin of
/// [`LoadBatches`](crate::LoadBatches); made by `load_batches_stream` /
/// `load_batches_stream_keyed`.
///
/// No `Vec` is empty. Each is one `SELECT … LIMIT n`, run when the stream is
/// polled. Dropping the stream in the middle of a batch drops that query; the
/// connection stays usable (a pool gets it back).
pub struct LoadBatchesStream<'a, S, B, K: Key, R: RowType<K>> {
    batches: Batches<'a, S, B, K, R>,
}

/// Yields rows one at a time: the async twin of [`LoadIter`](crate::LoadIter);
/// made by `load_stream` / `load_stream_keyed`.
///
/// Holds at most one batch in memory and runs the next query only when that
/// batch is used up.
pub struct LoadStream<'a, S, B, K: Key, R: RowType<K>> {
    batches: Batches<'a, S, B, K, R>,
    buffer: std::vec::IntoIter<R::Loaded>,
}

// Neither stream is ever pinned in place: its futures are boxed.
impl<S, B, K: Key, R: RowType<K>> Unpin for LoadBatchesStream<'_, S, B, K, R> {}
impl<S, B, K: Key, R: RowType<K>> Unpin for LoadStream<'_, S, B, K, R> {}

/// The accessors both streams share: the last key handed out, the counters,
/// and `Debug`.
macro_rules! stream_accessors {
    ($($stream:ident),*) => {$(
        impl<S, B, K: Key, R: RowType<K>> $stream<'_, S, B, K, R> {
            /// The key of the last row handed to the caller (by a batch stream:
            /// the last row of the last batch): `start_after(last_key)` resumes
            /// with exactly the next unprocessed row.
            pub fn last_key(&self) -> Option<&K::Value> {
                self.batches.last_key.as_ref().map(|k| &k.value)
            }

            /// [`last_key`](Self::last_key) as the database stored it (see
            /// [`LoadIter::last_stored_key`](crate::LoadIter::last_stored_key)).
            pub fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
                self.batches.last_key.as_ref()
            }

            /// Counters of the scan so far (while a batch loads: as of the last one).
            pub fn progress(&self) -> Progress<K::Value> {
                self.batches.progress()
            }
        }

        impl<S, B, K: Key, R: RowType<K>> fmt::Debug for $stream<'_, S, B, K, R> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($stream))
                    .field("progress", &self.progress())
                    .finish_non_exhaustive()
            }
        }
    )*};
}

stream_accessors!(LoadBatchesStream, LoadStream);

impl<S, B, K: Key, R: RowType<K>> LoadBatchesStream<'_, S, B, K, R> {
    /// Why the scan ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.batches.end_reason()
    }
}

impl<S, B, K: Key, R: RowType<K>> LoadStream<'_, S, B, K, R> {
    /// Why the scan ended, once it has (and its last batch is used up).
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.buffer.len() > 0 {
            return None;
        }
        self.batches.end_reason()
    }
}

impl<'a, S, B, K, R> Stream for LoadBatchesStream<'a, S, B, K, R>
where
    S: AsyncConnectionSource + 'a,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send + 'a,
    K::Value: Send,
    B: 'a,
    R: AsyncRows<S::Connection, B, K> + 'a,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    type Item = Result<Vec<R::Item>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let rows = match std::task::ready!(this.batches.poll_batch(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(rows)) => rows,
        };
        let last = rows.last().map(|r| r.key().clone());
        this.batches.handed_out(rows.len() as u64, last);
        Poll::Ready(Some(Ok(rows
            .into_iter()
            .map(|r| r.into_parts().1)
            .collect())))
    }
}

impl<'a, S, B, K, R> Stream for LoadStream<'a, S, B, K, R>
where
    S: AsyncConnectionSource + 'a,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send + 'a,
    K::Value: Send,
    B: 'a,
    R: AsyncRows<S::Connection, B, K> + 'a,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    type Item = Result<R::Item, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(row) = this.buffer.next() {
                let (k, t) = row.into_parts();
                this.batches.handed_out(1, Some(k));
                return Poll::Ready(Some(Ok(t)));
            }
            match std::task::ready!(this.batches.poll_batch(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(rows)) => this.buffer = rows.into_iter(),
            }
        }
    }
}

/// A [`Chunked`] scan that can load model `M` from async source `S`: the async
/// twin of [`ScanModel`](crate::ScanModel).
pub trait ScanModelAsync<'a, S: AsyncConnectionSource, M> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
    #[doc(hidden)]
    fn into_async_scan(self, source: S) -> AsyncScan<S, Self::Base, Self::Key, ModelRows<M>>;
}

impl<'a, Q, K, S, M> ScanModelAsync<'a, S, M> for Chunked<Q, K>
where
    K: Key,
    S: AsyncConnectionSource,
    Q: PrepareModel<'a, K, M, AsyncDb<S>>,
{
    type Base = ModelBase<'a, Q, K, M, AsyncDb<S>>;
    type Key = K;

    fn into_async_scan(self, source: S) -> AsyncScan<S, Self::Base, K, ModelRows<M>> {
        let (query, rows, config) = self.model_parts::<AsyncDb<S>, M>();
        AsyncScan {
            source,
            core: ScanCore::new(query, rows, config),
        }
    }
}

/// A [`Chunked`] scan that can load its own selection `U` from async source
/// `S`, reading keys with `F`: the async twin of [`ScanKeyed`](crate::ScanKeyed).
pub trait ScanKeyedAsync<'a, S: AsyncConnectionSource, U, F> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
    #[doc(hidden)]
    fn into_async_scan(
        self,
        source: S,
        key_of: F,
    ) -> AsyncScan<S, Self::Base, Self::Key, KeyedRows<U, F>>;
}

impl<'a, Q, K, S, U, F> ScanKeyedAsync<'a, S, U, F> for Chunked<Q, K>
where
    K: Key,
    S: AsyncConnectionSource,
    Q: PrepareKeyed<'a, K, AsyncDb<S>>,
    F: FnMut(&U) -> K::Value,
{
    type Base = KeyedBase<'a, Q, K, AsyncDb<S>>;
    type Key = K;

    fn into_async_scan(self, source: S, key_of: F) -> AsyncScan<S, Self::Base, K, KeyedRows<U, F>> {
        let (query, rows, config) = self.keyed_parts::<AsyncDb<S>, U, F>(key_of);
        AsyncScan {
            source,
            core: ScanCore::new(query, rows, config),
        }
    }
}

/// The stream `load_stream::<M>` returns.
pub type ModelStream<'a, C, S, M> = LoadStream<
    'a,
    S,
    <C as ScanModelAsync<'a, S, M>>::Base,
    <C as ScanModelAsync<'a, S, M>>::Key,
    ModelRows<M>,
>;
/// The stream `load_batches_stream::<M>` returns.
pub type ModelBatchesStream<'a, C, S, M> = LoadBatchesStream<
    'a,
    S,
    <C as ScanModelAsync<'a, S, M>>::Base,
    <C as ScanModelAsync<'a, S, M>>::Key,
    ModelRows<M>,
>;
/// The stream `load_stream_keyed` returns.
pub type KeyedStream<'a, C, S, U, F> = LoadStream<
    'a,
    S,
    <C as ScanKeyedAsync<'a, S, U, F>>::Base,
    <C as ScanKeyedAsync<'a, S, U, F>>::Key,
    KeyedRows<U, F>,
>;
/// The stream `load_batches_stream_keyed` returns.
pub type KeyedBatchesStream<'a, C, S, U, F> = LoadBatchesStream<
    'a,
    S,
    <C as ScanKeyedAsync<'a, S, U, F>>::Base,
    <C as ScanKeyedAsync<'a, S, U, F>>::Key,
    KeyedRows<U, F>,
>;

/// Runs a [`Chunked`] scan as a [`Stream`] on an [`AsyncConnectionSource`]:
/// the async twin of [`RunChunkedDsl`](crate::RunChunkedDsl), method for
/// method (`load_iter` → `load_stream`, `load_batches` →
/// `load_batches_stream`, and the `*_keyed` variants).
///
/// The streams run exactly the statements of the iterators and return the same
/// errors; they are `Send` when the query and the source are, so they can be
/// moved into `tokio::spawn`.
pub trait RunChunkedAsyncDsl<S: AsyncConnectionSource>: Sized {
    /// Yields rows of model `M` one by one, loading `batch_size` at a time.
    fn load_stream<'a, M>(self, source: S) -> ModelStream<'a, Self, S, M>
    where
        Self: ScanModelAsync<'a, S, M>,
    {
        LoadStream {
            batches: Batches::new(self.into_async_scan(source)),
            buffer: Vec::new().into_iter(),
        }
    }

    /// Yields one `Vec<M>` per query; never an empty one.
    fn load_batches_stream<'a, M>(self, source: S) -> ModelBatchesStream<'a, Self, S, M>
    where
        Self: ScanModelAsync<'a, S, M>,
    {
        LoadBatchesStream {
            batches: Batches::new(self.into_async_scan(source)),
        }
    }

    /// Yields rows of the query's own selection, one by one; `key_of` reads the
    /// key from a row.
    fn load_stream_keyed<'a, U, F>(self, source: S, key_of: F) -> KeyedStream<'a, Self, S, U, F>
    where
        Self: ScanKeyedAsync<'a, S, U, F>,
    {
        LoadStream {
            batches: Batches::new(self.into_async_scan(source, key_of)),
            buffer: Vec::new().into_iter(),
        }
    }

    /// Yields one `Vec` of the query's own selection per query; `key_of` reads
    /// the key from a row.
    fn load_batches_stream_keyed<'a, U, F>(
        self,
        source: S,
        key_of: F,
    ) -> KeyedBatchesStream<'a, Self, S, U, F>
    where
        Self: ScanKeyedAsync<'a, S, U, F>,
    {
        LoadBatchesStream {
            batches: Batches::new(self.into_async_scan(source, key_of)),
        }
    }
}

impl<Q, K: Key, S: AsyncConnectionSource> RunChunkedAsyncDsl<S> for Chunked<Q, K> {}
