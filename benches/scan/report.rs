//! The scan benchmark's report: results merged across runs, `scan.md` (every figure, the
//! budgets and the ratios of one alternating run) and the SVG plots.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{backend_rank, median, plot_err, round3, Res};
use crate::methods::{DEPTHS, EXTRA_METHODS, METHODS};

/// Several runs of one configuration: the median throughput and first row, the largest peak.
pub fn combine(mut runs: Vec<Value>) -> Option<Value> {
    if runs.len() <= 1 {
        return runs.pop();
    }
    let med = |key: &str| {
        let xs: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        (!xs.is_empty()).then(|| median(&xs))
    };
    let per_round: Vec<Value> = runs.iter().map(|r| r["rows_per_sec"].clone()).collect();
    let depths = runs[0]["batch_ms_by_depth"].as_object().map(|d| {
        d.keys()
            .map(|k| {
                let xs: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["batch_ms_by_depth"][k].as_f64())
                    .collect();
                (k.clone(), json!(round3(median(&xs))))
            })
            .collect::<serde_json::Map<_, _>>()
    });
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
    v["runs_rows_per_sec"] = Value::Array(per_round);
    if let Some(d) = depths {
        v["batch_ms_by_depth"] = Value::Object(d);
    }
    Some(v)
}

fn same_config(a: &Value, b: &Value) -> bool {
    ["backend", "method", "batch_size", "rows"]
        .iter()
        .all(|k| a[k] == b[k])
}

pub fn merge(results: &mut Vec<Value>, v: Value) {
    results.retain(|r| !same_config(r, &v));
    results.push(v);
}

fn method_rank(m: &str) -> usize {
    METHODS
        .iter()
        .chain(EXTRA_METHODS.iter())
        .position(|x| *x == m)
        .unwrap_or(99)
}

pub fn sort_results(results: &mut [Value]) {
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

pub fn markdown(results: &[Value]) -> String {
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
    md.push('\n');
    md.push_str(&ratio_section(results));
    md
}

/// `a` ÷ `b` from one alternating run: the median of the per-round ratios when both
/// have the same rounds; the ratio of their medians when neither comes from an
/// alternating run; nothing when only one does.
fn paired(a: Option<&Value>, b: Option<&Value>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let rounds = |v: &Value| -> Option<Vec<f64>> {
        v["runs_rows_per_sec"]
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    match (rounds(a), rounds(b)) {
        (Some(x), Some(y)) if x.len() == y.len() && x.len() > 1 => {
            let r: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a / b).collect();
            Some(median(&r))
        }
        // Neither from an alternating run: the ratio of the two medians.
        (None, None) => ratio(a["rows_per_sec"].as_f64(), b["rows_per_sec"].as_f64()),
        // One from an alternating run and one from another run: not comparable.
        _ => None,
    }
}

/// The ratios of one alternating run, per backend and table size: the crate's
/// `chunked_iter` against the other ways of reading the table, on a pool, and the
/// composite-key schemas.
pub fn ratio_section(results: &[Value]) -> String {
    let mut md =
        String::from("## Ratios (median of the per-round ratios of one alternating run)\n\n");
    md.push_str(
        "`chunked_iter` rows/s ÷ the other method's rows/s, round by round, at each batch size; \
         pools: `chunked_pool` (r2d2, `test_on_check_out` on, its default) and \
         `chunked_pool_no_ping` ÷ `chunked_iter` on one connection. First row: `chunked_iter`'s, \
         in ms. Depth: one batch at depth 1 ÷ at depth 0.\n\n",
    );
    md.push_str("| backend | rows | batch | ÷ load_all | ÷ row-by-row load_iter | ÷ hand_keyset | ÷ hand keyset row by row | pool ÷ one connection | pool without ping ÷ one connection | first row ms | depth 1 ÷ 0 |\n");
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut keys: Vec<(String, u64, u64)> = results
        .iter()
        .filter(|r| r["method"] == "chunked_iter")
        .map(|r| {
            (
                r["backend"].as_str().unwrap_or("").to_string(),
                r["rows"].as_u64().unwrap_or(0),
                r["batch_size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    keys.sort_by_key(|(b, r, n)| (backend_rank(b), *r, *n));
    let show = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
    for (backend, rows, batch) in &keys {
        let at = |m: &str, b: Option<u64>| find(results, backend, m, b, *rows);
        let c = at("chunked_iter", Some(*batch));
        md.push_str(&format!(
            "| {backend} | {rows} | {batch} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            show(paired(c, at("load_all", None))),
            show(paired(c, at("diesel_load_iter_row_by_row", None))),
            show(paired(c, at("hand_keyset", Some(*batch)))),
            show(paired(c, at("hand_keyset_row_by_row", Some(*batch)))),
            show(paired(at("chunked_pool", Some(*batch)), c)),
            show(paired(at("chunked_pool_no_ping", Some(*batch)), c)),
            fmt_opt(&c.map_or(Value::Null, |c| c["first_row_ms"].clone()), 3),
            show(c.and_then(|c| ratio(depth_ms(c, "1"), depth_ms(c, "0")))),
        ));
    }
    md.push_str(
        "\nComposite keys: `chunked_by((created, id))` over the `events_*` tables, one per \
         schema (see benches/README.md).\n\n",
    );
    md.push_str("| backend | rows | schema | batch | rows/s | first row ms | batch ms @0 | @1 | depth 1 ÷ 0 |\n");
    md.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results.iter().filter(|r| {
        r["method"]
            .as_str()
            .is_some_and(|m| m.starts_with("events_"))
    }) {
        let head = format!(
            "| {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            r["rows"],
            r["method"].as_str().unwrap_or("?"),
            r["batch_size"]
        );
        if let Some(why) = r["refused"].as_str() {
            md.push_str(&format!("{head} refused: {why} | | | | |\n"));
            continue;
        }
        md.push_str(&format!(
            "{head} {} | {} | {} | {} | {} |\n",
            fmt_opt(&r["rows_per_sec"], 0),
            fmt_opt(&r["first_row_ms"], 3),
            depth_ms(r, "0").map_or("–".into(), |x| format!("{x:.3}")),
            depth_ms(r, "1").map_or("–".into(), |x| format!("{x:.3}")),
            show(ratio(depth_ms(r, "1"), depth_ms(r, "0"))),
        ));
    }
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

pub fn budget_section(results: &[Value]) -> String {
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

/// `latency_<backend>.svg` (single-batch latency against depth, batch 1000, per table
/// size: OFFSET, hand-written keyset and the crate) and `memory.svg` (peak RSS against
/// table size for `load_all` and `chunked_iter` at batch 1000).
pub fn plots(results: &[Value], dir: &Path) -> Res<()> {
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

pub fn fmt_opt(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".to_string(),
    }
}
