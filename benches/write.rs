//! Batched-write benchmark: one big `UPDATE` (or `DELETE`) of the whole table against this
//! crate's `update_all` (`delete_all`), one transaction per batch, with a concurrent
//! single-row writer.
//!
//! ```sh
//! cargo bench --bench write -- --rows 2000                       # SQLite only, seconds (CI)
//! cargo bench --bench write --all-features -- --rows 1000000     # all three backends
//! BENCH_BACKENDS=pg cargo bench --bench write --all-features -- --rows 1000000 --repeat 3
//! ```
//!
//! Per backend, the table `counters` is filled once; then the methods run in rounds,
//! alternating (big, batched 1000, batched 10000, batched 1000 with a checkpoint, the same
//! with `async_commit()`, big DELETE, `delete_all` at 1000 and 10000 with a checkpoint, the
//! table filled again after each delete, untimed; then the floors: a hand loop of one
//! autocommitted `UPDATE`/`DELETE` per 1000 (durable and relaxed commit) or 10000 dense
//! ids, the fastest any batched job can be at that batch size here; again; again), so that every ratio compares runs taken minutes apart at most. During each run a
//! probe thread, on its own connection, updates one random row every few milliseconds and
//! records how long each of its statements took. Results are merged into
//! `target/bench-report/write.json`; `write.md` and `write_probe.svg` are drawn again from
//! the merged file. See benches/README.md.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::prelude::*;
use serde_json::{json, Value};

#[macro_use]
mod common;

use common::{
    backend_names, backend_rank, drop_namespace, median, namespace_or_skip, open_report, plot_err,
    report_failures, round3, wanted_backends, Backend, Res, ALL_BACKENDS,
};

diesel::table! {
    counters (id) {
        id -> Integer,
        n -> Integer,
        p -> Integer,
        pad -> Text,
    }
}

// ---------------------------------------------------------------- backends

/// The namespace (PostgreSQL schema, MySQL database, SQLite file name) of this bench.
const NAMESPACE: &str = "bench_write";

/// Session settings of every connection (writer and probe): a lock wait long enough
/// never to fail.
fn session_sql(backend: Backend) -> &'static str {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => "PRAGMA busy_timeout = 30000",
        #[cfg(feature = "postgres")]
        Backend::Pg => "SET lock_timeout = '30s'",
        #[cfg(feature = "mysql")]
        Backend::Mysql => "SET SESSION innodb_lock_wait_timeout = 30",
    }
}

/// Creates `counters` (ids 1..=rows, `n` and `p` 0, a 100-byte `pad`) and the checkpoint
/// table, generating the rows in the server.
fn create_and_fill(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let started = Instant::now();
    let statements: Vec<String> = match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => vec![
            "PRAGMA journal_mode = WAL".into(),
            "CREATE TABLE counters (id INTEGER PRIMARY KEY NOT NULL, n INTEGER NOT NULL DEFAULT 0, \
             p INTEGER NOT NULL DEFAULT 0, pad TEXT NOT NULL)"
                .into(),
            fill_sql(backend, rows, 0),
            "ANALYZE".into(),
        ],
        #[cfg(feature = "postgres")]
        Backend::Pg => vec![
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, \
             p INTEGER NOT NULL DEFAULT 0, pad TEXT NOT NULL)"
                .into(),
            fill_sql(backend, rows, 0),
            "VACUUM ANALYZE counters".into(),
        ],
        #[cfg(feature = "mysql")]
        Backend::Mysql => vec![
            "CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL DEFAULT 0, \
             p INT NOT NULL DEFAULT 0, pad VARCHAR(100) NOT NULL) ENGINE = InnoDB"
                .into(),
            fill_sql(backend, rows, 0),
        ],
    };
    with_conn!(backend, url, session_sql(backend), |conn| {
        for sql in &statements {
            conn.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        }
        checkpoint::create_table(&mut *conn)?;
    });
    println!(
        "  {}: {rows} rows inserted in {:.1} s",
        backend.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The statement that fills `counters` with ids 1..=rows, `n` at `n`, generated in the
/// server.
fn fill_sql(backend: Backend, rows: u64, n: i32) -> String {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => format!(
            "INSERT INTO counters (id, n, p, pad) WITH RECURSIVE s(i) AS \
             (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
             SELECT i, {n}, 0, printf('%0100d', i) FROM s"
        ),
        #[cfg(feature = "postgres")]
        Backend::Pg => format!(
            "INSERT INTO counters (id, n, p, pad) \
             SELECT i, {n}, 0, lpad(i::text, 100, '0') FROM generate_series(1, {rows}) AS i"
        ),
        // MariaDB's Sequence engine: the table seq_1_to_N.
        #[cfg(feature = "mysql")]
        Backend::Mysql => format!(
            "INSERT INTO counters (id, n, p, pad) \
             SELECT seq, {n}, 0, LPAD(seq, 100, '0') FROM seq_1_to_{rows}"
        ),
    }
}

/// Untimed, after a run that deleted every row: checks that none is left and fills the
/// table again, every `n` at `n` (the update runs so far).
fn refill(backend: Backend, url: &str, rows: u64, n: i32) -> Res<()> {
    with_conn!(backend, url, session_sql(backend), |conn| {
        let left: i64 = counters::table.count().get_result(&mut *conn)?;
        if left != 0 {
            return Err(format!("{}: {left} rows left after a delete", backend.name()).into());
        }
        conn.batch_execute(&fill_sql(backend, rows, n))?;
    });
    Ok(())
}

/// Untimed, before each run: PostgreSQL vacuums away the previous run's dead row versions
/// (so every run starts from the same table, not from one that autovacuum may be cleaning
/// at that moment); every backend reads the table once so that it is in cache.
fn before_run(backend: Backend, url: &str) -> Res<()> {
    with_conn!(backend, url, session_sql(backend), |conn| {
        #[cfg(feature = "postgres")]
        if backend.name() == "pg" {
            conn.batch_execute("VACUUM counters")?;
        }
        let _: i64 = counters::table.count().get_result(&mut *conn)?;
    });
    Ok(())
}

// ---------------------------------------------------------------- the methods

#[derive(Clone, Copy, Debug)]
struct Method {
    name: &'static str,
    /// `None`: the one big `UPDATE`.
    batch: Option<u64>,
    checkpoint: bool,
    /// `async_commit()` (with the checkpoint).
    async_commit: bool,
    /// Deletes every row (`DELETE`, `delete_all`) instead of updating it.
    delete: bool,
    /// Not this crate: a hand loop of one autocommitted statement per batch over the
    /// table's dense ids (`WHERE id > $lo AND id <= $lo + batch`), with no transaction,
    /// key query or checkpoint: the fastest any batched job can be at this batch size on
    /// this machine (the rows, one round trip and one commit per batch).
    floor: bool,
}

const METHODS: [Method; 14] = [
    Method {
        name: "big_update",
        batch: None,
        checkpoint: false,
        async_commit: false,
        delete: false,
        floor: false,
    },
    Method {
        name: "chunked_1000",
        batch: Some(1000),
        checkpoint: false,
        async_commit: false,
        delete: false,
        floor: false,
    },
    Method {
        name: "chunked_10000",
        batch: Some(10_000),
        checkpoint: false,
        async_commit: false,
        delete: false,
        floor: false,
    },
    Method {
        name: "chunked_1000_checkpoint",
        batch: Some(1000),
        checkpoint: true,
        async_commit: false,
        delete: false,
        floor: false,
    },
    Method {
        name: "chunked_1000_checkpoint_async_commit",
        batch: Some(1000),
        checkpoint: true,
        async_commit: true,
        delete: false,
        floor: false,
    },
    Method {
        name: "big_delete",
        batch: None,
        checkpoint: false,
        async_commit: false,
        delete: true,
        floor: false,
    },
    Method {
        name: "delete_1000_checkpoint",
        batch: Some(1000),
        checkpoint: true,
        async_commit: false,
        delete: true,
        floor: false,
    },
    Method {
        name: "delete_10000_checkpoint",
        batch: Some(10_000),
        checkpoint: true,
        async_commit: false,
        delete: true,
        floor: false,
    },
    Method {
        name: "floor_update_1000",
        batch: Some(1000),
        checkpoint: false,
        async_commit: false,
        delete: false,
        floor: true,
    },
    Method {
        name: "floor_update_1000_async_commit",
        batch: Some(1000),
        checkpoint: false,
        async_commit: true,
        delete: false,
        floor: true,
    },
    Method {
        name: "floor_delete_1000",
        batch: Some(1000),
        checkpoint: false,
        async_commit: false,
        delete: true,
        floor: true,
    },
    Method {
        name: "floor_delete_1000_async_commit",
        batch: Some(1000),
        checkpoint: false,
        async_commit: true,
        delete: true,
        floor: true,
    },
    Method {
        name: "floor_update_10000",
        batch: Some(10_000),
        checkpoint: false,
        async_commit: false,
        delete: false,
        floor: true,
    },
    Method {
        name: "floor_delete_10000",
        batch: Some(10_000),
        checkpoint: false,
        async_commit: false,
        delete: true,
        floor: true,
    },
];

/// What `async_commit()` sets, for the whole connection of a floor run: PostgreSQL's
/// `synchronous_commit`, SQLite's `synchronous` (WAL). MariaDB has no such setting per
/// connection (`innodb_flush_log_at_trx_commit` is global), so its `_async_commit`
/// floors run as the plain ones.
fn relaxed_commit_sql(backend: Backend) -> &'static str {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => "PRAGMA synchronous = NORMAL",
        #[cfg(feature = "postgres")]
        Backend::Pg => "SET synchronous_commit = off",
        #[cfg(feature = "mysql")]
        Backend::Mysql => "",
    }
}

const CHECKPOINT_NAME: &str = "bench-write";

/// One run of `$method` on `$conn`: every row's `n` goes up by one. Returns the rows
/// written and the wall time (the checkpoint's reset is done before the clock starts).
macro_rules! write_all {
    ($conn:ident, $method:expr, $backend:expr, $rows:expr) => {{
        let m: Method = $method;
        if m.checkpoint {
            checkpoint::reset(&mut *$conn, CHECKPOINT_NAME)?;
        }
        let relax = relaxed_commit_sql($backend);
        // (an empty statement crashes MySQL's client library)
        if m.floor && m.async_commit && !relax.is_empty() {
            $conn.batch_execute(relax)?;
        }
        let rows: u64 = $rows;
        let t0 = Instant::now();
        let written = match m.batch {
            Some(b) if m.floor => {
                let (mut lo, mut written) = (0i32, 0u64);
                while (lo as u64) < rows {
                    let hi = lo + b as i32;
                    let range = counters::id.gt(lo).and(counters::id.le(hi));
                    written += if m.delete {
                        diesel::delete(counters::table.filter(range)).execute(&mut *$conn)?
                    } else {
                        diesel::update(counters::table.filter(range))
                            .set(counters::n.eq(counters::n + 1))
                            .execute(&mut *$conn)?
                    } as u64;
                    lo = hi;
                }
                written
            }
            // With a WHERE clause: SQLite drops a whole table's pages at once for a
            // `DELETE` without one (its truncate optimization), which no batch can be
            // compared with, and a real purge has a condition.
            None if m.delete => diesel::delete(counters::table.filter(counters::id.gt(0)))
                .execute(&mut *$conn)? as u64,
            None => diesel::update(counters::table)
                .set(counters::n.eq(counters::n + 1))
                .execute(&mut *$conn)? as u64,
            Some(b) if m.delete => {
                let job = counters::table
                    .chunked_by(counters::id)
                    .batch_size(b)
                    .checkpoint(CHECKPOINT_NAME);
                job.delete_all(&mut *$conn)?.rows
            }
            Some(b) => {
                let job = counters::table.chunked_by(counters::id).batch_size(b);
                let job = if m.checkpoint {
                    job.checkpoint(CHECKPOINT_NAME)
                } else {
                    job
                };
                let job = if m.async_commit {
                    job.async_commit()
                } else {
                    job
                };
                job.update_all(&mut *$conn, counters::n.eq(counters::n + 1))?
                    .rows
            }
        };
        (written, t0.elapsed())
    }};
}

// ---------------------------------------------------------------- the probe

/// A small xorshift generator: the probe's random ids (no dependency for this).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The probe: on its own connection, `UPDATE counters SET p = p + 1 WHERE id = <random>`
/// (autocommit), then a pause of `interval`, until `stop` is set (or `MAX_PROBES`
/// statements). Returns the wall time of each statement, in ms.
fn probe<C: Connection>(
    url: &str,
    session_sql: &str,
    rows: u64,
    interval: Duration,
    seed: u64,
    ready: &Barrier,
    stop: &AtomicBool,
) -> Res<Vec<f64>> {
    const MAX_PROBES: usize = 200_000;
    let opened = (|| -> Res<C> {
        let mut c = C::establish(url)?;
        c.batch_execute(session_sql)?;
        // One statement before the clock: the connection's first round trip.
        c.batch_execute("UPDATE counters SET p = p + 1 WHERE id = 1")?;
        Ok(c)
    })();
    // Release the writer even when this failed, so that it does not wait forever.
    ready.wait();
    let mut conn = opened?;
    let mut rng = XorShift(seed | 1);
    let mut waits = Vec::new();
    while !stop.load(Ordering::Acquire) && waits.len() < MAX_PROBES {
        let id = rng.next() % rows + 1;
        let sql = format!("UPDATE counters SET p = p + 1 WHERE id = {id}");
        let t0 = Instant::now();
        conn.batch_execute(&sql)?;
        waits.push(t0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(interval);
    }
    Ok(waits)
}

/// Runs `write` while the probe runs on another thread; returns what `write` returned and
/// the probe's waits.
fn with_probe<T>(
    backend: Backend,
    url: &str,
    rows: u64,
    interval: Duration,
    seed: u64,
    write: impl FnOnce() -> Res<T>,
) -> Res<(T, Vec<f64>)> {
    let ready = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s, u) = (ready.clone(), stop.clone(), url.to_string());
    let session = session_sql(backend);
    let handle = std::thread::spawn(move || -> Result<Vec<f64>, String> {
        let out = match backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                probe::<diesel::SqliteConnection>(&u, session, rows, interval, seed, &r, &s)
            }
            #[cfg(feature = "postgres")]
            Backend::Pg => probe::<diesel::PgConnection>(&u, session, rows, interval, seed, &r, &s),
            #[cfg(feature = "mysql")]
            Backend::Mysql => {
                probe::<diesel::MysqlConnection>(&u, session, rows, interval, seed, &r, &s)
            }
        };
        out.map_err(|e| e.to_string())
    });
    ready.wait();
    let written = write();
    stop.store(true, Ordering::Release);
    let waits = handle
        .join()
        .map_err(|_| "the probe thread panicked")?
        .map_err(|e| format!("probe: {e}"))?;
    Ok((written?, waits))
}

// ---------------------------------------------------------------- statistics

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn probe_stats(waits: &[f64]) -> Value {
    let mut s = waits.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    json!({
        "count": s.len(),
        "median_ms": round3(percentile(&s, 0.5)),
        "p99_ms": round3(percentile(&s, 0.99)),
        "max_ms": round3(s.last().copied().unwrap_or(f64::NAN)),
    })
}

/// The pooled probe waits as 101 quantiles (0%, 1%, ..., 100%): enough for the plot.
fn quantiles(waits: &[f64]) -> Vec<f64> {
    let mut s = waits.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|i| {
            let idx = ((i as f64 / 100.0) * (s.len() - 1) as f64).round() as usize;
            round3(s[idx])
        })
        .collect()
}

// ---------------------------------------------------------------- one backend

struct Options {
    rows: u64,
    repeat: usize,
    methods: Vec<Method>,
    interval: Duration,
    report_only: bool,
}

/// Fills the table and runs `repeat` rounds of every method, alternating; returns one
/// summary record per method.
fn run_backend(backend: Backend, url: &str, o: &Options) -> Res<Vec<Value>> {
    create_and_fill(backend, url, o.rows)?;
    // per method: (runs, pooled waits)
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); o.methods.len()];
    let mut pooled: Vec<Vec<f64>> = vec![Vec::new(); o.methods.len()];
    let mut done = 0i32;
    for round in 1..=o.repeat {
        for (i, m) in o.methods.iter().enumerate() {
            before_run(backend, url)?;
            let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((round as u64) << 8) ^ i as u64;
            let ((written, took), waits) =
                with_probe(backend, url, o.rows, o.interval, seed, || {
                    Ok(with_conn!(backend, url, session_sql(backend), |conn| {
                        write_all!(conn, *m, backend, o.rows)
                    }))
                })?;
            if written != o.rows {
                return Err(format!(
                    "{} {} round {round}: {written} rows written of {}",
                    backend.name(),
                    m.name,
                    o.rows
                )
                .into());
            }
            if m.delete {
                refill(backend, url, o.rows, done)?;
            } else {
                done += 1;
            }
            let rps = o.rows as f64 / took.as_secs_f64();
            let stats = probe_stats(&waits);
            println!(
                "  {:<7} round {round} {:<24} {:>8.2} s {:>11.0} rows/s   probe n={:<5} median {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms",
                backend.name(),
                m.name,
                took.as_secs_f64(),
                rps,
                stats["count"],
                stats["median_ms"].as_f64().unwrap_or(f64::NAN),
                stats["p99_ms"].as_f64().unwrap_or(f64::NAN),
                stats["max_ms"].as_f64().unwrap_or(f64::NAN),
            );
            runs[i].push(json!({
                "round": round,
                "seconds": round3(took.as_secs_f64()),
                "rows_per_sec": rps.round(),
                "probe": stats,
            }));
            pooled[i].extend(waits);
        }
    }
    // Every row was written once per run.
    let wrong: i64 = with_conn!(backend, url, session_sql(backend), |conn| {
        counters::table
            .filter(counters::n.ne(done))
            .count()
            .get_result(&mut *conn)?
    });
    if wrong != 0 {
        return Err(format!("{}: {wrong} rows whose n is not {done}", backend.name()).into());
    }
    let rps_of = |i: usize, round: usize| runs[i][round]["rows_per_sec"].as_f64();
    let mut out = Vec::new();
    for (i, m) in o.methods.iter().enumerate() {
        // An update compares with the big UPDATE, a delete with the big DELETE.
        let big = o
            .methods
            .iter()
            .position(|b| b.batch.is_none() && b.delete == m.delete);
        let rps: Vec<f64> = (0..runs[i].len()).filter_map(|r| rps_of(i, r)).collect();
        // The ratio of each round (runs minutes apart at most), then their median.
        let ratio = big.filter(|&b| b != i).map(|b| {
            let per_round: Vec<f64> = (0..o.repeat)
                .filter_map(|r| Some(rps_of(i, r)? / rps_of(b, r)?))
                .collect();
            round3(median(&per_round))
        });
        out.push(json!({
            "backend": backend.name(),
            "rows": o.rows,
            "method": m.name,
            "batch_size": m.batch,
            "checkpoint": m.checkpoint,
            "repeats": runs[i].len(),
            "rows_per_sec": median(&rps).round(),
            "ratio_to_big_update": ratio,
            "probe": probe_stats(&pooled[i]),
            "probe_quantiles_ms": quantiles(&pooled[i]),
            "runs": runs[i],
        }));
    }
    Ok(out)
}

// ---------------------------------------------------------------- the parent

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: 100_000,
        repeat: 3,
        methods: METHODS.to_vec(),
        interval: Duration::from_millis(5),
        report_only: false,
    };
    let mut it = args.into_iter();
    let number = |flag: &str, v: Option<String>| -> Res<u64> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("{flag}: bad value `{v}`").into())
    };
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "--rows" => o.rows = number("--rows", value())?,
            "--repeat" => o.repeat = number("--repeat", value())?.max(1) as usize,
            "--probe-interval-ms" => {
                o.interval = Duration::from_millis(number("--probe-interval-ms", value())?)
            }
            "--methods" => {
                let v = value().ok_or("--methods needs a value")?;
                let mut ms = Vec::new();
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let m = METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
                        let known: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
                        format!("unknown method `{name}`; known: {}", known.join(", "))
                    })?;
                    ms.push(*m);
                }
                o.methods = ms;
            }
            "--report-only" => o.report_only = true,
            // `cargo bench` passes `--bench`; libtest-style filters and flags are ignored.
            other => eprintln!("write: ignoring argument `{other}`"),
        }
    }
    if o.rows == 0 || o.rows > i32::MAX as u64 {
        return Err("--rows must be between 1 and 2^31-1".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = parent_main(args) {
        eprintln!("write: {e}");
        std::process::exit(1);
    }
}

fn parent_main(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let (dir, json_path, mut results) = open_report("write")?;
    let mut failures = Vec::new();
    if !o.report_only {
        let backends = wanted_backends();
        println!(
            "write: {} rows, {} round(s), probe every {} ms, backends [{}], methods [{}]",
            o.rows,
            o.repeat,
            o.interval.as_millis(),
            backend_names(&backends),
            o.methods
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &backend in &backends {
            let Some(url) = namespace_or_skip(backend, NAMESPACE) else {
                continue;
            };
            match run_backend(backend, &url, &o) {
                Ok(records) => {
                    for v in records {
                        results.retain(|r| {
                            !(r["backend"] == v["backend"]
                                && r["rows"] == v["rows"]
                                && r["method"] == v["method"])
                        });
                        results.push(v);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", backend.name())),
            }
            drop_namespace(backend, NAMESPACE, &url);
        }
        results.sort_by_key(|r| {
            (
                backend_rank(r["backend"].as_str().unwrap_or("")),
                r["rows"].as_u64().unwrap_or(0),
                method_rank(r["method"].as_str().unwrap_or("")),
            )
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    }
    let md = markdown(&results);
    std::fs::write(dir.join("write.md"), &md)?;
    if let Err(e) = plot(&results, &dir) {
        failures.push(format!("plot: {e}"));
    }
    println!("\n{md}");
    println!(
        "report: {}/write.{{json,md}} and write_probe.svg",
        dir.display()
    );
    report_failures(&failures, "backend(s)")
}

fn method_rank(m: &str) -> usize {
    METHODS.iter().position(|x| x.name == m).unwrap_or(99)
}

// ---------------------------------------------------------------- the report

fn fmt_num(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".to_string(),
    }
}

fn label(method: &str) -> &'static str {
    match method {
        "big_update" => "one big UPDATE",
        "chunked_1000" => "update_all, batch 1000",
        "chunked_10000" => "update_all, batch 10000",
        "chunked_1000_checkpoint" => "update_all, batch 1000, checkpoint",
        "chunked_1000_checkpoint_async_commit" => {
            "update_all, batch 1000, checkpoint, async_commit"
        }
        "big_delete" => "one big DELETE",
        "delete_1000_checkpoint" => "delete_all, batch 1000, checkpoint",
        "delete_10000_checkpoint" => "delete_all, batch 10000, checkpoint",
        "floor_update_1000" => "floor: hand loop, one UPDATE a batch of 1000",
        "floor_update_1000_async_commit" => {
            "floor: hand loop, one UPDATE a batch of 1000, relaxed commit"
        }
        "floor_delete_1000" => "floor: hand loop, one DELETE a batch of 1000",
        "floor_delete_1000_async_commit" => {
            "floor: hand loop, one DELETE a batch of 1000, relaxed commit"
        }
        "floor_update_10000" => "floor: hand loop, one UPDATE a batch of 10000",
        "floor_delete_10000" => "floor: hand loop, one DELETE a batch of 10000",
        _ => "?",
    }
}

fn markdown(results: &[Value]) -> String {
    let mut md = String::new();
    md.push_str("# Batched-write benchmark (`cargo bench --bench write`)\n\n");
    md.push_str(
        "Every row's counter incremented once per run, by one `UPDATE counters SET n = n + 1` \
         (one statement, one transaction) or by `update_all` (one transaction per batch); or \
         every row deleted, by one `DELETE FROM counters WHERE id > 0` or by `delete_all` (the table filled \
         again after each, untimed). rows/s: median of the runs; ratio: the batched run's \
         rows/s ÷ the big statement's (UPDATE or DELETE) in the same round, median over the \
         rounds (the methods alternate within each round). Probe: a second connection \
         updating one random row (`SET p = p + 1`, autocommit) every 5 ms during each run; \
         wall time of each statement, pooled over the runs of the method. See \
         benches/README.md.\n\n",
    );
    md.push_str("| backend | rows | method | runs | rows/s (median) | ÷ big statement | probe statements | probe median ms | p99 ms | max ms | rows/s of each run |\n");
    md.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in results {
        let each: Vec<String> = r["runs"]
            .as_array()
            .map(|a| a.iter().map(|x| fmt_num(&x["rows_per_sec"], 0)).collect())
            .unwrap_or_default();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["backend"].as_str().unwrap_or("?"),
            r["rows"],
            label(r["method"].as_str().unwrap_or("")),
            r["repeats"],
            fmt_num(&r["rows_per_sec"], 0),
            fmt_num(&r["ratio_to_big_update"], 2),
            r["probe"]["count"],
            fmt_num(&r["probe"]["median_ms"], 2),
            fmt_num(&r["probe"]["p99_ms"], 1),
            fmt_num(&r["probe"]["max_ms"], 1),
            each.join(", "),
        ));
    }
    md
}

/// `write_probe.svg`: one panel per backend (its largest table size), the distribution of
/// the probe's waits per method: wait (log scale) against the fraction of probe statements
/// that waited at most that long.
fn plot(results: &[Value], dir: &Path) -> Res<()> {
    use plotters::prelude::*;

    let mut panels: Vec<(String, u64)> = Vec::new();
    for b in ALL_BACKENDS {
        if let Some(rows) = results
            .iter()
            .filter(|r| r["backend"] == b)
            .filter_map(|r| r["rows"].as_u64())
            .max()
        {
            panels.push((b.to_string(), rows));
        }
    }
    if panels.is_empty() {
        return Ok(());
    }
    let path = dir.join("write_probe.svg");
    let root = SVGBackend::new(&path, (900, 380 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((panels.len(), 1));
    for ((backend, rows), area) in panels.iter().zip(areas.iter()) {
        let series: Vec<(String, Vec<(f64, f64)>)> = results
            .iter()
            .filter(|r| r["backend"] == backend.as_str() && r["rows"].as_u64() == Some(*rows))
            .filter_map(|r| {
                let q = r["probe_quantiles_ms"].as_array()?;
                let pts: Vec<(f64, f64)> = q
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| Some((v.as_f64()?.max(0.01), i as f64)))
                    .collect();
                let name = format!(
                    "{}: {} rows/s, p99 {} ms",
                    label(r["method"].as_str().unwrap_or("")),
                    fmt_num(&r["rows_per_sec"], 0),
                    fmt_num(&r["probe"]["p99_ms"], 1)
                );
                (!pts.is_empty()).then_some((name, pts))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let xmax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(1.0f64, f64::max);
        let xmin = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(f64::MAX, f64::min);
        let name = match backend.as_str() {
            "pg" => "PostgreSQL",
            "mysql" => "MariaDB/MySQL",
            _ => "SQLite",
        };
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{name}, {rows} rows: how long a single-row UPDATE took during the write"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                ((xmin / 2.0).max(0.005)..xmax * 2.0).log_scale(),
                0f64..100f64,
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("probe statement wall time, ms (log scale)")
            .y_desc("% of probe statements at most this long")
            .x_label_formatter(&|x| {
                if *x >= 1.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            })
            .draw()
            .map_err(plot_err)?;
        for (i, (label, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}
