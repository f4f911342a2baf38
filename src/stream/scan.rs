//! The async driver of a scan and the two streams it feeds.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};

use super::{AsyncConnectionSource, AsyncDb, AsyncKeyCheck, AsyncRows};
use crate::backend::KeysetBackend;
use crate::engine::{Counters, EndReason, Handed, Progress};
use crate::error::Error;
use crate::iter::{BatchResult, FirstBatch, FirstSteps, ReadStep, ScanCore};
use crate::key::Key;
use crate::query::SeekQuery;
use crate::rows::{LoadedRow, RowType};
use crate::stored::StoredKey;

/// The async driver of a scan: runs what its [`ScanCore`] asks for on a
/// connection of the source, awaiting a timer between retries.
#[allow(missing_debug_implementations)]
pub struct AsyncScan<S, B, K: Key, R> {
    source: S,
    core: ScanCore<B, K, R>,
}

impl<S, B, K: Key, R> AsyncScan<S, B, K, R> {
    /// The scan `core` on connections of `source`.
    pub(crate) fn new(source: S, core: ScanCore<B, K, R>) -> Self {
        Self { source, core }
    }
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
    /// Loads the next non-empty batch, or `None` at the end: runs the steps
    /// the scan's core asks for, awaited.
    async fn next_batch(&mut self) -> BatchResult<R::Loaded> {
        loop {
            let step = self.core.step(AsyncDb::<S>::STORED_FORMS);
            match step {
                Err(e) => return Some(Err(e)),
                Ok(ReadStep::Checks(steps)) => {
                    let mut first = self.core.first()?;
                    if let Err(e) = first_steps(&mut self.source, &mut first, steps).await {
                        return Some(Err(e));
                    }
                }
                Ok(ReadStep::Load { plan, attempt }) => {
                    let (query, loader, trace) = self.core.statement()?;
                    let fetch = plan.fetch();
                    let mut state = (query, loader);
                    let loading =
                        self.source
                            .run(attempt > 1, &mut state, |conn, (query, loader)| {
                                loader.load_async(query, conn, fetch)
                            });
                    match trace.instrument(loading).await {
                        Ok(rows) => return self.core.loaded(rows),
                        Err(e) => {
                            if let Err(e) = self.core.failed(S::DEFAULT_MAX_RETRIES, e) {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Ok(ReadStep::Wait(wait)) => tokio::time::sleep(wait).await,
                Ok(ReadStep::End) => return None,
            }
        }
    }
}

/// Runs `steps`, the checks before the first batch, on connections of
/// `source`: the steps of the blocking drivers'
/// [`FirstBatch::run`](crate::iter::FirstBatch::run), awaited. Used by the
/// async scans and the async write jobs.
pub(crate) async fn first_steps<S, B, K, R>(
    source: &mut S,
    first: &mut FirstBatch<'_, B, K, R>,
    steps: FirstSteps,
) -> Result<(), Error>
where
    S: AsyncConnectionSource,
    AsyncDb<S>: KeysetBackend,
    K: Key,
    R: AsyncRows<S::Connection, B, K>,
    R::Loaded: Send,
    SeekQuery<B, K>: Send,
{
    if let Some(mut key_sql) = steps.key_check {
        first.key_check_attempted();
        let problem = source
            .run(false, &mut key_sql, |conn, sql| conn.key_problem(sql))
            .await;
        first.key_checked(problem)?;
    }
    if steps.probe {
        let mut state = first.probe_query();
        let rows = source
            .run(false, &mut state, |conn, (query, loader)| {
                loader.load_async(query, conn, 1)
            })
            .await;
        first.probed(rows)?;
    }
    if let Some(check) = steps.order {
        let (query, loader) = first.order_query();
        let mut state = (&check, query, loader);
        let found = source
            .run(false, &mut state, |conn, (check, query, loader)| {
                Box::pin(async move {
                    let prefix = match check.table() {
                        Some((schema, table)) => {
                            check.prefix(&conn.unique_column_sets_in(schema, table).await?)
                        }
                        None => 0,
                    };
                    let needs_plan = match check.index() {
                        Some((schema, table, columns)) if check.needs_plan(prefix) => {
                            !conn.has_index_in_order(schema, table, &columns).await?
                        }
                        _ => check.needs_plan(prefix),
                    };
                    let plan = match needs_plan {
                        true => Some(loader.explain_async(query, conn, 2).await?),
                        false => None,
                    };
                    Ok((prefix, plan))
                })
            })
            .await;
        first.order_checked::<AsyncDb<S>>(&check, found)?;
    }
    Ok(())
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

/// How often a row stream polls the batches it reads ahead: every this many
/// rows handed out.
const AHEAD_EVERY: usize = 64;

/// A batch loaded ahead, with the counters as of it.
type Ahead<L> = (BatchResult<L>, Counters);

/// The state both streams share: the scan, idle or loading a batch, the
/// batches loaded ahead of the one handed out (`prefetch`), and the counters
/// as of the last batch handed out.
struct Batches<'a, S, B, K: Key, R: RowType<K>> {
    state: State<'a, S, B, K, R>,
    /// Loaded, not yet handed out, in order, each with the counters as of
    /// it; the last may be the end or an error. At most `prefetch` of them.
    ready: VecDeque<Ahead<R::Loaded>>,
    handed: Handed<K::Value>,
    /// The counters as of the last batch handed out: what `progress()` shows
    /// while the scan is loading or batches wait in `ready`.
    shown: Counters,
}

impl<'a, S, B, K: Key, R: RowType<K>> Batches<'a, S, B, K, R> {
    fn new(scan: AsyncScan<S, B, K, R>) -> Self {
        let shown = scan.core.engine.counters();
        Self {
            state: State::Idle(Box::new(scan)),
            ready: VecDeque::new(),
            handed: Handed::new(),
            shown,
        }
    }

    fn progress(&self) -> Progress<K::Value> {
        match &self.state {
            State::Idle(scan) if self.ready.is_empty() => self.handed.progress(&scan.core.engine),
            _ => self.handed.progress_as_of(&self.shown),
        }
    }

    fn end_reason(&self) -> Option<EndReason> {
        if !self.ready.is_empty() {
            return None;
        }
        match &self.state {
            State::Idle(scan) => scan.core.engine.end,
            State::Loading(_) => self.shown.end,
        }
    }
}

/// The next batch of a scan, polled: what both streams are made of.
pub trait PollBatch<L> {
    /// Polls the next non-empty batch (`None` at the end).
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<BatchResult<L>>;

    /// Makes progress on the batches read ahead (`prefetch`), if any: starts
    /// loading the next one, or polls the one loading. Never waits.
    fn poll_ahead(&mut self, cx: &mut Context<'_>);
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
    /// Moves the idle scan into the future that loads its next batch.
    fn start(&mut self) {
        let state = std::mem::replace(
            &mut self.state,
            State::Loading(Box::pin(futures_util::future::pending())),
        );
        let State::Idle(mut scan) = state else {
            self.state = state;
            return;
        };
        self.state = State::Loading(Box::pin(async move {
            let batch = scan.next_batch().await;
            (batch, scan)
        }));
    }
}

impl<'a, S, B, K, R> PollBatch<R::Loaded> for Batches<'a, S, B, K, R>
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
            if let Some((batch, snap)) = self.ready.pop_front() {
                self.shown = snap;
                self.poll_ahead(cx);
                return Poll::Ready(batch);
            }
            match &mut self.state {
                State::Idle(scan) => {
                    if scan.core.engine.is_done() && scan.core.engine.rows_left() == Some(0) {
                        return Poll::Ready(None);
                    }
                    self.start();
                }
                State::Loading(load) => {
                    let (batch, scan) = std::task::ready!(load.poll_unpin(cx));
                    self.shown = scan.core.engine.counters();
                    self.state = State::Idle(scan);
                    if matches!(batch, Some(Ok(_))) {
                        self.poll_ahead(cx);
                    }
                    return Poll::Ready(batch);
                }
            }
        }
    }

    fn poll_ahead(&mut self, cx: &mut Context<'_>) {
        if !AsyncDb::<S>::ASYNC_READ_AHEAD || !S::READS_AHEAD {
            return;
        }
        loop {
            match &mut self.state {
                State::Idle(scan) => {
                    if !scan.core.engine.wants_ahead(self.ready.len()) {
                        return;
                    }
                    self.start();
                }
                State::Loading(load) => {
                    let Poll::Ready((batch, scan)) = load.poll_unpin(cx) else {
                        return;
                    };
                    let snap = scan.core.engine.counters();
                    self.state = State::Idle(scan);
                    let more = matches!(batch, Some(Ok(_)));
                    self.ready.push_back((batch, snap));
                    if !more {
                        return;
                    }
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

impl<'a, S, B, K: Key, R: RowType<K>> LoadBatchesStream<'a, S, B, K, R> {
    pub(crate) fn new(scan: AsyncScan<S, B, K, R>) -> Self {
        Self {
            batches: Batches::new(scan),
        }
    }
}

impl<'a, S, B, K: Key, R: RowType<K>> LoadStream<'a, S, B, K, R> {
    pub(crate) fn new(scan: AsyncScan<S, B, K, R>) -> Self {
        Self {
            batches: Batches::new(scan),
            buffer: Vec::new().into_iter(),
        }
    }
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
                self.batches.handed.last_key()
            }

            /// [`last_key`](Self::last_key) as the database stored it (see
            /// [`LoadIter::last_stored_key`](crate::LoadIter::last_stored_key)).
            pub fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
                self.batches.handed.last_stored_key()
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
    K: Key,
    R: RowType<K>,
    Batches<'a, S, B, K, R>: PollBatch<R::Loaded>,
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
        this.batches.handed.handed_out(rows.len() as u64, last);
        Poll::Ready(Some(Ok(rows
            .into_iter()
            .map(|r| r.into_parts().1)
            .collect())))
    }
}

impl<'a, S, B, K, R> Stream for LoadStream<'a, S, B, K, R>
where
    K: Key,
    R: RowType<K>,
    Batches<'a, S, B, K, R>: PollBatch<R::Loaded>,
{
    type Item = Result<R::Item, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.buffer.len() > 0 {
                // Every so many rows (and before the batch's last), not at
                // every row: polling a pending statement costs more than
                // handing out a row. Before the row is taken, so that a panic
                // there (a key closure's) loses no row handed out.
                if this.buffer.len() % AHEAD_EVERY == 1 {
                    this.batches.poll_ahead(cx);
                }
            }
            if let Some(row) = this.buffer.next() {
                let (k, t) = row.into_parts();
                this.batches.handed.handed_out(1, Some(k));
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

/// A scan's stream: its items, and where the scan stands. The async twin of
/// the iterators' accessors, implemented by [`LoadStream`] and
/// [`LoadBatchesStream`] (their inherent methods of the same names), and what
/// [`Chunked::load_stream`](crate::Chunked::load_stream) returns.
pub trait ScanStream: Stream {
    /// The key's value type.
    type Key;

    /// The key of the last row handed out (see
    /// [`LoadIter::last_key`](crate::LoadIter::last_key)).
    fn last_key(&self) -> Option<&Self::Key>;

    /// That key as the database stored it (see
    /// [`LoadIter::last_stored_key`](crate::LoadIter::last_stored_key)).
    fn last_stored_key(&self) -> Option<&StoredKey<Self::Key>>;

    /// Rows, batches, queries and retries so far (see
    /// [`LoadIter::progress`](crate::LoadIter::progress)).
    fn progress(&self) -> Progress<Self::Key>;

    /// Why the scan ended, once it has (see
    /// [`LoadIter::end_reason`](crate::LoadIter::end_reason)).
    fn end_reason(&self) -> Option<EndReason>;
}

macro_rules! scan_stream {
    ($($stream:ident),*) => {$(
        impl<'a, S, B, K, R> ScanStream for $stream<'a, S, B, K, R>
        where
            Self: Stream,
            K: Key,
            R: RowType<K>,
        {
            type Key = K::Value;

            fn last_key(&self) -> Option<&K::Value> {
                $stream::last_key(self)
            }

            fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
                $stream::last_stored_key(self)
            }

            fn progress(&self) -> Progress<K::Value> {
                $stream::progress(self)
            }

            fn end_reason(&self) -> Option<EndReason> {
                $stream::end_reason(self)
            }
        }
    )*};
}

scan_stream!(LoadStream, LoadBatchesStream);

/// The stream [`Chunked::load_stream`](crate::Chunked::load_stream) returns:
/// rows one by one, and where the scan stands. It holds the scan behind one
/// pointer, so its type names only the item and the key.
pub struct RowStream<'a, T, V> {
    inner: Pin<Box<dyn ScanStream<Item = Result<T, Error>, Key = V> + Send + 'a>>,
}

impl<'a, T, V> RowStream<'a, T, V> {
    pub(crate) fn new(
        stream: impl ScanStream<Item = Result<T, Error>, Key = V> + Send + 'a,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The key of the last row handed out; start a new scan after it to
    /// continue (see [`LoadIter::last_key`](crate::LoadIter::last_key)).
    pub fn last_key(&self) -> Option<&V> {
        self.inner.last_key()
    }

    /// That key as the database stored it (see
    /// [`LoadIter::last_stored_key`](crate::LoadIter::last_stored_key)).
    pub fn last_stored_key(&self) -> Option<&StoredKey<V>> {
        self.inner.last_stored_key()
    }

    /// Rows, batches, queries and retries so far.
    pub fn progress(&self) -> Progress<V> {
        self.inner.progress()
    }

    /// Why the scan ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.inner.end_reason()
    }
}

impl<T, V> Stream for RowStream<'_, T, V> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T, V> ScanStream for RowStream<'_, T, V> {
    type Key = V;

    fn last_key(&self) -> Option<&V> {
        RowStream::last_key(self)
    }

    fn last_stored_key(&self) -> Option<&StoredKey<V>> {
        RowStream::last_stored_key(self)
    }

    fn progress(&self) -> Progress<V> {
        RowStream::progress(self)
    }

    fn end_reason(&self) -> Option<EndReason> {
        RowStream::end_reason(self)
    }
}

impl<T, V: fmt::Debug + Clone> fmt::Debug for RowStream<'_, T, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}
