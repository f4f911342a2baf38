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
//! LIMIT $n                                  -- a literal on PostgreSQL
//! ```
//!
//! `> $after` becomes `< $after` for descending scans; the first batch of a scan
//! with no start key renders the predicate as `1 = 1`, on MySQL/MariaDB as
//! `<first key column> >= (SELECT MIN(<it>) FROM <its table>)` (`<= MAX`
//! descending), a range the optimizer reads the index by
//! ([`KeysetBackend::FIRST_BATCH_FLOOR`]). Composite keys compare
//! lexicographically in the backend's best form ([`KeysetBackend`]).
//!
//! Keeping one boxed query for the whole scan is what lets a query the user boxed
//! themselves (`into_boxed()`, the usual way to build dynamic filters) be scanned:
//! boxed queries cannot be cloned. It also gives every batch after the first the
//! same SQL text, so each backend prepares at most two statements per scan
//! (PostgreSQL a third for a shorter last batch under `limit_total`: its
//! regular batches write their `LIMIT` as a literal, see
//! [`KeysetBackend::LITERAL_LIMIT`]).

use std::sync::Arc;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::FilterDsl;
use diesel::sql_types::{BigInt, HasSqlType};
use diesel::{QueryResult, RunQueryDsl};

use crate::backend::KeysetBackend;
use crate::key::{Key, KeySql};
use crate::predicate::{Bounds, BoundsCell, Floor, SeekPredicate};
use crate::stored::StoredKey;

mod checks;
mod select;

pub(crate) use crate::shared::with_key_columns;
pub(crate) use checks::top_level_items;
pub(crate) use checks::DefaultSelection;
pub use checks::{ChunkableQuery, SelectableKey};
pub use select::{KeyRow, KeyedModel, PrepareKeyed, PrepareKeys, PrepareModel};

pub use crate::load::LoadBatch;

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
    /// The `LIMIT` of a regular batch (its size and the look-ahead row),
    /// written as a literal where [`KeysetBackend::LITERAL_LIMIT`].
    literal_limit: Option<i64>,
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
            literal_limit: None,
        }
    }

    /// Keeps the rendered key columns for the backend's check of string keys,
    /// when it has one and the key may be a string.
    fn checking_key<DB: KeysetBackend>(mut self, render: impl FnOnce() -> Option<String>) -> Self {
        let text = DB::CHECKS_STRING_KEYS && K::IS_TEXT;
        let order = DB::ORDERS_BY_UNIQUE_PREFIX && K::ARITY > 1;
        let floor = DB::FIRST_BATCH_FLOOR;
        if text || order || floor.is_some() {
            let sql = render();
            if let (Some(quote), Some(sql)) = (floor, sql.as_deref()) {
                if let Some(floor) = Floor::parse(sql, quote) {
                    self.bounds.set_floor(floor);
                }
            }
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

    /// Whether the batch statement may be kept prepared by the connection,
    /// and the scan's batch size: a batch of that size (and its look-ahead
    /// row) is the statement the connection keeps.
    pub(crate) fn set_statements(&mut self, cache: bool, batch_size: u64) {
        self.cache_statements = cache;
        self.literal_limit = i64::try_from(batch_size)
            .ok()
            .and_then(|n| n.checked_add(1))
            .filter(|_| cache);
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

    /// Moves both ends of the range the statement renders (a diff's chunk).
    pub(crate) fn set_range(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
    ) {
        // SAFETY: as in `set_after`.
        unsafe { self.bounds.set_range(after, until) }
    }

    /// The prepared query, without the batch's `ORDER BY` and `LIMIT`.
    pub(crate) fn base(&self) -> &B {
        &self.base
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
        let shape = self.shape(limit);
        Batch::new(&self.base, &self.key, shape)
    }

    /// How the next batch's statement is written around the query.
    fn shape(&self, limit: i64) -> Shape {
        Shape {
            desc: self.bounds().desc != self.bounds().probe,
            limit,
            literal: self.cache_statements && self.literal_limit == Some(limit),
            cache: self.cache_statements,
            order: self.order_prefix,
        }
    }

    /// [`batch`](Self::batch), holding the query by `&mut`: a statement that is
    /// `Send` when the query is (a boxed query is `Send` but not `Sync`), as
    /// diesel-async needs.
    #[cfg(feature = "async")]
    pub(crate) fn batch_mut(&mut self, limit: i64) -> Batch<'_, B, K, &mut B> {
        let shape = self.shape(limit);
        Batch::new(&mut self.base, &self.key, shape)
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
    shape: Shape,
    _base: std::marker::PhantomData<fn() -> B>,
}

/// What a batch's statement adds to the query: its order, its `LIMIT` and
/// whether that is a literal, and whether the statement may be kept prepared.
#[derive(Debug, Clone, Copy)]
struct Shape {
    desc: bool,
    limit: i64,
    /// The `LIMIT` is the regular one, written as a literal where
    /// [`KeysetBackend::LITERAL_LIMIT`].
    literal: bool,
    cache: bool,
    /// How many leading key columns `ORDER BY` names (all when 0).
    order: usize,
}

impl<'q, B, K, R> Batch<'q, B, K, R> {
    fn new(base: R, key: &'q K, shape: Shape) -> Self {
        Self {
            base,
            key,
            shape,
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
        if !self.shape.cache {
            // Diesel then sends the statement unnamed, parsed and run in one
            // round trip (see `Chunked::cache_statements`).
            out.unsafe_to_cache_prepared();
        }
        QueryFragment::<DB>::walk_ast(&*self.base, out.reborrow())?;
        out.push_sql(" ORDER BY ");
        let order = match self.shape.order {
            0 => K::ARITY,
            n => n.min(K::ARITY),
        };
        for i in 0..order {
            if i > 0 {
                out.push_sql(", ");
            }
            self.key.walk_column(i, out.reborrow())?;
            if self.shape.desc {
                out.push_sql(" DESC");
            }
        }
        out.push_sql(" LIMIT ");
        if DB::LITERAL_LIMIT && self.shape.literal {
            out.push_sql(&self.shape.limit.to_string());
            Ok(())
        } else {
            out.push_bind_param::<BigInt, i64>(&self.shape.limit)
        }
    }
}

impl<B, K, R, Conn> RunQueryDsl<Conn> for Batch<'_, B, K, R> {}
