//! Scans as [`Stream`]s on diesel-async connections (feature `async`).
//!
//! The async twins of `load_iter` / `load_batches` are `load_stream` /
//! `load_batches_stream` ([`RunChunkedAsyncDsl`], and `Chunked::load_stream`):
//! the same statements, bounds,
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

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncConnectionCore};
use futures_util::future::BoxFuture;

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, KeyedBase, ModelBase};
use crate::iter::ScanCore;
use crate::key::Key;
use crate::query::KeyedModel;
use crate::query::{PrepareKeyed, PrepareModel};
use crate::rows::{KeyedRows, ModelRows, RowType};
use crate::source::AttemptError;

mod check;
mod plan;
#[cfg(any(feature = "deadpool", feature = "bb8"))]
mod pool;
mod rows;
mod scan;
pub(crate) mod write;

pub use check::AsyncKeyCheck;
pub use rows::AsyncRows;
pub use scan::{AsyncScan, LoadBatchesStream, LoadStream, RowStream, ScanStream};

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

    /// Whether a stream on this source reads batches ahead when asked to
    /// ([`prefetch`](crate::Chunked::prefetch)). A connection lent to the
    /// stream does; a pool does not, since a batch loading ahead would hold
    /// one of its connections while your code runs (and a loop body that
    /// needs the pool's last connection would wait for ever).
    const READS_AHEAD: bool = true;

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

/// A [`Chunked`] scan that can load model `M` from async source `S`: the async
/// twin of `ScanModel`.
pub trait ScanModelAsync<'a, S: AsyncConnectionSource, M> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
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
        AsyncScan::new(source, ScanCore::new(query, rows, config))
    }
}

/// A [`Chunked`] scan that can load its own selection `U` from async source
/// `S`, reading keys with `F`: the async twin of `ScanKeyed`.
pub trait ScanKeyedAsync<'a, S: AsyncConnectionSource, U, F> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
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
        AsyncScan::new(source, ScanCore::new(query, rows, config))
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

/// Runs a [`Chunked`] scan as a `Stream` on an [`AsyncConnectionSource`]:
/// the async twin of [`RunChunkedDsl`](crate::RunChunkedDsl), method for
/// method (`load_iter` → `load_stream`, `load_batches` →
/// `load_batches_stream`, and the `*_keyed` variants).
///
/// The streams run exactly the statements of the iterators and return the same
/// errors; they are `Send` when the query and the source are, so they can be
/// moved into `tokio::spawn`.
pub trait RunChunkedAsyncDsl<S: AsyncConnectionSource>: Sized {
    /// Yields one `Vec<M>` per query; never an empty one.
    fn load_batches_stream<'a, M>(self, source: S) -> ModelBatchesStream<'a, Self, S, M>
    where
        Self: ScanModelAsync<'a, S, M>,
    {
        LoadBatchesStream::new(self.into_async_scan(source))
    }

    /// Yields rows of the query's own selection, one by one; `key_of` reads the
    /// key from a row.
    fn load_stream_keyed<'a, U, F>(self, source: S, key_of: F) -> KeyedStream<'a, Self, S, U, F>
    where
        Self: ScanKeyedAsync<'a, S, U, F>,
    {
        LoadStream::new(self.into_async_scan(source, key_of))
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
        LoadBatchesStream::new(self.into_async_scan(source, key_of))
    }
}

impl<Q, K: Key, S: AsyncConnectionSource> RunChunkedAsyncDsl<S> for Chunked<Q, K> {}

/// A source a [`Chunked`] scan can stream rows of model `M` from: every
/// [`AsyncConnectionSource`] for which the scan's query can load `M`. The bound
/// of [`Chunked::load_stream`].
pub trait ModelSource<'s, Q, K: Key, M>: AsyncConnectionSource {
    /// Streams `scan`'s rows from this source.
    fn rows(self, scan: Chunked<Q, K>) -> RowStream<'s, M, K::Value>;
}

impl<'s, 'q, Q, K, M, S> ModelSource<'s, Q, K, M> for S
where
    S: AsyncConnectionSource + 's,
    AsyncDb<S>: KeysetBackend,
    K: Key + Send + 's,
    K::Value: Send,
    M: Send + 's,
    Chunked<Q, K>: ScanModelAsync<'q, S, M, Key = K>,
    <Chunked<Q, K> as ScanModelAsync<'q, S, M>>::Base: Send + 's,
    ModelRows<M>: AsyncRows<S::Connection, <Chunked<Q, K> as ScanModelAsync<'q, S, M>>::Base, K>
        + RowType<K, Item = M, Loaded = KeyedModel<K, M>>,
{
    fn rows(self, scan: Chunked<Q, K>) -> RowStream<'s, M, K::Value> {
        RowStream::new(LoadStream::new(scan.into_async_scan(self)))
    }
}

impl<Q, K: Key> Chunked<Q, K> {
    /// Yields rows of model `M` one by one, loading `batch_size` at a time:
    /// the twin of [`load_iter`](crate::RunChunkedDsl::load_iter).
    ///
    /// An inherent method, so that diesel-async's `RunQueryDsl` in scope (whose
    /// own `load_stream` applies to every type) does not make the call
    /// ambiguous. The stream is `Send`, so it can be moved into
    /// `tokio::spawn`; its model and query must be `Send` too.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_chunked_iterator::prelude::*;
    /// use futures_util::TryStreamExt;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # rt.block_on(async {
    /// use diesel_async::RunQueryDsl; // in scope, as in any diesel-async code
    /// # let path = std::env::temp_dir().join(format!("doc-stream-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
    /// let mut posts = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .desc()
    ///     .load_stream::<Post>(&mut conn);
    /// let mut ids = Vec::new();
    /// while let Some(post) = posts.try_next().await? {
    ///     ids.push(post.id);
    /// }
    /// assert_eq!(ids, [5, 4, 3, 2, 1]);
    /// assert_eq!(posts.progress().queries, 3);
    /// assert_eq!(posts.last_key(), Some(&1));
    /// # drop(posts); drop(conn); std::fs::remove_file(&path)?;
    /// # Ok::<_, Box<dyn std::error::Error>>(()) })?;
    /// # Ok(()) }
    /// ```
    pub fn load_stream<'s, M>(
        self,
        source: impl ModelSource<'s, Q, K, M>,
    ) -> RowStream<'s, M, K::Value> {
        source.rows(self)
    }
}
