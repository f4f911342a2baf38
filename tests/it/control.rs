//! A write job steered by its `Control` from another thread while it runs:
//! paused (no batch runs, no transaction is held), resized, resumed, and
//! cancelled (it stops between batches, also in the middle of a long wait,
//! and its checkpoint resumes exactly); on every backend, blocking and async.
//! Every row is checked by its counter.

use crate::common;
use crate::lost_commit::{at, counter_rows, counters, create_tables, BATCH, ROWS};

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, BatchStats};

/// A throttle that, after batch `at`, tells the steering thread (`signal`)
/// and waits until it answers (`answer`), then asks for a wait of `wait`.
fn gate(
    at: u64,
    wait: Option<Duration>,
) -> (
    impl Fn(&BatchStats) -> Option<Duration> + Send + Sync + 'static,
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
) {
    let (signal, seen) = mpsc::channel();
    let (answer, answered) = mpsc::channel::<()>();
    let channels = Mutex::new((signal, answered));
    let throttle = move |stats: &BatchStats| {
        if stats.batch == at {
            let c = channels.lock().unwrap();
            c.0.send(()).unwrap();
            c.1.recv_timeout(Duration::from_secs(60)).unwrap();
            return wait;
        }
        None
    };
    (throttle, seen, answer)
}

backend_tests! {
    fn a_paused_job_runs_no_batch_and_resumes_with_a_new_batch_size(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn, ROWS);
        checkpoint::create_table(&mut conn).unwrap();
        let mut watcher = connect::<B>(&db);
        let job = counters::table.chunked_by(counters::id).batch_size(BATCH).checkpoint("steer");
        let control = job.control();
        let (throttle, seen, answer) = gate(2, None);
        let report = std::thread::scope(|s| {
            let (control, watcher) = (&control, &mut watcher);
            let steer = s.spawn(move || {
                seen.recv().unwrap(); // the job is between batches 2 and 3
                control.pause();
                answer.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                // No batch ran, and the job holds no transaction: this read
                // (SQLite: of a database no one is writing) sees batch 2.
                let c = checkpoint::status(watcher, "steer").unwrap().unwrap();
                assert_eq!((c.batches, c.rows), (2, 20), "a paused job runs no batch");
                assert!(control.is_paused());
                control.set_batch_size(40).unwrap();
                control.resume();
            });
            let report = job
                .throttle(throttle)
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap();
            steer.join().unwrap();
            report
        });
        // 2 batches of 10, then 80 rows in batches of 40.
        assert_eq!((report.rows, report.batches, report.batch_size), (100, 4, 40));
        assert!(report.done && !report.cancelled);
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
    }

    fn a_cancelled_job_stops_between_batches_and_resumes_exactly(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn, ROWS);
        checkpoint::create_table(&mut conn).unwrap();
        let job = || counters::table.chunked_by(counters::id).batch_size(BATCH).checkpoint("steer");
        let first = job();
        let control = first.control();
        // After batch 3 the job is told to wait a minute; the cancel cuts it short.
        let (throttle, seen, answer) = gate(3, Some(Duration::from_secs(60)));
        let started = Instant::now();
        let report = std::thread::scope(|s| {
            let control = &control;
            s.spawn(move || {
                seen.recv().unwrap();
                answer.send(()).unwrap();
                control.cancel();
            });
            first
                .throttle(throttle)
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap()
        });
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        assert_eq!((report.rows, report.batches, report.last_key), (30, 3, Some(30)));
        assert!(report.cancelled && !report.done);
        let mut rows = at(1, 30, 1);
        rows.extend(at(31, ROWS, 0));
        assert_eq!(counter_rows(&mut conn), rows);
        let c = checkpoint::status(&mut conn, "steer").unwrap().unwrap();
        assert_eq!((c.batches, c.rows, c.done), (3, 30, false));

        let rest = job().update_all(&mut conn, counters::n.eq(counters::n + 1)).unwrap();
        assert_eq!((rest.resumed_after, rest.rows, rest.done), (Some(30), 70, true));
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
    }
}

/// The async job reads the same handle: cancelled from another thread in
/// the middle of a long wait, it returns at once, and resumes exactly.
#[cfg(feature = "async")]
macro_rules! async_control_tests {
    ($name:ident, $backend:ty, $conn:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            use diesel_async::AsyncConnection;
            let db = <$backend as TestBackend>::create();
            let mut sync = <$backend as TestBackend>::connect(&db);
            create_tables(&mut sync, ROWS);
            checkpoint::create_table(&mut sync).unwrap();
            let mut conn = <$conn>::establish(&db.url).await.unwrap();
            let job = || {
                counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("steer")
            };
            let first = job();
            let control = first.control();
            let (throttle, seen, answer) = gate(3, Some(Duration::from_secs(60)));
            let steer = std::thread::spawn(move || {
                seen.recv().unwrap();
                answer.send(()).unwrap();
                control.cancel();
            });
            let started = Instant::now();
            let report = first
                .throttle(throttle)
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .await
                .unwrap();
            steer.join().unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(
                (report.rows, report.batches, report.cancelled, report.done),
                (30, 3, true, false)
            );
            let rest = job()
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .await
                .unwrap();
            assert_eq!(
                (rest.resumed_after, rest.rows, rest.done),
                (Some(30), 70, true)
            );
            assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));
        }
    };
}

#[cfg(feature = "async")]
async_control_tests!(
    sqlite_async_cancel,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    "sqlite"
);
#[cfg(feature = "async")]
async_control_tests!(
    postgres_async_cancel,
    Pg,
    diesel_async::AsyncPgConnection,
    "postgres"
);
#[cfg(feature = "async")]
async_control_tests!(
    mysql_async_cancel,
    Mysql,
    diesel_async::AsyncMysqlConnection,
    "mysql"
);
