//! The statements of [`async_commit`](crate::Chunked::async_commit): one run
//! first in each batch's transaction on backends that have one (see
//! [`KeysetBackend::ASYNC_COMMIT`]), and on SQLite one around the batch's
//! transaction (see [`KeysetBackend::RELAXED_SYNC`]).

use diesel::query_builder::SqlQuery;
use diesel::QueryResult;

use crate::backend::KeysetBackend;

/// Makes the current transaction's `COMMIT` return before its log is
/// flushed, where the backend can; a no-op elsewhere. Public in a private
/// module: it seals [`CheckpointConnection`](crate::checkpoint::CheckpointConnection).
pub trait RelaxCommit {
    /// Runs the backend's statement, if it has one.
    fn relax_commit(&mut self) -> QueryResult<()>;

    /// Undoes [`relax_commit`](Self::relax_commit) for the current
    /// transaction: runs [`KeysetBackend::DURABLE_COMMIT`], if the backend
    /// has it.
    fn durable_commit(&mut self) -> QueryResult<()>;

    /// Outside any transaction, before a batch's: relaxes the connection's
    /// flush setting where the backend keeps it per connection and it cannot
    /// change inside a transaction (SQLite in WAL mode); returns the
    /// statement that puts it back after the batch, if it changed it.
    fn relax_connection(&mut self) -> QueryResult<Option<String>>;

    /// Runs a statement [`relax_connection`](Self::relax_connection) returned.
    fn restore_connection(&mut self, sql: String) -> QueryResult<()>;
}

/// The connection's flush setting, as [`KeysetBackend::RELAXED_SYNC`] reads it.
#[derive(Debug, diesel::QueryableByName)]
pub struct SyncSetting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

impl<C> RelaxCommit for C
where
    C: diesel::Connection,
    C::Backend: KeysetBackend,
    SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>
        + for<'q> diesel::query_dsl::LoadQuery<'q, C, SyncSetting>,
{
    fn relax_commit(&mut self) -> QueryResult<()> {
        if let Some(sql) = <C::Backend as KeysetBackend>::ASYNC_COMMIT {
            diesel::RunQueryDsl::execute(diesel::sql_query(sql), self)?;
        }
        Ok(())
    }

    fn durable_commit(&mut self) -> QueryResult<()> {
        if let Some(sql) = <C::Backend as KeysetBackend>::DURABLE_COMMIT {
            diesel::RunQueryDsl::execute(diesel::sql_query(sql), self)?;
        }
        Ok(())
    }

    fn relax_connection(&mut self) -> QueryResult<Option<String>> {
        let Some(sync) = <C::Backend as KeysetBackend>::RELAXED_SYNC else {
            return Ok(None);
        };
        let now: Vec<SyncSetting> = diesel::RunQueryDsl::load(diesel::sql_query(sync.read), self)?;
        let Some(now) = now.into_iter().next().filter(|s| s.value != sync.relaxed) else {
            return Ok(None);
        };
        diesel::RunQueryDsl::execute(diesel::sql_query(sync.set(sync.relaxed)), self)?;
        Ok(Some(sync.set(&now.value)))
    }

    fn restore_connection(&mut self, sql: String) -> QueryResult<()> {
        diesel::RunQueryDsl::execute(diesel::sql_query(sql), self)?;
        Ok(())
    }
}

/// A flush setting a backend keeps per connection (see
/// [`KeysetBackend::RELAXED_SYNC`]).
#[derive(Debug, Clone, Copy)]
pub struct SyncPragma {
    /// Reads the setting as text, one row, or no row where it is not to be
    /// relaxed.
    pub read: &'static str,
    /// The statement that sets it, before the value.
    pub set: &'static str,
    /// The relaxed value.
    pub relaxed: &'static str,
}

impl SyncPragma {
    fn set(&self, value: &str) -> String {
        format!("{}{}", self.set, value)
    }
}

/// [`RelaxCommit`] on an async connection.
#[cfg(feature = "async")]
pub trait AsyncRelaxCommit {
    /// Runs the backend's statement, if it has one.
    fn relax_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>>;

    /// [`RelaxCommit::durable_commit`].
    fn durable_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>>;

    /// [`RelaxCommit::relax_connection`].
    fn relax_connection(
        &mut self,
    ) -> futures_util::future::BoxFuture<'_, QueryResult<Option<String>>>;

    /// Runs a statement [`relax_connection`](Self::relax_connection) returned.
    fn restore_connection(
        &mut self,
        sql: String,
    ) -> futures_util::future::BoxFuture<'_, QueryResult<()>>;
}

#[cfg(feature = "async")]
impl<C> AsyncRelaxCommit for C
where
    C: diesel_async::AsyncConnection,
    C::Backend: KeysetBackend,
    SqlQuery: diesel::query_builder::QueryFragment<C::Backend>
        + for<'q> diesel_async::methods::LoadQuery<'q, C, SyncSetting>,
{
    fn relax_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>> {
        Box::pin(async move {
            if let Some(sql) = <C::Backend as KeysetBackend>::ASYNC_COMMIT {
                diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await?;
            }
            Ok(())
        })
    }

    fn durable_commit(&mut self) -> futures_util::future::BoxFuture<'_, QueryResult<()>> {
        Box::pin(async move {
            if let Some(sql) = <C::Backend as KeysetBackend>::DURABLE_COMMIT {
                diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await?;
            }
            Ok(())
        })
    }

    fn relax_connection(
        &mut self,
    ) -> futures_util::future::BoxFuture<'_, QueryResult<Option<String>>> {
        Box::pin(async move {
            let Some(sync) = <C::Backend as KeysetBackend>::RELAXED_SYNC else {
                return Ok(None);
            };
            let now: Vec<SyncSetting> =
                diesel_async::RunQueryDsl::load(diesel::sql_query(sync.read), self).await?;
            let Some(now) = now.into_iter().next().filter(|s| s.value != sync.relaxed) else {
                return Ok(None);
            };
            diesel_async::RunQueryDsl::execute(diesel::sql_query(sync.set(sync.relaxed)), self)
                .await?;
            Ok(Some(sync.set(&now.value)))
        })
    }

    fn restore_connection(
        &mut self,
        sql: String,
    ) -> futures_util::future::BoxFuture<'_, QueryResult<()>> {
        Box::pin(async move {
            diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await?;
            Ok(())
        })
    }
}
