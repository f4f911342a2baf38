//! Scans through pgbouncer in transaction pooling mode (`bash .ci/pgbouncer start`
//! runs one on 127.0.0.1:6432; `PGBOUNCER_URL` points elsewhere).
//!
//! In transaction mode pgbouncer hands every transaction, and so every batch, to
//! whichever server connection is free. A statement that Diesel prepared by name
//! on one server connection does not exist on the next, and another client's
//! statement of the same name may already exist there. These tests show that
//! failure with Diesel's defaults, and that both documented settings (a scan with
//! `cache_statements(false)`, or connections without a statement cache) give
//! exactly the rows of a direct scan, also with several scans at once.
#![cfg(all(feature = "postgres", feature = "r2d2"))]

use crate::common;

use std::time::Duration;

use common::*;
use diesel::connection::CacheSize;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::PgConnection;
use diesel_chunked_iterator::prelude::*;
use diesel_migrations::MigrationHarness;

/// A database of its own, reached directly and through pgbouncer.
struct BouncedDb {
    direct: String,
    bounced: String,
    admin: String,
    name: String,
}

impl BouncedDb {
    fn create(rows: i32) -> Self {
        let admin = server_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test");
        let bouncer = server_url("PGBOUNCER_URL", "postgres://root@127.0.0.1:6432/test");
        let name = unique_name("citb");
        let mut conn = PgConnection::establish(&admin)
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is unreachable: {e}"));
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .expect("create database");
        let base = |url: &str| {
            url.rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or_default()
        };
        let db = BouncedDb {
            direct: format!("{}/{name}", base(&admin)),
            bounced: format!("{}/{name}", base(&bouncer)),
            admin,
            name,
        };
        let mut conn = PgConnection::establish(&db.direct).expect("connect to the new database");
        conn.run_pending_migrations(PG_MIGRATIONS)
            .expect("migrations");
        insert_posts(&mut conn, 1..=rows);
        if let Err(e) = PgConnection::establish(&db.bounced) {
            panic!(
                "pgbouncer at {} is unreachable: {e}; start it with `bash .ci/pgbouncer start` \
                 or set PGBOUNCER_URL",
                db.bounced
            );
        }
        db
    }

    fn direct_ids(&self) -> Vec<i32> {
        let mut conn = PgConnection::establish(&self.direct).unwrap();
        posts::table
            .filter(posts::published.eq(true))
            .select(posts::id)
            .order(posts::id)
            .load(&mut conn)
            .unwrap()
    }

    fn bounced_pool(
        &self,
        size: u32,
        customizer: Option<NoStatementCache>,
    ) -> Pool<ConnectionManager<PgConnection>> {
        let mut builder = Pool::builder()
            .max_size(size)
            .connection_timeout(Duration::from_secs(10));
        if let Some(c) = customizer {
            builder = builder.connection_customizer(Box::new(c));
        }
        builder
            .build(ConnectionManager::<PgConnection>::new(&self.bounced))
            .expect("pool through pgbouncer")
    }
}

impl Drop for BouncedDb {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.admin) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

/// The connection-wide setting: no named prepared statements at all.
#[derive(Debug, Clone, Copy)]
struct NoStatementCache;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for NoStatementCache {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        Ok(())
    }
}

fn published_ids<'a>(
    it: impl Iterator<Item = Result<Vec<Post>, diesel_chunked_iterator::Error>> + 'a,
) -> Vec<i32> {
    it.flat_map(|b| b.expect("batch through pgbouncer"))
        .map(|p| p.id)
        .collect()
}

#[test]
fn diesel_named_statements_break_under_transaction_pooling() {
    let db = BouncedDb::create(100);
    // Two client connections, batches interleaved: each prepares its first batch
    // as `__diesel_stmt_0`, and pgbouncer gives both the same idle server
    // connection, where the first one's statement already exists.
    let mut a = PgConnection::establish(&db.bounced).unwrap();
    let mut b = PgConnection::establish(&db.bounced).unwrap();
    let mut it_a = posts::table
        .chunked_by(posts::id)
        .batch_size(10)
        .load_iter::<Post>(&mut a);
    let mut it_b = posts::table
        .chunked_by(posts::id)
        .batch_size(10)
        .load_iter::<Post>(&mut b);
    let mut errors = Vec::new();
    for _ in 0..30 {
        for it in [&mut it_a, &mut it_b] {
            if let Some(Err(e)) = it.next() {
                errors.push(e.to_string());
            }
        }
    }
    assert!(
        errors
            .iter()
            .any(|e| e.contains("prepared statement \"__diesel_stmt_")),
        "expected Diesel's named statements to clash behind pgbouncer, got {errors:?}"
    );

    // The same interleaving with unnamed statements works, row for row.
    let mut a = PgConnection::establish(&db.bounced).unwrap();
    let mut b = PgConnection::establish(&db.bounced).unwrap();
    let scan = |c| {
        posts::table
            .chunked_by(posts::id)
            .batch_size(10)
            .cache_statements(false)
            .load_iter::<Post>(c)
    };
    let (mut it_a, mut it_b) = (scan(&mut a), scan(&mut b));
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let x = it_a.next().map(|p| p.unwrap().id);
        let y = it_b.next().map(|p| p.unwrap().id);
        got_a.extend(x);
        got_b.extend(y);
        if x.is_none() && y.is_none() {
            break;
        }
    }
    assert_eq!(got_a, (1..=100).collect::<Vec<_>>());
    assert_eq!(got_b, got_a);
}

#[test]
fn scan_through_pgbouncer_equals_a_direct_scan() {
    let db = BouncedDb::create(2_345);
    let expected = db.direct_ids();
    assert_eq!(expected.len(), 1_172);

    // A borrowed connection through the pooler.
    let mut conn = PgConnection::establish(&db.bounced).unwrap();
    let got = published_ids(
        posts::table
            .filter(posts::published.eq(true))
            .chunked_by(posts::id)
            .batch_size(100)
            .cache_statements(false)
            .load_batches::<Post>(&mut conn),
    );
    assert_eq!(got, expected);

    // An r2d2 pool through the pooler, in both directions.
    let pool = db.bounced_pool(2, None);
    let got = published_ids(
        posts::table
            .filter(posts::published.eq(true))
            .chunked_by(posts::id)
            .batch_size(77)
            .cache_statements(false)
            .load_batches::<Post>(&pool),
    );
    assert_eq!(got, expected);
    let mut got: Vec<i32> = posts::table
        .filter(posts::published.eq(true))
        .chunked_by(posts::id)
        .desc()
        .batch_size(250)
        .cache_statements(false)
        .load_iter::<Post>(&pool)
        .map(|p| p.unwrap().id)
        .collect();
    got.reverse();
    assert_eq!(got, expected);
}

fn concurrent_scans(
    pool: &Pool<ConnectionManager<PgConnection>>,
    cache_statements: bool,
    expected: &[i32],
) {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..8u64)
            .map(|w| {
                s.spawn(move || {
                    published_ids(
                        posts::table
                            .filter(posts::published.eq(true))
                            .chunked_by(posts::id)
                            .batch_size(40 + 13 * w)
                            .cache_statements(cache_statements)
                            .load_batches::<Post>(pool),
                    )
                })
            })
            .collect();
        for (w, worker) in workers.into_iter().enumerate() {
            assert_eq!(worker.join().unwrap(), expected, "worker {w}");
        }
    });
}

#[test]
fn concurrent_scans_through_pgbouncer() {
    // 8 scans at once on 8 client connections; pgbouncer has 3 server connections
    // for the database, so the batches of different scans share them.
    let db = BouncedDb::create(3_000);
    let expected = db.direct_ids();
    let pool = db.bounced_pool(8, None);
    concurrent_scans(&pool, false, &expected);
}

#[test]
fn connections_without_a_statement_cache_work_through_pgbouncer() {
    // The connection-wide setting: scans keep the default `cache_statements(true)`,
    // but the connections never prepare named statements.
    let db = BouncedDb::create(3_000);
    let expected = db.direct_ids();
    let pool = db.bounced_pool(8, Some(NoStatementCache));
    concurrent_scans(&pool, true, &expected);
}

/// Write jobs through pgbouncer: several runners, each with its own slice and
/// checkpoint, update every published post exactly once, with every statement
/// of a batch (keys, range UPDATE, checkpoint) sent unnamed.
#[test]
fn write_jobs_through_pgbouncer_write_every_row_once() {
    use diesel_chunked_iterator::checkpoint;
    let db = BouncedDb::create(3_000);
    let pool = db.bounced_pool(3, None);
    checkpoint::create_table(&mut *pool.get().unwrap()).unwrap();
    let parts = posts::table
        .filter(posts::published.eq(true))
        .chunked_by(posts::id)
        .partitions(4, &mut *pool.get().unwrap())
        .unwrap();
    std::thread::scope(|s| {
        for p in &parts {
            let pool = &pool;
            s.spawn(move || {
                let report = posts::table
                    .filter(posts::published.eq(true))
                    .chunked_by(posts::id)
                    .within(p)
                    .batch_size(37)
                    .cache_statements(false)
                    .checkpoint(format!("bounced-{}", p.index))
                    .update_all(pool, posts::score.eq(posts::score + 1))
                    .expect("write job through pgbouncer");
                assert_eq!(report.rows, p.rows);
                assert!(report.done);
            });
        }
    });
    let mut conn = PgConnection::establish(&db.direct).unwrap();
    let scores: Vec<(i32, bool, Option<i32>)> = posts::table
        .select((posts::id, posts::published, posts::score))
        .order(posts::id)
        .load(&mut conn)
        .unwrap();
    for (id, published, score) in scores {
        let before = post(id).score;
        let expected = if published {
            before.map(|s| s + 1)
        } else {
            before
        };
        assert_eq!(score, expected, "post {id}");
    }
}

/// `AsyncPgConnection` through pgbouncer in transaction mode. diesel-async
/// prepares every statement under a name, its connection set-up included, in
/// a round trip apart from the one that runs it; pgbouncer before 1.21 cannot
/// follow that (a connection fails to set up with "prepared statement \"s4\"
/// does not exist"). pgbouncer 1.21 and later with `max_prepared_statements`
/// tracks each client's named statements on whichever server connection runs
/// them (`bash .ci/pgbouncer-modern start` builds and runs one on port 6433,
/// `PGBOUNCER_MODERN_URL` points elsewhere). 8 scans at once on 8 client
/// connections share its 3 server connections, with and without the statement
/// cache, and each gets exactly the rows of a direct scan; so does a deadpool
/// pool through the pooler.
#[cfg(feature = "deadpool")]
#[tokio::test(flavor = "multi_thread")]
async fn async_scans_through_pgbouncer() {
    use diesel_async::pooled_connection::{deadpool, AsyncDieselConnectionManager};
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use futures_util::TryStreamExt;

    let db = BouncedDb::create(3_000);
    let expected = db.direct_ids();
    let modern = server_url(
        "PGBOUNCER_MODERN_URL",
        "postgres://root@127.0.0.1:6433/test",
    );
    let url = format!(
        "{}/{}",
        modern.rsplit_once('/').map(|(b, _)| b).unwrap_or(&modern),
        db.name
    );
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let url = url.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "pgbouncer >= 1.21 at {url} is unreachable: {e}; start it with \
                     `bash .ci/pgbouncer-modern start` or set PGBOUNCER_MODERN_URL"
                    )
                });
            for round in 0..4 {
                let got: Vec<i32> = posts::table
                    .filter(posts::published.eq(true))
                    .chunked_by(posts::id)
                    .batch_size(40 + 13 * w)
                    .cache_statements(round % 2 == 0)
                    .load_stream::<Post>(&mut conn)
                    .map_ok(|p| p.id)
                    .try_collect()
                    .await
                    .unwrap_or_else(|e| panic!("worker {w}, round {round}: {e}"));
                assert_eq!(got, expected, "worker {w}, round {round}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let pool =
        deadpool::Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(&url))
            .max_size(2)
            .build()
            .unwrap();
    let got: Vec<Vec<Post>> = posts::table
        .filter(posts::published.eq(true))
        .chunked_by(posts::id)
        .desc()
        .batch_size(99)
        .load_batches_stream::<Post>(&pool)
        .try_collect()
        .await
        .unwrap();
    let mut got: Vec<i32> = got.concat().iter().map(|p| p.id).collect();
    got.reverse();
    assert_eq!(got, expected);
}
