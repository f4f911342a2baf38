//! Creates an SQLite database with 100,000 posts and scans it in key order, once
//! row by row and once batch by batch, counting the queries that run.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

mod common;
use common::{posts, Post};

const ROWS: i32 = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut conn = common::create(":memory:", 1..=ROWS)?;
    println!("inserted {ROWS} posts in {:?}", started.elapsed());

    // Count the statements the scans run.
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&queries);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    // Row by row: one batch of 1000 in memory at a time.
    let started = Instant::now();
    let mut rows = 0u64;
    let mut score = 0i64;
    for post in posts::table
        .filter(posts::published.eq(true))
        .chunked_by(posts::id)
        .load_iter::<Post>(&mut conn)
    {
        let post = post?;
        rows += 1;
        score += i64::from(post.score.unwrap_or(0));
    }
    println!(
        "load_iter:    {rows} published posts (score sum {score}), {} queries, {:?}",
        queries.swap(0, Ordering::Relaxed),
        started.elapsed()
    );

    // Batch by batch, by (user_id, id) descending, capped.
    let started = Instant::now();
    let (mut batches, mut rows) = (0u64, 0usize);
    let mut last = None;
    for batch in posts::table
        .chunked_by((posts::user_id, posts::id))
        .desc()
        .batch_size(5_000)
        .limit_total(42_000)
        .load_batches::<Post>(&mut conn)
    {
        let batch = batch?;
        batches += 1;
        rows += batch.len();
        last = batch.last().map(|p| p.id);
    }
    println!(
        "load_batches: {rows} posts in {batches} batches (last id {last:?}), {} queries, {:?}",
        queries.swap(0, Ordering::Relaxed),
        started.elapsed()
    );
    Ok(())
}
