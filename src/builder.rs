//! The scan builder, [`Chunked`], and the methods that run it, [`RunChunkedDsl`].

use std::marker::PhantomData;

use diesel::query_dsl::LoadQuery;
use diesel::{Connection, RunQueryDsl};

use crate::error::Error;
use crate::iter::{LoadBatches, LoadIter, Scan, ScanConfig};
use crate::key::KeyPositions;
use crate::key::{Bounds, Key, KeysetBackend};
use crate::plan::{self, CountQuery, KeyColumns, Partition, PartitionQuery, PreparePlan};
use crate::query::{
    with_key_columns, KeyedModel, LoadBatch, PrepareKeyed, PrepareModel, SeekQuery,
};
use crate::source::ConnectionSource;
use crate::unique::UniqueIndexes;

/// The default number of rows per query, as in django-chunked-iterator.
pub const DEFAULT_BATCH_SIZE: u64 = 1000;

/// A query to be scanned in key order, one `LIMIT`ed query at a time.
///
/// Made by [`chunked_by`](crate::ChunkedDsl::chunked_by); configured with the
/// methods below; run with [`RunChunkedDsl`]'s `load_iter` / `load_batches`.
/// Nothing runs until the iterator is advanced.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// let titles: Vec<String> = posts::table
///     .filter(posts::published.eq(true))
///     .chunked_by(posts::id)
///     .batch_size(2)      // SELECT … WHERE published AND id > ? ORDER BY id LIMIT 2
///     .desc()             // … id < ? ORDER BY id DESC …
///     .limit_total(2)     // stop after 2 rows
///     .load_iter::<Post>(conn)
///     .map(|p| p.map(|p| p.title))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(titles, ["five", "three"]);
/// # Ok(()) }
/// ```
#[must_use = "a chunked query does nothing until `load_iter` or `load_batches` runs it"]
pub struct Chunked<Q, K: Key> {
    query: Q,
    key: K,
    batch_size: u64,
    limit_total: Option<u64>,
    desc: bool,
    start_after: Option<K::Value>,
    end_at: Option<K::Value>,
    max_retries: Option<u32>,
    cache_statements: bool,
    within: Option<Partition<K::Value>>,
}

impl<Q: Clone, K: Key> Clone for Chunked<Q, K> {
    fn clone(&self) -> Self {
        Self {
            query: self.query.clone(),
            key: self.key,
            batch_size: self.batch_size,
            limit_total: self.limit_total,
            desc: self.desc,
            start_after: self.start_after.clone(),
            end_at: self.end_at.clone(),
            max_retries: self.max_retries,
            cache_statements: self.cache_statements,
            within: self.within.clone(),
        }
    }
}

impl<Q, K: Key> Chunked<Q, K> {
    pub(crate) fn new(query: Q, key: K) -> Self {
        Self {
            query,
            key,
            batch_size: DEFAULT_BATCH_SIZE,
            limit_total: None,
            desc: false,
            start_after: None,
            end_at: None,
            max_retries: None,
            cache_statements: true,
            within: None,
        }
    }

    /// Rows per query (the `LIMIT`); 1000 by default.
    ///
    /// `batch_size(0)` is not a panic: the first `next()` returns
    /// [`Error::InvalidBatchSize`](crate::Error::InvalidBatchSize) and runs no query.
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = n;
        self
    }

    /// At most `n` rows in all. The last query asks only for what is left
    /// (`LIMIT` shrinks), and no query runs once `n` rows were loaded;
    /// `limit_total(0)` runs none.
    pub fn limit_total(mut self, n: u64) -> Self {
        self.limit_total = Some(n);
        self
    }

    /// Scans in descending key order: `WHERE key < $last ORDER BY key DESC`.
    pub fn desc(mut self) -> Self {
        self.desc = true;
        self
    }

    /// Scans in ascending key order (the default).
    pub fn asc(mut self) -> Self {
        self.desc = false;
        self
    }

    /// Starts after `key`, exclusively: rows with a key greater than `key`
    /// (less than `key` for [`desc`](Self::desc)).
    ///
    /// Pass the [`last_key`](crate::LoadIter::last_key) of an interrupted scan to
    /// resume it with exactly the next row.
    pub fn start_after(mut self, key: impl Into<K::Value>) -> Self {
        self.start_after = Some(key.into());
        self
    }

    /// Ends at `key`, inclusively: rows with a key up to and including `key`
    /// (down to it for [`desc`](Self::desc)).
    pub fn end_at(mut self, key: impl Into<K::Value>) -> Self {
        self.end_at = Some(key.into());
        self
    }

    /// How often a batch that failed for a transient reason (the connection broke,
    /// the pool timed out) is run again; 0 disables retries. The default is 3 for
    /// pools and 0 for a borrowed connection, which cannot be replaced.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Whether the connection may keep the batch statement prepared (the default),
    /// or must send it unnamed each time.
    ///
    /// Every batch of a scan has the same SQL, so by default the connection
    /// prepares it once and only binds new values for the next batches (Diesel's
    /// prepared statement cache). `cache_statements(false)` sends each batch as an
    /// unnamed statement instead: on PostgreSQL it is parsed, bound and run in one
    /// round trip, so it needs no state on the server connection between batches.
    ///
    /// That is what a pooler in transaction mode needs, such as pgbouncer before
    /// 1.21, or later versions without `max_prepared_statements`: it hands each
    /// transaction (each batch) to any server connection, where a statement
    /// prepared on another one does not exist. The connection-wide alternative is
    /// Diesel's `conn.set_prepared_statement_cache_size(CacheSize::Disabled)`; see
    /// the README's section on poolers.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let n = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .cache_statements(false)
    ///     .load_iter::<Post>(conn)
    ///     .count();
    /// assert_eq!(n, 5);
    /// # Ok(()) }
    /// ```
    pub fn cache_statements(mut self, on: bool) -> Self {
        self.cache_statements = on;
        self
    }

    /// Restricts the scan to one slice of the key range: the rows with
    /// `partition.start_after < key <= partition.end_at`, in either direction.
    ///
    /// On an ascending scan this is `start_after(..)` and `end_at(..)`; both can
    /// still be set as well (to resume inside a slice, say), and every bound
    /// applies.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let parts = posts::table.chunked_by(posts::id).partitions(2, conn)?;
    /// let second: Vec<i32> = posts::table
    ///     .chunked_by(posts::id)
    ///     .within(&parts[1])  // WHERE posts.id > 3
    ///     .desc()             // ORDER BY posts.id DESC
    ///     .load_iter::<Post>(conn)
    ///     .map(|p| p.map(|p| p.id))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(second, [5, 4]);
    /// # Ok(()) }
    /// ```
    pub fn within(mut self, partition: &Partition<K::Value>) -> Self {
        self.within = Some(partition.clone());
        self
    }

    /// Splits the key range of the query into `n` disjoint slices that together
    /// cover it, holding equal numbers of rows (to one row), in one query.
    ///
    /// The query's filters and the scan's bounds decide which rows are counted;
    /// hand each slice to a worker, which scans it with
    /// [`within`](Self::within) on the same query. The first slice has no lower
    /// end and the last no upper end, so rows inserted later at either end are
    /// still covered. With fewer than `n` rows there is one slice per row (and
    /// one open slice for no rows at all). The statement is in the
    /// [`plan`](crate::plan) module's docs: window functions over the key, one
    /// pass over the key's index, `n` rows back.
    ///
    /// `n = 0` and `n` above [`MAX_PARTITIONS`](crate::plan::MAX_PARTITIONS) are
    /// [`Error::InvalidPartitionCount`]. [`limit_total`](Self::limit_total) does
    /// not limit the rows that are split (each worker's scan applies it). A query
    /// with `.group_by(..)` is a compile error here (scanning it works).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let parts = posts::table.chunked_by(posts::id).partitions(2, conn)?;
    /// assert_eq!(parts.len(), 2);
    /// assert_eq!((parts[0].start_after, parts[0].end_at, parts[0].rows), (None, Some(3), 3));
    /// assert_eq!((parts[1].start_after, parts[1].end_at, parts[1].rows), (Some(3), None, 2));
    ///
    /// // every slice scanned: each row exactly once
    /// let mut ids = Vec::new();
    /// for p in &parts {
    ///     for post in posts::table.chunked_by(posts::id).within(p).load_iter::<Post>(&mut *conn) {
    ///         ids.push(post?.id);
    ///     }
    /// }
    /// assert_eq!(ids, [1, 2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn partitions<'a, C>(
        self,
        n: usize,
        conn: &mut C,
    ) -> Result<Vec<Partition<K::Value>>, Error>
    where
        C: Connection,
        C::Backend: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        PartitionQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>, K>:
            LoadQuery<'a, C, (K::Value, i64, i64)>,
    {
        let count = match i64::try_from(n) {
            Ok(c) if c > 0 && n <= plan::MAX_PARTITIONS => c,
            _ => return Err(Error::InvalidPartitionCount { n }),
        };
        let bounds = self.bounds();
        let inner = self
            .query
            .prepare_plan(self.key, bounds, plan::key_columns(self.key))?;
        let kept = plan::partition_query::<_, K>(inner, count)
            .load(conn)
            .map_err(|source| Error::Query {
                context: "computing the partitions",
                source,
            })?;
        Ok(plan::slices(kept))
    }

    /// How many rows the scan will yield, for a progress bar: cheap where the
    /// backend has an estimate, exact otherwise.
    ///
    /// On PostgreSQL this is the planner's estimate for the scan's query
    /// (`EXPLAIN`, the top node's row count): nothing is scanned, and it is only
    /// as good as the table's statistics (`ANALYZE`). On SQLite and MariaDB/MySQL,
    /// whose plans carry no usable row estimate for a filtered query, it is an
    /// exact `SELECT COUNT(*)` over the scan's query, which reads the matching
    /// keys. Either way the query's filters and the scan's bounds apply, and the
    /// result is capped by [`limit_total`](Self::limit_total).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let published = posts::table.filter(posts::published.eq(true)).chunked_by(posts::id);
    /// assert_eq!(published.estimate_total(conn)?, 3); // SQLite: an exact count
    /// # Ok(()) }
    /// ```
    pub fn estimate_total<'a, C>(self, conn: &mut C) -> Result<u64, Error>
    where
        C: Connection,
        C::Backend: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        CountQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>>: LoadQuery<'a, C, String>,
    {
        let bounds = self.bounds();
        let cap = self.limit_total;
        let inner = self
            .query
            .prepare_plan(self.key, bounds, plan::key_columns(self.key))?;
        let out: String = plan::count_query::<_, C::Backend>(inner)
            .get_result(conn)
            .map_err(|source| Error::Query {
                context: "estimating the rows of the scan",
                source,
            })?;
        let rows = if <C::Backend as KeysetBackend>::PLANNER_ESTIMATE {
            plan::plan_rows(&out)
        } else {
            out.trim().parse().ok()
        }
        .ok_or(Error::Query {
            context: "estimating the rows of the scan",
            source: diesel::result::Error::DeserializationError(
                format!("no row count in {out:?}").into(),
            ),
        })?;
        Ok(cap.map_or(rows, |cap| rows.min(cap)))
    }

    /// Checks the schema: succeeds if the table has a primary key or a unique index
    /// whose columns are all key columns, so no two rows can share a key value.
    ///
    /// A scan also stops with [`Error::DuplicateKey`] when two rows of one batch
    /// share a key, but it cannot see a run of equal keys that starts exactly at a
    /// batch boundary; this check can, before the scan. The table is named after
    /// the `table!` module (a table renamed with `#[sql_name]` is not found and
    /// fails the check).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::{prelude::*, Error};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// posts::table.chunked_by(posts::id).verify_unique(conn)?;
    /// let err = posts::table.chunked_by(posts::title).verify_unique(conn).unwrap_err();
    /// assert!(matches!(err, Error::NotUnique { .. }));
    /// # Ok(()) }
    /// ```
    pub fn verify_unique<C: UniqueIndexes>(&self, conn: &mut C) -> Result<(), Error> {
        let names = self.key.names();
        let columns = self.key.describe();
        let table = names.first().map(|(t, _)| *t).unwrap_or_default();
        if names.iter().any(|(t, _)| *t != table) {
            return Err(Error::NotUnique {
                table: names.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", "),
                columns,
            });
        }
        let sets = conn
            .unique_column_sets(table)
            .map_err(|source| Error::Query {
                context: "reading the table's unique indexes",
                source,
            })?;
        let covered = sets
            .iter()
            .any(|set| !set.is_empty() && set.iter().all(|c| names.iter().any(|(_, k)| k == c)));
        if covered {
            Ok(())
        } else {
            Err(Error::NotUnique {
                table: table.to_string(),
                columns,
            })
        }
    }

    fn bounds(&self) -> Bounds<K::Value> {
        let mut bounds = Bounds {
            after: self.start_after.clone(),
            until: self.end_at.clone(),
            lower: None,
            upper: None,
            desc: self.desc,
        };
        if let Some(Partition {
            start_after: lower,
            end_at: upper,
            ..
        }) = self.within.clone()
        {
            // Ascending, a slice's ends are the scan's own bounds when those are
            // free, so `within` renders exactly as `start_after`/`end_at`.
            let asc = !self.desc;
            match lower {
                Some(v) if asc && bounds.after.is_none() => bounds.after = Some(v),
                v => bounds.lower = v,
            }
            match upper {
                Some(v) if asc && bounds.until.is_none() => bounds.until = Some(v),
                v => bounds.upper = v,
            }
        }
        bounds
    }

    fn config(&self) -> ScanConfig {
        ScanConfig {
            batch_size: self.batch_size,
            limit_total: self.limit_total,
            max_retries: self.max_retries,
            cache_statements: self.cache_statements,
        }
    }
}

/// The prepared query of a planning method on query `Q` with selection `X`.
pub type PlanInner<'a, Q, K, X, DB> = <Q as PreparePlan<'a, K, X, DB>>::Inner;

/// The backend a connection source talks to.
pub type Db<S> = <<S as ConnectionSource>::Connection as Connection>::Backend;

/// The prepared query of `load_iter::<M>` on query `Q`.
pub type ModelBase<'a, Q, K, M, DB> = <Q as PrepareModel<'a, K, M, DB>>::Base;
/// The prepared query of `load_iter_keyed` on query `Q`.
pub type KeyedBase<'a, Q, K, DB> = <Q as PrepareKeyed<'a, K, DB>>::Base;

/// What a scan with key `K` yields per row: `M` for `load_iter::<M>`, the
/// selection `U` for the `*_keyed` terminals.
pub trait RowType<K: Key> {
    /// What the iterators yield.
    type Item;
    /// A loaded row: the item and its key, kept as loaded until handed out.
    type Loaded: LoadedRow<K::Value, Self::Item>;
}

/// How the rows of a batch are loaded and their keys read.
pub trait Rows<Conn, B, K: Key>: RowType<K> {
    /// Loads one batch.
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<Self::Loaded>>;
}

/// A loaded row: an item of type `T` with its key of type `V`.
pub trait LoadedRow<V, T> {
    /// The row's key.
    fn key(&self) -> &V;
    /// The key and the item.
    fn into_parts(self) -> (V, T);
}

impl<V, T> LoadedRow<V, T> for (V, T) {
    fn key(&self) -> &V {
        &self.0
    }
    fn into_parts(self) -> (V, T) {
        self
    }
}

impl<K: Key, M> LoadedRow<K::Value, M> for KeyedModel<K, M> {
    fn key(&self) -> &K::Value {
        &self.key
    }
    fn into_parts(self) -> (K::Value, M) {
        (self.key, self.model)
    }
}

/// Rows of model `M`, each with its key read from the same row
/// ([`KeyedModel`]).
#[derive(Debug)]
pub struct ModelRows<M> {
    key_columns: KeyPositions,
    _model: PhantomData<fn() -> M>,
}

impl<K: Key, M> RowType<K> for ModelRows<M> {
    type Item = M;
    type Loaded = KeyedModel<K, M>;
}

impl<Conn, B, K, M> Rows<Conn, B, K> for ModelRows<M>
where
    K: Key,
    SeekQuery<B, K>: LoadBatch<Conn, KeyedModel<K, M>>,
{
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<KeyedModel<K, M>>> {
        with_key_columns(self.key_columns, || query.load_batch(conn, limit))
    }
}

/// Rows of the query's own selection, with the key read by a closure.
pub struct KeyedRows<U, F> {
    key_of: F,
    _row: PhantomData<fn() -> U>,
}

impl<U, F> std::fmt::Debug for KeyedRows<U, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedRows")
    }
}

impl<K: Key, U, F> RowType<K> for KeyedRows<U, F> {
    type Item = U;
    type Loaded = (K::Value, U);
}

impl<Conn, B, K, U, F> Rows<Conn, B, K> for KeyedRows<U, F>
where
    K: Key,
    F: FnMut(&U) -> K::Value,
    SeekQuery<B, K>: LoadBatch<Conn, U>,
{
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<(K::Value, U)>> {
        let rows = query.load_batch(conn, limit)?;
        Ok(rows.into_iter().map(|u| ((self.key_of)(&u), u)).collect())
    }
}

/// A [`Chunked`] scan that can load model `M` from source `S`: every bound
/// `load_iter::<M>` needs, in one place.
pub trait ScanModel<'a, S: ConnectionSource, M> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
    #[doc(hidden)]
    fn into_scan(self, source: S) -> Scan<S, Self::Base, Self::Key, ModelRows<M>>;
}

impl<'a, Q, K, S, M> ScanModel<'a, S, M> for Chunked<Q, K>
where
    K: Key,
    S: ConnectionSource,
    Q: PrepareModel<'a, K, M, Db<S>>,
    ModelRows<M>: Rows<S::Connection, ModelBase<'a, Q, K, M, Db<S>>, K>,
{
    type Base = ModelBase<'a, Q, K, M, Db<S>>;
    type Key = K;

    fn into_scan(self, source: S) -> Scan<S, Self::Base, K, ModelRows<M>> {
        let (bounds, config) = (self.bounds(), self.config());
        let (query, key_columns) = match self.query.prepare_model(self.key, bounds) {
            Ok((query, at)) => (Ok(query), at),
            Err(e) => (Err(e), [0; 3]),
        };
        let rows = ModelRows {
            key_columns,
            _model: PhantomData,
        };
        Scan::new(source, query, rows, config)
    }
}

/// A [`Chunked`] scan that can load its own selection `U` from source `S`, reading
/// keys with `F`.
pub trait ScanKeyed<'a, S: ConnectionSource, U, F> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
    #[doc(hidden)]
    fn into_scan(self, source: S, key_of: F) -> Scan<S, Self::Base, Self::Key, KeyedRows<U, F>>;
}

impl<'a, Q, K, S, U, F> ScanKeyed<'a, S, U, F> for Chunked<Q, K>
where
    K: Key,
    S: ConnectionSource,
    Q: PrepareKeyed<'a, K, Db<S>>,
    F: FnMut(&U) -> K::Value,
    KeyedRows<U, F>: Rows<S::Connection, KeyedBase<'a, Q, K, Db<S>>, K>,
{
    type Base = KeyedBase<'a, Q, K, Db<S>>;
    type Key = K;

    fn into_scan(self, source: S, key_of: F) -> Scan<S, Self::Base, K, KeyedRows<U, F>> {
        let (bounds, config) = (self.bounds(), self.config());
        let query = self.query.prepare_keyed(self.key, bounds);
        let rows = KeyedRows {
            key_of,
            _row: PhantomData,
        };
        Scan::new(source, query, rows, config)
    }
}

/// The iterator `load_iter::<M>` returns.
pub type ModelIter<'a, C, S, M> =
    LoadIter<S, <C as ScanModel<'a, S, M>>::Base, <C as ScanModel<'a, S, M>>::Key, ModelRows<M>>;
/// The iterator `load_batches::<M>` returns.
pub type ModelBatches<'a, C, S, M> =
    LoadBatches<S, <C as ScanModel<'a, S, M>>::Base, <C as ScanModel<'a, S, M>>::Key, ModelRows<M>>;
/// The iterator `load_iter_keyed` returns.
pub type KeyedIter<'a, C, S, U, F> = LoadIter<
    S,
    <C as ScanKeyed<'a, S, U, F>>::Base,
    <C as ScanKeyed<'a, S, U, F>>::Key,
    KeyedRows<U, F>,
>;
/// The iterator `load_batches_keyed` returns.
pub type KeyedBatches<'a, C, S, U, F> = LoadBatches<
    S,
    <C as ScanKeyed<'a, S, U, F>>::Base,
    <C as ScanKeyed<'a, S, U, F>>::Key,
    KeyedRows<U, F>,
>;

/// Runs a [`Chunked`] scan on a [`ConnectionSource`]: `&mut conn`, or a pool.
///
/// Like Diesel's `RunQueryDsl<Conn>`, the source is a parameter of the trait so
/// that `load_iter::<Post>(&mut conn)` names only the model.
///
/// `load_iter::<M>` and `load_batches::<M>` select `M::as_select()`, plus the key
/// columns when `M` does not select them, so the key does not have to be a field
/// of `M`; the query must not have its own
/// `.select(..)` (that is a compile error). The `*_keyed` variants keep the
/// query's selection and read the key with a closure.
pub trait RunChunkedDsl<S: ConnectionSource>: Sized {
    /// Yields rows of model `M` one by one, loading `batch_size` at a time.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// for post in posts::table.chunked_by(posts::id).load_iter::<Post>(conn) {
    ///     let post = post?;
    ///     assert!(post.id >= 1);
    /// }
    /// # Ok(()) }
    /// ```
    fn load_iter<'a, M>(self, source: S) -> ModelIter<'a, Self, S, M>
    where
        Self: ScanModel<'a, S, M>,
    {
        LoadIter::new(self.into_scan(source))
    }

    /// Yields one `Vec<M>` per query; never an empty one.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let sizes: Vec<usize> = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .load_batches::<Post>(conn)
    ///     .map(|b| b.map(|b| b.len()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(sizes, [2, 2, 1]);
    /// # Ok(()) }
    /// ```
    fn load_batches<'a, M>(self, source: S) -> ModelBatches<'a, Self, S, M>
    where
        Self: ScanModel<'a, S, M>,
    {
        LoadBatches::new(self.into_scan(source))
    }

    /// Yields rows of the query's own selection, one by one; `key_of` reads the
    /// key from a row.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let rows: Vec<(i32, String)> = posts::table
    ///     .select((posts::id, posts::title))
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .load_iter_keyed(conn, |row: &(i32, String)| row.0)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(rows[0], (1, "one".to_string()));
    /// # Ok(()) }
    /// ```
    fn load_iter_keyed<'a, U, F>(self, source: S, key_of: F) -> KeyedIter<'a, Self, S, U, F>
    where
        Self: ScanKeyed<'a, S, U, F>,
    {
        LoadIter::new(self.into_scan(source, key_of))
    }

    /// Yields one `Vec` of the query's own selection per query; `key_of` reads the
    /// key from a row.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let batches: Vec<Vec<i32>> = posts::table
    ///     .select(posts::id)
    ///     .chunked_by(posts::id)
    ///     .batch_size(3)
    ///     .load_batches_keyed(conn, |id: &i32| *id)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(batches, [vec![1, 2, 3], vec![4, 5]]);
    /// # Ok(()) }
    /// ```
    fn load_batches_keyed<'a, U, F>(self, source: S, key_of: F) -> KeyedBatches<'a, Self, S, U, F>
    where
        Self: ScanKeyed<'a, S, U, F>,
    {
        LoadBatches::new(self.into_scan(source, key_of))
    }
}

impl<Q, K: Key, S: ConnectionSource> RunChunkedDsl<S> for Chunked<Q, K> {}

impl<Q, K: Key> std::fmt::Debug for Chunked<Q, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunked")
            .field("key", &self.key.describe())
            .field("batch_size", &self.batch_size)
            .field("limit_total", &self.limit_total)
            .field("desc", &self.desc)
            .field("start_after", &self.start_after)
            .field("end_at", &self.end_at)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}
