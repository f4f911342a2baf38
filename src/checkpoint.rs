//! Checkpoints of batched write jobs: one row per job in the table
//! `chunked_checkpoints`.
//!
//! A batched write job (an update or delete run batch by batch over a key
//! range) records where it is in a checkpoint row, written in each batch's own
//! transaction together with the batch's writes. The row therefore always
//! describes exactly the batches that are committed: a job killed at any moment
//! resumes right after its last committed batch, neither repeating nor skipping
//! one.
//!
//! A row holds the job's name (its primary key, see [`check_name`]), the kind
//! of key it scans by (so that a resume with another key is refused), the last
//! committed key (serialized, opaque here), the rows and batches written so far
//! over all runs, whether the job is done, when the row was last written, and
//! the fingerprint of the job's query (so that a job of another query under the
//! same name is refused instead of resuming after this one's last key).
//!
//! [`create_table`] creates the table (if it does not exist yet), [`status`]
//! reads a job's row, [`reset`] deletes it so that the next run starts from the
//! beginning.
//!
//! # What identifies a job
//!
//! A run resumes from a row only if it is the same job: the same key
//! (`key_type`: the key's columns and Rust type) and the same query
//! (`query_fingerprint`). The fingerprint is `<kind> <16 hex digits>`, the kind
//! being `update_all`, `delete_all` or `for_each_batch`, and the digits the
//! 64-bit FNV-1a hash of what decides which rows the job writes: the job's kind
//! and key, the query's SQL as Diesel renders it with its bind values (table,
//! joins, filters; for `update_all` the `SET` list too), and the bounds given to
//! the builder (`start_after`, `end_at`, `within`, `desc`). It is the same in
//! every process and run of a job built the same way. Not part of it:
//! `batch_size`, `limit_total`, the pauses, and what a `for_each_batch` closure
//! does. A filter on a value computed at each run (a cutoff of `now() - 30
//! days` bound from Rust) makes each run another job: compute the value once,
//! or [`reset`] the job. So can an upgrade of Diesel or of this crate that
//! renders the query differently: finish or reset stopped jobs before one.
//!
//! Another key is [`Error::CheckpointMismatch`](crate::Error::CheckpointMismatch),
//! and so is another query; either way nothing is written. A row whose
//! `query_fingerprint` is `NULL` (written before the column existed) is taken
//! by the next run of its name, which stores its own fingerprint there.
//!
//! # Errors
//!
//! A name that is empty, longer than 255 characters or holds a control
//! character is [`Error::InvalidCheckpointName`](crate::Error::InvalidCheckpointName)
//! before any statement runs. A missing table is
//! [`Error::CheckpointTableMissing`](crate::Error::CheckpointTableMissing) (call
//! [`create_table`]); a table created before `query_fingerprint` existed is
//! [`Error::CheckpointTableOutdated`](crate::Error::CheckpointTableOutdated)
//! (call [`create_table`], which adds the column).
//!
//! # The table
//!
//! `create_table` runs one of these statements. To manage the table with your
//! own migrations, create it with the statement of your backend (the same
//! strings are [`CREATE_TABLE_SQLITE`], [`CREATE_TABLE_POSTGRES`] and
//! [`CREATE_TABLE_MYSQL`]).
//!
//! SQLite:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS chunked_checkpoints (
//!     name TEXT NOT NULL PRIMARY KEY CHECK (length(name) <= 255),
//!     key_type TEXT NOT NULL,
//!     last_key TEXT,
//!     rows_done BIGINT NOT NULL DEFAULT 0,
//!     batches_done BIGINT NOT NULL DEFAULT 0,
//!     done BOOLEAN NOT NULL DEFAULT FALSE,
//!     updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
//!     query_fingerprint TEXT
//! )
//! ```
//!
//! PostgreSQL:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS chunked_checkpoints (
//!     name VARCHAR(255) NOT NULL PRIMARY KEY,
//!     key_type TEXT NOT NULL,
//!     last_key TEXT,
//!     rows_done BIGINT NOT NULL DEFAULT 0,
//!     batches_done BIGINT NOT NULL DEFAULT 0,
//!     done BOOLEAN NOT NULL DEFAULT FALSE,
//!     updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
//!     query_fingerprint TEXT
//! )
//! ```
//!
//! MySQL/MariaDB:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS chunked_checkpoints (
//!     name VARCHAR(255) NOT NULL PRIMARY KEY,
//!     key_type TEXT NOT NULL,
//!     last_key TEXT,
//!     rows_done BIGINT NOT NULL DEFAULT 0,
//!     batches_done BIGINT NOT NULL DEFAULT 0,
//!     done BOOLEAN NOT NULL DEFAULT FALSE,
//!     updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
//!     query_fingerprint TEXT
//! ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
//! ```
//!
//! A table created without `query_fingerprint` (by an earlier version) gets it
//! from [`create_table`], which checks for the column and else runs `ALTER TABLE
//! chunked_checkpoints ADD COLUMN query_fingerprint TEXT`; run that statement
//! yourself if you manage the table with migrations.
//!
//! The column names avoid words reserved by any of the backends (`rows` is
//! reserved in MySQL 8). Totals are `BIGINT`: up to `i64::MAX` rows and batches.
//! On MySQL/MariaDB the binary collation makes job names compare exactly (case
//! and accents count), except that, as with every `PAD SPACE` collation, names
//! that differ only by trailing spaces are the same job. `updated_at` is the
//! database's own clock: UTC on SQLite (whole seconds), the session's time zone
//! on PostgreSQL and MySQL/MariaDB (microseconds; PostgreSQL's
//! `CURRENT_TIMESTAMP` is the start of the transaction).
//!
//! # The statements
//!
//! With `?` written for the placeholders (`$1`, `$2`, ... on PostgreSQL):
//!
//! - read: `SELECT name, key_type, last_key, rows_done, batches_done, done,
//!   CAST(updated_at AS TEXT) AS updated_at, query_fingerprint FROM
//!   chunked_checkpoints WHERE name = ?` (`CAST(updated_at AS CHAR)` on
//!   MySQL/MariaDB);
//! - start: the read, and if there is no row
//!   `INSERT INTO chunked_checkpoints (name, key_type) VALUES (?, ?) ON CONFLICT DO NOTHING`
//!   (MySQL/MariaDB: `ON DUPLICATE KEY UPDATE name = name`, not `INSERT IGNORE`,
//!   which would turn a name too long for the column into a warning and store it
//!   cut), then the read again;
//! - claim (a row without a fingerprint, right after the start): `UPDATE
//!   chunked_checkpoints SET query_fingerprint = ? WHERE name = ? AND
//!   query_fingerprint IS NULL`, then the read again: of two runs that start
//!   one new name at once, the first one's fingerprint stays;
//! - lock: the read with `FOR UPDATE NOWAIT` (PostgreSQL, MariaDB ≥ 10.3,
//!   MySQL ≥ 8.0); on SQLite the plain read;
//! - advance: `UPDATE chunked_checkpoints SET last_key = ?, rows_done = ?,
//!   batches_done = ?, done = ?, updated_at = CURRENT_TIMESTAMP WHERE name = ?`
//!   (`CURRENT_TIMESTAMP(6)` on MySQL/MariaDB); no matching row is an error
//!   ([`NotFound`](diesel::result::Error::NotFound));
//! - delete: `DELETE FROM chunked_checkpoints WHERE name = ?`.
//!
//! # Locking
//!
//! Each batch runs in one transaction
//! ([`batch_transaction`](CheckpointConnection::batch_transaction)) that first
//! locks the job's row, without waiting: two runs of one job never write batches
//! at the same time, and the second one learns it instead of queueing behind the
//! first. (A write job's batch whose lock conflicts rolls its transaction back,
//! in which nothing else ran, and begins it again, for up to 5 s: a runner that
//! died inside a batch holds the row until the server rolls its transaction
//! back. Then it checks that the row did not move on.)
//!
//! - PostgreSQL: a plain transaction; the row is locked with
//!   `SELECT ... FOR UPDATE NOWAIT`, which fails at once with SQLSTATE 55P03
//!   (`could not obtain lock on row ...`) if another transaction holds it.
//! - MySQL/MariaDB: a `READ COMMITTED` transaction (`SET TRANSACTION ISOLATION
//!   LEVEL READ COMMITTED; BEGIN`, sent as one; the level applies to that
//!   transaction only), so that a batch's range `UPDATE` takes no gap locks that would block
//!   writers of other rows. The row is locked with `SELECT ... FOR UPDATE NOWAIT`,
//!   which fails at once (MariaDB: error 1205 `Lock wait timeout exceeded`,
//!   MySQL: error 3572) if another transaction holds it.
//! - SQLite has no row locks: the batch's transaction is `BEGIN IMMEDIATE`, which
//!   takes the database's write lock at its start, so a second writer waits for
//!   its `busy_timeout` and then fails with `database is locked` at the start of
//!   its batch, not at its first write. The lock step is a plain read.
//!
//! Reading, starting and deleting a checkpoint take no lock and do not wait for a
//! batch in progress (except that an SQLite write waits for the write lock like
//! any other).

use diesel::connection::Connection;
use diesel::result::Error as DieselError;
use diesel::QueryResult;

/// The name of the table.
pub const TABLE: &str = "chunked_checkpoints";

/// The `CREATE TABLE` statement of SQLite (see the [module docs](self)).
pub const CREATE_TABLE_SQLITE: &str = concat!(
    "CREATE TABLE IF NOT EXISTS chunked_checkpoints (\n",
    "    name TEXT NOT NULL PRIMARY KEY CHECK (length(name) <= 255),\n",
    "    key_type TEXT NOT NULL,\n",
    "    last_key TEXT,\n",
    "    rows_done BIGINT NOT NULL DEFAULT 0,\n",
    "    batches_done BIGINT NOT NULL DEFAULT 0,\n",
    "    done BOOLEAN NOT NULL DEFAULT FALSE,\n",
    "    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,\n",
    "    query_fingerprint TEXT\n",
    ")"
);

/// The `CREATE TABLE` statement of PostgreSQL (see the [module docs](self)).
pub const CREATE_TABLE_POSTGRES: &str = concat!(
    "CREATE TABLE IF NOT EXISTS chunked_checkpoints (\n",
    "    name VARCHAR(255) NOT NULL PRIMARY KEY,\n",
    "    key_type TEXT NOT NULL,\n",
    "    last_key TEXT,\n",
    "    rows_done BIGINT NOT NULL DEFAULT 0,\n",
    "    batches_done BIGINT NOT NULL DEFAULT 0,\n",
    "    done BOOLEAN NOT NULL DEFAULT FALSE,\n",
    "    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,\n",
    "    query_fingerprint TEXT\n",
    ")"
);

/// The `CREATE TABLE` statement of MySQL/MariaDB (see the [module docs](self)).
pub const CREATE_TABLE_MYSQL: &str = concat!(
    "CREATE TABLE IF NOT EXISTS chunked_checkpoints (\n",
    "    name VARCHAR(255) NOT NULL PRIMARY KEY,\n",
    "    key_type TEXT NOT NULL,\n",
    "    last_key TEXT,\n",
    "    rows_done BIGINT NOT NULL DEFAULT 0,\n",
    "    batches_done BIGINT NOT NULL DEFAULT 0,\n",
    "    done BOOLEAN NOT NULL DEFAULT FALSE,\n",
    "    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n",
    "    query_fingerprint TEXT\n",
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
);

/// One job's checkpoint row.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The job's name (the primary key).
    pub name: String,
    /// What the job's key is (its column names and Rust type): a run with
    /// another key does not resume from this row.
    pub key_type: String,
    /// The key of the last committed batch, serialized (JSON text); `None` before
    /// the first batch.
    pub last_key: Option<String>,
    /// Rows written so far, over all runs.
    pub rows: u64,
    /// Batches committed so far, over all runs.
    pub batches: u64,
    /// Whether the job has finished.
    pub done: bool,
    /// When the row was last written, as the database renders its timestamp
    /// (for display).
    pub updated_at: String,
    /// What the job's query is (see [What identifies a job](self#what-identifies-a-job)):
    /// a run of another query does not resume from this row. `None` until the
    /// job's first run stores it.
    pub query_fingerprint: Option<String>,
}

/// Per-backend statements on the checkpoint table.
///
/// Implemented for `SqliteConnection`, `PgConnection` and `MysqlConnection`
/// (with the features `sqlite`, `postgres`, `mysql`). The statements are listed
/// in the [module docs](self).
#[doc(hidden)]
pub trait CheckpointConnection:
    Connection
    + crate::unique::UniqueIndexes
    + crate::health::sql::ReadHealth
    + crate::commit::RelaxCommit
{
    /// Creates the table if it does not exist, and adds the column
    /// `query_fingerprint` to a table that lacks it.
    fn create_checkpoint_table(&mut self) -> QueryResult<()>;

    /// The row of job `name`, if any.
    fn read_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>>;

    /// Outside any batch: inserts the row (rows 0, batches 0, no key, not done)
    /// if it is missing, and returns the row. An existing row is returned as it
    /// is, whatever its `key_type`.
    fn start_checkpoint(&mut self, name: &str, key_type: &str) -> QueryResult<Checkpoint>;

    /// Outside any batch: stores `fingerprint` in the row of job `name` if it
    /// has none yet, and returns the row (with the fingerprint it has now,
    /// which is another one if another run stored its own first).
    fn claim_checkpoint(&mut self, name: &str, fingerprint: &str) -> QueryResult<Checkpoint>;

    /// Inside a batch's transaction: locks the row without waiting (PostgreSQL
    /// and MySQL/MariaDB `FOR UPDATE NOWAIT`; SQLite reads it, its `BEGIN
    /// IMMEDIATE` transaction being the lock) and returns it. A row locked by
    /// another transaction is an error for which [`is_lock_conflict`] is true.
    fn lock_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>>;

    /// Inside the batch's transaction: writes the new position and totals and
    /// sets `updated_at` to now. A missing row is
    /// [`NotFound`](diesel::result::Error::NotFound); totals above `i64::MAX`
    /// are a serialization error.
    fn advance_checkpoint(
        &mut self,
        name: &str,
        last_key: Option<&str>,
        rows: u64,
        batches: u64,
        done: bool,
    ) -> QueryResult<()>;

    /// Deletes the row; true if there was one.
    fn delete_checkpoint(&mut self, name: &str) -> QueryResult<bool>;

    /// Runs `f` in one batch transaction of this backend, committed if `f`
    /// returns `Ok` and rolled back otherwise: SQLite `BEGIN IMMEDIATE`,
    /// MySQL/MariaDB `READ COMMITTED`, PostgreSQL a plain transaction.
    ///
    /// A panic of `f` rolls the transaction back, and then goes on unwinding:
    /// the connection is left outside any transaction.
    ///
    /// Never nested: called inside an open transaction it fails with
    /// [`AlreadyInTransaction`](diesel::result::Error::AlreadyInTransaction)
    /// (a savepoint would commit nothing, and neither the isolation level nor
    /// `BEGIN IMMEDIATE` can be applied to it).
    fn batch_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<DieselError>;
}

/// Whether `e` says the checkpoint row (or, on SQLite, the database) is locked by
/// another writer: PostgreSQL SQLSTATE 55P03 (`could not obtain lock on row`,
/// or a `lock_timeout`), MariaDB error 1205 (`Lock wait timeout exceeded`, also
/// what `NOWAIT` fails with), MySQL error 3572 (`... NOWAIT is set`), SQLite
/// `database is locked`.
///
/// Used by the batched writes; public only for their tests.
#[doc(hidden)]
pub fn is_lock_conflict(e: &DieselError) -> bool {
    const NEEDLES: &[&str] = &[
        // PostgreSQL, SQLSTATE 55P03 (lock_not_available).
        "could not obtain lock",
        "canceling statement due to lock timeout",
        // MariaDB 1205 (NOWAIT fails with it too), MySQL 1205 and 3572.
        "lock wait timeout exceeded",
        "nowait is set",
        // SQLite SQLITE_BUSY / SQLITE_LOCKED.
        "database is locked",
        "database table is locked",
    ];
    match e {
        DieselError::DatabaseError(_, info) => {
            let message = info.message().to_ascii_lowercase();
            NEEDLES.iter().any(|needle| message.contains(needle))
        }
        _ => false,
    }
}

/// Creates the checkpoint table if it does not exist (see the [module
/// docs](self) for the statement of each backend).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::checkpoint;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = doc_connection();
/// checkpoint::create_table(&mut conn)?;
/// checkpoint::create_table(&mut conn)?; // already there: nothing to do
/// assert_eq!(checkpoint::status(&mut conn, "archive-posts")?, None);
/// # Ok(()) }
/// ```
pub fn create_table<C: CheckpointConnection>(conn: &mut C) -> Result<(), crate::Error> {
    conn.create_checkpoint_table()
        .map_err(|source| crate::Error::Query {
            context: "creating the checkpoint table chunked_checkpoints",
            source,
        })
}

/// The most characters a job name may have (the column is `VARCHAR(255)`).
pub const MAX_NAME_CHARS: usize = 255;

/// Checks a job name before any statement uses it: 1 to [`MAX_NAME_CHARS`]
/// characters (Unicode scalar values, as the columns count them), none of them a
/// control character (`U+0000`–`U+001F`, `U+007F`–`U+009F`: PostgreSQL cannot
/// store NUL, and the others would make the name unreadable in logs). Otherwise
/// [`Error::InvalidCheckpointName`](crate::Error::InvalidCheckpointName).
///
/// Write jobs, [`status`] and [`reset`] check their name with it.
///
/// ```
/// use diesel_chunked_iterator::{checkpoint, Error};
/// checkpoint::check_name("archive-posts/slice-7")?;
/// checkpoint::check_name(&"é".repeat(255))?;
/// let err = checkpoint::check_name(&"x".repeat(256)).unwrap_err();
/// assert!(matches!(err, Error::InvalidCheckpointName { .. }));
/// assert!(checkpoint::check_name("a\0b").is_err());
/// assert!(checkpoint::check_name("").is_err());
/// # Ok::<(), Error>(())
/// ```
pub fn check_name(name: &str) -> Result<(), crate::Error> {
    let invalid = |reason: String| {
        Err(crate::Error::InvalidCheckpointName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty".to_string());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return invalid(format!(
            "it has {chars} characters, more than the {MAX_NAME_CHARS} the column holds"
        ));
    }
    if let Some((at, c)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        return invalid(format!(
            "character {} is the control character U+{:04X}",
            at + 1,
            u32::from(c)
        ));
    }
    Ok(())
}

/// The error of a checkpoint statement that failed with `source` while doing
/// `context`: [`Error::CheckpointTableMissing`](crate::Error::CheckpointTableMissing)
/// or [`Error::CheckpointTableOutdated`](crate::Error::CheckpointTableOutdated)
/// when the table or its column is missing, else [`Error::Query`](crate::Error::Query).
pub(crate) fn statement_error(context: &'static str, source: DieselError) -> crate::Error {
    table_problem(&source).unwrap_or(crate::Error::Query { context, source })
}

/// Whether `e` says that the checkpoint table, or its column `query_fingerprint`,
/// does not exist: SQLite `no such table` / `no such column`, PostgreSQL
/// SQLSTATE 42P01 / 42703 (`relation ... does not exist`, `column ...
/// does not exist`), MySQL/MariaDB errors 1146 / 1054 (`Table ... doesn't
/// exist`, `Unknown column`); restricted to this table and column.
///
/// Used by the write jobs; public only for their tests.
#[doc(hidden)]
pub fn table_problem(e: &DieselError) -> Option<crate::Error> {
    let DieselError::DatabaseError(_, info) = e else {
        return None;
    };
    let message = info.message().to_ascii_lowercase();
    let missing = ["no such table", "does not exist", "doesn't exist"]
        .iter()
        .any(|n| message.contains(n));
    if missing && message.contains(TABLE) {
        return Some(crate::Error::CheckpointTableMissing {
            message: info.message().to_string(),
        });
    }
    let no_column = ["no such column", "does not exist", "unknown column"]
        .iter()
        .any(|n| message.contains(n));
    if no_column && message.contains(FINGERPRINT) {
        return Some(crate::Error::CheckpointTableOutdated {
            message: info.message().to_string(),
        });
    }
    None
}

/// The column that identifies a job's query.
const FINGERPRINT: &str = "query_fingerprint";

/// Forgets job `name`: its next run starts from the beginning. Not an error if
/// the job has no checkpoint (the table must exist).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::checkpoint;
/// # use diesel_chunked_iterator::checkpoint::CheckpointConnection;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = doc_connection();
/// checkpoint::create_table(&mut conn)?;
/// # conn.start_checkpoint("archive-posts", "posts.id: i32")?;
/// // ... a run of job "archive-posts" stopped half-way ...
/// assert!(checkpoint::status(&mut conn, "archive-posts")?.is_some());
/// checkpoint::reset(&mut conn, "archive-posts")?;
/// assert_eq!(checkpoint::status(&mut conn, "archive-posts")?, None);
/// checkpoint::reset(&mut conn, "archive-posts")?; // no row: fine
/// # Ok(()) }
/// ```
pub fn reset<C: CheckpointConnection>(conn: &mut C, name: &str) -> Result<(), crate::Error> {
    check_name(name)?;
    conn.delete_checkpoint(name)
        .map(drop)
        .map_err(|source| statement_error("deleting a checkpoint", source))
}

/// The checkpoint of job `name`, if it has one (the table must exist).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::checkpoint;
/// # use diesel_chunked_iterator::checkpoint::CheckpointConnection;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = doc_connection();
/// checkpoint::create_table(&mut conn)?;
/// # conn.start_checkpoint("archive-posts", "posts.id: i32")?;
/// # conn.batch_transaction(|c| {
/// #     c.lock_checkpoint("archive-posts")?;
/// #     c.advance_checkpoint("archive-posts", Some("[3]"), 3, 1, false)
/// # })?;
/// // ... a run of job "archive-posts" committed one batch of 3 rows ...
/// let ckpt = checkpoint::status(&mut conn, "archive-posts")?.expect("a checkpoint");
/// assert_eq!((ckpt.rows, ckpt.batches, ckpt.done), (3, 1, false));
/// assert_eq!(ckpt.last_key.as_deref(), Some("[3]"));
/// println!("{}: {} rows, last written {}", ckpt.name, ckpt.rows, ckpt.updated_at);
/// # Ok(()) }
/// ```
pub fn status<C: CheckpointConnection>(
    conn: &mut C,
    name: &str,
) -> Result<Option<Checkpoint>, crate::Error> {
    check_name(name)?;
    conn.read_checkpoint(name)
        .map_err(|source| statement_error("reading a checkpoint", source))
}

/// The statements of one backend.
#[allow(dead_code)] // with no backend feature on, nothing reads them
struct Statements {
    create_table: &'static str,
    /// How many columns `query_fingerprint` the table has (0 or 1), as
    /// `count`.
    has_fingerprint: &'static str,
    add_fingerprint: &'static str,
    claim: &'static str,
    read: &'static str,
    lock: &'static str,
    insert: &'static str,
    advance: &'static str,
    delete: &'static str,
}

/// A row as read by the statements, before the totals are checked.
#[cfg(feature = "async")]
mod nonblocking;
#[cfg(feature = "async")]
pub(crate) use nonblocking::{
    begin_savepoint, end_transaction, rollback, AsyncCheckpointConnection,
};

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    key_type: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_key: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows_done: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    batches_done: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    done: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    updated_at: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    query_fingerprint: Option<String>,
}

/// The answer of `has_fingerprint`.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl Row {
    fn into_checkpoint(self) -> QueryResult<Checkpoint> {
        let total = |v: i64, column: &str| {
            u64::try_from(v).map_err(|_| {
                DieselError::DeserializationError(
                    format!("{TABLE}.{column} is negative ({v})").into(),
                )
            })
        };
        Ok(Checkpoint {
            rows: total(self.rows_done, "rows_done")?,
            batches: total(self.batches_done, "batches_done")?,
            name: self.name,
            key_type: self.key_type,
            last_key: self.last_key,
            done: self.done,
            updated_at: self.updated_at,
            query_fingerprint: self.query_fingerprint,
        })
    }
}

/// A total as the `BIGINT` it is stored in.
#[allow(dead_code)] // with no backend feature on, nothing calls it
fn bigint(v: u64, what: &str) -> QueryResult<i64> {
    i64::try_from(v).map_err(|_| {
        DieselError::SerializationError(
            format!(
                "checkpoint {what} {v} is above the largest BIGINT ({})",
                i64::MAX
            )
            .into(),
        )
    })
}

/// The statements shared by the three backends, for connection type `$conn`
/// with statements `$sql`; `$batch` is the body of `batch_transaction`, with
/// the connection named `$c` and the closure `$f`.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! checkpoint_connection {
    // The checkpoint row `name` as `statement` reads it (or locks it), if any.
    (@row $conn:expr, $statement:expr, $name:expr) => {{
        use diesel::{OptionalExtension, RunQueryDsl};
        diesel::sql_query($statement)
            .bind::<diesel::sql_types::Text, _>($name)
            .get_result::<Row>($conn)
            .optional()?
            .map(Row::into_checkpoint)
            .transpose()
    }};
    ($conn:ty, $sql:expr, |$c:ident, $f:ident| $batch:block) => {
        impl CheckpointConnection for $conn {
            fn create_checkpoint_table(&mut self) -> QueryResult<()> {
                use diesel::RunQueryDsl;
                diesel::sql_query($sql.create_table).execute(self)?;
                // A table of an earlier version lacks the fingerprint column.
                let has = |c: &mut Self| -> QueryResult<bool> {
                    let found = diesel::sql_query($sql.has_fingerprint).get_result::<Count>(c)?;
                    Ok(found.count > 0)
                };
                if has(self)? {
                    return Ok(());
                }
                match diesel::sql_query($sql.add_fingerprint).execute(self) {
                    Ok(_) => Ok(()),
                    // Another process added it meanwhile.
                    Err(_) if has(self)? => Ok(()),
                    Err(e) => Err(e),
                }
            }

            fn claim_checkpoint(&mut self, name: &str, fingerprint: &str) -> QueryResult<Checkpoint> {
                use diesel::RunQueryDsl;
                diesel::sql_query($sql.claim)
                    .bind::<diesel::sql_types::Text, _>(fingerprint)
                    .bind::<diesel::sql_types::Text, _>(name)
                    .execute(self)?;
                self.read_checkpoint(name)?.ok_or(DieselError::NotFound)
            }

            fn read_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>> {
                checkpoint_connection!(@row self, $sql.read, name)
            }

            fn start_checkpoint(&mut self, name: &str, key_type: &str) -> QueryResult<Checkpoint> {
                use diesel::RunQueryDsl;
                // Read first: an existing row (the common case, and the only one
                // while a run holds the row's lock) is returned without a write,
                // so this never waits for a batch in progress.
                if let Some(found) = self.read_checkpoint(name)? {
                    return Ok(found);
                }
                diesel::sql_query($sql.insert)
                    .bind::<diesel::sql_types::Text, _>(name)
                    .bind::<diesel::sql_types::Text, _>(key_type)
                    .execute(self)?;
                self.read_checkpoint(name)?.ok_or(DieselError::NotFound)
            }

            fn lock_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>> {
                checkpoint_connection!(@row self, $sql.lock, name)
            }

            fn advance_checkpoint(
                &mut self,
                name: &str,
                last_key: Option<&str>,
                rows: u64,
                batches: u64,
                done: bool,
            ) -> QueryResult<()> {
                use diesel::sql_types::{BigInt, Bool, Nullable, Text};
                use diesel::RunQueryDsl;
                let updated = diesel::sql_query($sql.advance)
                    .bind::<Nullable<Text>, _>(last_key)
                    .bind::<BigInt, _>(bigint(rows, "rows")?)
                    .bind::<BigInt, _>(bigint(batches, "batches")?)
                    .bind::<Bool, _>(done)
                    .bind::<Text, _>(name)
                    .execute(self)?;
                if updated == 0 {
                    return Err(DieselError::NotFound);
                }
                Ok(())
            }

            fn delete_checkpoint(&mut self, name: &str) -> QueryResult<bool> {
                use diesel::RunQueryDsl;
                diesel::sql_query($sql.delete)
                    .bind::<diesel::sql_types::Text, _>(name)
                    .execute(self)
                    .map(|n| n > 0)
            }

            fn batch_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
            where
                F: FnOnce(&mut Self) -> Result<T, E>,
                E: From<DieselError>,
            {
                // A panic of `f` rolls the transaction back before it goes on
                // unwinding: Diesel would leave the connection inside it.
                let mut panicked = None;
                let $c = self;
                let $f = |conn: &mut Self| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                        .unwrap_or_else(|payload| {
                            panicked = Some(payload);
                            Err(DieselError::RollbackTransaction.into())
                        })
                };
                let result = $batch;
                if let Some(payload) = panicked {
                    std::panic::resume_unwind(payload);
                }
                result
            }
        }
    };
}

#[cfg(feature = "sqlite")]
const SQLITE: Statements = Statements {
    create_table: CREATE_TABLE_SQLITE,
    has_fingerprint: "SELECT COUNT(*) AS count FROM pragma_table_info('chunked_checkpoints') \
                      WHERE name = 'query_fingerprint'",
    add_fingerprint: "ALTER TABLE chunked_checkpoints ADD COLUMN query_fingerprint TEXT",
    claim: "UPDATE chunked_checkpoints SET query_fingerprint = ? \
            WHERE name = ? AND query_fingerprint IS NULL",
    read: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS TEXT) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = ?",
    lock: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS TEXT) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = ?",
    insert: "INSERT INTO chunked_checkpoints (name, key_type) VALUES (?, ?) \
             ON CONFLICT DO NOTHING",
    advance: "UPDATE chunked_checkpoints SET last_key = ?, rows_done = ?, batches_done = ?, \
              done = ?, updated_at = CURRENT_TIMESTAMP WHERE name = ?",
    delete: "DELETE FROM chunked_checkpoints WHERE name = ?",
};

#[cfg(feature = "sqlite")]
checkpoint_connection!(diesel::SqliteConnection, SQLITE, |conn, f| {
    // BEGIN IMMEDIATE takes the write lock now: a second writer fails (after
    // its busy_timeout) here, before the batch has done anything.
    conn.immediate_transaction(f)
});

#[cfg(feature = "postgres")]
const POSTGRES: Statements = Statements {
    create_table: CREATE_TABLE_POSTGRES,
    // The table the other statements find: the first of the search path.
    has_fingerprint: "SELECT COUNT(*) AS count FROM pg_catalog.pg_attribute \
                      WHERE attrelid = to_regclass('chunked_checkpoints') \
                      AND attname = 'query_fingerprint' AND NOT attisdropped",
    add_fingerprint: "ALTER TABLE chunked_checkpoints ADD COLUMN query_fingerprint TEXT",
    claim: "UPDATE chunked_checkpoints SET query_fingerprint = $1 \
            WHERE name = $2 AND query_fingerprint IS NULL",
    read: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS TEXT) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = $1",
    lock: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS TEXT) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = $1 \
           FOR UPDATE NOWAIT",
    insert: "INSERT INTO chunked_checkpoints (name, key_type) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
    advance: "UPDATE chunked_checkpoints SET last_key = $1, rows_done = $2, batches_done = $3, \
              done = $4, updated_at = CURRENT_TIMESTAMP WHERE name = $5",
    delete: "DELETE FROM chunked_checkpoints WHERE name = $1",
};

#[cfg(feature = "postgres")]
checkpoint_connection!(diesel::PgConnection, POSTGRES, |conn, f| {
    // A top-level transaction (the builder refuses to nest, as the other
    // backends do).
    conn.build_transaction().run(f)
});

#[cfg(feature = "mysql")]
const MYSQL: Statements = Statements {
    create_table: CREATE_TABLE_MYSQL,
    has_fingerprint: "SELECT COUNT(*) AS count FROM information_schema.columns \
                      WHERE table_schema = DATABASE() AND table_name = 'chunked_checkpoints' \
                      AND column_name = 'query_fingerprint'",
    add_fingerprint: "ALTER TABLE chunked_checkpoints ADD COLUMN query_fingerprint TEXT",
    claim: "UPDATE chunked_checkpoints SET query_fingerprint = ? \
            WHERE name = ? AND query_fingerprint IS NULL",
    read: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS CHAR) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = ?",
    lock: "SELECT name, key_type, last_key, rows_done, batches_done, done, \
           CAST(updated_at AS CHAR) AS updated_at, query_fingerprint FROM chunked_checkpoints WHERE name = ? \
           FOR UPDATE NOWAIT",
    insert: "INSERT INTO chunked_checkpoints (name, key_type) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE name = name",
    advance: "UPDATE chunked_checkpoints SET last_key = ?, rows_done = ?, batches_done = ?, \
              done = ?, updated_at = CURRENT_TIMESTAMP(6) WHERE name = ?",
    delete: "DELETE FROM chunked_checkpoints WHERE name = ?",
};

#[cfg(feature = "mysql")]
checkpoint_connection!(diesel::MysqlConnection, MYSQL, |conn, f| {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    // SET TRANSACTION is an error inside a transaction, and a savepoint could
    // not get the isolation level anyway.
    if AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()?
        .is_some()
    {
        return Err(DieselError::AlreadyInTransaction.into());
    }
    // Applies to the next transaction only: the session's level is untouched.
    // Sent with the BEGIN, in one round trip.
    AnsiTransactionManager::begin_transaction_sql(conn, MYSQL_BEGIN)?;
    match f(conn) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        // As Diesel's own `transaction`: the body's error says more than a
        // broken transaction manager's.
        Err(e) => match AnsiTransactionManager::rollback_transaction(conn) {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(e),
            Err(rollback) => Err(rollback.into()),
        },
    }
});

/// How a batch's transaction begins on MySQL/MariaDB: `READ COMMITTED` for
/// that transaction only, in one round trip with its `BEGIN`.
#[cfg(feature = "mysql")]
pub(crate) const MYSQL_BEGIN: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN";

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::DatabaseErrorKind;

    fn db_error(message: &str) -> DieselError {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_string()))
    }

    #[test]
    fn lock_conflicts_are_recognised() {
        for message in [
            "could not obtain lock on row in relation \"chunked_checkpoints\"",
            "canceling statement due to lock timeout",
            "Lock wait timeout exceeded; try restarting transaction",
            "Statement aborted because lock(s) could not be acquired immediately and NOWAIT is set.",
            "database is locked",
        ] {
            assert!(is_lock_conflict(&db_error(message)), "{message}");
        }
        for e in [
            db_error("duplicate key value violates unique constraint"),
            db_error("Deadlock found when trying to get lock; try restarting transaction"),
            db_error("no such table: chunked_checkpoints"),
            DieselError::NotFound,
            DieselError::AlreadyInTransaction,
        ] {
            assert!(!is_lock_conflict(&e), "{e}");
        }
    }

    #[test]
    fn a_missing_table_or_column_is_recognised() {
        use crate::Error;
        for message in [
            "no such table: chunked_checkpoints",
            "relation \"chunked_checkpoints\" does not exist",
            "Table 'test.chunked_checkpoints' doesn't exist",
        ] {
            let found = table_problem(&db_error(message));
            assert!(
                matches!(found, Some(Error::CheckpointTableMissing { .. })),
                "{message}"
            );
        }
        for message in [
            "no such column: query_fingerprint",
            "column \"query_fingerprint\" does not exist",
            "Unknown column 'query_fingerprint' in 'field list'",
        ] {
            let found = table_problem(&db_error(message));
            assert!(
                matches!(found, Some(Error::CheckpointTableOutdated { .. })),
                "{message}"
            );
        }
        for e in [
            db_error("no such table: posts"),
            db_error("relation \"items\" does not exist"),
            db_error("duplicate key value violates unique constraint \"chunked_checkpoints_pkey\""),
            DieselError::NotFound,
        ] {
            assert!(table_problem(&e).is_none(), "{e}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"日".repeat(255)).is_ok());
        assert!(check_name("with space and / slash").is_ok());
        for bad in [
            String::new(),
            "x".repeat(256),
            "nul\0".into(),
            "tab\t".into(),
            "del\u{7f}".into(),
            "c1\u{85}".into(),
        ] {
            let err = check_name(&bad).unwrap_err();
            assert!(
                matches!(&err, crate::Error::InvalidCheckpointName { name, .. } if *name == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn totals_above_bigint_are_refused() {
        assert_eq!(bigint(0, "rows").unwrap(), 0);
        assert_eq!(bigint(i64::MAX as u64, "rows").unwrap(), i64::MAX);
        let err = bigint(i64::MAX as u64 + 1, "rows").unwrap_err();
        assert!(matches!(err, DieselError::SerializationError(_)), "{err}");
    }

    /// The module docs and the writes guide show the statements `create_table` runs.
    #[test]
    fn documented_ddl_is_the_ddl() {
        let module_docs: String = include_str!("checkpoint.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let guide = include_str!("guide/writes.md");
        for ddl in [
            CREATE_TABLE_SQLITE,
            CREATE_TABLE_POSTGRES,
            CREATE_TABLE_MYSQL,
        ] {
            assert!(module_docs.contains(ddl), "module docs lack:\n{ddl}");
            assert!(guide.contains(ddl), "src/guide/writes.md lacks:\n{ddl}");
        }
    }
}
