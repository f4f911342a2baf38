//! Write jobs on diesel-async connections and pools: `update_all`,
//! `delete_all` and `for_each_batch` with the same names, statements and
//! semantics as the blocking jobs, each batch one transaction, checked row by
//! row on every backend (a counter column that each write adds 1 to, and a
//! copy of each key into a table whose primary key refuses a second copy),
//! with failures, crashes, killed connections and lost `COMMIT` answers.
#![cfg(feature = "async")]

use crate::common;
use crate::lost_commit::{at, copies, copy_ids, counter_rows, counters, create_tables, Counter};
use crate::lost_commit::{BATCH, ROWS};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use diesel::{ExpressionMethods, QueryDsl, QueryResult};
use diesel_async::AsyncConnection;
// diesel-async's `RunQueryDsl` in scope, as in any diesel-async code.
use diesel_async::RunQueryDsl;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, Error, WriteReport};

macro_rules! async_write_tests {
    ($name:ident, $backend:ty, $conn:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        mod $name {
            use super::*;

            type B = $backend;
            type Conn = $conn;

            /// A fresh database with `counters` (rows 1..=ROWS at 0) and
            /// `copies`, a blocking connection to check it with and an async
            /// one to run the jobs on.
            async fn setup() -> (TestDb, <B as TestBackend>::Conn, Conn) {
                let db = <B as TestBackend>::create();
                let mut sync = <B as TestBackend>::connect(&db);
                create_tables(&mut sync, ROWS);
                checkpoint::create_table(&mut sync).unwrap();
                let conn = Conn::establish(&db.url).await.expect("async connection");
                (db, sync, conn)
            }

            /// Sets every counter back to 0 and the checkpoint `name` back to
            /// the start: the async job runs again what the blocking one ran.
            fn start_again(sync: &mut <B as TestBackend>::Conn, name: &str) {
                diesel::RunQueryDsl::execute(diesel::sql_query("UPDATE counters SET n = 0"), sync)
                    .unwrap();
                checkpoint::reset(sync, name).unwrap();
            }

            /// The statements of `log`, their binds left out (each connection
            /// shows them in its own debug format).
            fn without_binds(log: &[String]) -> Vec<String> {
                log.iter()
                    .map(|q| q.split(" -- binds").next().unwrap().to_string())
                    .collect()
            }

            /// Copies each key of `batch` into `copies`, whose primary key
            /// refuses a second copy.
            async fn copy(conn: &mut Conn, batch: &[Counter]) -> QueryResult<()> {
                for c in batch {
                    diesel::insert_into(copies::table)
                        .values(copies::id.eq(c.id))
                        .execute(conn)
                        .await?;
                }
                Ok(())
            }

            /// `async_commit()`: the same statements as the blocking job,
            /// `SET LOCAL synchronous_commit = off` first in each batch on
            /// PostgreSQL, `PRAGMA synchronous = NORMAL` around each batch on
            /// SQLite in WAL mode (nothing on MariaDB), every row once.
            #[tokio::test(flavor = "multi_thread")]
            async fn async_commit_runs_the_blocking_statements() {
                let (_db, mut sync, mut conn) = setup().await;
                let job = || {
                    counters::table
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("fast")
                        .async_commit()
                };
                let blocking = QueryLog::install(&mut sync);
                job()
                    .update_all(&mut sync, counters::n.eq(counters::n + 1))
                    .unwrap();
                let blocking = blocking.all();
                start_again(&mut sync, "fast");
                let log = crate::async_core::count_queries(&mut conn);
                let report = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (100, 10, true));
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));
                assert_eq!(
                    without_binds(&log.lock().unwrap()),
                    without_binds(&blocking)
                );
                let count = |sql: &str| blocking.iter().filter(|q| q.starts_with(sql)).count();
                let expected = |backend: &str| {
                    if <B as TestBackend>::NAME == backend {
                        10
                    } else {
                        0
                    }
                };
                assert_eq!(
                    count("SET LOCAL synchronous_commit = off"),
                    expected("postgres"),
                    "{blocking:#?}"
                );
                // SQLite in WAL mode: NORMAL around each batch's transaction,
                // the connection's own FULL back after it.
                assert_eq!(
                    count("PRAGMA synchronous = 1"),
                    expected("sqlite"),
                    "{blocking:#?}"
                );
                assert_eq!(
                    count("PRAGMA synchronous = 2"),
                    expected("sqlite"),
                    "{blocking:#?}"
                );
                if <B as TestBackend>::NAME == "sqlite" {
                    let first = blocking
                        .iter()
                        .position(|q| q.starts_with("PRAGMA synchronous = 1"))
                        .unwrap();
                    assert!(blocking[first + 1].starts_with("BEGIN"), "{blocking:#?}");
                    let last = blocking
                        .iter()
                        .rposition(|q| q.starts_with("PRAGMA synchronous = 2"))
                        .unwrap();
                    assert!(blocking[last - 1].starts_with("COMMIT"), "{blocking:#?}");
                }
                // PostgreSQL: the job's last batch (the tenth) waits for its
                // flush after all, just before its checkpoint's advance.
                assert_eq!(
                    count("SET LOCAL synchronous_commit = on"),
                    expected("postgres") / 10,
                    "{blocking:#?}"
                );
                if <B as TestBackend>::NAME == "postgres" {
                    let on = blocking
                        .iter()
                        .position(|q| q.starts_with("SET LOCAL synchronous_commit = on"))
                        .unwrap();
                    let last_off = blocking
                        .iter()
                        .rposition(|q| q.starts_with("SET LOCAL synchronous_commit = off"))
                        .unwrap();
                    assert!(last_off < on, "{blocking:#?}");
                    assert!(
                        blocking[on - 1].starts_with("UPDATE \"counters\""),
                        "{blocking:#?}"
                    );
                    assert!(
                        blocking[on + 1].starts_with("UPDATE chunked_checkpoints"),
                        "{blocking:#?}"
                    );
                    assert!(blocking[on + 2].starts_with("COMMIT"), "{blocking:#?}");
                }
            }

            /// `async_commit()` with `limit_total`: the batch that reaches the
            /// limit ends the job, so it is the one that waits for its flush
            /// (PostgreSQL), blocking and async alike; a run again goes on from
            /// there.
            #[tokio::test(flavor = "multi_thread")]
            async fn async_commit_flushes_the_batch_that_reaches_limit_total() {
                let (_db, mut sync, mut conn) = setup().await;
                let job = || {
                    counters::table
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("capped")
                        .async_commit()
                        .limit_total(25)
                };
                let blocking = QueryLog::install(&mut sync);
                let report = job()
                    .update_all(&mut sync, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!((report.rows, report.batches), (25, 3));
                let blocking = blocking.all();
                let log = crate::async_core::count_queries(&mut conn);
                let report = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches), (25, 3));
                let mut want = at(1, 50, 1);
                want.extend(at(51, ROWS, 0));
                assert_eq!(counter_rows(&mut sync), want);
                let log = log.lock().unwrap().clone();
                for statements in [&blocking, &log] {
                    let batches: Vec<&[String]> = statements
                        .split(|q| q.starts_with("COMMIT"))
                        .filter(|b| {
                            b.iter().any(|q| {
                                q.starts_with("UPDATE") && !q.contains("chunked_checkpoints")
                            })
                        })
                        .collect();
                    assert_eq!(batches.len(), 3, "{statements:#?}");
                    let durable: Vec<bool> = batches
                        .iter()
                        .map(|b| {
                            b.iter()
                                .any(|q| q.starts_with("SET LOCAL synchronous_commit = on"))
                        })
                        .collect();
                    let last = <B as TestBackend>::NAME == "postgres";
                    assert_eq!(durable, [false, false, last], "{statements:#?}");
                }
            }

            /// A checkpoint row another transaction holds when a run starts
            /// (a runner that died inside a batch): the first batch rolls its
            /// transaction back, in which only the lock ran, and begins again
            /// until the row is free, as the blocking job does; no savepoint,
            /// every row once.
            #[tokio::test(flavor = "multi_thread")]
            async fn a_first_batch_waits_for_a_held_checkpoint_row() {
                let (db, mut sync, mut conn) = setup().await;
                let job = || {
                    counters::table
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("held")
                };
                let first = job()
                    .limit_total(BATCH)
                    .update_all(&mut sync, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!((first.rows, first.done), (BATCH, false));
                let (locked, is_locked) = std::sync::mpsc::channel();
                let url = db.url.clone();
                let holder = std::thread::spawn(move || {
                    let mut holder = <B as TestBackend>::connect_url(&url);
                    diesel::Connection::transaction(&mut holder, |c| {
                        // Locks the row (SQLite: the database's write lock).
                        diesel::RunQueryDsl::execute(
                            diesel::sql_query(
                                "UPDATE chunked_checkpoints SET rows_done = rows_done WHERE name = 'held'",
                            ),
                            c,
                        )?;
                        locked.send(()).unwrap();
                        std::thread::sleep(Duration::from_millis(700));
                        Err::<(), _>(diesel::result::Error::RollbackTransaction)
                    })
                });
                if <B as TestBackend>::NAME == "sqlite" {
                    // SQLite waits in BEGIN IMMEDIATE, as long as this says.
                    diesel::sql_query("PRAGMA busy_timeout = 10000")
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                is_locked.recv().unwrap();
                let log = crate::async_core::count_queries(&mut conn);
                let started = Instant::now();
                let report = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
                assert_eq!(
                    holder.join().unwrap(),
                    Err(diesel::result::Error::RollbackTransaction)
                );
                assert_eq!(
                    (report.resumed_after, report.rows, report.done),
                    (Some(BATCH as i32), ROWS as u64 - BATCH, true)
                );
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));
                let all = log.lock().unwrap().clone();
                assert!(!all.iter().any(|q| q.to_uppercase().contains("SAVEPOINT")), "{all:#?}");
                if <B as TestBackend>::NAME != "sqlite" {
                    let lock = all.iter().position(|q| q.contains("FOR UPDATE NOWAIT")).unwrap();
                    assert!(all[lock + 1].starts_with("ROLLBACK"), "{all:#?}");
                    let again = &all[lock + 2];
                    assert!(
                        again.starts_with("BEGIN") || again.starts_with("SET TRANSACTION"),
                        "{all:#?}"
                    );
                    assert!(all[lock + 3].contains("FOR UPDATE NOWAIT"), "{all:#?}");
                }
            }

            /// The async `update_all` runs exactly the blocking one's
            /// statements, and writes every row once.
            #[tokio::test(flavor = "multi_thread")]
            async fn update_all_runs_the_blocking_statements_and_writes_each_row_once() {
                let (_db, mut sync, mut conn) = setup().await;
                let job = || {
                    counters::table
                        .filter(counters::id.gt(5))
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("bump")
                };
                let blocking = QueryLog::install(&mut sync);
                let expected = job()
                    .update_all(&mut sync, counters::n.eq(counters::n + 1))
                    .unwrap();
                let blocking = blocking.all();
                start_again(&mut sync, "bump");

                let log = crate::async_core::count_queries(&mut conn);
                let report = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                let same = |r: &WriteReport<i32>| {
                    (
                        r.rows,
                        r.batches,
                        r.last_key,
                        r.resumed_after,
                        r.total_rows,
                        r.total_batches,
                    )
                };
                assert_eq!(same(&report), same(&expected));
                assert_eq!(
                    (report.done, report.retries, report.batch_size),
                    (true, 0, BATCH)
                );
                assert_eq!(
                    (report.rows, report.batches, report.last_key),
                    (95, 10, Some(100))
                );
                assert!(report.done);
                let mut rows = at(1, 5, 0);
                rows.extend(at(6, ROWS, 1));
                assert_eq!(counter_rows(&mut sync), rows);
                // The same statements; binds are shown by each connection's
                // own debug format.
                assert_eq!(
                    without_binds(&log.lock().unwrap()),
                    without_binds(&blocking)
                );
                let c = checkpoint::status(&mut sync, "bump").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (95, 10, true));
            }

            /// An `UPDATE` that changes the column its query filters on writes
            /// each row once; `delete_all` deletes each matching row once.
            #[tokio::test(flavor = "multi_thread")]
            async fn update_all_and_delete_all_write_each_row_once() {
                let (_db, mut sync, mut conn) = setup().await;
                let report = counters::table
                    .filter(counters::n.eq(0))
                    .chunked_by(counters::id)
                    .batch_size(7)
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (100, 15, true));
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));

                let report = counters::table
                    .filter(counters::id.gt(40))
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .delete_all(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(
                    (report.rows, report.batches, report.last_key),
                    (60, 6, Some(100))
                );
                assert_eq!(counter_rows(&mut sync), at(1, 40, 1));
            }

            /// Each batch goes to an async closure once, in the batch's
            /// transaction, as the blocking `for_each_batch` does.
            #[tokio::test(flavor = "multi_thread")]
            async fn for_each_batch_hands_each_batch_to_an_async_closure_once() {
                let (_db, mut sync, mut conn) = setup().await;
                let calls = AtomicUsize::new(0);
                let calls = &calls;
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .for_each_batch(&mut conn, async |conn, batch: Vec<Counter>| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        copy(conn, &batch).await
                    })
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (100, 10, true));
                assert_eq!(calls.load(Ordering::Relaxed), 10);
                assert_eq!(copy_ids(&mut sync), (1..=ROWS).collect::<Vec<_>>());
            }

            /// A closure that fails rolls its batch back and stops the job with
            /// `Error::Batch`; run again, the checkpointed job resumes after
            /// the last committed batch and copies every key once.
            #[tokio::test(flavor = "multi_thread")]
            async fn a_failed_batch_rolls_back_and_the_checkpointed_rerun_resumes_exactly() {
                let (_db, mut sync, mut conn) = setup().await;
                let job = || {
                    counters::table
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("copy")
                };
                let calls = AtomicUsize::new(0);
                let calls = &calls;
                let err = job()
                    .for_each_batch(&mut conn, async |conn, batch: Vec<Counter>| {
                        copy(conn, &batch).await?;
                        if calls.fetch_add(1, Ordering::Relaxed) == 3 {
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                        Ok(())
                    })
                    .await
                    .expect_err("batch 4 fails");
                match &err {
                    Error::Batch {
                        batch: 4,
                        last_committed: Some(last),
                        ..
                    } => {
                        assert_eq!(last, "30")
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(copy_ids(&mut sync), (1..=30).collect::<Vec<_>>());
                let c = checkpoint::status(&mut sync, "copy").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (30, 3, false));

                let report = job()
                    .for_each_batch(&mut conn, async |conn, batch: Vec<Counter>| {
                        copy(conn, &batch).await
                    })
                    .await
                    .unwrap();
                assert_eq!(report.resumed_after, Some(30));
                assert_eq!(
                    (report.rows, report.total_rows, report.total_batches),
                    (70, 100, 10)
                );
                assert!(report.done);
                assert_eq!(copy_ids(&mut sync), (1..=ROWS).collect::<Vec<_>>());
                // Done: a third run loads nothing; another job under the
                // same name is refused.
                let again = job()
                    .for_each_batch(&mut conn, async |_, _: Vec<Counter>| QueryResult::Ok(()))
                    .await
                    .unwrap();
                assert_eq!((again.rows, again.total_rows, again.done), (0, 100, true));
                let other = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .await;
                assert!(
                    matches!(other, Err(Error::CheckpointMismatch { .. })),
                    "{other:?}"
                );
            }

            /// The refusals before any statement are the blocking jobs': a SET
            /// list that changes the key, a checkpoint name that is not one.
            #[tokio::test(flavor = "multi_thread")]
            async fn bad_jobs_are_refused_before_they_write() {
                let (_db, mut sync, mut conn) = setup().await;
                let err = counters::table
                    .chunked_by(counters::id)
                    .update_all(&mut conn, counters::id.eq(counters::id + 1000))
                    .await
                    .unwrap_err();
                assert!(matches!(err, Error::KeyChanged { .. }), "{err:?}");
                let err = counters::table
                    .chunked_by(counters::id)
                    .checkpoint("")
                    .delete_all(&mut conn)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, Error::InvalidCheckpointName { .. }),
                    "{err:?}"
                );
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 0));
            }

            /// A job killed inside its fourth batch (SIGKILL of the process)
            /// resumes from its checkpoint and writes every row once.
            #[test]
            fn a_job_killed_inside_a_batch_resumes_exactly() {
                let rt = tokio::runtime::Runtime::new().unwrap();
                let (db, mut sync, mut conn) = rt.block_on(setup());
                let marker = std::env::temp_dir().join(unique_name("async-crash"));
                let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--ignored",
                        "--exact",
                        "async_write::crash_child",
                        "--nocapture",
                    ])
                    .env("CHUNKED_CRASH_URL", &db.url)
                    .env("CHUNKED_CRASH_MARKER", &marker)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let started = Instant::now();
                while !marker.exists() {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "the child never reached batch 4"
                    );
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!("the child exited early: {status}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                child.kill().unwrap();
                child.wait().unwrap();
                let _ = std::fs::remove_file(&marker);
                let c = checkpoint::status(&mut sync, "crash").unwrap().unwrap();
                assert_eq!((c.batches, c.rows, c.done), (3, 30, false));
                let mut rows = at(1, 30, 1);
                rows.extend(at(31, ROWS, 0));
                assert_eq!(counter_rows(&mut sync), rows);

                let report = rt
                    .block_on(
                        counters::table
                            .chunked_by(counters::id)
                            .batch_size(BATCH)
                            .checkpoint("crash")
                            .for_each_batch(&mut conn, async |conn, batch: Vec<Counter>| {
                                bump(conn, &batch).await
                            }),
                    )
                    .unwrap();
                assert_eq!(
                    (report.resumed_after, report.rows, report.done),
                    (Some(30), 70, true)
                );
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));
            }
        }
    };
}

async_write_tests!(
    sqlite,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    "sqlite"
);
async_write_tests!(postgres, Pg, diesel_async::AsyncPgConnection, "postgres");
async_write_tests!(mysql, Mysql, diesel_async::AsyncMysqlConnection, "mysql");

/// Adds 1 to `n` of each row of `batch`.
async fn bump<C>(conn: &mut C, batch: &[Counter]) -> QueryResult<()>
where
    C: diesel_async::AsyncConnection,
    for<'q> diesel::dsl::Update<
        diesel::dsl::Filter<counters::table, diesel::dsl::EqAny<counters::id, Vec<i32>>>,
        diesel::dsl::Eq<counters::n, diesel::dsl::Add<counters::n, i32>>,
    >: diesel_async::methods::ExecuteDsl<C>,
{
    let ids: Vec<i32> = batch.iter().map(|c| c.id).collect();
    diesel::update(counters::table.filter(counters::id.eq_any(ids)))
        .set(counters::n.eq(counters::n + 1))
        .execute(conn)
        .await?;
    Ok(())
}

/// The process `a_job_killed_inside_a_batch_resumes_exactly` kills: an async
/// `for_each_batch` that commits 3 batches and stops inside the 4th, its
/// transaction open.
#[test]
#[ignore = "run as a child process by a_job_killed_inside_a_batch_resumes_exactly"]
fn crash_child() {
    let url = std::env::var("CHUNKED_CRASH_URL").expect("CHUNKED_CRASH_URL");
    let marker = std::env::var("CHUNKED_CRASH_MARKER").expect("CHUNKED_CRASH_MARKER");
    let rt = tokio::runtime::Runtime::new().unwrap();
    macro_rules! run {
        ($conn:ty) => {{
            let mut conn = rt.block_on(<$conn>::establish(&url)).unwrap();
            let calls = AtomicUsize::new(0);
            let (calls, marker) = (&calls, &marker);
            let job = counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .checkpoint("crash")
                .for_each_batch(&mut conn, async |conn, batch: Vec<Counter>| {
                    bump(conn, &batch).await?;
                    if calls.fetch_add(1, Ordering::Relaxed) == 3 {
                        std::fs::write(marker, "in batch 4").unwrap();
                        tokio::time::sleep(Duration::from_secs(120)).await;
                    }
                    QueryResult::Ok(())
                });
            let _ = rt.block_on(job);
        }};
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        run!(diesel_async::AsyncPgConnection);
        return;
    }
    #[cfg(feature = "mysql")]
    if url.starts_with("mysql") {
        run!(diesel_async::AsyncMysqlConnection);
        return;
    }
    #[cfg(feature = "sqlite")]
    run!(diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>);
}

/// What a job's `WriteObserver` hears: each committed batch as (batch, rows
/// so far), and each retry as (batch, attempt).
#[derive(Default)]
struct Heard {
    batches: std::sync::Mutex<Vec<(u64, u64)>>,
    retries: std::sync::Mutex<Vec<(u64, u32)>>,
}

impl diesel_chunked_iterator::WriteObserver for Heard {
    fn on_batch(&self, stats: &diesel_chunked_iterator::BatchStats) {
        self.batches
            .lock()
            .unwrap()
            .push((stats.batch, stats.total_rows));
    }

    fn on_retry(&self, batch: u64, attempt: u32, _wait: Duration) {
        self.retries.lock().unwrap().push((batch, attempt));
    }
}

/// Jobs on diesel-async's pools (deadpool, bb8), whose connections the server
/// kills or whose `COMMIT` answers a proxy loses: each batch is retried on a
/// fresh connection, never run again once its `COMMIT` was sent, and every key
/// is copied once.
#[cfg(all(feature = "deadpool", feature = "bb8", feature = "r2d2"))]
macro_rules! async_pool_write_tests {
    ($name:ident, $backend:ty, $conn:ty, $feature:literal, $killable:expr, $kill:path) => {
        #[cfg(feature = $feature)]
        mod $name {
            use super::*;
            use crate::lost_commit::proxy::Proxy;
            use diesel_async::pooled_connection::{bb8, deadpool, AsyncDieselConnectionManager};

            type B = $backend;
            type Conn = $conn;

            /// A fresh database with `counters` and `copies`, and a URL to it
            /// whose connections the test can kill.
            fn setup() -> (TestDb, String) {
                let db = <B as TestBackend>::create();
                let mut sync = <B as TestBackend>::connect(&db);
                create_tables(&mut sync, ROWS);
                checkpoint::create_table(&mut sync).unwrap();
                let url = $killable(&db.url);
                (db, url)
            }

            /// `url` through `proxy`, in a form the async drivers read, and
            /// (MySQL) without mysql_async's switch to the server's Unix
            /// socket, which would leave the proxy.
            fn proxied(proxy: &Proxy, url: &str) -> String {
                let url = proxy.url(url).replace("&gssencmode=disable", "");
                match url.starts_with("mysql") {
                    true => format!("{url}?prefer_socket=false"),
                    false => url,
                }
            }

            fn deadpool_of(url: &str, max: usize) -> deadpool::Pool<Conn> {
                deadpool::Pool::builder(AsyncDieselConnectionManager::<Conn>::new(url))
                    .max_size(max)
                    .build()
                    .unwrap()
            }

            async fn bb8_of(url: &str, max: u32) -> bb8::Pool<Conn> {
                bb8::Pool::builder()
                    .max_size(max)
                    .test_on_check_out(false)
                    .connection_timeout(Duration::from_secs(3))
                    .build(AsyncDieselConnectionManager::<Conn>::new(url))
                    .await
                    .unwrap()
            }

            /// Copies each key of a batch into `copies`; in the third batch,
            /// first kills every other connection to the database, its own
            /// included.
            macro_rules! copy_killing_batch_3 {
                ($url:expr, $calls:expr) => {{
                    let (url, calls) = ($url, $calls);
                    async move |conn: &mut Conn, batch: Vec<Counter>| {
                        if calls.fetch_add(1, Ordering::Relaxed) == 2 {
                            let url = url.to_string();
                            tokio::task::spawn_blocking(move || $kill(&url))
                                .await
                                .unwrap();
                        }
                        for c in &batch {
                            diesel::insert_into(copies::table)
                                .values(copies::id.eq(c.id))
                                .execute(conn)
                                .await?;
                        }
                        QueryResult::Ok(())
                    }
                }};
            }

            /// A connection killed inside batch 3's closure: the batch did
            /// not commit, so it runs again on a fresh connection of the pool;
            /// with and without a checkpoint, on deadpool and bb8, and in a
            /// spawned task (the job's future is `Send`).
            #[tokio::test(flavor = "multi_thread")]
            async fn a_connection_killed_inside_a_batch_is_retried_and_each_key_copied_once() {
                let (db, url) = setup();
                let check = |db: &TestDb| {
                    let mut sync = <B as TestBackend>::connect(db);
                    let ids = copy_ids(&mut sync);
                    diesel::RunQueryDsl::execute(
                        diesel::sql_query("DELETE FROM copies"),
                        &mut sync,
                    )
                    .unwrap();
                    ids
                };
                let all: Vec<i32> = (1..=ROWS).collect();

                let pool = deadpool_of(&url, 2);
                let calls = AtomicUsize::new(0);
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .for_each_batch(&pool, copy_killing_batch_3!(&url, &calls))
                    .await
                    .unwrap();
                assert!(report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches, report.done), (100, 10, true));
                assert_eq!(check(&db), all);

                // The observer hears of each committed batch once, and of the
                // retry, with its batch.
                let pool = bb8_of(&url, 2).await;
                let calls = AtomicUsize::new(0);
                let heard = std::sync::Arc::new(Heard::default());
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("copy")
                    .observe(std::sync::Arc::clone(&heard))
                    .for_each_batch(&pool, copy_killing_batch_3!(&url, &calls))
                    .await
                    .unwrap();
                assert!(report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches, report.done), (100, 10, true));
                assert_eq!(check(&db), all);
                let batches = heard.batches.lock().unwrap().clone();
                assert_eq!(batches, (1..=10).map(|b| (b, 10 * b)).collect::<Vec<_>>());
                let retries = heard.retries.lock().unwrap().clone();
                assert_eq!(retries.len() as u64, report.retries);
                assert!(
                    retries
                        .iter()
                        .all(|&(batch, attempt)| batch == 3 && attempt >= 1),
                    "{retries:?}"
                );

                let spawned = tokio::spawn({
                    let (pool, url) = (deadpool_of(&url, 2), url.clone());
                    async move {
                        let calls = AtomicUsize::new(0);
                        counters::table
                            .chunked_by(counters::id)
                            .batch_size(BATCH)
                            .checkpoint("copy-spawned")
                            .for_each_batch(&pool, copy_killing_batch_3!(&url, &calls))
                            .await
                    }
                });
                let report = spawned.await.unwrap().unwrap();
                assert!(report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.done), (100, true));
                assert_eq!(check(&db), all);
            }

            /// `update_all` loses batch 3's `COMMIT` answer after the server
            /// committed it: without a checkpoint the job stops with
            /// `CommitUnknown` instead of writing the batch again; with one it
            /// learns from the checkpoint row that the batch committed and
            /// goes on. Every row is written once per run.
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lost_commit_answer_is_never_written_again() {
                let (db, _) = setup();
                let proxy = Proxy::start(&db.url, 3);
                let pool = deadpool_of(&proxied(&proxy, &db.url), 2);
                let err = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .await
                    .expect_err(&format!(
                        "the job must stop at the lost answer ({} commits)",
                        proxy.commits()
                    ));
                assert_eq!(
                    proxy.answers_dropped(),
                    1,
                    "the proxy must have cut: {err:?}"
                );
                match &err {
                    Error::CommitUnknown {
                        batch: 3,
                        after: Some(after),
                        first,
                        last,
                        checkpoint: None,
                        ..
                    } => {
                        assert_eq!(
                            (after.as_str(), first.as_str(), last.as_str()),
                            ("20", "21", "30")
                        )
                    }
                    other => panic!("expected CommitUnknown for batch 3, got {other:?}"),
                }
                let mut sync = <B as TestBackend>::connect(&db);
                let mut rows = at(1, 30, 1);
                rows.extend(at(31, ROWS, 0));
                assert_eq!(counter_rows(&mut sync), rows);
                let rest = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .start_after(30)
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert_eq!((rest.rows, rest.done), (70, true));
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));

                let proxy = Proxy::start(&db.url, 3);
                let pool = bb8_of(&proxied(&proxy, &db.url), 2).await;
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("bump")
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .await
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done && report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
                assert_eq!(counter_rows(&mut sync), at(1, ROWS, 2));
                let c = checkpoint::status(&mut sync, "bump").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (ROWS as u64, 10, true));
            }
        }
    };
}

#[cfg(all(feature = "deadpool", feature = "bb8", feature = "r2d2"))]
async_pool_write_tests!(
    postgres_pools,
    Pg,
    diesel_async::AsyncPgConnection,
    "postgres",
    |url: &str| format!("{url}&application_name={}", unique_name("awrite")),
    kill_pg
);
#[cfg(all(feature = "deadpool", feature = "bb8", feature = "r2d2"))]
async_pool_write_tests!(
    mysql_pools,
    Mysql,
    diesel_async::AsyncMysqlConnection,
    "mysql",
    |url: &str| url.to_string(),
    kill_mysql
);
