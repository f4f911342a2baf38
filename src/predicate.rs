//! The seek predicate: `key > $after AND key <= $until`, and the bounds it
//! renders, in each backend's form.

use std::sync::Arc;

use diesel::expression::{is_aggregate, AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::Bool;
use diesel::QueryResult;

use crate::backend::KeysetBackend;
use crate::key::{Key, KeySql};
pub(crate) use crate::shared::BoundsCell;
use crate::stored::StoredKey;

/// The bounds of a scan: where the next batch starts and where the scan ends.
#[derive(Debug, Clone)]
pub struct Bounds<V> {
    /// Exclusive: rows strictly after this key (before it, descending).
    pub(crate) after: Option<StoredKey<V>>,
    /// Inclusive: rows up to and including this key (down to it, descending).
    pub(crate) until: Option<StoredKey<V>>,
    /// Exclusive lower end of a partition, whatever the direction: `key > lower`.
    pub(crate) lower: Option<StoredKey<V>>,
    /// Inclusive upper end of a partition, whatever the direction: `key <= upper`.
    pub(crate) upper: Option<StoredKey<V>>,
    pub(crate) desc: bool,
    /// Renders the rows `after` excludes, nearest first: the statement that
    /// checks what lies just before a start key given as a Rust value.
    pub(crate) probe: bool,
    /// Whether statements with this predicate may be kept prepared (see
    /// [`Chunked::cache_statements`](crate::Chunked::cache_statements)).
    pub(crate) cache: bool,
    /// Only these keys, besides the range: `key IN (..)` (the rows a move
    /// copied, which its delete in the source takes and nothing else).
    pub(crate) only: Option<Arc<Vec<StoredKey<V>>>>,
}

/// One end of a key range: the value, and whether it is excluded.
pub(crate) type End<'a, V> = (&'a StoredKey<V>, bool);

impl<V> Bounds<V> {
    /// The bounds as `(value, exclusive)` pairs: the lower ends, then the upper.
    pub(crate) fn ends(&self) -> (Vec<End<'_, V>>, Vec<End<'_, V>>) {
        let mut lows = Vec::new();
        let mut highs = Vec::new();
        let (after, until) = (self.after.as_ref(), self.until.as_ref());
        if self.desc {
            highs.extend(after.map(|v| (v, true)));
            lows.extend(until.map(|v| (v, false)));
        } else {
            lows.extend(after.map(|v| (v, true)));
            highs.extend(until.map(|v| (v, false)));
        }
        lows.extend(self.lower.as_ref().map(|v| (v, true)));
        highs.extend(self.upper.as_ref().map(|v| (v, false)));
        (lows, highs)
    }
}

/// The first key column and its table, as the backend renders them: a first
/// batch with no bound renders `column >= (SELECT MIN(column) FROM table)`
/// (`<= MAX` descending) instead of `1 = 1`. The condition holds for every
/// row, but it gives the optimizer a range on the key's index; without one,
/// MariaDB reads a first batch of more than about 1% of a table by a full scan
/// and a sort of every row when the key's index is not the clustered one.
#[derive(Debug)]
pub(crate) struct Floor {
    column: String,
    table: String,
}

impl Floor {
    /// The floor of a key whose columns render as `rendered` (`a, b` for a
    /// composite key): the first column must be a qualified identifier,
    /// `` `table`.`column` `` or `` `schema`.`table`.`column` ``, quoted with
    /// `quote`. Anything else has no floor (the first batch keeps `1 = 1`).
    pub(crate) fn parse(rendered: &str, quote: char) -> Option<Floor> {
        // where each quoted identifier of the first column ends, up to the first `, `
        let mut ends: Vec<usize> = Vec::new();
        let mut at = 0;
        loop {
            let body = rendered[at..].strip_prefix(quote)?;
            let mut close = None;
            let mut chars = body.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == quote {
                    if chars.peek().is_some_and(|&(_, d)| d == quote) {
                        chars.next(); // a doubled quote inside the identifier
                    } else {
                        close = Some(i);
                        break;
                    }
                }
            }
            at += quote.len_utf8() + close? + quote.len_utf8();
            ends.push(at);
            let rest = &rendered[at..];
            if rest.starts_with('.') {
                at += 1;
            } else if rest.is_empty() || rest.starts_with(", ") {
                break;
            } else {
                return None;
            }
        }
        let [.., table_len, column_len] = ends[..] else {
            return None;
        };
        Some(Floor {
            column: rendered[..column_len].to_owned(),
            table: rendered[..table_len].to_owned(),
        })
    }
}

/// The seek predicate: `key > $after AND key <= $until`, in the backend's form.
/// It is added once to the user's query with `.filter(..)`; the bounds it renders
/// move between batches.
#[allow(missing_debug_implementations)]
pub struct SeekPredicate<K: Key> {
    key: K,
    bounds: Arc<BoundsCell<K::Value>>,
}

impl<K: Key> SeekPredicate<K> {
    pub(crate) fn new(key: K, bounds: Arc<BoundsCell<K::Value>>) -> Self {
        Self { key, bounds }
    }
}

impl<K: Key> Expression for SeekPredicate<K> {
    type SqlType = Bool;
}

impl<K: Key> ValidGrouping<()> for SeekPredicate<K> {
    type IsAggregate = is_aggregate::No;
}

impl<K: Key, QS> AppearsOnTable<QS> for SeekPredicate<K> where K::Selection: AppearsOnTable<QS> {}

impl<K: Key> QueryId for SeekPredicate<K> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Gt,
    Lt,
    Ge,
    Le,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Gt => " > ",
            Op::Lt => " < ",
            Op::Ge => " >= ",
            Op::Le => " <= ",
        }
    }
    /// The strict comparison going the same way.
    fn strict(self) -> Op {
        match self {
            Op::Gt | Op::Ge => Op::Gt,
            Op::Lt | Op::Le => Op::Lt,
        }
    }
    /// The non-strict comparison going the same way.
    fn loose(self) -> Op {
        match self {
            Op::Gt | Op::Ge => Op::Ge,
            Op::Lt | Op::Le => Op::Le,
        }
    }
}

impl<K, DB> QueryFragment<DB> for SeekPredicate<K>
where
    DB: KeysetBackend,
    K: KeySql<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let bounds = self.bounds.bounds();
        if !bounds.cache {
            // Sent unnamed: no state left on the server connection (poolers).
            out.unsafe_to_cache_prepared();
        }
        let (start, end) = match (bounds.desc, bounds.probe) {
            (true, false) => (Op::Lt, Op::Ge),
            (false, false) => (Op::Gt, Op::Le),
            // the rows the start key excludes
            (true, true) => (Op::Ge, Op::Ge),
            (false, true) => (Op::Le, Op::Le),
        };
        let mut parts = 0;
        if let Some(after) = &bounds.after {
            walk_compare(&self.key, after, start, out.reborrow())?;
            parts += 1;
        }
        for (value, op) in [
            (&bounds.until, end),
            (&bounds.lower, Op::Gt),
            (&bounds.upper, Op::Le),
        ] {
            if let Some(value) = value {
                if parts > 0 {
                    out.push_sql(" AND ");
                }
                walk_compare(&self.key, value, op, out.reborrow())?;
                parts += 1;
            }
        }
        if parts == 0 {
            // The first batch of an unbounded scan: the predicate is always true.
            match self.bounds.floor() {
                Some(floor) => {
                    out.push_sql(&floor.column);
                    out.push_sql(if bounds.desc {
                        " <= (SELECT MAX("
                    } else {
                        " >= (SELECT MIN("
                    });
                    out.push_sql(&floor.column);
                    out.push_sql(") FROM ");
                    out.push_sql(&floor.table);
                    out.push_sql(")");
                }
                None => out.push_sql("1 = 1"),
            }
        }
        if let Some(only) = &bounds.only {
            out.push_sql(" AND ");
            walk_in(&self.key, only, out.reborrow())?;
        }
        Ok(())
    }
}

/// `key IN (v1, v2, ..)`, or for a composite key `(a = ? AND b = ?) OR ..`
/// (SQLite takes no list of row values after `IN`); `1 = 0` for no key.
fn walk_in<'b, K, DB>(
    key: &'b K,
    keys: &'b [StoredKey<K::Value>],
    mut out: AstPass<'_, 'b, DB>,
) -> QueryResult<()>
where
    DB: KeysetBackend,
    K: KeySql<DB>,
{
    if keys.is_empty() {
        out.push_sql("1 = 0");
        return Ok(());
    }
    out.push_sql("(");
    if K::ARITY == 1 {
        key.walk_column(0, out.reborrow())?;
        out.push_sql(" IN (");
        for (j, value) in keys.iter().enumerate() {
            if j > 0 {
                out.push_sql(", ");
            }
            K::walk_value(value, 0, out.reborrow())?;
        }
        out.push_sql(")");
    } else {
        for (j, value) in keys.iter().enumerate() {
            if j > 0 {
                out.push_sql(" OR ");
            }
            out.push_sql("(");
            for i in 0..K::ARITY {
                if i > 0 {
                    out.push_sql(" AND ");
                }
                key.walk_column(i, out.reborrow())?;
                out.push_sql(" = ");
                K::walk_value(value, i, out.reborrow())?;
            }
            out.push_sql(")");
        }
    }
    out.push_sql(")");
    Ok(())
}

/// `key OP value`, lexicographic for composite keys.
fn walk_compare<'b, K, DB>(
    key: &'b K,
    value: &'b StoredKey<K::Value>,
    op: Op,
    mut out: AstPass<'_, 'b, DB>,
) -> QueryResult<()>
where
    DB: KeysetBackend,
    K: KeySql<DB>,
{
    let n = K::ARITY;
    if n == 1 {
        key.walk_column(0, out.reborrow())?;
        out.push_sql(op.sql());
        return K::walk_value(value, 0, out);
    }
    if DB::ROW_VALUES {
        // (a, b) > (?, ?)
        out.push_sql("(");
        for i in 0..n {
            if i > 0 {
                out.push_sql(", ");
            }
            key.walk_column(i, out.reborrow())?;
        }
        out.push_sql(")");
        out.push_sql(op.sql());
        out.push_sql("(");
        for i in 0..n {
            if i > 0 {
                out.push_sql(", ");
            }
            K::walk_value(value, i, out.reborrow())?;
        }
        out.push_sql(")");
        return Ok(());
    }
    // a >= ? AND (a > ? OR a = ? AND (b > ? OR b = ? AND c OP ?))
    out.push_sql("(");
    key.walk_column(0, out.reborrow())?;
    out.push_sql(op.loose().sql());
    K::walk_value(value, 0, out.reborrow())?;
    out.push_sql(" AND ");
    for i in 0..n {
        if i + 1 == n {
            key.walk_column(i, out.reborrow())?;
            out.push_sql(op.sql());
            K::walk_value(value, i, out.reborrow())?;
        } else {
            out.push_sql("(");
            key.walk_column(i, out.reborrow())?;
            out.push_sql(op.strict().sql());
            K::walk_value(value, i, out.reborrow())?;
            out.push_sql(" OR ");
            key.walk_column(i, out.reborrow())?;
            out.push_sql(" = ");
            K::walk_value(value, i, out.reborrow())?;
            out.push_sql(" AND ");
        }
    }
    for _ in 0..n {
        out.push_sql(")");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Floor;

    fn floor(rendered: &str) -> Option<(String, String)> {
        Floor::parse(rendered, '`').map(|f| (f.column, f.table))
    }

    #[test]
    fn the_floor_is_the_first_qualified_column_and_its_table() {
        let f = |c: &str, t: &str| Some((c.to_owned(), t.to_owned()));
        assert_eq!(floor("`posts`.`id`"), f("`posts`.`id`", "`posts`"));
        assert_eq!(
            floor("`ev`.`created`, `ev`.`id`"),
            f("`ev`.`created`", "`ev`")
        );
        assert_eq!(
            floor("`db`.`ev`.`created`, `db`.`ev`.`id`"),
            f("`db`.`ev`.`created`", "`db`.`ev`")
        );
        assert_eq!(floor("`a``b`.`c.d`"), f("`a``b`.`c.d`", "`a``b`"));
        // nothing that is not a qualified column
        for other in [
            "`id`",
            "id",
            "posts.id",
            "`posts`.id",
            "LOWER(`p`.`s`)",
            "`p`.`s` + 1",
            "`p",
            "",
        ] {
            assert_eq!(floor(other), None, "{other}");
        }
    }
}
