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
            let (copy, move_all) = (batch.copy(range), batch.move_all(range));
            let (lock, delete) = (batch.lock(range), batch.delete(range));
            let transfer = self.transfer;
            Box::pin(async move {
                if transfer == Transfer::Copy {
                    return Ok(conn.execute_returning_count(copy).await? as u64);
                }
                if <C::Backend as KeysetBackend>::MOVES_IN_ONE_STATEMENT {
                    return Ok(conn.execute_returning_count(move_all).await? as u64);
                }
                let locked = match <C::Backend as KeysetBackend>::LOCKS_BEFORE_MOVE {
                    true => Some(
                        diesel_async::RunQueryDsl::get_result::<i64>(lock, &mut *conn).await?
                            as u64,
                    ),
                    false => None,
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

/// A statement that runs on the blocking connection of every backend this
/// build has: what a destination's `INSERT` of rows of a model must be, as
/// the destination's backend is only known once its source is.
pub trait OnEveryBackend: on::Pg + on::Mysql + on::Sqlite {}

impl<T: on::Pg + on::Mysql + on::Sqlite> OnEveryBackend for T {}

/// One trait per backend: the statement runs on its connection when the
/// backend's feature is on, and nothing is asked of it otherwise.
mod on {
    use diesel::query_dsl::methods::ExecuteDsl;

    macro_rules! on_backend {
        ($name:ident, $feature:literal, $conn:ty) => {
            #[cfg(feature = $feature)]
            pub trait $name: ExecuteDsl<$conn> {}
            #[cfg(feature = $feature)]
            impl<T: ExecuteDsl<$conn>> $name for T {}
            #[cfg(not(feature = $feature))]
            pub trait $name {}
            #[cfg(not(feature = $feature))]
            impl<T> $name for T {}
        };
    }
    on_backend!(Pg, "postgres", diesel::PgConnection);
    on_backend!(Mysql, "mysql", diesel::MysqlConnection);
    on_backend!(Sqlite, "sqlite", diesel::SqliteConnection);
}

/// A destination table of [`copy_to`](crate::RunChunkedDsl::copy_to) for
/// rows of model `M`: `M` is `Insertable` into it, and the `INSERT` of many
/// rows runs on every backend. Implemented for every such table.
#[diagnostic::on_unimplemented(
    message = "rows of `{M}` cannot be inserted into `{Self}` on every backend of this build",
    label = "not a destination table for rows of `{M}`",
    note = "`{M}` must be `Insertable` into the destination table (`#[derive(Insertable)]` with `#[diesel(table_name = ..)]` of that table)"
)]
pub trait InsertTable<M>: Table + Copy {
    /// `INSERT INTO <table> (..) VALUES (..), (..)` of `rows`.
    type Statement: OnEveryBackend;
    /// The statement.
    fn insert(self, rows: Vec<M>) -> Self::Statement;
}

impl<M, T> InsertTable<M> for T
where
    T: Table + Copy,
    Vec<M>: diesel::Insertable<T>,
    diesel::query_builder::InsertStatement<T, <Vec<M> as diesel::Insertable<T>>::Values>:
        OnEveryBackend,
{
    type Statement =
        diesel::query_builder::InsertStatement<T, <Vec<M> as diesel::Insertable<T>>::Values>;

    fn insert(self, rows: Vec<M>) -> Self::Statement {
        diesel::insert_into(self).values(rows)
    }
}

/// A blocking connection a job can insert rows into: PostgreSQL, MySQL or
/// SQLite, each with the checkpoint statements. Sealed.
pub trait InsertConnection:
    CheckpointConnection + diesel::Connection<Backend: KeysetBackend + Default> + sealed::Sealed
{
    /// How many bind parameters one statement may have.
    const MAX_BINDS: usize;
    /// Runs `statement`: the rows inserted.
    fn run_insert<S: OnEveryBackend>(&mut self, statement: S) -> QueryResult<usize>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! insert_connection {
    ($on:ident, $feature:literal, $conn:ty, $binds:expr) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $conn {}
        #[cfg(feature = $feature)]
        impl InsertConnection for $conn {
            const MAX_BINDS: usize = $binds;
            fn run_insert<S: OnEveryBackend>(&mut self, statement: S) -> QueryResult<usize> {
                <S as diesel::query_dsl::methods::ExecuteDsl<$conn>>::execute(statement, self)
            }
        }
    };
}
// PostgreSQL and MySQL count parameters in 16 bits; SQLite's bundled build
// allows 32766 (`SQLITE_MAX_VARIABLE_NUMBER`).
insert_connection!(Pg, "postgres", diesel::PgConnection, 65_535);
insert_connection!(Mysql, "mysql", diesel::MysqlConnection, 65_535);
insert_connection!(Sqlite, "sqlite", diesel::SqliteConnection, 32_766);

/// Inserts `rows` into `table` on `conn` in as few statements as the
/// backend's parameter limit allows, `columns` parameters a row.
pub(crate) fn insert_rows<C, T, M>(
    conn: &mut C,
    table: T,
    mut rows: Vec<M>,
    columns: usize,
) -> QueryResult<u64>
where
    C: InsertConnection,
    T: InsertTable<M>,
{
    let per_statement = (C::MAX_BINDS / columns.max(1)).max(1);
    let mut inserted = 0;
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(per_statement));
        inserted += conn.run_insert(table.insert(rows))? as u64;
        rows = rest;
    }
    Ok(inserted)
}

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
    /// Runs the job; `delete` for a move.
    fn run_copy_to<D, T>(
        self,
        source: S,
        dest: D,
        table: T,
        delete: bool,
    ) -> Result<WriteReport<Self::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: InsertTable<M>;
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
    M: diesel::Selectable<Db<S>>,
    M::SelectExpression: QueryFragment<Db<S>>,
{
    type Value = K::Value;

    fn run_copy_to<D, T>(
        self,
        source: S,
        dest: D,
        table: T,
        delete: bool,
    ) -> Result<WriteReport<K::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: InsertTable<M>,
    {
        use crate::rows::LoadedRow;
        let verb = if delete { "move_to" } else { "copy_to" };
        // The parameters of a row: at most the columns `M` selects.
        let columns = render_sql::<Db<S>, _>(&M::construct_selection())
            .map(|c| crate::query::top_level_items(&c).len())
            .unwrap_or(64);
        let job = self.write.clone().with_identity(
            verb,
            format!(
                "INTO {}\n{}",
                std::any::type_name::<T>(),
                debug_sql::<Db<S>, _>(&self.query)
            ),
        );
        let (query, rows, scan) = self.model_parts::<Db<S>, M>();
        let reads = crate::write::Elsewhere(source);
        crate::write::run_job_reading(
            dest,
            reads,
            query,
            rows,
            scan,
            job,
            &mut |conn, loaded, _| {
                let rows: Vec<M> = loaded.into_iter().map(|r| r.into_parts().1).collect();
                Ok(insert_rows(conn, table, rows, columns)?)
            },
        )
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
{
    /// Deletes from the source what the destination (its checkpoint row
    /// `copied`) holds beyond the source's own row.
    fn delete_copied(&mut self, copied: &Checkpoint, fingerprint: &str) -> Result<(), Error> {
        let name = self.name.as_str();
        let src = &mut self.source.0;
        let context = "move_to: the source's checkpoint row";
        let attempt = |e: crate::source::AttemptError| match e {
            crate::source::AttemptError::Query(source) => Error::Query { context, source },
            #[allow(unreachable_patterns)]
            other => Error::Query {
                context,
                source: diesel::result::Error::QueryBuilderError(other.to_string().into()),
            },
        };
        let marker = src
            .run(false, |c| {
                c.start_checkpoint(name, &self.key_type)?;
                c.claim_checkpoint(name, fingerprint)
            })
            .map_err(attempt)?;
        if marker.query_fingerprint.as_deref() != Some(fingerprint) {
            return Err(Error::CheckpointMismatch {
                name: name.to_string(),
                stored: format!("{} in the source database", marker.key_type),
                expected: self.key_type.clone(),
            });
        }
        if marker.rows >= copied.rows {
            return Ok(());
        }
        let parse = |json: &Option<String>| -> Result<Option<StoredKey<K::Value>>, Error> {
            json.as_deref()
                .map(|j| {
                    serde_json::from_str(j).map_err(|e| Error::CheckpointMismatch {
                        name: name.to_string(),
                        stored: format!("{} (last key {j}: {e})", copied.key_type),
                        expected: self.key_type.clone(),
                    })
                })
                .transpose()
        };
        let mut range = self.bounds.clone();
        if let Some(after) = parse(&marker.last_key)? {
            range.after = Some(after);
        }
        range.until = parse(&copied.last_key)?;
        let expected = copied.rows - marker.rows;
        let (key, query) = (self.key, &self.query);
        let mut changed = None;
        let done = src.run(false, |c| {
            c.batch_transaction(|c| {
                let Some(now) = c.lock_checkpoint(name)? else {
                    return Err(diesel::result::Error::NotFound);
                };
                if now.rows != marker.rows {
                    // Another run deleted meanwhile: nothing left to do here.
                    return Ok(());
                }
                let predicate = SeekPredicate::new(key, BoundsCell::new(range.clone()));
                let delete = diesel::delete(FilterDsl::filter(query.clone(), predicate));
                let deleted = diesel::query_dsl::methods::ExecuteDsl::execute(delete, c)? as u64;
                if deleted != expected {
                    changed = Some(deleted);
                    return Err(diesel::result::Error::RollbackTransaction);
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
        if let Some(deleted) = changed {
            return Err(Error::MoveChanged {
                range: describe_range(&range),
                copied: expected,
                deleted,
                locked: None,
            });
        }
        done.map_err(|e| match e {
            crate::source::AttemptError::Query(source) => Error::Query {
                context: "move_to: deleting the copied rows from the source",
                source,
            },
            #[allow(unreachable_patterns)]
            other => attempt(other),
        })
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
            .map_err(|e| match e {
                crate::source::AttemptError::Query(source) => Error::Query {
                    context: "move_to: the destination's checkpoint row",
                    source,
                },
                #[allow(unreachable_patterns)]
                other => Error::Query {
                    context: "move_to: the destination's checkpoint row",
                    source: diesel::result::Error::QueryBuilderError(other.to_string().into()),
                },
            })?;
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
    /// Runs the job.
    fn run_move_to<D, T>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Result<WriteReport<Self::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: InsertTable<M>;
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
    crate::rows::ModelRows<M>:
        Rows<S::Connection, crate::builder::ModelBase<'a, Q, K, M, Db<S>>, K, Item = M>,
    M: diesel::Selectable<Db<S>>,
    M::SelectExpression: QueryFragment<Db<S>>,
{
    type Value = K::Value;

    fn run_move_to<D, T>(self, source: S, dest: D, table: T) -> Result<WriteReport<K::Value>, Error>
    where
        D: ConnectionSource<Connection: InsertConnection>,
        T: InsertTable<M>,
    {
        use crate::rows::LoadedRow;
        let Some(name) = self.write.checkpoint.clone() else {
            return Err(Error::MoveNeedsCheckpoint);
        };
        let columns = render_sql::<Db<S>, _>(&M::construct_selection())
            .map(|c| crate::query::top_level_items(&c).len())
            .unwrap_or(64);
        let job = self.write.clone().with_identity(
            "move_to",
            format!(
                "INTO {}\n{}",
                std::any::type_name::<T>(),
                debug_sql::<Db<S>, _>(&self.query)
            ),
        );
        let key_type = format!(
            "{} as {} (move_to: deleted from the source)",
            self.key.describe(),
            std::any::type_name::<K::Value>()
        );
        let (key, bounds, filters) = (self.key, self.bounds(), self.query.clone());
        let (query, rows, scan) = self.model_parts::<Db<S>, M>();
        let reads = Moving {
            source: crate::write::Elsewhere(source),
            name,
            key,
            query: filters,
            bounds,
            key_type,
        };
        crate::write::run_job_reading(
            dest,
            reads,
            query,
            rows,
            scan,
            job,
            &mut |conn, loaded, _| {
                let rows: Vec<M> = loaded.into_iter().map(|r| r.into_parts().1).collect();
                Ok(insert_rows(conn, table, rows, columns)?)
            },
        )
    }
}
