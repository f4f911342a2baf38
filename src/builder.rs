//! The scan builder, [`Chunked`], and the methods that run it, [`RunChunkedDsl`].

use std::time::Duration;

use diesel::backend::Backend;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::LoadQuery;
use diesel::{Connection, RunQueryDsl};

use crate::backend::KeysetBackend;
use crate::engine::ScanConfig;
use crate::error::Error;
use crate::key::Key;
use crate::plan::{
    self, CountQuery, KeyColumns, Partition, PartitionQuery, PartitionRow, PreparePlan,
};
use crate::predicate::Bounds;
use crate::source::ConnectionSource;
use crate::stored::StoredKey;
use crate::unique::UniqueIndexes;
use crate::write::WriteConfig;

mod run;

#[cfg(feature = "async")]
pub use run::KeyedBase;
pub use run::{KeyedBatches, KeyedIter, ModelBase, ModelBatches, ModelIter, RunChunkedDsl};

/// The default number of rows per query, as in django-chunked-iterator.
pub const DEFAULT_BATCH_SIZE: u64 = 1000;

/// A query to be scanned in key order, one `LIMIT`ed query at a time.
///
/// Made by [`chunked_by`](crate::ChunkedDsl::chunked_by); configured with the
/// methods below; run with [`RunChunkedDsl`]'s `load_iter` / `load_batches`.
/// Nothing runs until the iterator is advanced.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// let titles: Vec<String> = posts::table
///     .filter(posts::published.eq(true))
///     .chunked_by(posts::id)
///     .batch_size(2)      // SELECT … WHERE published AND id > ? ORDER BY id LIMIT 2
///     .desc()             // … id < ? ORDER BY id DESC …
///     .limit_total(2)     // stop after 2 rows
///     .load_iter::<Post>(conn)
///     .map(|p| p.map(|p| p.title))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(titles, ["five", "three"]);
/// # Ok(()) }
/// ```
#[must_use = "a chunked query does nothing until `load_iter` or `load_batches` runs it"]
pub struct Chunked<Q, K: Key> {
    pub(crate) query: Q,
    pub(crate) key: K,
    batch_size: u64,
    limit_total: Option<u64>,
    desc: bool,
    start_after: Option<StoredKey<K::Value>>,
    end_at: Option<StoredKey<K::Value>>,
    max_retries: Option<u32>,
    cache_statements: bool,
    within: Option<Partition<K::Value>>,
    pub(crate) allow_sort: bool,
    prefetch: usize,
    pub(crate) write: WriteConfig,
}

impl<Q: Clone, K: Key> Clone for Chunked<Q, K> {
    fn clone(&self) -> Self {
        Self {
            query: self.query.clone(),
            key: self.key,
            batch_size: self.batch_size,
            limit_total: self.limit_total,
            desc: self.desc,
            start_after: self.start_after.clone(),
            end_at: self.end_at.clone(),
            max_retries: self.max_retries,
            cache_statements: self.cache_statements,
            within: self.within.clone(),
            allow_sort: self.allow_sort,
            prefetch: self.prefetch,
            write: self.write.clone(),
        }
    }
}

impl<Q, K: Key> Chunked<Q, K> {
    pub(crate) fn new(query: Q, key: K) -> Self {
        Self {
            query,
            key,
            batch_size: DEFAULT_BATCH_SIZE,
            limit_total: None,
            desc: false,
            start_after: None,
            end_at: None,
            max_retries: None,
            cache_statements: true,
            within: None,
            allow_sort: false,
            prefetch: 0,
            write: WriteConfig::default(),
        }
    }

    /// Rows per query (the `LIMIT`); 1000 by default.
    ///
    /// `batch_size(0)` is not a panic: the first `next()` returns
    /// [`Error::InvalidBatchSize`](crate::Error::InvalidBatchSize) and runs no query.
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = n;
        self
    }

    /// At most `n` rows in all. The last query asks only for what is left
    /// (`LIMIT` shrinks), and no query runs once `n` rows were loaded;
    /// `limit_total(0)` runs none.
    pub fn limit_total(mut self, n: u64) -> Self {
        self.limit_total = Some(n);
        self
    }

    /// Scans in descending key order: `WHERE key < $last ORDER BY key DESC`.
    pub fn desc(mut self) -> Self {
        self.desc = true;
        self
    }

    /// Scans in ascending key order (the default).
    pub fn asc(mut self) -> Self {
        self.desc = false;
        self
    }

    /// Starts after `key`, exclusively: rows with a key greater than `key`
    /// (less than `key` for [`desc`](Self::desc)).
    ///
    /// Pass the [`last_key`](crate::LoadIter::last_key) of an interrupted scan to
    /// resume it with exactly the next row, or its
    /// [`last_stored_key`](crate::LoadIter::last_stored_key), which is exact
    /// also for key columns that SQLite holds in a format other than Diesel's.
    pub fn start_after(mut self, key: impl Into<StoredKey<K::Value>>) -> Self {
        self.start_after = Some(key.into());
        self
    }

    /// Ends at `key`, inclusively: rows with a key up to and including `key`
    /// (down to it for [`desc`](Self::desc)).
    pub fn end_at(mut self, key: impl Into<StoredKey<K::Value>>) -> Self {
        self.end_at = Some(key.into());
        self
    }

    /// How often a batch that failed for a transient reason (the connection broke,
    /// the pool timed out, SQLite answered `database is locked`) is run again; 0
    /// disables retries. The default is 3 for pools and 0 for a borrowed
    /// connection, which cannot be replaced. Other errors are returned at once.
    ///
    /// A batch gets `n + 1` attempts. Before each retry the scan sleeps between
    /// half and all of 5, 10, 20, 40, 80, then 100 ms: at most 35 ms in all for 3
    /// retries, 155 ms + 100 ms per retry beyond the fifth in general. Each attempt
    /// may also wait up to the pool's `connection_timeout` for a connection. A
    /// retry pings the pooled connection it is given and replaces a dead one
    /// (up to the pool's `max_size` + 1 times) without counting an attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Whether the connection may keep the batch statement prepared (the default),
    /// or must send it unnamed each time.
    ///
    /// Every batch of a scan has the same SQL, so by default the connection
    /// prepares it once and only binds new values for the next batches (Diesel's
    /// prepared statement cache). `cache_statements(false)` sends each batch as an
    /// unnamed statement instead: on PostgreSQL it is parsed, bound and run in one
    /// round trip, so it needs no state on the server connection between batches.
    ///
    /// That is what a pooler in transaction mode needs, such as pgbouncer before
    /// 1.21, or later versions without `max_prepared_statements`: it hands each
    /// transaction (each batch) to any server connection, where a statement
    /// prepared on another one does not exist. The connection-wide alternative is
    /// Diesel's `conn.set_prepared_statement_cache_size(CacheSize::Disabled)`; see
    /// the README's section on poolers.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let n = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .cache_statements(false)
    ///     .load_iter::<Post>(conn)
    ///     .count();
    /// assert_eq!(n, 5);
    /// # Ok(()) }
    /// ```
    pub fn cache_statements(mut self, on: bool) -> Self {
        self.cache_statements = on;
        self
    }

    /// Reads up to `n` batches ahead of the one being handed out, so that the
    /// next batch's statement runs while you work through this one: the pause
    /// between one batch's last row and the next batch's first (a round trip
    /// and the start of a statement) is hidden behind your work. Off (`0`) by
    /// default; at most 16 (else the first item is
    /// [`Error::InvalidPrefetch`](crate::Error::InvalidPrefetch)).
    ///
    /// What you get does not change: the same rows in the same order, the
    /// same checks and retries, and `last_key()` is still the key of the last
    /// row *handed out*, not of the last one loaded. What changes is memory
    /// (up to `n` more batches) and when statements run (a batch may be
    /// loaded before you ask for it, and is lost unread if you stop early).
    ///
    /// - **Async streams** (`load_stream`, `load_batches_stream`) on a
    ///   connection you lend them read ahead on it: the next batch's statement
    ///   starts as soon as a batch arrives (the batch is in memory, so the
    ///   connection is free) and is polled as its rows are handed out (every
    ///   64 rows). Not on a pool: a batch loading ahead would hold one of its
    ///   connections while your code runs, and a loop body that needs the
    ///   pool's last connection would wait for ever. Not on MySQL/MariaDB: a
    ///   stream dropped early drops the statement it started ahead, and
    ///   diesel-async's MySQL connection is not usable after that (its next
    ///   statement reads no rows).
    /// - **Blocking iterators** need a thread to overlap with your loop:
    ///   [`LoadIter::on_thread`](crate::LoadIter::on_thread) moves the scan to
    ///   a thread of its own that reads `n` batches ahead (at least one). That
    ///   takes a source the thread can own, such as an r2d2 pool by value
    ///   (`pool.clone()`). Without `on_thread` a blocking iterator reads
    ///   nothing ahead: on a connection you lend it there is nothing to
    ///   overlap with. Dropping the iterator returns at once; its thread
    ///   stops after the batch it is loading.
    ///
    /// `progress()` counts the rows handed out, and the batches and queries
    /// as of the last batch handed out. Write jobs do not read ahead: each
    /// batch is one transaction that reads its keys after the previous one
    /// committed (an invalid `n` is still an error there).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let path = std::env::temp_dir().join(format!("doc-prefetch-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let pool = Pool::new(ConnectionManager::<SqliteConnection>::new(&url))?;
    /// let mut ids = Vec::new();
    /// // batch 2 is loaded on the scan's thread while the loop works through batch 1
    /// let mut it = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .prefetch(1)
    ///     .load_iter::<Post>(pool.clone())
    ///     .on_thread();
    /// for post in it.by_ref().take(3) {
    ///     ids.push(post?.id);
    /// }
    /// assert_eq!(ids, [1, 2, 3]);
    /// assert_eq!(it.last_key(), Some(&3)); // handed out, not loaded
    /// # drop(it);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Write jobs: waits `d` after every committed batch but the last, so that
    /// replicas and other writers keep up (as pt-archiver's `--sleep`). Adds to
    /// what a [`throttle`](Self::throttle) closure asks for, the sum capped at
    /// `Duration::MAX`.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .pause(Duration::from_millis(1))
    ///     .update_all(conn, posts::title.eq("x"))?;
    /// assert_eq!((report.rows, report.batches), (5, 3));
    /// # Ok(()) }
    /// ```
    pub fn pause(mut self, d: Duration) -> Self {
        self.write.pause = Some(d);
        self
    }

    /// Write jobs: after every committed batch, asks `f` how long to wait
    /// before the next one (`None`: no wait), given the batch's
    /// [`BatchStats`](crate::BatchStats): wait on replication lag, load, or a
    /// rate limit.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .throttle(|stats| (stats.duration > Duration::from_secs(1)).then(|| stats.duration))
    ///     .delete_all(conn)?;
    /// # Ok(()) }
    /// ```
    pub fn throttle<F>(mut self, f: F) -> Self
    where
        F: Fn(&crate::BatchStats) -> Option<Duration> + Send + Sync + 'static,
    {
        self.write.throttle = Some(std::sync::Arc::new(f));
        self
    }

    /// Write jobs: reads health signal `signal` between batches and waits
    /// while it is over its limit or cannot be read (see
    /// [`health`](crate::health): replica lag, load, undo history,
    /// autovacuum, or a [`Signal`](crate::health::Signal) of your own). Each
    /// call adds a signal; the job goes on only when all of them say so.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::health::{self, Reading, Signal};
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// struct Calm;
    /// impl Signal for Calm {
    ///     fn name(&self) -> String { "calm".into() }
    ///     fn read(&self) -> Result<Vec<Reading>, String> { Ok(vec![Reading::new("here", 0.0, 1.0)]) }
    /// }
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .throttle_on(Calm)
    ///     .update_all(&mut *conn, posts::published.eq(true))?;
    /// assert!(report.waits.is_empty());
    ///
    /// // SQLite has no replicas: a signal that does not exist stops the job before its first batch.
    /// let err = posts::table
    ///     .chunked_by(posts::id)
    ///     .throttle_on(health::replica_lag(Duration::from_secs(2)))
    ///     .update_all(conn, posts::published.eq(false))
    ///     .unwrap_err();
    /// assert!(matches!(err, diesel_chunked_iterator::Error::HealthUnsupported { .. }));
    /// # Ok(()) }
    /// ```
    pub fn throttle_on(mut self, signal: impl Into<crate::health::Health>) -> Self {
        self.write.health.push(signal.into());
        self
    }

    /// Write jobs: reads the [`throttle_on`](Self::throttle_on) signals at
    /// most once per `d` while they let the job go on (before the first
    /// batch always), and every `d` while one says wait (at least 50 ms).
    /// Default 1 s.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() {
    /// let job = posts::table.chunked_by(posts::id).health_interval(Duration::from_millis(250));
    /// # }
    /// ```
    pub fn health_interval(mut self, d: Duration) -> Self {
        self.write.health_interval = Some(d);
        self
    }

    /// Write jobs: how long a [`throttle_on`](Self::throttle_on) signal may
    /// stay unreadable (the job waiting meanwhile) before the job stops with
    /// [`Error::HealthUnreadable`](crate::Error::HealthUnreadable). Default
    /// 60 s.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() {
    /// let job = posts::table.chunked_by(posts::id).unreadable_limit(Duration::from_secs(15));
    /// # }
    /// ```
    pub fn unreadable_limit(mut self, d: Duration) -> Self {
        self.write.unreadable_limit = Some(d);
        self
    }

    /// Write jobs with a [`checkpoint`](Self::checkpoint): each batch's
    /// `COMMIT` returns without waiting for its log to reach the disk, which
    /// saves a flush per batch (on the write bench, about a third of a
    /// 1000-row batch's time on PostgreSQL). PostgreSQL: `SET LOCAL
    /// synchronous_commit = off` in the batch's transaction. SQLite in WAL
    /// mode: `PRAGMA synchronous = NORMAL` before the batch's transaction
    /// (SQLite cannot change it inside one) and the connection's own setting
    /// back after it; in other journal modes, where `NORMAL` is not safe, as
    /// without it.
    ///
    /// Still exactly once: the batch's rows and its checkpoint commit in one
    /// transaction, so a server crash that loses the last batches' commits
    /// (at most about three times `wal_writer_delay`, 600 ms by default) loses
    /// their checkpoint advances with them, and the job run again redoes
    /// exactly those batches. On PostgreSQL the batch that ends the job (no
    /// rows left, or [`limit_total`](Self::limit_total) reached) waits for
    /// its flush (`SET LOCAL synchronous_commit = on` before its `COMMIT`),
    /// and with it for every batch's before: a job that returned its report
    /// has every batch on disk. When that batch's `COMMIT` is lost with the
    /// connection and no retry is left, the job stops with the error, even
    /// when the batch was empty. What you give up: a job that stopped before
    /// its end (an error, or [`Control::cancel`](crate::Control::cancel))
    /// may, after a server crash, have to run its last batches again, and
    /// other sessions may have seen rows before they were durable. On SQLite
    /// every batch commits relaxed, the last one too (the setting cannot
    /// change inside the batch's transaction, where the job learns that the
    /// batch is its last): a relaxed commit there can be lost only by a power
    /// loss or an operating system crash (not by a crash of the process), and
    /// reaches the disk at the WAL's next checkpoint or the next commit that
    /// waits, so after such a crash even a job that reported its end may have
    /// to run its last batches again. Without a
    /// checkpoint the job stops before its first batch with
    /// [`Error::AsyncCommit`](crate::Error::AsyncCommit); MySQL/MariaDB (whose
    /// log flush is the global `innodb_flush_log_at_trx_commit`) run their
    /// batches as without it.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::{checkpoint, prelude::*, Error};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let err = posts::table
    ///     .chunked_by(posts::id)
    ///     .async_commit()
    ///     .update_all(&mut *conn, posts::published.eq(true))
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::AsyncCommit { .. }));
    /// checkpoint::create_table(&mut *conn)?;
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .checkpoint("publish-all")
    ///     .async_commit()
    ///     .update_all(&mut *conn, posts::published.eq(true))?;
    /// assert!(report.done);
    /// # Ok(()) }
    /// ```
    pub fn async_commit(mut self) -> Self {
        self.write.async_commit = true;
        self
    }

    /// [`copy_into`](crate::RunChunkedDsl::copy_into),
    /// [`move_into`](crate::RunChunkedDsl::move_into),
    /// [`copy_to`](crate::TransferDsl::copy_to) and
    /// [`move_to`](crate::TransferDsl::move_to): a row whose key (or any other
    /// unique value) the destination already holds is skipped, not an error;
    /// the destination's row stays as it was, and a move deletes the source's
    /// row all the same. Diesel's `on_conflict_do_nothing` semantics: each
    /// batch's `INSERT` ends with `ON CONFLICT DO NOTHING` (PostgreSQL,
    /// SQLite) or `ON DUPLICATE KEY UPDATE <first column> = <first column>`
    /// (MySQL/MariaDB, where `INSERT IGNORE` would also let through values a
    /// column cannot hold). Without it (the default) such a row fails its
    /// batch with the database's unique violation, and the batch rolls back.
    ///
    /// The job's [`WriteReport::rows`](crate::WriteReport::rows) then counts
    /// the rows it took from the source, inserted or skipped (MySQL/MariaDB
    /// report a skipped row as written, so no backend tells them apart).
    /// The other write jobs (`update_all`, `delete_all`, `for_each_batch`)
    /// stop before their first statement with
    /// [`Error::OptionUnsupported`](crate::Error::OptionUnsupported); reads,
    /// which insert nothing, ignore it. The
    /// option is not part of the job's identity: a checkpointed copy that
    /// stopped on a conflict can be run again with it.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let mut cold = SqliteConnection::establish(":memory:")?;
    /// # diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY NOT NULL, title TEXT NOT NULL, published BOOLEAN NOT NULL)").execute(&mut cold)?;
    /// #[derive(Queryable, Selectable, Insertable)]
    /// #[diesel(table_name = posts)]
    /// struct Row { id: i32, title: String, published: bool }
    /// diesel::sql_query("INSERT INTO posts VALUES (2, 'kept', 0)").execute(&mut cold)?;
    ///
    /// // INSERT INTO posts (id, title, published) VALUES (..), (..) ON CONFLICT DO NOTHING
    /// let report = posts::table
    ///     .chunked_by(posts::id)
    ///     .on_conflict_do_nothing()
    ///     .copy_to::<Row>(&mut *conn, &mut cold, posts::table)?;
    /// assert_eq!(report.rows, 5); // 4 inserted, 1 skipped
    /// let kept: String = posts::table.find(2).select(posts::title).get_result(&mut cold)?;
    /// assert_eq!(kept, "kept");
    /// # Ok(()) }
    /// ```
    pub fn on_conflict_do_nothing(mut self) -> Self {
        self.write.skip_conflicts = true;
        self
    }

    /// Write jobs: sizes each batch toward taking `d`, starting from
    /// [`batch_size`](Self::batch_size), every batch (the first included) within
    /// [`min_batch_size`](Self::min_batch_size) (default 1) and
    /// [`max_batch_size`](Self::max_batch_size) (default 10 × `batch_size`;
    /// a minimum above the maximum wins).
    ///
    /// The rule (as GitLab's batched migrations): the time per row is smoothed
    /// over the batches (each new one weighs half); the ideal next size is
    /// `d / time per row`; the next size is that, but at most 1.2 × and at
    /// least 0.5 × the last one, so it grows slowly and shrinks fast.
    pub fn target_batch_time(mut self, d: Duration) -> Self {
        self.write.target_batch_time = Some(d);
        self
    }

    /// The smallest batch [`target_batch_time`](Self::target_batch_time) may
    /// choose.
    pub fn min_batch_size(mut self, n: u64) -> Self {
        self.write.min_batch_size = Some(n);
        self
    }

    /// The largest batch [`target_batch_time`](Self::target_batch_time) may
    /// choose.
    pub fn max_batch_size(mut self, n: u64) -> Self {
        self.write.max_batch_size = Some(n);
        self
    }

    /// Write jobs: keeps the job's position in the checkpoint table under
    /// `name`, written in each batch's own transaction. Run the job again with
    /// the same name and it continues right after its last committed batch; a
    /// finished job does nothing; [`checkpoint::reset`](crate::checkpoint::reset)
    /// starts it over. Create the table once with
    /// [`checkpoint::create_table`](crate::checkpoint::create_table).
    ///
    /// The name belongs to one job: its key, its query (filters and their
    /// values), its kind (`update_all` and its changes, `delete_all`,
    /// `for_each_batch`) and its bounds. A run of another job under the name is
    /// [`Error::CheckpointMismatch`] before it writes anything (see [what
    /// identifies a job](crate::checkpoint#what-identifies-a-job)). A name that
    /// is empty, longer than 255 characters or holds a control character is
    /// [`Error::InvalidCheckpointName`] when the job starts, before any
    /// statement (see [`checkpoint::check_name`](crate::checkpoint::check_name)).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::{checkpoint, prelude::*};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// checkpoint::create_table(conn)?;
    /// let job = || posts::table.chunked_by(posts::id).batch_size(2).checkpoint("retitle");
    /// let first = job().limit_total(2).update_all(&mut *conn, posts::title.eq("x"))?;
    /// assert_eq!((first.rows, first.done), (2, false));
    /// let rest = job().update_all(&mut *conn, posts::title.eq("x"))?;
    /// assert_eq!((rest.rows, rest.resumed_after, rest.done), (3, Some(2), true));
    /// assert_eq!(job().update_all(&mut *conn, posts::title.eq("x"))?.batches, 0);
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(mut self, name: impl Into<String>) -> Self {
        self.write.checkpoint = Some(name.into());
        self
    }

    /// Write jobs: a handle to pause, resume or cancel this job, or change
    /// its batch size or pause, from another thread or task while it runs
    /// (see [`Control`](crate::Control)). Every call returns a handle to the
    /// same job (and to the clones of this builder).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let job = posts::table.chunked_by(posts::id).batch_size(2);
    /// let control = job.control();
    /// let worker = std::thread::spawn(move || {
    ///     // control.pause(); control.resume(); control.set_batch_size(500)?; control.cancel();
    ///     control.set_batch_size(3)
    /// });
    /// worker.join().unwrap()?;
    /// let report = job.update_all(conn, posts::published.eq(true))?;
    /// assert_eq!((report.batches, report.batch_size), (2, 3));
    /// # Ok(()) }
    /// ```
    pub fn control(&self) -> crate::Control {
        self.write.control.clone()
    }

    /// Write jobs: tells `observer` of each committed batch and each retry
    /// (see [`WriteObserver`](crate::WriteObserver); a later call replaces
    /// an earlier one).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// use diesel_chunked_iterator::{BatchStats, WriteObserver};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// struct Log;
    /// impl WriteObserver for Log {
    ///     fn on_batch(&self, stats: &BatchStats) {
    ///         println!("batch {}: {} rows in {:?}", stats.batch, stats.rows, stats.duration);
    ///     }
    /// }
    /// posts::table.chunked_by(posts::id).observe(Log).delete_all(conn)?;
    /// # Ok(()) }
    /// ```
    pub fn observe(mut self, observer: impl crate::WriteObserver) -> Self {
        self.write.observer = Some(std::sync::Arc::new(observer));
        self
    }

    /// Restricts the scan to one slice of the key range: the rows with
    /// `partition.start_after < key <= partition.end_at`, in either direction.
    ///
    /// On an ascending scan this is `start_after(..)` and `end_at(..)`; both can
    /// still be set as well (to resume inside a slice, say), and every bound
    /// applies.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let parts = posts::table.chunked_by(posts::id).partitions(2, conn)?;
    /// let second: Vec<i32> = posts::table
    ///     .chunked_by(posts::id)
    ///     .within(&parts[1])  // WHERE posts.id > 3
    ///     .desc()             // ORDER BY posts.id DESC
    ///     .load_iter::<Post>(conn)
    ///     .map(|p| p.map(|p| p.id))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(second, [5, 4]);
    /// # Ok(()) }
    /// ```
    pub fn within(mut self, partition: &Partition<K::Value>) -> Self {
        self.within = Some(partition.clone());
        self
    }

    /// Splits the key range of the query into `n` disjoint slices that together
    /// cover it, holding equal numbers of rows (to one row), in one query.
    ///
    /// The query's filters and the scan's bounds decide which rows are counted;
    /// hand each slice to a worker, which scans it with
    /// [`within`](Self::within) on the same query. The outer ends of the first
    /// and the last slice are the scan's own bounds (`start_after`, `end_at`, a
    /// `within` slice), so a slice carries every bound it needs; where the scan
    /// has none, they are open, and rows inserted later at either end are still
    /// covered. With fewer than `n` rows there is one slice per row (and one
    /// slice for no rows at all). A descending scan with `start_after` or
    /// `end_at` cannot be partitioned (its ends are inclusive at the bottom),
    /// which [`Error::PartitionBounds`] says: partition the ascending scan, and
    /// scan each slice with `.within(&p).desc()`. The statement is in the
    /// [`plan`](crate::plan) module's docs: window functions over the key, one
    /// pass over the key's index, `n` rows back.
    ///
    /// `n = 0` and `n` above [`MAX_PARTITIONS`](crate::plan::MAX_PARTITIONS) are
    /// [`Error::InvalidPartitionCount`]. [`limit_total`](Self::limit_total) does
    /// not limit the rows that are split (each worker's scan applies it). A query
    /// with `.group_by(..)` is a compile error here (scanning it works).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let parts = posts::table.chunked_by(posts::id).partitions(2, conn)?;
    /// assert_eq!(parts.len(), 2);
    /// assert_eq!((parts[0].start_after, parts[0].end_at, parts[0].rows), (None, Some(3), 3));
    /// assert_eq!((parts[1].start_after, parts[1].end_at, parts[1].rows), (Some(3), None, 2));
    ///
    /// // every slice scanned: each row exactly once
    /// let mut ids = Vec::new();
    /// for p in &parts {
    ///     for post in posts::table.chunked_by(posts::id).within(p).load_iter::<Post>(&mut *conn) {
    ///         ids.push(post?.id);
    ///     }
    /// }
    /// assert_eq!(ids, [1, 2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn partitions<'a, C>(
        self,
        n: usize,
        conn: &mut C,
    ) -> Result<Vec<Partition<K::Value>>, Error>
    where
        C: Connection,
        C::Backend: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        PartitionQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>, K>:
            LoadQuery<'a, C, PartitionRow<K>>,
    {
        let (statement, finish) = self.partition_statement::<C::Backend>(n)?;
        finish.slices(statement.load(conn))
    }

    /// The statement of [`partitions`](Self::partitions) and what turns its
    /// rows into slices (shared by the async twin).
    pub(crate) fn partition_statement<'a, DB>(
        self,
        n: usize,
    ) -> Result<plan::PartitionStatement<KeyPlan<'a, Q, K, DB>, K>, Error>
    where
        DB: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, DB>,
    {
        let count = match i64::try_from(n) {
            Ok(c) if c > 0 && n <= plan::MAX_PARTITIONS => c,
            _ => return Err(Error::InvalidPartitionCount { n }),
        };
        let bounds = self.bounds();
        let ends = plan::outer_ends::<K>(&bounds)?;
        let key = self.key;
        let inner = self
            .query
            .prepare_plan(self.key, bounds, plan::key_columns(self.key))?;
        Ok((
            plan::partition_query::<_, K>(inner, count),
            plan::Slicing { key, ends },
        ))
    }

    /// How many rows the scan will yield, for a progress bar: cheap where the
    /// backend has an estimate, exact otherwise.
    ///
    /// On PostgreSQL this is the planner's estimate for the scan's query
    /// (`EXPLAIN`, the top node's row count): nothing is scanned, and it is only
    /// as good as the table's statistics (`ANALYZE`). On SQLite and MariaDB/MySQL,
    /// whose plans carry no usable row estimate for a filtered query, it is an
    /// exact `SELECT COUNT(*)` over the scan's query, which reads the matching
    /// keys. Either way the query's filters and the scan's bounds apply, and the
    /// result is capped by [`limit_total`](Self::limit_total).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let published = posts::table.filter(posts::published.eq(true)).chunked_by(posts::id);
    /// assert_eq!(published.estimate_total(conn)?, 3); // SQLite: an exact count
    /// # Ok(()) }
    /// ```
    pub fn estimate_total<'a, C>(self, conn: &mut C) -> Result<u64, Error>
    where
        C: Connection,
        C::Backend: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        CountQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>>: LoadQuery<'a, C, String>,
    {
        let (statement, cap) = self.count_statement::<C::Backend>()?;
        plan::estimate::<C::Backend>(statement.get_result(conn), cap)
    }

    /// The statement of [`estimate_total`](Self::estimate_total) and the
    /// scan's `limit_total` (shared by the async twin).
    pub(crate) fn count_statement<'a, DB>(
        self,
    ) -> Result<plan::CountStatement<KeyPlan<'a, Q, K, DB>>, Error>
    where
        DB: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, DB>,
    {
        let bounds = self.bounds();
        let cap = self.limit_total;
        let inner = self
            .query
            .prepare_plan(self.key, bounds, plan::key_columns(self.key))?;
        Ok((plan::count_query::<_, DB>(inner), cap))
    }

    /// Checks the schema: succeeds if no two rows of the query can share a key
    /// value, as far as the database's primary keys and unique indexes show.
    ///
    /// A scan also stops with [`Error::DuplicateKey`] when two rows of one batch
    /// share a key, but it cannot see a run of equal keys that starts exactly at a
    /// batch boundary; this check can, before the scan.
    ///
    /// - **One table:** the table must have a primary key or unique index whose
    ///   columns are all key columns, else [`Error::NotUnique`]. The table is
    ///   looked up under its SQL name (`#[sql_name]` included) and in its own
    ///   schema (`table! { other.items … }`), or where the connection finds an
    ///   unqualified name.
    /// - **Joins:** the key must also pin down every joined table: a joined
    ///   table is pinned when the key covers one of its unique column sets, or
    ///   when its join condition equates each column of one of its unique sets
    ///   with a constant or a column of a table already pinned
    ///   (`posts INNER JOIN users ON posts.user_id = users.id` pins `users` once
    ///   `posts` is). Otherwise one row can meet several rows of that table and
    ///   the key repeats: [`Error::NotUniqueOverQuery`] names the table and says
    ///   which key to add. A query the check cannot read (a `RIGHT JOIN`, a
    ///   subquery in `FROM`, a `UNION`, …) is that error too, never a false `Ok`.
    /// - **Key types:** a key column the database cannot order and compare
    ///   consistently is [`Error::UnsupportedKey`] (see
    ///   [`UniqueIndexes::key_column_problem`]), and so is a text key that is
    ///   unique only through an index in another collation than it is compared
    ///   in (SQLite, PostgreSQL: a `NOCASE` or nondeterministic column whose
    ///   unique index is binary).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::{prelude::*, Error};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// posts::table.chunked_by(posts::id).verify_unique(conn)?;
    /// let err = posts::table.chunked_by(posts::title).verify_unique(conn).unwrap_err();
    /// assert!(matches!(err, Error::NotUnique { .. }));
    /// # Ok(()) }
    /// ```
    pub fn verify_unique<C>(&self, conn: &mut C) -> Result<(), Error>
    where
        C: UniqueIndexes,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: QueryFragment<C::Backend>,
        K::Selection: QueryFragment<C::Backend>,
    {
        let (key_sql, query_sql) = self.unique_sql::<C::Backend>();
        crate::unique::verify(
            conn,
            &self.key.names(),
            &self.key.describe(),
            key_sql,
            query_sql,
        )
    }

    /// The SQL of the key's columns and of the query, as
    /// [`verify_unique`](Self::verify_unique) reads them.
    pub(crate) fn unique_sql<DB>(&self) -> (Result<String, String>, Result<String, String>)
    where
        DB: Backend + Default,
        DB::QueryBuilder: Default,
        Q: QueryFragment<DB>,
        K::Selection: QueryFragment<DB>,
    {
        fn render<DB, T>(fragment: &T) -> Result<String, String>
        where
            DB: Backend + Default,
            DB::QueryBuilder: Default,
            T: QueryFragment<DB>,
        {
            use std::fmt::Write;
            let mut sql = String::new();
            write!(sql, "{}", diesel::debug_query::<DB, _>(fragment))
                .map_err(|_| "Diesel could not render it".to_string())?;
            Ok(sql)
        }
        (
            render::<DB, _>(&self.key.selection()),
            render::<DB, _>(&self.query),
        )
    }

    pub(crate) fn bounds(&self) -> Bounds<K::Value> {
        let mut bounds = Bounds {
            after: self.start_after.clone(),
            until: self.end_at.clone(),
            lower: None,
            upper: None,
            desc: self.desc,
            probe: false,
            cache: self.cache_statements,
            only: None,
        };
        if let Some(Partition {
            start_after: lower,
            end_at: upper,
            ..
        }) = self.within.clone()
        {
            // Ascending, a slice's ends are the scan's own bounds when those are
            // free, so `within` renders exactly as `start_after`/`end_at`.
            let asc = !self.desc;
            match lower.map(StoredKey::from) {
                Some(v) if asc && bounds.after.is_none() => bounds.after = Some(v),
                v => bounds.lower = v,
            }
            match upper.map(StoredKey::from) {
                Some(v) if asc && bounds.until.is_none() => bounds.until = Some(v),
                v => bounds.upper = v,
            }
        }
        bounds
    }

    pub(crate) fn config(&self) -> ScanConfig {
        ScanConfig {
            batch_size: self.batch_size,
            limit_total: self.limit_total,
            max_retries: self.max_retries,
            cache_statements: self.cache_statements,
            allow_sort: self.allow_sort,
            prefetch: self.prefetch,
        }
    }
}

/// The prepared query of a planning method on query `Q` with selection `X`.
pub type PlanInner<'a, Q, K, X, DB> = <Q as PreparePlan<'a, K, X, DB>>::Inner;

/// The inner query of the planning statements that select the key's columns.
pub(crate) type KeyPlan<'a, Q, K, DB> = PlanInner<'a, Q, K, KeyColumns<K>, DB>;

/// The backend a connection source talks to.
pub type Db<S> = <<S as ConnectionSource>::Connection as Connection>::Backend;

impl<Q, K: Key> std::fmt::Debug for Chunked<Q, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunked")
            .field("key", &self.key.describe())
            .field("batch_size", &self.batch_size)
            .field("limit_total", &self.limit_total)
            .field("desc", &self.desc)
            .field("start_after", &self.start_after)
            .field("end_at", &self.end_at)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}
