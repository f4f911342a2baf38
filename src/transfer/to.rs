//! `copy_to` and `move_to`: a scan's rows, loaded as models, inserted into a
//! table of another database, on blocking and async sources alike.
//!
//! The job runs on the destination: each batch's transaction there inserts
//! the batch's rows (read on the source by the scan's key query) and advances
//! the job's checkpoint, so a batch is in the destination exactly once. A
//! move then deletes on the source what the destination holds: the decisions
//! of that delete are [`MoveSide`]'s (no I/O), the drivers only run its
//! statements.

use std::cmp::Ordering;
use std::sync::{Arc, Mutex};

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::query_builder::{IntoUpdateTarget, QueryFragment};
use diesel::query_dsl::methods::FilterDsl;
use diesel::Table;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{DestTable, InsertConnection};
use crate::backend::KeysetBackend;
use crate::builder::{Chunked, Db};
use crate::checkpoint::{Checkpoint, CheckpointConnection};
use crate::error::Error;
use crate::key::Key;
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::rows::Rows;
use crate::source::{Blocking, ConnectionSource};
use crate::stored::StoredKey;
use crate::write::{
    debug_sql, describe_range, RangeDelete, RangeTable, RangeTarget, UpdatableQuery, WriteReport,
};

/// Copies or moves a scan's rows into a table of another database:
/// [`copy_to`](Self::copy_to) and [`move_to`](Self::move_to).
///
/// `S` is the source, `D` the destination, `Kind` whether they are blocking
/// ([`ConnectionSource`]s: the job returns its result) or async
/// (`AsyncConnectionSource`s: the job is a future of it); `Kind` is inferred.
/// Implemented for every [`Chunked`] scan.
pub trait TransferDsl<S, D, Kind>: Sized {
    /// Copies the query's rows, loaded as `M`, into table `table` of another
    /// database `dest` (any of the backends, a connection or a pool), in
    /// batches: each batch's rows are read from `source` (the scan's key
    /// query, as [`load_batches::<M>`](crate::RunChunkedDsl::load_batches)
    /// reads them) and inserted into `table` in one transaction of `dest`,
    /// with the job's checkpoint, which lives in `dest`'s checkpoint table. A
    /// batch is thus in the destination exactly once, whenever the job stops.
    ///
    /// `M` is the model of the query's table, `Insertable` into it as
    /// `#[derive(Insertable)]` makes it; its rows are inserted into `table`
    /// by the source table's column names, so `table` may have another name
    /// (and more columns, with defaults). Rows are inserted with
    /// multi-row `INSERT`s, as many rows per statement as the destination's
    /// parameter limit allows; into a blocking PostgreSQL connection, with
    /// one binary `COPY ... FROM STDIN` a batch where the destination's
    /// columns are the model's (see [`guide::moving`](crate::guide::moving)). A row whose key `table` already holds fails
    /// the batch with the database's unique violation.
    ///
    /// Source and destination are both blocking (connections, r2d2 pools)
    /// or both async (diesel-async connections, deadpool/bb8 pools; the job
    /// is then a future).
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let mut cold = SqliteConnection::establish(":memory:")?;
    /// # diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY NOT NULL, title TEXT NOT NULL, published BOOLEAN NOT NULL)").execute(&mut cold)?;
    /// diesel_chunked_iterator::checkpoint::create_table(&mut cold)?;
    /// #[derive(Queryable, Selectable, Insertable)]
    /// #[diesel(table_name = posts)]
    /// struct Row { id: i32, title: String, published: bool }
    ///
    /// // Each batch: SELECT <Row's columns> FROM posts WHERE posts.id > $lo ORDER BY posts.id LIMIT 2
    /// //   (on the source), then on `cold`: BEGIN; <lock the checkpoint row>;
    /// //   INSERT INTO posts (id, title, published) VALUES (..), (..); <advance it>; COMMIT
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .checkpoint("to-cold")
    ///     .copy_to::<Row>(&mut *conn, &mut cold, posts::table)?;
    /// assert_eq!((report.rows, report.batches), (5, 3));
    /// assert_eq!(posts::table.count().get_result::<i64>(&mut cold)?, 5);
    /// # Ok(()) }
    /// ```
    fn copy_to<'a, M>(
        self,
        source: S,
        dest: D,
        table: impl DestTable<
            M,
            <Self as CopyToJob<'a, S, D, M, Kind>>::Source,
            <Self as CopyToJob<'a, S, D, M, Kind>>::DestBackend,
        >,
    ) -> <Self as CopyToJob<'a, S, D, M, Kind>>::Output
    where
        Self: CopyToJob<'a, S, D, M, Kind>,
    {
        self.run_copy_to(source, dest, table)
    }

    /// Moves the query's rows, loaded as `M`, into table `table` of another
    /// database `dest`: [`copy_to`](Self::copy_to), and after each batch the
    /// destination committed, the rows it copied deleted from the query's
    /// table by their keys: `DELETE FROM <table> WHERE key > $lo AND key <=
    /// $hi AND key IN (<the batch's keys>)`, in a transaction of `source` that
    /// also advances the source's own row of the job in its checkpoint table.
    ///
    /// Needs a [`checkpoint`](crate::Chunked::checkpoint), and the checkpoint
    /// table in both databases. A run stopped at any instant leaves every
    /// row in exactly one of the databases or in both, the latter only for
    /// the batch the destination committed last; the next run deletes those
    /// from the source first, by the range and the query's filters, which
    /// must remove exactly as many rows as the destination copied, or it
    /// rolls back and the job stops with
    /// [`Error::MoveChanged`](crate::Error::MoveChanged) (another writer added
    /// rows to the range). Rows of the range updated between
    /// their copy and their delete keep the copy's values: a move is for
    /// rows that are no longer written, such as old orders.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// use diesel_chunked_iterator::checkpoint;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let mut cold = SqliteConnection::establish(":memory:")?;
    /// # diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY NOT NULL, title TEXT NOT NULL, published BOOLEAN NOT NULL)").execute(&mut cold)?;
    /// checkpoint::create_table(&mut *conn)?;
    /// checkpoint::create_table(&mut cold)?;
    /// #[derive(Queryable, Selectable, Insertable)]
    /// #[diesel(table_name = posts)]
    /// struct Row { id: i32, title: String, published: bool }
    ///
    /// let report = posts::table
    ///     .filter(posts::published.eq(false))
    ///     .chunked_by(posts::id)
    ///     .checkpoint("unpublished-to-cold")
    ///     .move_to::<Row>(&mut *conn, &mut cold, posts::table)?;
    /// assert_eq!(report.rows, 2);
    /// assert_eq!(posts::table.count().get_result::<i64>(conn)?, 3);
    /// assert_eq!(posts::table.count().get_result::<i64>(&mut cold)?, 2);
    /// # Ok(()) }
    /// ```
    fn move_to<'a, M>(
        self,
        source: S,
        dest: D,
        table: impl DestTable<
            M,
            <Self as MoveToJob<'a, S, D, M, Kind>>::Source,
            <Self as MoveToJob<'a, S, D, M, Kind>>::DestBackend,
        >,
    ) -> <Self as MoveToJob<'a, S, D, M, Kind>>::Output
    where
        Self: MoveToJob<'a, S, D, M, Kind>,
    {
        self.run_move_to(source, dest, table)
    }
}

impl<Q, K: Key, S, D, Kind> TransferDsl<S, D, Kind> for Chunked<Q, K> {}

/// Everything `copy_to::<M>` needs of a scan read from source `S` as models
/// `M` and inserted through destination `D`.
#[diagnostic::on_unimplemented(
    message = "`copy_to::<{M}>` needs a scan that can load `{M}` from this source, and a destination of the same kind",
    label = "cannot copy `{M}` in batches from this source to this destination",
    note = "`{M}` must be `Selectable` and `Queryable` from the query's table, as for `load_iter::<{M}>`; source and destination must both be blocking (connections, r2d2 pools) or both async (diesel-async connections, deadpool/bb8 pools)"
)]
pub trait CopyToJob<'a, S, D, M, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on blocking
    /// sources, a future of it on async ones.
    type Output;
    /// The query's table, which `M` is `Insertable` into.
    type Source: Table;
    /// The destination's backend.
    type DestBackend: Backend;
    /// Runs the job.
    fn run_copy_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Self::Output;
}

/// Everything `move_to::<M>` needs besides what `copy_to::<M>` does: the
/// query is of one table the source can delete from.
#[diagnostic::on_unimplemented(
    message = "`move_to::<{M}>` needs a query of one table that Diesel can DELETE from, loading `{M}`, and a destination of the source's kind",
    label = "not a query `move_to::<{M}>` can move rows of to this destination",
    note = "`copy_to::<{M}>` copies the rows of any query that loads `{M}`; source and destination must both be blocking or both async"
)]
pub trait MoveToJob<'a, S, D, M, Kind> {
    /// What the job returns: `Result<WriteReport<_>, Error>` on blocking
    /// sources, a future of it on async ones.
    type Output;
    /// The query's table, which `M` is `Insertable` into.
    type Source: Table;
    /// The destination's backend.
    type DestBackend: Backend;
    /// Runs the job.
    fn run_move_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Self::Output;
}

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S, D, M> CopyToJob<'a, S, D, M, Blocking> for Chunked<Q, K>
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
    D: ConnectionSource<Connection: InsertConnection>,
{
    type Output = Result<WriteReport<K::Value>, Error>;
    type Source = <Q as HasTable>::Table;
    type DestBackend = <D::Connection as diesel::Connection>::Backend;

    fn run_copy_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Self::Output {
        let reads = crate::write::Elsewhere(source);
        to_another_database::<Q, K, S, M, D, T, Self::Source>(
            self, "copy_to", reads, dest, table, None,
        )
    }
}

#[diagnostic::do_not_recommend]
impl<'a, Q, K, S, D, M> MoveToJob<'a, S, D, M, Blocking> for Chunked<Q, K>
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
    D: ConnectionSource<Connection: InsertConnection>,
{
    type Output = Result<WriteReport<K::Value>, Error>;
    type Source = RangeTable<Q, K>;
    type DestBackend = <D::Connection as diesel::Connection>::Backend;

    fn run_move_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
        self,
        source: S,
        dest: D,
        table: T,
    ) -> Self::Output {
        let side = MoveSide::of(&self)?;
        let copied = side.copied.clone();
        let reads = Moving {
            source: crate::write::Elsewhere(source),
            side,
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

/// The keys the destination's last committed batch holds, as its write
/// recorded them: what the source's delete of that batch takes.
pub(crate) type Copied<V> = Arc<Mutex<Vec<StoredKey<V>>>>;

/// Records the keys of the batch being written: the source's delete of the
/// batch takes those once the destination committed it.
fn record<V: Clone, L: crate::rows::LoadedRow<V, M>, M>(copied: &Option<Copied<V>>, rows: &[L]) {
    if let Some(copied) = copied {
        let mut keys = copied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *keys = rows.iter().map(|r| r.key().clone()).collect();
    }
}

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

/// What `move_to` decides on the source, with no I/O: whose checkpoint row
/// the source's is, and what the source's transaction deletes to catch up
/// with the destination.
///
/// The source keeps a row of its own in its checkpoint table, under the
/// job's name: how far its deletes have come (the key, and the rows deleted
/// so far). The destination's checkpoint row says how far the copies have
/// come. The range between the two is deleted in one transaction of the
/// source, which advances its row: after a batch of this run, by the keys
/// the batch copied; after a stop between the destination's commit and the
/// source's, by the range and the query's filters, which must delete exactly
/// as many rows as the destination copied since.
pub(crate) struct MoveSide<Q, K: Key> {
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

/// The source's delete of the rows the destination copied beyond the
/// source's own row.
pub(crate) struct SourceDelete<V> {
    /// The range; with `only`, the keys the batch copied.
    range: Bounds<V>,
    /// Whether the delete takes the batch's keys (else the range and the
    /// query's filters).
    by_keys: bool,
    /// The rows the destination copied in the range.
    expected: u64,
}

impl<Q: Clone, K: Key> MoveSide<Q, K>
where
    K::Value: DeserializeOwned,
{
    /// The source side of `move_to` for `chunked`, which needs a checkpoint.
    fn of(chunked: &Chunked<Q, K>) -> Result<Self, Error> {
        let Some(name) = chunked.write.checkpoint.clone() else {
            return Err(Error::MoveNeedsCheckpoint);
        };
        let key_type = format!(
            "{} as {} (move_to: deleted from the source)",
            chunked.key.describe(),
            std::any::type_name::<K::Value>()
        );
        Ok(Self {
            name,
            key: chunked.key,
            query: chunked.query.clone(),
            bounds: chunked.bounds(),
            key_type,
            claimed: false,
            copied: Default::default(),
        })
    }

    /// Whether `marker`, the source's row as the job claimed it, is this
    /// job's.
    fn check_claim(&self, marker: &Checkpoint, fingerprint: &str) -> Result<(), Error> {
        let name = &self.name;
        if marker.key_type != self.key_type {
            // The row the destination's job wrote: source and destination
            // share the checkpoint table, so one database.
            return Err(Error::MoveSameDatabase { name: name.clone() });
        }
        if marker.query_fingerprint.as_deref() != Some(fingerprint) {
            return Err(Error::CheckpointMismatch {
                name: name.clone(),
                stored: format!("{} in the source database", marker.key_type),
                expected: self.key_type.clone(),
            });
        }
        Ok(())
    }

    /// A key stored in a checkpoint row of type `stored_type`.
    fn parse(
        &self,
        json: &Option<String>,
        stored_type: &str,
    ) -> Result<Option<StoredKey<K::Value>>, Error> {
        json.as_deref()
            .map(|j| {
                serde_json::from_str(j).map_err(|e| Error::CheckpointMismatch {
                    name: self.name.clone(),
                    stored: format!("{stored_type} (last key {j}: {e})"),
                    expected: self.key_type.clone(),
                })
            })
            .transpose()
    }

    /// What the source's transaction deletes, its row (locked) being `marker`
    /// and the destination's `copied`: nothing when they agree.
    fn plan(
        &self,
        marker: &Checkpoint,
        copied: &Checkpoint,
    ) -> Result<Option<SourceDelete<K::Value>>, Error> {
        if marker.rows == copied.rows {
            return Ok(None);
        }
        if marker.rows > copied.rows {
            // The destination's row was reset (or is another run's): deleting
            // by it would leave copied rows in the source.
            let stored = format!(
                "{} with {} rows deleted in the source, more than the {} the destination's \
                 row says were copied (reset both rows with checkpoint::reset, or neither)",
                marker.key_type, marker.rows, copied.rows
            );
            return Err(Error::CheckpointMismatch {
                name: self.name.clone(),
                stored,
                expected: self.key_type.clone(),
            });
        }
        let until = self.parse(&copied.last_key, &copied.key_type)?;
        let mut range = self.bounds.clone();
        if let Some(after) = self.parse(&marker.last_key, &marker.key_type)? {
            range.after = Some(after);
        }
        range.until = until.clone();
        let expected = copied.rows - marker.rows;
        // The keys the batch copied, when the gap is that batch: the delete
        // takes those rows, whatever the filters say of them now, and no
        // other; after a stop between the two commits, the range and the
        // filters, checked by the count.
        let keys = self
            .copied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = keys.last().map(|k| &k.value);
        let by_keys = keys.len() as u64 == expected
            && match (last, until.as_ref()) {
                (Some(a), Some(b)) => K::compare(a, &b.value) == Some(Ordering::Equal),
                _ => false,
            };
        if by_keys {
            range.only = Some(Arc::new(keys.clone()));
        }
        Ok(Some(SourceDelete {
            range,
            by_keys,
            expected,
        }))
    }

    /// `DELETE FROM <table> WHERE <range> AND key IN (<the batch's keys>)`.
    fn keys_delete(&self, plan: &SourceDelete<K::Value>) -> KeysDelete<Q, K>
    where
        Q: FilterDsl<SeekPredicate<K>>,
        RangeTarget<Q, K>: IntoUpdateTarget,
        RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
        diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
            IntoUpdateTarget<Table = RangeTable<Q, K>>,
    {
        let predicate = SeekPredicate::new(self.key, BoundsCell::new(plan.range.clone()));
        let table = <RangeTarget<Q, K> as HasTable>::table();
        diesel::delete(FilterDsl::filter(table, predicate))
    }

    /// `DELETE FROM <table> WHERE <the query's filters> AND <range>`.
    fn range_delete(&self, plan: &SourceDelete<K::Value>) -> RangeDelete<Q, K>
    where
        Q: FilterDsl<SeekPredicate<K>>,
        RangeTarget<Q, K>: IntoUpdateTarget,
    {
        let predicate = SeekPredicate::new(self.key, BoundsCell::new(plan.range.clone()));
        diesel::delete(FilterDsl::filter(self.query.clone(), predicate))
    }
}

impl<V: std::fmt::Debug> SourceDelete<V> {
    /// Whether `deleted` rows is what the delete must take: at most the
    /// batch's keys (a copied row another writer deleted meanwhile is moved
    /// all the same), or exactly the rows copied in the range.
    fn check(&self, deleted: u64) -> Result<(), Error> {
        let agrees = match self.by_keys {
            true => deleted <= self.expected,
            false => deleted == self.expected,
        };
        if agrees {
            return Ok(());
        }
        Err(Error::MoveChanged {
            range: describe_range(&self.range),
            copied: self.expected,
            deleted,
            locked: None,
        })
    }
}

/// The read side of `move_to`: reads the rows on the source, as `copy_to`
/// does, and after each batch the destination committed deletes there the
/// rows the destination holds now, as its [`MoveSide`] decides.
pub(crate) struct Moving<Src, Q, K: Key> {
    source: crate::write::Elsewhere<Src>,
    side: MoveSide<Q, K>,
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
        use diesel::query_dsl::methods::ExecuteDsl;
        let (src, side) = (&mut self.source.0, &mut self.side);
        if !side.claimed {
            let marker = src
                .run(false, |c| {
                    c.start_checkpoint(&side.name, &side.key_type)?;
                    c.claim_checkpoint(&side.name, fingerprint)
                })
                .map_err(query_error("move_to: the source's checkpoint row"))?;
            side.check_claim(&marker, fingerprint)?;
            side.claimed = true;
        }
        let side = &*side;
        // What stopped the source's transaction, besides the database.
        let mut stop: Option<Error> = None;
        let done = src.run(false, |c| {
            c.batch_transaction(|c| {
                let Some(marker) = c.lock_checkpoint(&side.name)? else {
                    return Err(diesel::result::Error::NotFound);
                };
                let plan = match side.plan(&marker, copied) {
                    Ok(Some(plan)) => plan,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        stop = Some(e);
                        return Err(diesel::result::Error::RollbackTransaction);
                    }
                };
                let deleted = match plan.by_keys {
                    true => ExecuteDsl::execute(side.keys_delete(&plan), c)?,
                    false => ExecuteDsl::execute(side.range_delete(&plan), c)?,
                };
                if let Err(e) = plan.check(deleted as u64) {
                    stop = Some(e);
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                c.advance_checkpoint(
                    &side.name,
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
    ) -> diesel::QueryResult<Vec<R::Loaded>> {
        crate::write::ReadSide::<S, B, K, R>::load(&mut self.source, rows, query, conn, limit)
    }

    fn catch_up(&mut self, source: &mut S, fingerprint: &str) -> Result<(), Error> {
        let name = self.side.name.as_str();
        let copied = source
            .run(false, |c| c.read_checkpoint(name))
            .map_err(query_error("move_to: the destination's checkpoint row"))?;
        match copied {
            Some(copied) => self.delete_copied(&copied, fingerprint),
            None => Ok(()),
        }
    }
}

/// The statement and SQL of `copy_to` / `move_to` into `T`, as the job's
/// identity and its reports show it.
fn job_sql<DB, Q, T>(
    verb: &'static str,
    query: &Q,
    write: &crate::write::WriteConfig,
) -> crate::write::WriteConfig
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    Q: QueryFragment<DB>,
{
    let target = std::any::type_name::<T>();
    let sql = format!("INTO {target}\n{}", debug_sql::<DB, _>(query));
    write.clone().with_identity(verb, sql)
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
    copied: Option<Copied<K::Value>>,
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
    T: DestTable<M, Src, <D::Connection as diesel::Connection>::Backend>,
{
    use crate::rows::LoadedRow;
    let job = job_sql::<Db<S>, _, T>(verb, &chunked.query, &chunked.write);
    let skip = job.skip_conflicts;
    let (query, rows, scan) = chunked.model_parts::<Db<S>, M>();
    crate::write::run_job_reading(
        dest,
        reads,
        query,
        rows,
        scan,
        job,
        &mut |conn, loaded, _| {
            record(&copied, &loaded);
            let rows: Vec<M> = loaded.into_iter().map(|r| r.into_parts().1).collect();
            Ok(conn.insert_rows::<_, _, Src>(table, rows, skip)?)
        },
    )
}

#[cfg(feature = "async")]
mod nonblocking {
    use std::panic::AssertUnwindSafe;

    use diesel::associations::HasTable;
    use diesel::backend::Backend;
    use diesel::query_builder::{IntoUpdateTarget, QueryFragment};
    use diesel::query_dsl::methods::FilterDsl;
    use diesel::Table;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::{
        job_sql, query_error, record, Copied, CopyToJob, KeysDelete, MoveSide, MoveToJob, Moving,
    };
    use crate::backend::KeysetBackend;
    use crate::builder::{Chunked, ModelBase};
    use crate::checkpoint::{end_transaction, AsyncCheckpointConnection, Checkpoint};
    use crate::error::Error;
    use crate::key::Key;
    use crate::machine::Abort;
    use crate::predicate::{Bounds, SeekPredicate};
    use crate::query::{PrepareModel, SeekQuery};
    use crate::rows::{LoadedRow, ModelRows, RowType};
    use crate::source::NonBlocking;
    use crate::stream::write::{run_job_reading, AsyncReadSide, BatchWrite};
    use crate::stream::{AsyncConnectionSource, AsyncDb, AsyncRows};
    use crate::transfer::{AsyncInsertConnection, DestTable};
    use crate::write::{
        Elsewhere, RangeDelete, RangeTable, RangeTarget, UpdatableQuery, WriteReport,
    };

    #[diagnostic::do_not_recommend]
    impl<'a, 'f, Q, K, S, D, M> CopyToJob<'a, S, D, M, NonBlocking<'f>> for Chunked<Q, K>
    where
        K: Key + Send + 'f,
        K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
        S: AsyncConnectionSource + 'f,
        AsyncDb<S>: KeysetBackend + Default,
        <AsyncDb<S> as Backend>::QueryBuilder: Default,
        Q: PrepareModel<'a, K, M, AsyncDb<S>> + QueryFragment<AsyncDb<S>> + HasTable + 'f,
        ModelBase<'a, Q, K, M, AsyncDb<S>>: Send + 'f,
        ModelRows<M>: AsyncRows<S::Connection, ModelBase<'a, Q, K, M, AsyncDb<S>>, K, Item = M>,
        <ModelRows<M> as RowType<K>>::Loaded: LoadedRow<K::Value, M> + Send,
        M: Send + 'static,
        D: AsyncConnectionSource<Connection: AsyncInsertConnection> + 'f,
    {
        type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;
        type Source = <Q as HasTable>::Table;
        type DestBackend = <D::Connection as diesel_async::AsyncConnectionCore>::Backend;

        fn run_copy_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
            self,
            source: S,
            dest: D,
            table: T,
        ) -> Self::Output {
            let reads = Elsewhere(source);
            to_another_database::<Q, K, S, M, D, T, Self::Source, _>(
                self, "copy_to", reads, dest, table, None,
            )
        }
    }

    #[diagnostic::do_not_recommend]
    impl<'a, 'f, Q, K, S, D, M> MoveToJob<'a, S, D, M, NonBlocking<'f>> for Chunked<Q, K>
    where
        K: Key + Send + Sync + 'f,
        K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
        S: AsyncConnectionSource + 'f,
        S::Connection: AsyncCheckpointConnection,
        AsyncDb<S>: KeysetBackend + Default,
        <AsyncDb<S> as Backend>::QueryBuilder: Default,
        Q: PrepareModel<'a, K, M, AsyncDb<S>> + QueryFragment<AsyncDb<S>>,
        Q: UpdatableQuery + Clone + FilterDsl<SeekPredicate<K>> + Send + Sync + 'f,
        RangeTarget<Q, K>: IntoUpdateTarget,
        RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<S::Connection> + Send,
        RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
        diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
            IntoUpdateTarget<Table = RangeTable<Q, K>>,
        KeysDelete<Q, K>: diesel_async::methods::ExecuteDsl<S::Connection> + Send,
        ModelBase<'a, Q, K, M, AsyncDb<S>>: Send + 'f,
        ModelRows<M>: AsyncRows<S::Connection, ModelBase<'a, Q, K, M, AsyncDb<S>>, K, Item = M>,
        <ModelRows<M> as RowType<K>>::Loaded: LoadedRow<K::Value, M> + Send,
        M: Send + 'static,
        D: AsyncConnectionSource<Connection: AsyncInsertConnection> + 'f,
    {
        type Output = BoxFuture<'f, Result<WriteReport<K::Value>, Error>>;
        type Source = RangeTable<Q, K>;
        type DestBackend = <D::Connection as diesel_async::AsyncConnectionCore>::Backend;

        fn run_move_to<T: DestTable<M, Self::Source, Self::DestBackend>>(
            self,
            source: S,
            dest: D,
            table: T,
        ) -> Self::Output {
            let side = match MoveSide::of(&self) {
                Ok(side) => side,
                Err(e) => return Box::pin(async move { Err(e) }),
            };
            let copied = side.copied.clone();
            let reads = Moving {
                source: Elsewhere(source),
                side,
            };
            to_another_database::<Q, K, S, M, D, T, Self::Source, _>(
                self,
                "move_to",
                reads,
                dest,
                table,
                Some(copied),
            )
        }
    }

    /// `copy_to` and `move_to` on async sources: the job runs on the
    /// destination `dest`, reading where `reads` says.
    fn to_another_database<'a, 'f, Q, K, S, M, D, T, Src, R>(
        chunked: Chunked<Q, K>,
        verb: &'static str,
        reads: R,
        dest: D,
        table: T,
        copied: Option<Copied<K::Value>>,
    ) -> BoxFuture<'f, Result<WriteReport<K::Value>, Error>>
    where
        K: Key + Send + 'f,
        K::Value: Serialize + DeserializeOwned + Send + Sync + 'f,
        S: AsyncConnectionSource,
        AsyncDb<S>: KeysetBackend + Default,
        <AsyncDb<S> as Backend>::QueryBuilder: Default,
        Q: PrepareModel<'a, K, M, AsyncDb<S>> + QueryFragment<AsyncDb<S>>,
        ModelBase<'a, Q, K, M, AsyncDb<S>>: Send + 'f,
        ModelRows<M>: RowType<K, Item = M>,
        <ModelRows<M> as RowType<K>>::Loaded: LoadedRow<K::Value, M> + Send,
        M: Send + 'static,
        D: AsyncConnectionSource<Connection: AsyncInsertConnection> + 'f,
        Src: Table + 'f,
        T: DestTable<M, Src, <D::Connection as diesel_async::AsyncConnectionCore>::Backend>,
        R: AsyncReadSide<D, ModelBase<'a, Q, K, M, AsyncDb<S>>, K, ModelRows<M>> + 'f,
    {
        let job = job_sql::<AsyncDb<S>, _, T>(verb, &chunked.query, &chunked.write);
        let (query, rows, scan) = chunked.model_parts::<AsyncDb<S>, M>();
        let write = InsertWrite::<T, Src, M, K::Value> {
            table,
            skip: job.skip_conflicts,
            copied,
            _rows: std::marker::PhantomData,
        };
        Box::pin(run_job_reading(dest, reads, query, rows, scan, job, write))
    }

    /// The insert of `copy_to` / `move_to` on an async destination.
    struct InsertWrite<T, Src, M, V> {
        table: T,
        skip: bool,
        copied: Option<Copied<V>>,
        _rows: std::marker::PhantomData<fn() -> (Src, M)>,
    }

    impl<C, L, T, Src, M, V> BatchWrite<C, L, V> for InsertWrite<T, Src, M, V>
    where
        C: AsyncInsertConnection,
        L: LoadedRow<V, M> + Send,
        V: Clone + Send + Sync,
        M: Send + 'static,
        Src: Table,
        T: DestTable<M, Src, C::Backend>,
    {
        fn write<'c>(
            &'c mut self,
            conn: &'c mut C,
            rows: Vec<L>,
            _range: &'c Bounds<V>,
        ) -> BoxFuture<'c, Result<u64, Abort>> {
            record(&self.copied, &rows);
            let rows: Vec<M> = rows.into_iter().map(|r| r.into_parts().1).collect();
            let insert = conn.insert_rows::<T, M, Src>(self.table, rows, self.skip);
            Box::pin(async move { Ok(insert.await?) })
        }
    }

    impl<S, Src, Q, K, B, R> AsyncReadSide<S, B, K, R> for Moving<Src, Q, K>
    where
        S: AsyncConnectionSource,
        S::Connection: AsyncCheckpointConnection,
        Src: AsyncConnectionSource,
        Src::Connection: AsyncCheckpointConnection,
        AsyncDb<Src>: KeysetBackend,
        K: Key + Send + Sync,
        K::Value: Serialize + DeserializeOwned + Send + Sync,
        R: AsyncRows<Src::Connection, B, K>,
        R::Loaded: Send,
        SeekQuery<B, K>: Send,
        B: Send,
        Q: FilterDsl<SeekPredicate<K>> + Clone + Send + Sync,
        RangeTarget<Q, K>: IntoUpdateTarget,
        RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<Src::Connection> + Send,
        RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
        diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
            IntoUpdateTarget<Table = RangeTable<Q, K>>,
        KeysDelete<Q, K>: diesel_async::methods::ExecuteDsl<Src::Connection> + Send,
    {
        fn check<'x>(
            &'x mut self,
            first: &'x mut crate::iter::FirstBatch<'_, B, K, R>,
            source: &'x mut S,
            steps: crate::iter::FirstSteps,
        ) -> BoxFuture<'x, Result<(), Error>> {
            AsyncReadSide::<S, B, K, R>::check(&mut self.source, first, source, steps)
        }

        fn stored_forms(&self) -> bool {
            <AsyncDb<Src> as KeysetBackend>::STORED_FORMS
        }

        fn load<'x>(
            &'x mut self,
            rows: &'x mut R,
            query: &'x mut SeekQuery<B, K>,
            conn: &'x mut S::Connection,
            limit: i64,
        ) -> BoxFuture<'x, diesel::QueryResult<Vec<R::Loaded>>> {
            AsyncReadSide::<S, B, K, R>::load(&mut self.source, rows, query, conn, limit)
        }

        fn catch_up<'x>(
            &'x mut self,
            source: &'x mut S,
            fingerprint: &'x str,
        ) -> BoxFuture<'x, Result<(), Error>> {
            Box::pin(async move {
                let mut name = self.side.name.clone();
                let copied = source
                    .run(false, &mut name, |c, name| c.read_checkpoint(name))
                    .await
                    .map_err(query_error("move_to: the destination's checkpoint row"))?;
                match copied {
                    Some(copied) => self.delete_copied_async(&copied, fingerprint).await,
                    None => Ok(()),
                }
            })
        }
    }

    impl<Src, Q, K> Moving<Src, Q, K>
    where
        Src: AsyncConnectionSource,
        Src::Connection: AsyncCheckpointConnection,
        K: Key + Send + Sync,
        K::Value: Serialize + DeserializeOwned + Send + Sync,
        Q: FilterDsl<SeekPredicate<K>> + Clone + Send + Sync,
        RangeTarget<Q, K>: IntoUpdateTarget,
        RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<Src::Connection> + Send,
        RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
        diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
            IntoUpdateTarget<Table = RangeTable<Q, K>>,
        KeysDelete<Q, K>: diesel_async::methods::ExecuteDsl<Src::Connection> + Send,
    {
        /// The async twin of the blocking `delete_copied`: the same
        /// decisions (the [`MoveSide`]'s), the statements awaited.
        async fn delete_copied_async(
            &mut self,
            copied: &Checkpoint,
            fingerprint: &str,
        ) -> Result<(), Error> {
            let (src, side) = (&mut self.source.0, &mut self.side);
            if !side.claimed {
                let mut args = (side.name.clone(), side.key_type.clone(), fingerprint);
                let marker = src
                    .run(false, &mut args, |c, (name, key_type, fingerprint)| {
                        Box::pin(async move {
                            c.start_checkpoint(name, key_type).await?;
                            c.claim_checkpoint(name, fingerprint).await
                        })
                    })
                    .await
                    .map_err(query_error("move_to: the source's checkpoint row"))?;
                side.check_claim(&marker, fingerprint)?;
                side.claimed = true;
            }
            let mut state = SourceTransaction {
                side: &*side,
                copied,
                stop: None,
            };
            let done = src
                .run(false, &mut state, |c, state| Box::pin(state.run(c)))
                .await;
            if let Some(e) = state.stop {
                return Err(e);
            }
            done.map_err(query_error(
                "move_to: deleting the copied rows from the source",
            ))
        }
    }

    /// The source's transaction of an async `move_to`, and what stopped it
    /// besides the database.
    struct SourceTransaction<'m, Q, K: Key> {
        side: &'m MoveSide<Q, K>,
        copied: &'m Checkpoint,
        stop: Option<Error>,
    }

    impl<Q, K> SourceTransaction<'_, Q, K>
    where
        K: Key + Send + Sync,
        K::Value: Serialize + DeserializeOwned + Send + Sync,
        Q: FilterDsl<SeekPredicate<K>> + Clone + Send + Sync,
        RangeTarget<Q, K>: IntoUpdateTarget,
        RangeTable<Q, K>: FilterDsl<SeekPredicate<K>>,
        diesel::dsl::Filter<RangeTable<Q, K>, SeekPredicate<K>>:
            IntoUpdateTarget<Table = RangeTable<Q, K>>,
    {
        async fn run<C>(&mut self, c: &mut C) -> diesel::QueryResult<()>
        where
            C: AsyncCheckpointConnection,
            RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
            KeysDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
        {
            c.begin_batch().await?;
            let body = AssertUnwindSafe(self.body(c)).catch_unwind().await;
            end_transaction(c, body).await
        }

        async fn body<C>(&mut self, c: &mut C) -> diesel::QueryResult<()>
        where
            C: AsyncCheckpointConnection,
            RangeDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
            KeysDelete<Q, K>: diesel_async::methods::ExecuteDsl<C> + Send,
        {
            let (side, copied) = (self.side, self.copied);
            let Some(marker) = c.lock_checkpoint(&side.name).await? else {
                return Err(diesel::result::Error::NotFound);
            };
            let plan = match side.plan(&marker, copied) {
                Ok(Some(plan)) => plan,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.stop = Some(e);
                    return Err(diesel::result::Error::RollbackTransaction);
                }
            };
            let deleted = match plan.by_keys {
                true => {
                    diesel_async::RunQueryDsl::execute(side.keys_delete(&plan), &mut *c).await?
                }
                false => {
                    diesel_async::RunQueryDsl::execute(side.range_delete(&plan), &mut *c).await?
                }
            };
            if let Err(e) = plan.check(deleted as u64) {
                self.stop = Some(e);
                return Err(diesel::result::Error::RollbackTransaction);
            }
            c.advance_checkpoint(
                &side.name,
                copied.last_key.as_deref(),
                copied.rows,
                copied.batches,
                copied.done,
            )
            .await
        }
    }
}
