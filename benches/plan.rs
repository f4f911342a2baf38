//! Planning benchmark: the exact planner, `partitions(n)`, against the sampled one,
//! `partitions_sampled(n)`, on tables of 1M and 10M rows with uniform and skewed keys.
//!
//! ```sh
//! BENCH_BACKENDS=pg,mysql,sqlite cargo bench --bench plan --features postgres,mysql
//! cargo bench --bench plan --features postgres,mysql -- --rows 1000000 --slices 16,64 --keep
//! ```
//!
//! Tables `bench_plan_{uniform,skewed}_{1m,10m}` (`id INTEGER PRIMARY KEY`, about
//! 100 bytes of text per row) are generated on the server (`generate_series` on
//! PostgreSQL, the `seq_1_to_N` sequence engine on MariaDB), then analyzed. Skewed:
//! 90 % of the rows are the ids `1..=0.9·N`, the other 10 % are spread 81 apart over
//! the rest of a range nine times as long. Each planner runs once to warm the cache,
//! then `--repeats` times (default 3); the median time is reported. Balance is
//! measured, not estimated: every slice is counted with `COUNT(*)` and the largest
//! count is divided by the ideal `rows / n`. The tables are dropped at the end unless
//! `--keep` is given. Results go to stdout and `target/bench-report/plan.md`; see
//! benches/README.md.

#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_macros, unused_imports)
)]

use std::error::Error as StdError;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Partition;

type Res<T> = Result<T, Box<dyn StdError>>;

macro_rules! plan_tables {
    ($($name:ident),*) => {$(
        diesel::table! {
            $name (id) {
                id -> Integer,
                body -> Text,
            }
        }
    )*};
}

plan_tables!(
    bench_plan_uniform_1m,
    bench_plan_skewed_1m,
    bench_plan_uniform_10m,
    bench_plan_skewed_10m
);

/// One measured configuration.
struct Row {
    backend: &'static str,
    rows: u64,
    shape: &'static str,
    n: usize,
    planner: &'static str,
    ms: f64,
    max_ratio: f64,
    min_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn table_name(shape: &str, rows: u64) -> Res<String> {
    let size = match rows {
        1_000_000 => "1m",
        10_000_000 => "10m",
        _ => return Err(format!("--rows takes 1000000 and 10000000 (got {rows})").into()),
    };
    Ok(format!("bench_plan_{shape}_{size}"))
}

/// The id of generated row `g` (1-based) of `rows`.
fn id_sql(shape: &str, rows: u64, g: &str) -> String {
    match shape {
        "uniform" => g.to_string(),
        _ => {
            let dense = rows / 10 * 9;
            format!("CASE WHEN {g} <= {dense} THEN {g} ELSE {dense} + ({g} - {dense}) * 81 END")
        }
    }
}

/// Runs `$body` with `$t` bound to the module of the table named `$name`.
macro_rules! with_table {
    ($name:expr, $t:ident => $body:expr) => {
        match $name {
            "bench_plan_uniform_1m" => {
                use bench_plan_uniform_1m as $t;
                $body
            }
            "bench_plan_skewed_1m" => {
                use bench_plan_skewed_1m as $t;
                $body
            }
            "bench_plan_uniform_10m" => {
                use bench_plan_uniform_10m as $t;
                $body
            }
            "bench_plan_skewed_10m" => {
                use bench_plan_skewed_10m as $t;
                $body
            }
            other => Err(format!("no table {other}").into()),
        }
    };
}

/// The exact and the sampled planner on table `name`, `n` slices.
macro_rules! measure {
    ($conn:expr, $name:expr, $n:expr, $repeats:expr, $backend:expr, $rows:expr, $shape:expr, $out:expr) => {
        with_table!($name, t => {
            let mut result: Res<()> = Ok(());
            for planner in ["exact", "sampled"] {
                let plan = |conn: &mut _| -> Res<Vec<Partition<i32>>> {
                    Ok(if planner == "exact" {
                        t::table.chunked_by(t::id).partitions($n, conn)?
                    } else {
                        t::table.chunked_by(t::id).partitions_sampled($n, conn)?
                    })
                };
                let parts = plan($conn)?; // warm-up
                let mut times = Vec::new();
                for _ in 0..$repeats {
                    let start = Instant::now();
                    let again = plan($conn)?;
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(again, parts, "the same table gives the same slices");
                }
                let mut counts = Vec::new();
                for p in &parts {
                    let mut q = t::table.select(diesel::dsl::count_star()).into_boxed();
                    if let Some(a) = p.start_after {
                        q = q.filter(t::id.gt(a));
                    }
                    if let Some(e) = p.end_at {
                        q = q.filter(t::id.le(e));
                    }
                    counts.push(q.get_result::<i64>($conn)? as f64);
                }
                let total: f64 = counts.iter().sum();
                let ideal = total / $n as f64;
                let row = Row {
                    backend: $backend,
                    rows: $rows,
                    shape: $shape,
                    n: $n,
                    planner,
                    ms: median(times),
                    max_ratio: counts.iter().copied().fold(0.0, f64::max) / ideal,
                    min_ratio: counts.iter().copied().fold(f64::INFINITY, f64::min) / ideal,
                };
                println!(
                    "{:<6} {:>9} {:<8} n={:<4} {:<8} {:>9.1} ms  max/ideal {:.3}  min/ideal {:.3}",
                    row.backend, row.rows, row.shape, row.n, row.planner, row.ms, row.max_ratio, row.min_ratio
                );
                $out.push(row);
                result = Ok(());
            }
            result
        })
    };
}

struct Options {
    rows: Vec<u64>,
    slices: Vec<usize>,
    repeats: usize,
    keep: bool,
}

fn parse_options() -> Res<Options> {
    let mut o = Options {
        rows: vec![1_000_000, 10_000_000],
        slices: vec![64],
        repeats: 3,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let list = |v: Option<String>| -> Res<Vec<u64>> {
            v.ok_or("missing value")?
                .split(',')
                .map(|s| s.trim().parse::<u64>().map_err(|e| e.into()))
                .collect()
        };
        match a.as_str() {
            "--rows" => o.rows = list(args.next())?,
            "--slices" => o.slices = list(args.next())?.into_iter().map(|n| n as usize).collect(),
            "--repeats" => o.repeats = list(args.next())?.first().copied().unwrap_or(3) as usize,
            "--keep" => o.keep = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

fn env_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Creates and fills table `name` (dropping what was there) with `rows` rows.
fn fill(conn: &mut impl Connection, backend: &str, name: &str, shape: &str, rows: u64) -> Res<()> {
    let start = Instant::now();
    let ids = id_sql(shape, rows, if backend == "mysql" { "seq" } else { "g" });
    let sql = if backend == "pg" {
        format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT NOT NULL); \
             INSERT INTO {name} SELECT {ids}, repeat(md5(g::text), 3) FROM generate_series(1, {rows}) g; \
             VACUUM ANALYZE {name};"
        )
    } else if backend == "sqlite" {
        format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT NOT NULL); \
             WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {rows}) \
             INSERT INTO {name} SELECT {ids}, printf('%032x%032x%032x', g, g * 7, g * 13) FROM s; \
             ANALYZE {name};"
        )
    } else {
        format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO {name} SELECT {ids}, REPEAT(MD5(seq), 3) FROM seq_1_to_{rows} ORDER BY seq; \
             ANALYZE TABLE {name};"
        )
    };
    // one statement at a time: PostgreSQL's VACUUM refuses a multi-statement batch
    for statement in sql.split("; ").filter(|s| !s.trim().is_empty()) {
        conn.batch_execute(statement)?;
    }
    eprintln!(
        "{name}: {rows} rows generated in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every table size and key shape on one connection.
macro_rules! run {
    ($conn:expr, $backend:expr, $o:expr, $out:expr) => {{
        for &rows in &$o.rows {
            for shape in ["uniform", "skewed"] {
                let name = table_name(shape, rows)?;
                let have: Res<i64> = with_table!(name.as_str(), t => {
                    Ok(t::table.count().get_result::<i64>($conn).unwrap_or(-1))
                });
                if have? != rows as i64 {
                    fill($conn, $backend, &name, shape, rows)?;
                }
                for &n in &$o.slices {
                    let r: Res<()> = measure!($conn, name.as_str(), n, $o.repeats, $backend, rows, shape, $out);
                    r?;
                }
                if !$o.keep {
                    $conn.batch_execute(&format!("DROP TABLE {name}"))?;
                }
            }
        }
    }};
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | rows | keys | n | planner | time (ms) | max slice / ideal | min slice / ideal |\n\
         | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.3} | {:.3} |\n",
            r.backend, r.rows, r.shape, r.n, r.planner, r.ms, r.max_ratio, r.min_ratio
        ));
    }
    s
}

fn main() -> Res<()> {
    let o = parse_options()?;
    let backends = env_url("BENCH_BACKENDS", "pg,mysql,sqlite");
    let mut out = Vec::new();
    for backend in backends.split(',').map(str::trim) {
        match backend {
            #[cfg(feature = "postgres")]
            "pg" => {
                let url = env_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test");
                let conn = &mut diesel::PgConnection::establish(&url)?;
                run!(conn, "pg", o, &mut out);
            }
            #[cfg(feature = "mysql")]
            "mysql" => {
                let url = env_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test");
                let conn = &mut diesel::MysqlConnection::establish(&url)?;
                run!(conn, "mysql", o, &mut out);
            }
            "sqlite" => {
                let path = std::env::var("SQLITE_BENCH_PATH").unwrap_or_else(|_| {
                    concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-plan.sqlite3").into()
                });
                let conn = &mut diesel::SqliteConnection::establish(&path)?;
                run!(conn, "sqlite", o, &mut out);
            }
            other => {
                return Err(format!(
                    "backend {other} is not built or not benchmarked (pg, mysql, sqlite; \
                     features postgres, mysql)"
                )
                .into())
            }
        }
    }
    let md = markdown(&out);
    println!("\n{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("plan.md"), md)?;
    Ok(())
}
