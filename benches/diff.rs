//! Diff benchmark: a diff of two identical tables against one keyset scan of one of
//! them, in one alternating run.
//!
//! ```sh
//! cargo bench --bench diff -- --rows 20000                          # SQLite only, seconds
//! cargo bench --bench diff --all-features -- --rows 1000000          # all three backends
//! BENCH_BACKENDS=pg cargo bench --bench diff --all-features -- --rows 1000000 --repeat 5
//! ```
//!
//! Per backend, two namespaces (`bench_diff_a`, `bench_diff_b`: PostgreSQL schemas,
//! MySQL databases, SQLite files) each get the same table `items` of `--rows` rows, filled
//! in the server. Then, `--repeat` times, alternating: `scan` (`load_iter::<Item>` of
//! `a`, `--batch` rows per query, every row decoded) and `diff` (`a` against `b`, chunks
//! of `--batch` rows, each side on its own connection). Both read every row of a table:
//! the scan decodes them in the process, the diff checksums them in the database where
//! both sides are PostgreSQL or MariaDB (SQLite compares decoded rows). The medians and
//! their ratio are printed and merged into `target/bench-report/diff.json`. See
//! benches/README.md.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use serde_json::{json, Value};

#[macro_use]
mod common;

use common::{
    backend_names, backend_rank, drop_namespace, median, namespace_or_skip, open_report,
    report_failures, round3, wanted_backends, Backend, Res,
};

diesel::table! {
    items (id) {
        id -> Integer,
        n -> Integer,
        pad -> Text,
        created -> Timestamp,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = items)]
struct Item {
    id: i32,
    n: i32,
    pad: String,
    created: chrono::NaiveDateTime,
}

struct Args {
    rows: u64,
    repeat: usize,
    batch: u64,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        rows: 100_000,
        repeat: 3,
        batch: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Res<u64> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            Ok(v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}"))?)
        };
        match a.as_str() {
            "--rows" => args.rows = value("--rows")?,
            "--repeat" => args.repeat = value("--repeat")?.max(1) as usize,
            "--batch" => args.batch = value("--batch")?,
            // what `cargo bench` passes to every bench
            "--bench" => {}
            other => {
                return Err(format!("unknown argument {other} (--rows, --repeat, --batch)").into())
            }
        }
    }
    Ok(args)
}

/// Creates `items` with ids 1..=rows, generated in the server.
fn create_and_fill(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let statements: Vec<String> = match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => vec![
            "PRAGMA journal_mode = WAL".into(),
            "CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, n INTEGER NOT NULL, \
             pad TEXT NOT NULL, created TIMESTAMP NOT NULL)"
                .into(),
            format!(
                "INSERT INTO items (id, n, pad, created) WITH RECURSIVE s(i) AS \
                 (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
                 SELECT i, i % 1000, printf('%0100d', i), \
                 datetime(1767225600 + i, 'unixepoch') FROM s"
            ),
        ],
        #[cfg(feature = "postgres")]
        Backend::Pg => vec![
            "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, \
             pad TEXT NOT NULL, created TIMESTAMP NOT NULL)"
                .into(),
            format!(
                "INSERT INTO items (id, n, pad, created) \
                 SELECT i, i % 1000, lpad(i::text, 100, '0'), \
                 timestamp '2026-01-01' + i * interval '1 second' \
                 FROM generate_series(1, {rows}) AS i"
            ),
            "VACUUM ANALYZE items".into(),
        ],
        #[cfg(feature = "mysql")]
        Backend::Mysql => vec![
            "CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL, \
             pad VARCHAR(100) NOT NULL, created DATETIME(6) NOT NULL) ENGINE = InnoDB"
                .into(),
            format!(
                "INSERT INTO items (id, n, pad, created) \
                 SELECT seq, seq % 1000, LPAD(seq, 100, '0'), \
                 TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{rows}"
            ),
        ],
    };
    with_conn!(backend, url, "", |conn| {
        for sql in &statements {
            conn.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        }
    });
    Ok(())
}

/// One scan of `a`: the rows and the wall time.
fn scan(backend: Backend, a: &str, batch: u64) -> Res<(u64, f64)> {
    Ok(with_conn!(backend, a, "", |conn| {
        let t0 = Instant::now();
        let mut rows = 0u64;
        for item in items::table
            .chunked_by(items::id)
            .batch_size(batch)
            .load_iter::<Item>(&mut *conn)
        {
            std::hint::black_box(item?);
            rows += 1;
        }
        (rows, t0.elapsed().as_secs_f64())
    }))
}

/// One diff of `a` against `b`: the report's chunks and the wall time.
fn diff(backend: Backend, a: &str, b: &str, batch: u64) -> Res<(u64, f64, bool)> {
    macro_rules! run {
        ($c:ty) => {{
            let mut left = <$c as Connection>::establish(a)?;
            let mut right = <$c as Connection>::establish(b)?;
            let t0 = Instant::now();
            let d = items::table
                .chunked_by(items::id)
                .diff::<Item>(&mut left, &mut right)
                .batch_size(batch)
                .run()?;
            let took = t0.elapsed().as_secs_f64();
            if !d.is_identical() {
                return Err(format!("the tables differ: {d:?}").into());
            }
            (d.chunks, took, d.in_database)
        }};
    }
    Ok(match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => run!(diesel::SqliteConnection),
        #[cfg(feature = "postgres")]
        Backend::Pg => run!(diesel::PgConnection),
        #[cfg(feature = "mysql")]
        Backend::Mysql => run!(diesel::MysqlConnection),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn bench_backend(backend: Backend, args: &Args) -> Res<Value> {
    let (Some(a), Some(b)) = (
        namespace_or_skip(backend, "bench_diff_a"),
        namespace_or_skip(backend, "bench_diff_b"),
    ) else {
        return Err("no namespace".into());
    };
    let result = (|| -> Res<Value> {
        let t0 = Instant::now();
        create_and_fill(backend, &a, args.rows)?;
        create_and_fill(backend, &b, args.rows)?;
        println!(
            "  {}: 2 × {} rows in {:.1} s",
            backend.name(),
            args.rows,
            t0.elapsed().as_secs_f64()
        );
        // untimed: both tables read once, in cache
        scan(backend, &a, args.batch)?;
        scan(backend, &b, args.batch)?;
        let (mut scans, mut diffs) = (Vec::new(), Vec::new());
        let mut in_database = false;
        for round in 1..=args.repeat {
            let (rows, s) = scan(backend, &a, args.batch)?;
            if rows != args.rows {
                return Err(format!("the scan read {rows} rows, not {}", args.rows).into());
            }
            let (chunks, d, db) = diff(backend, &a, &b, args.batch)?;
            in_database = db;
            println!(
                "  {} round {round}: scan {s:.3} s, diff {d:.3} s ({chunks} chunks), load {}",
                backend.name(),
                load_average()
            );
            scans.push(s);
            diffs.push(d);
        }
        let (s, d) = (median(&scans), median(&diffs));
        Ok(json!({
            "backend": backend.name(),
            "rows": args.rows,
            "batch": args.batch,
            "repeat": args.repeat,
            "checksums_in_database": in_database,
            "scan_s": round3(s),
            "diff_s": round3(d),
            "ratio": round3(d / s),
            "scans_s": scans.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "diffs_s": diffs.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "load_average": load_average(),
        }))
    })();
    drop_namespace(backend, "bench_diff_a", &a);
    drop_namespace(backend, "bench_diff_b", &b);
    result
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let backends = wanted_backends();
    println!(
        "diff bench: {} rows, batch {}, {} rounds, on {}",
        args.rows,
        args.batch,
        args.repeat,
        backend_names(&backends)
    );
    let (_, json_path, mut results) = open_report("diff")?;
    let mut failures = Vec::new();
    for backend in backends {
        match bench_backend(backend, &args) {
            Ok(v) => {
                println!(
                    "  {}: scan {} s, diff {} s: {}×",
                    backend.name(),
                    v["scan_s"],
                    v["diff_s"],
                    v["ratio"]
                );
                results.retain(|r| {
                    !(r["backend"] == v["backend"]
                        && r["rows"] == v["rows"]
                        && r["batch"] == v["batch"])
                });
                results.push(v);
            }
            Err(e) => failures.push(format!("{}: {e}", backend.name())),
        }
    }
    results.sort_by_key(|r| {
        (
            backend_rank(r["backend"].as_str().unwrap_or("")),
            r["rows"].as_u64().unwrap_or(0),
        )
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!("| backend | rows | batch | scan (s) | diff (s) | diff / scan |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or(""),
            r["rows"],
            r["batch"],
            r["scan_s"],
            r["diff_s"],
            r["ratio"]
        );
    }
    report_failures(&failures, "backend(s)")
}
