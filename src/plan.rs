//! Planning a scan before it runs: splitting the key range into
//! [`Partition`]s for many workers, and estimating how many rows a scan will
//! yield.
//!
//! Both run one query on the user's query as the scan would see it: its own
//! filters and joins, plus the scan's bounds (`start_after`, `end_at`,
//! `within`).
//!
//! The partition boundaries come from the database in one statement, with window
//! functions (PostgreSQL, MariaDB/MySQL 8 and SQLite 3.25 all have them):
//!
//! ```text
//! SELECT p.k0 [, p.k1 ...], p.rn, p.cnt FROM (
//!     SELECT d.k0 [, ...],
//!            ROW_NUMBER() OVER (ORDER BY d.k0 [, ...]) AS rn,
//!            COUNT(*) OVER () AS cnt
//!     FROM (
//!         SELECT [DISTINCT] <key columns> AS k0 [, ...]
//!         FROM ... WHERE (<the query's filters>) AND <the scan's bounds>
//!     ) d
//! ) p
//! WHERE CASE WHEN p.cnt <= $n THEN 1 WHEN (p.rn * $n) % p.cnt < $n THEN 1 ELSE 0 END = 1
//! ORDER BY p.rn
//! ```
//!
//! The rows are numbered over the query's own result (after its `DISTINCT`), so
//! a join that repeats a key does not skew the slices.
//!
//! Row `rn` is kept when a multiple of `cnt` lies in `((rn - 1)·n, rn·n]`, that
//! is for `rn = ⌈j·cnt/n⌉`, `j = 1..=n`: exactly `n` rows when the query has at
//! least `n` rows (every row otherwise), the last of them row `cnt`. The kept keys
//! but the last are the boundaries, so slice sizes differ by at most one row,
//! however skewed or gappy the keys are. The statement reads every key of the
//! range once, from the key's index where there is one; no rows are sent back but
//! the `n` boundaries.

use std::cmp::Ordering;

use diesel::backend::Backend;
use diesel::deserialize::{FromSql, QueryableByName};
use diesel::expression::{is_aggregate, AppearsOnTable, Expression, SelectableExpression};
use diesel::expression::{TypedExpressionType, ValidGrouping};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::{FilterDsl, SelectDsl};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, HasSqlType, Text, Untyped};
use diesel::{QueryResult, RunQueryDsl};

use crate::backend::KeysetBackend;
use crate::error::Error;
use crate::key::{Key, KeyFromRow, KeySql};
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::query::{ChunkableQuery, SelectableKey};
use crate::stored::StoredKey;
use diesel::internal::derives::multiconnection::BoxedSelectStatement;
use diesel::internal::table_macro::FromClause;
use diesel::query_source::QuerySource;

pub mod sample;

/// One slice of a key range: the rows with `start_after < key <= end_at`, where
/// a missing end is open.
///
/// Made by [`Chunked::partitions`](crate::Chunked::partitions); scanned with
/// [`Chunked::within`](crate::Chunked::within). The slices of one call are
/// disjoint and cover the scan's whole key range: the first starts where the
/// scan starts and the last ends where it ends (open ends for a scan without
/// bounds, so rows inserted later before the first key or after the last are
/// still covered). It serializes (serde), to be handed to a job queue.
///
/// ```
/// use diesel_chunked_iterator::Partition;
///
/// let p = Partition { index: 1, start_after: Some(250), end_at: Some(500), rows: 250 };
/// assert!(!p.contains(&250));
/// assert!(p.contains(&251) && p.contains(&500));
/// assert!(!p.contains(&501));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Partition<V> {
    /// The slice's position, from 0, in ascending key order.
    pub index: usize,
    /// Exclusive lower end; `None` for the first slice.
    pub start_after: Option<V>,
    /// Inclusive upper end; `None` for the last slice.
    pub end_at: Option<V>,
    /// How many rows the slice held when the partitions were computed.
    pub rows: u64,
}

impl<V: PartialOrd> Partition<V> {
    /// Whether `key` falls in this slice, by Rust's ordering of the values.
    ///
    /// For numbers, dates, timestamps and UUIDs this is the database's ordering;
    /// text keys follow the database's collation, which Rust does not know.
    pub fn contains(&self, key: &V) -> bool {
        self.start_after.as_ref().is_none_or(|a| key > a)
            && self.end_at.as_ref().is_none_or(|e| key <= e)
    }
}

/// One kept row of the partition statement: a boundary key (as stored), its row
/// number and the row count.
#[doc(hidden)]
#[derive(Debug)]
pub struct PartitionRow<K: Key> {
    key: StoredKey<K::Value>,
    rn: i64,
    cnt: i64,
}

impl<K, DB> QueryableByName<DB> for PartitionRow<K>
where
    DB: KeysetBackend + HasSqlType<BigInt>,
    K: KeyFromRow<DB>,
    i64: FromSql<BigInt, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        Ok(PartitionRow {
            key: K::from_row(row, &[0, 1, 2])?,
            rn: row.get_value::<BigInt, i64, usize>(K::ARITY)?,
            cnt: row.get_value::<BigInt, i64, usize>(K::ARITY + 1)?,
        })
    }
}

/// The outer ends a scan's slices get: its exclusive lower end and inclusive
/// upper end in ascending key order, from its bounds.
pub(crate) type OuterEnds<V> = (Option<V>, Option<V>);

/// The scan's bounds as the outer ends of its slices.
pub(crate) fn outer_ends<K: Key>(b: &Bounds<K::Value>) -> Result<OuterEnds<K::Value>, Error> {
    let refuse = |reason: &str| {
        Err(Error::PartitionBounds {
            reason: reason.into(),
        })
    };
    if b.desc && (b.after.is_some() || b.until.is_some()) {
        return refuse(
            "a descending scan's start_after/end_at are an exclusive upper and an inclusive \
             lower end, which a slice (start_after < key <= end_at) cannot carry; partition \
             the ascending scan with the same keys (start_after(low).end_at(high)) and scan \
             each slice with .within(&slice).desc()",
        );
    }
    let (after, until) = if b.desc {
        (None, None)
    } else {
        (b.after.as_ref(), b.until.as_ref())
    };
    // The tighter of two ends, where Rust can tell which it is.
    let pick = |a: Option<&StoredKey<K::Value>>,
                b: Option<&StoredKey<K::Value>>,
                keep: Ordering|
     -> Result<Option<K::Value>, Error> {
        let end = match (a, b) {
            (None, None) => return Ok(None),
            (Some(k), None) | (None, Some(k)) => k,
            (Some(x), Some(y)) => match K::compare(&x.value, &y.value) {
                Some(o) if o == keep || o == Ordering::Equal => x,
                Some(_) => y,
                None => {
                    return Err(Error::PartitionBounds {
                        reason: "start_after/end_at and a within() slice both bound the same \
                                 end of a key the crate cannot order in Rust (text); keep one \
                                 of them"
                            .into(),
                    })
                }
            },
        };
        if end.has_stored_form() {
            return Err(Error::PartitionBounds {
                reason: format!(
                    "the bound {end:?} is stored in a form of its own, which a slice's end \
                     (a Rust value) cannot carry"
                ),
            });
        }
        Ok(Some(end.value.clone()))
    };
    Ok((
        pick(after, b.lower.as_ref(), Ordering::Greater)?,
        pick(until, b.upper.as_ref(), Ordering::Less)?,
    ))
}

/// Makes the slices from the kept rows; the first slice starts after `ends.0`
/// and the last ends at `ends.1`, the scan's own bounds.
pub(crate) fn slices<K: Key>(
    key: &K,
    kept: Vec<PartitionRow<K>>,
    ends: OuterEnds<K::Value>,
) -> Result<Vec<Partition<K::Value>>, Error> {
    if let Some(row) = kept.iter().find(|r| r.key.has_stored_form()) {
        return Err(Error::StoredForm {
            columns: key.describe(),
            value: format!("{:?}", row.key),
        });
    }
    let kept = kept
        .into_iter()
        .map(|r| (r.key.value, r.rn, r.cnt))
        .collect();
    Ok(slices_of(kept, ends))
}

fn slices_of<V: Clone>(kept: Vec<(V, i64, i64)>, ends: OuterEnds<V>) -> Vec<Partition<V>> {
    let (lower, upper) = ends;
    let total = kept.last().map_or(0, |(_, _, cnt)| *cnt);
    let mut out = Vec::with_capacity(kept.len().max(1));
    let mut after: Option<V> = lower;
    let mut after_rn = 0i64;
    let last = kept.len().saturating_sub(1);
    for (i, (key, rn, _)) in kept.into_iter().enumerate() {
        if i == last {
            break;
        }
        out.push(Partition {
            index: i,
            start_after: after.take(),
            end_at: Some(key.clone()),
            rows: u64::try_from(rn - after_rn).unwrap_or(0),
        });
        after = Some(key);
        after_rn = rn;
    }
    out.push(Partition {
        index: out.len(),
        start_after: after,
        end_at: upper,
        rows: u64::try_from(total - after_rn).unwrap_or(0),
    });
    out
}

/// The selection of the planning queries' inner query: the key columns, named
/// `chunked_k0`, `chunked_k1`, ... (so that two `id` columns of a join do not
/// clash in a derived table).
#[derive(Debug, Clone, Copy)]
#[doc(hidden)]
pub struct KeyColumns<K>(K);

impl<K: Key> Expression for KeyColumns<K>
where
    <K::Selection as Expression>::SqlType: TypedExpressionType,
{
    type SqlType = <K::Selection as Expression>::SqlType;
}

impl<K: Key> ValidGrouping<()> for KeyColumns<K> {
    type IsAggregate = is_aggregate::No;
}

impl<K: Key, QS> AppearsOnTable<QS> for KeyColumns<K>
where
    Self: Expression,
    K::Selection: AppearsOnTable<QS>,
{
}

impl<K: Key, QS> SelectableExpression<QS> for KeyColumns<K>
where
    Self: AppearsOnTable<QS>,
    K: SelectableKey<QS>,
{
}

impl<K: Key> QueryId for KeyColumns<K> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<K: KeySql<DB>, DB: KeysetBackend> QueryFragment<DB> for KeyColumns<K> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        for i in 0..K::ARITY {
            if i > 0 {
                out.push_sql(", ");
            }
            self.0.walk_column(i, out.reborrow())?;
            out.push_sql(&format!(" AS chunked_k{i}"));
        }
        Ok(())
    }
}

/// The partition statement around the inner query (see the module docs).
#[derive(Debug)]
#[doc(hidden)]
pub struct PartitionQuery<I, K> {
    inner: I,
    n: i64,
    _key: std::marker::PhantomData<K>,
}

impl<I, K: Key> Query for PartitionQuery<I, K> {
    type SqlType = Untyped;
}

impl<I, K> QueryId for PartitionQuery<I, K> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<I, K, DB> QueryFragment<DB> for PartitionQuery<I, K>
where
    DB: Backend,
    K: Key,
    I: QueryFragment<DB>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
    DB: diesel::sql_types::HasSqlType<BigInt>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        let keys = |prefix: &str| {
            (0..K::ARITY)
                .map(|i| format!("{prefix}.chunked_k{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_sql(&format!(
            "SELECT {}, chunked_p.chunked_rn, chunked_p.chunked_cnt FROM (\
             SELECT {}, ROW_NUMBER() OVER (ORDER BY {}) AS chunked_rn, \
             COUNT(*) OVER () AS chunked_cnt FROM (",
            keys("chunked_p"),
            keys("chunked_d"),
            keys("chunked_d"),
        ));
        self.inner.walk_ast(out.reborrow())?;
        // Every row when there are no more rows than slices; otherwise the rows
        // at ⌈j·cnt/n⌉. The CASE keeps `rn * n` from being computed (and
        // overflowing) in the first case.
        out.push_sql(") chunked_d) chunked_p WHERE CASE WHEN chunked_p.chunked_cnt <= ");
        out.push_bind_param::<BigInt, i64>(&self.n)?;
        out.push_sql(" THEN 1 WHEN (chunked_p.chunked_rn * ");
        out.push_bind_param::<BigInt, i64>(&self.n)?;
        out.push_sql(") % chunked_p.chunked_cnt < ");
        out.push_bind_param::<BigInt, i64>(&self.n)?;
        out.push_sql(" THEN 1 ELSE 0 END = 1 ORDER BY chunked_p.chunked_rn");
        Ok(())
    }
}

impl<I, K, Conn> RunQueryDsl<Conn> for PartitionQuery<I, K> {}

/// `SELECT COUNT(*)` of the scan's rows, or, where the backend's planner has a
/// cheap estimate, `EXPLAIN` of the scan's query.
#[derive(Debug)]
#[doc(hidden)]
pub struct CountQuery<I> {
    inner: I,
    explain: bool,
}

impl<I> Query for CountQuery<I> {
    type SqlType = Text;
}

impl<I> QueryId for CountQuery<I> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<I: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for CountQuery<I> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        if self.explain {
            out.push_sql("EXPLAIN (FORMAT JSON) ");
            return self.inner.walk_ast(out.reborrow());
        }
        // As text, so that both forms load alike on every backend.
        out.push_sql("SELECT CAST(COUNT(*) AS CHAR(20)) FROM (");
        self.inner.walk_ast(out.reborrow())?;
        out.push_sql(") chunked_c");
        Ok(())
    }
}

impl<I, Conn> RunQueryDsl<Conn> for CountQuery<I> {}

/// The `Plan Rows` of the top node of PostgreSQL's `EXPLAIN (FORMAT JSON)`.
pub(crate) fn plan_rows(json: &str) -> Option<u64> {
    let at = json.find("\"Plan Rows\":")? + "\"Plan Rows\":".len();
    let digits: String = json[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f64>().ok().map(|r| r.round() as u64)
}

/// The queries the planning methods need of the user's query: boxed and checked
/// like a scan's, with the scan's bounds in its `WHERE` clause and selection `X`.
pub trait PreparePlan<'a, K: Key, X, DB: Backend> {
    /// The prepared query's type.
    type Inner;

    /// Boxes the query, selects `selection`, adds the scan's bounds.
    fn prepare_plan(
        self,
        key: K,
        bounds: Bounds<K::Value>,
        selection: X,
    ) -> Result<Self::Inner, Error>;
}

impl<'a, Q, K, X, DB> PreparePlan<'a, K, X, DB> for Q
where
    DB: Backend,
    K: Key + SelectableKey<Q::Source>,
    X: Expression,
    Q: ChunkableQuery<'a, DB>,
    Q::Boxed: PlanSelect<X>,
    <Q::Boxed as PlanSelect<X>>::Output: FilterDsl<SeekPredicate<K>>,
{
    type Inner = diesel::dsl::Filter<<Q::Boxed as PlanSelect<X>>::Output, SeekPredicate<K>>;

    fn prepare_plan(
        self,
        key: K,
        bounds: Bounds<K::Value>,
        selection: X,
    ) -> Result<Self::Inner, Error> {
        let boxed = self.into_boxed_checked()?;
        let selected = boxed.plan_select(selection);
        Ok(FilterDsl::filter(
            selected,
            SeekPredicate::new(key, BoundsCell::new(bounds)),
        ))
    }
}

/// Boxed queries the planning statements can select the key from: those without
/// `GROUP BY`.
#[diagnostic::on_unimplemented(
    message = "`partitions` and `estimate_total` need a query without GROUP BY",
    label = "a query with GROUP BY",
    note = "the planning statements number and count the rows of the query by their key, \
            which a grouped query does not select",
    note = "scanning a grouped query works: `.chunked_by(key).load_iter_keyed(..)`; \
            plan with the same query without `.group_by(..)` (and `.having(..)`)"
)]
pub trait PlanSelect<X: Expression> {
    /// The query with selection `X`.
    type Output;
    /// Replaces the query's selection with `selection`.
    fn plan_select(self, selection: X) -> Self::Output;
}

impl<'a, ST, QS, DB, X> PlanSelect<X> for BoxedSelectStatement<'a, ST, FromClause<QS>, DB, ()>
where
    DB: Backend,
    QS: QuerySource,
    X: SelectableExpression<QS> + QueryFragment<DB> + ValidGrouping<()> + Send + 'a,
{
    type Output = BoxedSelectStatement<'a, X::SqlType, FromClause<QS>, DB, ()>;

    fn plan_select(self, selection: X) -> Self::Output {
        SelectDsl::select(self, selection)
    }
}

/// The partition statement for `n` slices of the prepared query.
pub(crate) fn partition_query<I, K>(inner: I, n: i64) -> PartitionQuery<I, K> {
    PartitionQuery {
        inner,
        n,
        _key: std::marker::PhantomData,
    }
}

/// The count (or estimate) statement of the prepared query.
pub(crate) fn count_query<I, DB: KeysetBackend>(inner: I) -> CountQuery<I> {
    CountQuery {
        inner,
        explain: DB::PLANNER_ESTIMATE,
    }
}

/// The selection of the planning statements' inner query.
pub(crate) fn key_columns<K: Key>(key: K) -> KeyColumns<K> {
    KeyColumns(key)
}

/// The most slices [`Chunked::partitions`](crate::Chunked::partitions) makes.
pub const MAX_PARTITIONS: usize = 100_000;

/// The statement of `partitions` and what turns its rows into slices.
pub(crate) type PartitionStatement<I, K> = (PartitionQuery<I, K>, Slicing<K>);

/// The statement of `estimate_total` and the scan's `limit_total`.
pub(crate) type CountStatement<I> = (CountQuery<I>, Option<u64>);

/// What turns the rows of a [`PartitionQuery`] into slices: the key and the
/// outer ends of the first and last slice.
pub(crate) struct Slicing<K: Key> {
    pub(crate) key: K,
    pub(crate) ends: OuterEnds<K::Value>,
}

impl<K: Key> Slicing<K> {
    /// The slices, from the rows the statement returned.
    pub(crate) fn slices(
        self,
        kept: diesel::QueryResult<Vec<PartitionRow<K>>>,
    ) -> Result<Vec<Partition<K::Value>>, Error> {
        let kept = kept.map_err(|source| Error::Query {
            context: "computing the partitions",
            source,
        })?;
        slices(&self.key, kept, self.ends)
    }
}

/// The row count a [`CountQuery`] returned (`out`: the plan on PostgreSQL, a
/// count elsewhere), capped by `limit_total`.
pub(crate) fn estimate<DB: KeysetBackend>(
    out: diesel::QueryResult<String>,
    cap: Option<u64>,
) -> Result<u64, Error> {
    let context = "estimating the rows of the scan";
    let out = out.map_err(|source| Error::Query { context, source })?;
    let rows = if DB::PLANNER_ESTIMATE {
        plan_rows(&out)
    } else {
        out.trim().parse().ok()
    }
    .ok_or(Error::Query {
        context,
        source: diesel::result::Error::DeserializationError(
            format!("no row count in {out:?}").into(),
        ),
    })?;
    Ok(cap.map_or(rows, |cap| rows.min(cap)))
}

#[cfg(test)]
mod tests {
    use super::{plan_rows, slices_of as slices};

    #[test]
    fn slices_from_kept_rows() {
        // 10 rows, n = 3: rows 4, 7 and 10 kept
        let p = slices(vec![(40, 4, 10), (70, 7, 10), (100, 10, 10)], (None, None));
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].start_after, p[0].end_at, p[0].rows),
            (None, Some(40), 4)
        );
        assert_eq!(
            (p[1].start_after, p[1].end_at, p[1].rows),
            (Some(40), Some(70), 3)
        );
        assert_eq!(
            (p[2].start_after, p[2].end_at, p[2].rows),
            (Some(70), None, 3)
        );
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1, 2]);
        // no rows: one open slice
        let p = slices::<i32>(vec![], (None, None));
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start_after, p[0].end_at, p[0].rows), (None, None, 0));
    }

    #[test]
    fn plan_rows_of_explain_json() {
        let json = r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 1234, "Plan Width": 4}}]"#;
        assert_eq!(plan_rows(json), Some(1234));
        assert_eq!(plan_rows("[]"), None);
    }
}
