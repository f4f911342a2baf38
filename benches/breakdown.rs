//! Where the time of one write batch goes: `update_all` at batch 1000 with a
//! checkpoint, every statement timed on the client (Diesel's instrumentation,
//! from the start of a statement to its end), against one big `UPDATE`.
//!
//! ```sh
//! cargo bench --bench breakdown -- --rows 2000                     # SQLite only, seconds
//! cargo bench --bench breakdown --all-features -- --rows 1000000   # all three backends
//! ```
//!
//! Per backend: the table `counters` (as in `benches/write.rs`) is filled; one big
//! `UPDATE` runs (its time per 1000 rows is the floor), then `update_all` with a
//! checkpoint, without and with `async_commit()`, then the big `UPDATE` again. For each
//! job, the time of each kind of statement is summed and divided by the batches; what
//! is left of the job's wall time is the client's own (building statements, decoding
//! keys, the scan machine). See benches/README.md.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::prelude::*;

#[allow(unused_macros)]
mod common;

use common::{
    backend_names, drop_namespace, namespace_or_skip, report_failures, wanted_backends, Backend,
    Res,
};

diesel::table! {
    counters (id) {
        id -> Integer,
        n -> Integer,
        p -> Integer,
        pad -> Text,
    }
}

const NAMESPACE: &str = "bench_breakdown";
const BATCH: u64 = 1000;

/// PostgreSQL: `VACUUM counters` before each job and each big `UPDATE`, so that
/// every one starts from the same table (as `benches/write.rs` does), not from
/// the dead row versions of the one before: a key query then reads the index
/// alone, and an `UPDATE` finds free space in the pages it writes.
fn vacuum<C: SimpleConnection>(backend: Backend, conn: &mut C) -> Res<()> {
    #[cfg(feature = "postgres")]
    if backend == Backend::Pg {
        conn.batch_execute("VACUUM counters")?;
    }
    let _ = (backend, conn);
    Ok(())
}

/// The kind of a statement, from its SQL.
fn kind(sql: &str) -> &'static str {
    let s = sql.trim_start().to_ascii_uppercase();
    if s.starts_with("BEGIN")
        || s.starts_with("START TRANSACTION")
        || s.starts_with("SET TRANSACTION")
    {
        "BEGIN"
    } else if s.starts_with("COMMIT") {
        "COMMIT"
    } else if s.starts_with("SAVEPOINT") || s.starts_with("RELEASE") || s.starts_with("ROLLBACK TO")
    {
        "savepoints"
    } else if s.contains("CHUNKED_CHECKPOINTS") && s.starts_with("SELECT") {
        "checkpoint lock (SELECT ... FOR UPDATE)"
    } else if s.contains("CHUNKED_CHECKPOINTS") && s.starts_with("UPDATE") {
        "checkpoint advance (UPDATE)"
    } else if s.starts_with("SELECT") && s.contains("COUNTERS") {
        "key query (SELECT key ... LIMIT n + 1)"
    } else if s.starts_with("UPDATE") && s.contains("COUNTERS") {
        "range UPDATE"
    } else if s.starts_with("SET") || s.starts_with("PRAGMA") {
        "session settings (SET, PRAGMA)"
    } else {
        "other (schema reads, checks)"
    }
}

/// Statement times by kind: (count, total), shared with the connection's
/// instrumentation.
#[derive(Default)]
struct Times {
    started: Option<Instant>,
    by_kind: BTreeMap<&'static str, (u64, Duration)>,
}

struct Recorder(Arc<Mutex<Times>>);

impl Instrumentation for Recorder {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        let mut t = self.0.lock().unwrap();
        match event {
            InstrumentationEvent::StartQuery { .. } => t.started = Some(Instant::now()),
            InstrumentationEvent::FinishQuery { query, .. } => {
                if let Some(s) = t.started.take() {
                    let e = t.by_kind.entry(kind(&query.to_string())).or_default();
                    e.0 += 1;
                    e.1 += s.elapsed();
                }
            }
            _ => {}
        }
    }
}

struct Options {
    rows: u64,
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options { rows: 100_000 };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => o.rows = it.next().ok_or("--rows needs a value")?.parse()?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.rows < BATCH {
        return Err(format!("--rows must be at least {BATCH}").into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(args) {
        eprintln!("breakdown: {e}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let backends = wanted_backends();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "breakdown: {} rows, batch {BATCH}, backends [{}], load average {load}",
        o.rows,
        backend_names(&backends)
    );
    let mut failures = Vec::new();
    for &backend in &backends {
        let Some(url) = namespace_or_skip(backend, NAMESPACE) else {
            continue;
        };
        if let Err(e) = run_backend(backend, &url, &o) {
            failures.push(format!("{}: {e}", backend.name()));
        }
        drop_namespace(backend, NAMESPACE, &url);
    }
    report_failures(&failures, "backend(s)")
}

fn fill_sql(backend: Backend, rows: u64) -> Vec<String> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => vec![
            "PRAGMA journal_mode = WAL".into(),
            "CREATE TABLE counters (id INTEGER PRIMARY KEY NOT NULL, n INTEGER NOT NULL, \
             p INTEGER NOT NULL, pad TEXT NOT NULL)"
                .into(),
            format!(
                "INSERT INTO counters (id, n, p, pad) WITH RECURSIVE s(i) AS \
                 (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
                 SELECT i, 0, 0, printf('%0100d', i) FROM s"
            ),
        ],
        #[cfg(feature = "postgres")]
        Backend::Pg => vec![
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, \
             p INTEGER NOT NULL, pad TEXT NOT NULL)"
                .into(),
            format!(
                "INSERT INTO counters (id, n, p, pad) \
                 SELECT i, 0, 0, lpad(i::text, 100, '0') FROM generate_series(1, {rows}) AS i"
            ),
            "VACUUM ANALYZE counters".into(),
        ],
        #[cfg(feature = "mysql")]
        Backend::Mysql => vec![
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, \
             p INTEGER NOT NULL, pad VARCHAR(100) NOT NULL)"
                .into(),
            format!(
                "INSERT INTO counters (id, n, p, pad) \
                 SELECT seq, 0, 0, LPAD(seq, 100, '0') FROM seq_1_to_{rows}"
            ),
        ],
    }
}

/// Fills the table, then times the big `UPDATE` and the two jobs on `$conn`.
macro_rules! measure {
    ($conn:ty, $backend:expr, $url:expr, $o:expr) => {{
        let (backend, url, o): (Backend, &str, &Options) = ($backend, $url, $o);
        let mut conn = <$conn>::establish(url)?;
        for sql in fill_sql(backend, o.rows) {
            conn.batch_execute(&sql)?;
        }
        checkpoint::create_table(&mut conn)?;
        let big = |conn: &mut $conn| -> Res<f64> {
            vacuum(backend, conn)?;
            let t0 = Instant::now();
            diesel::update(counters::table)
                .set(counters::n.eq(counters::n + 1))
                .execute(conn)?;
            Ok(t0.elapsed().as_secs_f64() * 1e3 / (o.rows as f64 / BATCH as f64))
        };
        // untimed: caches
        big(&mut conn)?;
        let floor_before = big(&mut conn)?;
        let mut jobs = Vec::new();
        for async_commit in [false, true] {
            let times = Arc::new(Mutex::new(Times::default()));
            checkpoint::reset(&mut conn, "bench-breakdown")?;
            vacuum(backend, &mut conn)?;
            conn.set_instrumentation(Recorder(Arc::clone(&times)));
            let job = counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .checkpoint("bench-breakdown");
            let job = if async_commit { job.async_commit() } else { job };
            let t0 = Instant::now();
            let report = job.update_all(&mut conn, counters::n.eq(counters::n + 1))?;
            let wall = t0.elapsed();
            conn.set_instrumentation(diesel::connection::get_default_instrumentation());
            if report.rows != o.rows {
                return Err(format!("the job wrote {} rows, not {}", report.rows, o.rows).into());
            }
            let times = std::mem::take(&mut *times.lock().unwrap());
            jobs.push((async_commit, report.batches, wall, times));
        }
        let floor_after = big(&mut conn)?;
        let floor = (floor_before + floor_after) / 2.0;
        let name = backend.name();
        println!(
            "\n{name}: one big UPDATE: {floor_before:.3} and {floor_after:.3} ms per {BATCH} rows (before and after the jobs)"
        );
        for (async_commit, batches, wall, times) in jobs {
            let per = |d: Duration| d.as_secs_f64() * 1e3 / batches as f64;
            let total = per(wall);
            println!(
                "\n{name}: update_all, batch {BATCH}, checkpoint{}: {total:.3} ms a batch ({batches} batches), {:.2}x the big UPDATE",
                if async_commit { ", async_commit" } else { "" },
                floor / total
            );
            println!("| statement | per batch | ms a batch |");
            println!("| --- | ---: | ---: |");
            let mut in_statements = Duration::ZERO;
            for (k, (n, d)) in &times.by_kind {
                in_statements += *d;
                println!("| {k} | {:.2} | {:.3} |", *n as f64 / batches as f64, per(*d));
            }
            println!(
                "| the client's own time (wall time - statements) | | {:.3} |",
                per(wall.saturating_sub(in_statements))
            );
            println!("| **a batch** | | **{total:.3}** |");
        }
        Ok(())
    }};
}

fn run_backend(backend: Backend, url: &str, o: &Options) -> Res<()> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => measure!(diesel::SqliteConnection, backend, url, o),
        #[cfg(feature = "postgres")]
        Backend::Pg => measure!(diesel::PgConnection, backend, url, o),
        #[cfg(feature = "mysql")]
        Backend::Mysql => measure!(diesel::MysqlConnection, backend, url, o),
    }
}
