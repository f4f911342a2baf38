//! `copy_into` and `move_into`: the rows of a query copied (and, for a move,
//! deleted) into another table of the same database, one key range per
//! batch, in the batch's transaction with its checkpoint.
//!
//! The statements of one batch, after the key query that finds its range
//! (`<w>` is the query's filters and the range, `key > $lo AND key <= $hi`):
//!
//! | job | backend | statements |
//! | --- | --- | --- |
//! | `copy_into` | all | `INSERT INTO dest (<columns>) SELECT <columns of src> FROM src WHERE <w>` |
//! | `move_into` | PostgreSQL | `WITH chunked_moved AS (DELETE FROM src WHERE <w> RETURNING <columns of src>) INSERT INTO dest (<columns>) SELECT * FROM chunked_moved` |
//! | `move_into` | MySQL/MariaDB | `SELECT COUNT(*) FROM src WHERE <w> FOR UPDATE`, the `INSERT ... SELECT`, `DELETE FROM src WHERE <w>` |
//! | `move_into` | SQLite | the `INSERT ... SELECT`, `DELETE FROM src WHERE <w>` |
//!
//! On PostgreSQL the rows inserted are the rows deleted, in one statement.
//! Elsewhere the counts of the statements must agree, or the batch rolls back
//! with [`Error::MoveChanged`]: MySQL/MariaDB lock the range's rows first
//! (at `REPEATABLE READ` also its gaps, so no row can enter it), and SQLite's
//! writing transaction holds the database's only write lock.

use std::cmp::Ordering;

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, IntoUpdateTarget, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::FilterDsl;
use diesel::{Expression, QueryResult, Table};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, Db};
use crate::checkpoint::{Checkpoint, CheckpointConnection};
use crate::error::Error;
use crate::key::Key;
use crate::machine::Abort;
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::PrepareKeys;
use crate::rows::{KeyRows, Rows};
use crate::source::{Blocking, ConnectionSource};
use crate::stored::StoredKey;
use crate::write::{
    debug_sql, describe_range, render_sql, run_job, RangeDelete, RangeTable, RangeTarget,
    UpdatableQuery, WriteReport,
};

/// The filters and key range of a batch: the `WHERE` clause of its
/// statements.
pub type RangeWhere<Q, K> = <RangeTarget<Q, K> as IntoUpdateTarget>::WhereClause;

/// Whether a job deletes the rows it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    Copy,
    Move,
}

impl Transfer {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Transfer::Copy => "copy_into",
            Transfer::Move => "move_into",
        }
    }
}

/// What a batch's statements need besides its range: the destination's
/// column list (`"a", "b"`, as Diesel's `INSERT` writes it).
#[derive(Debug, Clone)]
pub struct Destination<T> {
    table: T,
    columns: String,
}

impl<T: Table> Destination<T> {
    /// The destination `T` of a job reading `Src` on backend `DB`, or why it
    /// cannot be one.
    pub(crate) fn of<DB, Src>(table: T, source: &Src, verb: &'static str) -> Result<Self, Error>
    where
        DB: Backend + Default,
        DB::QueryBuilder: Default,
        Src: Table,
        Src::FromClause: QueryFragment<DB>,
        T::FromClause: QueryFragment<DB>,
        T::AllColumns: QueryFragment<DB>,
    {
        let rendered = |what: Option<String>| {
            what.ok_or_else(|| Error::Query {
                context: verb,
                source: diesel::result::Error::QueryBuilderError(
                    "the destination table's columns could not be rendered".into(),
                ),
            })
        };
        let from = rendered(render_sql::<DB, _>(&table.from_clause()))?;
        let source = rendered(render_sql::<DB, _>(&source.from_clause()))?;
        if from == source {
            return Err(Error::SameTable { verb, table: from });
        }
        let all = rendered(render_sql::<DB, _>(&T::all_columns()))?;
        // Diesel renders a column as `<the table's FROM clause>.<its name>`.
        let prefix = format!("{from}.");
        let names: Option<Vec<&str>> = crate::query::top_level_items(&all)
            .into_iter()
            .map(|item| item.trim().strip_prefix(prefix.as_str()))
            .collect();
        let columns = rendered(names.map(|n| n.join(", ")))?;
        Ok(Self { table, columns })
    }
}

/// `INSERT INTO <dest> (<columns>) SELECT <source columns> FROM <source>
/// WHERE <filters and range>`.
#[allow(missing_debug_implementations)]
pub struct CopyRange<'d, Src: Table, W, T: Table> {
    source: Src::FromClause,
    columns: Src::AllColumns,
    where_clause: W,
    dest: T::FromClause,
    dest_columns: &'d str,
}

impl<'d, Src: Table, W, T: Table> CopyRange<'d, Src, W, T> {
    fn new(source: Src, where_clause: W, dest: &'d Destination<T>) -> Self {
        Self {
            source: source.from_clause(),
            columns: Src::all_columns(),
            where_clause,
            dest: dest.table.from_clause(),
            dest_columns: &dest.columns,
        }
    }
}

impl<DB, Src, W, T> QueryFragment<DB> for CopyRange<'_, Src, W, T>
where
    DB: Backend,
    Src: Table,
    Src::FromClause: QueryFragment<DB>,
    Src::AllColumns: QueryFragment<DB>,
    W: QueryFragment<DB>,
    T: Table,
    T::FromClause: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("INSERT INTO ");
        self.dest.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        out.push_sql(self.dest_columns);
        out.push_sql(") SELECT ");
        self.columns.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        self.source.walk_ast(out.reborrow())?;
        self.where_clause.walk_ast(out.reborrow())
    }
}

/// `WITH chunked_moved AS (DELETE FROM <source> WHERE <filters and range>
/// RETURNING <source columns>) INSERT INTO <dest> (<columns>) SELECT * FROM
/// chunked_moved` (PostgreSQL).
#[allow(missing_debug_implementations)]
pub struct MoveRange<'d, Src: Table, W, T: Table>(CopyRange<'d, Src, W, T>);

impl<DB, Src, W, T> QueryFragment<DB> for MoveRange<'_, Src, W, T>
where
    DB: Backend,
    Src: Table,
    Src::FromClause: QueryFragment<DB>,
    Src::AllColumns: QueryFragment<DB>,
    W: QueryFragment<DB>,
    T: Table,
    T::FromClause: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let copy = &self.0;
        out.unsafe_to_cache_prepared();
        out.push_sql("WITH chunked_moved AS (DELETE FROM ");
        copy.source.walk_ast(out.reborrow())?;
        copy.where_clause.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING ");
        copy.columns.walk_ast(out.reborrow())?;
        out.push_sql(") INSERT INTO ");
        copy.dest.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        out.push_sql(copy.dest_columns);
        out.push_sql(") SELECT * FROM chunked_moved");
        Ok(())
    }
}

/// `SELECT COUNT(*) FROM <source> WHERE <filters and range> FOR UPDATE`
/// (MySQL/MariaDB).
#[allow(missing_debug_implementations)]
pub struct LockRange<Src: Table, W> {
    source: Src::FromClause,
    where_clause: W,
}

impl<Src: Table, W> LockRange<Src, W> {
    fn new(source: Src, where_clause: W) -> Self {
        Self {
            source: source.from_clause(),
            where_clause,
        }
    }
}

impl<Src: Table, W> Query for LockRange<Src, W> {
    type SqlType = diesel::sql_types::BigInt;
}

impl<DB, Src, W> QueryFragment<DB> for LockRange<Src, W>
where
    DB: Backend,
    Src: Table,
    Src::FromClause: QueryFragment<DB>,
    W: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("SELECT COUNT(*) FROM ");
        self.source.walk_ast(out.reborrow())?;
        self.where_clause.walk_ast(out.reborrow())?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}

impl<C, Src: Table, W> diesel::RunQueryDsl<C> for LockRange<Src, W> {}

macro_rules! no_static_query_id {
    ($($t:ident<$($p:tt),*>),*) => {$(
        impl<$($p),*> QueryId for $t<$($p),*>
        where
            Src: Table,
            T: Table,
        {
            type QueryId = ();
            const HAS_STATIC_QUERY_ID: bool = false;
        }
    )*};
}
no_static_query_id!(CopyRange<'d, Src, W, T>, MoveRange<'d, Src, W, T>);

impl<Src: Table, W> QueryId for LockRange<Src, W> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// The statements of one batch of a transfer, built for its range.
pub(crate) struct Statements<'j, Q, K: Key, T> {
    pub(crate) query: &'j Q,
    pub(crate) key: K,
    pub(crate) dest: &'j Destination<T>,
    pub(crate) transfer: Transfer,
}

impl<'j, Q, K, T> Statements<'j, Q, K, T>
where
    Q: FilterDsl<SeekPredicate<K>> + Clone,
    K: Key,
    RangeTarget<Q, K>: IntoUpdateTarget,
    T: Table,
{
    fn target(&self, range: &Bounds<K::Value>) -> (RangeTable<Q, K>, RangeWhere<Q, K>) {
        let predicate = SeekPredicate::new(self.key, BoundsCell::new(range.clone()));
        let target = FilterDsl::filter(self.query.clone(), predicate).into_update_target();
        (target.table, target.where_clause)
    }

    pub(crate) fn copy(
        &self,
        range: &Bounds<K::Value>,
    ) -> CopyRange<'j, RangeTable<Q, K>, RangeWhere<Q, K>, T> {
        let (table, where_clause) = self.target(range);
        CopyRange::new(table, where_clause, self.dest)
    }

    pub(crate) fn move_all(
        &self,
        range: &Bounds<K::Value>,
    ) -> MoveRange<'j, RangeTable<Q, K>, RangeWhere<Q, K>, T> {
        MoveRange(self.copy(range))
    }

    pub(crate) fn lock(
        &self,
        range: &Bounds<K::Value>,
    ) -> LockRange<RangeTable<Q, K>, RangeWhere<Q, K>> {
        let (table, where_clause) = self.target(range);
        LockRange::new(table, where_clause)
    }

    pub(crate) fn delete(&self, range: &Bounds<K::Value>) -> RangeDelete<Q, K> {
        let predicate = SeekPredicate::new(self.key, BoundsCell::new(range.clone()));
        diesel::delete(FilterDsl::filter(self.query.clone(), predicate))
    }
}

/// What the counts of a batch moved by an `INSERT ... SELECT` and a `DELETE`
/// say: the rows moved, or why the batch must roll back.
pub(crate) fn moved<V: std::fmt::Debug>(
    range: &Bounds<V>,
    locked: Option<u64>,
    copied: u64,
    deleted: u64,
) -> Result<u64, Abort> {
    if copied == deleted && locked.is_none_or(|l| l == copied) {
        return Ok(copied);
    }
    Err(Abort::Fail(Error::MoveChanged {
        range: describe_range(range),
        copied,
        deleted,
        locked,
    }))
}

/// Everything `copy_into` / `move_into` need: the query's batches can load
/// their keys, and the statements of a batch run on the source's connection.
#[diagnostic::on_unimplemented(
    message = "`copy_into` / `move_into` need a query of one table that Diesel can DELETE from, and a destination table whose columns have the same SQL types in the same order",
    label = "not a transfer from this query into this table",
    note = "the destination's `table!` must list columns of the same SQL types, in the same order, as the source's"
)]
pub trait TransferJob<'a, S, T, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on a blocking
    /// source, a future of it on an async one.
    type Output;
    /// Runs the job; `delete` for a move.
    fn run_transfer(self, source: S, dest: T, delete: bool) -> Self::Output;
}

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S, T> TransferJob<'a, S, T, Blocking> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend + Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    Q: UpdatableQuery + Clone + PrepareKeys<'a, K, Db<S>> + FilterDsl<SeekPredicate<K>>,
    Q: QueryFragment<Db<S>>,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeWhere<Q, K>: QueryFragment<Db<S>>,
    <RangeTable<Q, K> as diesel::QuerySource>::FromClause: QueryFragment<Db<S>>,
    <RangeTable<Q, K> as Table>::AllColumns: QueryFragment<Db<S>> + Expression,
    RangeDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<S::Connection>,
    T: Table,
    T::FromClause: QueryFragment<Db<S>>,
    T::AllColumns: QueryFragment<Db<S>>
        + Expression<SqlType = <<RangeTable<Q, K> as Table>::AllColumns as Expression>::SqlType>,
    LockRange<RangeTable<Q, K>, RangeWhere<Q, K>>:
        for<'x> diesel::query_dsl::LoadQuery<'x, S::Connection, i64>,
    KeyRows: Rows<S::Connection, <Q as PrepareKeys<'a, K, Db<S>>>::Base, K>,
{
    type Output = Result<WriteReport<K::Value>, Error>;

    fn run_transfer(self, source: S, dest: T, delete: bool) -> Self::Output {
        let transfer = if delete {
            Transfer::Move
        } else {
            Transfer::Copy
        };
        let from = <RangeTarget<Q, K> as HasTable>::table();
        let dest = Destination::of::<Db<S>, _>(dest, &from, transfer.verb())?;
        let (key, query, scan, job, seek) = self.into_job::<'a, Db<S>>();
        let sql = format!(
            "INTO {} ({})\n{}",
            render_sql::<Db<S>, _>(&dest.table.from_clause()).unwrap_or_default(),
            dest.columns,
            debug_sql::<Db<S>, _>(&query)
        );
        let job = job.with_identity(transfer.verb(), sql);
        let batch = Statements {
            query: &query,
            key,
            dest: &dest,
            transfer,
        };
        run_job(source, seek, KeyRows, scan, job, &mut |conn, _, range| {
            use diesel::connection::Connection;
            use diesel::query_dsl::methods::ExecuteDsl;
            if batch.transfer == Transfer::Copy {
                return Ok(conn.execute_returning_count(&batch.copy(range))? as u64);
            }
            if <Db<S> as KeysetBackend>::MOVES_IN_ONE_STATEMENT {
                return Ok(conn.execute_returning_count(&batch.move_all(range))? as u64);
            }
            let locked = match <Db<S> as KeysetBackend>::LOCKS_BEFORE_MOVE {
                true => {
                    Some(diesel::RunQueryDsl::get_result::<i64>(batch.lock(range), conn)? as u64)
                }
                false => None,
            };
            let copied = conn.execute_returning_count(&batch.copy(range))? as u64;
            let deleted = ExecuteDsl::execute(batch.delete(range), conn)? as u64;
            moved(range, locked, copied, deleted)
        })
    }
}

#[cfg(feature = "async")]
mod nonblocking {
    use diesel::query_builder::{IntoUpdateTarget, QueryFragment, QueryId};
    use diesel::query_dsl::methods::FilterDsl;
    use diesel::{Expression, Table};
    use futures_util::future::BoxFuture;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::{
        moved, CopyRange, Destination, LockRange, MoveRange, RangeWhere, Statements, Transfer,
        TransferJob,
    };
    use crate::backend::KeysetBackend;
    use crate::builder::Chunked;
    use crate::checkpoint::AsyncCheckpointConnection;
    use crate::error::Error;
    use crate::key::Key;
    use crate::machine::Abort;
    use crate::predicate::{Bounds, SeekPredicate};
    use crate::query::PrepareKeys;
    use crate::rows::{KeyRows, RowType};
    use crate::source::NonBlocking;
    use crate::stream::write::{run_job, BatchWrite};
    use crate::stream::{AsyncConnectionSource, AsyncDb, AsyncRows};
    use crate::write::{
        debug_sql, render_sql, RangeDelete, RangeTable, RangeTarget, UpdatableQuery, WriteReport,
    };

    /// What one batch runs: the copy; the move in one statement; or the lock
    /// (if any), the copy and the delete.
    enum Plan<C, M, L, D> {
        Copy(C),
        Move(M),
        CopyDelete(Option<L>, C, D),
    }

    /// The statements of `copy_into` / `move_into` on an async connection.
    #[allow(missing_debug_implementations)]
    pub struct TransferWrite<Q, K, T> {
        query: Q,
        key: K,
        dest: Destination<T>,
        transfer: Transfer,
    }

    impl<Q, K, T, C, L> BatchWrite<C, L, K::Value> for TransferWrite<Q, K, T>
    where
        C: AsyncCheckpointConnection,
        C::Backend: KeysetBackend,
        K: Key + Send,
        K::Value: Send + Sync,
        L: Send,
        Q: FilterDsl<SeekPredicate<K>> + Clone + Send,
        RangeTarget<Q, K>: IntoUpdateTarget,
        T: Table + Send,
        for<'d> CopyRange<'d, RangeTable<Q, K>, RangeWhere<Q, K>, T>:
            QueryFragment<C::Backend> + QueryId + Send,
        for<'d> MoveRange<'d, RangeTable<Q, K>, RangeWhere<Q, K>, T>:
            QueryFragment<C::Backend> + QueryId + Send,
        LockRange<RangeTable<Q, K>, RangeWhere<Q, K>>:
            for<'x> diesel_async::methods::LoadQuery<'x, C, i64> + Send,
        RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
    {
        fn write<'c>(
            &'c mut self,
            conn: &'c mut C,
            _rows: Vec<L>,
            range: &'c Bounds<K::Value>,
        ) -> BoxFuture<'c, Result<u64, Abort>> {
            let batch = Statements {
                query: &self.query,
                key: self.key,
                dest: &self.dest,
                transfer: self.transfer,
            };
            // Only the statements this backend runs for this job.
            let one = <C::Backend as KeysetBackend>::MOVES_IN_ONE_STATEMENT;
            let plan = match self.transfer {
                Transfer::Copy => Plan::Copy(batch.copy(range)),
                Transfer::Move if one => Plan::Move(batch.move_all(range)),
                Transfer::Move => Plan::CopyDelete(
                    <C::Backend as KeysetBackend>::LOCKS_BEFORE_MOVE.then(|| batch.lock(range)),
                    batch.copy(range),
                    batch.delete(range),
                ),
            };
            Box::pin(async move {
                let (lock, copy, delete) = match plan {
                    Plan::Copy(copy) => return Ok(conn.execute_returning_count(copy).await? as u64),
                    Plan::Move(all) => return Ok(conn.execute_returning_count(all).await? as u64),
                    Plan::CopyDelete(lock, copy, delete) => (lock, copy, delete),
                };
                let locked = match lock {
                    Some(lock) => Some(
                        diesel_async::RunQueryDsl::get_result::<i64>(lock, &mut *conn).await?
                            as u64,
                    ),
                    None => None,
                };
                let copied = conn.execute_returning_count(copy).await? as u64;
                let deleted = diesel_async::RunQueryDsl::execute(delete, &mut *conn).await? as u64;
                moved(range, locked, copied, deleted)
            })
        }
    }

    impl<'a, 'f, Q, K, S, T> TransferJob<'a, S, T, NonBlocking<'f>> for Chunked<Q, K>
    where
        K: Key + Send + 'f,
        K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
        S: AsyncConnectionSource + 'f,
        S::Connection: AsyncCheckpointConnection,
        AsyncDb<S>: KeysetBackend + Default,
        <AsyncDb<S> as diesel::backend::Backend>::QueryBuilder: Default,
        Q: UpdatableQuery + Clone + Send + 'f + PrepareKeys<'a, K, AsyncDb<S>>,
        Q: FilterDsl<SeekPredicate<K>> + QueryFragment<AsyncDb<S>>,
        <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base: Send + 'f,
        KeyRows: AsyncRows<S::Connection, <Q as PrepareKeys<'a, K, AsyncDb<S>>>::Base, K>,
        <KeyRows as RowType<K>>::Loaded: Send,
        RangeTarget<Q, K>: IntoUpdateTarget,
        <RangeTable<Q, K> as diesel::QuerySource>::FromClause: QueryFragment<AsyncDb<S>>,
        <RangeTable<Q, K> as Table>::AllColumns: Expression,
        T: Table + Send + 'f,
        T::FromClause: QueryFragment<AsyncDb<S>>,
        T::AllColumns: QueryFragment<AsyncDb<S>>
            + Expression<SqlType = <<RangeTable<Q, K> as Table>::AllColumns as Expression>::SqlType>,
        TransferWrite<Q, K, T>:
            BatchWrite<S::Connection, <KeyRows as RowType<K>>::Loaded, K::Value> + 'f,
    {
        type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;

        fn run_transfer(self, source: S, dest: T, delete: bool) -> Self::Output {
            let transfer = if delete {
                Transfer::Move
            } else {
                Transfer::Copy
            };
            let from = <RangeTarget<Q, K> as diesel::associations::HasTable>::table();
            let dest = match Destination::of::<AsyncDb<S>, _>(dest, &from, transfer.verb()) {
                Ok(dest) => dest,
                Err(e) => return Box::pin(async move { Err(e) }),
            };
            let (key, query, scan, job, seek) = self.into_job::<'a, AsyncDb<S>>();
            let sql = format!(
                "INTO {} ({})\n{}",
                render_sql::<AsyncDb<S>, _>(&dest.table.from_clause()).unwrap_or_default(),
                dest.columns,
                debug_sql::<AsyncDb<S>, _>(&query)
            );
            let job = job.with_identity(transfer.verb(), sql);
            let write = TransferWrite {
                query,
                key,
                dest,
                transfer,
            };
            Box::pin(run_job(source, seek, KeyRows, scan, job, write))
        }
    }
}

/// One trait per backend, each asking a type for what the backend needs of
/// it when the backend's feature is on, and nothing otherwise: the
/// destination of `copy_to` is only known once its source is, so its
/// statements must build for every backend of the build.
mod on {
    use diesel::insertable::InsertValues;
    use diesel::query_builder::QueryFragment;

    macro_rules! on_backend {
        ($fragment:ident, $values:ident, $feature:literal, $db:ty) => {
            #[cfg(feature = $feature)]
            pub trait $fragment: QueryFragment<$db> {}
            #[cfg(feature = $feature)]
            impl<T: QueryFragment<$db>> $fragment for T {}
            #[cfg(not(feature = $feature))]
            pub trait $fragment {}
            #[cfg(not(feature = $feature))]
            impl<T> $fragment for T {}

            #[cfg(feature = $feature)]
            pub trait $values<Tab: diesel::Table>: InsertValues<$db, Tab> {}
            #[cfg(feature = $feature)]
            impl<Tab: diesel::Table, T: InsertValues<$db, Tab>> $values<Tab> for T {}
            #[cfg(not(feature = $feature))]
            pub trait $values<Tab> {}
            #[cfg(not(feature = $feature))]
            impl<Tab, T> $values<Tab> for T {}
        };
    }
    on_backend!(PgFragment, PgValues, "postgres", diesel::pg::Pg);
    on_backend!(MysqlFragment, MysqlValues, "mysql", diesel::mysql::Mysql);
    on_backend!(
        SqliteFragment,
        SqliteValues,
        "sqlite",
        diesel::sqlite::Sqlite
    );

    /// A fragment of every backend of the build.
    pub trait Fragment: PgFragment + MysqlFragment + SqliteFragment {}
    impl<T: PgFragment + MysqlFragment + SqliteFragment> Fragment for T {}

    /// The values of a row of table `Tab`, on every backend of the build.
    pub trait Values<Tab: diesel::Table>:
        PgValues<Tab> + MysqlValues<Tab> + SqliteValues<Tab>
    {
    }
    impl<Tab: diesel::Table, T: PgValues<Tab> + MysqlValues<Tab> + SqliteValues<Tab>> Values<Tab>
        for T
    {
    }
}

/// A destination table of [`copy_to`](crate::RunChunkedDsl::copy_to) and
/// [`move_to`](crate::RunChunkedDsl::move_to) for rows of model `M` read
/// from table `Src`: `M` is `Insertable` into `Src` (as
/// `#[derive(Insertable)]` makes a model of `Src`), and its rows are inserted
/// into this table by `Src`'s column names. Implemented for every such table.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a destination for rows of `{M}` read from `{Src}`",
    label = "rows of `{M}` cannot be inserted here",
    note = "`{M}` must be `Insertable` into `{Src}` (`#[derive(Insertable)]` with `#[diesel(table_name = ..)]` of the source table); they are inserted into the destination by the source's column names"
)]
pub trait DestTable<M, Src: Table>: Table<FromClause: on::Fragment> + Copy {
    /// The values of one row, with `Src`'s column names.
    type Values: on::Values<Src>;
    /// The values of `row`.
    fn values(row: M) -> Self::Values;
}

impl<T, M, Src, V> DestTable<M, Src> for T
where
    T: Table<FromClause: on::Fragment> + Copy,
    Src: Table,
    M: diesel::Insertable<Src, Values = diesel::query_builder::ValuesClause<V, Src>>,
    V: on::Values<Src>,
{
    type Values = V;

    fn values(row: M) -> V {
        row.values().values
    }
}

/// `INSERT INTO <dest> (<columns>) VALUES (..), (..)`: rows of table `Src`,
/// inserted into the table whose `FROM` clause is `dest`.
#[allow(missing_debug_implementations)]
pub struct InsertRows<'r, F, V, Src> {
    dest: F,
    rows: &'r [V],
    _source: std::marker::PhantomData<Src>,
}

impl<DB, F, V, Src> QueryFragment<DB> for InsertRows<'_, F, V, Src>
where
    DB: Backend,
    F: QueryFragment<DB>,
    Src: Table,
    V: diesel::insertable::InsertValues<DB, Src>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("INSERT INTO ");
        self.dest.walk_ast(out.reborrow())?;
        let Some((first, rest)) = self.rows.split_first() else {
            return Err(diesel::result::Error::QueryBuilderError(
                "no rows to insert".into(),
            ));
        };
        out.push_sql(" (");
        first.column_names(out.reborrow())?;
        out.push_sql(") VALUES (");
        first.walk_ast(out.reborrow())?;
        for row in rest {
            out.push_sql("), (");
            row.walk_ast(out.reborrow())?;
        }
        out.push_sql(")");
        Ok(())
    }
}

impl<F, V, Src> QueryId for InsertRows<'_, F, V, Src> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// The column names a row's values render (`"id", "title"`): rows whose
/// names differ (SQLite leaves out a column whose value is `DEFAULT`) go in
/// statements of their own.
struct ColumnNames<'r, V, Src>(&'r V, std::marker::PhantomData<Src>);

impl<DB, V, Src> QueryFragment<DB> for ColumnNames<'_, V, Src>
where
    DB: Backend,
    Src: Table,
    V: diesel::insertable::InsertValues<DB, Src>,
{
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.column_names(out)
    }
}

/// Inserts `rows` (values of table `Src`) into the table whose `FROM` clause
/// is `dest`, on `conn`, in as few statements as `max_binds` parameters a
/// statement allow. `same_columns`: every row renders the same columns (a
/// backend with `DEFAULT` in multi-row `VALUES`), so they are not compared.
fn insert_values<C, F, V, Src>(
    conn: &mut C,
    dest: F,
    rows: Vec<V>,
    max_binds: usize,
    same_columns: bool,
) -> QueryResult<usize>
where
    C: diesel::Connection,
    C::Backend: Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    F: QueryFragment<C::Backend>,
    Src: Table,
    V: diesel::insertable::InsertValues<C::Backend, Src>,
{
    let names =
        |row: &V| render_sql::<C::Backend, _>(&ColumnNames(row, std::marker::PhantomData::<Src>));
    let mut inserted = 0;
    let mut start = 0;
    while start < rows.len() {
        let first = names(&rows[start]);
        let per_row = first
            .as_deref()
            .map_or(1, |n| crate::query::top_level_items(n).len())
            .max(1);
        let most = (max_binds / per_row).max(1);
        let mut end = start + 1;
        while end < rows.len() && end - start < most && (same_columns || names(&rows[end]) == first)
        {
            end += 1;
        }
        let statement = InsertRows {
            dest: &dest,
            rows: &rows[start..end],
            _source: std::marker::PhantomData::<Src>,
        };
        inserted += conn.execute_returning_count(&statement)?;
        start = end;
    }
    Ok(inserted)
}

/// A blocking connection a job can insert rows into: PostgreSQL, MySQL or
/// SQLite, each with the checkpoint statements. Sealed.
pub trait InsertConnection:
    CheckpointConnection + diesel::Connection<Backend: KeysetBackend + Default> + sealed::Sealed
{
    /// Inserts `rows` into `dest`: the rows inserted.
    fn insert_rows<T, M, Src>(&mut self, dest: T, rows: Vec<M>) -> QueryResult<u64>
    where
        Src: Table,
        T: DestTable<M, Src>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! insert_connection {
    ($feature:literal, $conn:ty, $binds:expr, $same_columns:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $conn {}
        #[cfg(feature = $feature)]
        impl InsertConnection for $conn {
            fn insert_rows<T, M, Src>(&mut self, dest: T, rows: Vec<M>) -> QueryResult<u64>
            where
                Src: Table,
                T: DestTable<M, Src>,
            {
                let values: Vec<T::Values> = rows.into_iter().map(T::values).collect();
                let (from, binds) = (dest.from_clause(), $binds);
                let n = insert_values::<_, _, _, Src>(self, from, values, binds, $same_columns)?;
                Ok(n as u64)
            }
        }
    };
}
// PostgreSQL and MySQL count parameters in 16 bits; SQLite's bundled build
// allows 32766 (`SQLITE_MAX_VARIABLE_NUMBER`). SQLite has no `DEFAULT` in a
// multi-row `VALUES`: a row whose value is `DEFAULT` leaves its column out.
insert_connection!("postgres", diesel::PgConnection, 65_535, true);
insert_connection!("mysql", diesel::MysqlConnection, 65_535, true);
insert_connection!("sqlite", diesel::SqliteConnection, 32_766, false);

/// Everything `copy_to::<M>` / `move_to::<M>` need of a scan read from
/// source `S` as models `M`, whatever the destination.
#[diagnostic::on_unimplemented(
    message = "`copy_to::<{M}>` / `move_to::<{M}>` need a scan that can load `{M}` from this source",
    label = "cannot load `{M}` in batches from this source",
    note = "`{M}` must be `Selectable` and `Queryable` from the query's table, as for `load_iter::<{M}>`"
)]
pub trait CopyToJob<'a, S, M> {
    /// The key's values.
    type Value;
    /// The query's table, which `M` is `Insertable` into.
    type Source: Table;
    /// Runs the job.
    fn run_copy_to<D, T>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Result<WriteReport<Self::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: DestTable<M, Self::Source>;
}

impl<'a, Q, K, S, M> CopyToJob<'a, S, M> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: crate::unique::UniqueIndexes,
    Db<S>: KeysetBackend + Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    Q: crate::query::PrepareModel<'a, K, M, Db<S>> + QueryFragment<Db<S>>,
    crate::rows::ModelRows<M>:
        Rows<S::Connection, crate::builder::ModelBase<'a, Q, K, M, Db<S>>, K, Item = M>,
    Q: HasTable,
{
    type Value = K::Value;
    type Source = <Q as HasTable>::Table;

    fn run_copy_to<D, T>(self, source: S, dest: D, table: T) -> Result<WriteReport<K::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: DestTable<M, Self::Source>,
    {
        let reads = crate::write::Elsewhere(source);
        to_another_database::<Q, K, S, M, D, T, Self::Source>(
            self, "copy_to", reads, dest, table, None,
        )
    }
}

/// The keys the destination's last committed batch holds, as its write
/// recorded them: what the source's delete of that batch takes.
pub(crate) type Copied<V> = std::rc::Rc<std::cell::RefCell<Vec<StoredKey<V>>>>;

/// `DELETE FROM <table> WHERE <range> AND key IN (..)`: the source's delete
/// of the rows a batch of `move_to` copied, whatever the query's filters say
/// of them now.
pub type KeysDelete<Q, K> = diesel::query_builder::DeleteStatement<
    RangeTable<Q, K>,
    <diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>> as IntoUpdateTarget>::WhereClause,
>;

/// The error of a statement of `move_to` outside its batches (`context`
/// says which), from the attempt that ran it.
fn query_error(context: &'static str) -> impl Fn(crate::source::AttemptError) -> Error {
    move |e| match e {
        crate::source::AttemptError::Query(source) => Error::Query { context, source },
        #[allow(unreachable_patterns)]
        other => Error::Query {
            context,
            source: diesel::result::Error::QueryBuilderError(other.to_string().into()),
        },
    }
}

/// The read side of `move_to`: reads the rows on the source, as `copy_to`
/// does, and after each batch the destination committed deletes there the
/// rows the destination holds now.
///
/// The source keeps a row of its own in its checkpoint table, under the
/// job's name: how far its deletes have come (the key, and the rows deleted
/// so far). The destination's checkpoint row says how far the copies have
/// come. The range between the two is deleted in one transaction of the
/// source, which advances its row, and only if it deletes exactly as many
/// rows as the destination copied since: a crash between the destination's
/// commit and the source's leaves that range to the next run, which deletes
/// it first.
pub(crate) struct Moving<Src: ConnectionSource, Q, K: Key> {
    source: crate::write::Elsewhere<Src>,
    name: String,
    key: K,
    query: Q,
    bounds: Bounds<K::Value>,
    key_type: String,
    /// Whether the source's row is known to be this job's.
    claimed: bool,
    /// The keys of the batch the destination committed last, in this run.
    copied: Copied<K::Value>,
}

impl<Src, Q, K> Moving<Src, Q, K>
where
    Src: ConnectionSource,
    Src::Connection: CheckpointConnection,
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    Q: FilterDsl<SeekPredicate<K>> + Clone,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<Src::Connection>,
    RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
    diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
        IntoUpdateTarget<Table = RangeTable<Q, K>>,
    KeysDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<Src::Connection>,
{
    /// Deletes from the source what the destination (its checkpoint row
    /// `copied`) holds beyond the source's own row, which the source's
    /// transaction locks and advances.
    fn delete_copied(&mut self, copied: &Checkpoint, fingerprint: &str) -> Result<(), Error> {
        let name = self.name.as_str();
        let src = &mut self.source.0;
        if !self.claimed {
            let marker = src
                .run(false, |c| {
                    c.start_checkpoint(name, &self.key_type)?;
                    c.claim_checkpoint(name, fingerprint)
                })
                .map_err(query_error("move_to: the source's checkpoint row"))?;
            if marker.key_type != self.key_type {
                // The row the destination's job wrote: source and destination
                // share the checkpoint table, so one database.
                return Err(Error::MoveSameDatabase {
                    name: name.to_string(),
                });
            }
            if marker.query_fingerprint.as_deref() != Some(fingerprint) {
                return Err(Error::CheckpointMismatch {
                    name: name.to_string(),
                    stored: format!("{} in the source database", marker.key_type),
                    expected: self.key_type.clone(),
                });
            }
            self.claimed = true;
        }
        let key_type = self.key_type.as_str();
        let parse = |json: &Option<String>| -> Result<Option<StoredKey<K::Value>>, Error> {
            json.as_deref()
                .map(|j| {
                    serde_json::from_str(j).map_err(|e| Error::CheckpointMismatch {
                        name: name.to_string(),
                        stored: format!("{} (last key {j}: {e})", copied.key_type),
                        expected: key_type.to_string(),
                    })
                })
                .transpose()
        };
        let until = parse(&copied.last_key)?;
        let (key, query, bounds) = (self.key, &self.query, &self.bounds);
        let copied_keys = &self.copied;
        // What stopped the source's transaction, besides the database.
        let mut stop: Option<Error> = None;
        let done = src.run(false, |c| {
            c.batch_transaction(|c| {
                let Some(marker) = c.lock_checkpoint(name)? else {
                    return Err(diesel::result::Error::NotFound);
                };
                if marker.rows == copied.rows {
                    return Ok(());
                }
                let fail = |stop: &mut Option<Error>, e: Error| {
                    *stop = Some(e);
                    Err(diesel::result::Error::RollbackTransaction)
                };
                if marker.rows > copied.rows {
                    // The destination's row was reset (or is another run's):
                    // deleting by it would leave copied rows in the source.
                    let stored = format!(
                        "{} with {} rows deleted in the source, more than the {} the \
                         destination's row says were copied (reset both rows with \
                         checkpoint::reset, or neither)",
                        marker.key_type, marker.rows, copied.rows
                    );
                    let expected = key_type.to_string();
                    let name = name.to_string();
                    return fail(
                        &mut stop,
                        Error::CheckpointMismatch {
                            name,
                            stored,
                            expected,
                        },
                    );
                }
                let mut range = bounds.clone();
                match parse(&marker.last_key) {
                    Ok(Some(after)) => range.after = Some(after),
                    Ok(None) => {}
                    Err(e) => return fail(&mut stop, e),
                }
                range.until = until.clone();
                let expected = copied.rows - marker.rows;
                // The keys the batch copied, when the gap is that batch: the
                // delete takes those rows, whatever the filters say of them
                // now, and no other; after a stop between the two commits,
                // the range and the filters, checked by the count.
                let keys = copied_keys.borrow();
                let last = keys.last().map(|k| &k.value);
                let this_batch = keys.len() as u64 == expected
                    && match (last, until.as_ref()) {
                        (Some(a), Some(b)) => K::compare(a, &b.value) == Some(Ordering::Equal),
                        _ => false,
                    };
                let deleted = if this_batch {
                    range.only = Some(std::sync::Arc::new(keys.clone()));
                    let predicate = SeekPredicate::new(key, BoundsCell::new(range.clone()));
                    let table = <RangeTarget<Q, K> as HasTable>::table();
                    let delete = diesel::delete(FilterDsl::filter(table, predicate));
                    diesel::query_dsl::methods::ExecuteDsl::execute(delete, c)? as u64
                } else {
                    let predicate = SeekPredicate::new(key, BoundsCell::new(range.clone()));
                    let delete = diesel::delete(FilterDsl::filter(query.clone(), predicate));
                    diesel::query_dsl::methods::ExecuteDsl::execute(delete, c)? as u64
                };
                drop(keys);
                // A copied row another writer deleted meanwhile is moved all
                // the same: fewer rows deleted is only an error by the count.
                let agrees = match this_batch {
                    true => deleted <= expected,
                    false => deleted == expected,
                };
                if !agrees {
                    let range = describe_range(&range);
                    let changed = Error::MoveChanged {
                        range,
                        copied: expected,
                        deleted,
                        locked: None,
                    };
                    return fail(&mut stop, changed);
                }
                c.advance_checkpoint(
                    name,
                    copied.last_key.as_deref(),
                    copied.rows,
                    copied.batches,
                    copied.done,
                )
            })
        });
        if let Some(e) = stop {
            return Err(e);
        }
        done.map_err(query_error(
            "move_to: deleting the copied rows from the source",
        ))
    }
}

impl<S, Src, Q, K, B, R> crate::write::ReadSide<S, B, K, R> for Moving<Src, Q, K>
where
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Src: ConnectionSource,
    Src::Connection: CheckpointConnection,
    Db<Src>: KeysetBackend,
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    R: Rows<Src::Connection, B, K>,
    Q: FilterDsl<SeekPredicate<K>> + Clone,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<Src::Connection>,
    RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
    diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
        IntoUpdateTarget<Table = RangeTable<Q, K>>,
    KeysDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<Src::Connection>,
{
    fn check(
        &mut self,
        first: &mut crate::iter::FirstBatch<'_, B, K, R>,
        source: &mut S,
        steps: crate::iter::FirstSteps,
    ) -> Result<(), Error> {
        crate::write::ReadSide::<S, B, K, R>::check(&mut self.source, first, source, steps)
    }

    fn stored_forms(&self) -> bool {
        <Db<Src> as KeysetBackend>::STORED_FORMS
    }

    fn load(
        &mut self,
        rows: &mut R,
        query: &crate::query::SeekQuery<B, K>,
        conn: &mut S::Connection,
        limit: i64,
    ) -> QueryResult<Vec<R::Loaded>> {
        crate::write::ReadSide::<S, B, K, R>::load(&mut self.source, rows, query, conn, limit)
    }

    fn catch_up(&mut self, source: &mut S, fingerprint: &str) -> Result<(), Error> {
        let name = self.name.as_str();
        let copied = source
            .run(false, |c| c.read_checkpoint(name))
            .map_err(query_error("move_to: the destination's checkpoint row"))?;
        match copied {
            Some(copied) => self.delete_copied(&copied, fingerprint),
            None => Ok(()),
        }
    }
}

/// Everything `move_to::<M>` needs besides what `copy_to::<M>` does: the
/// query is of one table the source can delete from.
#[diagnostic::on_unimplemented(
    message = "`move_to::<{M}>` needs a query of one table that Diesel can DELETE from, loading `{M}`",
    label = "not a query `move_to::<{M}>` can move rows of",
    note = "`copy_to::<{M}>` copies the rows of any query that loads `{M}`"
)]
pub trait MoveToJob<'a, S, M> {
    /// The key's values.
    type Value;
    /// The query's table, which `M` is `Insertable` into.
    type Source: Table;
    /// Runs the job.
    fn run_move_to<D, T>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Result<WriteReport<Self::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: DestTable<M, Self::Source>;
}

impl<'a, Q, K, S, M> MoveToJob<'a, S, M> for Chunked<Q, K>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    S::Connection: CheckpointConnection,
    Db<S>: KeysetBackend + Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    Q: crate::query::PrepareModel<'a, K, M, Db<S>> + QueryFragment<Db<S>>,
    Q: UpdatableQuery + Clone + FilterDsl<SeekPredicate<K>>,
    RangeTarget<Q, K>: IntoUpdateTarget,
    RangeDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<S::Connection>,
    RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
    diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
        IntoUpdateTarget<Table = RangeTable<Q, K>>,
    KeysDelete<Q, K>: diesel::query_dsl::methods::ExecuteDsl<S::Connection>,
    crate::rows::ModelRows<M>:
        Rows<S::Connection, crate::builder::ModelBase<'a, Q, K, M, Db<S>>, K, Item = M>,
{
    type Value = K::Value;
    type Source = RangeTable<Q, K>;

    fn run_move_to<D, T>(self, source: S, dest: D, table: T) -> Result<WriteReport<K::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: DestTable<M, Self::Source>,
    {
        let Some(name) = self.write.checkpoint.clone() else {
            return Err(Error::MoveNeedsCheckpoint);
        };
        let copied: Copied<K::Value> = Default::default();
        let key_type = format!(
            "{} as {} (move_to: deleted from the source)",
            self.key.describe(),
            std::any::type_name::<K::Value>()
        );
        let reads = Moving {
            source: crate::write::Elsewhere(source),
            name,
            key: self.key,
            query: self.query.clone(),
            bounds: self.bounds(),
            key_type,
            claimed: false,
            copied: copied.clone(),
        };
        to_another_database::<Q, K, S, M, D, T, Self::Source>(
            self,
            "move_to",
            reads,
            dest,
            table,
            Some(copied),
        )
    }
}

/// `copy_to` and `move_to`: the job runs on the destination `dest`, reading
/// where `reads` says, each batch's rows inserted into `table`.
fn to_another_database<'a, Q, K, S, M, D, T, Src>(
    chunked: Chunked<Q, K>,
    verb: &'static str,
    reads: impl crate::write::ReadSide<
        D,
        crate::builder::ModelBase<'a, Q, K, M, Db<S>>,
        K,
        crate::rows::ModelRows<M>,
    >,
    dest: D,
    table: T,
    record: Option<Copied<K::Value>>,
) -> Result<WriteReport<K::Value>, Error>
where
    K: Key,
    K::Value: Serialize + DeserializeOwned,
    S: ConnectionSource,
    Db<S>: KeysetBackend + Default,
    <Db<S> as Backend>::QueryBuilder: Default,
    Q: crate::query::PrepareModel<'a, K, M, Db<S>> + QueryFragment<Db<S>>,
    crate::rows::ModelRows<M>: crate::rows::RowType<K, Item = M>,
    D: ConnectionSource<Connection: InsertConnection>,
    Src: Table,
    T: DestTable<M, Src>,
{
    use crate::rows::LoadedRow;
    let target = std::any::type_name::<T>();
    let sql = format!("INTO {target}\n{}", debug_sql::<Db<S>, _>(&chunked.query));
    let job = chunked.write.clone().with_identity(verb, sql);
    let (query, rows, scan) = chunked.model_parts::<Db<S>, M>();
    crate::write::run_job_reading(
        dest,
        reads,
        query,
        rows,
        scan,
        job,
        &mut |conn, loaded, _| {
            if let Some(record) = &record {
                *record.borrow_mut() = loaded.iter().map(|r| r.key().clone()).collect();
            }
            let rows: Vec<M> = loaded.into_iter().map(|r| r.into_parts().1).collect();
            Ok(conn.insert_rows::<_, _, Src>(table, rows)?)
        },
    )
}
