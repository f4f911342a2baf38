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
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const ROWS: i32 = 100_000;

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

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = posts)]
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = SqliteConnection::establish(":memory:")?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| format!("migrations: {e}"))?;

    let started = Instant::now();
    let epoch = chrono::DateTime::from_timestamp(1_767_225_600, 0)
        .ok_or("bad epoch")?
        .naive_utc();
    conn.transaction(|conn| {
        let rows: Vec<Post> = (1..=ROWS)
            .map(|id| Post {
                id,
                user_id: id % 100,
                title: format!("post number {id}"),
                slug: format!("post-{id:06}"),
                published: id % 3 != 0,
                score: (id % 10 != 0).then_some(id % 50),
                created_at: epoch + chrono::Duration::seconds(i64::from(id)),
                body: "lorem ipsum ".repeat(10),
            })
            .collect();
        for chunk in rows.chunks(2_000) {
            diesel::insert_into(posts::table)
                .values(chunk)
                .execute(conn)?;
        }
        diesel::QueryResult::Ok(())
    })?;
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
