//! A pooled scan across a restart of the PostgreSQL server: every connection of
//! the pool dies, the server refuses connections for a while, then comes back.
//! The scan must go on and yield every row exactly once, with the pool's default
//! settings and with `test_on_check_out(false)`.
//!
//! The test restarts a PostgreSQL cluster of its own, never the shared server the
//! other tests use: `PG_RESTART_URL` (default `postgres://root@127.0.0.1:5433/test`),
//! restarted by `PG_RESTART_COMMAND` (default
//! `pg_ctlcluster --skip-systemctl-redirect 15 restarttest restart`). The cluster is
//! created and started by `.ci/setup` (`.ci/pg-restart-cluster`). An unreachable
//! cluster fails the test.
#![cfg(all(feature = "r2d2", feature = "postgres"))]

use crate::common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::PgConnection;
use diesel_chunked_iterator::prelude::*;
use diesel_migrations::MigrationHarness;

const ROWS: i32 = 20_000;
const BATCH: u64 = 100;

/// Both tests restart the same server: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn restart_url() -> String {
    server_url("PG_RESTART_URL", "postgres://root@127.0.0.1:5433/test")
}

fn restart_command() -> Vec<String> {
    let cmd = std::env::var("PG_RESTART_COMMAND")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| {
            "pg_ctlcluster --skip-systemctl-redirect 15 restarttest restart".to_string()
        });
    cmd.split_whitespace().map(str::to_string).collect()
}

/// A schema of its own on the restart server, dropped with the value.
struct Schema {
    server: String,
    name: String,
    url: String,
}

impl Schema {
    fn create() -> Self {
        let server = restart_url();
        let mut admin = PgConnection::establish(&server).unwrap_or_else(|e| {
            panic!(
                "the PostgreSQL cluster for the restart test at {server} is unreachable: {e} \
                 (create it with .ci/pg-restart-cluster, or set PG_RESTART_URL)"
            )
        });
        let name = unique_name("restart");
        diesel::sql_query(format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .expect("create schema");
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options=-csearch_path%3D{name}");
        let mut conn = PgConnection::establish(&url).expect("connect to the test schema");
        conn.run_pending_migrations(PG_MIGRATIONS)
            .expect("migrations (postgres)");
        Self { server, name, url }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!("DROP SCHEMA {} CASCADE", self.name)).execute(&mut c);
        }
    }
}

fn restart_server() -> Duration {
    let cmd = restart_command();
    let started = Instant::now();
    let status = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    started.elapsed()
}

/// Scans `ROWS` posts in batches of `BATCH` through a pool made by `builder`,
/// restarting the server after the tenth batch. Until the restart is over the
/// loop body sleeps a little after each batch, so that batches run while the
/// server shuts down, while it is down and when it is back, and rows are left
/// for after the restart.
fn scan_across_restart(
    what: &str,
    builder: diesel::r2d2::Builder<ConnectionManager<PgConnection>>,
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let schema = Schema::create();
    {
        let mut conn = PgConnection::establish(&schema.url).unwrap();
        insert_posts(&mut conn, 1..=ROWS);
    }
    let pool = builder
        .connection_timeout(Duration::from_secs(30))
        .build(ConnectionManager::<PgConnection>::new(&schema.url))
        .unwrap();
    let started = Instant::now();
    let mut it = posts::table
        .chunked_by(posts::id)
        .batch_size(BATCH)
        .load_batches::<Post>(&pool);
    let mut seen: Vec<i32> = Vec::with_capacity(ROWS as usize);
    let mut restart = None;
    let mut restart_took = None;
    let mut rows_after_restart = 0;
    let mut failure = None;
    for batch in it.by_ref() {
        let rows = match batch {
            Ok(rows) => rows,
            Err(e) => {
                failure = Some(e);
                continue;
            }
        };
        seen.extend(rows.iter().map(|p| p.id));
        if restart_took.is_some() {
            rows_after_restart += rows.len();
        }
        if seen.len() == 10 * BATCH as usize {
            restart = Some(std::thread::spawn(restart_server));
        }
        let finished = restart.as_ref().map(|h| h.is_finished());
        match finished {
            Some(false) if ROWS as usize - seen.len() > 20 * BATCH as usize => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(_) => {
                let took = restart.take().unwrap().join().expect("restart thread");
                restart_took = Some(took);
            }
            None => {}
        }
    }
    let elapsed = started.elapsed();
    if let Some(h) = restart.take() {
        restart_took = Some(h.join().expect("restart thread"));
    }
    let p = it.progress();
    eprintln!(
        "restart, {what}: scan {:.2} s, restart {:.2} s, {} batches, {} queries, {} retries",
        elapsed.as_secs_f64(),
        restart_took.unwrap_or_default().as_secs_f64(),
        p.batches,
        p.queries,
        p.retries,
    );
    if let Some(e) = failure {
        panic!("the scan failed after {} rows: {e} ({p:?})", seen.len());
    }
    assert!(
        restart_took.is_some(),
        "the server must have been restarted"
    );
    assert!(
        rows_after_restart > 0,
        "the scan must go on after the restart"
    );
    assert_eq!(seen.len(), ROWS as usize, "row count");
    assert!(
        seen.iter().copied().eq(1..=ROWS),
        "every row exactly once, in order"
    );
    drop(pool);
    drop(schema);
}

#[test]
fn scan_survives_server_restart_with_default_pool() {
    scan_across_restart("default pool", Pool::builder());
}

#[test]
fn scan_survives_server_restart_without_test_on_check_out() {
    scan_across_restart(
        "test_on_check_out(false)",
        Pool::builder().test_on_check_out(false),
    );
}

/// The postmaster of the server `conn` is connected to: the parent of its
/// backend (the server runs on this machine).
fn postmaster_pid(conn: &mut PgConnection) -> i32 {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let backend = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .unwrap()
        .pid;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))
        .unwrap_or_else(|e| panic!("the restart cluster must run on this machine: {e}"));
    // pid (comm) state ppid ...
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts the cluster again after a crash: `PG_RESTART_COMMAND` with `start`
/// for `restart`, tried until the orphaned backends are gone.
fn start_after_crash() {
    let mut cmd = restart_command();
    if let Some(last) = cmd.last_mut() {
        if last == "restart" {
            *last = "start".to_string();
        }
    }
    let started = Instant::now();
    loop {
        // (it fails while the killed server's backends still hold its lock file)
        let ok = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok && PgConnection::establish(&restart_url()).is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{cmd:?} did not bring the server back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A schema of the restart cluster with `counters` (ids `1..=rows`) and the
/// checkpoint table, a connection to it, and the pid of the server's
/// postmaster.
fn crash_setup(rows: i32) -> (Schema, PgConnection, i32) {
    let schema = Schema::create();
    let mut conn = PgConnection::establish(&schema.url).unwrap();
    crate::lost_commit::create_tables(&mut conn, rows);
    diesel_chunked_iterator::checkpoint::create_table(&mut conn).unwrap();
    let postmaster = postmaster_pid(&mut conn);
    (schema, conn, postmaster)
}

/// SIGKILL of the postmaster `pid`: the server dies at once, without
/// flushing what it has not flushed.
fn kill_server(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `async_commit()`: a server crash (SIGKILL of the postmaster) in the middle
/// of a checkpointed job loses the last commits that were not flushed, their
/// checkpoint advances with them, and the job run again writes every row
/// exactly once.
#[test]
fn an_async_commit_job_is_exactly_once_across_a_server_crash() {
    use crate::lost_commit::{at, counter_rows, counters};
    use diesel_chunked_iterator::{checkpoint, BatchStats};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rows = 3000;
    let (schema, mut conn, postmaster) = crash_setup(rows);
    let log = QueryLog::install(&mut conn);
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&committed);
    let job = || {
        counters::table
            .chunked_by(counters::id)
            .batch_size(50)
            .checkpoint("crash")
            .async_commit()
    };
    let err = job()
        .throttle(move |stats: &BatchStats| {
            seen.store(stats.batch, std::sync::atomic::Ordering::SeqCst);
            if stats.batch == 20 {
                kill_server(postmaster);
                std::thread::sleep(Duration::from_millis(300));
            }
            None
        })
        .update_all(&mut conn, counters::n.eq(counters::n + 1))
        .unwrap_err();
    eprintln!("the job after the crash: {err}");
    let first: Vec<String> = log.all().into_iter().take(8).collect();
    assert!(
        first
            .iter()
            .any(|q| q.starts_with("SET LOCAL synchronous_commit = off")),
        "{first:#?}"
    );
    drop(conn);
    start_after_crash();
    let mut conn = PgConnection::establish(&schema.url).unwrap();
    let row = checkpoint::status(&mut conn, "crash").unwrap().unwrap();
    let reported = committed.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "committed before the crash: {reported} batches; after recovery the checkpoint has {}",
        row.batches
    );
    assert!(row.batches <= reported && !row.done);
    // what recovery kept is consistent with the checkpoint: rows up to its key once, none after
    let kept = row.batches as i32 * 50;
    assert_eq!(
        counter_rows(&mut conn),
        [at(1, kept, 1), at(kept + 1, rows, 0)].concat()
    );
    let rest = job()
        .update_all(&mut conn, counters::n.eq(counters::n + 1))
        .unwrap();
    assert!(rest.done);
    assert_eq!(rest.resumed_after, (kept > 0).then_some(kept));
    assert_eq!(
        counter_rows(&mut conn),
        at(1, rows, 1),
        "every row exactly once"
    );
    drop(conn);
    drop(schema);
}

/// `async_commit()`: the batch that ends the job waits for its flush, and so
/// for every batch's before it, so a server crash (SIGKILL of the
/// postmaster) right after the job returned loses nothing: every row is
/// written once and the checkpoint says done.
#[test]
fn an_async_commit_job_that_returned_done_survives_a_server_crash() {
    use crate::lost_commit::{at, counter_rows, counters};
    use diesel_chunked_iterator::checkpoint;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rows = 600;
    let (schema, mut conn, postmaster) = crash_setup(rows);
    let log = QueryLog::install(&mut conn);
    let report = counters::table
        .chunked_by(counters::id)
        .batch_size(20)
        .checkpoint("crash-after")
        .async_commit()
        .update_all(&mut conn, counters::n.eq(counters::n + 1))
        .unwrap();
    kill_server(postmaster);
    drop(conn);
    start_after_crash();
    assert!(report.done);
    let mut conn = PgConnection::establish(&schema.url).unwrap();
    let row = checkpoint::status(&mut conn, "crash-after")
        .unwrap()
        .unwrap();
    assert!(row.done, "{row:?}");
    assert_eq!(row.rows, rows as u64);
    assert_eq!(
        counter_rows(&mut conn),
        at(1, rows, 1),
        "every row exactly once"
    );
    // The last batch only: the others commit without waiting.
    let statements = log.all();
    let durable = statements
        .iter()
        .filter(|q| q.starts_with("SET LOCAL synchronous_commit = on"))
        .count();
    assert_eq!(durable, 1, "{statements:#?}");
    drop(conn);
    drop(schema);
}

/// `async_commit()`: when the job's last batch is empty (the batch before it
/// deleted the rows that were left) and its `COMMIT` never reaches the server
/// (the connection breaks; no retry left), that lost `COMMIT` was the job's
/// one flushed commit: the job stops with the error instead of reporting
/// `done`, and after a server crash right then, a run again writes every row
/// exactly once. (Found by a hostile review: the job reported `done` and the
/// crash took its last batch.)
#[test]
fn an_async_commit_job_whose_empty_last_commit_is_lost_stops_with_an_error() {
    use crate::lost_commit::proxy::Proxy;
    use crate::lost_commit::{at, counter_rows, counters, Counter};
    use diesel_chunked_iterator::{checkpoint, Error};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rows = 301;
    let (schema, conn, postmaster) = crash_setup(rows);
    let job = || {
        counters::table
            .chunked_by(counters::id)
            .batch_size(100)
            .checkpoint("empty-last")
            .async_commit()
    };
    let write = |conn: &mut PgConnection, batch: Vec<Counter>| {
        let ids: Vec<i32> = batch.iter().map(|c| c.id).collect();
        diesel::update(counters::table.filter(counters::id.eq_any(&ids)))
            .set(counters::n.eq(counters::n + 1))
            .execute(conn)?;
        if ids.last() == Some(&300) {
            // the rows left after this batch go: the next batch is empty
            diesel::delete(counters::table.filter(counters::id.gt(300))).execute(conn)?;
        }
        diesel::QueryResult::Ok(())
    };
    // COMMITs: batches 1 to 3, then the empty fourth, never forwarded
    let proxy = Proxy::start_swallowing(&schema.url, 4);
    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<PgConnection>::new(
            proxy.url(&schema.url),
        ))
        .unwrap();
    let result = job().max_retries(0).for_each_batch(&pool, write);
    kill_server(postmaster);
    drop(conn);
    drop(pool);
    start_after_crash();
    assert_eq!(proxy.answers_dropped(), 1);
    assert!(matches!(result, Err(Error::Database { .. })), "{result:?}");
    let mut conn = PgConnection::establish(&schema.url).unwrap();
    let rest = job().for_each_batch(&mut conn, write).unwrap();
    assert!(rest.done);
    assert_eq!(
        counter_rows(&mut conn),
        at(1, 300, 1),
        "every row exactly once"
    );
    let row = checkpoint::status(&mut conn, "empty-last")
        .unwrap()
        .unwrap();
    assert!(row.done, "{row:?}");
    drop(conn);
    drop(schema);
}
