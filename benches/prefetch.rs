//! Read-ahead benchmark: a blocking scan with and without `prefetch(1)` +
//! `on_thread()`, against Diesel's single `load_iter` statement with and without
//! `ORDER BY`, with and without work per row in the caller; and `hand_ranges`, a
//! hand-written read-ahead on several connections (a boundary probe feeding range
//! loads), the ceiling of that design on the machine that runs it.
//!
//! ```sh
//! cargo bench --bench prefetch -- --rows 2000                      # SQLite only, seconds
//! cargo bench --bench prefetch --all-features -- --rows 1000000    # all three backends
//! BENCH_BACKENDS=pg cargo bench --bench prefetch --all-features -- --rows 1000000 --repeat 5
//! BENCH_BACKENDS=pg cargo bench --bench prefetch --all-features -- --rows 1000000 --loaders 3
//! ```
//!
//! Per backend the table `items` is filled once; then every round runs each method
//! once, in the order of `METHODS`, so that a ratio compares runs seconds apart. The
//! work per row (`_work` methods) is a busy wait as long as the scan's own time per
//! row, measured in an untimed warm-up scan (override: `--work-ns`). Results go to
//! `target/bench-report/prefetch.json` and are printed as a table. See
//! benches/README.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_chunked_iterator::prelude::*;
use serde_json::{json, Value};

#[allow(unused_macros)]
mod common;

use common::{
    backend_names, drop_namespace, median, namespace_or_skip, open_report, report_failures, round3,
    wanted_backends, Backend, Res,
};

diesel::table! {
    items (id) {
        id -> Integer,
        n -> Integer,
        pad -> Text,
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = items)]
struct Item {
    id: i32,
    n: i32,
    pad: String,
}

fn touch(i: &Item) -> u64 {
    (i.id as u64)
        .wrapping_add(i.n as u64)
        .wrapping_add(i.pad.len() as u64)
}

const NAMESPACE: &str = "bench_prefetch";

/// Every blocking method, in the order each round runs them.
const METHODS: [&str; 7] = [
    "single_ordered",
    "hand_ranges",
    "single_unordered",
    "scan",
    "scan_prefetch",
    "scan_work",
    "scan_prefetch_work",
];

/// With `--features async`, run after the blocking ones: `load_stream` on a
/// diesel-async connection (SQLite: `SyncConnectionWrapper`), without and with
/// `prefetch(1)`, on a two-thread tokio runtime.
const ASYNC_METHODS: [&str; 4] = [
    "stream",
    "stream_prefetch",
    "stream_work",
    "stream_prefetch_work",
];

/// The methods this build runs.
fn methods() -> Vec<&'static str> {
    let mut m = METHODS.to_vec();
    if cfg!(feature = "async") {
        m.extend(ASYNC_METHODS);
    }
    m
}

/// Ratios reported: (name, numerator, denominator), each the median of the
/// per-round ratios of rows/s.
const RATIOS: [(&str, &str, &str); 10] = [
    (
        "hand ranges ÷ ordered statement",
        "hand_ranges",
        "single_ordered",
    ),
    ("scan ÷ ordered statement", "scan", "single_ordered"),
    (
        "scan with prefetch ÷ ordered statement",
        "scan_prefetch",
        "single_ordered",
    ),
    (
        "scan with prefetch ÷ unordered statement",
        "scan_prefetch",
        "single_unordered",
    ),
    (
        "ordered ÷ unordered statement",
        "single_ordered",
        "single_unordered",
    ),
    ("prefetch ÷ no prefetch", "scan_prefetch", "scan"),
    (
        "prefetch ÷ no prefetch, with work per row",
        "scan_prefetch_work",
        "scan_work",
    ),
    (
        "stream with prefetch ÷ ordered statement",
        "stream_prefetch",
        "single_ordered",
    ),
    (
        "stream: prefetch ÷ no prefetch",
        "stream_prefetch",
        "stream",
    ),
    (
        "stream: prefetch ÷ no prefetch, with work per row",
        "stream_prefetch_work",
        "stream_work",
    ),
];

struct Options {
    rows: u64,
    repeat: usize,
    batch: u64,
    work_ns: Option<u64>,
    /// The connections `hand_ranges` loads ranges on (besides its probe's).
    loaders: usize,
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: 100_000,
        repeat: 3,
        batch: 1000,
        work_ns: None,
        loaders: 2,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => o.rows = value()?.parse()?,
            "--repeat" => o.repeat = value()?.parse()?,
            "--batch-size" => o.batch = value()?.parse()?,
            "--work-ns" => o.work_ns = Some(value()?.parse()?),
            "--loaders" => o.loaders = value()?.parse()?,
            // what `cargo bench` passes to every bench
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.rows == 0 || o.repeat == 0 || o.batch == 0 || o.loaders == 0 || o.loaders > 8 {
        return Err("--rows, --repeat and --batch-size must be positive, --loaders 1 to 8".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(args) {
        eprintln!("prefetch: {e}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let (_dir, json_path, mut results) = open_report("prefetch")?;
    let backends = wanted_backends();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "prefetch: {} rows, batch {}, {} round(s), backends [{}], load average {load}",
        o.rows,
        o.batch,
        o.repeat,
        backend_names(&backends)
    );
    let mut failures = Vec::new();
    for &backend in &backends {
        let Some(url) = namespace_or_skip(backend, NAMESPACE) else {
            continue;
        };
        match run_backend(backend, &url, &o) {
            Ok(v) => {
                results.retain(|r| {
                    !(r["backend"] == v["backend"]
                        && r["rows"] == v["rows"]
                        && r["batch_size"] == v["batch_size"])
                });
                results.push(v);
            }
            Err(e) => failures.push(format!("{}: {e}", backend.name())),
        }
        drop_namespace(backend, NAMESPACE, &url);
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", json_path.display());
    report_failures(&failures, "backend(s)")
}

/// Runs every method `o.repeat` times, alternating, on connections of type
/// `$conn` whose single statement loads with mode `$mode`: the summary.
macro_rules! measure {
    ($conn:ty, $aconn:ty, $mode:ty, $backend:expr, $url:expr, $o:expr) => {{
        let (backend, url, o): (Backend, &str, &Options) = ($backend, $url, $o);
        let pool = Pool::builder()
            .max_size(2)
            .min_idle(Some(2))
            .build(ConnectionManager::<$conn>::new(url))?;
        // `hand_ranges`: its probe's connection and one per loader
        let hand = Pool::builder()
            .max_size(o.loaders as u32 + 1)
            .min_idle(Some(o.loaders as u32 + 1))
            .build(ConnectionManager::<$conn>::new(url))?;
        let mut conn = <$conn>::establish(url)?;
        let batch = o.batch;
        let one = |method: &str, work_ns: u64, conn: &mut $conn| -> Res<Run> {
            let mut r = Run {
                rows: 0,
                checksum: 0,
                seconds: 0.0,
            };
            let mut see = |i: &Item| {
                work(work_ns);
                r.rows += 1;
                r.checksum = r.checksum.wrapping_add(touch(i));
            };
            let t0 = Instant::now();
            match method {
                "single_ordered" => {
                    for i in items::table
                        .order(items::id)
                        .select(Item::as_select())
                        .load_iter::<Item, $mode>(conn)?
                    {
                        see(&i?);
                    }
                }
                // Not this crate: the best a read-ahead on several connections can do. A
                // probe on its own connection walks the batch boundaries (`WHERE id > $lo
                // ORDER BY id OFFSET n-1 LIMIT 1`, index only) and hands each range to
                // the next of `--loaders` threads, round robin; each loads `WHERE id >
                // $lo AND id <= $hi ORDER BY id` on its own connection and sends the
                // batch on; the caller takes the batches in order. Unchecked: no
                // retries, and a panic on a failed statement.
                "hand_ranges" => {
                    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
                    let loaders = o.loaders;
                    let mut txs: Vec<SyncSender<(i32, Option<i32>)>> = Vec::new();
                    let mut rxs: Vec<Receiver<(i32, Option<i32>)>> = Vec::new();
                    let mut bts: Vec<SyncSender<Vec<Item>>> = Vec::new();
                    let mut brs: Vec<Receiver<Vec<Item>>> = Vec::new();
                    let mut cs = Vec::new();
                    for _ in 0..loaders {
                        let (t, r) = sync_channel(2);
                        txs.push(t);
                        rxs.push(r);
                        let (t, r) = sync_channel(1);
                        bts.push(t);
                        brs.push(r);
                        cs.push(hand.get()?);
                    }
                    let mut pc = hand.get()?;
                    std::thread::scope(|s| {
                        s.spawn(move || {
                            let mut lo = i32::MIN;
                            let mut k = 0usize;
                            loop {
                                let hi: Option<i32> = items::table
                                    .select(items::id)
                                    .filter(items::id.gt(lo))
                                    .order(items::id)
                                    .offset(batch as i64 - 1)
                                    .limit(1)
                                    .get_result(&mut *pc)
                                    .optional()
                                    .unwrap();
                                if txs[k % loaders].send((lo, hi)).is_err() {
                                    break;
                                }
                                k += 1;
                                match hi {
                                    Some(h) => lo = h,
                                    None => break,
                                }
                            }
                        });
                        for ((rx, bt), c) in rxs.into_iter().zip(bts).zip(cs.iter_mut()) {
                            s.spawn(move || {
                                for (lo, hi) in rx {
                                    let q = items::table
                                        .filter(items::id.gt(lo))
                                        .order(items::id)
                                        .select(Item::as_select())
                                        .into_boxed();
                                    let q = match hi {
                                        Some(h) => q.filter(items::id.le(h)),
                                        None => q,
                                    };
                                    let v = q.load::<Item>(&mut **c).unwrap();
                                    if bt.send(v).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        let mut k = 0;
                        while let Ok(v) = brs[k % loaders].recv() {
                            for i in &v {
                                see(i)
                            }
                            k += 1;
                        }
                    });
                }
                "single_unordered" => {
                    for i in items::table
                        .select(Item::as_select())
                        .load_iter::<Item, $mode>(conn)?
                    {
                        see(&i?);
                    }
                }
                "scan" | "scan_work" => {
                    for i in items::table
                        .chunked_by(items::id)
                        .batch_size(batch)
                        .load_iter::<Item>(&pool)
                    {
                        see(&i?);
                    }
                }
                "scan_prefetch" | "scan_prefetch_work" => {
                    for i in items::table
                        .chunked_by(items::id)
                        .batch_size(batch)
                        .prefetch(1)
                        .load_iter::<Item>(pool.clone())
                        .on_thread()
                    {
                        see(&i?);
                    }
                }
                #[cfg(feature = "async")]
                "stream" | "stream_work" | "stream_prefetch" | "stream_prefetch_work" => {
                    use diesel_async::AsyncConnection;
                    use futures_util::TryStreamExt;
                    let prefetch = usize::from(method.starts_with("stream_prefetch"));
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    let seen = rt.block_on(async {
                        let mut aconn = <$aconn>::establish(url).await?;
                        let t0 = Instant::now();
                        let mut rows = items::table
                            .chunked_by(items::id)
                            .batch_size(batch)
                            .prefetch(prefetch)
                            .load_stream::<Item>(&mut aconn);
                        let mut seen = (0u64, 0u64);
                        while let Some(i) = rows.try_next().await? {
                            work(work_ns);
                            seen.0 += 1;
                            seen.1 = seen.1.wrapping_add(touch(&i));
                        }
                        Res::Ok((seen, t0.elapsed()))
                    })?;
                    let ((rows, checksum), elapsed) = seen;
                    return Ok(Run {
                        rows,
                        checksum,
                        seconds: elapsed.as_secs_f64(),
                    });
                }
                other => return Err(format!("unknown method {other}").into()),
            }
            r.seconds = t0.elapsed().as_secs_f64();
            black_box(r.checksum);
            Ok(r)
        };
        // warm-up (untimed): caches, and the scan's own time per row
        one("single_ordered", 0, &mut conn)?;
        let warm = one("scan", 0, &mut conn)?;
        let work_ns = o
            .work_ns
            .unwrap_or_else(|| (warm.seconds * 1e9 / warm.rows.max(1) as f64) as u64);
        println!(
            "  {}: work per row in the _work methods: {work_ns} ns",
            backend.name()
        );
        let mut runs: Vec<(String, Run)> = Vec::new();
        for round in 1..=o.repeat {
            for m in methods() {
                let w = if m.ends_with("_work") { work_ns } else { 0 };
                let r = one(m, w, &mut conn)?;
                if r.rows != o.rows {
                    return Err(format!("{m} saw {} rows, not {}", r.rows, o.rows).into());
                }
                println!(
                    "  round {round} {m:<20} {:>10.0} rows/s ({:.3} s)",
                    r.rows as f64 / r.seconds,
                    r.seconds
                );
                runs.push((m.to_string(), r));
            }
        }
        let checks: Vec<u64> = runs.iter().map(|(_, r)| r.checksum).collect();
        if checks.windows(2).any(|w| w[0] != w[1]) {
            return Err("the methods saw different rows".into());
        }
        let v = summary(&runs, o, backend, work_ns);
        for (name, _, _) in RATIOS {
            if v["ratios"][name].is_null() {
                continue;
            }
            println!(
                "  {}: {name}: {}",
                backend.name(),
                v["ratios"][name]["median"]
            );
        }
        Ok::<Value, Box<dyn std::error::Error>>(v)
    }};
}

fn run_backend(backend: Backend, url: &str, o: &Options) -> Res<Value> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            fill::<diesel::SqliteConnection>(
                url,
                &format!(
                    "PRAGMA journal_mode = WAL; \
                     CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, n INTEGER NOT NULL, pad TEXT NOT NULL); \
                     INSERT INTO items WITH RECURSIVE s(i) AS \
                     (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {}) \
                     SELECT i, i % 1000, printf('%0100d', i) FROM s",
                    o.rows
                ),
            )?;
            measure!(
                diesel::SqliteConnection,
                diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
                    diesel::SqliteConnection,
                >,
                DefaultLoadingMode,
                backend,
                url,
                o
            )
        }
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            fill::<diesel::PgConnection>(
                url,
                &format!(
                    "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad TEXT NOT NULL); \
                     INSERT INTO items SELECT i, i % 1000, lpad(i::text, 100, '0') \
                     FROM generate_series(1, {}) AS i",
                    o.rows
                ),
            )?;
            fill::<diesel::PgConnection>(url, "VACUUM ANALYZE items")?;
            // single-row mode: the statement streams its rows, as the scan's batches do
            measure!(
                diesel::PgConnection,
                diesel_async::AsyncPgConnection,
                diesel::pg::PgRowByRowLoadingMode,
                backend,
                url,
                o
            )
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            fill::<diesel::MysqlConnection>(
                url,
                &format!(
                    "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad VARCHAR(100) NOT NULL); \
                     INSERT INTO items SELECT seq, seq % 1000, LPAD(seq, 100, '0') FROM seq_1_to_{}; \
                     ANALYZE TABLE items",
                    o.rows
                ),
            )?;
            measure!(
                diesel::MysqlConnection,
                diesel_async::AsyncMysqlConnection,
                DefaultLoadingMode,
                backend,
                url,
                o
            )
        }
    }
}

fn fill<C: Connection>(url: &str, sql: &str) -> Res<()> {
    let started = Instant::now();
    let mut conn = C::establish(url)?;
    conn.batch_execute(sql)?;
    println!("  filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A busy wait of `ns` nanoseconds: the caller's work on one row.
#[inline]
fn work(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_nanos(ns);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// What one run saw: rows, a checksum, and its wall time.
struct Run {
    rows: u64,
    checksum: u64,
    seconds: f64,
}

fn summary(runs: &[(String, Run)], o: &Options, backend: Backend, work_ns: u64) -> Value {
    let mut per_method = serde_json::Map::new();
    for m in methods() {
        let rps: Vec<f64> = runs
            .iter()
            .filter(|(n, _)| n == m)
            .map(|(_, r)| r.rows as f64 / r.seconds)
            .collect();
        per_method.insert(
            m.into(),
            json!({"rows_per_sec_median": round3(median(&rps)), "rows_per_sec": rps.iter().map(|x| round3(*x)).collect::<Vec<_>>()}),
        );
    }
    let mut ratios = serde_json::Map::new();
    for (name, a, b) in RATIOS {
        let per_round: Vec<f64> = (0..o.repeat)
            .filter_map(|round| {
                let of = |m: &str| {
                    runs.iter()
                        .filter(|(n, _)| n == m)
                        .nth(round)
                        .map(|(_, r)| r.rows as f64 / r.seconds)
                };
                Some(of(a)? / of(b)?)
            })
            .collect();
        if per_round.is_empty() {
            continue;
        }
        ratios.insert(
            name.into(),
            json!({"median": round3(median(&per_round)), "rounds": per_round.iter().map(|x| round3(*x)).collect::<Vec<_>>()}),
        );
    }
    json!({
        "backend": backend.name(),
        "rows": o.rows,
        "batch_size": o.batch,
        "repeats": o.repeat,
        "work_ns_per_row": work_ns,
        "methods": per_method,
        "ratios": ratios,
    })
}
