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
use crate::checkpoint::CheckpointConnection;
use crate::error::Error;
use crate::key::Key;
use crate::machine::Abort;
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::PrepareKeys;
use crate::rows::{KeyRows, Rows};
use crate::source::{Blocking, ConnectionSource};
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
/// column list (`"a", "b"`, as Diesel's `INSERT` writes it), and what follows
/// its `INSERT` (the backend's
/// [`skip_conflicts`](KeysetBackend::skip_conflicts), or nothing).
#[derive(Debug, Clone)]
pub struct Destination<T> {
    table: T,
    columns: String,
    conflicts: String,
}

impl<T: Table> Destination<T> {
    /// The destination `T` of a job reading `Src` on backend `DB`, or why it
    /// cannot be one.
    /// With `skip`, its `INSERT`s skip rows that conflict with the table's.
    pub(crate) fn of<DB, Src>(
        table: T,
        source: &Src,
        verb: &'static str,
        skip: bool,
    ) -> Result<Self, Error>
    where
        DB: KeysetBackend + Default,
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
        check_other_table::<DB>(&from, &source, verb, skip)?;
        let names = rendered(column_list::<DB, T>(&from))?;
        let conflicts = match crate::query::top_level_items(&names).first() {
            Some(first) if skip => DB::skip_conflicts(&format!("{from}.{}", first.trim())),
            _ => String::new(),
        };
        Ok(Self {
            table,
            columns: names,
            conflicts,
        })
    }
}

/// The column names of table `T`, whose `FROM` clause renders as `from`, as
/// an `INSERT` lists them (`"id", "title"`).
pub(crate) fn column_list<DB, T>(from: &str) -> Option<String>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    T: Table,
    T::AllColumns: QueryFragment<DB>,
{
    let all = render_sql::<DB, _>(&T::all_columns())?;
    // Diesel renders a column as `<the table's FROM clause>.<its name>`.
    let prefix = format!("{from}.");
    let names: Option<Vec<&str>> = crate::query::top_level_items(&all)
        .into_iter()
        .map(|item| item.trim().strip_prefix(prefix.as_str()))
        .collect();
    names.map(|n| n.join(", "))
}

/// A table's schema (if named) and name, from its rendered `FROM` clause
/// (`"main"."orders"`, `` `shop`.`orders` ``, `orders`), unquoted.
fn schema_and_name(rendered: &str) -> (Option<String>, String) {
    let unquote = |part: &str| {
        let part = part.trim();
        match part.chars().next() {
            Some(q @ ('"' | '`')) if part.len() >= 2 && part.ends_with(q) => {
                let doubled: String = [q, q].iter().collect();
                part[1..part.len() - 1].replace(&doubled, &q.to_string())
            }
            _ => part.to_string(),
        }
    };
    let mut quote = None;
    let mut dot = None;
    for (i, c) in rendered.char_indices() {
        match (quote, c) {
            (None, '"' | '`') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => dot = Some(i),
            _ => {}
        }
    }
    match dot {
        Some(i) => (Some(unquote(&rendered[..i])), unquote(&rendered[i + 1..])),
        None => (None, unquote(rendered)),
    }
}

/// Whether `dest` and `source` (rendered `FROM` clauses that differ) may
/// still be one table: the same name, schema-qualified on one side only. On
/// a backend whose unqualified names resolve to a known schema (SQLite's
/// `main`) that is decided; elsewhere a move that skips conflicts is refused
/// (it would skip every row as a conflict with itself, then delete it),
/// while other jobs fail on the table's own unique violation.
fn check_other_table<DB: KeysetBackend>(
    dest: &str,
    source: &str,
    verb: &'static str,
    skip: bool,
) -> Result<(), Error> {
    let ((dest_schema, dest_name), (source_schema, source_name)) =
        (schema_and_name(dest), schema_and_name(source));
    if dest_name != source_name || dest_schema == source_schema {
        return Ok(());
    }
    let ((Some(schema), None) | (None, Some(schema))) = (&dest_schema, &source_schema) else {
        return Ok(());
    };
    match DB::DEFAULT_SCHEMA {
        Some(default) if schema == default => Err(Error::SameTable {
            verb,
            table: dest.to_string(),
        }),
        None if skip && verb == "move_into" && !DB::MOVES_IN_ONE_STATEMENT => {
            Err(Error::OptionUnsupported {
                option: "on_conflict_do_nothing",
                job: verb,
                reason: "the destination has the source table's name, schema-qualified on one \
                         side only, so the job cannot tell it from the source (whose rows it \
                         would skip as conflicts with themselves, then delete); name the \
                         schema on both sides (`table! { shop.orders { .. } }`)",
            })
        }
        _ => Ok(()),
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
    conflicts: &'d str,
}

impl<'d, Src: Table, W, T: Table> CopyRange<'d, Src, W, T> {
    fn new(source: Src, where_clause: W, dest: &'d Destination<T>) -> Self {
        Self {
            source: source.from_clause(),
            columns: Src::all_columns(),
            where_clause,
            dest: dest.table.from_clause(),
            dest_columns: &dest.columns,
            conflicts: &dest.conflicts,
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
        self.where_clause.walk_ast(out.reborrow())?;
        out.push_sql(self.conflicts);
        Ok(())
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
        out.push_sql(copy.conflicts);
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
/// say: the rows moved, or why the batch must roll back. With `skip`
/// (conflicting rows skipped) the copy may insert fewer rows than it read,
/// so only the lock's count must match the delete's.
pub(crate) fn moved<V: std::fmt::Debug>(
    range: &Bounds<V>,
    locked: Option<u64>,
    copied: u64,
    deleted: u64,
    skip: bool,
) -> Result<u64, Abort> {
    let agrees = |n: u64| locked.is_none_or(|l| l == n);
    if skip && copied <= deleted && agrees(deleted) {
        return Ok(deleted);
    }
    if copied == deleted && agrees(copied) {
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
        let skip = self.write.skip_conflicts;
        let dest = Destination::of::<Db<S>, _>(dest, &from, transfer.verb(), skip)?;
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
        run_job(
            source,
            seek,
            KeyRows,
            scan,
            job,
            &mut |conn, keys, range| {
                use diesel::connection::Connection;
                use diesel::query_dsl::methods::ExecuteDsl;
                // With `skip`, a batch counts the rows it found, inserted or not.
                let count = |n: usize| if skip { keys.len() as u64 } else { n as u64 };
                if batch.transfer == Transfer::Copy {
                    return Ok(count(conn.execute_returning_count(&batch.copy(range))?));
                }
                if <Db<S> as KeysetBackend>::MOVES_IN_ONE_STATEMENT {
                    return Ok(count(conn.execute_returning_count(&batch.move_all(range))?));
                }
                let locked = match <Db<S> as KeysetBackend>::LOCKS_BEFORE_MOVE {
                    true => Some(
                        diesel::RunQueryDsl::get_result::<i64>(batch.lock(range), conn)? as u64,
                    ),
                    false => None,
                };
                let copied = conn.execute_returning_count(&batch.copy(range))? as u64;
                let deleted = ExecuteDsl::execute(batch.delete(range), conn)? as u64;
                moved(range, locked, copied, deleted, skip)
            },
        )
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
        skip: bool,
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
            keys: Vec<L>,
            range: &'c Bounds<K::Value>,
        ) -> BoxFuture<'c, Result<u64, Abort>> {
            // With `skip`, a batch counts the rows it found, inserted or not.
            let (skip, found) = (self.skip, keys.len() as u64);
            let count = move |n: usize| if skip { found } else { n as u64 };
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
                    Plan::Copy(copy) => {
                        return Ok(count(conn.execute_returning_count(copy).await?))
                    }
                    Plan::Move(all) => return Ok(count(conn.execute_returning_count(all).await?)),
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
                moved(range, locked, copied, deleted, skip)
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
            let skip = self.write.skip_conflicts;
            let dest = match Destination::of::<AsyncDb<S>, _>(dest, &from, transfer.verb(), skip) {
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
                skip,
            };
            Box::pin(run_job(source, seek, KeyRows, scan, job, write))
        }
    }
}

/// A table PostgreSQL's binary `COPY` can target (every `table!` table),
/// asked of every destination when the `postgres` feature is on, and of
/// none otherwise.
mod on {
    #[cfg(feature = "postgres")]
    use diesel::query_builder::QueryFragment;

    #[cfg(feature = "postgres")]
    pub trait PgCopy:
        diesel::Table<AllColumns: QueryFragment<diesel::pg::Pg>>
        + diesel::pg::CopyTarget<Table = Self>
    {
    }
    #[cfg(feature = "postgres")]
    impl<T> PgCopy for T where
        T: diesel::Table<AllColumns: QueryFragment<diesel::pg::Pg>>
            + diesel::pg::CopyTarget<Table = T>
    {
    }
    #[cfg(not(feature = "postgres"))]
    pub trait PgCopy {}
    #[cfg(not(feature = "postgres"))]
    impl<T> PgCopy for T {}
}

/// A destination table of [`copy_to`](crate::TransferDsl::copy_to) and
/// [`move_to`](crate::TransferDsl::move_to) on backend `DB` for rows of
/// model `M` read from table `Src`: `M` is `Insertable` into `Src` on `DB`
/// (as `#[derive(Insertable)]` makes a model of `Src`), and its rows are
/// inserted into this table by `Src`'s column names. Implemented for every
/// such table.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a destination for rows of `{M}` read from `{Src}`",
    label = "rows of `{M}` cannot be inserted here",
    note = "`{M}` must be `Insertable` into `{Src}` (`#[derive(Insertable)]` with `#[diesel(table_name = ..)]` of the source table); they are inserted into the destination by the source's column names"
)]
pub trait DestTable<M, Src: Table, DB: Backend>:
    Table<FromClause: QueryFragment<DB> + Send + Sync> + on::PgCopy + Copy + Send + Sync + 'static
{
    /// The values of one row, with `Src`'s column names.
    type Values: diesel::insertable::InsertValues<DB, Src> + Send + Sync;
    /// The values of `row`.
    fn values(row: M) -> Self::Values;
}

impl<T, M, Src, V, DB> DestTable<M, Src, DB> for T
where
    DB: Backend,
    T: Table<FromClause: QueryFragment<DB> + Send + Sync>
        + on::PgCopy
        + Copy
        + Send
        + Sync
        + 'static,
    Src: Table,
    M: diesel::Insertable<Src, Values = diesel::query_builder::ValuesClause<V, Src>>,
    V: diesel::insertable::InsertValues<DB, Src> + Send + Sync,
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
    /// What follows the rows: the backend's
    /// [`skip_conflicts`](KeysetBackend::skip_conflicts), or nothing.
    conflicts: String,
    _source: std::marker::PhantomData<fn() -> Src>,
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
        out.push_sql(&self.conflicts);
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

/// The statements `rows` (values of table `Src`) are inserted with, as
/// ranges of `rows`: as many rows a statement as `max_binds` parameters
/// allow. `same_columns`: every row renders the same columns (a backend with
/// `DEFAULT` in multi-row `VALUES`), so they are not compared; otherwise rows
/// whose columns differ go in statements of their own.
fn statements<DB, V, Src>(
    rows: &[V],
    max_binds: usize,
    same_columns: bool,
) -> Vec<std::ops::Range<usize>>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    Src: Table,
    V: diesel::insertable::InsertValues<DB, Src>,
{
    let names = |row: &V| render_sql::<DB, _>(&ColumnNames(row, std::marker::PhantomData::<Src>));
    let mut statements = Vec::new();
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
        statements.push(start..end);
        start = end;
    }
    statements
}

/// What follows the rows of an `INSERT` into the table whose `FROM` clause
/// is `dest`, `row` its first row: the backend's
/// [`skip_conflicts`](KeysetBackend::skip_conflicts) when `skip`, or nothing.
fn conflict_clause<DB, F, V, Src>(skip: bool, dest: &F, row: &V) -> QueryResult<String>
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    F: QueryFragment<DB>,
    Src: Table,
    V: diesel::insertable::InsertValues<DB, Src>,
{
    if !skip {
        return Ok(String::new());
    }
    let from = render_sql::<DB, _>(dest);
    let names = render_sql::<DB, _>(&ColumnNames(row, std::marker::PhantomData::<Src>));
    let first = names.as_deref().and_then(|n| {
        crate::query::top_level_items(n)
            .first()
            .map(|c| c.trim().to_string())
    });
    match (from, first) {
        (Some(from), Some(first)) => Ok(DB::skip_conflicts(&format!("{from}.{first}"))),
        _ => Err(diesel::result::Error::QueryBuilderError(
            "the destination's first column could not be rendered".into(),
        )),
    }
}

/// The `INSERT`s of `rows` (values of table `Src`) into the table whose
/// `FROM` clause is `dest` on backend `DB`: the [`statements`] they need
/// within the backend's [`MAX_BINDS`](KeysetBackend::MAX_BINDS), each
/// skipping conflicts with `skip`. The one place both drivers build them.
fn insert_statements<'r, DB, F, V, Src>(
    dest: &'r F,
    rows: &'r [V],
    skip: bool,
) -> QueryResult<Vec<InsertRows<'r, &'r F, V, Src>>>
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    F: QueryFragment<DB>,
    Src: Table,
    V: diesel::insertable::InsertValues<DB, Src>,
{
    statements::<DB, V, Src>(rows, DB::MAX_BINDS, DB::MULTI_ROW_DEFAULT)
        .into_iter()
        .map(|range| {
            Ok(InsertRows {
                dest,
                conflicts: conflict_clause::<DB, _, _, Src>(skip, dest, &rows[range.start])?,
                rows: &rows[range],
                _source: std::marker::PhantomData,
            })
        })
        .collect()
}

/// Inserts `rows` (values of table `Src`) into the table whose `FROM` clause
/// is `dest`, on `conn`, by its [`insert_statements`]; with `skip`, rows
/// that conflict with the table's are skipped. The rows inserted, or with
/// `skip` the rows given.
fn insert_values<C, F, V, Src>(conn: &mut C, dest: F, rows: Vec<V>, skip: bool) -> QueryResult<u64>
where
    C: diesel::Connection<Backend: KeysetBackend + Default>,
    <C::Backend as Backend>::QueryBuilder: Default,
    F: QueryFragment<C::Backend>,
    Src: Table,
    V: diesel::insertable::InsertValues<C::Backend, Src>,
{
    let mut inserted = 0;
    for statement in insert_statements::<C::Backend, _, _, Src>(&dest, &rows, skip)? {
        inserted += conn.execute_returning_count(&statement)? as u64;
    }
    Ok(if skip { rows.len() as u64 } else { inserted })
}

/// A blocking connection a job can insert rows into: PostgreSQL, MySQL or
/// SQLite, each with the checkpoint statements. Sealed.
pub trait InsertConnection:
    CheckpointConnection + diesel::Connection<Backend: KeysetBackend + Default> + sealed::Sealed
{
    /// Inserts `rows` into `dest`: the rows inserted. With `skip`, rows
    /// that conflict with the table's are skipped, and the result is the
    /// rows given.
    fn insert_rows<T, M, Src>(&mut self, dest: T, rows: Vec<M>, skip: bool) -> QueryResult<u64>
    where
        Src: Table,
        T: DestTable<M, Src, <Self as diesel::Connection>::Backend>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! insert_connection {
    ($feature:literal, $conn:ty) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $conn {}
        #[cfg(feature = $feature)]
        impl InsertConnection for $conn {
            fn insert_rows<T, M, Src>(
                &mut self,
                dest: T,
                rows: Vec<M>,
                skip: bool,
            ) -> QueryResult<u64>
            where
                Src: Table,
                T: DestTable<M, Src, <Self as diesel::Connection>::Backend>,
            {
                let values: Vec<T::Values> = rows.into_iter().map(T::values).collect();
                insert_values::<_, _, _, Src>(self, dest.from_clause(), values, skip)
            }
        }
    };
}
insert_connection!("mysql", diesel::MysqlConnection);
insert_connection!("sqlite", diesel::SqliteConnection);
#[cfg(feature = "postgres")]
impl sealed::Sealed for diesel::PgConnection {}
/// PostgreSQL: a batch without conflicts to skip goes by one binary `COPY`
/// where its rows allow ([`pg_copy`]), else by the `INSERT`s.
#[cfg(feature = "postgres")]
impl InsertConnection for diesel::PgConnection {
    fn insert_rows<T, M, Src>(&mut self, dest: T, rows: Vec<M>, skip: bool) -> QueryResult<u64>
    where
        Src: Table,
        T: DestTable<M, Src, <Self as diesel::Connection>::Backend>,
    {
        let values: Vec<T::Values> = rows.into_iter().map(T::values).collect();
        if !skip {
            let names = values.first().and_then(|row| {
                render_sql::<diesel::pg::Pg, _>(&ColumnNames(row, std::marker::PhantomData::<Src>))
            });
            if let Some(n) = pg_copy::copy_rows(self, dest, &values, names)? {
                return Ok(n as u64);
            }
        }
        insert_values::<_, _, _, Src>(self, dest.from_clause(), values, skip)
    }
}

/// An async connection a job can insert rows into: the async twin of
/// [`InsertConnection`], for diesel-async's PostgreSQL, MySQL and SQLite
/// connections. Sealed.
#[cfg(feature = "async")]
pub trait AsyncInsertConnection:
    crate::checkpoint::AsyncCheckpointConnection
    + diesel_async::AsyncConnectionCore<Backend: KeysetBackend + Default>
    + sealed::Sealed
{
    /// Inserts `rows` into `dest`: the rows inserted. With `skip`, rows
    /// that conflict with the table's are skipped, and the result is the
    /// rows given.
    fn insert_rows<'c, T, M, Src>(
        &'c mut self,
        dest: T,
        rows: Vec<M>,
        skip: bool,
    ) -> futures_util::future::BoxFuture<'c, QueryResult<u64>>
    where
        Src: Table,
        T: DestTable<M, Src, <Self as diesel_async::AsyncConnectionCore>::Backend>,
        M: Send + 'static;
}

/// The blocking connection's [`insert_statements`], awaited.
macro_rules! async_insert_connection {
    ($feature:literal, $conn:ty, $db:ty) => {
        #[cfg(all(feature = "async", feature = $feature))]
        impl sealed::Sealed for $conn {}
        #[cfg(all(feature = "async", feature = $feature))]
        impl AsyncInsertConnection for $conn {
            fn insert_rows<'c, T, M, Src>(
                &'c mut self,
                dest: T,
                rows: Vec<M>,
                skip: bool,
            ) -> futures_util::future::BoxFuture<'c, QueryResult<u64>>
            where
                Src: Table,
                T: DestTable<M, Src, <Self as diesel_async::AsyncConnectionCore>::Backend>,
                M: Send + 'static,
            {
                use diesel_async::AsyncConnectionCore;
                Box::pin(async move {
                    let values: Vec<T::Values> = rows.into_iter().map(T::values).collect();
                    let from = dest.from_clause();
                    let mut inserted = 0;
                    for statement in insert_statements::<$db, _, _, Src>(&from, &values, skip)? {
                        inserted += self.execute_returning_count(statement).await? as u64;
                    }
                    Ok(if skip { values.len() as u64 } else { inserted })
                })
            }
        }
    };
}
async_insert_connection!("postgres", diesel_async::AsyncPgConnection, diesel::pg::Pg);
async_insert_connection!(
    "mysql",
    diesel_async::AsyncMysqlConnection,
    diesel::mysql::Mysql
);

/// SQLite in diesel-async's wrapper: the blocking connection's statements,
/// on the wrapper's blocking thread.
#[cfg(all(feature = "async", feature = "sqlite"))]
mod async_sqlite {
    use super::*;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

    impl sealed::Sealed for SyncConnectionWrapper<diesel::SqliteConnection> {}

    impl AsyncInsertConnection for SyncConnectionWrapper<diesel::SqliteConnection> {
        fn insert_rows<'c, T, M, Src>(
            &'c mut self,
            dest: T,
            rows: Vec<M>,
            skip: bool,
        ) -> futures_util::future::BoxFuture<'c, QueryResult<u64>>
        where
            Src: Table,
            T: DestTable<M, Src, <Self as diesel_async::AsyncConnectionCore>::Backend>,
            M: Send + 'static,
        {
            self.spawn_blocking(move |c| c.insert_rows::<T, M, Src>(dest, rows, skip))
        }
    }
}

#[cfg(feature = "postgres")]
mod pg_copy;
mod to;

pub use to::TransferDsl;

#[cfg(test)]
mod tests {
    use super::{check_other_table, schema_and_name};
    use crate::error::Error;

    #[test]
    fn a_rendered_table_splits_into_its_schema_and_name_unquoted() {
        assert_eq!(schema_and_name("orders"), (None, "orders".into()));
        assert_eq!(schema_and_name("\"orders\""), (None, "orders".into()));
        assert_eq!(
            schema_and_name("\"main\".\"orders\""),
            (Some("main".into()), "orders".into())
        );
        assert_eq!(
            schema_and_name("`shop`.`or.ders`"),
            (Some("shop".into()), "or.ders".into())
        );
        assert_eq!(
            schema_and_name("\"a\"\"b\".\"c\""),
            (Some("a\"b".into()), "c".into())
        );
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_s_main_schema_is_the_unqualified_source() {
        type S = diesel::sqlite::Sqlite;
        let same = check_other_table::<S>("`main`.`orders`", "`orders`", "move_into", true);
        assert!(matches!(same, Err(Error::SameTable { .. })), "{same:?}");
        let same = check_other_table::<S>("`orders`", "`main`.`orders`", "copy_into", false);
        assert!(matches!(same, Err(Error::SameTable { .. })), "{same:?}");
        assert!(check_other_table::<S>("`cold`.`orders`", "`orders`", "move_into", true).is_ok());
        assert!(check_other_table::<S>("`orders_archive`", "`orders`", "move_into", true).is_ok());
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_refuses_a_skipping_move_it_cannot_tell_from_the_source() {
        type M = diesel::mysql::Mysql;
        let err = check_other_table::<M>("`shop`.`orders`", "`orders`", "move_into", true);
        assert!(
            matches!(
                err,
                Err(Error::OptionUnsupported {
                    job: "move_into",
                    ..
                })
            ),
            "{err:?}"
        );
        // Without skipping, the table's own unique violation stops it.
        assert!(check_other_table::<M>("`shop`.`orders`", "`orders`", "move_into", false).is_ok());
        assert!(check_other_table::<M>("`shop`.`orders`", "`orders`", "copy_into", true).is_ok());
        assert!(
            check_other_table::<M>("`shop`.`orders`", "`cold`.`orders`", "move_into", true).is_ok()
        );
    }
}
