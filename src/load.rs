//! How the rows of one batch come from the connection: which of Diesel's
//! loading modes a scan uses on each connection type ([`BatchLoading`]), and
//! the batch load itself ([`LoadBatch`]).
//!
//! On PostgreSQL a batch is read with Diesel's [`PgRowByRowLoadingMode`]
//! (libpq's single-row mode): each row is decoded as soon as it arrives, while
//! the server is still sending the rest of the batch, instead of after the
//! whole result has been received. The statement, its bind values and the
//! number of queries are the same as with the default mode. SQLite steps its
//! statement row by row in either mode, and MySQL/MariaDB has only the default
//! mode, so both keep [`DefaultLoadingMode`].
//!
//! [`PgRowByRowLoadingMode`]: https://docs.rs/diesel/2.3/diesel/pg/struct.PgRowByRowLoadingMode.html

#[cfg(any(feature = "sqlite", feature = "mysql"))]
use diesel::connection::DefaultLoadingMode;
use diesel::query_dsl::LoadQuery;
use diesel::{QueryResult, RunQueryDsl};

use crate::key::Key;
use crate::query::{Batch, SeekQuery};

/// Connections a scan can load batches from, with the Diesel loading mode it
/// loads them in.
///
/// Implemented for Diesel's `SqliteConnection`, `MysqlConnection`
/// ([`DefaultLoadingMode`]) and `PgConnection` (`PgRowByRowLoadingMode`), each
/// with its backend's feature. A connection type of your own (a wrapper around
/// one of these, say) implements it to be scanned: `type Mode =
/// DefaultLoadingMode;` works with any connection that Diesel can `load` from.
pub trait BatchLoading {
    /// The loading mode passed to `RunQueryDsl::load_iter` for each batch.
    type Mode;
}

#[cfg(feature = "sqlite")]
impl BatchLoading for diesel::SqliteConnection {
    type Mode = DefaultLoadingMode;
}

#[cfg(feature = "mysql")]
impl BatchLoading for diesel::MysqlConnection {
    type Mode = DefaultLoadingMode;
}

#[cfg(feature = "postgres")]
impl BatchLoading for diesel::PgConnection {
    type Mode = diesel::pg::PgRowByRowLoadingMode;
}

/// The most rows a batch's `Vec` is allocated for before its first row: a
/// batch of up to this many rows is collected with no reallocation. Larger
/// batches grow from there as rows arrive.
const PREALLOCATED_ROWS: usize = 1 << 16;

/// Runs one batch of a prepared query on `Conn`, loading `U`s.
pub trait LoadBatch<Conn, U> {
    /// Loads at most `limit` rows after the current bound.
    fn load_batch(&self, conn: &mut Conn, limit: i64) -> QueryResult<Vec<U>>;
}

impl<B, K, Conn, U> LoadBatch<Conn, U> for SeekQuery<B, K>
where
    K: Key,
    Conn: BatchLoading,
    for<'q> Batch<'q, B, K>: LoadQuery<'q, Conn, U, Conn::Mode>,
{
    fn load_batch(&self, conn: &mut Conn, limit: i64) -> QueryResult<Vec<U>> {
        let rows = self.batch(limit).load_iter::<U, Conn::Mode>(conn)?;
        let mut loaded =
            Vec::with_capacity(usize::try_from(limit).map_or(0, |n| n.min(PREALLOCATED_ROWS)));
        for row in rows {
            loaded.push(row?);
        }
        Ok(loaded)
    }
}
