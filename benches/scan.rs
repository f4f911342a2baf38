//! Full-table scan benchmark: this crate's keyset scan against `load`, LIMIT/OFFSET,
//! Diesel's `load_iter` and a hand-written keyset loop, on every backend it can reach.
//!
//! ```sh
//! cargo bench --bench scan                                   # SQLite, 100,000 rows
//! cargo bench --bench scan --all-features -- --rows 100000,1000000
//! BENCH_BACKENDS=pg,mysql cargo bench --bench scan --all-features -- --methods chunked_iter,offset
//! ```
//!
//! Each (backend, method, batch size, table size) runs in a child process of its own (this
//! binary re-executed with `--child ...`), so that its peak resident memory (VmHWM) belongs
//! to that method alone. Results are merged into `target/bench-report/scan.json`, and
//! `scan.md` and the SVG plots are drawn again from the merged file. See benches/README.md.

use std::error::Error as StdError;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn StdError>>;

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const PG_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

diesel::table! {
    posts (id) {
        id -> Integer,
        user_id -> Integer,
        title -> Text,
        slug -> Varchar,
        published -> Bool,
        score -> Nullable<Integer>,
        created_at -> Timestamp,
        body -> Text,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = posts, treat_none_as_default_value = false)]
struct Post {
    id: i32,
    user_id: i32,
    title: String,
    slug: String,
    published: bool,
    score: Option<i32>,
    created_at: chrono::NaiveDateTime,
    body: String,
}

/// Row `id` of the table: about 200 bytes of column data (title 40, slug 24, body 120,
/// plus the numbers and the timestamp); `slug` and `created_at` unique.
fn make_post(id: i32) -> Post {
    const WORDS: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
                         tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam \
                         quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo";
    let start = (id as usize * 7) % 40;
    Post {
        id,
        user_id: id % 1000 + 1,
        title: format!("{:<40}", format!("benchmark post number {id:010}")),
        slug: format!("bench-post-{id:013}"),
        published: id % 3 != 0,
        score: (id % 10 != 0).then_some(id % 97),
        created_at: chrono::DateTime::from_timestamp(1_767_225_600 + i64::from(id), 0)
            .expect("valid timestamp")
            .naive_utc(),
        body: WORDS[start..start + 120].to_string(),
    }
}

/// Reads every column, so no method gets away with less work than another.
#[inline]
fn touch(p: &Post) -> u64 {
    (p.id as u64)
        .wrapping_add(p.user_id as u64)
        .wrapping_add(p.title.len() as u64)
        .wrapping_add(p.slug.len() as u64)
        .wrapping_add(p.published as u64)
        .wrapping_add(p.score.unwrap_or(0) as u64)
        .wrapping_add(p.created_at.and_utc().timestamp() as u64)
        .wrapping_add(p.body.len() as u64)
}

// ---------------------------------------------------------------- backends

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Pg,
    #[cfg(feature = "mysql")]
    Mysql,
}

const ALL_BACKENDS: [&str; 3] = ["sqlite", "pg", "mysql"];

impl Backend {
    fn parse(name: &str) -> Result<Backend, String> {
        #[allow(unreachable_patterns)]
        match name {
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Backend::Sqlite),
            #[cfg(feature = "postgres")]
            "pg" | "postgres" | "postgresql" => Ok(Backend::Pg),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            "sqlite" => Err("not compiled in: build with the `sqlite` feature".into()),
            "pg" | "postgres" | "postgresql" => {
                Err("not compiled in: build with `--features postgres` (or --all-features)".into())
            }
            "mysql" | "mariadb" => {
                Err("not compiled in: build with `--features mysql` (or --all-features)".into())
            }
            other => Err(format!("unknown backend `{other}` (sqlite, pg, mysql)")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Pg => "pg",
            #[cfg(feature = "mysql")]
            Backend::Mysql => "mysql",
        }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn env_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Runs `$body` with `$conn: &mut <the backend's connection>` opened on `$url`.
macro_rules! with_conn {
    ($backend:expr, $url:expr, |$conn:ident| $body:block) => {{
        match $backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                let mut c = diesel::SqliteConnection::establish($url)?;
                let $conn = &mut c;
                $body
            }
            #[cfg(feature = "postgres")]
            Backend::Pg => {
                let mut c = diesel::PgConnection::establish($url)?;
                let $conn = &mut c;
                $body
            }
            #[cfg(feature = "mysql")]
            Backend::Mysql => {
                let mut c = diesel::MysqlConnection::establish($url)?;
                let $conn = &mut c;
                $body
            }
        }
    }};
}

/// Checks that the server is reachable and creates an empty namespace for the benchmark
/// (dropped first if a previous run left it): returns the URL of that namespace.
fn prepare_namespace(backend: Backend) -> Res<String> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let path =
                std::env::temp_dir().join(format!("bench_scan_{}.sqlite3", std::process::id()));
            remove_sqlite(&path);
            Ok(path.to_string_lossy().into_owned())
        }
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            let server = env_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test");
            let mut admin = diesel::PgConnection::establish(&server)
                .map_err(|e| format!("PostgreSQL at {server} is unreachable: {e}"))?;
            diesel::sql_query("DROP SCHEMA IF EXISTS bench_scan CASCADE").execute(&mut admin)?;
            diesel::sql_query("CREATE SCHEMA bench_scan").execute(&mut admin)?;
            let sep = if server.contains('?') { '&' } else { '?' };
            Ok(format!("{server}{sep}options=-csearch_path%3Dbench_scan"))
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let server = env_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test");
            let mut admin = diesel::MysqlConnection::establish(&server)
                .map_err(|e| format!("MySQL/MariaDB at {server} is unreachable: {e}"))?;
            diesel::sql_query("DROP DATABASE IF EXISTS bench_scan").execute(&mut admin)?;
            diesel::sql_query("CREATE DATABASE bench_scan").execute(&mut admin)?;
            let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
            Ok(format!("{base}/bench_scan"))
        }
    }
}

fn drop_namespace(backend: Backend, url: &str) {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => remove_sqlite(Path::new(url)),
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            let server = env_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test");
            if let Ok(mut c) = diesel::PgConnection::establish(&server) {
                let _ =
                    diesel::sql_query("DROP SCHEMA IF EXISTS bench_scan CASCADE").execute(&mut c);
            }
            let _ = url;
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let server = env_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test");
            if let Ok(mut c) = diesel::MysqlConnection::establish(&server) {
                let _ = diesel::sql_query("DROP DATABASE IF EXISTS bench_scan").execute(&mut c);
            }
            let _ = url;
        }
    }
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Rows per multi-row INSERT: 8 columns × 4000 = 32,000 binds, under SQLite's 32,766
/// and the 65,535 of PostgreSQL and MySQL.
const INSERT_CHUNK: usize = 4000;

/// Applies the migrations and fills `posts` with ids 1..=rows in one transaction.
fn create_and_fill(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let started = Instant::now();
    macro_rules! fill {
        ($conn:ident, $migrations:expr, $before:expr, $after:expr) => {{
            for sql in $before {
                diesel::sql_query(sql).execute(&mut $conn)?;
            }
            $conn
                .run_pending_migrations($migrations)
                .map_err(|e| format!("migrations: {e}"))?;
            $conn.transaction(|conn| {
                let mut next = 1i32;
                let last = rows as i32;
                while next <= last {
                    let end = (next + INSERT_CHUNK as i32 - 1).min(last);
                    let chunk: Vec<Post> = (next..=end).map(make_post).collect();
                    diesel::insert_into(posts::table)
                        .values(&chunk)
                        .execute(conn)?;
                    next = end + 1;
                }
                diesel::QueryResult::Ok(())
            })?;
            for sql in $after {
                diesel::sql_query(sql).execute(&mut $conn)?;
            }
        }};
    }
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let mut conn = diesel::SqliteConnection::establish(url)?;
            fill!(
                conn,
                SQLITE_MIGRATIONS,
                ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = OFF"],
                ["ANALYZE"]
            );
        }
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            let mut conn = diesel::PgConnection::establish(url)?;
            fill!(
                conn,
                PG_MIGRATIONS,
                ["SET synchronous_commit = off"],
                ["VACUUM ANALYZE posts"]
            );
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn = diesel::MysqlConnection::establish(url)?;
            // InnoDB keeps its own statistics; ANALYZE TABLE returns a result set.
            fill!(conn, MYSQL_MIGRATIONS, [] as [&str; 0], [] as [&str; 0]);
        }
    }
    println!(
        "  {}: {rows} rows inserted in {:.1} s",
        backend.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- the methods

/// Every method, in the order they run.
const METHODS: [&str; 7] = [
    "load_all",
    "offset",
    "diesel_load_iter",
    "diesel_load_iter_row_by_row",
    "hand_keyset",
    "chunked_iter",
    "chunked_batches",
];

/// Diagnostic methods, run only when named in `--methods`: `hand_keyset_with_key` is
/// `hand_keyset` selecting `(id, Post)` like the crate does, to tell the cost of
/// reading the key column twice from the cost of the crate's own code.
const EXTRA_METHODS: [&str; 1] = ["hand_keyset_with_key"];

/// Methods that read in pages of `batch_size` rows (one result per batch size).
fn is_batched(method: &str) -> bool {
    matches!(
        method,
        "offset" | "hand_keyset" | "hand_keyset_with_key" | "chunked_iter" | "chunked_batches"
    )
}

/// Methods whose single-batch latency is measured at several depths.
fn has_depths(method: &str) -> bool {
    is_batched(method) && !EXTRA_METHODS.contains(&method)
}

/// Depths (fractions of the table) at which one batch is timed.
const DEPTHS: [(&str, f64); 4] = [("0", 0.0), ("0.1", 0.1), ("0.5", 0.5), ("1", 1.0)];

/// What a full scan saw.
#[derive(Default)]
struct Scan {
    rows: u64,
    checksum: u64,
    first_row: Option<Duration>,
    total: Duration,
    queries: u64,
}

impl Scan {
    #[inline]
    fn see(&mut self, t0: Instant, p: &Post) {
        if self.first_row.is_none() {
            self.first_row = Some(t0.elapsed());
        }
        self.rows += 1;
        self.checksum = self.checksum.wrapping_add(touch(p));
    }
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
            out.insert(label.to_string(), json!(round3(median(&mut times))));
        }
        Value::Object(out)
    }};
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Peak resident set size of this process so far (VmHWM), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round3(kb / 1024.0))
}

/// `diesel_load_iter_row_by_row`: PostgreSQL's single-row mode, on the other backends an error.
trait RowByRow {
    fn row_by_row(&mut self) -> Res<Scan> {
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

/// One measurement in this (child) process: a full scan unless `full` is false, then
/// the peak RSS, then the batch latencies at depths. Returns the JSON record.
fn child(
    backend: Backend,
    method: &str,
    batch: u64,
    rows: u64,
    url: &str,
    full: bool,
) -> Res<Value> {
    let (scan, rss, depths) = with_conn!(backend, url, |conn| {
        let scan = if !full {
            None
        } else if method == "diesel_load_iter_row_by_row" {
            Some(conn.row_by_row()?)
        } else {
            Some(full_scan!(conn, method, batch))
        };
        // The scan's own peak: read before the (small) depth queries run.
        let rss = peak_rss_mb();
        // BENCH_NO_DEPTHS=1: the full scan only (for profiling a child by hand).
        let skip_depths = std::env::var("BENCH_NO_DEPTHS").is_ok_and(|v| v == "1");
        let depths = if has_depths(method) && !skip_depths {
            Some(depth_latencies!(conn, method, batch, rows))
        } else {
            None
        };
        (scan, rss, depths)
    });
    if let Some(s) = &scan {
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

// ---------------------------------------------------------------- the parent

struct Options {
    rows: Vec<u64>,
    methods: Vec<String>,
    batch_sizes: Vec<u64>,
    repeat: usize,
    report_only: bool,
}

fn parse_list<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Res<Vec<T>> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            // `100_000` reads as a number; method names keep their underscores.
            let x = x.trim();
            x.parse::<T>()
                .or_else(|_| x.replace('_', "").parse::<T>())
                .map_err(|_| format!("{flag}: bad value `{x}`").into())
        })
        .collect()
}

fn parse_options(args: Vec<String>) -> Res<Options> {
    let mut o = Options {
        rows: vec![100_000],
        methods: METHODS.iter().map(|m| m.to_string()).collect(),
        batch_sizes: vec![100, 1000, 10_000],
        repeat: 1,
        report_only: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "--rows" => o.rows = parse_list("--rows", value())?,
            "--batch-sizes" => o.batch_sizes = parse_list("--batch-sizes", value())?,
            "--methods" => {
                let ms: Vec<String> = parse_list("--methods", value())?;
                for m in &ms {
                    if !METHODS.contains(&m.as_str())
                        && !EXTRA_METHODS.contains(&m.as_str())
                        && m != "chunked"
                    {
                        return Err(
                            format!("unknown method `{m}`; known: {}", METHODS.join(", ")).into(),
                        );
                    }
                }
                // `chunked` stands for both of the crate's iterators.
                o.methods = ms
                    .into_iter()
                    .flat_map(|m| match m.as_str() {
                        "chunked" => {
                            vec!["chunked_iter".to_string(), "chunked_batches".to_string()]
                        }
                        _ => vec![m],
                    })
                    .collect();
            }
            "--repeat" => {
                o.repeat = parse_list::<usize>("--repeat", value())?
                    .first()
                    .copied()
                    .unwrap_or(1)
                    .max(1)
            }
            "--report-only" => o.report_only = true,
            // `cargo bench` passes `--bench`; libtest-style filters and flags are ignored.
            other => eprintln!("scan: ignoring argument `{other}`"),
        }
    }
    if o.rows.iter().any(|&r| r == 0 || r > i32::MAX as u64) {
        return Err("--rows: each size must be between 1 and 2^31-1".into());
    }
    if o.batch_sizes.contains(&0) {
        return Err("--batch-sizes: 0 is not a batch size".into());
    }
    Ok(o)
}

/// Above this size, `offset` full scans run only at batch 1000 (at batch 100 a million-row
/// table is 10,000 queries whose OFFSET grows to a million: hours). Its batch latencies at
/// the depths are measured at every batch size. `BENCH_OFFSET_FULL=1` lifts the cap.
const OFFSET_FULL_SCAN_MAX_ROWS: u64 = 200_000;

fn report_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BENCH_REPORT_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

/// The backends to run: `BENCH_BACKENDS` (comma list) or every compiled-in one.
fn wanted_backends() -> Vec<Backend> {
    let list = std::env::var("BENCH_BACKENDS")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let names: Vec<String> = match list {
        Some(v) => v
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        None => ALL_BACKENDS.iter().map(|s| s.to_string()).collect(),
    };
    let mut out = Vec::new();
    for n in names {
        match Backend::parse(&n) {
            Ok(b) if !out.contains(&b) => out.push(b),
            Ok(_) => {}
            Err(why) => {
                println!("skipping {n}: {why}");
            }
        }
    }
    out
}

fn run_child(
    backend: Backend,
    method: &str,
    batch: u64,
    rows: u64,
    url: &str,
    full: bool,
) -> Res<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "--child",
            backend.name(),
            method,
            &batch.to_string(),
            &rows.to_string(),
            url,
            if full { "full" } else { "depths-only" },
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("child printed no result")?;
    Ok(serde_json::from_str(line)?)
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".to_string(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        std::process::exit(match child_main(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        });
    }
    if let Err(e) = parent_main(args) {
        eprintln!("scan: {e}");
        std::process::exit(1);
    }
}

fn child_main(args: &[String]) -> Res<()> {
    let [backend, method, batch, rows, url, mode] = args else {
        return Err("usage: --child BACKEND METHOD BATCH ROWS URL full|depths-only".into());
    };
    let backend = Backend::parse(backend)?;
    let v = child(
        backend,
        method,
        batch.parse()?,
        rows.parse()?,
        url,
        mode == "full",
    )?;
    println!("{v}");
    Ok(())
}

fn parent_main(args: Vec<String>) -> Res<()> {
    let o = parse_options(args)?;
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("scan.json");
    let mut results: Vec<Value> = match std::fs::read_to_string(&json_path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            eprintln!(
                "scan: {} is not a JSON array ({e}); starting afresh",
                json_path.display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let mut failures = Vec::new();
    if !o.report_only {
        let backends = wanted_backends();
        println!(
            "scan: rows {:?}, batch sizes {:?}, backends [{}], methods [{}]",
            o.rows,
            o.batch_sizes,
            backends
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", "),
            o.methods.join(", ")
        );
        for &rows in &o.rows {
            for &backend in &backends {
                let url = match prepare_namespace(backend) {
                    Ok(u) => u,
                    Err(e) => {
                        println!("skipping {}: {e}", backend.name());
                        continue;
                    }
                };
                if let Err(e) = create_and_fill(backend, &url, rows) {
                    failures.push(format!("{} fill {rows}: {e}", backend.name()));
                    drop_namespace(backend, &url);
                    continue;
                }
                for method in &o.methods {
                    if method == "diesel_load_iter_row_by_row" && backend.name() != "pg" {
                        continue;
                    }
                    let batches: Vec<u64> = if is_batched(method) {
                        o.batch_sizes.clone()
                    } else {
                        vec![0]
                    };
                    for batch in batches {
                        let full = method != "offset"
                            || rows <= OFFSET_FULL_SCAN_MAX_ROWS
                            || batch == 1000
                            || std::env::var("BENCH_OFFSET_FULL").is_ok_and(|v| v == "1");
                        let mut runs = Vec::new();
                        for _ in 0..o.repeat {
                            match run_child(backend, method, batch, rows, &url, full) {
                                Ok(v) => runs.push(v),
                                Err(e) => {
                                    failures.push(format!(
                                        "{} {method} batch {batch} rows {rows}: {e}",
                                        backend.name()
                                    ));
                                    break;
                                }
                            }
                        }
                        let Some(v) = combine(runs) else { continue };
                        println!(
                            "  {:<7} {:<28} batch {:>6}  {:>10} rows/s  first row {:>9} ms  peak RSS {:>8} MB{}",
                            backend.name(),
                            method,
                            if is_batched(method) { batch.to_string() } else { "–".into() },
                            fmt_opt(&v["rows_per_sec"], 0),
                            fmt_opt(&v["first_row_ms"], 3),
                            fmt_opt(&v["peak_rss_mb"], 1),
                            match &v["batch_ms_by_depth"] {
                                Value::Object(m) => format!(
                                    "  batch ms @depth {}",
                                    m.iter().map(|(k, x)| format!("{k}:{}", fmt_opt(x, 3))).collect::<Vec<_>>().join(" ")
                                ),
                                _ => String::new(),
                            }
                        );
                        merge(&mut results, v);
                    }
                }
                if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
                    println!(
                        "  {}: kept the table at {url} (BENCH_KEEP=1)",
                        backend.name()
                    );
                } else {
                    drop_namespace(backend, &url);
                }
            }
        }
        sort_results(&mut results);
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    }
    let md = markdown(&results);
    std::fs::write(dir.join("scan.md"), &md)?;
    if let Err(e) = plots(&results, &dir) {
        failures.push(format!("plots: {e}"));
    }
    println!("\n{}", budget_section(&results));
    println!("report: {}/scan.{{json,md}} and *.svg", dir.display());
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        return Err(format!("{} measurement(s) failed", failures.len()).into());
    }
    Ok(())
}

/// Several runs of one configuration: the median throughput and first row, the largest peak.
fn combine(mut runs: Vec<Value>) -> Option<Value> {
    if runs.len() <= 1 {
        return runs.pop();
    }
    let med = |key: &str| {
        let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        (!xs.is_empty()).then(|| median(&mut xs))
    };
    let rps = med("rows_per_sec");
    let first = med("first_row_ms");
    let peak = runs
        .iter()
        .filter_map(|r| r["peak_rss_mb"].as_f64())
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let n = runs.len();
    let mut v = runs.swap_remove(0);
    v["rows_per_sec"] = json!(rps);
    v["first_row_ms"] = json!(first);
    v["peak_rss_mb"] = json!(peak);
    v["repeats"] = json!(n);
    Some(v)
}

fn same_config(a: &Value, b: &Value) -> bool {
    ["backend", "method", "batch_size", "rows"]
        .iter()
        .all(|k| a[k] == b[k])
}

fn merge(results: &mut Vec<Value>, v: Value) {
    results.retain(|r| !same_config(r, &v));
    results.push(v);
}

fn backend_rank(b: &str) -> usize {
    ALL_BACKENDS.iter().position(|x| *x == b).unwrap_or(9)
}

fn method_rank(m: &str) -> usize {
    METHODS
        .iter()
        .chain(EXTRA_METHODS.iter())
        .position(|x| *x == m)
        .unwrap_or(99)
}

fn sort_results(results: &mut [Value]) {
    results.sort_by_key(|r| {
        (
            backend_rank(r["backend"].as_str().unwrap_or("")),
            r["rows"].as_u64().unwrap_or(0),
            method_rank(r["method"].as_str().unwrap_or("")),
            r["batch_size"].as_u64().unwrap_or(0),
        )
    });
}

/// The record of one configuration, if present.
fn find<'a>(
    results: &'a [Value],
    backend: &str,
    method: &str,
    batch: Option<u64>,
    rows: u64,
) -> Option<&'a Value> {
    results.iter().find(|r| {
        r["backend"] == backend
            && r["method"] == method
            && r["rows"].as_u64() == Some(rows)
            && r["batch_size"].as_u64() == batch
    })
}

fn depth_ms(r: &Value, depth: &str) -> Option<f64> {
    r["batch_ms_by_depth"][depth].as_f64()
}

// ---------------------------------------------------------------- the report

fn markdown(results: &[Value]) -> String {
    let mut md = String::new();
    md.push_str("# Full-table scan benchmark (`cargo bench --bench scan`)\n\n");
    md.push_str(
        "rows/s over the full scan in key order; first row: time from the start of the scan to the \
         first row in hand; peak RSS: VmHWM of a separate process that ran only that method \
         (it includes the process's own baseline: binary, driver, connection); batch ms: median \
         of 7 single-batch queries starting at that fraction of the table. `–`: not measured \
         (see benches/README.md).\n\n",
    );
    md.push_str("| backend | rows | method | batch | rows/s | first row ms | peak RSS MB | batch ms @0 | @0.1 | @0.5 | @1 |\n");
    md.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        let d = |k: &str| match depth_ms(r, k) {
            Some(x) => format!("{x:.3}"),
            None => "–".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["backend"].as_str().unwrap_or("?"),
            r["rows"],
            r["method"].as_str().unwrap_or("?"),
            r["batch_size"]
                .as_u64()
                .map_or("–".into(), |b| b.to_string()),
            fmt_opt(&r["rows_per_sec"], 0),
            fmt_opt(&r["first_row_ms"], 3),
            fmt_opt(&r["peak_rss_mb"], 1),
            d("0"),
            d("0.1"),
            d("0.5"),
            d("1"),
        ));
    }
    md.push('\n');
    md.push_str(&budget_section(results));
    md
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// `value (ok)` / `value (OVER)` against a budget; `–` when a figure is missing.
fn judged(v: Option<f64>, ok: impl Fn(f64) -> bool, show: impl Fn(f64) -> String) -> String {
    match v {
        Some(x) => format!("{} {}", show(x), if ok(x) { "✅" } else { "❌" }),
        None => "–".into(),
    }
}

fn budget_section(results: &[Value]) -> String {
    let mut md = String::from("## Budgets at batch 1000\n\n");
    md.push_str(
        "Per backend and table size, for each of the crate's iterators (`chunked_iter`, \
         `chunked_batches`): throughput against `load_all` (budget ≥ 0.9), time overhead against \
         `hand_keyset` (hand rows/s ÷ chunked rows/s − 1, budget ≤ 5%), first row against \
         `load_all` (budget ≤ 1/100), single-batch latency at depth 1 ÷ depth 0 (budget ≤ 1.5; \
         OFFSET shown for contrast, no budget). The last column, when measured, compares with \
         `hand_keyset_with_key`: the hand loop selecting `(id, Post)`, the key column twice \
         (a diagnostic run only when named in `--methods`).\n\n",
    );
    md.push_str("| backend | rows | iterator | rows/s ÷ load_all | overhead vs hand_keyset | first row ÷ load_all | batch depth 1 ÷ 0 | OFFSET depth 1 ÷ 0 | overhead vs hand_keyset_with_key |\n");
    md.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut keys: Vec<(String, u64)> = results
        .iter()
        .map(|r| {
            (
                r["backend"].as_str().unwrap_or("").to_string(),
                r["rows"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    keys.sort_by_key(|(b, r)| (backend_rank(b), *r));
    keys.dedup();
    let rps = |r: Option<&Value>| r.and_then(|r| r["rows_per_sec"].as_f64());
    let first = |r: Option<&Value>| r.and_then(|r| r["first_row_ms"].as_f64());
    let growth = |r: Option<&Value>| r.and_then(|r| ratio(depth_ms(r, "1"), depth_ms(r, "0")));
    for (backend, rows) in &keys {
        let all = find(results, backend, "load_all", None, *rows);
        let hand = find(results, backend, "hand_keyset", Some(1000), *rows);
        let off = find(results, backend, "offset", Some(1000), *rows);
        let hand_key = find(results, backend, "hand_keyset_with_key", Some(1000), *rows);
        for it in ["chunked_iter", "chunked_batches"] {
            let c = find(results, backend, it, Some(1000), *rows);
            if c.is_none() {
                continue;
            }
            md.push_str(&format!(
                "| {backend} | {rows} | {it} | {} | {} | {} | {} | {} | {} |\n",
                judged(ratio(rps(c), rps(all)), |x| x >= 0.9, |x| format!("{x:.2}")),
                judged(
                    ratio(rps(hand), rps(c)).map(|x| (x - 1.0) * 100.0),
                    |x| x <= 5.0,
                    |x| format!("{x:+.1}%")
                ),
                judged(
                    ratio(first(c), first(all)),
                    |x| x <= 0.01,
                    |x| format!("1/{:.0}", 1.0 / x)
                ),
                judged(growth(c), |x| x <= 1.5, |x| format!("{x:.2}")),
                growth(off).map_or("–".into(), |x| format!("{x:.1}")),
                ratio(rps(hand_key), rps(c))
                    .map_or("–".into(), |x| format!("{:+.1}%", (x - 1.0) * 100.0)),
            ));
        }
    }
    md.push_str("\nPeak RSS of the iterator at the largest table size ÷ at the smallest (budget ≤ 1.10; `load_all` for contrast):\n\n");
    md.push_str("| backend | iterator | sizes | peak RSS MB | ratio | load_all peak RSS MB | load_all ratio |\n");
    md.push_str("| --- | --- | --- | --- | ---: | --- | ---: |\n");
    let mut backends: Vec<&str> = keys.iter().map(|(b, _)| b.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let sizes: Vec<u64> = keys
            .iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, r)| *r)
            .collect();
        let (lo, hi) = (sizes[0], sizes[sizes.len() - 1]);
        let rss = |m: &str, b: Option<u64>, r: u64| {
            find(results, backend, m, b, r).and_then(|v| v["peak_rss_mb"].as_f64())
        };
        for it in ["chunked_iter", "chunked_batches"] {
            if rss(it, Some(1000), hi).is_none() {
                continue;
            }
            let show = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.1}"));
            let (c_lo, c_hi) = (rss(it, Some(1000), lo), rss(it, Some(1000), hi));
            let (a_lo, a_hi) = (rss("load_all", None, lo), rss("load_all", None, hi));
            md.push_str(&format!(
                "| {backend} | {it} | {lo} → {hi} | {} → {} | {} | {} → {} | {} |\n",
                show(c_lo),
                show(c_hi),
                if lo == hi {
                    "one size only".into()
                } else {
                    judged(ratio(c_hi, c_lo), |x| x <= 1.10, |x| format!("{x:.2}"))
                },
                show(a_lo),
                show(a_hi),
                ratio(a_hi, a_lo)
                    .filter(|_| lo != hi)
                    .map_or("–".into(), |x| format!("{x:.2}")),
            ));
        }
    }
    md
}

/// An axis label: `2`, `0.25`, `100k`, `1M`.
fn tidy(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1e6).fract().abs() < 1e-9 {
        format!("{}M", v / 1e6)
    } else if a >= 1e3 && (v / 1e3).fract().abs() < 1e-9 {
        format!("{}k", v / 1e3)
    } else if a >= 10.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws each named series as a line with its points, and the legend.
fn draw_lines<'a, X, Y>(
    chart: &mut plotters::chart::ChartContext<
        'a,
        plotters::backend::SVGBackend<'a>,
        plotters::coord::cartesian::Cartesian2d<X, Y>,
    >,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Res<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    use plotters::prelude::*;
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Box<dyn StdError> {
    format!("{e:?}").into()
}

/// `latency_<backend>.svg` (single-batch latency against depth, batch 1000, per table
/// size: OFFSET, hand-written keyset and the crate) and `memory.svg` (peak RSS against
/// table size for `load_all` and `chunked_iter` at batch 1000).
fn plots(results: &[Value], dir: &Path) -> Res<()> {
    use plotters::prelude::*;

    let mut backends: Vec<&str> = results
        .iter()
        .filter_map(|r| r["backend"].as_str())
        .collect();
    backends.sort_by_key(|b| backend_rank(b));
    backends.dedup();

    for backend in &backends {
        // (label, points)
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let mut sizes: Vec<u64> = results
            .iter()
            .filter(|r| r["backend"] == *backend)
            .filter_map(|r| r["rows"].as_u64())
            .collect();
        sizes.sort();
        sizes.dedup();
        for &rows in &sizes {
            for m in ["offset", "hand_keyset", "chunked_iter"] {
                let Some(r) = find(results, backend, m, Some(1000), rows) else {
                    continue;
                };
                let pts: Vec<(f64, f64)> = DEPTHS
                    .iter()
                    .filter_map(|(k, f)| depth_ms(r, k).map(|ms| (*f, ms.max(1e-3))))
                    .collect();
                if !pts.is_empty() {
                    let name = if m == "offset" {
                        "OFFSET"
                    } else if m == "hand_keyset" {
                        "hand keyset"
                    } else {
                        "chunked (this crate)"
                    };
                    series.push((format!("{name}, {rows} rows"), pts));
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
        let (ymin, ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let path = dir.join(format!("latency_{backend}.svg"));
        let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{backend}: one batch of 1000 rows at a depth of the table"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, ((ymin / 2.0).max(1e-3)..ymax * 2.0).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("depth (fraction of the table before the batch)")
            .y_desc("ms per batch (median, log scale)")
            .x_label_formatter(&|x| tidy(*x))
            .y_label_formatter(&|y| tidy(*y))
            .draw()
            .map_err(plot_err)?;
        draw_lines(&mut chart, series)?;
        root.present().map_err(plot_err)?;
    }

    // Memory against table size.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for backend in &backends {
        for (m, b) in [("load_all", None), ("chunked_iter", Some(1000))] {
            let mut pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| {
                    r["backend"] == *backend && r["method"] == m && r["batch_size"].as_u64() == b
                })
                .filter_map(|r| Some((r["rows"].as_f64()?, r["peak_rss_mb"].as_f64()?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                let name = if m == "load_all" {
                    "load_all"
                } else {
                    "chunked_iter, batch 1000"
                };
                series.push((format!("{backend}: {name}"), pts));
            }
        }
    }
    if !series.is_empty() {
        let all = series.iter().flat_map(|(_, p)| p.iter().copied());
        let (xmin, xmax, ymin, ymax) = all.fold(
            (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
            |(a, b, c, d), (x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
        );
        let path = dir.join("memory.svg");
        let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Peak resident memory of a full scan, per process",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (xmin / 2.0..xmax * 2.0).log_scale(),
                ((ymin / 1.5).max(0.1)..ymax * 1.5).log_scale(),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("rows in the table (log scale)")
            .y_desc("peak RSS, MB (log scale)")
            .x_label_formatter(&|x| tidy(*x))
            .y_label_formatter(&|y| tidy(*y))
            .draw()
            .map_err(plot_err)?;
        draw_lines(&mut chart, series)?;
        root.present().map_err(plot_err)?;
    }
    Ok(())
}
