//! The SQL of one batch, and how a user's query becomes it.
//!
//! A scan boxes the user's query once ([`ChunkableQuery`]), adds the seek
//! predicate to its `WHERE` clause once ([`SeekPredicate`]),
//! and then runs, for every batch, the same statement with new bind values
//! ([`Batch`]):
//!
//! ```text
//! SELECT <model columns> [, <key>]          -- or the query's own selection
//! FROM <the query's FROM and joins>
//! WHERE (<the query's filters>) AND <key> > $after [AND <key> <= $until]
//! [GROUP BY/HAVING of the query]
//! ORDER BY <key> [DESC]
//! LIMIT $n
//! ```
//!
//! `> $after` becomes `< $after` for descending scans; the first batch of a scan
//! with no start key renders the predicate as `1 = 1`. Composite keys compare
//! lexicographically in the backend's best form ([`KeysetBackend`]).
//!
//! Keeping one boxed query for the whole scan is what lets a query the user boxed
//! themselves (`into_boxed()`, the usual way to build dynamic filters) be scanned:
//! boxed queries cannot be cloned. It also gives every batch after the first the
//! same SQL text, so each backend prepares at most two statements per scan.

use std::cell::Cell;
use std::sync::Arc;

use diesel::backend::Backend;
use diesel::deserialize::{FromSqlRow, QueryableByName};
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping};
use diesel::internal::derives::multiconnection::{
    BoxedSelectStatement, LimitOffsetClause, SelectStatement, SelectStatementAccessor,
};
use diesel::internal::table_macro::{FromClause, NoFromClause};
use diesel::query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::query_dsl::methods::{BoxedDsl, FilterDsl, SelectDsl};
use diesel::query_source::QuerySource;
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, HasSqlType};
use diesel::{QueryResult, RunQueryDsl};
use diesel::{Selectable, SelectableHelper};

use crate::backend::KeysetBackend;
use crate::error::Error;
use crate::key::{Key, KeyFromRow, KeyPositions, KeySql};
use crate::predicate::{Bounds, BoundsCell, SeekPredicate};
use crate::stored::StoredKey;

pub use crate::load::{BatchLoading, LoadBatch};

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
        check_where(&render(&boxed)?)?;
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
        let sql = render(&self)?;
        check_clauses(&sql)?;
        check_where(&sql)?;
        Ok(self)
    }
}

/// The SQL of a (boxed) query on `DB`, as Diesel renders it.
fn render<DB>(query: &impl QueryFragment<DB>) -> Result<String, Error>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
{
    let mut builder = DB::QueryBuilder::default();
    query
        .to_sql(&mut builder, &DB::default())
        .map_err(|source| Error::Query {
            context: "rendering the query",
            source,
        })?;
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

/// A query prepared for a scan: the user's query, boxed, with the seek predicate
/// in its `WHERE` clause and the selection the scan loads.
#[allow(missing_debug_implementations)]
pub struct SeekQuery<B, K: Key> {
    base: B,
    key: K,
    bounds: Arc<BoundsCell<K::Value>>,
    cache_statements: bool,
    /// The key's columns as rendered, where the backend checks string keys'
    /// columns before a scan ([`KeysetBackend::CHECKS_STRING_KEYS`]).
    key_sql: Option<String>,
    /// The key's columns as rendered, where the backend may sort every batch
    /// of a composite key ([`KeysetBackend::ORDERS_BY_UNIQUE_PREFIX`]).
    order_sql: Option<String>,
    /// How many leading key columns `ORDER BY` names (all when 0).
    order_prefix: usize,
}

impl<B, K: Key> SeekQuery<B, K> {
    /// Adds the seek predicate to `query` (once) and keeps the bounds it renders.
    pub(crate) fn new<Q>(query: Q, key: K, bounds: Bounds<K::Value>) -> Self
    where
        Q: FilterDsl<SeekPredicate<K>, Output = B>,
    {
        let bounds = BoundsCell::new(bounds);
        let base = query.filter(SeekPredicate::new(key, Arc::clone(&bounds)));
        Self {
            base,
            key,
            bounds,
            cache_statements: true,
            key_sql: None,
            order_sql: None,
            order_prefix: 0,
        }
    }

    /// Keeps the rendered key columns for the backend's check of string keys,
    /// when it has one and the key may be a string.
    fn checking_key<DB: KeysetBackend>(mut self, render: impl FnOnce() -> Option<String>) -> Self {
        let text = DB::CHECKS_STRING_KEYS && K::IS_TEXT;
        let order = DB::ORDERS_BY_UNIQUE_PREFIX && K::ARITY > 1;
        if text || order {
            let sql = render();
            if order {
                self.order_sql.clone_from(&sql);
            }
            if text {
                self.key_sql = sql;
            }
        }
        self
    }

    /// The rendered key columns whose order is checked before the first
    /// batch, if any (see [`crate::explain`]).
    pub(crate) fn order_sql(&self) -> Option<&str> {
        self.order_sql.as_deref()
    }

    /// Orders batches by the first `n` key columns only (all when 0): the same
    /// order when those columns are unique.
    pub(crate) fn set_order_prefix(&mut self, n: usize) {
        self.order_prefix = n;
    }

    /// The rendered key columns to check before the first batch, if any.
    pub(crate) fn key_sql(&self) -> Option<&str> {
        self.key_sql.as_deref()
    }

    /// Whether the batch statement may be kept prepared by the connection.
    pub(crate) fn set_cache_statements(&mut self, on: bool) {
        self.cache_statements = on;
    }

    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    pub(crate) fn bounds(&self) -> &Bounds<K::Value> {
        self.bounds.bounds()
    }

    /// Moves the exclusive start of the next batch.
    pub(crate) fn set_after(&mut self, after: Option<StoredKey<K::Value>>) {
        // SAFETY: the predicate inside `self.base` is the only other holder of the
        // cell, and it reads it only while `self.base` is walked, which needs a
        // shared borrow of `self`; `&mut self` rules that out.
        unsafe { self.bounds.set_after(after) }
    }

    /// Renders the statement as the probe of the start key (see
    /// [`Bounds::probe`]) or as the scan's.
    pub(crate) fn set_probe(&mut self, on: bool) {
        // SAFETY: as in `set_after`.
        unsafe { self.bounds.set_probe(on) }
    }

    /// The statement for the next batch: at most `limit` rows after the current
    /// bound.
    pub(crate) fn batch(&self, limit: i64) -> Batch<'_, B, K> {
        let desc = self.bounds().desc != self.bounds().probe;
        Batch::new(
            &self.base,
            &self.key,
            desc,
            limit,
            self.cache_statements,
            self.order_prefix,
        )
    }

    /// [`batch`](Self::batch), holding the query by `&mut`: a statement that is
    /// `Send` when the query is (a boxed query is `Send` but not `Sync`), as
    /// diesel-async needs.
    #[cfg(feature = "async")]
    pub(crate) fn batch_mut(&mut self, limit: i64) -> Batch<'_, B, K, &mut B> {
        let desc = self.bounds().desc != self.bounds().probe;
        Batch::new(
            &mut self.base,
            &self.key,
            desc,
            limit,
            self.cache_statements,
            self.order_prefix,
        )
    }
}

/// One batch: the prepared query, then `ORDER BY <key> [DESC] LIMIT $n`.
///
/// The prepared query has no ORDER BY or LIMIT of its own ([`ChunkableQuery`]), so
/// the clauses appended here land where SQL expects them, after any GROUP BY or
/// HAVING. `R` is how the query is held: `&B`, or `&mut B` for the async driver.
#[allow(missing_debug_implementations)]
pub struct Batch<'q, B, K, R = &'q B> {
    base: R,
    key: &'q K,
    desc: bool,
    limit: i64,
    cache: bool,
    order: usize,
    _base: std::marker::PhantomData<fn() -> B>,
}

impl<'q, B, K, R> Batch<'q, B, K, R> {
    fn new(base: R, key: &'q K, desc: bool, limit: i64, cache: bool, order: usize) -> Self {
        Self {
            base,
            key,
            desc,
            limit,
            cache,
            order,
            _base: std::marker::PhantomData,
        }
    }
}

impl<B: Query, K, R> Query for Batch<'_, B, K, R> {
    type SqlType = B::SqlType;
}

impl<B, K, R> QueryId for Batch<'_, B, K, R> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B, K, R, DB> QueryFragment<DB> for Batch<'_, B, K, R>
where
    DB: KeysetBackend + HasSqlType<BigInt>,
    B: QueryFragment<DB>,
    R: std::ops::Deref<Target = B>,
    K: KeySql<DB>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.cache {
            // Diesel then sends the statement unnamed, parsed and run in one
            // round trip (see `Chunked::cache_statements`).
            out.unsafe_to_cache_prepared();
        }
        QueryFragment::<DB>::walk_ast(&*self.base, out.reborrow())?;
        out.push_sql(" ORDER BY ");
        let order = match self.order {
            0 => K::ARITY,
            n => n.min(K::ARITY),
        };
        for i in 0..order {
            if i > 0 {
                out.push_sql(", ");
            }
            self.key.walk_column(i, out.reborrow())?;
            if self.desc {
                out.push_sql(" DESC");
            }
        }
        out.push_sql(" LIMIT ");
        out.push_bind_param::<BigInt, i64>(&self.limit)
    }
}

impl<B, K, R, Conn> RunQueryDsl<Conn> for Batch<'_, B, K, R> {}

/// The `SELECT` list of `load_iter::<M>`: the model's columns, then the key's
/// columns unless the model already selects them.
///
/// ```text
/// SELECT posts.id, posts.title, ...            -- chunked_by(posts::id): id is in Post
/// SELECT posts.id, posts.title, ..., posts.rank -- chunked_by(posts::rank): appended
/// ```
///
/// Which of the two is decided once per scan, by rendering both selections
/// ([`PrepareModel`]); rows are then read by [`KeyedModel`]. Its SQL type is
/// `Untyped`: the row is read by position, not as one fixed tuple.
#[derive(Debug, Clone, Copy)]
pub struct ModelSelection<KS, MS> {
    key: KS,
    model: MS,
    append_key: bool,
}

/// The selection `load_iter::<M>` runs with key `K` on backend `DB`.
pub type ModelSelectionOf<K, M, DB> =
    ModelSelection<<K as Key>::Selection, diesel::helper_types::AsSelect<M, DB>>;

impl<KS, MS> Expression for ModelSelection<KS, MS> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<KS, MS, QS> AppearsOnTable<QS> for ModelSelection<KS, MS> where (KS, MS): AppearsOnTable<QS> {}

impl<KS, MS, QS> SelectableExpression<QS> for ModelSelection<KS, MS> where
    (KS, MS): SelectableExpression<QS>
{
}

impl<KS, MS, GB> ValidGrouping<GB> for ModelSelection<KS, MS>
where
    (KS, MS): ValidGrouping<GB>,
{
    type IsAggregate = <(KS, MS) as ValidGrouping<GB>>::IsAggregate;
}

impl<KS, MS> QueryId for ModelSelection<KS, MS> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<KS, MS, DB> QueryFragment<DB> for ModelSelection<KS, MS>
where
    DB: Backend,
    KS: QueryFragment<DB>,
    MS: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.model.walk_ast(out.reborrow())?;
        if self.append_key {
            out.push_sql(", ");
            self.key.walk_ast(out.reborrow())?;
        }
        Ok(())
    }
}

/// The `SELECT` list of a write job's batch: only the key's columns. Its SQL
/// type is `Untyped`; rows are read by [`KeyRow`].
///
/// ```text
/// SELECT posts.id FROM posts WHERE (<filters>) AND posts.id > $1 ORDER BY posts.id LIMIT $2
/// ```
#[derive(Debug, Clone, Copy)]
pub struct KeysOnly<KS>(KS);

impl<KS> Expression for KeysOnly<KS> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<KS: AppearsOnTable<QS>, QS> AppearsOnTable<QS> for KeysOnly<KS> {}

impl<KS: SelectableExpression<QS>, QS> SelectableExpression<QS> for KeysOnly<KS> {}

impl<KS: ValidGrouping<GB>, GB> ValidGrouping<GB> for KeysOnly<KS> {
    type IsAggregate = KS::IsAggregate;
}

impl<KS> QueryId for KeysOnly<KS> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<KS: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for KeysOnly<KS> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

/// One row of a write job's batch: its key, as stored.
#[derive(Debug)]
pub struct KeyRow<K: Key>(pub(crate) StoredKey<K::Value>);

impl<K, DB> QueryableByName<DB> for KeyRow<K>
where
    DB: KeysetBackend,
    K: KeyFromRow<DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        Ok(KeyRow(K::from_row(row, &[0, 1, 2])?))
    }
}

/// Everything a write job needs of a query to load its batches' keys: it can
/// be chunked, and selecting the key and adding the seek predicate type-check.
pub trait PrepareKeys<'a, K: Key, DB: Backend> {
    /// The prepared query's type.
    type Base;

    /// Boxes the query, selects the key's columns, adds the seek predicate.
    fn prepare_keys(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error>;
}

impl<'a, Q, K, DB> PrepareKeys<'a, K, DB> for Q
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    K: Key,
    K::Selection: QueryFragment<DB>,
    Q: ChunkableQuery<'a, DB>,
    Q::Boxed: SelectDsl<KeysOnly<K::Selection>>,
    diesel::dsl::Select<Q::Boxed, KeysOnly<K::Selection>>: FilterDsl<SeekPredicate<K>>,
{
    type Base = diesel::dsl::Filter<
        diesel::dsl::Select<Q::Boxed, KeysOnly<K::Selection>>,
        SeekPredicate<K>,
    >;

    fn prepare_keys(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error> {
        let boxed = self.into_boxed_checked()?;
        let selected = SelectDsl::select(boxed, KeysOnly(key.selection()));
        let render = || {
            let mut builder = DB::QueryBuilder::default();
            key.selection().to_sql(&mut builder, &DB::default()).ok()?;
            Some(builder.finish())
        };
        Ok(SeekQuery::new(selected, key, bounds).checking_key::<DB>(render))
    }
}

thread_local! {
    /// Where [`KeyedModel`] finds the key in the rows of the batch being loaded
    /// on this thread: set by [`with_key_columns`] around each batch.
    static KEY_COLUMNS: Cell<KeyPositions> = const { Cell::new([0; 3]) };
}

/// Runs `load` with rows' keys read from columns `at`.
pub(crate) fn with_key_columns<T>(at: KeyPositions, load: impl FnOnce() -> T) -> T {
    let outer = KEY_COLUMNS.replace(at);
    let loaded = load();
    KEY_COLUMNS.set(outer);
    loaded
}

/// One row of `load_iter::<M>`: the model, and its key read from the same row.
///
/// The model is built from the row's leading columns as Diesel builds it for
/// `M::as_select()`; the key is read from the columns the scan found it in (see
/// [`ModelSelection`]), once per row, with no second copy of the column sent.
#[derive(Debug)]
pub struct KeyedModel<K: Key, M> {
    pub(crate) key: StoredKey<K::Value>,
    pub(crate) model: M,
}

impl<K, M, DB> QueryableByName<DB> for KeyedModel<K, M>
where
    DB: KeysetBackend,
    K: KeyFromRow<DB>,
    M: Selectable<DB> + FromSqlRow<ModelSqlType<M, DB>, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        let at = KEY_COLUMNS.get();
        Ok(KeyedModel {
            key: K::from_row(row, &at)?,
            model: M::build_from_row(row)?,
        })
    }
}

/// The SQL type Diesel loads model `M` from: that of the columns `M` selects.
pub type ModelSqlType<M, DB> = <<M as Selectable<DB>>::SelectExpression as Expression>::SqlType;

/// Everything `load_iter::<M>` / `load_batches::<M>` needs of a query, in one bound:
/// it can be chunked, it selects the default columns, and selecting
/// `M::as_select()` (and the key) and adding the seek predicate type-check on `DB`.
pub trait PrepareModel<'a, K: Key, M, DB: Backend> {
    /// The prepared query's type.
    type Base;

    /// Boxes the query, selects [`ModelSelection`], adds the seek predicate; also
    /// returns where the key's columns are in a row.
    fn prepare_model(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<(SeekQuery<Self::Base, K>, KeyPositions), Error>;
}

impl<'a, Q, K, M, DB> PrepareModel<'a, K, M, DB> for Q
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    K: Key,
    K::Selection: QueryFragment<DB>,
    M: Selectable<DB>,
    diesel::helper_types::AsSelect<M, DB>: QueryFragment<DB>,
    Q: ChunkableQuery<'a, DB> + DefaultSelection,
    Q::Boxed: SelectDsl<ModelSelectionOf<K, M, DB>>,
    diesel::dsl::Select<Q::Boxed, ModelSelectionOf<K, M, DB>>: FilterDsl<SeekPredicate<K>>,
{
    type Base = diesel::dsl::Filter<
        diesel::dsl::Select<Q::Boxed, ModelSelectionOf<K, M, DB>>,
        SeekPredicate<K>,
    >;

    fn prepare_model(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<(SeekQuery<Self::Base, K>, KeyPositions), Error> {
        let boxed = self.into_boxed_checked()?;
        let model = M::as_select();
        let rendered = |sql: &dyn QueryFragment<DB>| {
            let mut builder = DB::QueryBuilder::default();
            sql.to_sql(&mut builder, &DB::default())
                .map(|()| builder.finish())
                .map_err(|source| Error::Query {
                    context: "rendering the selection",
                    source,
                })
        };
        let model_sql = rendered(&model)?;
        let key_sql = rendered(&key.selection())?;
        let model_columns = top_level_items(&model_sql);
        let found: Option<Vec<usize>> = top_level_items(&key_sql)
            .iter()
            .map(|k| model_columns.iter().position(|c| c == k))
            .collect();
        let mut at: KeyPositions = [0; 3];
        let append_key = match found {
            Some(positions) => {
                at[..positions.len()].copy_from_slice(&positions);
                false
            }
            None => {
                for (i, a) in at.iter_mut().enumerate().take(K::ARITY) {
                    *a = model_columns.len() + i;
                }
                true
            }
        };
        let selection = ModelSelection {
            key: key.selection(),
            model,
            append_key,
        };
        let selected = SelectDsl::select(boxed, selection);
        let query = SeekQuery::new(selected, key, bounds).checking_key::<DB>(|| Some(key_sql));
        Ok((query, at))
    }
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

/// Everything the `*_keyed` terminals need of a query: it can be chunked and the
/// seek predicate type-checks. The query's own selection is kept.
pub trait PrepareKeyed<'a, K: Key, DB: Backend> {
    /// The prepared query's type.
    type Base;

    /// Boxes the query and adds the seek predicate.
    fn prepare_keyed(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error>;
}

impl<'a, Q, K, DB> PrepareKeyed<'a, K, DB> for Q
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    K: Key + SelectableKey<Q::Source>,
    K::Selection: QueryFragment<DB>,
    Q: ChunkableQuery<'a, DB>,
    Q::Boxed: FilterDsl<SeekPredicate<K>>,
{
    type Base = diesel::dsl::Filter<Q::Boxed, SeekPredicate<K>>;

    fn prepare_keyed(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error> {
        let boxed = self.into_boxed_checked()?;
        let render = || {
            let mut builder = DB::QueryBuilder::default();
            key.selection().to_sql(&mut builder, &DB::default()).ok()?;
            Some(builder.finish())
        };
        Ok(SeekQuery::new(boxed, key, bounds).checking_key::<DB>(render))
    }
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
