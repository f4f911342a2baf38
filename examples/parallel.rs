//! Splits a table into key-range partitions and scans them on threads that share
//! an r2d2 pool, then checks that the workers together saw exactly the rows of a
//! single scan.
//!
//! ```sh
//! cargo run --example parallel            # 8 workers over 200,000 posts
//! cargo run --example parallel -- 4       # 4 workers
//! ```
//!
//! The ids have gaps and a dense and a sparse region, so equal key ranges would
//! give workers very different amounts of work; `partitions` splits by row count.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Partition;

mod common;
use common::{posts, Post};

/// What a worker reports: its partition, a sum over its rows, and their ids.
type Worker = (usize, i64, Vec<i32>);

/// Lets SQLite connections wait for each other instead of failing with "busy".
#[derive(Debug)]
struct BusyTimeout;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for BusyTimeout {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        diesel::sql_query("PRAGMA busy_timeout = 5000")
            .execute(conn)
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 8,
    };
    let url = common::temp_db("parallel");
    // 150,000 dense ids, then 50,000 ids 1,000 apart
    let ids = (1..=150_000).chain((1..=50_000).map(|i| 1_000_000 + i * 1_000));
    let mut conn = common::create(&url, ids)?;
    diesel::sql_query("PRAGMA journal_mode = WAL").execute(&mut conn)?;

    let published = || posts::table.filter(posts::published.eq(true));

    let started = Instant::now();
    let parts: Vec<Partition<i32>> = published()
        .chunked_by(posts::id)
        .partitions(workers, &mut conn)?;
    println!(
        "{} partitions of the published posts in {:?}:",
        parts.len(),
        started.elapsed()
    );
    for p in &parts {
        println!(
            "  #{:<2} ids ({:>10}, {:>10}]  {:>6} rows",
            p.index,
            p.start_after.map_or("-".into(), |k| k.to_string()),
            p.end_at.map_or("-".into(), |k| k.to_string()),
            p.rows
        );
    }

    let pool = Pool::builder()
        .max_size(u32::try_from(workers.max(1))?)
        .connection_timeout(Duration::from_secs(30))
        .connection_customizer(Box::new(BusyTimeout))
        .build(ConnectionManager::<SqliteConnection>::new(&url))?;

    let started = Instant::now();
    let results: Vec<Result<Worker, diesel_chunked_iterator::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|p| {
                let pool = &pool;
                s.spawn(move || {
                    let mut ids = Vec::with_capacity(usize::try_from(p.rows).unwrap_or(0));
                    let mut score = 0i64;
                    for batch in published()
                        .chunked_by(posts::id)
                        .within(p)
                        .batch_size(1_000)
                        .load_batches::<Post>(pool)
                    {
                        for post in batch? {
                            score += i64::from(post.score.unwrap_or(0));
                            ids.push(post.id);
                        }
                    }
                    Ok((p.index, score, ids))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    let mut union = Vec::new();
    for result in results {
        let (index, score, ids) = result?;
        println!(
            "  worker {index:<2} {:>6} rows, score sum {score}",
            ids.len()
        );
        union.extend(ids);
    }
    println!(
        "{} workers scanned {} rows in {elapsed:?}",
        parts.len(),
        union.len()
    );

    let single: Vec<i32> = published()
        .chunked_by(posts::id)
        .load_iter::<Post>(&mut conn)
        .map(|p| p.map(|p| p.id))
        .collect::<Result<_, _>>()?;
    if union != single {
        return Err(format!(
            "the workers' rows differ from a single scan ({} vs {} rows)",
            union.len(),
            single.len()
        )
        .into());
    }
    println!(
        "the union of the partitions equals a single scan: {} rows, each once",
        single.len()
    );
    drop(pool);
    drop(conn);
    let _ = std::fs::remove_file(&url);
    Ok(())
}
