//! Where a scan gets its connection for each batch: a connection you lend it
//! (`&mut conn`), or (feature `r2d2`) a pool it checks a connection out of for
//! one batch at a time.

use diesel::Connection;

/// The failure of one attempt to run a batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttemptError {
    /// The query failed.
    Query(diesel::result::Error),
    /// No connection could be had.
    #[cfg(feature = "r2d2")]
    Pool(r2d2::Error),
}

/// A source of connections for a scan.
///
/// Implemented for `&mut C` (every batch runs on that connection; no retry, since
/// a broken connection you lent stays broken) and, with the `r2d2` feature, for
/// `&r2d2::Pool<ConnectionManager<C>>`.
///
/// ```
/// # include!("../tests/doc_setup.rs");
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
        AttemptError::Query(E::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => true,
        AttemptError::Query(_) => false,
        #[cfg(feature = "r2d2")]
        AttemptError::Pool(_) => true,
    }
}
