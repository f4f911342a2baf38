//! How an async connection loads the rows of one batch.

use diesel::QueryResult;
use diesel_async::AsyncConnectionCore;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::explain::{Explained, PlanLine};
use crate::key::Key;
use crate::query::{Batch, KeyRow, KeyedModel, SeekQuery};
use crate::rows::{KeyRows, KeyedRows, ModelRows, RowType};
use crate::shared::WithKeyColumns;
use crate::stored::StoredKey;

/// How the rows of a batch are loaded on an async connection: the async twin
/// of [`Rows`](crate::Rows).
pub trait AsyncRows<Conn, B, K: Key>: RowType<K> + Send {
    /// Loads one batch.
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<Self::Loaded>>>;

    /// The backend's plan of one batch of `limit` rows, as reported.
    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>>;
}

/// Runs one batch of a prepared query on async connection `Conn`, loading
/// `U`s: the async twin of `LoadBatch`.
pub trait AsyncLoadBatch<Conn, U> {
    /// Loads at most `limit` rows after the current bound.
    fn load_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<U>>>;
}

impl<B, K, Conn, U> AsyncLoadBatch<Conn, U> for SeekQuery<B, K>
where
    K: Key,
    Conn: AsyncConnectionCore,
    U: Send + 'static,
    for<'q> Batch<'q, B, K, &'q mut B>: diesel_async::methods::LoadQuery<'q, Conn, U>,
{
    fn load_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<U>>> {
        diesel_async::RunQueryDsl::load(self.batch_mut(limit), conn).boxed()
    }
}

/// Runs `EXPLAIN` of one batch of a prepared query on async connection
/// `Conn`: the async twin of [`ExplainBatch`](crate::explain::ExplainBatch).
pub trait AsyncExplainBatch<Conn> {
    /// The plan of the batch of `limit` rows after the current bound, line by line.
    fn explain_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>>;
}

impl<B, K, Conn> AsyncExplainBatch<Conn> for SeekQuery<B, K>
where
    K: Key,
    Conn: AsyncConnectionCore,
    for<'q> Explained<Batch<'q, B, K, &'q mut B>>:
        diesel_async::methods::LoadQuery<'q, Conn, PlanLine>,
{
    fn explain_batch_async<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        let lines = diesel_async::RunQueryDsl::load(Explained(self.batch_mut(limit)), conn);
        Box::pin(async move { Ok(lines.await?.into_iter().map(|l: PlanLine| l.0).collect()) })
    }
}

impl<Conn, B, K, M> AsyncRows<Conn, B, K> for ModelRows<M>
where
    K: Key,
    SeekQuery<B, K>: AsyncLoadBatch<Conn, KeyedModel<K, M>> + AsyncExplainBatch<Conn>,
{
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<KeyedModel<K, M>>>> {
        let load = query.load_batch_async(conn, limit);
        Box::pin(WithKeyColumns {
            at: self.key_columns,
            load,
        })
    }

    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        query.explain_batch_async(conn, limit)
    }
}

impl<Conn, B, K, U, F> AsyncRows<Conn, B, K> for KeyedRows<U, F>
where
    K: Key,
    U: Send,
    K::Value: Send,
    F: FnMut(&U) -> K::Value + Send,
    SeekQuery<B, K>: AsyncLoadBatch<Conn, U> + AsyncExplainBatch<Conn>,
{
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<(StoredKey<K::Value>, U)>>> {
        let load = query.load_batch_async(conn, limit);
        Box::pin(async move { Ok(self.keyed(load.await?)) })
    }

    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        query.explain_batch_async(conn, limit)
    }
}

impl<Conn, B, K> AsyncRows<Conn, B, K> for KeyRows
where
    K: Key,
    SeekQuery<B, K>: AsyncLoadBatch<Conn, KeyRow<K>> + AsyncExplainBatch<Conn>,
{
    fn load_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<KeyRow<K>>>> {
        query.load_batch_async(conn, limit)
    }

    fn explain_async<'a>(
        &'a mut self,
        query: &'a mut SeekQuery<B, K>,
        conn: &'a mut Conn,
        limit: i64,
    ) -> BoxFuture<'a, QueryResult<Vec<String>>> {
        query.explain_batch_async(conn, limit)
    }
}
