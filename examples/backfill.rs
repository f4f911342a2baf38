//! A resumable backfill on SQLite (bundled, no server): re-encodes the title of
//! 200,000 posts in batches, each batch one transaction with its checkpoint.
//! Kill it at any moment (Ctrl-C) and run it again: it says where it resumes,
//! and every post is written exactly once.
//!
//! ```sh
//! cargo run --example backfill            # run (again) until done
//! cargo run --example backfill -- --reset # start over with a fresh database
//! ```

use std::time::Duration;

use diesel::prelude::*;
use diesel_chunked_iterator::{checkpoint, prelude::*};

mod common;
use common::{posts, Post};

const ROWS: i32 = 200_000;
const JOB: &str = "backfill-titles";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("diesel-chunked-iterator-backfill.sqlite3");
    let url = path.to_string_lossy().into_owned();
    let fresh = std::env::args().any(|a| a == "--reset") || !path.exists();
    let mut conn = if fresh {
        let url = common::temp_db("backfill");
        println!("creating {ROWS} posts in {url}");
        common::create(&url, 1..=ROWS)?
    } else {
        SqliteConnection::establish(&url)?
    };
    diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn)?;
    checkpoint::create_table(&mut conn)?;
    if fresh {
        checkpoint::reset(&mut conn, JOB)?;
    }
    match checkpoint::status(&mut conn, JOB)? {
        Some(c) if c.done => println!(
            "job {JOB:?} is done: {} rows in {} batches",
            c.rows, c.batches
        ),
        Some(c) => println!(
            "job {JOB:?} resumes after key {} ({} rows in {} batches so far)",
            c.last_key.as_deref().unwrap_or("none"),
            c.rows,
            c.batches
        ),
        None => println!("job {JOB:?} starts"),
    }

    let report = posts::table
        .chunked_by(posts::id)
        .batch_size(2_000)
        .target_batch_time(Duration::from_millis(50))
        .checkpoint(JOB)
        .throttle(|stats| {
            if stats.batch % 10 == 0 {
                println!(
                    "  batch {:>4}: {:>7} rows so far, last batch {:>5} rows in {:?}, next {}",
                    stats.batch,
                    stats.total_rows,
                    stats.rows,
                    stats.duration,
                    stats.next_batch_size
                );
            }
            // a little breathing room for other writers
            Some(Duration::from_millis(5))
        })
        .for_each_batch(
            &mut conn,
            |conn: &mut SqliteConnection, batch: Vec<Post>| -> QueryResult<()> {
                for p in &batch {
                    diesel::update(posts::table.find(p.id))
                        .set(posts::title.eq(p.title.to_uppercase()))
                        .execute(conn)?;
                }
                Ok(())
            },
        )?;
    println!(
        "this run: {} rows in {} batches in {:?}{}; job: {} rows, done: {}",
        report.rows,
        report.batches,
        report.elapsed,
        report
            .resumed_after
            .map(|k| format!(" (resumed after key {k})"))
            .unwrap_or_default(),
        report.total_rows,
        report.done
    );

    // Every post written: no title left in lower case (GLOB is case-sensitive).
    let lower: i64 = posts::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "title GLOB 'post*'",
        ))
        .count()
        .get_result(&mut conn)?;
    println!("titles not yet written: {lower}");
    if report.done && lower != 0 {
        return Err("a post was skipped".into());
    }
    Ok(())
}
