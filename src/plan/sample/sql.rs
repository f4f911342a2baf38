//! The SQL of the sampled planner: the condition it adds to the query, the
//! statements around the query, and the rows they return.

use std::sync::{Arc, Mutex};

use diesel::backend::Backend;
use diesel::deserialize::{FromSql, QueryableByName};
use diesel::expression::{is_aggregate, AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, Bool, HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

use crate::backend::KeysetBackend;
use crate::error::Error;
use crate::key::{Key, KeyFromRow, KeySql};
use crate::stored::StoredKey;

/// `"posts".ctid = ANY('{"(p,s)",...}'::tid[])` for address numbers
/// `page · slots + slot - 1`.
pub(super) fn tid_condition(table: &str, tids: &[u64], slots: i64) -> String {
    let slots = slots.max(1) as u64;
    let mut sql = String::with_capacity(40 + tids.len() * 14);
    sql.push_str(table);
    sql.push_str(".ctid = ANY('{");
    for (i, t) in tids.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("\"({},{})\"", t / slots, t % slots + 1));
    }
    sql.push_str("}'::tid[])");
    sql
}

/// The table part of a rendered column, `"posts"` of `"posts"."id"` (quoted
/// with `"` or `` ` ``).
pub(super) fn table_of(column: &str) -> Option<&str> {
    let q = column.chars().last()?;
    if q != '"' && q != '`' {
        return None;
    }
    // walk back over the last quoted identifier (doubled quotes inside)
    let bytes = column.as_bytes();
    let mut i = bytes.len() - 1;
    loop {
        i = column[..i].rfind(q)?;
        if i > 0 && bytes[i - 1] == q as u8 {
            i -= 1;
            continue;
        }
        break;
    }
    let table = column[..i].strip_suffix('.')?;
    (!table.is_empty()).then_some(table)
}

/// Renders a fragment as SQL text.
pub(super) fn render<DB, T>(fragment: &T) -> Result<String, Error>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    T: QueryFragment<DB>,
{
    use std::fmt::Write;
    let mut sql = String::new();
    write!(sql, "{}", diesel::debug_query::<DB, _>(fragment)).map_err(|_| Error::Query {
        context: "rendering the key column",
        source: diesel::result::Error::QueryBuilderError("Diesel could not render it".into()),
    })?;
    // `debug_query` appends ` -- binds: [...]`
    Ok(sql.split(" -- binds:").next().unwrap_or("").to_string())
}

/// The key's first column.
pub(super) struct FirstColumn<K>(pub(super) K);

impl<K: KeySql<DB>, DB: KeysetBackend> QueryFragment<DB> for FirstColumn<K> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_column(0, out)
    }
}

/// The condition the sampled planner adds to the query: SQL text it writes
/// itself (row addresses, or a comparison of the key with an integer), set
/// before each statement.
#[derive(Debug, Clone, Default)]
#[doc(hidden)]
pub struct SampleFilter(Arc<Mutex<String>>);

impl SampleFilter {
    pub(crate) fn set(&self, sql: &str) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.clear();
        s.push_str(sql);
    }
}

impl Expression for SampleFilter {
    type SqlType = Bool;
}

impl ValidGrouping<()> for SampleFilter {
    type IsAggregate = is_aggregate::No;
}

impl<QS> AppearsOnTable<QS> for SampleFilter {}

impl QueryId for SampleFilter {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend> QueryFragment<DB> for SampleFilter {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        let sql = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if sql.is_empty() {
            out.push_sql("1 = 1");
        } else {
            out.push_sql(&sql);
        }
        Ok(())
    }
}

/// A sample statement: the query's keys in key order (no probes), or one
/// `UNION ALL` term per probe, each the first key (or the last, descending)
/// where the probe's condition holds.
#[derive(Debug)]
#[doc(hidden)]
pub struct SampleQuery<I, K> {
    pub(super) inner: I,
    pub(super) filter: SampleFilter,
    pub(super) probes: Vec<(String, bool)>,
    pub(super) _key: std::marker::PhantomData<K>,
}

impl<I, K> Query for SampleQuery<I, K> {
    type SqlType = Untyped;
}

impl<I, K> QueryId for SampleQuery<I, K> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<I: QueryFragment<DB>, K: Key, DB: KeysetBackend> QueryFragment<DB> for SampleQuery<I, K> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        // `chunked_k0, chunked_k1 ...`, each with `prefix.` before and `dir` after
        let keys = |prefix: &str, dir: &str| {
            (0..K::ARITY)
                .map(|i| format!("{prefix}chunked_k{i}{dir}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.probes.is_empty() {
            out.push_sql(&format!("SELECT {} FROM (", keys("chunked_d.", "")));
            self.inner.walk_ast(out.reborrow())?;
            out.push_sql(&format!(") chunked_d ORDER BY {}", keys("chunked_d.", "")));
            return Ok(());
        }
        // One `UNION ALL` term per probe, over one level of derived table (the
        // query has no ORDER BY or LIMIT of its own), which the backend runs as
        // an index seek: `MIN`/`MAX` of the key where it can (one key column),
        // else the first row in key order.
        let min_max = DB::PROBES_BY_MIN_MAX && K::ARITY == 1;
        for (i, (condition, desc)) in self.probes.iter().enumerate() {
            if i > 0 {
                out.push_sql(" UNION ALL ");
            }
            self.filter.set(condition);
            let q = format!("chunked_q{i}");
            if min_max {
                let f = if *desc { "MAX" } else { "MIN" };
                out.push_sql(&format!("SELECT {f}({q}.chunked_k0) AS chunked_k0 FROM ("));
                self.inner.walk_ast(out.reborrow())?;
                out.push_sql(&format!(") {q} HAVING {f}({q}.chunked_k0) IS NOT NULL"));
            } else {
                out.push_sql(&format!("SELECT {} FROM (", keys(&format!("{q}."), "")));
                self.inner.walk_ast(out.reborrow())?;
                let dir = if *desc { " DESC" } else { "" };
                out.push_sql(&format!(" ORDER BY {} LIMIT 1) {q}", keys("", dir)));
            }
        }
        Ok(())
    }
}

impl<I, K, Conn> RunQueryDsl<Conn> for SampleQuery<I, K> {}

/// The prepared query of a blocking sample, shared by its statements (a
/// boxed query cannot be cloned).
#[derive(Debug)]
#[doc(hidden)]
pub struct Shared<I>(pub(super) Arc<I>);

impl<I> Clone for Shared<I> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<I> QueryId for Shared<I> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<I: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Shared<I> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

/// One sampled key.
#[doc(hidden)]
#[derive(Debug)]
pub struct SampleRow<K: Key>(pub(super) StoredKey<K::Value>);

#[cfg(feature = "async")]
impl<K: Key> SampleRow<K> {
    /// The key the row holds.
    pub(crate) fn into_key(self) -> StoredKey<K::Value> {
        self.0
    }
}

impl<K: KeyFromRow<DB>, DB: KeysetBackend> QueryableByName<DB> for SampleRow<K> {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        Ok(SampleRow(K::from_row(row, &[0, 1, 2])?))
    }
}

/// The size of the sampled table: pages, row addresses per page, and the
/// rows PostgreSQL last counted (`reltuples`, -1 if never).
#[doc(hidden)]
#[derive(Debug)]
pub struct TableSize {
    pub(super) pages: i64,
    pub(super) slots: i64,
    pub(super) tuples: i64,
}

impl<DB> QueryableByName<DB> for TableSize
where
    DB: Backend + HasSqlType<BigInt>,
    i64: FromSql<BigInt, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        Ok(TableSize {
            pages: NamedRow::get::<BigInt, i64>(row, "pages")?,
            slots: NamedRow::get::<BigInt, i64>(row, "slots")?,
            tuples: NamedRow::get::<BigInt, i64>(row, "tuples")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::table_of;

    #[test]
    fn table_of_a_rendered_column() {
        assert_eq!(table_of(r#""posts"."id""#), Some(r#""posts""#));
        assert_eq!(table_of(r#""s"."posts"."i""d""#), Some(r#""s"."posts""#));
        assert_eq!(table_of("`posts`.`id`"), Some("`posts`"));
        assert_eq!(table_of("id"), None);
    }
}
