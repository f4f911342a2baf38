//! The selections a scan loads, and the one bound per terminal that prepares a
//! query for them ([`PrepareModel`], [`PrepareKeyed`], [`PrepareKeys`]).

use diesel::backend::Backend;
use diesel::deserialize::{FromSqlRow, QueryableByName};
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::query_dsl::methods::{FilterDsl, SelectDsl};
use diesel::row::NamedRow;
use diesel::QueryResult;
use diesel::{Selectable, SelectableHelper};

use super::checks::{render, top_level_items, ChunkableQuery, DefaultSelection, SelectableKey};
use super::SeekQuery;
use crate::backend::KeysetBackend;
use crate::error::Error;
use crate::key::{Key, KeyFromRow, KeyPositions};
use crate::predicate::{Bounds, SeekPredicate};
use crate::stored::StoredKey;

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
/// SELECT posts.id FROM posts WHERE (<filters>) AND posts.id > ? ORDER BY posts.id LIMIT ?
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

/// The context of an error rendering a scan's selection.
const SELECTION: &str = "rendering the selection";

/// The key's columns as `DB` renders them, if it can: what
/// [`SeekQuery::checking_key`] keeps for the checks before the first batch.
fn key_sql<DB, K>(key: &K) -> Option<String>
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    K: Key,
    K::Selection: QueryFragment<DB>,
{
    render::<DB>(&key.selection(), SELECTION).ok()
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
        Ok(SeekQuery::new(selected, key, bounds).checking_key::<DB>(|| key_sql::<DB, K>(&key)))
    }
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
        let at = crate::shared::key_columns();
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
        let model_sql = render::<DB>(&model, SELECTION)?;
        let key_sql = render::<DB>(&key.selection(), SELECTION)?;
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
        Ok(SeekQuery::new(boxed, key, bounds).checking_key::<DB>(|| key_sql::<DB, K>(&key)))
    }
}
