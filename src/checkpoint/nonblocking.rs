//! The checkpoint statements on diesel-async connections: the async twin of
//! [`CheckpointConnection`](super::CheckpointConnection), with the same SQL
//! (the [`Statements`] of each backend), and the batch transaction of each
//! backend.

use diesel::result::Error as DieselError;
use diesel::QueryResult;
use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::future::BoxFuture;

use super::Checkpoint;
use crate::stream::AsyncKeyCheck;

/// The checkpoint statements and the batch transaction on an async
/// connection. Implemented for `AsyncPgConnection`, `AsyncMysqlConnection`
/// and `SyncConnectionWrapper<SqliteConnection>`.
pub trait AsyncCheckpointConnection:
    AsyncConnection
    + AsyncKeyCheck
    + crate::health::sql::AsyncReadHealth
    + crate::commit::AsyncRelaxCommit
    + 'static
{
    /// See [`CheckpointConnection::create_checkpoint_table`](super::CheckpointConnection::create_checkpoint_table).
    fn create_checkpoint_table(&mut self) -> BoxFuture<'_, QueryResult<()>>;

    /// See [`CheckpointConnection::read_checkpoint`](super::CheckpointConnection::read_checkpoint).
    fn read_checkpoint<'c>(
        &'c mut self,
        name: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>>;

    /// See [`CheckpointConnection::start_checkpoint`](super::CheckpointConnection::start_checkpoint).
    fn start_checkpoint<'c>(
        &'c mut self,
        name: &'c str,
        key_type: &'c str,
    ) -> BoxFuture<'c, QueryResult<Checkpoint>>;

    /// See [`CheckpointConnection::claim_checkpoint`](super::CheckpointConnection::claim_checkpoint).
    fn claim_checkpoint<'c>(
        &'c mut self,
        name: &'c str,
        fingerprint: &'c str,
    ) -> BoxFuture<'c, QueryResult<Checkpoint>>;

    /// See [`CheckpointConnection::lock_checkpoint`](super::CheckpointConnection::lock_checkpoint).
    fn lock_checkpoint<'c>(
        &'c mut self,
        name: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>>;

    /// See [`CheckpointConnection::advance_checkpoint`](super::CheckpointConnection::advance_checkpoint).
    fn advance_checkpoint<'c>(
        &'c mut self,
        name: &'c str,
        last_key: Option<&'c str>,
        rows: u64,
        batches: u64,
        done: bool,
    ) -> BoxFuture<'c, QueryResult<()>>;

    /// See [`CheckpointConnection::delete_checkpoint`](super::CheckpointConnection::delete_checkpoint).
    fn delete_checkpoint<'c>(&'c mut self, name: &'c str) -> BoxFuture<'c, QueryResult<bool>>;

    /// Begins a batch transaction of this backend: SQLite `BEGIN IMMEDIATE`,
    /// MySQL/MariaDB `READ COMMITTED`, PostgreSQL a plain transaction; an
    /// error inside an open transaction.
    fn begin_batch(&mut self) -> BoxFuture<'_, QueryResult<()>>;
}

/// Fails with `AlreadyInTransaction` when `conn` is inside a transaction: a
/// batch's transaction is never nested (a savepoint would commit nothing).
fn outside_transaction<C: AsyncConnection>(conn: &mut C) -> QueryResult<()> {
    let depth = C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth()?;
    match depth {
        Some(_) => Err(DieselError::AlreadyInTransaction),
        None => Ok(()),
    }
}

/// Begins a savepoint of the transaction `conn` is in (a transaction if it
/// is in none).
pub(crate) async fn begin_savepoint<C: AsyncConnection>(conn: &mut C) -> QueryResult<()> {
    C::TransactionManager::begin_transaction(conn).await
}

/// Rolls back the innermost transaction or savepoint of `conn`.
pub(crate) async fn rollback<C: AsyncConnection>(conn: &mut C) -> QueryResult<()> {
    C::TransactionManager::rollback_transaction(conn).await
}

/// Ends the transaction (or savepoint) begun on `conn` whose body ended as
/// `body`: committed (released) on `Ok`, rolled back on `Err` or a panic,
/// which then goes on unwinding. A body's error says more than a broken
/// connection's failed rollback: it is the one returned.
pub(crate) async fn end_transaction<C, T, E>(
    conn: &mut C,
    body: std::thread::Result<Result<T, E>>,
) -> Result<T, E>
where
    C: AsyncConnection,
    E: From<DieselError>,
{
    match body {
        Ok(Ok(value)) => {
            C::TransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Ok(Err(e)) => {
            let _ = rollback(conn).await;
            Err(e)
        }
        Err(panic) => {
            let _ = rollback(conn).await;
            std::panic::resume_unwind(panic)
        }
    }
}

/// The statements of `AsyncCheckpointConnection` for async connection type
/// `$conn` with statements `$sql`; `$begin` begins a batch transaction on
/// `$c`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! async_checkpoint_connection {
    (@row $conn:expr, $statement:expr, $name:expr) => {{
        use diesel::OptionalExtension;
        let found = diesel_async::RunQueryDsl::get_result::<super::Row>(
            diesel::sql_query($statement).bind::<diesel::sql_types::Text, _>($name),
            $conn,
        )
        .await
        .optional()?;
        found.map(super::Row::into_checkpoint).transpose()
    }};
    ($conn:ty, $sql:expr, |$c:ident| $begin:block) => {
        impl AsyncCheckpointConnection for $conn {
            fn create_checkpoint_table(&mut self) -> BoxFuture<'_, QueryResult<()>> {
                use diesel_async::RunQueryDsl;
                Box::pin(async move {
                    diesel::sql_query($sql.create_table).execute(self).await?;
                    async fn has(c: &mut $conn) -> QueryResult<bool> {
                        use diesel_async::RunQueryDsl;
                        let found = diesel::sql_query($sql.has_fingerprint)
                            .get_result::<super::Count>(c)
                            .await?;
                        Ok(found.count > 0)
                    }
                    if has(self).await? {
                        return Ok(());
                    }
                    match diesel::sql_query($sql.add_fingerprint).execute(self).await {
                        Ok(_) => Ok(()),
                        // Another process added it meanwhile.
                        Err(_) if has(self).await? => Ok(()),
                        Err(e) => Err(e),
                    }
                })
            }

            fn read_checkpoint<'c>(
                &'c mut self,
                name: &'c str,
            ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>> {
                Box::pin(async move { async_checkpoint_connection!(@row self, $sql.read, name) })
            }

            fn start_checkpoint<'c>(
                &'c mut self,
                name: &'c str,
                key_type: &'c str,
            ) -> BoxFuture<'c, QueryResult<Checkpoint>> {
                use diesel_async::RunQueryDsl;
                Box::pin(async move {
                    // Read first: an existing row is returned without a write,
                    // so this never waits for a batch in progress.
                    if let Some(found) = self.read_checkpoint(name).await? {
                        return Ok(found);
                    }
                    diesel::sql_query($sql.insert)
                        .bind::<diesel::sql_types::Text, _>(name)
                        .bind::<diesel::sql_types::Text, _>(key_type)
                        .execute(self)
                        .await?;
                    self.read_checkpoint(name).await?.ok_or(DieselError::NotFound)
                })
            }

            fn claim_checkpoint<'c>(
                &'c mut self,
                name: &'c str,
                fingerprint: &'c str,
            ) -> BoxFuture<'c, QueryResult<Checkpoint>> {
                use diesel_async::RunQueryDsl;
                Box::pin(async move {
                    diesel::sql_query($sql.claim)
                        .bind::<diesel::sql_types::Text, _>(fingerprint)
                        .bind::<diesel::sql_types::Text, _>(name)
                        .execute(self)
                        .await?;
                    self.read_checkpoint(name).await?.ok_or(DieselError::NotFound)
                })
            }

            fn lock_checkpoint<'c>(
                &'c mut self,
                name: &'c str,
            ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>> {
                Box::pin(async move { async_checkpoint_connection!(@row self, $sql.lock, name) })
            }

            fn advance_checkpoint<'c>(
                &'c mut self,
                name: &'c str,
                last_key: Option<&'c str>,
                rows: u64,
                batches: u64,
                done: bool,
            ) -> BoxFuture<'c, QueryResult<()>> {
                use diesel::sql_types::{BigInt, Bool, Nullable, Text};
                use diesel_async::RunQueryDsl;
                Box::pin(async move {
                    let updated = diesel::sql_query($sql.advance)
                        .bind::<Nullable<Text>, _>(last_key)
                        .bind::<BigInt, _>(super::bigint(rows, "rows")?)
                        .bind::<BigInt, _>(super::bigint(batches, "batches")?)
                        .bind::<Bool, _>(done)
                        .bind::<Text, _>(name)
                        .execute(self)
                        .await?;
                    if updated == 0 {
                        return Err(DieselError::NotFound);
                    }
                    Ok(())
                })
            }

            fn delete_checkpoint<'c>(&'c mut self, name: &'c str) -> BoxFuture<'c, QueryResult<bool>> {
                use diesel_async::RunQueryDsl;
                Box::pin(async move {
                    let n = diesel::sql_query($sql.delete)
                        .bind::<diesel::sql_types::Text, _>(name)
                        .execute(self)
                        .await?;
                    Ok(n > 0)
                })
            }

            fn begin_batch(&mut self) -> BoxFuture<'_, QueryResult<()>> {
                let $c = self;
                Box::pin(async move {
                    outside_transaction($c)?;
                    $begin
                })
            }
        }
    };
}

#[cfg(feature = "postgres")]
async_checkpoint_connection!(diesel_async::AsyncPgConnection, super::POSTGRES, |conn| {
    // As the blocking connection's `build_transaction().run(..)`.
    diesel_async::AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN TRANSACTION").await
});

#[cfg(feature = "mysql")]
async_checkpoint_connection!(diesel_async::AsyncMysqlConnection, super::MYSQL, |conn| {
    // As the blocking connection's: `READ COMMITTED` for that transaction
    // only, with its BEGIN in one round trip.
    diesel_async::AnsiTransactionManager::begin_transaction_sql(conn, super::MYSQL_BEGIN).await
});

/// SQLite in diesel-async's wrapper: the blocking statements, on the
/// wrapper's blocking thread.
#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::checkpoint::CheckpointConnection;
    use diesel::SqliteConnection;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

    type Wrapped = SyncConnectionWrapper<SqliteConnection>;

    impl AsyncCheckpointConnection for Wrapped {
        fn create_checkpoint_table(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            self.spawn_blocking(|c| c.create_checkpoint_table())
        }

        fn read_checkpoint<'c>(
            &'c mut self,
            name: &'c str,
        ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>> {
            let name = name.to_owned();
            self.spawn_blocking(move |c| c.read_checkpoint(&name))
        }

        fn start_checkpoint<'c>(
            &'c mut self,
            name: &'c str,
            key_type: &'c str,
        ) -> BoxFuture<'c, QueryResult<Checkpoint>> {
            let (name, key_type) = (name.to_owned(), key_type.to_owned());
            self.spawn_blocking(move |c| c.start_checkpoint(&name, &key_type))
        }

        fn claim_checkpoint<'c>(
            &'c mut self,
            name: &'c str,
            fingerprint: &'c str,
        ) -> BoxFuture<'c, QueryResult<Checkpoint>> {
            let (name, fingerprint) = (name.to_owned(), fingerprint.to_owned());
            self.spawn_blocking(move |c| c.claim_checkpoint(&name, &fingerprint))
        }

        fn lock_checkpoint<'c>(
            &'c mut self,
            name: &'c str,
        ) -> BoxFuture<'c, QueryResult<Option<Checkpoint>>> {
            let name = name.to_owned();
            self.spawn_blocking(move |c| c.lock_checkpoint(&name))
        }

        fn advance_checkpoint<'c>(
            &'c mut self,
            name: &'c str,
            last_key: Option<&'c str>,
            rows: u64,
            batches: u64,
            done: bool,
        ) -> BoxFuture<'c, QueryResult<()>> {
            let (name, last_key) = (name.to_owned(), last_key.map(str::to_owned));
            self.spawn_blocking(move |c| {
                c.advance_checkpoint(&name, last_key.as_deref(), rows, batches, done)
            })
        }

        fn delete_checkpoint<'c>(&'c mut self, name: &'c str) -> BoxFuture<'c, QueryResult<bool>> {
            let name = name.to_owned();
            self.spawn_blocking(move |c| c.delete_checkpoint(&name))
        }

        fn begin_batch(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            Box::pin(async move {
                outside_transaction(self)?;
                // BEGIN IMMEDIATE takes the write lock now, as the blocking
                // connection's batch does.
                self.spawn_blocking(|c| {
                    diesel::connection::AnsiTransactionManager::begin_transaction_sql(
                        c,
                        "BEGIN IMMEDIATE",
                    )
                })
                .await
            })
        }
    }
}
