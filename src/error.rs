//! The crate's error type.

use std::fmt;

/// Everything a chunked scan can fail with.
///
/// Database errors are wrapped, never flattened into strings, so
/// `matches!(err, Error::Database { source: diesel::result::Error::NotFound, .. })`
/// style checks keep working.
///
/// ```
/// use diesel_chunked_iterator::Error;
///
/// let err = Error::InvalidBatchSize { batch_size: 0 };
/// assert_eq!(err.to_string(), "batch_size must be at least 1 (got 0)");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `batch_size(0)` (or a size that does not fit in SQL's `LIMIT`).
    #[error("batch_size must be at least 1 (got {batch_size})")]
    InvalidBatchSize {
        /// The size that was asked for.
        batch_size: u64,
    },

    /// The query already has a clause the scan must own. Only possible for a
    /// query boxed with `into_boxed()`: for any other query this is a compile error.
    #[error(
        "the query already has {clause}: a chunked scan sets its own ORDER BY and LIMIT \
         and never uses OFFSET; remove it ({hint})"
    )]
    QueryHasClause {
        /// `"ORDER BY"`, `"LIMIT"` or `"OFFSET"`.
        clause: &'static str,
        /// What to use instead.
        hint: &'static str,
    },

    /// The query's `WHERE` clause has an `OR` outside parentheses, as a raw SQL
    /// filter such as `sql::<Bool>("a OR b")` renders. The scan appends
    /// `AND <key> > $last` to the clause, which would bound only the last operand
    /// of the `OR`: rows beyond the bounds, and scans that never end. Refused
    /// before any query runs.
    #[error(
        "the query's WHERE clause has an {operator} outside parentheses ({condition}): \
         the scan appends `AND <key> > $last` to it, which would apply to the last operand \
         of the {operator} only; wrap the raw SQL in parentheses (`sql(\"(a OR b)\")`) \
         or use Diesel's `.or(..)` / `.or_filter(..)`, which group"
    )]
    UngroupedOr {
        /// `"OR"`, or MySQL's `"XOR"`.
        operator: &'static str,
        /// The `WHERE` clause as rendered (placeholders, no values).
        condition: String,
    },

    /// Two rows of one batch had the same key. A keyset scan over a key that is not
    /// unique skips rows at batch boundaries, so the scan stops instead.
    #[error(
        "key {columns} is not unique: two rows in batch {batch} share the value {value}; \
         add a tiebreaker column, e.g. chunked_by(({columns}, id))"
    )]
    DuplicateKey {
        /// The key column(s), as `table.column`.
        columns: String,
        /// The repeated value, `Debug`-formatted.
        value: String,
        /// The 1-based batch number.
        batch: u64,
    },

    /// A batch ended at the key it started after: the key closure given to a
    /// `*_keyed` terminal does not return the key column's value.
    #[error(
        "no progress: batch {batch} ended at the key it started after ({value}); \
         the key closure must return the value of the key column {columns}"
    )]
    NoProgress {
        /// The key column(s).
        columns: String,
        /// The key the batch started after.
        value: String,
        /// The 1-based batch number.
        batch: u64,
    },

    /// The keys of a batch do not follow the scan's order: the key closure given
    /// to a `*_keyed` terminal does not return the key column's value, and the
    /// scan would repeat or skip rows.
    #[error(
        "keys out of order in batch {batch}: {next} came after {previous}; \
         the key closure must return the value of the key column {columns}"
    )]
    KeyOutOfOrder {
        /// The key column(s).
        columns: String,
        /// The earlier key (the start key, or a row's key), `Debug`-formatted.
        previous: String,
        /// The key that came after it.
        next: String,
        /// The 1-based batch number.
        batch: u64,
    },

    /// No primary key or unique index makes the key unique
    /// (from [`Chunked::verify_unique`](crate::Chunked::verify_unique)).
    #[error(
        "no primary key or unique index of table {table} is made of key columns only \
         ({columns}); rows sharing a key value would be skipped at batch boundaries: \
         add a unique tiebreaker column to the key, e.g. ({columns}, id)"
    )]
    NotUnique {
        /// The table.
        table: String,
        /// The key column(s).
        columns: String,
    },

    /// `partitions(n)` with `n` of 0 or above
    /// [`MAX_PARTITIONS`](crate::plan::MAX_PARTITIONS).
    #[error("partitions(n) needs n between 1 and {max} (got {n})", max = crate::plan::MAX_PARTITIONS)]
    InvalidPartitionCount {
        /// The count that was asked for.
        n: usize,
    },

    /// A database error, with where in the scan it happened.
    #[error("batch {batch} failed{}{}: {source}", DisplayAfter(.last_key), DisplayAttempts(*.attempts))]
    Database {
        /// The 1-based batch number.
        batch: u64,
        /// The key the batch started after (`Debug`-formatted), if any.
        last_key: Option<String>,
        /// How many times the batch was tried.
        attempts: u32,
        /// Diesel's error.
        #[source]
        source: diesel::result::Error,
    },

    /// A connection could not be had from a pool.
    #[cfg(feature = "r2d2")]
    #[error("batch {batch}: no connection from the pool after {attempts} attempt(s): {source}")]
    Pool {
        /// The 1-based batch number.
        batch: u64,
        /// How many times a connection was asked for.
        attempts: u32,
        /// r2d2's error.
        #[source]
        source: r2d2::Error,
    },

    /// A metadata query (such as the unique-index check) failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done.
        context: &'static str,
        /// Diesel's error.
        #[source]
        source: diesel::result::Error,
    },
}

struct DisplayAfter<'a>(&'a Option<String>);
impl fmt::Display for DisplayAfter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " (after key {k})"),
            None => Ok(()),
        }
    }
}

struct DisplayAttempts(u32);
impl fmt::Display for DisplayAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 1 {
            write!(f, " after {} attempts", self.0)
        } else {
            Ok(())
        }
    }
}

impl Error {
    /// The Diesel error inside, if this is a database error.
    pub fn as_diesel(&self) -> Option<&diesel::result::Error> {
        match self {
            Error::Database { source, .. } | Error::Query { source, .. } => Some(source),
            _ => None,
        }
    }
}
