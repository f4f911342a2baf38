//! Where a scan gets its connection for each batch: a connection you lend it
//! (`&mut conn`), or (feature `r2d2`) a pool it checks a connection out of for
//! one batch at a time.

use diesel::Connection;

/// The failure of one attempt to run a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// The query failed.
    #[error("{0}")]
    Query(diesel::result::Error),
    /// No connection could be had.
    #[cfg(feature = "r2d2")]
    #[error("no connection from the pool: {0}")]
    Pool(r2d2::Error),
}

/// A source of connections for a scan.
///
/// Implemented for `&mut C` (every batch runs on that connection; no retry, since
/// a broken connection you lent stays broken) and, with the `r2d2` feature, for
/// `&r2d2::Pool<ConnectionManager<C>>`.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = doc_connection();
/// // `&mut conn` is a ConnectionSource
/// let n = posts::table.chunked_by(posts::id).load_iter::<Post>(&mut conn).count();
/// assert_eq!(n, 5);
/// # Ok(()) }
/// ```
pub trait ConnectionSource {
    /// The connection type.
    type Connection: Connection;

    /// How often a failed batch is retried unless `max_retries` says otherwise.
    const DEFAULT_MAX_RETRIES: u32;

    /// Runs `f` on a connection: one attempt at one batch.
    ///
    /// A pool checks a connection out, runs `f`, and returns the connection before
    /// this returns (or discards it if `f` failed because the connection broke).
    fn run<R, F>(&mut self, f: F) -> Result<R, AttemptError>
    where
        F: FnOnce(&mut Self::Connection) -> diesel::QueryResult<R>;
}

impl<C: Connection> ConnectionSource for &mut C {
    type Connection = C;
    const DEFAULT_MAX_RETRIES: u32 = 0;

    fn run<R, F>(&mut self, f: F) -> Result<R, AttemptError>
    where
        F: FnOnce(&mut C) -> diesel::QueryResult<R>,
    {
        f(self).map_err(AttemptError::Query)
    }
}

/// Whether retrying an attempt on a fresh connection can succeed: the
/// connection broke or none could be had. Errors of the query itself (syntax,
/// missing table, type mismatch, constraint) are not transient.
pub(crate) fn is_transient(e: &AttemptError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as E};
    match e {
        AttemptError::Query(E::DatabaseError(DatabaseErrorKind::ClosedConnection, info)) => {
            let _ = info;
            true
        }
        // The server went away mid-query: libpq and libmysqlclient report these as
        // unknown database errors with a recognisable message.
        AttemptError::Query(E::DatabaseError(DatabaseErrorKind::Unknown, info)) => {
            let m = info.message().to_ascii_lowercase();
            [
                "server closed the connection",
                "terminating connection",
                "connection to server",
                "no connection to the server",
                "lost connection",
                "server has gone away",
                "connection was killed",
                "broken pipe",
                "could not send data",
                "could not receive data",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        AttemptError::Query(_) => false,
        #[cfg(feature = "r2d2")]
        AttemptError::Pool(_) => true,
    }
}

/// How long to wait before attempt `attempt + 1` of a batch.
pub(crate) fn retry_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(20u64 << attempt.min(6))
}

#[cfg(feature = "r2d2")]
mod pool {
    use diesel::connection::TransactionManager;
    use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};

    use super::{is_transient, AttemptError, ConnectionSource};

    /// A pool lends one connection per batch: it is checked out when the batch
    /// starts and back in the pool before the batch is handed to you, so a scan
    /// holds no connection between batches (a pool of `max_size(1)` is free in
    /// the loop body).
    ///
    /// A batch that failed because its connection broke is retried on another
    /// connection, and the broken one is never returned to the pool: its
    /// transaction manager is marked as failed, which r2d2's `has_broken` check
    /// sees when the connection comes back, whatever `test_on_check_out` says.
    /// (MariaDB connections killed by the server are not always marked broken by
    /// Diesel itself.)
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let path = std::env::temp_dir().join(format!("doc-pool-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let pool = Pool::builder().max_size(1).build(ConnectionManager::<SqliteConnection>::new(&url))?;
    /// for post in posts::table.chunked_by(posts::id).batch_size(2).load_iter::<Post>(&pool) {
    ///     let post = post?;
    ///     // the scan holds no connection here: the only one is free
    ///     let _conn = pool.get()?;
    /// }
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    impl<C> ConnectionSource for &Pool<ConnectionManager<C>>
    where
        C: R2D2Connection + Send + 'static,
    {
        type Connection = C;
        const DEFAULT_MAX_RETRIES: u32 = 3;

        fn run<R, F>(&mut self, f: F) -> Result<R, AttemptError>
        where
            F: FnOnce(&mut C) -> diesel::QueryResult<R>,
        {
            let mut conn = self.get().map_err(AttemptError::Pool)?;
            match f(&mut conn) {
                Ok(r) => Ok(r),
                Err(e) => {
                    let e = AttemptError::Query(e);
                    if is_transient(&e) {
                        // never hand a broken connection to the next attempt
                        <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
                            &mut conn,
                        )
                        .set_in_error();
                    }
                    Err(e)
                }
            }
        }
    }
}
