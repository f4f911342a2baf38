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
//!
//! A second part (`--parts raw,copy_to`, both by default) measures the crate
//! end to end: `orders.chunked_by(id).batch_size(N).checkpoint(..)
//! .copy_to::<Order>(&mut src, &mut dest, orders_dest)` of the whole table
//! (loaded once, untimed, then `VACUUM ANALYZE`d) from one connection into an
//! empty table `orders_dest` (same columns) through a second connection of
//! the same database. Three methods alternate in rounds: `copy_to` with
//! `.on_conflict_do_nothing()`, which always takes the multi-row `INSERT ...
//! ON CONFLICT DO NOTHING` path; `copy_to`, which takes the binary `COPY`
//! path; and `copy_to` into `orders_dest_reordered`, the same columns in
//! another order, where the crate cannot `COPY` and takes the plain
//! multi-row `INSERT` path (PostgreSQL's `ON CONFLICT` is not free even on an
//! empty table: its speculative insertion checks the index first). Before
//! each run, untimed: both destinations truncated, `checkpoint::reset` of the
//! run's job, a `CHECKPOINT`; after it the destination must hold every row.
//! Before the timed runs, a short check (the first 3000 rows, batch 1000,
//! untimed) records the destination's statements (Diesel's instrumentation)
//! and asserts that `copy_to` sent one `COPY` a batch and no `INSERT`, the
//! two others the reverse. The ratio reported for each `INSERT` method is
//! the `COPY` method's rows/s over its own, per round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::prelude::*;
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

diesel::table! {
    orders_dest (id) {
        id -> Integer,
        customer -> Integer,
        amount -> BigInt,
        note -> Text,
    }
}

// The destination's columns in another order: `copy_to` cannot `COPY` into
// it and takes the plain multi-row `INSERT` path.
diesel::table! {
    orders_dest_reordered (id) {
        id -> Integer,
        customer -> Integer,
        note -> Text,
        amount -> BigInt,
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
#[diesel(check_for_backend(diesel::pg::Pg))]
#[diesel(treat_none_as_default_value = false)]
struct Order {
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
    /// Raw part: `diesel::insert_into(orders).values(&rows)`.
    Insert,
    /// Raw part: `diesel::copy_from(orders).from_insertable(&rows)`.
    Copy,
    /// End to end: `copy_to` with `.on_conflict_do_nothing()` (the `INSERT` path).
    CopyToInsert,
    /// End to end: `copy_to` into `orders_dest_reordered` (the plain `INSERT` path).
    CopyToReordered,
    /// End to end: `copy_to` (the `COPY` path).
    CopyToCopy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Copy => "copy",
            Kind::CopyToInsert => "copy_to+on_conflict_do_nothing",
            Kind::CopyToReordered => "copy_to_reordered_dest",
            Kind::CopyToCopy => "copy_to",
        }
    }

    /// The part of the bench, and the order of the report's rows.
    fn part(self) -> (&'static str, u64) {
        match self {
            Kind::Insert => ("raw", 0),
            Kind::Copy => ("raw", 1),
            Kind::CopyToInsert => ("copy_to", 2),
            Kind::CopyToReordered => ("copy_to", 3),
            Kind::CopyToCopy => ("copy_to", 4),
        }
    }

    /// The checkpoint name of an end-to-end run.
    fn job(self, batch: usize) -> String {
        format!("bench-{}-{batch}", self.name())
    }
}

/// The methods of each part, in the order of a round: the first is the
/// `INSERT` each ratio COPY / INSERT is of, the `COPY` one follows.
const RAW: &[Kind] = &[Kind::Insert, Kind::Copy];
const COPY_TO: &[Kind] = &[Kind::CopyToInsert, Kind::CopyToCopy, Kind::CopyToReordered];
const ALL: [Kind; 5] = [
    Kind::Insert,
    Kind::Copy,
    Kind::CopyToInsert,
    Kind::CopyToReordered,
    Kind::CopyToCopy,
];

fn make_rows(n: u64) -> Vec<Order> {
    (1..=n as i32)
        .map(|i| Order {
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
         amount BIGINT NOT NULL, note TEXT NOT NULL); \
         CREATE TABLE orders_dest (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, \
         amount BIGINT NOT NULL, note TEXT NOT NULL); \
         CREATE TABLE orders_dest_reordered (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, \
         note TEXT NOT NULL, amount BIGINT NOT NULL)",
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
fn run(conn: &mut PgConnection, rows: &[Order], kind: Kind, batch: usize) -> Res<Duration> {
    let copy = match kind {
        Kind::Insert => false,
        Kind::Copy => true,
        other => return Err(format!("{} is not a method of the raw part", other.name()).into()),
    };
    let t0 = Instant::now();
    let mut done: i64 = 0;
    for (i, chunk) in rows.chunks(batch).enumerate() {
        conn.transaction(|c| {
            let n = if copy {
                diesel::copy_from(orders::table)
                    .from_insertable(chunk)
                    .execute(c)?
            } else {
                diesel::insert_into(orders::table)
                    .values(chunk)
                    .execute(c)?
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

/// The end-to-end part's source: `orders` holding every row (one `COPY`
/// per 100,000), vacuumed and analyzed, so no run sets hint bits or plans
/// without statistics. Untimed.
fn load_source(conn: &mut PgConnection, rows: &[Order]) -> Res<()> {
    conn.batch_execute("TRUNCATE orders, orders_dest, orders_dest_reordered")?;
    for chunk in rows.chunks(100_000) {
        diesel::copy_from(orders::table)
            .from_insertable(chunk)
            .execute(conn)?;
    }
    conn.batch_execute("VACUUM (ANALYZE) orders")?;
    conn.batch_execute("VACUUM (ANALYZE) orders_dest")?;
    conn.batch_execute("VACUUM (ANALYZE) orders_dest_reordered")?;
    Ok(())
}

/// Untimed, before each end-to-end run: an empty destination, no checkpoint
/// of the run's job, and no dirty pages left by the previous run.
fn reset_dest(conn: &mut PgConnection, job: &str) -> Res<()> {
    conn.batch_execute("TRUNCATE orders_dest, orders_dest_reordered")?;
    checkpoint::reset(conn, job)?;
    conn.batch_execute("CHECKPOINT")?;
    Ok(())
}

/// One end-to-end run: `copy_to::<Order>` of the rows of `orders` with
/// `id <= upto` from `src` into `orders_dest` through `dest`, `batch` rows
/// a batch, with a checkpoint. Returns the time of the job and its batches.
fn copy_to_run(
    src: &mut PgConnection,
    dest: &mut PgConnection,
    kind: Kind,
    batch: usize,
    upto: i32,
) -> Res<(Duration, u64)> {
    let job = kind.job(batch);
    let scan = orders::table
        .filter(orders::id.le(upto))
        .chunked_by(orders::id)
        .batch_size(batch as u64)
        .checkpoint(&job);
    let t0 = Instant::now();
    let report = match kind {
        Kind::CopyToInsert => scan.on_conflict_do_nothing().copy_to::<Order>(
            &mut *src,
            &mut *dest,
            orders_dest::table,
        )?,
        Kind::CopyToCopy => scan.copy_to::<Order>(&mut *src, &mut *dest, orders_dest::table)?,
        Kind::CopyToReordered => {
            scan.copy_to::<Order>(&mut *src, &mut *dest, orders_dest_reordered::table)?
        }
        other => return Err(format!("{} is not a method of copy_to", other.name()).into()),
    };
    let took = t0.elapsed();
    let expected: i64 = orders::table
        .filter(orders::id.le(upto))
        .count()
        .get_result(src)?;
    let count: i64 = if kind == Kind::CopyToReordered {
        orders_dest_reordered::table.count().get_result(dest)?
    } else {
        orders_dest::table.count().get_result(dest)?
    };
    if count != expected || report.rows != expected as u64 || !report.done {
        return Err(format!(
            "{} at batch {batch}: {count} rows in the destination of {expected} \
             (report: {} rows, done {})",
            kind.name(),
            report.rows,
            report.done
        )
        .into());
    }
    Ok((took, report.batches))
}

/// Untimed, before the end-to-end runs: the first 3000 rows at batch 1000
/// by each method, the destination's statements recorded (Diesel's
/// instrumentation, on a connection of its own): `copy_to` must send one
/// `COPY` a batch and no `INSERT` into the destination, the other methods
/// the reverse.
fn check_paths(url: &str, src: &mut PgConnection) -> Res<()> {
    for &kind in COPY_TO {
        let mut dest = PgConnection::establish(url)?;
        reset_dest(&mut dest, &kind.job(1000))?;
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&log);
        dest.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                sink.lock().unwrap().push(query.to_string());
            }
        });
        let (_, batches) = copy_to_run(src, &mut dest, kind, 1000, 3000)?;
        let log = log.lock().unwrap();
        let copies = log.iter().filter(|q| q.starts_with("COPY")).count() as u64;
        let insert = if kind == Kind::CopyToReordered {
            r#"INSERT INTO "orders_dest_reordered""#
        } else {
            r#"INSERT INTO "orders_dest""#
        };
        let inserts = log.iter().filter(|q| q.starts_with(insert)).count() as u64;
        let expected = if kind == Kind::CopyToCopy {
            (batches, 0)
        } else {
            (0, batches)
        };
        if batches == 0 || (copies, inserts) != expected {
            return Err(format!(
                "{}: {batches} batches sent {copies} COPY and {inserts} INSERT into orders_dest, \
                 expected {expected:?}: {log:#?}",
                kind.name()
            )
            .into());
        }
        println!(
            "  check {:<30} {batches} batches: {copies} COPY, {inserts} INSERT",
            kind.name()
        );
    }
    Ok(())
}

struct Options {
    rows: u64,
    repeat: usize,
    batches: Vec<usize>,
    raw: bool,
    copy_to: bool,
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: 100_000,
        repeat: 1,
        batches: vec![1000, 10_000],
        raw: true,
        copy_to: true,
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
            "--parts" => {
                let parts = value()?;
                (o.raw, o.copy_to) = (false, false);
                for p in parts.split(',') {
                    match p.trim() {
                        "raw" => o.raw = true,
                        "copy_to" => o.copy_to = true,
                        other => return Err(format!("unknown part {other} (raw, copy_to)").into()),
                    }
                }
            }
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.repeat == 0 || o.rows == 0 || o.batches.is_empty() || !(o.raw || o.copy_to) {
        return Err("--rows, --repeat, --batch-sizes and --parts must not be zero or empty".into());
    }
    if o.rows > i32::MAX as u64 {
        return Err("--rows must fit an INTEGER key".into());
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

/// Per part: its methods, and per batch size, per method, the rows/s of
/// each round.
type Runs = Vec<(&'static [Kind], Vec<Vec<Vec<f64>>>)>;

fn parent_main(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let load_start = loadavg();
    println!(
        "copy_from: {} rows, {} round(s), batch sizes {:?}, parts{}{}, load average {load_start}",
        o.rows,
        o.repeat,
        o.batches,
        if o.raw { " raw" } else { "" },
        if o.copy_to { " copy_to" } else { "" },
    );
    let url = prepare_namespace(Backend::Pg, NAMESPACE)?;
    let result = measure(&url, &o);
    drop_namespace(Backend::Pg, NAMESPACE, &url);
    let runs = result?;
    let load_end = loadavg();
    println!("load average at the end {load_end}");

    let (dir, json_path, mut results) = open_report("copy_from")?;
    for (kinds, per_batch) in &runs {
        let copy_at = kinds
            .iter()
            .position(|k| matches!(k, Kind::Copy | Kind::CopyToCopy))
            .ok_or("a part without its COPY method")?;
        for (b, &batch) in o.batches.iter().enumerate() {
            let copy = &per_batch[b][copy_at];
            // COPY / this method per round; for the COPY method, COPY / the first.
            let ratios = |k: usize| -> Vec<f64> {
                let of = if k == copy_at { 0 } else { k };
                let other = &per_batch[b][of];
                (0..copy.len()).map(|r| copy[r] / other[r]).collect()
            };
            for (k, &kind) in kinds.iter().enumerate() {
                let (rps, per_round) = (&per_batch[b][k], ratios(k));
                let v = json!({
                    "backend": "pg",
                    "part": kind.part().0,
                    "rows": o.rows,
                    "method": kind.name(),
                    "batch_size": batch,
                    "repeats": rps.len(),
                    "rows_per_sec": median(rps).round() as u64,
                    "ratio_copy_to_insert": round3(median(&per_round)),
                    "ratios": per_round.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
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
    }
    let order = |method: Option<&str>| {
        ALL.into_iter()
            .find(|k| Some(k.name()) == method)
            .map_or(("", 5), |k| k.part())
    };
    results.sort_by_key(|r| {
        let (part, o) = order(r["method"].as_str());
        (
            r["rows"].as_u64().unwrap_or(0),
            // the raw part first, then copy_to; in each, insert before copy
            part != "raw",
            r["batch_size"].as_u64().unwrap_or(0),
            o,
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

fn measure(url: &str, o: &Options) -> Res<Runs> {
    let mut conn = PgConnection::establish(url)?;
    setup(&mut conn)?;
    let rows = make_rows(o.rows);
    let mut out: Runs = Vec::new();
    let report = |round: usize, kind: Kind, batch: usize, took: Duration| {
        let rps = o.rows as f64 / took.as_secs_f64();
        println!(
            "  round {round} {:<30} batch {batch:>6} {:>7.2} s {:>10.0} rows/s  load {}",
            kind.name(),
            took.as_secs_f64(),
            rps,
            loadavg()
        );
        rps
    };
    if o.raw {
        let mut runs = vec![vec![Vec::new(); RAW.len()]; o.batches.len()];
        for round in 1..=o.repeat {
            for (b, &batch) in o.batches.iter().enumerate() {
                for (k, &kind) in RAW.iter().enumerate() {
                    reset(&mut conn)?;
                    let took = run(&mut conn, &rows, kind, batch)?;
                    runs[b][k].push(report(round, kind, batch, took));
                }
            }
        }
        out.push((RAW, runs));
    }
    if o.copy_to {
        load_source(&mut conn, &rows)?;
        drop(rows);
        // `conn` reads the source; `dest` writes the destination.
        let mut dest = PgConnection::establish(url)?;
        check_paths(url, &mut conn)?;
        let mut runs = vec![vec![Vec::new(); COPY_TO.len()]; o.batches.len()];
        for round in 1..=o.repeat {
            for (b, &batch) in o.batches.iter().enumerate() {
                for (k, &kind) in COPY_TO.iter().enumerate() {
                    reset_dest(&mut dest, &kind.job(batch))?;
                    let (took, _) = copy_to_run(&mut conn, &mut dest, kind, batch, i32::MAX)?;
                    runs[b][k].push(report(round, kind, batch, took));
                }
            }
        }
        out.push((COPY_TO, runs));
    }
    Ok(out)
}
