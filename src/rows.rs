//! What a scan loads per row: a model whose key the crate reads from the row
//! ([`ModelRows`]), or the query's own selection with a key closure
//! ([`KeyedRows`]); and how a loaded row gives up its key and item.

use std::marker::PhantomData;

use crate::engine::KeyOrigin;
use crate::explain::ExplainBatch;
use crate::key::{Key, KeyPositions};
use crate::query::{with_key_columns, KeyRow, KeyedModel, LoadBatch, SeekQuery};
use crate::stored::StoredKey;

/// What a scan with key `K` yields per row: `M` for `load_iter::<M>`, the
/// selection `U` for the `*_keyed` terminals.
pub trait RowType<K: Key> {
    /// What the iterators yield.
    type Item;
    /// A loaded row: the item and its key, kept as loaded until handed out.
    type Loaded: LoadedRow<K::Value, Self::Item>;
    /// Where the keys come from.
    const ORIGIN: KeyOrigin;
}

/// How the rows of a batch are loaded and their keys read.
pub trait Rows<Conn, B, K: Key>: RowType<K> {
    /// Loads one batch.
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<Self::Loaded>>;

    /// The backend's plan of one batch of `limit` rows, as reported (see
    /// [`crate::explain`]).
    fn explain(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<String>>;
}

/// A loaded row: an item of type `T` with its key of type `V`.
pub trait LoadedRow<V, T> {
    /// The row's key.
    fn key(&self) -> &StoredKey<V>;
    /// The key and the item.
    fn into_parts(self) -> (StoredKey<V>, T);
}

impl<V, T> LoadedRow<V, T> for (StoredKey<V>, T) {
    fn key(&self) -> &StoredKey<V> {
        &self.0
    }
    fn into_parts(self) -> (StoredKey<V>, T) {
        self
    }
}

impl<K: Key, M> LoadedRow<K::Value, M> for KeyedModel<K, M> {
    fn key(&self) -> &StoredKey<K::Value> {
        &self.key
    }
    fn into_parts(self) -> (StoredKey<K::Value>, M) {
        (self.key, self.model)
    }
}

/// Rows of model `M`, each with its key read from the same row
/// (`KeyedModel`).
#[derive(Debug)]
pub struct ModelRows<M> {
    pub(crate) key_columns: KeyPositions,
    pub(crate) _model: PhantomData<fn() -> M>,
}

impl<M> ModelRows<M> {
    /// Rows whose key is at `key_columns`.
    pub(crate) fn new(key_columns: KeyPositions) -> Self {
        Self {
            key_columns,
            _model: PhantomData,
        }
    }
}

impl<K: Key, M> RowType<K> for ModelRows<M> {
    type Item = M;
    type Loaded = KeyedModel<K, M>;
    const ORIGIN: KeyOrigin = KeyOrigin::Rows;
}

impl<Conn, B, K, M> Rows<Conn, B, K> for ModelRows<M>
where
    K: Key,
    SeekQuery<B, K>: LoadBatch<Conn, KeyedModel<K, M>> + ExplainBatch<Conn>,
{
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<KeyedModel<K, M>>> {
        with_key_columns(self.key_columns, || query.load_batch(conn, limit))
    }

    fn explain(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<String>> {
        query.explain_batch(conn, limit)
    }
}

/// Rows of the query's own selection, with the key read by a closure.
pub struct KeyedRows<U, F> {
    pub(crate) key_of: F,
    pub(crate) _row: PhantomData<fn() -> U>,
}

impl<U, F> std::fmt::Debug for KeyedRows<U, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedRows")
    }
}

impl<K: Key, U, F> RowType<K> for KeyedRows<U, F> {
    type Item = U;
    type Loaded = (StoredKey<K::Value>, U);
    const ORIGIN: KeyOrigin = KeyOrigin::Closure;
}

impl<Conn, B, K, U, F> Rows<Conn, B, K> for KeyedRows<U, F>
where
    K: Key,
    F: FnMut(&U) -> K::Value,
    SeekQuery<B, K>: LoadBatch<Conn, U> + ExplainBatch<Conn>,
{
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<(StoredKey<K::Value>, U)>> {
        let rows = query.load_batch(conn, limit)?;
        Ok(self.keyed(rows))
    }

    fn explain(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<String>> {
        query.explain_batch(conn, limit)
    }
}

impl<U, F> KeyedRows<U, F> {
    /// Each row with its key, read by the closure.
    pub(crate) fn keyed<V>(&mut self, rows: Vec<U>) -> Vec<(StoredKey<V>, U)>
    where
        F: FnMut(&U) -> V,
    {
        rows.into_iter()
            .map(|u| (StoredKey::from((self.key_of)(&u)), u))
            .collect()
    }
}

impl<K: Key> LoadedRow<K::Value, ()> for KeyRow<K> {
    fn key(&self) -> &StoredKey<K::Value> {
        &self.0
    }
    fn into_parts(self) -> (StoredKey<K::Value>, ()) {
        (self.0, ())
    }
}

/// The keys of a batch, and nothing else: what a range `UPDATE` or `DELETE`
/// needs.
#[derive(Debug, Default)]
pub struct KeyRows;

impl<K: Key> RowType<K> for KeyRows {
    type Item = ();
    type Loaded = KeyRow<K>;
    const ORIGIN: KeyOrigin = KeyOrigin::Rows;
}

impl<Conn, B, K> Rows<Conn, B, K> for KeyRows
where
    K: Key,
    SeekQuery<B, K>: LoadBatch<Conn, KeyRow<K>> + ExplainBatch<Conn>,
{
    fn load(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<KeyRow<K>>> {
        query.load_batch(conn, limit)
    }

    fn explain(
        &mut self,
        query: &SeekQuery<B, K>,
        conn: &mut Conn,
        limit: i64,
    ) -> diesel::QueryResult<Vec<String>> {
        query.explain_batch(conn, limit)
    }
}
