//! Running a scan: the terminals of [`RunChunkedDsl`], the one bound each of
//! them needs of a [`Chunked`] scan, and the types they return.

use std::marker::PhantomData;

use diesel::backend::Backend;

use super::{Chunked, Db};
use crate::engine::ScanConfig;
use crate::error::Error;
use crate::iter::{LoadBatches, LoadIter, Scan};
use crate::key::Key;
use crate::query::{PrepareKeyed, PrepareModel};
use crate::rows::{KeyedRows, ModelRows, Rows};
use crate::source::ConnectionSource;
use crate::transfer::TransferJob;
use crate::write::{DeleteJob, ForEachBatch, UpdateJob};

/// What every driver of `load_iter::<M>` / `load_iter_keyed` starts from: the
/// prepared query (or why it cannot run), the row loader, the configuration.
type ScanParts<B, K, R> = (Result<crate::query::SeekQuery<B, K>, Error>, R, ScanConfig);

impl<Q, K: Key> Chunked<Q, K> {
    /// The parts of a scan loading model `M` on backend `DB`.
    pub(crate) fn model_parts<'a, DB, M>(
        self,
    ) -> ScanParts<ModelBase<'a, Q, K, M, DB>, K, ModelRows<M>>
    where
        DB: Backend,
        Q: PrepareModel<'a, K, M, DB>,
    {
        let (bounds, config) = (self.bounds(), self.config());
        let (query, key_columns) = match self.query.prepare_model(self.key, bounds) {
            Ok((query, at)) => (Ok(query), at),
            Err(e) => (Err(e), [0; 3]),
        };
        let rows = ModelRows {
            key_columns,
            _model: PhantomData,
        };
        (query, rows, config)
    }

    /// The parts of a scan loading the query's own selection `U` on backend
    /// `DB`, with keys read by `key_of`.
    pub(crate) fn keyed_parts<'a, DB, U, F>(
        self,
        key_of: F,
    ) -> ScanParts<KeyedBase<'a, Q, K, DB>, K, KeyedRows<U, F>>
    where
        DB: Backend,
        Q: PrepareKeyed<'a, K, DB>,
    {
        let (bounds, config) = (self.bounds(), self.config());
        let query = self.query.prepare_keyed(self.key, bounds);
        let rows = KeyedRows {
            key_of,
            _row: PhantomData,
        };
        (query, rows, config)
    }
}

/// The prepared query of `load_iter::<M>` on query `Q`.
pub type ModelBase<'a, Q, K, M, DB> = <Q as PrepareModel<'a, K, M, DB>>::Base;
/// The prepared query of `load_iter_keyed` on query `Q`.
pub type KeyedBase<'a, Q, K, DB> = <Q as PrepareKeyed<'a, K, DB>>::Base;

/// A [`Chunked`] scan that can load model `M` from source `S`: every bound
/// `load_iter::<M>` needs, in one place.
pub trait ScanModel<'a, S: ConnectionSource, M> {
    /// The prepared query.
    type Base;
    /// The key.
    type Key: Key;
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
        let (query, rows, config) = self.model_parts::<Db<S>, M>();
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
        let (query, rows, config) = self.keyed_parts::<Db<S>, U, F>(key_of);
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
/// The write verbs (`update_all`, `delete_all`, `for_each_batch`) also take
/// an async source (feature `async`: a diesel-async connection or pool), and
/// then return a future of the same report: one verb, one trait, whichever
/// the source (see [async write jobs](crate::guide::writes#async-write-jobs)).
///
/// `load_iter::<M>` and `load_batches::<M>` select `M::as_select()`, plus the key
/// columns when `M` does not select them, so the key does not have to be a field
/// of `M`; the query must not have its own
/// `.select(..)` (that is a compile error). The `*_keyed` variants keep the
/// query's selection and read the key with a closure.
pub trait RunChunkedDsl<S>: Sized {
    /// Yields rows of model `M` one by one, loading `batch_size` at a time.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
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
        S: ConnectionSource,
        Self: ScanModel<'a, S, M>,
    {
        LoadIter::new(self.into_scan(source))
    }

    /// Yields one `Vec<M>` per query; never an empty one.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
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
        S: ConnectionSource,
        Self: ScanModel<'a, S, M>,
    {
        LoadBatches::new(self.into_scan(source))
    }

    /// Yields rows of the query's own selection, one by one; `key_of` reads the
    /// key from a row.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
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
        S: ConnectionSource,
        Self: ScanKeyed<'a, S, U, F>,
    {
        LoadIter::new(self.into_scan(source, key_of))
    }

    /// Yields one `Vec` of the query's own selection per query; `key_of` reads the
    /// key from a row.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
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
        S: ConnectionSource,
        Self: ScanKeyed<'a, S, U, F>,
    {
        LoadBatches::new(self.into_scan(source, key_of))
    }

    /// Updates the query's rows in batches, each batch one transaction:
    /// `UPDATE <table> SET <changes> WHERE <the query's filters> AND key > $lo
    /// AND key <= $hi`, with `$hi` the last key of the batch, read in the same
    /// transaction (see the [writes guide](crate::guide::writes)). Each row the
    /// query matches is written at most once, also when `changes` sets a
    /// column the query filters on.
    ///
    /// The query must be one table's (a join, a boxed query or a custom
    /// `.select(..)` is a compile error: use
    /// [`for_each_batch`](Self::for_each_batch)).
    ///
    /// Returns `Result<WriteReport<_>, Error>`; on an async source, a future
    /// of it.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// // BEGIN; SELECT posts.id FROM posts WHERE NOT published AND 1 = 1 ORDER BY posts.id LIMIT 2
    /// //        UPDATE posts SET published = true WHERE NOT published AND posts.id <= 2; COMMIT
    /// // BEGIN; SELECT ... AND posts.id > 2 ...; UPDATE ... AND posts.id > 2 AND posts.id <= 4; COMMIT
    /// let report = posts::table
    ///     .filter(posts::published.eq(false))
    ///     .chunked_by(posts::id)
    ///     .batch_size(1)
    ///     .update_all(conn, posts::published.eq(true))?;
    /// assert_eq!((report.rows, report.batches), (2, 2));
    /// # Ok(()) }
    /// ```
    fn update_all<'a, V, Kind>(
        self,
        source: S,
        changes: V,
    ) -> <Self as UpdateJob<'a, S, V, Kind>>::Output
    where
        Self: UpdateJob<'a, S, V, Kind>,
    {
        self.run_update(source, changes)
    }

    /// Deletes the query's rows in batches, each batch one transaction:
    /// `DELETE FROM <table> WHERE <the query's filters> AND key > $lo AND key
    /// <= $hi` (see [`update_all`](Self::update_all)).
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let report = posts::table.filter(posts::published.eq(true)).chunked_by(posts::id)
    ///     .batch_size(2).delete_all(&mut *conn)?;
    /// assert_eq!((report.rows, report.batches), (3, 2));
    /// assert_eq!(posts::table.count().get_result::<i64>(conn)?, 2);
    /// # Ok(()) }
    /// ```
    fn delete_all<'a, Kind>(self, source: S) -> <Self as DeleteJob<'a, S, Kind>>::Output
    where
        Self: DeleteJob<'a, S, Kind>,
    {
        self.run_delete(source)
    }

    /// Hands each batch of models `M` to `f` inside the batch's transaction,
    /// with the connection that runs it: whatever `f` writes commits with the
    /// batch (and its checkpoint), or not at all.
    ///
    /// `f` returns `Result<(), E>` for any `E` with
    /// `From<diesel::result::Error>`, as Diesel's `transaction` does, so
    /// `QueryResult<()>` works. On an async source `f` is an async closure
    /// (`async |conn, batch: Vec<Post>| { .. }`) and the job a future. An `Err` rolls that batch back and ends the job
    /// with [`Error::Batch`], which carries `E`, the batch number and the last
    /// committed key.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .for_each_batch(conn, |conn: &mut SqliteConnection, batch: Vec<Post>| -> QueryResult<()> {
    ///         for p in &batch {
    ///             diesel::update(posts::table.find(p.id))
    ///                 .set(posts::title.eq(p.title.to_uppercase()))
    ///                 .execute(conn)?;
    ///         }
    ///         Ok(())
    ///     })?;
    /// assert_eq!((report.rows, report.batches), (5, 3));
    /// # Ok(()) }
    /// ```
    fn for_each_batch<'a, M, F, Kind>(
        self,
        source: S,
        f: F,
    ) -> <Self as ForEachBatch<'a, S, M, F, Kind>>::Output
    where
        Self: ForEachBatch<'a, S, M, F, Kind>,
    {
        ForEachBatch::run_for_each(self, source, f)
    }

    /// Copies the query's rows into table `dest` of the same database in
    /// batches, each batch one transaction (with its checkpoint, if any):
    /// `INSERT INTO dest (<columns>) SELECT <columns> FROM <table> WHERE <the
    /// query's filters> AND key > $lo AND key <= $hi`.
    ///
    /// `dest`'s `table!` must list columns of the same SQL types in the same
    /// order as the query's table (a compile error otherwise); they are matched
    /// by position. A row whose key `dest` already holds fails the batch with
    /// the database's unique violation, and the job stops after the batches
    /// before it. Everything of a write job applies: checkpoints, `within`,
    /// `limit_total`, pauses, health signals, retries, an async source.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # diesel::table! { posts_archive (id) { id -> Integer, title -> Text, published -> Bool, } }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// # diesel::sql_query("CREATE TABLE posts_archive AS SELECT * FROM posts WHERE 0").execute(conn)?;
    /// let report = posts::table
    ///     .filter(posts::published.eq(true))
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .copy_into(&mut *conn, posts_archive::table)?;
    /// assert_eq!((report.rows, report.batches), (3, 2));
    /// assert_eq!(posts_archive::table.count().get_result::<i64>(conn)?, 3);
    /// # Ok(()) }
    /// ```
    fn copy_into<'a, T, Kind>(
        self,
        source: S,
        dest: T,
    ) -> <Self as TransferJob<'a, S, T, Kind>>::Output
    where
        Self: TransferJob<'a, S, T, Kind>,
    {
        self.run_transfer(source, dest, false)
    }

    /// Moves the query's rows into table `dest` of the same database in
    /// batches: each batch copies its key range into `dest` and deletes it from
    /// the query's table in one transaction (with its checkpoint, if any), so
    /// a row is in exactly one of the tables whenever a batch commits, and a
    /// job stopped at any instant resumes exactly.
    ///
    /// PostgreSQL runs one statement per batch: `WITH chunked_moved AS (DELETE
    /// FROM <table> WHERE <the query's filters> AND key > $lo AND key <= $hi
    /// RETURNING <columns>) INSERT INTO dest (<columns>) SELECT * FROM
    /// chunked_moved`. MySQL/MariaDB lock the range (`SELECT COUNT(*) ... FOR
    /// UPDATE`), then copy it as [`copy_into`](Self::copy_into) does and
    /// delete it; SQLite copies and deletes under its write lock. Where copy
    /// and delete are two statements, their counts must agree, or the batch
    /// rolls back and the job stops with [`Error::MoveChanged`](crate::Error::MoveChanged).
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # diesel::table! { posts_archive (id) { id -> Integer, title -> Text, published -> Bool, } }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// # diesel::sql_query("CREATE TABLE posts_archive AS SELECT * FROM posts WHERE 0").execute(conn)?;
    /// let report = posts::table
    ///     .filter(posts::published.eq(false))
    ///     .chunked_by(posts::id)
    ///     .move_into(&mut *conn, posts_archive::table)?;
    /// assert_eq!(report.rows, 2);
    /// assert_eq!(posts::table.count().get_result::<i64>(conn)?, 3);
    /// assert_eq!(posts_archive::table.count().get_result::<i64>(conn)?, 2);
    /// # Ok(()) }
    /// ```
    fn move_into<'a, T, Kind>(
        self,
        source: S,
        dest: T,
    ) -> <Self as TransferJob<'a, S, T, Kind>>::Output
    where
        Self: TransferJob<'a, S, T, Kind>,
    {
        self.run_transfer(source, dest, true)
    }
}

impl<Q, K: Key, S> RunChunkedDsl<S> for Chunked<Q, K> {}
