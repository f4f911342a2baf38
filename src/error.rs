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
/// assert!(err.to_string().starts_with("batch_size must be between 1 and "));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `batch_size(0)`, or a size too large for SQL's `LIMIT` (above
    /// `i64::MAX`).
    #[error(
        "batch_size must be between 1 and {max} (got {batch_size}); \
         use limit_total(n) to cap the rows of the whole scan",
        max = crate::engine::MAX_BATCH_SIZE
    )]
    InvalidBatchSize {
        /// The size that was asked for.
        batch_size: u64,
    },

    /// `prefetch(n)` with `n` above the most batches a scan reads ahead.
    #[error(
        "prefetch must be at most {max} batches, not {prefetch}: each batch read ahead is \
         held in memory; a larger batch_size reads more rows ahead",
        max = crate::engine::MAX_PREFETCH
    )]
    InvalidPrefetch {
        /// The number of batches that was asked for.
        prefetch: usize,
    },

    /// The thread of a scan moved to one of its own
    /// ([`LoadIter::on_thread`](crate::LoadIter::on_thread)) could not be
    /// started, or ended without a result.
    #[error("the scan's thread could not be started or ended without a result")]
    Thread,

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

    /// Two rows of the query had the same key: in one batch, or the last row of a
    /// batch and the first of the next. A keyset scan over a key that is not
    /// unique skips rows at batch boundaries, so the scan stops instead.
    #[error(
        "key {columns} is not unique over the query: two rows in or right after batch {batch} \
         share the value {value}; {}",
        DuplicateHint(columns)
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

    /// The database returned a row whose key does not follow the previous one in
    /// the scan's order: its `ORDER BY` and its comparison operators disagree
    /// for this key (a collation or column type the crate cannot scan), and the
    /// scan would repeat or skip rows.
    #[error(
        "the database returned key {next} after {previous} in batch {batch}, out of the order \
         of {columns}: its ORDER BY and its comparison disagree for this key, so a keyset scan \
         would repeat or skip rows; scan by a key the database orders consistently, such as \
         an integer primary key"
    )]
    InconsistentOrder {
        /// The key column(s).
        columns: String,
        /// The earlier key (the start key, or a row's key), `Debug`-formatted.
        previous: String,
        /// The key that came after it.
        next: String,
        /// The 1-based batch number.
        batch: u64,
    },

    /// A bound given as a Rust value (`start_after`, `end_at`, `within`) met rows
    /// whose key the database stores in another form than Diesel binds the
    /// value in (SQLite: a timestamp written as `2026-01-01T12:00:07Z` or as a
    /// julian-day number), so the bound cannot be compared with them exactly.
    #[error(
        "key {columns}: the database stores {value}, not in the form Diesel binds a Rust \
         value in, so a bound given as a Rust value (start_after, end_at, within) cannot be \
         compared with it exactly; resume from the scan's last_stored_key() or a checkpoint, \
         which keep the stored form, or rewrite the column in Diesel's format"
    )]
    StoredForm {
        /// The key column(s).
        columns: String,
        /// A key as stored, `Debug`-formatted.
        value: String,
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

    /// The key is not shown to be unique over the whole query (from
    /// [`Chunked::verify_unique`](crate::Chunked::verify_unique)): a joined table
    /// can match several rows for one row of the others, so key values repeat, or
    /// the query has a form the check cannot read. `reason` says which, and what
    /// to do.
    #[error("key {columns} is not unique over the query (table {table}): {reason}")]
    NotUniqueOverQuery {
        /// The table that repeats rows (`schema.table` when it has a schema), or
        /// the key's table when the query could not be read.
        table: String,
        /// The key column(s).
        columns: String,
        /// Why, and what to change.
        reason: String,
    },

    /// The database cannot order and compare the key's values consistently, so a
    /// keyset scan over it could skip or repeat rows (from
    /// [`Chunked::verify_unique`](crate::Chunked::verify_unique) and
    /// [`UniqueIndexes::key_column_problem`](crate::UniqueIndexes::key_column_problem)):
    /// on MySQL/MariaDB a `CHAR` key with a `NO PAD` collation, or a string key
    /// longer than `@@max_sort_length` bytes; on SQLite and PostgreSQL a text
    /// key unique only through an index in another collation than it is
    /// compared in.
    #[error("key {columns} cannot be scanned reliably: {reason}")]
    UnsupportedKey {
        /// The key column(s).
        columns: String,
        /// What is wrong with the column, and what to use instead.
        reason: String,
    },

    /// `update_all` sets a column of the scan's key. A row whose key the update
    /// moves ahead of the scan would be met again by a later batch and updated
    /// again (an `id = id + n` never ends), so the job is refused before any
    /// batch. Scan by a key the update leaves alone, or write the new key with
    /// [`for_each_batch`](crate::RunChunkedDsl::for_each_batch) into another column.
    #[error(
        "update_all sets the key column {column} of the scan by {columns}: rows it moves ahead \
         of the scan would be updated again in a later batch; scan by a key the update does \
         not change"
    )]
    KeyChanged {
        /// The key column the changes set.
        column: String,
        /// The key column(s).
        columns: String,
    },

    /// The backend would sort the remaining rows in every batch (an `ORDER BY`
    /// no index provides), so the scan would take time quadratic in the rows:
    /// returned by the first `next()` of such a scan, before any batch. Create
    /// the index `suggestion` names, or opt out with
    /// [`allow_sort`](crate::Chunked::allow_sort). See
    /// [`Chunked::explain`](crate::Chunked::explain).
    #[error(
        "the backend sorts the remaining rows in every batch of the scan by {columns} \
         (no index gives that order), which makes the scan quadratic; {suggestion}, \
         or call .allow_sort() to run it anyway. Plan: {plan}"
    )]
    SortsEveryBatch {
        /// The key column(s).
        columns: String,
        /// The plan as the backend reported it.
        plan: String,
        /// The index to create.
        suggestion: String,
    },

    /// `partitions(n)` with `n` of 0 or above
    /// [`MAX_PARTITIONS`](crate::plan::MAX_PARTITIONS).
    #[error("partitions(n) needs n between 1 and {max} (got {n})", max = crate::plan::MAX_PARTITIONS)]
    InvalidPartitionCount {
        /// The count that was asked for.
        n: usize,
    },

    /// [`partitions`](crate::Chunked::partitions) cannot give its slices the
    /// scan's bounds.
    #[error("cannot partition this scan: {reason}")]
    PartitionBounds {
        /// What is wrong, and what to do.
        reason: String,
    },

    /// [`partitions_sampled`](crate::Chunked::partitions_sampled) cannot
    /// sample this key or table on this backend; [`partitions`](crate::Chunked::partitions)
    /// can plan it.
    #[error("cannot sample the keys of {columns}: {reason}")]
    SamplingUnsupported {
        /// The key column(s), or the column whose table was to be sampled.
        columns: String,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// The closure of [`for_each_batch`](crate::RunChunkedDsl::for_each_batch)
    /// returned an error: that batch was rolled back, and the job stopped.
    /// `source` is the closure's error (downcast it to get it back). An error
    /// that is (or is caused by) a Diesel error of a broken connection is
    /// retried first, as any batch whose connection broke, while the source
    /// has retries left.
    #[error("batch {batch} failed and was rolled back{}: {source}", DisplayCommitted(.last_committed))]
    Batch {
        /// The 1-based batch number in this run.
        batch: u64,
        /// The last committed key (`Debug`-formatted): the job resumes after it.
        last_committed: Option<String>,
        /// The closure's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Another runner holds job `name`: its checkpoint row is locked by a batch
    /// in progress, or moved since this runner's last batch.
    #[error(
        "job {name:?} is being run by another process: its checkpoint is locked or moved on; \
         run one process per job name (split the work with partitions and one name per slice)"
    )]
    CheckpointBusy {
        /// The job's name.
        name: String,
    },

    /// Job `name` has a checkpoint made with another key, or by another query
    /// (see [what identifies a job](crate::checkpoint#what-identifies-a-job)):
    /// resuming from it would skip or repeat rows. Nothing was written.
    #[error(
        "job {name:?} has a checkpoint of key {stored}, not {expected}; use another job name, \
         or checkpoint::reset the job to start it over"
    )]
    CheckpointMismatch {
        /// The job's name.
        name: String,
        /// The key of the checkpoint.
        stored: String,
        /// The key of this run.
        expected: String,
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

    /// A connection could not be had from an async pool (deadpool, bb8).
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    #[error("batch {batch}: no connection from the pool after {attempts} attempt(s): {source}")]
    AsyncPool {
        /// The 1-based batch number.
        batch: u64,
        /// How many times a connection was asked for.
        attempts: u32,
        /// The pool's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

    /// A write job's batch sent its `COMMIT`, and the connection broke before
    /// the answer came back: the batch may have committed or not, and the job
    /// cannot tell which. It stops instead of running the batch again, which
    /// could write its rows twice.
    ///
    /// The batch covered the keys after `after` up to `last` (the rows from
    /// `first` to `last`). Check whether they were written, then resume the job
    /// with `start_after(last)` if they were, `start_after(after)` if not. With
    /// [`checkpoint(name)`](crate::Chunked::checkpoint) a job is exact across
    /// lost answers: on a pool it reads its checkpoint row on the retry and
    /// goes on by itself; a job run on one connection (which is never retried)
    /// stops with this error and, run again, resumes right after the last
    /// batch its checkpoint says committed.
    ///
    /// ```
    /// use diesel_chunked_iterator::Error;
    ///
    /// // What a job without a checkpoint returns when batch 3's answer is lost.
    /// let err = Error::CommitUnknown {
    ///     batch: 3,
    ///     after: Some("20".into()),
    ///     first: "21".into(),
    ///     last: "30".into(),
    ///     checkpoint: None,
    ///     source: Box::new(diesel::result::Error::BrokenTransactionManager),
    /// };
    /// assert!(err.to_string().starts_with("batch 3 may have committed"));
    /// if let Error::CommitUnknown { after, last, .. } = &err {
    ///     // Rows 21 to 30 written? Resume after 30; if not, after 20.
    ///     assert_eq!((after.as_deref(), last.as_str()), (Some("20"), "30"));
    /// }
    /// ```
    #[error(
        "batch {batch} may have committed: its COMMIT was sent but the connection broke before \
         the answer came back, so it was not run again (that could write its rows twice); it \
         wrote the keys {first} to {last}{}; {}; the COMMIT failed with: {source}",
        DisplayAfterStart(.after),
        DisplayCommitAdvice(.after, .last, .checkpoint)
    )]
    CommitUnknown {
        /// The 1-based batch number in this run.
        batch: u64,
        /// The key the batch started after (`Debug`-formatted), `None` for a
        /// batch from the start of the scan: where to resume if the batch did
        /// not commit.
        after: Option<String>,
        /// The batch's first key (`Debug`-formatted).
        first: String,
        /// The batch's last key (`Debug`-formatted): where to resume if the
        /// batch committed.
        last: String,
        /// The job's checkpoint name, if it has one.
        checkpoint: Option<String>,
        /// The error the `COMMIT` failed with (boxed: the variant stays small).
        #[source]
        source: Box<diesel::result::Error>,
    },

    /// `update_all` scans by a key that every `UPDATE` can change whatever its
    /// `SET` list says: a generated key column (or, on MySQL/MariaDB, one with
    /// `ON UPDATE CURRENT_TIMESTAMP`). Rows it moves ahead of the scan would be
    /// updated again in a later batch, so the job is refused in its first
    /// batch, before it writes anything.
    #[error("update_all cannot scan by {columns}: {reason}")]
    KeyMayMove {
        /// The key column(s).
        columns: String,
        /// Which column, why, and what to scan by instead.
        reason: String,
    },

    /// A batch of `update_all` moved rows out of its key range although the
    /// `SET` list leaves the key alone: an `UPDATE` trigger (or rule) changes
    /// the key. Rows moved ahead of the scan would be updated again in a later
    /// batch, so the batch was rolled back and the job stopped.
    #[error(
        "the batch {range} of update_all moved {moved} row(s) out of its range of {columns}, \
         although the SET list leaves the key alone ({cause} of the table may change the key); \
         rows moved ahead of the scan would be updated again in a later batch, so the batch \
         was rolled back and the job stopped; scan by a key the update cannot change, such \
         as the primary key"
    )]
    KeyMoved {
        /// The key column(s).
        columns: String,
        /// The batch's key range (`after 10 up to 20`, in the scan's order).
        range: String,
        /// How many rows fewer the range held after the `UPDATE`.
        moved: u64,
        /// The table's `UPDATE` triggers and rules.
        cause: String,
    },

    /// The checkpoint table `chunked_checkpoints` does not exist: create it
    /// once with [`checkpoint::create_table`](crate::checkpoint::create_table)
    /// (or the statement of your backend in a migration).
    #[error(
        "the checkpoint table chunked_checkpoints is missing: create it once with \
         checkpoint::create_table(&mut conn) (or its CREATE TABLE in a migration); \
         the database said: {message}"
    )]
    CheckpointTableMissing {
        /// The database's message.
        message: String,
    },

    /// The checkpoint table lacks the column `query_fingerprint` (it was
    /// created by an earlier version): [`checkpoint::create_table`](crate::checkpoint::create_table)
    /// adds it, as does `ALTER TABLE chunked_checkpoints ADD COLUMN
    /// query_fingerprint TEXT`.
    #[error(
        "the checkpoint table chunked_checkpoints has no column query_fingerprint (it was \
         created by an earlier version): run checkpoint::create_table(&mut conn), which adds \
         it, or ALTER TABLE chunked_checkpoints ADD COLUMN query_fingerprint TEXT; \
         the database said: {message}"
    )]
    CheckpointTableOutdated {
        /// The database's message.
        message: String,
    },

    /// A job name the checkpoint table cannot hold (see
    /// [`checkpoint::check_name`](crate::checkpoint::check_name)): refused
    /// before any statement runs.
    #[error(
        "invalid checkpoint name {name:?}: {reason}; a name has 1 to 255 characters and no \
         control characters"
    )]
    InvalidCheckpointName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A health signal of [`throttle_on`](crate::Chunked::throttle_on) could
    /// not be read for [`unreadable_limit`](crate::Chunked::unreadable_limit):
    /// the job stopped between two batches (the last one committed; a
    /// checkpointed job resumes after it).
    #[error(
        "health signal {signal} could not be read for {waited:.1?}, so the job stopped \
         (a signal that cannot be read is never taken as healthy): {reason}"
    )]
    HealthUnreadable {
        /// The signal's name.
        signal: String,
        /// Why it could not be read, the last time.
        reason: String,
        /// How long it had been unreadable.
        waited: std::time::Duration,
    },

    /// [`async_commit`](crate::Chunked::async_commit) cannot be used as the
    /// job is set up.
    #[error("async_commit() cannot be used here: {reason}")]
    AsyncCommit {
        /// Why.
        reason: String,
    },

    /// A statement of a [diff](crate::Chunked::diff) failed on one of its
    /// sides (after the retries a pool gets): the diff stopped, with no
    /// report. Run it again, or from `start_after(after)` to skip the chunks
    /// compared.
    #[error(
        "the diff's statement on the {side} side failed in chunk {chunk}{}{}: {source}",
        DisplayAfter(.after),
        DisplayAttempts(*.attempts)
    )]
    DiffFailed {
        /// `"left"` or `"right"`.
        side: &'static str,
        /// The 1-based chunk number.
        chunk: u64,
        /// The key the statement's range started after (`Debug`-formatted), if any.
        after: Option<String>,
        /// How many times the statement was tried.
        attempts: u32,
        /// The failure of the last attempt.
        #[source]
        source: crate::AttemptError,
    },

    /// A [diff](crate::Chunked::diff) cannot run with the scan's settings.
    #[error("cannot diff: {reason}")]
    DiffUnsupported {
        /// What is wrong, and what to do.
        reason: String,
    },

    /// A health signal of [`throttle_on`](crate::Chunked::throttle_on) does
    /// not exist on the job's backend (or where it was asked to be read):
    /// the job stopped before its first batch.
    #[error("health signal {signal} cannot be read here: {reason}")]
    HealthUnsupported {
        /// The signal's name.
        signal: String,
        /// Why.
        reason: String,
    },

    /// A batch of [`move_into`](crate::RunChunkedDsl::move_into) copied
    /// another number of rows than it deleted (or locked): another writer
    /// added or removed rows of the batch's key range between its statements
    /// (possible on MySQL/MariaDB at `READ COMMITTED`). The batch was rolled
    /// back, so no row was lost or copied twice; the job stopped after the
    /// batches before it.
    #[error(
        "the batch {range} of move_into copied {copied} row(s) but deleted {deleted} \
         (locked {locked:?}): another writer changed the range between its statements; \
         the batch was rolled back and the job stopped (run it again: a checkpointed job \
         resumes at this batch; at REPEATABLE READ the range is locked against such writers)"
    )]
    MoveChanged {
        /// The batch's key range.
        range: String,
        /// Rows the `INSERT ... SELECT` copied.
        copied: u64,
        /// Rows the `DELETE` removed.
        deleted: u64,
        /// Rows the range held when it was locked (MySQL/MariaDB).
        locked: Option<u64>,
    },

    /// [`move_to`](crate::TransferDsl::move_to) was started without a
    /// [`checkpoint`](crate::Chunked::checkpoint): what the destination has
    /// committed and the source has not yet deleted is known from it alone.
    #[error(
        "move_to needs a checkpoint (.checkpoint(\"name\")): a batch is committed in the \
         destination before its rows are deleted from the source, and only the checkpoint \
         rows in both databases tell a run what a stopped one left to delete"
    )]
    MoveNeedsCheckpoint,

    /// [`move_to`](crate::TransferDsl::move_to) found the destination's
    /// checkpoint row where it keeps the source's own: source and destination
    /// share a checkpoint table, so they are one database (or share the
    /// table). Nothing was copied; in one database,
    /// [`move_into`](crate::RunChunkedDsl::move_into) moves rows in one
    /// transaction a batch.
    #[error(
        "move_to job {name:?}: the source and the destination share the checkpoint table \
         (one database?), so the job cannot tell what the source has deleted; use move_into \
         within one database"
    )]
    MoveSameDatabase {
        /// The job's name.
        name: String,
    },

    /// A builder option was given to a job it does not apply to, such as
    /// [`on_conflict_do_nothing`](crate::Chunked::on_conflict_do_nothing) to
    /// `update_all`: the job stopped before its first statement.
    #[error("{option}() does not apply to {job}: {reason}")]
    OptionUnsupported {
        /// The option.
        option: &'static str,
        /// The job it was given to.
        job: &'static str,
        /// What it applies to.
        reason: &'static str,
    },

    /// [`move_into`](crate::RunChunkedDsl::move_into) or
    /// [`copy_into`](crate::RunChunkedDsl::copy_into) was given the table it
    /// reads as its destination.
    #[error("{verb} reads and writes the same table {table}: give it another table")]
    SameTable {
        /// `move_into` or `copy_into`.
        verb: &'static str,
        /// The table, as rendered.
        table: String,
    },
}

struct DisplayAfterStart<'a>(&'a Option<String>);
impl fmt::Display for DisplayAfterStart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " (it started after key {k})"),
            None => f.write_str(" (it started at the beginning of the scan)"),
        }
    }
}

/// What [`Error::CommitUnknown`] advises.
/// The key the batch started after, its last key, the job's checkpoint.
struct DisplayCommitAdvice<'a>(&'a Option<String>, &'a str, &'a Option<String>);
impl fmt::Display for DisplayCommitAdvice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DisplayCommitAdvice(after, last, checkpoint) = *self;
        if let Some(name) = checkpoint {
            return write!(
                f,
                "run the job again: its checkpoint {name:?} records whether the batch \
                 committed, and the job resumes right after its last committed batch"
            );
        }
        write!(
            f,
            "check whether those rows were written, then resume with start_after({}) if they \
             were, or ",
            last
        )?;
        match after {
            Some(k) => write!(f, "start_after({k})")?,
            None => f.write_str("from the beginning")?,
        }
        f.write_str(
            " if not; with .checkpoint(name) a job learns the outcome itself and writes every \
             batch exactly once across lost answers",
        )
    }
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

/// The advice of [`Error::DuplicateKey`].
struct DuplicateHint<'a>(&'a str);
impl fmt::Display for DuplicateHint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self.0.trim_start_matches('(').trim_end_matches(')');
        let last = cols.rsplit(", ").next().unwrap_or(cols);
        let table = last.split('.').next().unwrap_or(last);
        if last.ends_with(".id") {
            write!(
                f,
                "the query returns several rows per key (a join with a table that has many \
                 rows per {last}?): add a column that tells them apart to the key, such as \
                 the joined table's primary key: chunked_by(({}, other_table::id))",
                cols.replace('.', "::")
            )
        } else {
            write!(
                f,
                "add a unique tiebreaker column to the key, such as the table's primary key: \
                 chunked_by(({}, {table}::id))",
                cols.replace('.', "::")
            )
        }
    }
}

struct DisplayCommitted<'a>(&'a Option<String>);
impl fmt::Display for DisplayCommitted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " (last committed key {k})"),
            None => f.write_str(" (no batch committed)"),
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
            Error::CommitUnknown { source, .. } => Some(source),
            Error::DiffFailed {
                source: crate::AttemptError::Query(source),
                ..
            } => Some(source),
            _ => None,
        }
    }
}
