//! Reading ahead (`prefetch`): blocking scans on a thread of their own
//! (`on_thread`) and async streams give the same rows, order, errors and
//! `last_key()` as without it, hold at most `prefetch` batches ahead, and stop
//! cleanly when dropped.
#![cfg(feature = "r2d2")]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{EndReason, Error};

/// A key closure that breaks the order from id 26 on: batch 3 (of 10 rows)
/// is refused.
fn broken_key(r: &(i32, String)) -> i32 {
    if r.0 > 25 {
        100 - r.0
    } else {
        r.0
    }
}

/// Waits until `f` holds, for at most 10 s.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

backend_tests! {
    fn on_thread_gives_every_row_once_in_order(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=95);
        let pool = Pool::builder().max_size(2).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        for prefetch in [0, 1, 2, 16] {
            let mut it = posts::table
                .chunked_by(posts::id)
                .batch_size(10)
                .prefetch(prefetch)
                .load_iter::<Post>(pool.clone())
                .on_thread();
            let mut seen = Vec::new();
            while let Some(post) = it.next() {
                let post = post.unwrap();
                assert_eq!(post, common::post(post.id));
                seen.push(post.id);
                assert_eq!(it.last_key(), Some(&post.id));
                assert_eq!(it.progress().rows, seen.len() as u64);
            }
            assert_eq!(seen, (1..=95).collect::<Vec<_>>(), "prefetch {prefetch}");
            // 10 batches, no final empty query
            assert_eq!(it.progress().queries, 10);
            assert_eq!(it.progress().batches, 10);
            assert_eq!(it.end_reason(), Some(EndReason::Exhausted));
            assert!(it.next().is_none());
        }

        // batches, descending, filtered, capped
        let batches: Vec<Vec<i32>> = posts::table
            .filter(posts::id.ne(50))
            .chunked_by(posts::id)
            .desc()
            .batch_size(20)
            .limit_total(45)
            .prefetch(3)
            .load_batches::<Post>(pool.clone())
            .on_thread()
            .map(|b| b.unwrap().into_iter().map(|p| p.id).collect())
            .collect();
        let expected: Vec<i32> = (1..=95).rev().filter(|&i| i != 50).take(45).collect();
        assert_eq!(batches, [expected[..20].to_vec(), expected[20..40].to_vec(), expected[40..].to_vec()]);
    }

    fn on_thread_last_key_is_the_last_row_handed_out(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=60);
        let pool = Pool::builder().max_size(2).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(10)
            .prefetch(2)
            .load_iter::<Post>(pool.clone())
            .on_thread();
        let first: Vec<i32> = it.by_ref().take(15).map(|p| p.unwrap().id).collect();
        assert_eq!(first, (1..=15).collect::<Vec<_>>());
        // batch 2 is being handed out, batches 3 and 4 may be loaded: the
        // key is still that of the last row handed out
        assert_eq!(it.last_key(), Some(&15));
        assert_eq!(it.progress().rows, 15);
        assert_eq!(it.end_reason(), None);
        let resume = it.last_stored_key().cloned().unwrap();
        drop(it);
        // the pool is whole again: the thread stopped and gave its connection back
        let rest: Vec<i32> = posts::table
            .chunked_by(posts::id)
            .start_after(resume)
            .batch_size(10)
            .load_iter::<Post>(&pool)
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(rest, (16..=60).collect::<Vec<_>>());
    }

    fn on_thread_reads_at_most_prefetch_batches_ahead(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=100);
        let pool = Pool::builder().max_size(1).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(10)
            .prefetch(2)
            .load_batches::<Post>(pool.clone())
            .on_thread();
        let first = it.next().unwrap().unwrap();
        assert_eq!(first.len(), 10);
        // while batch 1 is held, the thread loads batches 2 and 3 and stops
        // (it gives the pool's only connection back after each)
        assert!(eventually(|| pool.try_get().is_some()), "the scan's thread kept the connection");
        std::thread::sleep(Duration::from_millis(300));
        // what it has not loaded yet, it will not find
        {
            let mut c = pool.get().unwrap();
            diesel::delete(posts::table.filter(posts::id.gt(30))).execute(&mut *c).unwrap();
        }
        let rest: Vec<i32> = it.flat_map(|b| b.unwrap()).map(|p| p.id).collect();
        assert_eq!(rest, (11..=30).collect::<Vec<_>>(), "batches 2 and 3 were read ahead, no more");
    }

    fn dropping_on_thread_returns_at_once_and_ends_like_load_iter(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=100);
        let pool = Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(2))
            .build(ConnectionManager::<Conn>::new(&db.url))
            .unwrap();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(10)
            .prefetch(2)
            .load_iter::<Post>(pool.clone())
            .on_thread();
        assert_eq!(it.next().unwrap().unwrap().id, 1);
        // the caller takes the pool's only connection: the scan's thread may be
        // waiting for it; dropping the iterator must not wait for the thread
        let held = pool.get().unwrap();
        let t0 = Instant::now();
        drop(it);
        assert!(t0.elapsed() < Duration::from_millis(500), "drop took {:?}", t0.elapsed());
        drop(held);
        // the thread gives the connection back once it has stopped
        assert!(pool.get_timeout(Duration::from_secs(10)).is_ok());

        // end_reason as load_iter gives it: once the last row is handed out
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(30)
            .load_iter::<Post>(pool.clone())
            .on_thread();
        let mut n = 0;
        while let Some(p) = it.next() {
            p.unwrap();
            n += 1;
            assert_eq!(it.end_reason().is_some(), n == 100, "after {n} rows");
            if n == 100 {
                assert_eq!(it.size_hint(), (0, Some(0)));
            }
        }
        assert_eq!(it.end_reason(), Some(EndReason::Exhausted));
        let mut it = posts::table
            .chunked_by(posts::id)
            .start_after(10)
            .end_at(5)
            .load_batches::<Post>(pool.clone())
            .on_thread();
        assert_eq!(it.end_reason(), Some(EndReason::EmptyBounds));
        assert!(it.next().is_none());
    }

    fn on_thread_errors_come_after_the_rows_before_them(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=60);
        let pool = Pool::builder().max_size(2).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        let mut it = posts::table
            .select((posts::id, posts::title))
            .chunked_by(posts::id)
            .batch_size(10)
            .prefetch(4)
            .load_iter_keyed(pool.clone(), broken_key)
            .on_thread();
        let mut seen = Vec::new();
        let err = loop {
            match it.next() {
                Some(Ok((id, _))) => seen.push(id),
                Some(Err(e)) => break e,
                None => panic!("no error after {seen:?}"),
            }
        };
        assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "{err}");
        assert_eq!(it.last_key(), Some(&20));
        assert!(it.next().is_none());
        assert_eq!(it.end_reason(), Some(EndReason::Failed));
    }

    fn prefetch_above_the_limit_is_refused(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let pool = Pool::builder().max_size(1).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        let mut it = posts::table.chunked_by(posts::id).prefetch(17).load_iter::<Post>(pool.clone()).on_thread();
        match it.next() {
            Some(Err(e @ Error::InvalidPrefetch { prefetch: 17 })) => {
                assert!(e.to_string().contains("at most 16"), "{e}");
            }
            other => panic!("expected InvalidPrefetch, got {other:?}"),
        }
        assert!(it.next().is_none());
        assert_eq!(it.progress().queries, 0);
        let mut it = posts::table.chunked_by(posts::id).prefetch(17).load_iter::<Post>(&mut conn);
        assert!(matches!(it.next(), Some(Err(Error::InvalidPrefetch { prefetch: 17 }))));
    }

    fn without_on_thread_prefetch_changes_nothing(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=25);
        let log = QueryLog::install(&mut conn);
        let ids: Vec<i32> = posts::table
            .chunked_by(posts::id)
            .batch_size(10)
            .prefetch(2)
            .load_iter::<Post>(&mut conn)
            .take(5)
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        // a lent connection: one batch, nothing read ahead
        assert_eq!(log.selects().len(), 1, "{:?}", log.selects());
    }

    fn a_panic_on_the_scan_thread_reaches_the_caller(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let pool = Pool::builder().max_size(1).build(ConnectionManager::<Conn>::new(&db.url)).unwrap();
        let it = posts::table
            .select((posts::id, posts::title))
            .chunked_by(posts::id)
            .batch_size(10)
            .load_iter_keyed(pool.clone(), |r: &(i32, String)| {
                assert!(r.0 != 15, "key closure panicked at 15");
                r.0
            })
            .on_thread();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            it.map(|r| r.unwrap().0).collect::<Vec<_>>()
        }));
        let panic = caught.expect_err("the panic reaches the caller");
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(message.contains("panicked at 15"), "{message}");
        // the pool's connection is back
        assert!(pool.get_timeout(Duration::from_secs(5)).is_ok());
    }
}

/// Async streams read ahead on any source: a lent connection (the current
/// batch is in memory, so the connection is free for the next statement) or
/// a pool.
#[cfg(feature = "deadpool")]
mod streams {
    use super::*;
    use crate::async_core::count_queries;
    use diesel_async::pooled_connection::{deadpool, AsyncDieselConnectionManager};
    use diesel_async::AsyncConnection;
    use futures_util::{StreamExt, TryStreamExt};

    macro_rules! async_prefetch_tests {
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
                async fn every_row_once_in_order_and_last_key_handed_out() {
                    let (_db, mut conn) = setup(95).await;
                    for prefetch in [1, 3] {
                        let log = count_queries(&mut conn);
                        let mut s = posts::table
                            .chunked_by(posts::id)
                            .batch_size(10)
                            .prefetch(prefetch)
                            .load_stream::<Post>(&mut conn);
                        let mut seen = Vec::new();
                        while let Some(post) = s.try_next().await.unwrap() {
                            assert_eq!(post, common::post(post.id));
                            seen.push(post.id);
                            assert_eq!(s.last_key(), Some(&post.id));
                            assert_eq!(s.progress().rows, seen.len() as u64);
                            if post.id < 95 {
                                assert_eq!(s.end_reason(), None);
                            }
                        }
                        assert_eq!(seen, (1..=95).collect::<Vec<_>>());
                        assert_eq!(s.end_reason(), Some(EndReason::Exhausted));
                        drop(s);
                        // 10 batches, none twice, no final empty query
                        let selects: Vec<String> = log
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|q| q.contains("posts"))
                            .cloned()
                            .collect();
                        assert_eq!(selects.len(), 10, "{selects:?}");
                    }

                    // batches: descending and capped
                    let batches: Vec<Vec<i32>> = posts::table
                        .chunked_by(posts::id)
                        .desc()
                        .batch_size(20)
                        .limit_total(45)
                        .prefetch(2)
                        .load_batches_stream::<Post>(&mut conn)
                        .map_ok(|b| b.into_iter().map(|p| p.id).collect())
                        .try_collect()
                        .await
                        .unwrap();
                    let expected: Vec<i32> = (51..=95).rev().collect();
                    assert_eq!(
                        batches,
                        [
                            expected[..20].to_vec(),
                            expected[20..40].to_vec(),
                            expected[40..].to_vec()
                        ]
                    );
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn the_next_batch_runs_while_rows_are_handed_out() {
                    let (_db, mut conn) = setup(30).await;
                    let log = count_queries(&mut conn);
                    let mut s = posts::table
                        .chunked_by(posts::id)
                        .batch_size(10)
                        .prefetch(1)
                        .load_stream::<Post>(&mut conn);
                    // handing out batch 1's rows polls batch 2's statement:
                    // it was sent before the stream was asked for row 11
                    for id in 1..=10 {
                        assert_eq!(s.try_next().await.unwrap().unwrap().id, id);
                    }
                    // (SQLite's wrapper runs the statement on a blocking thread)
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let sent = log
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|q| q.contains("posts"))
                        .count();
                    // MySQL: diesel-async's connection cannot drop a statement in
                    // flight safely (a stream dropped early), so nothing starts ahead
                    let ahead = stringify!($name) != "mysql";
                    assert_eq!(sent, 1 + usize::from(ahead), "{:?}", log.lock().unwrap());
                    assert_eq!(s.last_key(), Some(&10));
                    let rest: Vec<i32> = s.map_ok(|p| p.id).try_collect().await.unwrap();
                    assert_eq!(rest, (11..=30).collect::<Vec<_>>());
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn a_stream_dropped_while_reading_ahead_leaves_the_connection_usable() {
                    let (_db, mut conn) = setup(40).await;
                    for taken in [1, 3, 10, 11] {
                        let mut s = posts::table
                            .chunked_by(posts::id)
                            .batch_size(10)
                            .prefetch(2)
                            .load_stream::<Post>(&mut conn);
                        for id in 1..=taken {
                            assert_eq!(s.try_next().await.unwrap().unwrap().id, id);
                        }
                        // the next batches' statements are in flight, or their rows half read
                        drop(s);
                        let ids: Vec<i32> = posts::table
                            .chunked_by(posts::id)
                            .batch_size(7)
                            .load_stream::<Post>(&mut conn)
                            .map_ok(|p| p.id)
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "after taking {taken}");
                    }
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn errors_come_after_the_rows_before_them() {
                    let (_db, mut conn) = setup(60).await;
                    let mut s = posts::table
                        .select((posts::id, posts::title))
                        .chunked_by(posts::id)
                        .batch_size(10)
                        .prefetch(4)
                        .load_stream_keyed(&mut conn, broken_key);
                    let mut seen = Vec::new();
                    let err = loop {
                        match s.next().await {
                            Some(Ok((id, _))) => seen.push(id),
                            Some(Err(e)) => break e,
                            None => panic!("no error after {seen:?}"),
                        }
                    };
                    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "{err}");
                    assert_eq!(s.last_key(), Some(&20));
                    assert!(s.next().await.is_none());
                    assert_eq!(s.end_reason(), Some(EndReason::Failed));
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn pools_lend_the_loop_their_connection_and_read_nothing_ahead() {
                    let (db, conn) = setup(95).await;
                    drop(conn);
                    let pool = deadpool::Pool::builder(AsyncDieselConnectionManager::<$conn>::new(
                        db.url.clone(),
                    ))
                    .max_size(1)
                    .build()
                    .unwrap();
                    let mut s = posts::table
                        .chunked_by(posts::id)
                        .batch_size(10)
                        .prefetch(2)
                        .load_stream::<Post>(&pool);
                    let mut ids = Vec::new();
                    while let Some(p) = s.try_next().await.unwrap() {
                        ids.push(p.id);
                        // the pool's only connection is free in the loop body
                        let c = tokio::time::timeout(Duration::from_secs(5), pool.get())
                            .await
                            .expect("the stream holds no connection between batches")
                            .unwrap();
                        drop(c);
                    }
                    assert_eq!(ids, (1..=95).collect::<Vec<_>>());
                    assert_eq!(s.progress().queries, 10);
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn a_key_closure_panicking_ahead_loses_no_row_handed_out() {
                    use futures_util::FutureExt;
                    let (_db, mut conn) = setup(60).await;
                    let mut s = posts::table
                        .select((posts::id, posts::title))
                        .chunked_by(posts::id)
                        .batch_size(10)
                        .prefetch(1)
                        .load_stream_keyed(&mut conn, |r: &(i32, String)| {
                            assert!(r.0 != 15, "key closure panicked at 15");
                            r.0
                        });
                    let mut seen = Vec::new();
                    loop {
                        match std::panic::AssertUnwindSafe(s.next()).catch_unwind().await {
                            Ok(Some(Ok((id, _)))) => seen.push(id),
                            Ok(other) => panic!("expected the panic, got {other:?}"),
                            Err(_) => break,
                        }
                    }
                    // every row received is counted, and no row is counted unreceived
                    let last = seen.last().copied();
                    assert_eq!(s.last_key().copied(), last, "received {seen:?}");
                    assert_eq!(s.progress().rows, seen.len() as u64);
                    assert_eq!(seen, (1..=seen.len() as i32).collect::<Vec<_>>());
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn progress_is_as_of_the_last_batch_handed_out() {
                    let (_db, mut conn) = setup(40).await;
                    let mut s = posts::table
                        .chunked_by(posts::id)
                        .batch_size(10)
                        .prefetch(2)
                        .load_stream::<Post>(&mut conn);
                    for id in 1..=10 {
                        assert_eq!(s.try_next().await.unwrap().unwrap().id, id);
                    }
                    let p = s.progress();
                    assert_eq!((p.rows, p.batches, p.queries), (10, 1, 1), "{p:?}");
                    assert_eq!(p.last_key, Some(10));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    assert!(s.progress().elapsed >= p.elapsed + Duration::from_millis(50));
                    assert_eq!(s.try_next().await.unwrap().unwrap().id, 11);
                    let p = s.progress();
                    assert_eq!((p.rows, p.batches, p.queries), (11, 2, 2), "{p:?}");
                }
            }
        };
    }

    #[cfg(feature = "sqlite")]
    async_prefetch_tests!(
        sqlite,
        Sqlite,
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
    );
    #[cfg(feature = "postgres")]
    async_prefetch_tests!(postgres, Pg, diesel_async::AsyncPgConnection);
    #[cfg(feature = "mysql")]
    async_prefetch_tests!(mysql, Mysql, diesel_async::AsyncMysqlConnection);
}
