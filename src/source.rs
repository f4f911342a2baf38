//! Where a scan gets its connection for each batch: a connection you lend it
//! (`&mut conn`), or (feature `r2d2`) a pool it checks a connection out of for
//! one batch at a time. Also the retry rule: which failures are worth another
//! attempt (`is_transient`) and how long to wait before it (`retry_delay`).

use std::time::Duration;

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
    /// No connection could be had from an async pool (deadpool, bb8).
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    #[error("no connection from the pool: {0}")]
    AsyncPool(Box<dyn std::error::Error + Send + Sync>),
}

/// The job of a blocking source ([`ConnectionSource`]): a write verb returns
/// its report. Which kind of job a verb runs is inferred from the source's
/// type: one `update_all` for `&mut PgConnection` and `&mut
/// AsyncPgConnection` alike.
#[derive(Debug)]
pub struct Blocking;

/// The job of an async source (`AsyncConnectionSource`, feature `async`): a
/// write verb returns a future of its report, which lives as long as `'f`.
#[cfg(feature = "async")]
#[derive(Debug)]
pub struct NonBlocking<'f>(std::marker::PhantomData<&'f ()>);

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
    /// `retry` is false for a batch's first attempt and true for every later one.
    /// A pool checks a connection out, runs `f`, and returns the connection before
    /// this returns (or discards it if `f` failed because the connection broke).
    /// On a retry it first checks that the connection is alive, and replaces a
    /// dead one without running `f` on it.
    fn run<R, F>(&mut self, retry: bool, f: F) -> Result<R, AttemptError>
    where
        F: FnOnce(&mut Self::Connection) -> diesel::QueryResult<R>;
}

impl<C: Connection> ConnectionSource for &mut C {
    type Connection = C;
    const DEFAULT_MAX_RETRIES: u32 = 0;

    fn run<R, F>(&mut self, _retry: bool, f: F) -> Result<R, AttemptError>
    where
        F: FnOnce(&mut C) -> diesel::QueryResult<R>,
    {
        f(self).map_err(AttemptError::Query)
    }
}

/// Whether retrying an attempt can succeed: the connection broke, none could be
/// had, or the database was busy (SQLite's `database is locked`). Errors of the
/// query itself (syntax, missing table, type mismatch, constraint) are not
/// transient.
pub(crate) fn is_transient(e: &AttemptError) -> bool {
    match e {
        AttemptError::Query(e) => connection_lost(e) || database_busy(e),
        #[cfg(feature = "r2d2")]
        AttemptError::Pool(_) => true,
        #[cfg(any(feature = "deadpool", feature = "bb8"))]
        AttemptError::AsyncPool(_) => true,
    }
}

/// Whether the connection the error came from is broken: closed, terminated by
/// the server, or unable to send or receive.
pub(crate) fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as E};
    match e {
        E::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        // A batch's COMMIT failed on a broken connection, and so did the rollback.
        E::RollbackErrorOnCommit { commit_error, .. } => connection_lost(commit_error),
        // diesel-async's MySQL connection (mysql_async) after the server killed it.
        E::DatabaseError(DatabaseErrorKind::Unknown, info)
            if mysql_async_connection_lost(info.message()) =>
        {
            true
        }
        // The server went away mid-query: libpq and libmysqlclient report these as
        // unknown database errors with a recognisable message.
        E::DatabaseError(DatabaseErrorKind::Unknown, info) => message_has(
            info.message(),
            &[
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
                "connection has been closed unexpectedly",
            ],
        ),
        _ => false,
    }
}

/// Whether an error of a `for_each_batch` closure is, or is caused by (through
/// [`source`](std::error::Error::source)), a Diesel error of a broken
/// connection: the batch's transaction did not commit, so another attempt on
/// another connection cannot write twice.
pub(crate) fn user_error_connection_lost(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<diesel::result::Error>()
            .is_some_and(connection_lost)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `message` is how diesel-async's MySQL connection (mysql_async)
/// reports a dead connection, as an unknown database error: any of the
/// driver's I/O errors (the socket failed: only the driver's own prefix
/// counts, not a server message that mentions an I/O error, such as a disk
/// failure, which leaves the connection working), or a statement sent on a
/// connection the driver knows is closed, or a reply cut short.
fn mysql_async_connection_lost(message: &str) -> bool {
    const IO: &str = "input/output error:";
    message
        .get(..IO.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(IO))
        || message_has(
            message,
            &[
                "connection closed",
                "connection to the server is closed",
                "bytes remaining on stream",
                "connection reset",
                "packet out of order",
            ],
        )
}

/// Whether SQLite refused the statement because another connection holds a lock
/// (`SQLITE_BUSY`, `SQLITE_LOCKED`). The connection itself is fine.
fn database_busy(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as E};
    match e {
        E::DatabaseError(DatabaseErrorKind::Unknown, info) => message_has(
            info.message(),
            &[
                "database is locked",
                "database table is locked",
                "database schema is locked",
            ],
        ),
        _ => false,
    }
}

fn message_has(message: &str, needles: &[&str]) -> bool {
    let m = message.to_ascii_lowercase();
    needles.iter().any(|needle| m.contains(needle))
}

/// The first back-off, after a batch's first failed attempt.
pub(crate) const RETRY_DELAY_FIRST: Duration = Duration::from_millis(5);
/// The longest back-off between two attempts.
pub(crate) const RETRY_DELAY_MAX: Duration = Duration::from_millis(100);

/// How long to wait after failed attempt number `attempt` (1-based) of a batch
/// before the next one.
///
/// The ceiling doubles from [`RETRY_DELAY_FIRST`] and stops at
/// [`RETRY_DELAY_MAX`]: 5, 10, 20, 40, 80, then 100 ms. The wait is drawn between
/// half the ceiling and the ceiling, so that retries do not fall in step with a
/// failure that repeats at a fixed period. Short on purpose: a retry must be
/// able to land between two failures, and waiting for a server that is down is
/// the pool's check-out timeout's job, not the back-off's.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let ceiling = RETRY_DELAY_FIRST
        .saturating_mul(1 << doublings)
        .min(RETRY_DELAY_MAX);
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    let half = ceiling_us / 2;
    Duration::from_micros(half + jitter() % (ceiling_us - half + 1))
}

/// A cheap pseudo-random number: std's per-thread random hash keys, which change
/// with every `RandomState`.
fn jitter() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(feature = "r2d2")]
mod pool {
    use diesel::connection::TransactionManager;
    use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, R2D2Connection};

    use super::{connection_lost, AttemptError, ConnectionSource};

    /// A pool lends one connection per batch: it is checked out when the batch
    /// starts and back in the pool before the batch is handed to you, so a scan
    /// holds no connection between batches (a pool of `max_size(1)` is free in
    /// the loop body).
    ///
    /// A batch that failed because its connection broke is retried on another
    /// connection (except a write job's batch whose `COMMIT` was sent: see
    /// [`Error::CommitUnknown`](crate::Error::CommitUnknown)), and the broken
    /// one is never returned to the pool: its
    /// transaction manager is marked as failed, which r2d2's `has_broken` check
    /// sees when the connection comes back, whatever `test_on_check_out` says.
    /// (MariaDB connections killed by the server are not always marked broken by
    /// Diesel itself.)
    ///
    /// A retry pings the connection it is given before running the batch: idle
    /// connections may have died too (a server restart, connections killed by
    /// an administrator), and `test_on_check_out(false)` hands them out as they
    /// are. A dead one is discarded the same way and another is checked out,
    /// up to the pool's `max_size` + 1 times; these checks are not attempts.
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

        fn run<R, F>(&mut self, retry: bool, f: F) -> Result<R, AttemptError>
        where
            F: FnOnce(&mut C) -> diesel::QueryResult<R>,
        {
            let mut conn = if retry {
                live_connection(self)?
            } else {
                self.get().map_err(AttemptError::Pool)?
            };
            f(&mut conn).map_err(|e| {
                if connection_lost(&e) {
                    // never hand a broken connection to the next attempt
                    mark_broken::<C>(&mut conn);
                }
                AttemptError::Query(e)
            })
        }
    }

    /// A pool by value (a clone: r2d2 pools share their connections) is the
    /// same source as `&pool`, and one a scan can take to a thread of its own
    /// ([`LoadIter::on_thread`](crate::LoadIter::on_thread)).
    impl<C> ConnectionSource for Pool<ConnectionManager<C>>
    where
        C: R2D2Connection + Send + 'static,
    {
        type Connection = C;
        const DEFAULT_MAX_RETRIES: u32 = 3;

        fn run<R, F>(&mut self, retry: bool, f: F) -> Result<R, AttemptError>
        where
            F: FnOnce(&mut C) -> diesel::QueryResult<R>,
        {
            let mut pool: &Self = self;
            pool.run(retry, f)
        }
    }

    /// Makes r2d2 discard the connection when it comes back to the pool.
    fn mark_broken<C: R2D2Connection>(conn: &mut C) {
        <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
            .set_in_error();
    }

    /// A connection of the pool that answers a ping. Dead ones are discarded;
    /// after `max_size` + 1 dead ones in a row, the last ping's error is the
    /// attempt's error, so this never loops for ever.
    fn live_connection<C>(
        pool: &Pool<ConnectionManager<C>>,
    ) -> Result<PooledConnection<ConnectionManager<C>>, AttemptError>
    where
        C: R2D2Connection + Send + 'static,
    {
        let mut checks_left = pool.max_size().saturating_add(1);
        loop {
            let mut conn = pool.get().map_err(AttemptError::Pool)?;
            match R2D2Connection::ping(&mut *conn) {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    mark_broken::<C>(&mut conn);
                    checks_left -= 1;
                    if checks_left == 0 {
                        return Err(AttemptError::Query(e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_its_cap_with_jitter() {
        let ceilings = [5, 10, 20, 40, 80, 100, 100, 100];
        for (i, ms) in ceilings.into_iter().enumerate() {
            let ceiling = Duration::from_millis(ms);
            for _ in 0..50 {
                let d = retry_delay(i as u32 + 1);
                assert!(d <= ceiling && d >= ceiling / 2, "attempt {}: {d:?}", i + 1);
            }
        }
        assert!(retry_delay(u32::MAX) <= RETRY_DELAY_MAX);
        assert!(retry_delay(0) <= RETRY_DELAY_FIRST);
        let draws: std::collections::HashSet<_> = (0..20).map(|_| retry_delay(6)).collect();
        assert!(draws.len() > 1, "the back-off must vary");
    }

    /// What diesel-async's MySQL connection returns when the server killed it,
    /// mid-statement or between two, verbatim.
    #[test]
    fn mysql_async_lost_connections_are_transient() {
        use diesel::result::{DatabaseErrorKind, Error as E};
        let unknown =
            |m: &str| E::DatabaseError(DatabaseErrorKind::Unknown, Box::new(m.to_string()));
        for m in [
            "Input/output error: Input/output error: connection closed",
            "Input/output error: Input/output error: Driver error: `Connection to the server is closed.'",
            "Input/output error: Input/output error: Broken pipe (os error 32)",
            "Input/output error: bytes remaining on stream",
            "Input/output error: Connection reset by peer (os error 104)",
            "Driver error: `Connection to the server is closed.'",
            "Driver error: `Packet out of order.'",
        ] {
            assert!(connection_lost(&unknown(m)), "{m}");
            assert!(is_transient(&AttemptError::Query(unknown(m))), "{m}");
        }
        for m in [
            "Table 'test.posts' doesn't exist",
            "could not read block 0 in file \"base/1/2\": Input/output error",
            "disk I/O error",
        ] {
            assert!(!connection_lost(&unknown(m)), "{m}");
        }
    }

    #[test]
    fn sqlite_busy_is_transient_and_keeps_the_connection() {
        use diesel::result::{DatabaseErrorKind, Error as E};
        let busy = |m: &str| E::DatabaseError(DatabaseErrorKind::Unknown, Box::new(m.to_string()));
        for m in ["database is locked", "database table is locked: posts"] {
            assert!(is_transient(&AttemptError::Query(busy(m))), "{m}");
            assert!(!connection_lost(&busy(m)), "{m}");
        }
        let syntax = busy("near \"SELEC\": syntax error");
        assert!(!is_transient(&AttemptError::Query(syntax)));
    }
}
