//! The statement of [`async_commit`](crate::Chunked::async_commit), run first
//! in each batch's transaction on backends that have one (see
//! [`KeysetBackend::ASYNC_COMMIT`]).

use diesel::query_builder::SqlQuery;
use diesel::QueryResult;

use crate::backend::KeysetBackend;

/// Makes the current transaction's `COMMIT` return before its log is
/// flushed, where the backend can; a no-op elsewhere. Public in a private
/// module: it seals [`CheckpointConnection`](crate::checkpoint::CheckpointConnection).
pub trait RelaxCommit {
    /// Runs the backend's statement, if it has one.
    fn relax_commit(&mut self) -> QueryResult<()>;
}

impl<C> RelaxCommit for C
where
    C: diesel::Connection,
    C::Backend: KeysetBackend,
    SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    fn relax_commit(&mut self) -> QueryResult<()> {
        if let Some(sql) = <C::Backend as KeysetBackend>::ASYNC_COMMIT {
            diesel::RunQueryDsl::execute(diesel::sql_query(sql), self)?;
        }
        Ok(())
    }
}

/// [`RelaxCommit`] on an async connection.
#[cfg(feature = "async")]
pub trait AsyncRelaxCommit {
    /// Runs the backend's statement, if it has one.
    fn relax_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>>;
}

#[cfg(feature = "async")]
impl<C> AsyncRelaxCommit for C
where
    C: diesel_async::AsyncConnection,
    C::Backend: KeysetBackend,
    SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    fn relax_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>> {
        Box::pin(async move {
            if let Some(sql) = <C::Backend as KeysetBackend>::ASYNC_COMMIT {
                diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await?;
            }
            Ok(())
        })
    }
}
