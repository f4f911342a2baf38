//! The scan's core behaviours as `Stream`s on diesel-async connections and
//! pools, on each backend: the same rows, order, statements and errors as the
//! iterators.
#![cfg(feature = "async")]

use crate::common;

use std::sync::{Arc, Mutex};

use common::*;
use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use diesel_async::AsyncConnection;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;
use futures_util::{StreamExt, TryStreamExt};

/// Records the statements an async connection runs, as `QueryLog` does for a
/// blocking one.
pub(crate) fn count_queries<C: AsyncConnection>(conn: &mut C) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            sink.lock().unwrap().push(query.to_string());
        }
    });
    log
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

macro_rules! async_backend_tests {
    ($name:ident, $backend:ty, $conn:ty) => {
        mod $name {
            use super::*;

            async fn setup(rows: i32) -> (TestDb, $conn) {
                let db = <$backend as TestBackend>::create();
                let mut sync = <$backend as TestBackend>::connect(&db);
                insert_posts(&mut sync, 1..=rows);
                let conn = <$conn>::establish(&db.url).await.expect("async connection");
                (db, conn)
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn rows_order_desc_limit_and_queries() {
                let (_db, mut conn) = setup(10).await;
                let log = count_queries(&mut conn);
                let ids: Vec<i32> = posts::table
                    .chunked_by(posts::id)
                    .batch_size(3)
                    .load_stream::<Post>(&mut conn)
                    .map_ok(|p| p.id)
                    .try_collect()
                    .await
                    .unwrap();
                assert_eq!(ids, (1..=10).collect::<Vec<_>>());
                // 4 batches of LIMIT 4 (3 rows and a look-ahead row), no final empty query
                assert_eq!(log.lock().unwrap().len(), 4, "{:?}", log.lock().unwrap());
                log.lock().unwrap().clear();

                let mut s = posts::table
                    .chunked_by(posts::id)
                    .batch_size(2)
                    .limit_total(5)
                    .desc()
                    .load_batches_stream::<Post>(&mut conn);
                let mut sizes = Vec::new();
                while let Some(b) = s.try_next().await.unwrap() {
                    sizes.push(b.iter().map(|p| p.id).collect::<Vec<_>>());
                }
                assert_eq!(sizes, [vec![10, 9], vec![8, 7], vec![6]]);
                assert_eq!(s.last_key(), Some(&6));
                assert_eq!(s.progress().queries, 3);
                assert_eq!(
                    s.end_reason(),
                    Some(diesel_chunked_iterator::EndReason::LimitReached)
                );
                drop(s);
                assert_eq!(log.lock().unwrap().len(), 3);

                // bounds and a composite key
                let ids: Vec<i32> = posts::table
                    .chunked_by((posts::user_id, posts::id))
                    .batch_size(4)
                    .load_stream::<Post>(&mut conn)
                    .map_ok(|p| p.id)
                    .try_collect()
                    .await
                    .unwrap();
                let mut sorted = ids.clone();
                sorted.sort();
                assert_eq!(sorted, (1..=10).collect::<Vec<_>>());
                let ids: Vec<i32> = posts::table
                    .chunked_by(posts::id)
                    .start_after(3)
                    .end_at(7)
                    .batch_size(2)
                    .load_stream_keyed(&mut conn, |p: &Post| p.id)
                    .map_ok(|p: Post| p.id)
                    .try_collect()
                    .await
                    .unwrap();
                assert_eq!(ids, [4, 5, 6, 7]);
            }

            /// The async planning calls give what the blocking ones give.
            #[tokio::test(flavor = "multi_thread")]
            async fn planning_calls_match_the_blocking_ones() {
                let db = <$backend as TestBackend>::create();
                let mut sync = <$backend as TestBackend>::connect(&db);
                insert_posts(&mut sync, 1..=40);
                let mut conn = <$conn>::establish(&db.url).await.expect("async connection");
                let scan = || {
                    posts::table
                        .filter(posts::published.eq(true))
                        .chunked_by(posts::id)
                };

                let parts = scan().partitions_async(3, &mut conn).await.unwrap();
                assert_eq!(parts, scan().partitions(3, &mut sync).unwrap());
                assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 20);
                let mut ids = Vec::new();
                for p in &parts {
                    let mut s = scan()
                        .within(p)
                        .batch_size(4)
                        .load_stream::<Post>(&mut conn);
                    while let Some(post) = s.try_next().await.unwrap() {
                        ids.push(post.id);
                    }
                }
                let expected: Vec<i32> = (1..=40).filter(|id| id % 2 == 0).collect();
                assert_eq!(ids, expected, "every slice scanned: each row once");

                assert_eq!(
                    scan().estimate_total_async(&mut conn).await.unwrap(),
                    scan().estimate_total(&mut sync).unwrap()
                );
                scan().verify_unique_async(&mut conn).await.unwrap();
                // not unique (SQLite, PostgreSQL), or a key MariaDB cannot sort
                // whole (a TEXT column): the blocking call's error either way
                let err = posts::table
                    .chunked_by(posts::title)
                    .verify_unique_async(&mut conn)
                    .await
                    .unwrap_err();
                let blocking = posts::table
                    .chunked_by(posts::title)
                    .verify_unique(&mut sync)
                    .unwrap_err();
                assert!(
                    matches!(err, Error::NotUnique { .. } | Error::UnsupportedKey { .. }),
                    "{err}"
                );
                assert_eq!(err.to_string(), blocking.to_string());
                let plan = scan().explain_async(&mut conn).await.unwrap();
                let blocking = scan().explain(&mut sync).unwrap();
                assert_eq!(
                    (plan.verdict, plan.order_columns),
                    (blocking.verdict, blocking.order_columns)
                );
                assert_eq!(plan.suggestion, blocking.suggestion);
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn errors_are_the_iterators() {
                let (_db, mut conn) = setup(6).await;
                let err = posts::table
                    .order(posts::title)
                    .into_boxed()
                    .chunked_by(posts::id)
                    .load_stream::<Post>(&mut conn)
                    .try_next()
                    .await
                    .unwrap_err();
                assert!(matches!(err, Error::QueryHasClause { .. }), "{err}");
                let err = posts::table
                    .chunked_by(posts::id)
                    .batch_size(0)
                    .load_batches_stream::<Post>(&mut conn)
                    .try_next()
                    .await
                    .unwrap_err();
                assert!(matches!(err, Error::InvalidBatchSize { .. }), "{err}");
                // a key that repeats: refused, as by load_iter
                let err = posts::table
                    .chunked_by(posts::user_id)
                    .batch_size(3)
                    .load_stream::<Post>(&mut conn)
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap_err();
                assert!(matches!(err, Error::DuplicateKey { .. }), "{err}");
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_dropped_stream_leaves_the_connection_usable_and_streams_are_send() {
                let (_db, conn) = setup(20).await;
                let handle = tokio::spawn(async move {
                    let mut conn = conn;
                    {
                        let mut s = assert_send(
                            posts::table
                                .chunked_by(posts::id)
                                .batch_size(5)
                                .load_stream::<Post>(&mut conn),
                        );
                        assert_eq!(s.next().await.unwrap().unwrap().id, 1);
                        // polled once into the next batch's query, then dropped
                        let _ = futures_util::poll!(s.next());
                    }
                    let n: Vec<i32> = posts::table
                        .chunked_by(posts::id)
                        .batch_size(7)
                        .load_stream::<Post>(&mut conn)
                        .map_ok(|p| p.id)
                        .try_collect()
                        .await
                        .unwrap();
                    n.len()
                });
                assert_eq!(handle.await.unwrap(), 20);
            }
        }
    };
}

#[cfg(feature = "sqlite")]
async_backend_tests!(
    sqlite,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
);
#[cfg(feature = "postgres")]
async_backend_tests!(postgres, Pg, diesel_async::AsyncPgConnection);
#[cfg(feature = "mysql")]
async_backend_tests!(mysql, Mysql, diesel_async::AsyncMysqlConnection);
