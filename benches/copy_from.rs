//! COPY benchmark (PostgreSQL only): inserting a batch of rows with Diesel's
//! binary `COPY ... FROM STDIN` (`diesel::copy_from(orders).from_insertable(&rows)`)
//! against the multi-row `INSERT INTO orders (..) VALUES (..), (..)` that the
//! crate's write jobs run today (`diesel::insert_into(orders).values(&rows)`).
//!
//! ```sh
//! cargo bench --bench copy_from --features postgres -- --rows 1000000 --repeat 3
//! ```
//!
//! The method is the crate's write path: each batch of `N` rows is written in a
//! transaction of its own, together with one `UPDATE` of a checkpoint row (the
//! crate's `chunked_checkpoints` table and its advance statement), then
//! `COMMIT`. The rows, `orders (id integer primary key, customer integer,
//! amount bigint, note text)` with a 40-character `note`, are built in memory
//! once before the first run (untimed), so the clock sees only the statements
//! and their commits. Before each run, untimed: `TRUNCATE orders`, the
//! checkpoint row reset, and a `CHECKPOINT` (so no run pays for the previous
//! run's dirty pages). After each run the table must hold exactly `--rows`
//! rows.
//!
//! The methods run in rounds, alternating (`insert` at batch 1000, `copy` at
//! 1000, `insert` at 10,000, `copy` at 10,000), so every ratio compares runs
//! taken minutes apart at most. Reported per method: the median rows/s over
//! the rounds, and per batch size the median over the rounds of each round's
//! ratio COPY / INSERT. The bench works in a schema `bench_copy_from` (dropped
//! and created again, dropped at the end) of `PG_DATABASE_URL` (default
//! `postgres://root@127.0.0.1/test`). Results go to
//! `target/bench-report/copy_from.json` and `copy_from.md`; see
//! benches/README.md.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_chunked_iterator::checkpoint;
use serde_json::json;

// Only the PostgreSQL parts of the shared module are used here.
#[allow(unused_macros)]
mod common;

use common::{drop_namespace, median, open_report, prepare_namespace, round3, Backend, Res};

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Integer,
        amount -> BigInt,
        note -> Text,
    }
}

#[derive(Insertable)]
#[diesel(table_name = orders)]
#[diesel(treat_none_as_default_value = false)]
struct NewOrder {
    id: i32,
    customer: i32,
    amount: i64,
    note: String,
}

const NAMESPACE: &str = "bench_copy_from";
const CHECKPOINT_NAME: &str = "bench-copy-from";
/// The crate's checkpoint advance on PostgreSQL (see `src/checkpoint.rs`).
const ADVANCE: &str = "UPDATE chunked_checkpoints SET last_key = $1, rows_done = $2, \
                       batches_done = $3, done = FALSE, updated_at = CURRENT_TIMESTAMP \
                       WHERE name = $4";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Insert,
    Copy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Copy => "copy",
        }
    }
}

fn make_rows(n: u64) -> Vec<NewOrder> {
    (1..=n as i32)
        .map(|i| NewOrder {
            id: i,
            customer: i % 1000,
            amount: i64::from(i) * 7,
            note: format!("order {i:010} note padding text......"),
        })
        .collect()
}

fn setup(conn: &mut PgConnection) -> Res<()> {
    conn.batch_execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, \
         amount BIGINT NOT NULL, note TEXT NOT NULL)",
    )?;
    checkpoint::create_table(conn)?;
    conn.batch_execute(&format!(
        "INSERT INTO chunked_checkpoints (name, key_type) VALUES ('{CHECKPOINT_NAME}', 'i32')"
    ))?;
    Ok(())
}

/// Untimed, before each run: an empty table, the checkpoint row back at its
/// start, and no dirty pages left by the previous run.
fn reset(conn: &mut PgConnection) -> Res<()> {
    conn.batch_execute(&format!(
        "TRUNCATE orders; \
         UPDATE chunked_checkpoints SET last_key = NULL, rows_done = 0, batches_done = 0, \
         done = FALSE WHERE name = '{CHECKPOINT_NAME}'; \
         CHECKPOINT"
    ))?;
    Ok(())
}

/// One run: every row, `batch` rows per transaction (the rows and the
/// checkpoint's advance), timed from the first `BEGIN` to the last `COMMIT`.
fn run(conn: &mut PgConnection, rows: &[NewOrder], kind: Kind, batch: usize) -> Res<Duration> {
    let t0 = Instant::now();
    let mut done: i64 = 0;
    for (i, chunk) in rows.chunks(batch).enumerate() {
        conn.transaction(|c| {
            let n = match kind {
                Kind::Insert => diesel::insert_into(orders::table)
                    .values(chunk)
                    .execute(c)?,
                Kind::Copy => diesel::copy_from(orders::table)
                    .from_insertable(chunk)
                    .execute(c)?,
            };
            if n != chunk.len() {
                return Err(diesel::result::Error::QueryBuilderError(
                    format!("{} rows written of {}", n, chunk.len()).into(),
                ));
            }
            done += n as i64;
            let last = chunk.last().map(|r| r.id).unwrap_or(0);
            diesel::sql_query(ADVANCE)
                .bind::<Text, _>(last.to_string())
                .bind::<BigInt, _>(done)
                .bind::<BigInt, _>(i as i64 + 1)
                .bind::<Text, _>(CHECKPOINT_NAME)
                .execute(c)?;
            diesel::QueryResult::Ok(())
        })?;
    }
    let took = t0.elapsed();
    let count: i64 = orders::table.count().get_result(conn)?;
    if count != rows.len() as i64 {
        return Err(format!(
            "{} at batch {batch}: {count} rows in the table of {}",
            kind.name(),
            rows.len()
        )
        .into());
    }
    Ok(took)
}

struct Options {
    rows: u64,
    repeat: usize,
    batches: Vec<usize>,
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: 100_000,
        repeat: 1,
        batches: vec![1000, 10_000],
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => o.rows = value()?.parse()?,
            "--repeat" => o.repeat = value()?.parse()?,
            "--batch-sizes" => {
                o.batches = value()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.repeat == 0 || o.rows == 0 || o.batches.is_empty() {
        return Err("--rows, --repeat and --batch-sizes must not be zero or empty".into());
    }
    Ok(o)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = parent_main(args) {
        eprintln!("copy_from: {e}");
        std::process::exit(1);
    }
}

fn parent_main(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let load_start = loadavg();
    println!(
        "copy_from: {} rows, {} round(s), batch sizes {:?}, load average {load_start}",
        o.rows, o.repeat, o.batches
    );
    let url = prepare_namespace(Backend::Pg, NAMESPACE)?;
    let result = measure(&url, &o);
    drop_namespace(Backend::Pg, NAMESPACE, &url);
    let runs = result?;
    let load_end = loadavg();
    println!("load average at the end {load_end}");

    let (dir, json_path, mut results) = open_report("copy_from")?;
    for (b, &batch) in o.batches.iter().enumerate() {
        let [insert, copy] = &runs[b];
        let per_round: Vec<f64> = (0..copy.len()).map(|r| copy[r] / insert[r]).collect();
        for (kind, rps) in [(Kind::Insert, insert), (Kind::Copy, copy)] {
            let v = json!({
                "backend": "pg",
                "rows": o.rows,
                "method": kind.name(),
                "batch_size": batch,
                "repeats": rps.len(),
                "rows_per_sec": median(rps).round() as u64,
                "ratio_copy_to_insert": round3(median(&per_round)),
                "runs": rps.iter().map(|r| r.round()).collect::<Vec<_>>(),
                "load_average_start": load_start,
                "load_average_end": load_end,
            });
            results.retain(|r| {
                !(r["rows"] == v["rows"]
                    && r["method"] == v["method"]
                    && r["batch_size"] == v["batch_size"])
            });
            results.push(v);
        }
    }
    results.sort_by_key(|r| {
        (
            r["rows"].as_u64().unwrap_or(0),
            r["batch_size"].as_u64().unwrap_or(0),
            // insert before copy
            r["method"].as_str() != Some("insert"),
        )
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    let mut md = String::from(
        "| rows | batch | method | rows/s (median) | COPY / INSERT (median of rounds) | load average (start; end) |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {}; {} |\n",
            r["rows"],
            r["batch_size"],
            r["method"].as_str().unwrap_or(""),
            r["rows_per_sec"],
            r["ratio_copy_to_insert"],
            r["load_average_start"].as_str().unwrap_or(""),
            r["load_average_end"].as_str().unwrap_or(""),
        ));
    }
    std::fs::write(dir.join("copy_from.md"), &md)?;
    println!("\n{md}");
    Ok(())
}

/// Per batch size, `[insert, copy]` rows/s of each round.
fn measure(url: &str, o: &Options) -> Res<Vec<[Vec<f64>; 2]>> {
    let mut conn = PgConnection::establish(url)?;
    setup(&mut conn)?;
    let rows = make_rows(o.rows);
    let mut runs: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; o.batches.len()];
    for round in 1..=o.repeat {
        for (b, &batch) in o.batches.iter().enumerate() {
            for (k, kind) in [Kind::Insert, Kind::Copy].into_iter().enumerate() {
                reset(&mut conn)?;
                let took = run(&mut conn, &rows, kind, batch)?;
                let rps = o.rows as f64 / took.as_secs_f64();
                println!(
                    "  round {round} {:<6} batch {batch:>6} {:>7.2} s {:>10.0} rows/s  load {}",
                    kind.name(),
                    took.as_secs_f64(),
                    rps,
                    loadavg()
                );
                runs[b][k].push(rps);
            }
        }
    }
    Ok(runs)
}
