//! Streams a table to a CSV file with a progress bar: memory stays at one batch
//! however big the table is.
//!
//! ```sh
//! cargo run --example export_csv                  # 300,000 posts to posts.csv in the temp dir
//! cargo run --example export_csv -- out.csv       # to out.csv
//! ```
//!
//! The bar's length comes from `estimate_total` (an exact count on SQLite, the
//! planner's estimate on PostgreSQL), its position from the scan's `progress()`.

use std::time::Instant;

use diesel_chunked_iterator::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

mod common;
use common::{posts, Post};

const ROWS: i32 = 300_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::temp_dir().join("posts.csv"),
    };
    let url = common::temp_db("export");
    let mut conn = common::create(&url, 1..=ROWS)?;

    let scan = posts::table.chunked_by(posts::id).batch_size(2_000);
    let total = scan.clone().estimate_total(&mut conn)?;
    let bar = ProgressBar::new(total).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} rows, {per_sec}, eta {eta}",
    )?);

    let started = Instant::now();
    let mut csv = csv::Writer::from_path(&out)?;
    csv.write_record([
        "id",
        "user_id",
        "title",
        "slug",
        "published",
        "score",
        "created_at",
    ])?;
    let mut batches = scan.load_batches::<Post>(&mut conn);
    while let Some(batch) = batches.next() {
        for p in batch? {
            csv.write_record([
                p.id.to_string(),
                p.user_id.to_string(),
                p.title,
                p.slug,
                p.published.to_string(),
                p.score.map(|s| s.to_string()).unwrap_or_default(),
                p.created_at.format("%Y-%m-%dT%H:%M:%S").to_string(),
            ])?;
        }
        bar.set_position(batches.progress().rows);
    }
    csv.flush()?;
    bar.finish();
    let progress = batches.progress();
    drop(batches);
    println!(
        "wrote {} rows in {} queries to {} in {:?}",
        progress.rows,
        progress.queries,
        out.display(),
        started.elapsed()
    );
    drop(conn);
    let _ = std::fs::remove_file(&url);
    Ok(())
}
