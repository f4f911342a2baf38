//! What a query must be to be scanned: the compile-time checks of its
//! clauses, key and selection, and the checks of its rendered SQL where the
//! type cannot tell (boxed queries, raw SQL filters).

use diesel::backend::Backend;
use diesel::expression::{Expression, SelectableExpression};
use diesel::internal::derives::multiconnection::{
    BoxedSelectStatement, LimitOffsetClause, SelectStatement, SelectStatementAccessor,
};
use diesel::internal::table_macro::{FromClause, NoFromClause};
use diesel::query_builder::{Query, QueryBuilder, QueryFragment};
use diesel::query_dsl::methods::BoxedDsl;
use diesel::query_source::QuerySource;

use crate::error::Error;
use crate::key::Key;

type PlainSelect = SelectStatement<NoFromClause, ()>;
/// Diesel's "no ORDER BY" clause type, named through the accessor trait.
type NoOrder = <PlainSelect as SelectStatementAccessor>::Order;
/// Diesel's default (`SELECT` all columns of the source) clause type.
type DefaultSelect<F> = <SelectStatement<F> as SelectStatementAccessor>::Select;

/// Queries a chunked scan can run: one `SELECT ... FROM` statement with no
/// `ORDER BY`, `LIMIT`, `OFFSET` or locking clause of its own, plain or boxed.
///
/// For a plain query the check is done by the compiler. A boxed query's clauses are
/// not in its type, so it is checked when the scan starts, and the first `next()`
/// returns [`Error::QueryHasClause`] without running a query.
///
/// Either way the query is rendered once when the scan starts, and a `WHERE`
/// clause with an `OR` outside parentheses (raw SQL such as
/// `sql::<Bool>("a OR b")`) is refused with [`Error::UngroupedOr`]: the seek
/// predicate the scan appends would bind to its last operand only.
///
/// ```compile_fail
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # let conn = &mut doc_connection();
/// // error: this query already has an ORDER BY clause
/// let it = posts::table.order(posts::title).chunked_by(posts::id).load_iter::<Post>(conn);
/// ```
#[diagnostic::on_unimplemented(
    message = "this query cannot be scanned in chunks: it is not one `SELECT ... FROM` statement",
    label = "not a single SELECT ... FROM (a UNION, INTERSECT or EXCEPT?)",
    note = "a chunked scan appends `AND key > $last ORDER BY key LIMIT $n` to one SELECT; \
            it cannot page through a UNION, INTERSECT or EXCEPT as a whole",
    note = "scan each part on its own: `a.chunked_by(key)`, then `b.chunked_by(key)`",
    note = "or wrap it in a filter and scan that: \
            `posts::table.filter(posts::user_id.eq_any(a.select(users::id).union(b.select(users::id))))`"
)]
pub trait ChunkableQuery<'a, DB: Backend>: Sized {
    /// The query's `FROM` source: a table, or a join of tables. The key must be
    /// selectable from it (not from the nullable side of a `LEFT JOIN`).
    type Source;

    /// The boxed form of the query.
    type Boxed: Query;

    /// Boxes the query, or says why it cannot be scanned.
    fn into_boxed_checked(self) -> Result<Self::Boxed, Error>;
}

/// Implemented only for Diesel's "no ORDER BY" clause type.
#[diagnostic::on_unimplemented(
    message = "this query cannot be scanned in chunks: it already has an ORDER BY clause",
    label = "the query's ORDER BY",
    note = "a chunked scan orders by its key: remove `.order(..)`; \
            for a reverse scan use `.chunked_by(key).desc()`"
)]
pub trait NoOrderClause {}
impl NoOrderClause for NoOrder {}

/// Implemented only for Diesel's "no LIMIT" clause type.
#[diagnostic::on_unimplemented(
    message = "this query cannot be scanned in chunks: it already has a LIMIT clause",
    label = "the query's LIMIT",
    note = "a chunked scan pages with its own LIMIT: remove `.limit(..)`; \
            cap the rows with `.limit_total(n)` and set the rows per query with `.batch_size(n)`"
)]
pub trait NoLimitClause {}
impl NoLimitClause for diesel::internal::derives::multiconnection::NoLimitClause {}

/// Implemented only for Diesel's "no OFFSET" clause type.
#[diagnostic::on_unimplemented(
    message = "this query cannot be scanned in chunks: it already has an OFFSET clause",
    label = "the query's OFFSET",
    note = "a chunked scan never uses OFFSET: remove `.offset(..)`; \
            start further in with `.start_after(key)`, the last key of an earlier scan"
)]
pub trait NoOffsetClause {}
impl NoOffsetClause for diesel::internal::derives::multiconnection::NoOffsetClause {}

/// Implemented only for `SELECT` statements without a locking clause
/// (`FOR UPDATE`, `FOR SHARE`, ...); gives the statement's type without one.
#[diagnostic::on_unimplemented(
    message = "this query cannot be scanned in chunks: it has a locking clause \
               (`.for_update()`, `.for_share()`, ...)",
    label = "a query with FOR UPDATE / FOR SHARE",
    note = "a chunked scan appends ORDER BY and LIMIT to the query, which SQL does not allow \
            after FOR UPDATE; and its batches run as separate statements, \
            so a lock would not last from one batch to the next",
    note = "remove `.for_update()`: scan without the lock and lock what you change \
            inside the loop (in a transaction per batch, with `load_batches`), \
            or update the rows with one UPDATE ... WHERE key IN (batch) per batch"
)]
pub trait NoLockingClause {
    /// The same statement type, with Diesel's "no locking" clause.
    type Unlocked;
    /// Returns the statement as that type.
    fn unlocked(self) -> Self::Unlocked;
}

impl<F, S, D, W, O, L, G, H> NoLockingClause for SelectStatement<F, S, D, W, O, L, G, H> {
    type Unlocked = Self;
    fn unlocked(self) -> Self {
        self
    }
}

impl<'a, DB, F, S, D, W, O, Li, Of, G, H, LC> ChunkableQuery<'a, DB>
    for SelectStatement<FromClause<F>, S, D, W, O, LimitOffsetClause<Li, Of>, G, H, LC>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    F: QuerySource,
    O: NoOrderClause,
    Li: NoLimitClause,
    Of: NoOffsetClause,
    Self: NoLockingClause,
    <Self as NoLockingClause>::Unlocked: BoxedDsl<'a, DB>,
    diesel::dsl::IntoBoxed<'a, <Self as NoLockingClause>::Unlocked, DB>: Query + QueryFragment<DB>,
{
    type Source = F;
    type Boxed = diesel::dsl::IntoBoxed<'a, <Self as NoLockingClause>::Unlocked, DB>;

    fn into_boxed_checked(self) -> Result<Self::Boxed, Error> {
        let boxed = BoxedDsl::internal_into_boxed(self.unlocked());
        check_where(&render(&boxed, "rendering the query")?)?;
        Ok(boxed)
    }
}

impl<'a, ST, QS, DB, GB> ChunkableQuery<'a, DB>
    for BoxedSelectStatement<'a, ST, FromClause<QS>, DB, GB>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    QS: QuerySource,
    Self: Query + QueryFragment<DB>,
{
    type Source = QS;
    type Boxed = Self;

    fn into_boxed_checked(self) -> Result<Self, Error> {
        let sql = render(&self, "rendering the query")?;
        check_clauses(&sql)?;
        check_where(&sql)?;
        Ok(self)
    }
}

/// The SQL of (a part of) a query on `DB`, as Diesel renders it; a failure is
/// an [`Error::Query`] with `context`.
pub(super) fn render<DB>(
    fragment: &(impl QueryFragment<DB> + ?Sized),
    context: &'static str,
) -> Result<String, Error>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
{
    let mut builder = DB::QueryBuilder::default();
    fragment
        .to_sql(&mut builder, &DB::default())
        .map_err(|source| Error::Query { context, source })?;
    Ok(builder.finish())
}

/// Keys that can be read from every row of a query whose `FROM` is `QS`: their
/// columns are selectable from it, as they are not from the nullable side of a
/// `LEFT JOIN`.
#[diagnostic::on_unimplemented(
    message = "this key cannot be read from every row of the query: \
               it is not selectable from the query's FROM clause",
    label = "key not selectable from this query",
    note = "a column of the right side of a LEFT JOIN is NULL in the rows without a match, \
            and a keyset scan would drop all of those rows; a column of a table that is not \
            in the query cannot be a key either",
    note = "scan by a column of the left side: `users::table.left_join(posts::table)\
            .chunked_by(users::id)`, or use `.inner_join(..)` if only rows with a match \
            are wanted"
)]
pub trait SelectableKey<QS> {}

#[diagnostic::do_not_recommend]
impl<K, QS> SelectableKey<QS> for K
where
    K: Key,
    K::Selection: SelectableExpression<QS>,
{
}

/// Finds a top-level `ORDER BY`, `LIMIT` or `OFFSET` in Diesel-generated SQL:
/// outside parentheses (subqueries) and quotes (identifiers and literals).
fn check_clauses(sql: &str) -> Result<(), Error> {
    for (i, c) in top_level(sql) {
        if c != b' ' {
            continue;
        }
        let rest = &sql[i + 1..];
        for (word, clause, hint) in [
            (
                "ORDER BY ",
                "ORDER BY",
                "the scan orders by its key; use .desc() for a reverse scan",
            ),
            (
                "LIMIT ",
                "LIMIT",
                "use .limit_total(n) to cap the number of rows",
            ),
            (
                "OFFSET ",
                "OFFSET",
                "use .start_after(key) to start further in",
            ),
        ] {
            // `.offset(n)` alone renders as `LIMIT -1 OFFSET` on SQLite
            // and `LIMIT 18446744073709551615 OFFSET` on MySQL: the
            // user wrote no LIMIT, so report the OFFSET that follows.
            let no_limit = |r: &str| {
                ["-1 ", "18446744073709551615 "]
                    .iter()
                    .any(|v| r[word.len()..].starts_with(v))
            };
            if rest.starts_with(word) && !(clause == "LIMIT" && no_limit(rest)) {
                return Err(Error::QueryHasClause { clause, hint });
            }
        }
    }
    Ok(())
}

/// Finds an `OR` (or MySQL's `XOR`) at the top level of the `WHERE` clause of
/// Diesel-generated SQL: outside parentheses and quotes, as a word, in any case.
///
/// The scan appends its seek predicate as `<where> AND <seek>`, and Diesel
/// parenthesizes only what it built itself (`.or(..)`, two `.filter(..)`s): a
/// single raw `sql("a OR b")` filter would become `a OR b AND <seek>`, which
/// bounds `b` only. The `WHERE` clause ends at Diesel's `GROUP BY` or `HAVING`.
fn check_where(sql: &str) -> Result<(), Error> {
    let bytes = sql.as_bytes();
    let at = |i: usize, word: &str| bytes[i..].starts_with(word.as_bytes());
    let mut top = top_level(sql).skip_while(|&(i, _)| !at(i, " WHERE "));
    let Some((start, _)) = top.next() else {
        return Ok(());
    };
    let start = start + " WHERE ".len();
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let mut end = sql.len();
    let mut found = None;
    for (i, _) in top {
        if at(i, " GROUP BY ") || at(i, " HAVING ") {
            end = i;
            break;
        }
        if found.is_some() || i < start || word_byte(bytes[i - 1]) {
            continue;
        }
        found = ["OR", "XOR"].into_iter().find(|op| {
            bytes
                .get(i..i + op.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(op.as_bytes()))
                && bytes.get(i + op.len()).is_none_or(|&b| !word_byte(b))
        });
    }
    match found {
        Some(operator) => Err(Error::UngroupedOr {
            operator,
            condition: sql[start..end].trim().to_string(),
        }),
        None => Ok(()),
    }
}

/// The bytes of Diesel-generated SQL at the top level, with their positions:
/// outside parentheses (subqueries, function calls) and quotes (identifiers and
/// literals), the quote and parenthesis characters themselves left out.
fn top_level(sql: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    sql.bytes().enumerate().filter(move |&(_, c)| {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            return false;
        }
        match c {
            b'\'' | b'"' | b'`' => {
                quote = Some(c);
                false
            }
            b'(' => {
                depth += 1;
                false
            }
            b')' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        }
    })
}

/// Queries that select what Diesel selects by default (every column of the
/// source), so that `load_iter::<M>` may select `M::as_select()` (and the key)
/// instead without losing anything the user chose.
///
/// A query with its own `.select(..)` does not implement this: scan it with the
/// `*_keyed` terminals, which keep the selection and take a closure that reads
/// the key from a row.
#[diagnostic::on_unimplemented(
    message = "this query has its own `.select(..)`: `load_iter::<M>` / `load_batches::<M>` would replace it",
    label = "custom selection",
    note = "keep your selection and say how to read the key from a row: \
            `.load_iter_keyed::<(i32, String), _>(conn, |row| row.0)`",
    note = "or drop `.select(..)` and load a `Selectable` model: \
            the scan selects `M::as_select()` and reads the key itself"
)]
pub trait DefaultSelection {}

impl<F, D, W, O, L, G, H, LC> DefaultSelection
    for SelectStatement<FromClause<F>, DefaultSelect<FromClause<F>>, D, W, O, L, G, H, LC>
where
    F: QuerySource,
{
}

impl<ST, QS, DB, GB> DefaultSelection for BoxedSelectStatement<'_, ST, FromClause<QS>, DB, GB>
where
    QS: QuerySource,
    QS::DefaultSelection: Expression<SqlType = ST>,
{
}

/// The comma-separated items of Diesel-generated SQL at the top level (outside
/// parentheses and quotes), trimmed: the columns of a rendered `SELECT` list.
pub(crate) fn top_level_items(sql: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    for (i, _) in top_level(sql).filter(|&(_, c)| c == b',') {
        items.push(sql[start..i].trim());
        start = i + 1;
    }
    items.push(sql[start..].trim());
    items
}

#[cfg(test)]
mod tests {
    use super::{check_clauses, check_where, top_level_items};
    use crate::error::Error;

    #[test]
    fn select_list_items() {
        assert_eq!(
            top_level_items("`posts`.`id`, COALESCE(`a`, `b`), 'x, y', \"c\""),
            ["`posts`.`id`", "COALESCE(`a`, `b`)", "'x, y'", "\"c\""]
        );
        assert_eq!(top_level_items("\"posts\".\"id\""), ["\"posts\".\"id\""]);
    }

    #[test]
    fn top_level_clauses_are_found() {
        assert!(check_clauses("SELECT a FROM t WHERE b = $1").is_ok());
        assert!(check_clauses("SELECT a FROM t ORDER BY a").is_err());
        assert!(check_clauses("SELECT a FROM t LIMIT $1").is_err());
        assert!(check_clauses("SELECT a FROM t LIMIT -1 OFFSET ?").is_err());
        // inside a subquery or quotes: not the query's own
        assert!(
            check_clauses("SELECT a FROM t WHERE a IN (SELECT b FROM u ORDER BY b LIMIT 1)")
                .is_ok()
        );
        assert!(check_clauses("SELECT \"x LIMIT y\" FROM t").is_ok());
        assert!(check_clauses("SELECT `a` FROM t WHERE c = ' ORDER BY '").is_ok());
    }

    #[test]
    fn an_or_at_the_top_of_the_where_clause_is_found() {
        let or = |sql: &str| match check_where(sql) {
            Err(Error::UngroupedOr {
                operator,
                condition,
            }) => Some((operator, condition)),
            Ok(()) => None,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            or("SELECT a FROM t WHERE name = 'f' OR name = 'a'"),
            Some(("OR", "name = 'f' OR name = 'a'".to_string()))
        );
        assert_eq!(
            or("SELECT a FROM t WHERE x=1 or(y=2) GROUP BY a HAVING b OR c"),
            Some(("OR", "x=1 or(y=2)".to_string()))
        );
        assert_eq!(or("SELECT a FROM t WHERE a xor b").unwrap().0, "XOR");
        // grouped, quoted, a word inside an identifier, outside WHERE: not one
        assert_eq!(or("SELECT a FROM t WHERE (a OR b)"), None);
        assert_eq!(or("SELECT a FROM t WHERE ((a OR b) AND c = $1)"), None);
        assert_eq!(
            or("SELECT a FROM t WHERE name = ' OR ' AND \"OR\" = 1"),
            None
        );
        assert_eq!(
            or("SELECT a FROM t WHERE color = 1 AND orders = 2 AND t.or_x = 3"),
            None
        );
        assert_eq!(or("SELECT a OR b FROM t"), None);
        assert_eq!(
            or("SELECT a FROM t WHERE a = 1 GROUP BY a HAVING a OR b"),
            None
        );
    }
}
