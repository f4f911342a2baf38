//! Move benchmark: moving every row of a table into another table of the same
//! database with one `INSERT ... SELECT` and one `DELETE` (one transaction),
//! against this crate's `move_into` (one transaction per batch, with a
//! checkpoint).
//!
//! ```sh
//! cargo bench --bench move -- --rows 2000                          # SQLite only, seconds (CI)
//! cargo bench --bench move --all-features -- --rows 1000000 --repeat 3
//! BENCH_BACKENDS=pg cargo bench --bench move --all-features -- --rows 1000000 --repeat 3
//! ```
//!
//! Per backend, `orders` is filled once and `orders_archive` created empty.
//! The methods run in rounds, alternating (the statement pair, `move_into` at
//! batch 1000, at batch 10,000, at batch 1000 with `.async_commit()`), so
//! every ratio compares runs taken minutes
//! apart at most. After each run the two tables swap names (untimed), so the
//! next run moves the same rows again from a full table into an empty one.
//! Results go to `target/bench-report/move.json` and `move.md`; see
//! benches/README.md.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::prelude::*;
use serde_json::{json, Value};

#[macro_use]
mod common;

use common::{
    backend_names, backend_rank, drop_namespace, median, namespace_or_skip, open_report,
    report_failures, round3, wanted_backends, Backend, Res,
};

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Integer,
        amount -> BigInt,
        note -> Text,
    }
}

diesel::table! {
    orders_archive (id) {
        id -> Integer,
        customer -> Integer,
        amount -> BigInt,
        note -> Text,
    }
}

const NAMESPACE: &str = "bench_move";
const CHECKPOINT_NAME: &str = "bench-move";

#[derive(Clone, Copy, Debug)]
struct Method {
    name: &'static str,
    /// `None`: the statement pair.
    batch: Option<u64>,
    /// `.async_commit()`.
    async_commit: bool,
}

const METHODS: [Method; 4] = [
    Method {
        name: "statement_pair",
        batch: None,
        async_commit: false,
    },
    Method {
        name: "move_into_1000",
        batch: Some(1000),
        async_commit: false,
    },
    Method {
        name: "move_into_10000",
        batch: Some(10_000),
        async_commit: false,
    },
    Method {
        name: "move_into_1000_async_commit",
        batch: Some(1000),
        async_commit: true,
    },
];

fn create_and_fill(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let columns = "id INTEGER PRIMARY KEY NOT NULL, customer INTEGER NOT NULL, \
                   amount BIGINT NOT NULL, note VARCHAR(100) NOT NULL";
    let mut statements = vec![
        format!("CREATE TABLE orders ({columns})"),
        format!("CREATE TABLE orders_archive ({columns})"),
    ];
    statements.push(match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => format!(
            "INSERT INTO orders WITH RECURSIVE s(i) AS \
             (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
             SELECT i, i % 1000, i * 7, printf('%080d', i) FROM s"
        ),
        #[cfg(feature = "postgres")]
        Backend::Pg => format!(
            "INSERT INTO orders SELECT i, i % 1000, i * 7, lpad(i::text, 80, '0') \
             FROM generate_series(1, {rows}) AS i"
        ),
        #[cfg(feature = "mysql")]
        Backend::Mysql => format!(
            "INSERT INTO orders SELECT seq, seq % 1000, seq * 7, LPAD(seq, 80, '0') \
             FROM seq_1_to_{rows}"
        ),
    });
    with_conn!(backend, url, "", |conn| {
        #[cfg(feature = "sqlite")]
        if backend.name() == "sqlite" {
            conn.batch_execute("PRAGMA journal_mode = WAL")?;
        }
        for sql in &statements {
            conn.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        }
        checkpoint::create_table(&mut *conn)?;
    });
    Ok(())
}

/// Untimed, after each run: the full table and the empty one swap names;
/// PostgreSQL vacuums the table the next run reads.
fn swap(backend: Backend, url: &str) -> Res<()> {
    let sql = match backend.name() {
        "mysql" => {
            "RENAME TABLE orders TO orders_tmp, orders_archive TO orders, \
                    orders_tmp TO orders_archive"
        }
        _ => {
            "ALTER TABLE orders RENAME TO orders_tmp; \
              ALTER TABLE orders_archive RENAME TO orders; \
              ALTER TABLE orders_tmp RENAME TO orders_archive"
        }
    };
    with_conn!(backend, url, "", |conn| {
        conn.batch_execute(sql)?;
        #[cfg(feature = "postgres")]
        if backend.name() == "pg" {
            conn.batch_execute("VACUUM ANALYZE orders")?;
            conn.batch_execute("VACUUM ANALYZE orders_archive")?;
        }
        let _: i64 = orders::table.count().get_result(&mut *conn)?;
    });
    Ok(())
}

macro_rules! move_all {
    ($conn:ident, $method:expr) => {{
        let m: Method = $method;
        checkpoint::reset(&mut *$conn, CHECKPOINT_NAME)?;
        let t0 = Instant::now();
        let moved = match m.batch {
            None => $conn.transaction(|c| {
                let n = diesel::sql_query("INSERT INTO orders_archive SELECT * FROM orders")
                    .execute(c)?;
                diesel::sql_query("DELETE FROM orders").execute(c)?;
                diesel::QueryResult::Ok(n as u64)
            })?,
            Some(b) => {
                let job = orders::table
                    .chunked_by(orders::id)
                    .batch_size(b)
                    .checkpoint(CHECKPOINT_NAME);
                let job = if m.async_commit {
                    job.async_commit()
                } else {
                    job
                };
                job.move_into(&mut *$conn, orders_archive::table)?.rows
            }
        };
        (moved, t0.elapsed())
    }};
}

struct Options {
    rows: u64,
    repeat: usize,
}

fn run_backend(backend: Backend, url: &str, o: &Options) -> Res<Vec<Value>> {
    create_and_fill(backend, url, o.rows)?;
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); METHODS.len()];
    for round in 1..=o.repeat {
        for (i, m) in METHODS.iter().enumerate() {
            let (moved, took) = with_conn!(backend, url, "", |conn| { move_all!(conn, *m) });
            if moved != o.rows {
                return Err(format!(
                    "{} {}: {moved} rows moved of {}",
                    backend.name(),
                    m.name,
                    o.rows
                )
                .into());
            }
            let rps = o.rows as f64 / took.as_secs_f64();
            println!(
                "  {:<7} round {round} {:<18} {:>8.2} s {:>11.0} rows/s",
                backend.name(),
                m.name,
                took.as_secs_f64(),
                rps
            );
            runs[i].push(rps);
            swap(backend, url)?;
        }
    }
    let mut out = Vec::new();
    for (i, m) in METHODS.iter().enumerate() {
        // The ratio of each round to the statement pair of the same round.
        let per_round: Vec<f64> = (0..runs[i].len())
            .map(|r| runs[i][r] / runs[0][r])
            .collect();
        out.push(json!({
            "backend": backend.name(),
            "rows": o.rows,
            "method": m.name,
            "batch_size": m.batch,
            "repeats": runs[i].len(),
            "rows_per_sec": median(&runs[i]).round(),
            "ratio_to_statement_pair": round3(median(&per_round)),
            "runs": runs[i].iter().map(|r| r.round()).collect::<Vec<_>>(),
        }));
    }
    Ok(out)
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: 100_000,
        repeat: 1,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => o.rows = value()?.parse()?,
            "--repeat" => o.repeat = value()?.parse()?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = parent_main(args) {
        eprintln!("move: {e}");
        std::process::exit(1);
    }
}

fn parent_main(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let (dir, json_path, mut results) = open_report("move")?;
    let mut failures = Vec::new();
    let backends = wanted_backends();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "move: {} rows, {} round(s), backends [{}], load average {}",
        o.rows,
        o.repeat,
        backend_names(&backends),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
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
            r["method"].as_str().unwrap_or("").to_string(),
        )
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    let mut md = String::from(
        "| backend | rows | method | rows/s (median) | ratio to the statement pair (median of rounds) |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r["backend"].as_str().unwrap_or(""),
            r["rows"],
            r["method"].as_str().unwrap_or(""),
            r["rows_per_sec"],
            r["ratio_to_statement_pair"]
        ));
    }
    std::fs::write(dir.join("move.md"), &md)?;
    println!("\n{md}");
    report_failures(&failures, "backend(s)")
}
