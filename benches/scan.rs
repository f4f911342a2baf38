//! Full-table scan benchmark: this crate's keyset scan against `load`, LIMIT/OFFSET,
//! Diesel's `load_iter` and a hand-written keyset loop, on every backend it can reach.
//!
//! ```sh
//! cargo bench --bench scan                                   # SQLite, 100,000 rows
//! cargo bench --bench scan --all-features -- --rows 100000,1000000
//! BENCH_BACKENDS=pg,mysql cargo bench --bench scan --all-features -- --methods chunked_iter,offset
//! BENCH_BACKENDS=pg cargo bench --bench scan --all-features -- --methods chunked_iter,chunked_stream,diesel_async_load_stream
//! ```
//!
//! Each (backend, method, batch size, table size) runs in a child process of its own (this
//! binary re-executed with `--child ...`), so that its peak resident memory (VmHWM) belongs
//! to that method alone. Results are merged into `target/bench-report/scan.json`, and
//! `scan.md` and the SVG plots are drawn again from the merged file. See benches/README.md.

use std::process::Command;

use diesel::prelude::*;
use serde_json::Value;

#[macro_use]
mod common;
#[path = "scan/fill.rs"]
mod fill;
#[path = "scan/methods.rs"]
mod methods;
#[path = "scan/report.rs"]
mod report;
#[path = "scan/stream.rs"]
mod stream;

use common::{backend_names, namespace_or_skip, report_failures};
use common::{drop_namespace, open_report, wanted_backends};
use common::{Backend, Res};
use methods::{is_batched, EXTRA_METHODS, METHODS};
use report::{budget_section, combine, fmt_opt, markdown, merge, plots, sort_results};

/// The namespace (PostgreSQL schema, MySQL database, SQLite file name) of this bench.
const NAMESPACE: &str = "bench_scan";

// `posts` and its model `Post`.
include!("../migrations/posts.rs");

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
                        && !stream::is_async(m)
                        && m != "chunked"
                        && m != "events"
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
                        "events" => METHODS
                            .iter()
                            .filter(|m| methods::is_schema(m))
                            .map(|m| m.to_string())
                            .collect(),
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
    let v = methods::child(
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
    let (dir, json_path, mut results) = open_report("scan")?;
    let mut failures = Vec::new();
    if !o.report_only {
        let backends = wanted_backends();
        println!(
            "scan: rows {:?}, batch sizes {:?}, {} round(s), backends [{}], methods [{}]",
            o.rows,
            o.batch_sizes,
            o.repeat,
            backend_names(&backends),
            o.methods.join(", ")
        );
        for &rows in &o.rows {
            for &backend in &backends {
                let Some(url) = namespace_or_skip(backend, NAMESPACE) else {
                    continue;
                };
                let mut filled = fill::create_and_fill(backend, &url, rows);
                if filled.is_ok() && o.methods.iter().any(|m| methods::is_schema(m)) {
                    filled = fill::create_schemas(backend, &url, rows);
                }
                if let Err(e) = filled {
                    failures.push(format!("{} fill {rows}: {e}", backend.name()));
                    drop_namespace(backend, NAMESPACE, &url);
                    continue;
                }
                run_rounds(backend, rows, &url, &o, &mut results, &mut failures);
                if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
                    println!(
                        "  {}: kept the tables at {url} (BENCH_KEEP=1)",
                        backend.name()
                    );
                } else {
                    drop_namespace(backend, NAMESPACE, &url);
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
    println!("{}", report::ratio_section(&results));
    println!("report: {}/scan.{{json,md}} and *.svg", dir.display());
    report_failures(&failures, "measurement(s)")
}

/// Every (method, batch size) of one backend and table size, in alternating rounds:
/// round 1 runs each once in order, then round 2, and so on (`--repeat` rounds), so
/// that two methods' runs are never further apart than one round. Each result is the
/// combination of its rounds (`combine`), with each round's rows/s kept in `runs`.
fn run_rounds(
    backend: Backend,
    rows: u64,
    url: &str,
    o: &Options,
    results: &mut Vec<Value>,
    failures: &mut Vec<String>,
) {
    let mut configs: Vec<(String, u64, bool)> = Vec::new();
    for method in &o.methods {
        if method.ends_with("_row_by_row") && backend.name() != "pg" {
            continue;
        }
        if method.starts_with("chunked_pool") && !cfg!(feature = "r2d2") {
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
            configs.push((method.clone(), batch, full));
        }
    }
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); configs.len()];
    let mut failed = vec![false; configs.len()];
    for round in 1..=o.repeat {
        if o.repeat > 1 {
            println!("  {} round {round} of {}", backend.name(), o.repeat);
        }
        for (i, (method, batch, full)) in configs.iter().enumerate() {
            if failed[i] {
                continue;
            }
            match run_child(backend, method, *batch, rows, url, *full) {
                Ok(v) => runs[i].push(v),
                Err(e) => {
                    failures.push(format!(
                        "{} {method} batch {batch} rows {rows}: {e}",
                        backend.name()
                    ));
                    failed[i] = true;
                }
            }
        }
    }
    for ((method, batch, _), runs) in configs.iter().zip(runs) {
        let Some(v) = combine(runs) else { continue };
        print_result(backend, method, *batch, &v);
        merge(results, v);
    }
}

fn print_result(backend: Backend, method: &str, batch: u64, v: &Value) {
    if let Some(why) = v["refused"].as_str() {
        println!(
            "  {:<7} {method:<28} batch {batch:>6}  refused: {why}",
            backend.name()
        );
        return;
    }
    println!(
        "  {:<7} {:<28} batch {:>6}  {:>10} rows/s  first row {:>9} ms  peak RSS {:>8} MB{}",
        backend.name(),
        method,
        if is_batched(method) {
            batch.to_string()
        } else {
            "–".into()
        },
        fmt_opt(&v["rows_per_sec"], 0),
        fmt_opt(&v["first_row_ms"], 3),
        fmt_opt(&v["peak_rss_mb"], 1),
        match &v["batch_ms_by_depth"] {
            Value::Object(m) => format!(
                "  batch ms @depth {}",
                m.iter()
                    .map(|(k, x)| format!("{k}:{}", fmt_opt(x, 3)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            _ => String::new(),
        }
    );
}
