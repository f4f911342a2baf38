//! Health signals against real replication (`.ci/replication`): a
//! PostgreSQL primary (`PG_REPL_PRIMARY_URL`, default port 5434) streaming to a
//! standby (`PG_REPL_STANDBY_URL`, 5435), and a MariaDB primary
//! (`MYSQL_REPL_PRIMARY_URL`, 3307) with a replica (`MYSQL_REPL_REPLICA_URL`,
//! 3308). Lag is made for real: the standby's replay is paused
//! (`pg_wal_replay_pause()`), the replica's SQL thread is stopped or blocked
//! by `FLUSH TABLES WITH READ LOCK`. Load is made for real: sleeping
//! statements (`Threads_running`), an open snapshot (history list length).
//!
//! Each test writes `counters` (100 rows, 10 batches) and checks every row
//! was written exactly once, and what the report says of the waits. The tests
//! share the replicas, so they run one at a time.

use crate::common;
use crate::lost_commit::{at, counter_rows, counters, create_tables, BATCH, ROWS};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::health::{self, HealthWait};
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{BatchStats, Error, WriteObserver};

/// The replicas serve one test at a time.
static REPLICAS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    REPLICAS.lock().unwrap_or_else(|e| e.into_inner())
}

/// When each batch committed.
#[derive(Default)]
struct Commits(Mutex<Vec<(u64, Instant)>>);

impl WriteObserver for Commits {
    fn on_batch(&self, stats: &BatchStats) {
        self.0.lock().unwrap().push((stats.batch, Instant::now()));
    }
}

impl Commits {
    fn after(&self, t: Instant) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at > t)
            .map(|(b, _)| *b)
            .collect()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Waits until `f` is true (checked every 50 ms) for at most `limit`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    loop {
        if f() {
            return Instant::now();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn the_one_wait<'a>(waits: &'a [HealthWait], signal: &str) -> &'a HealthWait {
    let on: Vec<&HealthWait> = waits.iter().filter(|w| w.signal == signal).collect();
    assert!(!on.is_empty(), "no wait on {signal}: {waits:#?}");
    on[0]
}

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool};
    use diesel::PgConnection;

    #[derive(QueryableByName)]
    struct Lag {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        lag: Option<f64>,
    }

    /// A schema of its own on the primary (replicated to the standby), with
    /// `counters`; dropped on drop.
    struct Replicated {
        url: String,
        schema: String,
        admin: PgConnection,
    }

    impl Replicated {
        fn new() -> Self {
            let server = server_url("PG_REPL_PRIMARY_URL", "postgres://root@127.0.0.1:5434/test");
            let mut admin = PgConnection::establish(&server).unwrap_or_else(|e| {
                panic!(
                    "the replication primary at {server} is unreachable: {e} (run .ci/replication)"
                )
            });
            let schema = unique_name("health");
            diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                .execute(&mut admin)
                .unwrap();
            let url = format!("{server}?options=-csearch_path%3D{schema}");
            let mut conn = PgConnection::establish(&url).unwrap();
            create_tables(&mut conn, ROWS);
            Self { url, schema, admin }
        }
        fn connect(&self) -> PgConnection {
            PgConnection::establish(&self.url).unwrap()
        }
    }

    impl Drop for Replicated {
        fn drop(&mut self) {
            let _ = diesel::sql_query(format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&mut self.admin);
        }
    }

    fn standby() -> PgConnection {
        let url = server_url("PG_REPL_STANDBY_URL", "postgres://root@127.0.0.1:5435/test");
        PgConnection::establish(&url).unwrap_or_else(|e| {
            panic!("the standby at {url} is unreachable: {e} (run .ci/replication)")
        })
    }

    fn standby_pool() -> Pool<ConnectionManager<PgConnection>> {
        let url = server_url("PG_REPL_STANDBY_URL", "postgres://root@127.0.0.1:5435/test");
        Pool::builder()
            .max_size(2)
            .build(ConnectionManager::new(url))
            .unwrap()
    }

    /// Pauses the standby's replay until dropped.
    struct Paused(PgConnection);
    impl Paused {
        fn now() -> Self {
            let mut c = standby();
            diesel::sql_query("SELECT pg_wal_replay_pause()")
                .execute(&mut c)
                .unwrap();
            Paused(c)
        }
    }
    impl Drop for Paused {
        fn drop(&mut self) {
            diesel::sql_query("SELECT pg_wal_replay_resume()")
                .execute(&mut self.0)
                .unwrap();
        }
    }

    /// The standby's replay lag as the primary sees it (what the signal reads).
    fn primary_lag(conn: &mut PgConnection) -> f64 {
        diesel::sql_query(
            "SELECT max(extract(epoch FROM replay_lag))::float8 AS lag FROM pg_stat_replication",
        )
        .get_result::<Lag>(conn)
        .unwrap()
        .lag
        .unwrap_or(0.0)
    }

    #[test]
    fn a_job_waits_while_the_standby_lags_and_writes_every_row_once() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let mut watch = db.connect();
        let commits = Arc::new(Commits::default());
        let max = Duration::from_millis(500);
        let job = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .pause(Duration::from_millis(500))
            .health_interval(Duration::from_millis(100))
            .throttle_on(health::replica_lag(max))
            .observe(Arc::clone(&commits));
        let (report, crossed, resumed) = std::thread::scope(|s| {
            let steer = s.spawn(|| {
                wait_until(Duration::from_secs(30), "batch 3", || commits.count() >= 3);
                let paused = Paused::now();
                // the job's next batches write WAL the standby does not replay
                let crossed = wait_until(Duration::from_secs(30), "lag over the limit", || {
                    primary_lag(&mut watch) > max.as_secs_f64()
                });
                std::thread::sleep(Duration::from_secs(2));
                let resumed = Instant::now();
                drop(paused);
                (crossed, resumed)
            });
            let report = job
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap();
            let (crossed, resumed) = steer.join().unwrap();
            (report, crossed, resumed)
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        assert!(report.done);
        assert_eq!((report.rows, report.batches), (100, 10));
        // Between the lag crossing the limit and the replay's resumption no batch
        // committed but the one that may have been running: the job held within
        // one batch.
        let late: Vec<u64> = commits
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t > crossed && *t < resumed)
            .map(|(b, _)| *b)
            .collect();
        assert!(
            late.len() <= 1,
            "batches {late:?} committed while the standby lagged"
        );
        assert!(
            !commits.after(resumed).is_empty(),
            "the job went on after the standby caught up"
        );
        let wait = the_one_wait(&report.waits, "replica_lag");
        let reading = wait.reading.as_ref().expect("a reading over the limit");
        assert!(reading.value > max.as_secs_f64(), "{wait}");
        assert_eq!(reading.limit, max.as_secs_f64());
        assert!(wait.waited >= Duration::from_millis(1500), "{wait}");
        assert!((5..=10).contains(&wait.batch), "{wait}");
        assert!(report.waited >= wait.waited, "{report:?}");
        assert!(wait.to_string().starts_with("replica_lag: "), "{wait}");
    }

    #[test]
    fn lag_read_on_the_standby_holds_the_first_batch_until_replay_resumes() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let paused = Paused::now();
        // a transaction the standby receives and does not replay
        diesel::sql_query("UPDATE counters SET n = n WHERE id = 1")
            .execute(&mut conn)
            .unwrap();
        let mut on_standby = standby();
        wait_until(Duration::from_secs(30), "the standby 0.6 s behind", || {
            diesel::sql_query(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS lag",
            )
            .get_result::<Lag>(&mut on_standby)
            .unwrap()
            .lag
            .is_some_and(|l| l > 0.6)
        });
        let pool = standby_pool();
        let job = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .health_interval(Duration::from_millis(100))
            .throttle_on(health::replica_lag(Duration::from_millis(500)).on(&[&pool]));
        let report = std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                drop(paused);
            });
            job.update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap()
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert_eq!(wait.batch, 1, "{wait}");
        assert!(wait.waited >= Duration::from_millis(1000), "{wait}");
        assert_eq!(
            wait.reading.as_ref().unwrap().source,
            "127.0.0.1:5435",
            "{wait}"
        );
    }

    #[test]
    fn an_unreachable_standby_stops_the_job_after_the_limit() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        // nothing listens there
        let dead: Pool<ConnectionManager<PgConnection>> = Pool::builder()
            .connection_timeout(Duration::from_millis(200))
            .build_unchecked(ConnectionManager::new("postgres://root@127.0.0.1:1/test"));
        diesel_chunked_iterator::checkpoint::create_table(&mut conn).unwrap();
        let started = Instant::now();
        let err = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .checkpoint("unreachable")
            .health_interval(Duration::from_millis(200))
            .unreadable_limit(Duration::from_secs(1))
            .throttle_on(health::replica_lag(Duration::from_secs(1)).on(&[&dead]))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{err:?} after {:?}",
            started.elapsed()
        );
        match &err {
            Error::HealthUnreadable {
                signal,
                reason,
                waited,
            } => {
                assert_eq!(signal, "replica_lag");
                assert!(reason.starts_with("replica 1: "), "{reason}");
                assert!(*waited >= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("never taken as healthy"), "{err}");
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0), "no batch ran");
    }

    #[test]
    fn autovacuum_and_lag_bytes_read_on_the_primary() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let stmts = QueryLog::install(&mut conn);
        let report = counters::table
            .chunked_by(counters::id)
            .batch_size(50)
            .throttle_on(health::pg_autovacuum_on_table())
            .throttle_on(health::replica_lag_bytes(1 << 30))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap();
        assert!(report.waits.is_empty(), "{:?}", report.waits);
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let reads: Vec<String> = stmts
            .all()
            .into_iter()
            .filter(|q| q.contains("pg_stat_progress_vacuum") || q.contains("pg_stat_replication"))
            .collect();
        // before the first batch only: the batches take less than the interval
        assert_eq!(reads.len(), 2, "{reads:#?}");
        assert!(
            reads[0].contains("to_regclass(quote_ident($1))"),
            "{}",
            reads[0]
        );
        assert!(
            reads[1].contains("pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)"),
            "{}",
            reads[1]
        );
    }

    #[test]
    fn a_dry_run_shows_the_statements_the_plan_and_the_readings_and_writes_nothing() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let dry = counters::table
            .filter(counters::n.eq(0))
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .throttle_on(health::replica_lag(Duration::from_secs(2)))
            .throttle_on(health::pg_autovacuum_on_table())
            .dry_run(&mut conn)
            .unwrap();
        assert_eq!(
            dry.first_batch,
            "SELECT \"counters\".\"id\" FROM \"counters\" WHERE ((\"counters\".\"n\" = $1) AND 1 = 1) \
             ORDER BY \"counters\".\"id\" LIMIT $2 -- binds: [0, 11]"
        );
        assert_eq!(
            dry.later_batch.as_deref(),
            Some(
                "SELECT \"counters\".\"id\" FROM \"counters\" WHERE ((\"counters\".\"n\" = $1) \
                 AND \"counters\".\"id\" > $2) ORDER BY \"counters\".\"id\" LIMIT $3 -- binds: [0, 10, 11]"
            )
        );
        assert_eq!(dry.first_keys, Some(("1".into(), "10".into())));
        assert!(dry.estimated_rows > 0 && dry.estimated_batches == dry.estimated_rows.div_ceil(10));
        assert_eq!(dry.signals.len(), 2);
        let lag = dry.signals[0].readings.as_ref().unwrap();
        assert_eq!(lag.len(), 1, "one standby: {lag:?}");
        assert!(lag[0].value < 2.0 && lag[0].limit == 2.0, "{lag:?}");
        let vacuum = dry.signals[1].readings.as_ref().unwrap();
        assert_eq!(
            (vacuum[0].source.as_str(), vacuum[0].value),
            ("source", 0.0)
        );
        assert!(dry.to_string().contains("replica_lag: "), "{dry}");
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0));
    }

    /// A physical replication slot, dropped on drop.
    struct Slot(PgConnection, String);
    impl Drop for Slot {
        fn drop(&mut self) {
            let _ = diesel::sql_query(format!("SELECT pg_drop_replication_slot('{}')", self.1))
                .execute(&mut self.0);
        }
    }

    #[test]
    fn a_standby_gone_from_its_slot_is_unreadable_not_healthy() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let name = unique_name("gone");
        let mut admin = db.connect();
        diesel::sql_query(format!(
            "SELECT pg_create_physical_replication_slot('{name}')"
        ))
        .execute(&mut admin)
        .unwrap();
        let _slot = Slot(admin, name.clone());
        let err = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .health_interval(Duration::from_millis(100))
            .unreadable_limit(Duration::from_millis(500))
            .throttle_on(health::replica_lag(Duration::from_secs(5)))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap_err();
        match &err {
            Error::HealthUnreadable { signal, reason, .. } => {
                assert_eq!(signal, "replica_lag");
                assert_eq!(
                    reason,
                    &format!(
                        "{name}: replication slot {name} is inactive: its standby is disconnected"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0));
    }

    #[cfg(feature = "async")]
    #[test]
    fn an_async_dry_run_finds_what_the_blocking_one_does() {
        use diesel_async::{AsyncConnection, AsyncPgConnection};
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        diesel_chunked_iterator::checkpoint::create_table(&mut conn).unwrap();
        let job = || {
            counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .checkpoint("dry-async")
                .throttle_on(health::pg_autovacuum_on_table())
        };
        job()
            .limit_total(20)
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap();
        let blocking = job().dry_run(&mut conn).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let nonblocking = rt.block_on(async {
            let mut aconn = AsyncPgConnection::establish(&db.url).await.unwrap();
            job().dry_run_async(&mut aconn).await.unwrap()
        });
        assert_eq!(nonblocking, blocking);
        assert_eq!(blocking.resumes_after.as_deref(), Some("20"));
        assert_eq!(blocking.first_keys, Some(("21".into(), "30".into())));
        assert_eq!(blocking.signals[0].readings.as_ref().unwrap()[0].value, 0.0);
    }

    #[test]
    fn mysql_signals_are_refused_before_the_first_batch() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let err = counters::table
            .chunked_by(counters::id)
            .throttle_on(health::mysql_threads_running(10))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap_err();
        assert!(
            matches!(&err, Error::HealthUnsupported { signal, .. } if signal == "mysql_threads_running"),
            "{err:?}"
        );
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0));
    }

    #[cfg(feature = "async")]
    #[test]
    fn an_async_job_waits_while_the_standby_lags() {
        use diesel_async::{AsyncConnection, AsyncPgConnection};
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let paused = Paused::now();
        diesel::sql_query("UPDATE counters SET n = n WHERE id = 1")
            .execute(&mut conn)
            .unwrap();
        // the lag the primary sees grows while the replay stays paused
        let mut watch = db.connect();
        wait_until(Duration::from_secs(30), "lag over 0.5 s", || {
            primary_lag(&mut watch) > 0.5
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(async {
            let mut aconn = AsyncPgConnection::establish(&db.url).await.unwrap();
            let resume = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::task::spawn_blocking(move || drop(paused))
                    .await
                    .unwrap();
            });
            let report = counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .health_interval(Duration::from_millis(100))
                .throttle_on(health::replica_lag(Duration::from_millis(500)))
                .update_all(&mut aconn, counters::n.eq(counters::n + 1))
                .await
                .unwrap();
            resume.await.unwrap();
            report
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert_eq!(wait.batch, 1, "{wait}");
        assert!(wait.waited >= Duration::from_millis(1000), "{wait}");
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool};
    use diesel::MysqlConnection;

    /// A database of its own on the primary (replicated), with `counters`;
    /// dropped on drop.
    struct Replicated {
        url: String,
        name: String,
        admin: MysqlConnection,
    }

    fn server(var: &str, default: &str) -> String {
        server_url(var, default)
    }

    impl Replicated {
        fn new() -> Self {
            let server = server("MYSQL_REPL_PRIMARY_URL", "mysql://root@127.0.0.1:3307/test");
            let mut admin = MysqlConnection::establish(&server).unwrap_or_else(|e| {
                panic!(
                    "the replication primary at {server} is unreachable: {e} (run .ci/replication)"
                )
            });
            let name = unique_name("health");
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .unwrap();
            let base = server.rsplit_once('/').unwrap().0;
            let url = format!("{base}/{name}");
            let mut conn = MysqlConnection::establish(&url).unwrap();
            create_tables(&mut conn, ROWS);
            // the replica has the table before the job starts
            let mut r = replica();
            wait_until(Duration::from_secs(30), "the table on the replica", || {
                diesel::sql_query(format!("SELECT 1 FROM {name}.counters LIMIT 1"))
                    .execute(&mut r)
                    .is_ok()
            });
            Self { url, name, admin }
        }
        fn connect(&self) -> MysqlConnection {
            MysqlConnection::establish(&self.url).unwrap()
        }
    }

    impl Drop for Replicated {
        fn drop(&mut self) {
            let _ =
                diesel::sql_query(format!("DROP DATABASE {}", self.name)).execute(&mut self.admin);
        }
    }

    fn replica_url() -> String {
        server("MYSQL_REPL_REPLICA_URL", "mysql://root@127.0.0.1:3308/test")
    }

    fn replica() -> MysqlConnection {
        let url = replica_url();
        MysqlConnection::establish(&url).unwrap_or_else(|e| {
            panic!("the replica at {url} is unreachable: {e} (run .ci/replication)")
        })
    }

    fn replica_pool() -> Pool<ConnectionManager<MysqlConnection>> {
        Pool::builder()
            .max_size(2)
            .build(ConnectionManager::new(replica_url()))
            .unwrap()
    }

    fn run(conn: &mut MysqlConnection, sql: &str) {
        diesel::sql_query(sql)
            .execute(conn)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    #[test]
    fn a_stopped_sql_thread_holds_the_job_until_it_runs_again() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let pool = replica_pool();
        let commits = Arc::new(Commits::default());
        let job = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .pause(Duration::from_millis(100))
            .health_interval(Duration::from_millis(100))
            .throttle_on(health::replica_lag(Duration::from_secs(1)).on(&[&pool]))
            .observe(Arc::clone(&commits));
        let (report, stopped, started) = std::thread::scope(|s| {
            let steer = s.spawn(|| {
                let mut r = replica();
                wait_until(Duration::from_secs(30), "batch 3", || commits.count() >= 3);
                run(&mut r, "STOP SLAVE SQL_THREAD");
                let stopped = Instant::now();
                std::thread::sleep(Duration::from_secs(2));
                let started = Instant::now();
                run(&mut r, "START SLAVE SQL_THREAD");
                (stopped, started)
            });
            let report = job
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap();
            let (stopped, started) = steer.join().unwrap();
            (report, stopped, started)
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        assert_eq!((report.rows, report.batches), (100, 10));
        // at most the batch that was running when replication stopped
        let held: Vec<u64> = commits
            .after(stopped)
            .into_iter()
            .filter(|b| {
                let t = commits
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(n, _)| n == b)
                    .unwrap()
                    .1;
                t < started
            })
            .collect();
        assert!(
            held.len() <= 1,
            "batches {held:?} committed while replication was stopped"
        );
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert!(wait.reading.is_none(), "{wait}");
        let error = wait.error.as_deref().unwrap();
        assert!(error.contains("Slave_SQL_Running: No"), "{error}");
        assert!(error.starts_with("replica 1: "), "{error}");
        assert!(wait.waited >= Duration::from_millis(1500), "{wait}");
    }

    #[test]
    fn a_replica_blocked_by_a_read_lock_lags_and_the_job_waits() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let pool = replica_pool();
        let mut locker = replica();
        run(&mut locker, "FLUSH TABLES WITH READ LOCK");
        // a write the SQL thread cannot apply while the lock is held: the
        // replica's lag is the age of that event
        run(&mut conn, "UPDATE counters SET n = n + 0 WHERE id = 1");
        run(&mut conn, "INSERT INTO copies (id) VALUES (1)");
        wait_until(Duration::from_secs(30), "the replica 1.5 s behind", || {
            #[derive(QueryableByName)]
            struct Behind {
                #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>, column_name = "Seconds_Behind_Master")]
                s: Option<i64>,
            }
            let mut r = replica();
            diesel::sql_query("SHOW SLAVE STATUS")
                .get_result::<Behind>(&mut r)
                .unwrap()
                .s
                .is_some_and(|s| s >= 2)
        });
        let report = std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                run(&mut locker, "UNLOCK TABLES");
            });
            counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .health_interval(Duration::from_millis(100))
                .throttle_on(health::replica_lag(Duration::from_secs(1)).on(&[&pool]))
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap()
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert_eq!(wait.batch, 1, "{wait}");
        let reading = wait.reading.as_ref().expect("a lag over the limit");
        assert!(reading.value >= 2.0, "{wait}");
        assert_eq!((reading.source.as_str(), reading.unit), ("replica 1", " s"));
    }

    #[test]
    fn threads_running_over_the_limit_holds_the_job() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let sleepers: Vec<_> = (0..6)
            .map(|_| {
                let url = db.url.clone();
                std::thread::spawn(move || {
                    let mut c = MysqlConnection::establish(&url).unwrap();
                    run(&mut c, "DO SLEEP(2)");
                })
            })
            .collect();
        let mut watch = db.connect();
        wait_until(Duration::from_secs(10), "the sleepers running", || {
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            diesel::sql_query(
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE INFO = 'DO SLEEP(2)'",
            )
            .get_result::<N>(&mut watch)
            .unwrap()
            .n
                == 6
        });
        let report = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .health_interval(Duration::from_millis(100))
            .throttle_on(health::mysql_threads_running(4))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap();
        for s in sleepers {
            s.join().unwrap();
        }
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "mysql_threads_running");
        assert_eq!(wait.batch, 1);
        let reading = wait.reading.as_ref().unwrap();
        assert!(reading.value >= 7.0, "6 sleepers and the probe: {wait}");
        assert_eq!(reading.limit, 4.0);
        assert!(wait.waited >= Duration::from_millis(500), "{wait}");
    }

    #[test]
    fn a_long_history_list_holds_the_job_until_purge_catches_up() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let mut snapshot = db.connect();
        run(
            &mut snapshot,
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        );
        run(&mut snapshot, "START TRANSACTION WITH CONSISTENT SNAPSHOT");
        run(&mut snapshot, "SELECT COUNT(*) FROM counters");
        // undo that cannot be purged while the snapshot is open
        for i in 1..=60 {
            run(
                &mut conn,
                &format!("UPDATE copies SET id = id WHERE id = {i}"),
            );
            run(&mut conn, &format!("INSERT INTO copies (id) VALUES ({i})"));
        }
        let report = std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                run(&mut snapshot, "COMMIT");
            });
            counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .health_interval(Duration::from_millis(100))
                .unreadable_limit(Duration::from_secs(30))
                .throttle_on(health::mysql_history_list_length(40))
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap()
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "mysql_history_list_length");
        assert_eq!(wait.batch, 1, "{wait}");
        assert!(wait.reading.as_ref().unwrap().value > 40.0, "{wait}");
        assert!(wait.waited >= Duration::from_millis(1500), "{wait}");
    }

    #[test]
    fn a_dry_run_reads_the_load_and_the_replicas() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let pool = replica_pool();
        let dry = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .throttle_on(health::mysql_threads_running(50))
            .throttle_on(health::mysql_history_list_length(1_000_000))
            .throttle_on(health::replica_lag(Duration::from_secs(5)).on(&[&pool]))
            .dry_run(&mut conn)
            .unwrap();
        assert_eq!(
            dry.first_batch,
            "SELECT `counters`.`id` FROM `counters` WHERE `counters`.`id` >= \
             (SELECT MIN(`counters`.`id`) FROM `counters`) ORDER BY `counters`.`id` LIMIT ? -- binds: [11]"
        );
        let names: Vec<&str> = dry.signals.iter().map(|s| s.signal.as_str()).collect();
        assert_eq!(
            names,
            [
                "mysql_threads_running",
                "mysql_history_list_length",
                "replica_lag"
            ]
        );
        for s in &dry.signals {
            let r = s
                .readings
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", s.signal));
            assert_eq!(r.len(), 1, "{s}");
            assert!(!r[0].is_over(), "{s}");
        }
        assert!(
            dry.signals[0].readings.as_ref().unwrap()[0].value >= 1.0,
            "the probe runs"
        );
        assert_eq!(
            dry.signals[2].readings.as_ref().unwrap()[0].source,
            "replica 1"
        );
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0));
    }

    #[test]
    fn a_heartbeat_table_shows_lag_while_replication_is_stopped() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        run(
            &mut conn,
            "CREATE TABLE heartbeat (ts VARCHAR(26) NOT NULL, server_id INT UNSIGNED NOT NULL PRIMARY KEY)",
        );
        let beat = "REPLACE INTO heartbeat (ts, server_id) \
                    VALUES (DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f'), 1)";
        run(&mut conn, beat);
        let table = format!("{}.heartbeat", db.name);
        let mut r = replica();
        wait_until(
            Duration::from_secs(30),
            "the heartbeat on the replica",
            || {
                diesel::sql_query(format!("SELECT 1 FROM {table}"))
                    .execute(&mut r)
                    .is_ok_and(|n| n == 1)
            },
        );
        run(&mut r, "STOP SLAVE SQL_THREAD");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let pool = replica_pool();
        let report = std::thread::scope(|s| {
            // pt-heartbeat --update, every 100 ms
            let (url, stop) = (db.url.clone(), &stop);
            s.spawn(move || {
                let mut c = MysqlConnection::establish(&url).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    run(&mut c, beat);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(2500));
                run(&mut r, "START SLAVE SQL_THREAD");
            });
            std::thread::sleep(Duration::from_millis(1200));
            let report = counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .health_interval(Duration::from_millis(100))
                .throttle_on(
                    health::replica_lag(Duration::from_millis(800))
                        .heartbeat(&table)
                        .unwrap()
                        .on(&[&pool]),
                )
                .update_all(&mut conn, counters::n.eq(counters::n + 1))
                .unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            report
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert_eq!(wait.batch, 1, "{wait}");
        assert!(
            wait.error.is_none(),
            "a heartbeat reads a lag, not NULL: {wait}"
        );
        let reading = wait.reading.as_ref().unwrap();
        assert!(reading.value > 1.0, "{wait}");
        assert!(wait.waited >= Duration::from_millis(800), "{wait}");
    }

    #[test]
    fn lag_on_the_job_source_is_refused_with_a_hint() {
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let err = counters::table
            .chunked_by(counters::id)
            .throttle_on(health::replica_lag(Duration::from_secs(1)))
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .unwrap_err();
        match &err {
            Error::HealthUnsupported { signal, reason } => {
                assert_eq!(signal, "replica_lag");
                assert!(reason.contains(".on(&[&replica_pool])"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 0));
    }

    #[cfg(feature = "async")]
    #[test]
    fn an_async_job_reads_the_replica_and_waits_while_replication_is_stopped() {
        use diesel_async::{AsyncConnection, AsyncMysqlConnection};
        let _serial = serial();
        let db = Replicated::new();
        let mut conn = db.connect();
        let pool = replica_pool();
        let mut r = replica();
        run(&mut r, "STOP SLAVE SQL_THREAD");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(async {
            let mut aconn = AsyncMysqlConnection::establish(&db.url).await.unwrap();
            let restart = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(2));
                run(&mut r, "START SLAVE SQL_THREAD");
            });
            let report = counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .health_interval(Duration::from_millis(100))
                .throttle_on(health::replica_lag(Duration::from_secs(1)).on(&[&pool]))
                .update_all(&mut aconn, counters::n.eq(counters::n + 1))
                .await
                .unwrap();
            restart.await.unwrap();
            report
        });
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
        let wait = the_one_wait(&report.waits, "replica_lag");
        assert_eq!(wait.batch, 1, "{wait}");
        assert!(
            wait.error
                .as_deref()
                .unwrap()
                .contains("Slave_SQL_Running: No"),
            "{wait}"
        );
        assert!(wait.waited >= Duration::from_millis(1500), "{wait}");
    }
}
