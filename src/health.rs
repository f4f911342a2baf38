//! Throttling on the database's own health: replica lag, load, undo history,
//! autovacuum. A write job given signals with
//! [`throttle_on`](crate::Chunked::throttle_on) reads them between batches
//! (at most once per [`health_interval`](crate::Chunked::health_interval),
//! default 1 s), and while any says wait, it waits, holding no transaction and
//! no connection, then reads them again. Each wait is in the report
//! ([`WriteReport::waits`](crate::WriteReport::waits)), in the next batch's
//! [`BatchStats::waited`](crate::BatchStats::waited) and, with the `tracing`
//! feature, an event `chunked_health_wait` at each reading that says wait
//! (signal, source, value, limit, or why it is unreadable) and the fields
//! `waited_ms` and `waited_for` (the waits, as they display) of the batch's
//! span. A replica or a custom signal that does not answer within 10 s is
//! unreadable.
//!
//! **Fail safe.** A signal that cannot be read (replica unreachable,
//! permission denied, replication stopped, no standby connected) is a reason
//! to wait too; once it has been unreadable for
//! [`unreadable_limit`](crate::Chunked::unreadable_limit) (default 60 s) the
//! job stops with [`Error::HealthUnreadable`](crate::Error::HealthUnreadable),
//! its last batch committed and its checkpoint ready to resume. A signal that
//! does not exist on the job's backend stops it before its first batch with
//! [`Error::HealthUnsupported`](crate::Error::HealthUnsupported).
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "r2d2"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # diesel::table! { posts (id) { id -> Integer, flag -> Bool, } }
//! use std::time::Duration;
//! use diesel::prelude::*;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel_chunked_iterator::health;
//! use diesel_chunked_iterator::prelude::*;
//!
//! let pool = Pool::new(ConnectionManager::<PgConnection>::new("postgres://primary/app"))?;
//! let report = posts::table
//!     .chunked_by(posts::id)
//!     .checkpoint("backfill-2026-12")
//!     .throttle_on(health::replica_lag(Duration::from_secs(2))) // every standby, read on the primary
//!     .throttle_on(health::pg_autovacuum_on_table())
//!     .update_all(&pool, posts::flag.eq(true))?;
//! for wait in &report.waits {
//!     println!("{wait}"); // replica_lag: standby1: 3.4 s > 2 s, waited 7.1 s before batch 12
//! }
//! # Ok(()) }
//! # #[cfg(not(all(feature = "postgres", feature = "r2d2")))]
//! # fn main() {}
//! ```
//!
//! # The signals and what they read
//!
//! | signal | PostgreSQL | MySQL / MariaDB |
//! |---|---|---|
//! | [`replica_lag`] | on the job's source (the primary): `replay_lag` of every row of `pg_stat_replication` (it keeps growing while a standby's replay is stuck; a `NULL` is 0 only for a streaming standby that has replayed all WAL, else unreadable), and every inactive physical slot of `pg_replication_slots` is unreadable (its standby is gone); on a standby named with [`on`](Health::on): `now() - pg_last_xact_replay_timestamp()`, 0 when all WAL received is replayed, unreadable when its WAL receiver is not streaming | on each replica named with [`on`](Health::on): `Seconds_Behind_Master` of `SHOW SLAVE STATUS` (MySQL 8.4: `Seconds_Behind_Source` of `SHOW REPLICA STATUS`), each row (replication channel) a reading; `NULL` (a replication thread stopped) is unreadable |
//! | [`replica_lag_bytes`] | on the primary: `pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)` per standby (inactive physical slots are unreadable); on a standby: WAL received but not replayed | not available |
//! | [`mysql_threads_running`] | not available | `SHOW GLOBAL STATUS LIKE 'Threads_running'` (the probe itself is one of them) |
//! | [`mysql_history_list_length`] | not available | `information_schema.INNODB_METRICS`, `trx_rseg_history_len` (enabled by default; a disabled counter is unreadable) |
//! | [`pg_autovacuum_on_table`] | autovacuum workers in `pg_stat_progress_vacuum` on the job's table (`to_regclass(quote_ident(<the table! name>))`, found on the connection's `search_path`); unreadable for a role without `pg_read_all_stats`, which sees no table in those rows | not available |
//! | [`replica_lag`] with [`heartbeat`](Health::heartbeat) | not available | on each replica: `UTC_TIMESTAMP(6)` minus the newest `ts` of the heartbeat table; empty, or more than 1 s in the future, is unreadable |
//!
//! SQLite has none of them. `Seconds_Behind_Master` is the age of the event
//! the replica's SQL thread is applying, by the primary's clock: it reads 0
//! while the I/O thread itself is behind (a slow network, a stopped I/O thread
//! reads as unreadable) and it is relative to the direct primary in a chain of
//! replicas. Where that matters, measure lag with a heartbeat table
//! ([`Health::heartbeat`]: the age of the newest row pt-heartbeat writes on
//! the primary, read on each replica; it keeps growing while replication is
//! stopped and counts the time events wait in the relay log).
//!
//! # Signals of your own
//!
//! A [`Signal`] reads itself (a metrics endpoint, a queue length, a table of
//! your own through a pool of its own):
//!
//! ```
//! # include!("../tests/doc/setup.rs");
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use diesel_chunked_iterator::health::{Reading, Signal};
//! use diesel_chunked_iterator::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let conn = &mut doc_connection();
//! struct QueueDepth(Arc<AtomicU64>);
//! impl Signal for QueueDepth {
//!     fn name(&self) -> String {
//!         "queue_depth".into()
//!     }
//!     fn read(&self) -> Result<Vec<Reading>, String> {
//!         let depth = self.0.load(Ordering::Relaxed) as f64;
//!         Ok(vec![Reading::new("jobs queue", depth, 1000.0)])
//!     }
//! }
//! let report = posts::table
//!     .chunked_by(posts::id)
//!     .batch_size(2)
//!     .throttle_on(QueueDepth(Arc::new(AtomicU64::new(10))))
//!     .update_all(conn, posts::published.eq(true))?;
//! assert!(report.done && report.waits.is_empty());
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod sql;

pub(crate) use sql::{Kind, Unread};

/// A health signal and its limit, as [`throttle_on`](crate::Chunked::throttle_on)
/// takes it: one of this module's functions, or a [`Signal`] of your own.
#[derive(Clone)]
pub struct Health {
    pub(crate) what: What,
    pub(crate) limit: f64,
    /// The replicas it is read on (none: the job's own source).
    pub(crate) on: Vec<Arc<dyn sql::ReadReplica>>,
    /// The heartbeat table it reads, quoted.
    pub(crate) heartbeat: String,
}

#[derive(Clone)]
pub(crate) enum What {
    Builtin(Kind),
    Custom(Arc<dyn Signal>),
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("signal", &self.name())
            .field("limit", &self.limit)
            .field("replicas", &self.on.len())
            .finish()
    }
}

impl Health {
    fn builtin(kind: Kind, limit: f64) -> Self {
        Self {
            what: What::Builtin(kind),
            limit,
            on: Vec::new(),
            heartbeat: String::new(),
        }
    }

    /// The signal's name, as waits and errors name it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::health;
    /// assert_eq!(health::replica_lag(Duration::from_secs(2)).name(), "replica_lag");
    /// ```
    pub fn name(&self) -> String {
        match &self.what {
            What::Builtin(kind) => kind.name().to_string(),
            What::Custom(s) => s.name(),
        }
    }

    /// Reads the signal on these replicas (each a pool of its own) instead of
    /// on the job's source: each replica's reading is compared with the
    /// limit, and one over it is enough to wait. MySQL/MariaDB replica lag can
    /// only be read this way; PostgreSQL's can be read either way.
    ///
    /// Implemented for `r2d2::Pool<ConnectionManager<C>>` (feature `r2d2`) of
    /// PostgreSQL and MySQL connections: a connection is asked for with a
    /// 5 s timeout, and a read that takes more than 10 s counts as
    /// unreadable, so a replica that does not answer is never a hang.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "mysql", feature = "r2d2"))]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel::MysqlConnection;
    /// use diesel_chunked_iterator::health;
    ///
    /// let replica = Pool::new(ConnectionManager::<MysqlConnection>::new("mysql://replica1/app"))?;
    /// let lag = health::replica_lag(Duration::from_secs(1)).on(&[&replica]);
    /// # Ok(()) }
    /// # #[cfg(not(all(feature = "mysql", feature = "r2d2")))]
    /// # fn main() {}
    /// ```
    pub fn on<R: Replica + Clone>(mut self, replicas: &[&R]) -> Self {
        self.on = replicas
            .iter()
            .map(|r| Arc::new((*r).clone()) as Arc<dyn sql::ReadReplica>)
            .collect();
        self
    }
}

impl Health {
    /// MySQL/MariaDB replica lag from a heartbeat table instead of
    /// `Seconds_Behind_Master`: the age of the newest `ts` in `table` (`db.table`
    /// or `table`), by the replica's UTC clock. A process on the primary must
    /// write it: pt-heartbeat `--update --utc` (its `ts` column), or your own
    /// `REPLACE INTO heartbeat (server_id, ts) VALUES (1, UTC_TIMESTAMP(6))`
    /// every second or so. The lag it reads then includes the time events
    /// wait in the relay log and in the network, and keeps growing while
    /// replication is stopped, where `Seconds_Behind_Master` reads 0 or
    /// `NULL`. Read on the replicas named with [`on`](Self::on).
    ///
    /// ```
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::health;
    /// # fn main() -> Result<(), diesel_chunked_iterator::Error> {
    /// let lag = health::replica_lag(Duration::from_secs(1)).heartbeat("percona.heartbeat")?;
    /// assert!(health::replica_lag(Duration::from_secs(1)).heartbeat("x; DROP TABLE y").is_err());
    /// # Ok(()) }
    /// ```
    pub fn heartbeat(mut self, table: &str) -> Result<Self, crate::Error> {
        let unsupported = |reason: String| crate::Error::HealthUnsupported {
            signal: self.name(),
            reason,
        };
        if !matches!(
            self.what,
            What::Builtin(Kind::ReplicaLag | Kind::HeartbeatLag)
        ) {
            return Err(unsupported(
                "only replica_lag reads a heartbeat table".into(),
            ));
        }
        self.heartbeat = sql::quote_table(table).map_err(unsupported)?;
        self.what = What::Builtin(Kind::HeartbeatLag);
        Ok(self)
    }
}

impl<S: Signal> From<S> for Health {
    fn from(signal: S) -> Self {
        Self {
            what: What::Custom(Arc::new(signal)),
            limit: 0.0,
            on: Vec::new(),
            heartbeat: String::new(),
        }
    }
}

/// Replication lag: wait while any replica is more than `max` behind. See the
/// [module docs](self) for what it reads on each backend.
///
/// ```
/// use std::time::Duration;
/// use diesel_chunked_iterator::health;
/// let lag = health::replica_lag(Duration::from_millis(1500));
/// assert_eq!(format!("{lag:?}"), r#"Health { signal: "replica_lag", limit: 1.5, replicas: 0 }"#);
/// ```
pub fn replica_lag(max: Duration) -> Health {
    Health::builtin(Kind::ReplicaLag, max.as_secs_f64())
}

/// PostgreSQL: wait while any standby has more than `max` bytes of WAL left
/// to replay.
///
/// ```
/// use diesel_chunked_iterator::health;
/// assert_eq!(health::replica_lag_bytes(64 << 20).name(), "replica_lag_bytes");
/// ```
pub fn replica_lag_bytes(max: u64) -> Health {
    Health::builtin(Kind::ReplicaLagBytes, max as f64)
}

/// MySQL/MariaDB: wait while more than `max` threads are running
/// (`Threads_running`), as gh-ost's `--max-load` and spirit do.
///
/// ```
/// use diesel_chunked_iterator::health;
/// assert_eq!(health::mysql_threads_running(32).name(), "mysql_threads_running");
/// ```
pub fn mysql_threads_running(max: u64) -> Health {
    Health::builtin(Kind::ThreadsRunning, max as f64)
}

/// MySQL/MariaDB: wait while InnoDB's history list (undo not yet purged) is
/// longer than `max`, as Vitess's throttler does.
///
/// ```
/// use diesel_chunked_iterator::health;
/// assert_eq!(health::mysql_history_list_length(1_000_000).name(), "mysql_history_list_length");
/// ```
pub fn mysql_history_list_length(max: u64) -> Health {
    Health::builtin(Kind::HistoryListLength, max as f64)
}

/// PostgreSQL: wait while autovacuum works on the job's table (the table of
/// its key's first column), as GitLab's batched background migrations do.
///
/// ```
/// use diesel_chunked_iterator::health;
/// assert_eq!(health::pg_autovacuum_on_table().name(), "pg_autovacuum_on_table");
/// ```
pub fn pg_autovacuum_on_table() -> Health {
    Health::builtin(Kind::Autovacuum, 0.0)
}

/// A health signal of your own (see the [module docs](self#signals-of-your-own)).
///
/// It is read on the job's thread (an async job reads it on tokio's blocking
/// pool), between batches, so it should answer within a second or so.
pub trait Signal: Send + Sync + 'static {
    /// Its name in waits and errors.
    fn name(&self) -> String;

    /// Its current readings: the job waits while any is over its limit. An
    /// error says it cannot be read: the job waits, then stops (see the
    /// [module docs](self)).
    fn read(&self) -> Result<Vec<Reading>, String>;
}

/// Where a signal can be read besides the job's own source: a replica's pool
/// (see [`Health::on`]). Implemented by this crate only.
pub trait Replica: sql::ReadReplica {}

impl<T: sql::ReadReplica> Replica for T {}

/// One value of a signal, on one server, against its limit.
///
/// ```
/// use diesel_chunked_iterator::health::Reading;
/// let r = Reading::new("replica 1", 3.25, 2.0).unit(" s");
/// assert!(r.is_over());
/// assert_eq!(r.to_string(), "replica 1: 3.25 s > 2 s");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Reading {
    /// The server (or other thing) read: a standby's `application_name`,
    /// `replica 1` for the first of [`Health::on`]'s replicas, `source` for
    /// the job's own.
    pub source: String,
    /// The value read.
    pub value: f64,
    /// The limit it is compared with: over it, the job waits.
    pub limit: f64,
    /// The unit both are in, for display (`" s"`, `" bytes"`, or none).
    pub unit: &'static str,
}

impl Reading {
    /// A reading of `value` on `source` against `limit`.
    pub fn new(source: impl Into<String>, value: f64, limit: f64) -> Self {
        Self {
            source: source.into(),
            value,
            limit,
            unit: "",
        }
    }

    /// The same reading in `unit`.
    pub fn unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    /// Whether the value is over the limit (a `NaN` is).
    pub fn is_over(&self) -> bool {
        self.value.is_nan() || self.value > self.limit
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.is_over() { ">" } else { "<=" };
        write!(
            f,
            "{}: {}{} {op} {}{}",
            self.source, self.value, self.unit, self.limit, self.unit
        )
    }
}

/// One wait of a write job on one signal: from the first reading that said
/// wait to the one that let the job go on (or to the job's end).
///
/// ```
/// use std::time::Duration;
/// use diesel_chunked_iterator::health::HealthWait;
/// # fn show(wait: &HealthWait) {
/// println!("{wait}"); // replica_lag: standby1: 3.4 s > 2 s, waited 7.1s before batch 12
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthWait {
    /// The signal's name.
    pub signal: String,
    /// The batch (number in this run) it held back.
    pub batch: u64,
    /// How long the job waited on it.
    pub waited: Duration,
    /// The highest reading over its limit during the wait; `None` if it only
    /// could not be read.
    pub reading: Option<Reading>,
    /// Why it could not be read, if that was (also) the reason.
    pub error: Option<String>,
}

impl fmt::Display for HealthWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.signal)?;
        match (&self.reading, &self.error) {
            (Some(r), _) => write!(f, "{r}")?,
            (None, Some(e)) => write!(f, "unreadable ({e})")?,
            (None, None) => f.write_str("over its limit")?,
        }
        write!(
            f,
            ", waited {:.1?} before batch {}",
            self.waited, self.batch
        )
    }
}

/// A signal's current readings, as [`dry_run`](crate::Chunked::dry_run)
/// found them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SignalReading {
    /// The signal's name.
    pub signal: String,
    /// Its readings, or why it could not be read.
    pub readings: Result<Vec<Reading>, String>,
}

impl fmt::Display for SignalReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.signal)?;
        match &self.readings {
            Ok(r) if r.is_empty() => f.write_str("no readings"),
            Ok(r) => {
                let all: Vec<String> = r.iter().map(Reading::to_string).collect();
                f.write_str(&all.join(", "))
            }
            Err(e) => write!(f, "unreadable ({e})"),
        }
    }
}

/// A signal's outcome at one probe.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) signal: String,
    pub(crate) read: Result<Vec<Reading>, Unread>,
}

/// The job's signals, and what they need from it.
#[derive(Clone, Default)]
pub(crate) struct Signals {
    pub(crate) list: Vec<Health>,
    /// The job's table (for `pg_autovacuum_on_table`).
    pub(crate) table: String,
}

impl Signals {
    /// The signals `list` of a job by `key`, whose first column's table is
    /// the job's table.
    pub(crate) fn of<K: crate::key::Key>(list: Vec<Health>, key: &K) -> Self {
        let table = key
            .names()
            .first()
            .map(|(t, _)| t.to_string())
            .unwrap_or_default();
        Self { list, table }
    }

    /// Reads every signal, those on the job's source with `on_source` (the
    /// driver's statement runner), the others by themselves.
    pub(crate) fn read_blocking<F>(&self, mut on_source: F) -> Vec<Outcome>
    where
        F: FnMut(Kind, f64, &str) -> Result<Vec<Reading>, Unread>,
    {
        self.list
            .iter()
            .map(|h| Outcome {
                signal: h.name(),
                read: match h.on_job_source() {
                    Some(kind) => on_source(kind, h.limit, &self.table),
                    None => h.read_elsewhere(),
                },
            })
            .collect()
    }
}

impl Health {
    /// Reads a signal not read on the job's source: a custom one, or on
    /// replicas (blocking), each read within [`READ_DEADLINE`].
    pub(crate) fn read_elsewhere(&self) -> Result<Vec<Reading>, Unread> {
        match &self.what {
            What::Custom(s) => {
                let s = Arc::clone(s);
                with_deadline(self.name(), move || s.read().map_err(Unread::Failed))
            }
            What::Builtin(kind) => {
                let mut all = Vec::new();
                for (i, r) in self.on.iter().enumerate() {
                    let label = format!("replica {}", i + 1);
                    let (r, kind, limit) = (Arc::clone(r), *kind, self.limit);
                    let (heartbeat, name) = (self.heartbeat.clone(), label.clone());
                    let mut read =
                        with_deadline(label, move || r.read(kind, limit, &heartbeat, &name))?;
                    all.append(&mut read);
                }
                Ok(all)
            }
        }
    }

    /// [`read_elsewhere`](Self::read_elsewhere) for an async job: on tokio's
    /// blocking pool.
    #[cfg(feature = "async")]
    pub(crate) async fn read_elsewhere_async(&self) -> Result<Vec<Reading>, Unread> {
        let h = self.clone();
        tokio::task::spawn_blocking(move || h.read_elsewhere())
            .await
            .unwrap_or_else(|e| Err(Unread::Failed(format!("the signal's read failed: {e}"))))
    }

    /// The built-in signal read on the job's source, if it is one.
    pub(crate) fn on_job_source(&self) -> Option<Kind> {
        match (&self.what, self.on.is_empty()) {
            (What::Builtin(kind), true) => Some(*kind),
            _ => None,
        }
    }
}

/// How long a read of a replica or of a custom [`Signal`] may take: past it,
/// the signal is unreadable (the read goes on, on its own thread, and its
/// answer is dropped), so that a server that never answers cannot hold the
/// job past its [`unreadable_limit`](crate::Chunked::unreadable_limit).
pub(crate) const READ_DEADLINE: Duration = Duration::from_secs(10);

/// `read()` on a thread of its own, waited for at most [`READ_DEADLINE`].
fn with_deadline<F>(what: String, read: F) -> Result<Vec<Reading>, Unread>
where
    F: FnOnce() -> Result<Vec<Reading>, Unread> + Send + 'static,
{
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("chunked-health-read".into())
        .spawn(move || {
            let _ = tx.send(read());
        })
        .map_err(|e| Unread::Failed(format!("{what}: no thread to read it on: {e}")))?;
    match rx.recv_timeout(READ_DEADLINE) {
        Ok(read) => read,
        Err(RecvTimeoutError::Timeout) => Err(Unread::Failed(format!(
            "{what}: no answer within {READ_DEADLINE:?}"
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            Err(Unread::Failed(format!("{what}: its read panicked")))
        }
    }
}
