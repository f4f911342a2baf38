//! Retries of a pooled scan under hostile conditions: the server terminating the
//! pool's connections every 40 ms (PostgreSQL, MariaDB/MySQL), and a second
//! SQLite connection holding the write lock.
//!
//! Every test kills or locks only what belongs to itself: PostgreSQL connections
//! are found by an `application_name` no one else uses, MariaDB connections by the
//! `CONNECTION_ID()` each of the pool's connections recorded when it was made.
#![cfg(feature = "r2d2")]

use crate::common;

#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::sync::Arc;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::thread::JoinHandle;
use std::time::Duration;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::time::Instant;

use common::*;
#[cfg(feature = "sqlite")]
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_chunked_iterator::prelude::*;

/// Rows of the storm tests: 13 batches of 2000.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const STORM_ROWS: i32 = 25_000;
#[cfg(any(feature = "postgres", feature = "mysql"))]
const STORM_BATCH: u64 = 2000;
/// How often the killer strikes.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const KILL_EVERY: Duration = Duration::from_millis(40);
/// The killer gives up after this long even if the scan never ends.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const STORM_LIMIT: Duration = Duration::from_secs(120);

/// A thread calling `kill` every [`KILL_EVERY`] until stopped; `kill` returns
/// how many connections it terminated.
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct Killer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<usize>>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl Killer {
    fn start(mut kill: impl FnMut() -> usize + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut killed = 0;
            while !flag.load(Ordering::Relaxed) && started.elapsed() < STORM_LIMIT {
                killed += kill();
                std::thread::sleep(KILL_EVERY);
            }
            killed
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; the number of connections it killed.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("killer thread"))
            .unwrap_or(0)
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl Drop for Killer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Scans all posts through `pool` in batches of [`STORM_BATCH`] with
/// `max_retries(50)` while `killer` runs, and checks every row came exactly once.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! storm_scan {
    ($backend:expr, $pool:expr, $killer:expr) => {{
        let killer = $killer;
        let started = Instant::now();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(STORM_BATCH)
            .max_retries(50)
            .load_batches::<Post>($pool);
        let mut seen: Vec<i32> = Vec::with_capacity(STORM_ROWS as usize);
        let mut failure = None;
        // the most attempts one batch needed
        let mut most_attempts = 0;
        let mut queries = 0;
        while let Some(batch) = it.next() {
            let q = it.progress().queries;
            most_attempts = most_attempts.max(q - queries);
            queries = q;
            match batch {
                Ok(rows) => seen.extend(rows.iter().map(|p| p.id)),
                Err(e) => failure = Some(e),
            }
        }
        let elapsed = started.elapsed();
        let killed = killer.stop();
        let p = it.progress();
        eprintln!(
            "{} storm: {:.2} s, {} batches, {} queries, {} retries, \
             at most {} attempts for one batch, {} connections killed",
            $backend,
            elapsed.as_secs_f64(),
            p.batches,
            p.queries,
            p.retries,
            most_attempts,
            killed
        );
        if let Some(e) = failure {
            panic!(
                "the scan failed after {} rows and {:.1} s: {e} ({p:?})",
                seen.len(),
                elapsed.as_secs_f64()
            );
        }
        assert!(
            killed >= 3,
            "the storm must really kill connections (killed {killed})"
        );
        assert!(p.retries >= 1, "the storm must hit the scan: {p:?}");
        assert_eq!(seen.len(), STORM_ROWS as usize, "row count");
        assert!(
            seen.iter().copied().eq(1..=STORM_ROWS),
            "every row exactly once, in order"
        );
    }};
}

/// A write job with a checkpoint under the storm: every batch that broke is
/// retried on another connection (its transaction rolled back), and a batch
/// whose `COMMIT` went through before its connection died is taken from the
/// checkpoint instead of being written again. Every post's `user_id` must have
/// grown by 1000 exactly once.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! storm_write {
    ($backend:expr, $pool:expr, $killer:expr, $direct:expr) => {{
        use diesel_chunked_iterator::checkpoint;
        let killer = $killer;
        let report = posts::table
            .chunked_by(posts::id)
            .batch_size(400) // a batch's transaction must fit between two kills
            .max_retries(50)
            .checkpoint("storm")
            .update_all($pool, posts::user_id.eq(posts::user_id + 1000));
        let killed = killer.stop();
        let report = report.unwrap_or_else(|e| panic!("{} write job failed: {e}", $backend));
        eprintln!(
            "{} write storm: {report:?}, {killed} connections killed",
            $backend
        );
        assert!(
            killed >= 3,
            "the storm must really kill connections (killed {killed})"
        );
        assert!(report.done);
        let mut conn = $direct;
        let c = checkpoint::status(&mut conn, "storm").unwrap().unwrap();
        assert_eq!((c.rows, c.done), (STORM_ROWS as u64, true));
        let rows: Vec<(i32, i32)> = posts::table
            .select((posts::id, posts::user_id))
            .order(posts::id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(rows.len(), STORM_ROWS as usize);
        for (id, user_id) in rows {
            assert_eq!(user_id, post(id).user_id + 1000, "post {id}");
        }
    }};
}

/// A pool of 2 on `db` that does not test connections on check-out, and a
/// killer of its connections. They carry an `application_name` of their own;
/// the killer's connection has another, and it kills only the backends whose
/// `application_name` is this pool's: other tests share this server.
#[cfg(feature = "postgres")]
fn pg_storm(db: &TestDb) -> (Pool<ConnectionManager<diesel::PgConnection>>, Killer) {
    #[derive(QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        killed: bool,
    }
    let app = unique_name("storm");
    let url = format!("{}&application_name={app}", db.url);
    let pool = Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(5))
        .build(ConnectionManager::<diesel::PgConnection>::new(&url))
        .unwrap();
    let admin_url = db.url.clone();
    let mut admin = diesel::PgConnection::establish(&admin_url).unwrap();
    let killer = Killer::start(move || {
        let killed = diesel::sql_query(
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<diesel::sql_types::Text, _>(&app)
        .load::<Killed>(&mut admin);
        match killed {
            Ok(rows) => rows.iter().filter(|r| r.killed).count(),
            Err(_) => {
                admin = diesel::PgConnection::establish(&admin_url).unwrap();
                0
            }
        }
    });
    (pool, killer)
}

#[cfg(feature = "postgres")]
#[test]
fn pg_write_job_completes_exactly_once_while_connections_keep_dying() {
    let db = <Pg as TestBackend>::create();
    {
        let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
        insert_posts(&mut conn, 1..=STORM_ROWS);
        diesel_chunked_iterator::checkpoint::create_table(&mut conn).unwrap();
    }
    let (pool, killer) = pg_storm(&db);
    storm_write!(
        "PostgreSQL",
        &pool,
        killer,
        diesel::PgConnection::establish(&db.url).unwrap()
    );
}

#[cfg(feature = "postgres")]
#[test]
fn pg_scan_completes_while_connections_keep_dying() {
    let db = <Pg as TestBackend>::create();
    {
        let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
        insert_posts(&mut conn, 1..=STORM_ROWS);
    }
    let (pool, killer) = pg_storm(&db);
    storm_scan!("PostgreSQL", &pool, killer);
}

/// Records the `CONNECTION_ID()` of every connection the pool makes.
#[cfg(feature = "mysql")]
#[derive(Debug, Clone, Default)]
struct RecordIds(Arc<std::sync::Mutex<Vec<i64>>>);

#[cfg(feature = "mysql")]
impl diesel::r2d2::CustomizeConnection<diesel::MysqlConnection, diesel::r2d2::Error> for RecordIds {
    fn on_acquire(&self, conn: &mut diesel::MysqlConnection) -> Result<(), diesel::r2d2::Error> {
        let id: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "CAST(CONNECTION_ID() AS SIGNED)",
        ))
        .get_result(conn)
        .map_err(diesel::r2d2::Error::QueryError)?;
        self.0.lock().unwrap().push(id);
        Ok(())
    }
}

/// A pool of 2 on `db` that does not test connections on check-out, and a
/// killer of every connection the pool makes, once each (thread ids are not
/// reused), and of nothing else: other tests share this server.
#[cfg(feature = "mysql")]
fn mysql_storm(db: &TestDb) -> (Pool<ConnectionManager<diesel::MysqlConnection>>, Killer) {
    let ids = RecordIds::default();
    let pool = Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(5))
        .connection_customizer(Box::new(ids.clone()))
        .build(ConnectionManager::<diesel::MysqlConnection>::new(&db.url))
        .unwrap();
    let admin_url = db.url.clone();
    let mut admin = diesel::MysqlConnection::establish(&admin_url).unwrap();
    let killer = Killer::start(move || {
        let targets: Vec<i64> = std::mem::take(&mut *ids.0.lock().unwrap());
        let mut killed = 0;
        for id in targets {
            match diesel::sql_query(format!("KILL CONNECTION {id}")).execute(&mut admin) {
                Ok(_) => killed += 1,
                Err(diesel::result::Error::DatabaseError(_, info))
                    if info.message().contains("Unknown thread id") => {}
                Err(_) => {
                    admin = diesel::MysqlConnection::establish(&admin_url).unwrap();
                    // not killed: try it again next time
                    ids.0.lock().unwrap().push(id);
                }
            }
        }
        killed
    });
    (pool, killer)
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_scan_completes_while_connections_keep_dying() {
    let db = <Mysql as TestBackend>::create();
    {
        let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
        insert_posts(&mut conn, 1..=STORM_ROWS);
    }
    let (pool, killer) = mysql_storm(&db);
    storm_scan!("MariaDB", &pool, killer);
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_write_job_completes_exactly_once_while_connections_keep_dying() {
    let db = <Mysql as TestBackend>::create();
    {
        let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
        insert_posts(&mut conn, 1..=STORM_ROWS);
        diesel_chunked_iterator::checkpoint::create_table(&mut conn).unwrap();
    }
    let (pool, killer) = mysql_storm(&db);
    storm_write!(
        "MariaDB",
        &pool,
        killer,
        diesel::MysqlConnection::establish(&db.url).unwrap()
    );
}

/// SQLite in rollback-journal mode: a connection in `BEGIN EXCLUSIVE` makes every
/// reader fail with `database is locked` until it commits. The pool's connections
/// have no `busy_timeout`, so the scan meets the lock and must retry through it.
#[cfg(feature = "sqlite")]
fn sqlite_scan_under_write_lock(
    pool: &Pool<ConnectionManager<diesel::SqliteConnection>>,
    db: &TestDb,
    hold: Duration,
) -> diesel_chunked_iterator::Progress<i32> {
    use std::sync::mpsc;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (locked_tx, locked_rx) = mpsc::channel::<()>();
    let url = db.url.clone();
    let locker = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        let mut conn = diesel::SqliteConnection::establish(&url).unwrap();
        conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
        diesel::update(posts::table.filter(posts::id.eq(1)))
            .set(posts::title.eq("locked"))
            .execute(&mut conn)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(hold);
        conn.batch_execute("ROLLBACK").unwrap();
    });
    let mut it = posts::table
        .chunked_by(posts::id)
        .batch_size(50)
        .max_retries(20)
        .load_batches::<Post>(pool);
    let mut seen = Vec::new();
    for batch in it.by_ref() {
        let rows = batch.unwrap_or_else(|e| panic!("after {} rows: {e}", seen.len()));
        seen.extend(rows.iter().map(|p| p.id));
        if seen.len() == 50 {
            go_tx.send(()).unwrap();
            locked_rx.recv().unwrap();
        }
    }
    locker.join().unwrap();
    assert_every_row_once(&seen, 300);
    it.progress()
}

#[cfg(feature = "sqlite")]
fn sqlite_rollback_journal_db() -> TestDb {
    let db = <Sqlite as TestBackend>::create();
    let mut conn = diesel::SqliteConnection::establish(&db.url).unwrap();
    conn.batch_execute("PRAGMA journal_mode = DELETE").unwrap();
    insert_posts(&mut conn, 1..=300);
    db
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_busy_database_is_retried() {
    let db = sqlite_rollback_journal_db();
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<diesel::SqliteConnection>::new(&db.url))
        .unwrap();
    let p = sqlite_scan_under_write_lock(&pool, &db, Duration::from_millis(250));
    assert!(p.retries >= 1, "the scan must meet the lock: {p:?}");
}

/// With a `busy_timeout` on the pool's connections (the advice in the README),
/// SQLite itself waits for the lock and no attempt fails.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
struct BusyTimeout;

#[cfg(feature = "sqlite")]
impl diesel::r2d2::CustomizeConnection<diesel::SqliteConnection, diesel::r2d2::Error>
    for BusyTimeout
{
    fn on_acquire(&self, conn: &mut diesel::SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 5000")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_busy_timeout_waits_without_retry() {
    let db = sqlite_rollback_journal_db();
    let pool = Pool::builder()
        .max_size(2)
        .connection_customizer(Box::new(BusyTimeout))
        .build(ConnectionManager::<diesel::SqliteConnection>::new(&db.url))
        .unwrap();
    let p = sqlite_scan_under_write_lock(&pool, &db, Duration::from_millis(250));
    assert_eq!(p.retries, 0, "{p:?}");
}
