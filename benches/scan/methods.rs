//! The methods of the scan benchmark: one full scan, and one batch at a depth of the
//! table, per method; and the child process that measures one method.

use std::hint::black_box;
use std::time::{Duration, Instant};

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use serde_json::{json, Value};

use crate::common::{median, round3, Backend, Res};
use crate::{posts, touch, Post};

/// Every method, in the order they run.
pub const METHODS: [&str; 12] = [
    "load_all",
    "offset",
    "diesel_load_iter",
    "diesel_load_iter_row_by_row",
    "hand_keyset",
    "chunked_iter",
    "chunked_batches",
    "chunked_pool",
    "chunked_pool_no_ping",
    "events_composite",
    "events_first",
    "events_unique",
];

/// Diagnostic methods, run only when named in `--methods`: `hand_keyset_with_key` is
/// `hand_keyset` selecting `(id, Post)` like the crate does, to tell the cost of
/// reading the key column twice from the cost of the crate's own code;
/// `hand_keyset_row_by_row` (PostgreSQL) is `hand_keyset` reading each page in
/// libpq's single-row mode and handing each row on as it arrives: the fastest keyset
/// loop Diesel's blocking API allows, to tell what keyset paging itself costs from
/// what the crate adds.
pub const EXTRA_METHODS: [&str; 2] = ["hand_keyset_with_key", "hand_keyset_row_by_row"];

/// Methods that read in pages of `batch_size` rows (one result per batch size).
pub fn is_batched(method: &str) -> bool {
    matches!(
        method,
        "offset"
            | "hand_keyset"
            | "hand_keyset_with_key"
            | "hand_keyset_row_by_row"
            | "chunked_iter"
            | "chunked_batches"
            | "chunked_pool"
            | "chunked_pool_no_ping"
            | "chunked_stream"
    ) || is_schema(method)
}

/// The composite-key schemas: scans of `events_*` by `(created, id)` (see `fill.rs`).
pub fn is_schema(method: &str) -> bool {
    method.starts_with("events_")
}

/// Methods whose single-batch latency is measured at several depths.
pub fn has_depths(method: &str) -> bool {
    !crate::stream::is_async(method)
        && is_batched(method)
        && !EXTRA_METHODS.contains(&method)
        && !method.starts_with("chunked_pool")
}

/// Depths (fractions of the table) at which one batch is timed.
pub const DEPTHS: [(&str, f64); 4] = [("0", 0.0), ("0.1", 0.1), ("0.5", 0.5), ("1", 1.0)];

/// What a full scan saw.
#[derive(Default)]
pub struct Scan {
    pub(crate) rows: u64,
    pub(crate) checksum: u64,
    pub(crate) first_row: Option<Duration>,
    pub(crate) total: Duration,
    pub(crate) queries: u64,
    /// The scan's first `next()` refused to run it (`Error::SortsEveryBatch`).
    pub(crate) refused: Option<String>,
}

impl Scan {
    #[inline]
    pub(crate) fn see(&mut self, t0: Instant, p: &Post) {
        self.see_value(t0, touch(p));
    }

    #[inline]
    fn see_value(&mut self, t0: Instant, v: u64) {
        if self.first_row.is_none() {
            self.first_row = Some(t0.elapsed());
        }
        self.rows += 1;
        self.checksum = self.checksum.wrapping_add(v);
    }
}

/// One table of the composite-key schemas (`fill::SCHEMAS`) and its model.
macro_rules! events_schema {
    ($table:ident, $model:ident) => {
        diesel::table! {
            $table (id) {
                id -> Integer,
                created -> BigInt,
                payload -> Text,
            }
        }

        #[derive(Queryable, Selectable)]
        #[diesel(table_name = $table)]
        struct $model {
            id: i32,
            created: i64,
            payload: String,
        }

        impl $model {
            fn touch(&self) -> u64 {
                (self.id as u64)
                    .wrapping_add(self.created as u64)
                    .wrapping_add(self.payload.len() as u64)
            }
        }
    };
}

events_schema!(events_composite, EventComposite);
events_schema!(events_first, EventFirst);
events_schema!(events_unique, EventUnique);

/// `created` of row `id` of an `events_*` table (see `fill::create_schemas`).
fn created_of(table: &str, id: u64) -> i64 {
    if table == "events_unique" {
        id as i64
    } else {
        id.div_ceil(4) as i64
    }
}

/// A full scan of an `events_*` table by `(created, id)`, into `$s`: stops with
/// `$s.refused` set if the scan refuses a plan that sorts every batch.
macro_rules! events_full {
    ($conn:ident, $s:ident, $t0:ident, $b:expr, $table:ident, $model:ident) => {{
        let mut it = $table::table
            .chunked_by(($table::created, $table::id))
            .batch_size($b as u64)
            .load_iter::<$model>(&mut *$conn);
        for e in &mut it {
            match e {
                Ok(e) => $s.see_value($t0, e.touch()),
                Err(e @ diesel_chunked_iterator::Error::SortsEveryBatch { .. }) => {
                    $s.refused = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        $s.queries = it.progress().queries as u64;
    }};
}

/// One batch of `$b` rows of an `events_*` table after row `$start`: returns its rows.
macro_rules! events_batch {
    ($conn:ident, $b:expr, $start:expr, $table:ident, $model:ident) => {{
        let mut c = $table::table
            .chunked_by(($table::created, $table::id))
            .batch_size($b as u64)
            .limit_total($b as u64);
        if $start > 0 {
            let start = $start as u64;
            c = c.start_after((created_of(stringify!($table), start), start as i32));
        }
        let mut n = 0usize;
        for e in c.load_iter::<$model>(&mut *$conn) {
            black_box(e?.touch());
            n += 1;
        }
        n
    }};
}

/// `chunked_iter` on an r2d2 pool of one connection, opened before the clock starts,
/// with or without r2d2's `test_on_check_out` ping (a query before each check-out).
#[cfg(feature = "r2d2")]
macro_rules! pool_scan {
    ($conn_ty:ty, $url:expr, $batch:expr, $ping:expr) => {{
        use diesel::r2d2::{ConnectionManager, Pool};
        let pool = Pool::builder()
            .max_size(1)
            .min_idle(Some(1))
            .test_on_check_out($ping)
            .build(ConnectionManager::<$conn_ty>::new($url))?;
        let mut s = Scan::default();
        let t0 = Instant::now();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size($batch)
            .load_iter::<Post>(&pool);
        for p in &mut it {
            s.see(t0, &p?);
        }
        s.queries = it.progress().queries as u64;
        s.total = t0.elapsed();
        black_box(s.checksum);
        s
    }};
}

#[cfg(feature = "r2d2")]
fn pool_scan(backend: Backend, url: &str, batch: u64, ping: bool) -> Res<Scan> {
    Ok(match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => pool_scan!(diesel::SqliteConnection, url, batch, ping),
        #[cfg(feature = "postgres")]
        Backend::Pg => pool_scan!(diesel::PgConnection, url, batch, ping),
        #[cfg(feature = "mysql")]
        Backend::Mysql => pool_scan!(diesel::MysqlConnection, url, batch, ping),
    })
}

#[cfg(not(feature = "r2d2"))]
fn pool_scan(_: Backend, _: &str, _: u64, _: bool) -> Res<Scan> {
    Err("the pool methods need the `r2d2` feature".into())
}

/// Runs one full scan with `method` on `$conn` (a `&mut` concrete connection).
macro_rules! full_scan {
    ($conn:ident, $method:expr, $batch:expr) => {{
        let b = $batch as i64;
        let mut s = Scan::default();
        let t0 = Instant::now();
        match $method {
            "load_all" => {
                let all: Vec<Post> = posts::table
                    .order(posts::id)
                    .select(Post::as_select())
                    .load(&mut *$conn)?;
                s.queries = 1;
                for p in &all {
                    s.see(t0, p);
                }
                drop(black_box(all));
            }
            "offset" => {
                let mut offset = 0i64;
                loop {
                    let page: Vec<Post> = posts::table
                        .order(posts::id)
                        .select(Post::as_select())
                        .limit(b)
                        .offset(offset)
                        .load(&mut *$conn)?;
                    s.queries += 1;
                    for p in &page {
                        s.see(t0, p);
                    }
                    if (page.len() as i64) < b {
                        break;
                    }
                    offset += b;
                }
            }
            "diesel_load_iter" => {
                s.queries = 1;
                for p in posts::table
                    .order(posts::id)
                    .select(Post::as_select())
                    .load_iter::<Post, DefaultLoadingMode>(&mut *$conn)?
                {
                    let p = p?;
                    s.see(t0, &p);
                }
            }
            "hand_keyset" => {
                let mut last = 0i32;
                loop {
                    let page: Vec<Post> = posts::table
                        .filter(posts::id.gt(last))
                        .order(posts::id)
                        .select(Post::as_select())
                        .limit(b)
                        .load(&mut *$conn)?;
                    s.queries += 1;
                    for p in &page {
                        s.see(t0, p);
                    }
                    match page.last() {
                        Some(p) if page.len() as i64 == b => last = p.id,
                        _ => break,
                    }
                }
            }
            "hand_keyset_with_key" => {
                let mut last = 0i32;
                loop {
                    let page: Vec<(i32, Post)> = posts::table
                        .filter(posts::id.gt(last))
                        .order(posts::id)
                        .select((posts::id, Post::as_select()))
                        .limit(b)
                        .load(&mut *$conn)?;
                    s.queries += 1;
                    for (_, p) in &page {
                        s.see(t0, p);
                    }
                    match page.last() {
                        Some((k, _)) if page.len() as i64 == b => last = *k,
                        _ => break,
                    }
                }
            }
            "chunked_iter" => {
                let mut it = posts::table
                    .chunked_by(posts::id)
                    .batch_size(b as u64)
                    .load_iter::<Post>(&mut *$conn);
                for p in &mut it {
                    let p = p?;
                    s.see(t0, &p);
                }
                s.queries = it.progress().queries as u64;
            }
            "chunked_batches" => {
                let mut it = posts::table
                    .chunked_by(posts::id)
                    .batch_size(b as u64)
                    .load_batches::<Post>(&mut *$conn);
                for batch in &mut it {
                    for p in &batch? {
                        s.see(t0, p);
                    }
                }
                s.queries = it.progress().queries as u64;
            }
            "events_composite" => events_full!($conn, s, t0, b, events_composite, EventComposite),
            "events_first" => events_full!($conn, s, t0, b, events_first, EventFirst),
            "events_unique" => events_full!($conn, s, t0, b, events_unique, EventUnique),
            other => return Err(format!("method `{other}` is not available here").into()),
        }
        s.total = t0.elapsed();
        black_box(s.checksum);
        s
    }};
}

/// Times one batch of `$batch` rows starting at row `$start` (0-based; ids are
/// 1..=rows, so the key just before that row is `$start`).
macro_rules! one_batch {
    ($conn:ident, $method:expr, $batch:expr, $start:expr) => {{
        let b = $batch as i64;
        let start = $start as i64;
        let t0 = Instant::now();
        let n: usize = match $method {
            "offset" => {
                let page: Vec<Post> = posts::table
                    .order(posts::id)
                    .select(Post::as_select())
                    .limit(b)
                    .offset(start)
                    .load(&mut *$conn)?;
                page.iter().map(touch).fold(0, u64::wrapping_add);
                black_box(&page);
                page.len()
            }
            "hand_keyset" => {
                let page: Vec<Post> = posts::table
                    .filter(posts::id.gt(start as i32))
                    .order(posts::id)
                    .select(Post::as_select())
                    .limit(b)
                    .load(&mut *$conn)?;
                black_box(page.iter().map(touch).fold(0, u64::wrapping_add));
                page.len()
            }
            "chunked_iter" => {
                let mut n = 0usize;
                for p in posts::table
                    .chunked_by(posts::id)
                    .batch_size(b as u64)
                    .start_after(start as i32)
                    .limit_total(b as u64)
                    .load_iter::<Post>(&mut *$conn)
                {
                    black_box(touch(&p?));
                    n += 1;
                }
                n
            }
            "chunked_batches" => {
                let mut n = 0usize;
                for batch in posts::table
                    .chunked_by(posts::id)
                    .batch_size(b as u64)
                    .start_after(start as i32)
                    .limit_total(b as u64)
                    .load_batches::<Post>(&mut *$conn)
                {
                    let batch = batch?;
                    black_box(batch.iter().map(touch).fold(0, u64::wrapping_add));
                    n += batch.len();
                }
                n
            }
            "events_composite" => events_batch!($conn, b, start, events_composite, EventComposite),
            "events_first" => events_batch!($conn, b, start, events_first, EventFirst),
            "events_unique" => events_batch!($conn, b, start, events_unique, EventUnique),
            other => return Err(format!("no batch latency for `{other}`").into()),
        };
        (t0.elapsed(), n)
    }};
}

/// Repetitions of each single-batch timing; the median is reported.
const DEPTH_REPEATS: usize = 7;

/// Median single-batch latency (ms) at each depth. A batch "at depth d" starts at row
/// `min(d × rows, rows − batch)`, so the one at depth 1 is the last full batch.
macro_rules! depth_latencies {
    ($conn:ident, $method:expr, $batch:expr, $rows:expr) => {{
        let mut out = serde_json::Map::new();
        for (label, frac) in DEPTHS {
            let start = ((frac * $rows as f64) as u64).min($rows.saturating_sub($batch));
            let mut times = Vec::with_capacity(DEPTH_REPEATS);
            for _ in 0..DEPTH_REPEATS {
                let (t, n) = one_batch!($conn, $method, $batch, start);
                if n as u64 != $batch.min($rows) {
                    return Err(format!(
                        "{} at depth {label}: {n} rows instead of {}",
                        $method, $batch
                    )
                    .into());
                }
                times.push(t.as_secs_f64() * 1e3);
            }
            out.insert(label.to_string(), json!(round3(median(&times))));
        }
        Value::Object(out)
    }};
}

/// Peak resident set size of this process so far (VmHWM), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round3(kb / 1024.0))
}

/// `diesel_load_iter_row_by_row` and `hand_keyset_row_by_row`: PostgreSQL's single-row
/// mode, on the other backends an error.
trait RowByRow {
    fn row_by_row(&mut self) -> Res<Scan> {
        Err("row-by-row loading is PostgreSQL only".into())
    }
    fn keyset_row_by_row(&mut self, _batch: u64) -> Res<Scan> {
        Err("row-by-row loading is PostgreSQL only".into())
    }
}
#[cfg(feature = "sqlite")]
impl RowByRow for diesel::SqliteConnection {}
#[cfg(feature = "mysql")]
impl RowByRow for diesel::MysqlConnection {}
#[cfg(feature = "postgres")]
impl RowByRow for diesel::PgConnection {
    fn row_by_row(&mut self) -> Res<Scan> {
        pg_row_by_row(self)
    }
    fn keyset_row_by_row(&mut self, batch: u64) -> Res<Scan> {
        pg_keyset_row_by_row(self, batch)
    }
}

/// PostgreSQL's single-row mode: the only method that needs a `PgConnection` type.
#[cfg(feature = "postgres")]
fn pg_row_by_row(conn: &mut diesel::PgConnection) -> Res<Scan> {
    use diesel::pg::PgRowByRowLoadingMode;
    let mut s = Scan {
        queries: 1,
        ..Scan::default()
    };
    let t0 = Instant::now();
    for p in posts::table
        .order(posts::id)
        .select(Post::as_select())
        .load_iter::<Post, PgRowByRowLoadingMode>(conn)?
    {
        s.see(t0, &p?);
    }
    s.total = t0.elapsed();
    black_box(s.checksum);
    Ok(s)
}

/// `hand_keyset` with each page read in single-row mode, every row handed on (touched)
/// as it arrives, the next page asked for right after the last row of this one.
#[cfg(feature = "postgres")]
fn pg_keyset_row_by_row(conn: &mut diesel::PgConnection, batch: u64) -> Res<Scan> {
    use diesel::pg::PgRowByRowLoadingMode;
    let b = batch as i64;
    let mut s = Scan::default();
    let t0 = Instant::now();
    let mut last = 0i32;
    loop {
        let mut n = 0i64;
        for p in posts::table
            .filter(posts::id.gt(last))
            .order(posts::id)
            .select(Post::as_select())
            .limit(b)
            .load_iter::<Post, PgRowByRowLoadingMode>(&mut *conn)?
        {
            let p = p?;
            s.see(t0, &p);
            last = p.id;
            n += 1;
        }
        s.queries += 1;
        if n < b {
            break;
        }
    }
    s.total = t0.elapsed();
    black_box(s.checksum);
    Ok(s)
}

/// One measurement in this (child) process: a full scan unless `full` is false, then
/// the peak RSS, then the batch latencies at depths. Returns the JSON record.
pub fn child(
    backend: Backend,
    method: &str,
    batch: u64,
    rows: u64,
    url: &str,
    full: bool,
) -> Res<Value> {
    let (scan, rss, depths) = with_conn!(backend, url, "", |conn| {
        let scan = if !full {
            None
        } else if method == "diesel_load_iter_row_by_row" {
            Some(conn.row_by_row()?)
        } else if method == "hand_keyset_row_by_row" {
            Some(conn.keyset_row_by_row(batch)?)
        } else if crate::stream::is_async(method) {
            Some(crate::stream::stream_scan(backend, url, method, batch)?)
        } else if method.starts_with("chunked_pool") {
            Some(pool_scan(backend, url, batch, method == "chunked_pool")?)
        } else {
            Some(full_scan!(conn, method, batch))
        };
        // The scan's own peak: read before the (small) depth queries run.
        let rss = peak_rss_mb();
        // BENCH_NO_DEPTHS=1: the full scan only (for profiling a child by hand).
        let skip_depths = std::env::var("BENCH_NO_DEPTHS").is_ok_and(|v| v == "1");
        let refused = scan.as_ref().is_some_and(|s| s.refused.is_some());
        let depths = if has_depths(method) && !skip_depths && !refused {
            Some(depth_latencies!(conn, method, batch, rows))
        } else {
            None
        };
        (scan, rss, depths)
    });
    if let Some(s) = &scan {
        if let Some(why) = &s.refused {
            return Ok(json!({
                "backend": backend.name(),
                "method": method,
                "batch_size": batch,
                "rows": rows,
                "refused": why,
            }));
        }
        if s.rows != rows {
            return Err(format!("{method}: scanned {} rows of {rows}", s.rows).into());
        }
    }
    let batch_json = if is_batched(method) {
        json!(batch)
    } else {
        Value::Null
    };
    Ok(json!({
        "backend": backend.name(),
        "method": method,
        "batch_size": batch_json,
        "rows": rows,
        "rows_per_sec": scan.as_ref().map(|s| (s.rows as f64 / s.total.as_secs_f64()).round()),
        "first_row_ms": scan.as_ref().and_then(|s| s.first_row).map(|d| round3(d.as_secs_f64() * 1e3)),
        "peak_rss_mb": rss,
        "batch_ms_by_depth": depths.unwrap_or(Value::Null),
        "full_scan": full,
        "scan_ms": scan.as_ref().map(|s| round3(s.total.as_secs_f64() * 1e3)),
        "queries": scan.as_ref().map(|s| s.queries),
    }))
}
