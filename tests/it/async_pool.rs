//! Scans as `Stream`s on diesel-async's pools (deadpool and bb8): one
//! connection per batch, none held between batches, a stream dropped in the
//! middle of a batch gives its connection back (or has it discarded), and
//! batches retried on a fresh connection when the server kills the old one.
#![cfg(all(feature = "deadpool", feature = "bb8"))]

use crate::common;

use std::time::Duration;

use common::*;
use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::{bb8, deadpool};
// diesel-async's `RunQueryDsl` in scope, as in any diesel-async code: its own
// `load_stream` must not make the scan's ambiguous.
use diesel_async::RunQueryDsl as AsyncRun;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;
use futures_util::{StreamExt, TryStreamExt};

/// A deadpool pool of at most `max` connections of type `C`.
macro_rules! deadpool_of {
    ($conn:ty, $url:expr, $max:expr) => {
        deadpool::Pool::builder(AsyncDieselConnectionManager::<$conn>::new_with_config(
            $url,
            fast_recycling(),
        ))
        .max_size($max)
        .build()
        .unwrap()
    };
}

/// Pools that lend a connection without checking it first: a connection the
/// server killed reaches the scan, which must find out and retry. (Checked at
/// check-out, the pools would replace killed connections before the scan saw
/// them.)
fn fast_recycling<C: diesel_async::AsyncConnection + 'static>(
) -> diesel_async::pooled_connection::ManagerConfig<C> {
    let mut config = diesel_async::pooled_connection::ManagerConfig::default();
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    config
}

/// A bb8 pool of at most `max` connections of type `C`.
macro_rules! bb8_of {
    ($conn:ty, $url:expr, $max:expr) => {
        bb8::Pool::builder()
            .max_size($max)
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(3))
            .build(AsyncDieselConnectionManager::<$conn>::new($url))
            .await
            .unwrap()
    };
}

/// `f`, or a panic after `secs` seconds (a pool whose connection never came
/// back would wait forever).
async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

macro_rules! async_pool_tests {
    ($name:ident, $backend:ty, $conn:ty) => {
        mod $name {
            use super::*;

            fn setup(rows: i32) -> TestDb {
                let db = <$backend as TestBackend>::create();
                let mut sync = <$backend as TestBackend>::connect(&db);
                insert_posts(&mut sync, 1..=rows);
                db
            }

            macro_rules! pool_cases {
                ($pool:ident, $make:expr) => {
                    /// A pool of one connection is free inside the loop body:
                    /// the scan holds no connection between batches.
                    #[tokio::test(flavor = "multi_thread")]
                    async fn pool_of_one_is_free_between_batches() {
                        let db = setup(95);
                        let $pool = $make(&db.url, 1).await;
                        let mut seen = Vec::new();
                        let mut s = posts::table
                            .chunked_by(posts::id)
                            .batch_size(10)
                            .load_stream::<Post>(&$pool);
                        while let Some(post) = s.try_next().await.unwrap() {
                            seen.push(post.id);
                            let mut c = within(3, $pool.get())
                                .await
                                .expect("the only connection is free");
                            let n: i64 = AsyncRun::get_result(posts::table.count(), &mut *c)
                                .await
                                .unwrap();
                            assert_eq!(n, 95);
                        }
                        assert_eq!(seen, (1..=95).collect::<Vec<_>>());
                        assert_eq!(s.progress().queries, 10);
                        let sizes: Vec<usize> = posts::table
                            .chunked_by(posts::id)
                            .batch_size(40)
                            .desc()
                            .load_batches_stream::<Post>(&$pool)
                            .map_ok(|b| b.len())
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(sizes, [40, 40, 15]);
                    }

                    /// A stream dropped while its batch is in flight (a
                    /// cancelled request) does not keep or poison the pool's
                    /// only connection: the next statement on the pool runs.
                    #[tokio::test(flavor = "multi_thread")]
                    async fn a_dropped_stream_gives_the_pool_its_connection_back() {
                        let db = setup(60);
                        let $pool = $make(&db.url, 1).await;
                        for _ in 0..3 {
                            let mut s = posts::table
                                .chunked_by(posts::id)
                                .batch_size(7)
                                .load_stream::<Post>(&$pool);
                            for id in 1..=7 {
                                assert_eq!(s.try_next().await.unwrap().unwrap().id, id);
                            }
                            // the next batch's statement starts, then the stream is dropped
                            let _ = futures_util::poll!(s.next());
                            drop(s);
                            let mut c = within(3, $pool.get())
                                .await
                                .expect("the connection came back");
                            let n: i64 = AsyncRun::get_result(posts::table.count(), &mut *c)
                                .await
                                .unwrap();
                            assert_eq!(n, 60);
                        }
                        let ids: Vec<i32> = posts::table
                            .chunked_by(posts::id)
                            .batch_size(25)
                            .load_stream::<Post>(&$pool)
                            .map_ok(|p| p.id)
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(ids, (1..=60).collect::<Vec<_>>());
                    }

                    /// An error retrying cannot fix comes back at once.
                    #[tokio::test(flavor = "multi_thread")]
                    async fn non_transient_errors_are_not_retried() {
                        let db = setup(5);
                        let $pool = $make(&db.url, 2).await;
                        {
                            let mut c = $pool.get().await.unwrap();
                            AsyncRun::execute(diesel::sql_query("DROP TABLE posts"), &mut *c)
                                .await
                                .unwrap();
                        }
                        let mut s = posts::table
                            .chunked_by(posts::id)
                            .max_retries(5)
                            .load_stream::<Post>(&$pool);
                        match s.next().await {
                            Some(Err(Error::Database {
                                batch, attempts, ..
                            })) => {
                                assert_eq!((batch, attempts), (1, 1));
                            }
                            other => panic!("expected a database error, got {other:?}"),
                        }
                        assert_eq!((s.progress().queries, s.progress().retries), (1, 0));
                        assert!(s.next().await.is_none());
                    }

                    /// Keyed streams, bounds, a composite key and `limit_total`
                    /// on a pool: the rows of the iterators.
                    #[tokio::test(flavor = "multi_thread")]
                    async fn keyed_bounds_and_composite_keys() {
                        let db = setup(30);
                        let $pool = $make(&db.url, 2).await;
                        let ids: Vec<i32> = posts::table
                            .select(posts::id)
                            .chunked_by(posts::id)
                            .start_after(4)
                            .end_at(20)
                            .batch_size(4)
                            .limit_total(9)
                            .load_stream_keyed(&$pool, |id: &i32| *id)
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(ids, (5..=13).collect::<Vec<_>>());
                        let mut sync = <$backend as TestBackend>::connect(&db);
                        let expected: Vec<Vec<i32>> = posts::table
                            .chunked_by((posts::user_id, posts::id))
                            .batch_size(7)
                            .load_batches::<Post>(&mut sync)
                            .map(|b| b.unwrap().iter().map(|p| p.id).collect())
                            .collect();
                        let got: Vec<Vec<i32>> = posts::table
                            .chunked_by((posts::user_id, posts::id))
                            .batch_size(7)
                            .load_batches_stream::<Post>(&$pool)
                            .map_ok(|b| b.iter().map(|p| p.id).collect())
                            .try_collect()
                            .await
                            .unwrap();
                        assert_eq!(got, expected);
                        assert_eq!(got.concat().len(), 30);
                    }
                };
            }

            mod with_deadpool {
                use super::*;
                async fn make(url: &str, max: usize) -> deadpool::Pool<$conn> {
                    deadpool_of!($conn, url, max)
                }
                pool_cases!(pool, make);
            }

            mod with_bb8 {
                use super::*;
                async fn make(url: &str, max: u32) -> bb8::Pool<$conn> {
                    bb8_of!($conn, url, max)
                }
                pool_cases!(pool, make);
            }
        }
    };
}

#[cfg(feature = "sqlite")]
async_pool_tests!(
    sqlite,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
);
#[cfg(feature = "postgres")]
async_pool_tests!(postgres, Pg, diesel_async::AsyncPgConnection);
#[cfg(feature = "mysql")]
async_pool_tests!(mysql, Mysql, diesel_async::AsyncMysqlConnection);

/// Kills the pool's connections every 120 rows: every batch whose connection
/// died is retried on a fresh one, and every row comes out exactly once.
macro_rules! survives_killed_connections {
    ($pool:expr, $url:expr, $kill:expr) => {
        survives_killed_connections!($pool, $url, $kill, retries)
    };
    ($pool:expr, $url:expr, $kill:expr, $retries:ident) => {{
        let pool = $pool;
        let mut s = posts::table
            .chunked_by(posts::id)
            .batch_size(50)
            .load_stream::<Post>(&pool);
        let mut seen = Vec::new();
        let mut kills = 0;
        while let Some(post) = s.next().await {
            let id = post
                .unwrap_or_else(|e| panic!("after {} rows: {e}", seen.len()))
                .id;
            seen.push(id);
            if id % 120 == 0 {
                let url = $url.clone();
                kills += tokio::task::spawn_blocking(move || $kill(&url))
                    .await
                    .unwrap();
            }
        }
        assert_survived_kills(&seen, kills);
        if stringify!($retries) == "retries" {
            assert!(s.progress().retries >= 1, "{:?}", s.progress());
        }
    }};
}

#[cfg(feature = "postgres")]
fn pg_killable() -> (TestDb, String) {
    let db = <Pg as TestBackend>::create();
    let url = format!("{}&application_name={}", db.url, unique_name("astream"));
    let mut conn = diesel::PgConnection::establish(&url).unwrap();
    insert_posts(&mut conn, 1..=500);
    (db, url)
}

#[cfg(feature = "mysql")]
fn mysql_killable() -> (TestDb, String) {
    let db = <Mysql as TestBackend>::create();
    let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
    insert_posts(&mut conn, 1..=500);
    let url = db.url.clone();
    (db, url)
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn pg_deadpool_batches_survive_killed_connections() {
    let (_db, url) = pg_killable();
    // deadpool drops a PostgreSQL connection whose socket the server closed
    // when it is checked out, so the scan may never meet a dead one
    survives_killed_connections!(
        deadpool_of!(diesel_async::AsyncPgConnection, &url, 2),
        url,
        kill_pg,
        maybe_no_retries
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn pg_bb8_batches_survive_killed_connections() {
    let (_db, url) = pg_killable();
    survives_killed_connections!(
        bb8_of!(diesel_async::AsyncPgConnection, &url, 2),
        url,
        kill_pg
    );
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_deadpool_batches_survive_killed_connections() {
    let (_db, url) = mysql_killable();
    survives_killed_connections!(
        deadpool_of!(diesel_async::AsyncMysqlConnection, &url, 2),
        url,
        kill_mysql
    );
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_bb8_batches_survive_killed_connections() {
    let (_db, url) = mysql_killable();
    survives_killed_connections!(
        bb8_of!(diesel_async::AsyncMysqlConnection, &url, 2),
        url,
        kill_mysql
    );
}

/// Locks `posts` from a connection of its own so that the next batch's SELECT
/// waits for the lock, kills that SELECT's connection while it waits (a server
/// `KILL` in the middle of a batch), then unlocks. Returns once the lock is
/// held; the thread ends with the id of the connection it killed (`None` if no
/// statement came to wait within 10 seconds).
#[cfg(feature = "mysql")]
fn kill_mysql_mid_batch(url: &str) -> std::thread::JoinHandle<Option<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let url = url.to_owned();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let killer = std::thread::spawn(move || {
        let mut lock = diesel::MysqlConnection::establish(&url).unwrap();
        let mut admin = diesel::MysqlConnection::establish(&url).unwrap();
        diesel::RunQueryDsl::execute(diesel::sql_query("LOCK TABLES posts WRITE"), &mut lock)
            .unwrap();
        locked.send(()).unwrap();
        let waited = std::time::Instant::now();
        let killed = loop {
            let waiting: Vec<Id> = diesel::RunQueryDsl::load(
                diesel::sql_query(
                    "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
                     WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table%' \
                     AND INFO LIKE 'SELECT%'",
                ),
                &mut admin,
            )
            .unwrap();
            if let Some(Id { id }) = waiting.into_iter().next() {
                diesel::RunQueryDsl::execute(
                    diesel::sql_query(format!("KILL CONNECTION {id}")),
                    &mut admin,
                )
                .unwrap();
                break Some(id);
            }
            if waited.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        diesel::RunQueryDsl::execute(diesel::sql_query("UNLOCK TABLES"), &mut lock).unwrap();
        killed
    });
    is_locked.recv().unwrap();
    killer
}

/// A server `KILL` of a MariaDB connection while its batch's statement runs:
/// the batch is retried on another connection (each kill one retry), every
/// row comes out once, and the killed connection never goes back to the pool:
/// a later scan that may not retry at all still runs on the same pool.
#[cfg(feature = "mysql")]
macro_rules! survives_kills_mid_batch {
    ($pool:expr, $url:expr) => {{
        let pool = $pool;
        let url: &str = $url;
        let mut s = posts::table
            .chunked_by(posts::id)
            .batch_size(50)
            .max_retries(50)
            .load_stream::<Post>(&pool);
        let mut seen = Vec::new();
        let mut killers = Vec::new();
        while let Some(post) = within(30, s.next()).await {
            let id = post
                .unwrap_or_else(|e| panic!("after {} rows: {e}", seen.len()))
                .id;
            seen.push(id);
            // the batch just handed out is the last one read: the next
            // statement runs with the table locked, and its connection dies
            if [50, 200, 350].contains(&id) {
                let url = url.to_owned();
                let killer = tokio::task::spawn_blocking(move || kill_mysql_mid_batch(&url))
                    .await
                    .unwrap();
                killers.push(killer);
            }
        }
        let killed: Vec<i64> = killers
            .into_iter()
            .map(|k| {
                k.join()
                    .unwrap()
                    .expect("a batch's statement waited for the lock")
            })
            .collect();
        assert_eq!(killed.len(), 3);
        assert_every_row_once(&seen, 500);
        assert_eq!(s.progress().retries, 3, "{:?}", s.progress());
        drop(s);
        for _ in 0..3 {
            let ids: Vec<i32> = within(
                30,
                posts::table
                    .chunked_by(posts::id)
                    .batch_size(100)
                    .max_retries(0)
                    .load_stream::<Post>(&pool)
                    .map_ok(|p| p.id)
                    .try_collect(),
            )
            .await
            .expect("a later scan on the same pool");
            assert_eq!(ids, (1..=500).collect::<Vec<_>>());
        }
    }};
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_deadpool_batches_survive_a_kill_mid_batch() {
    let (_db, url) = mysql_killable();
    survives_kills_mid_batch!(
        deadpool_of!(diesel_async::AsyncMysqlConnection, &url, 2),
        &url
    );
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_bb8_batches_survive_a_kill_mid_batch() {
    let (_db, url) = mysql_killable();
    survives_kills_mid_batch!(bb8_of!(diesel_async::AsyncMysqlConnection, &url, 2), &url);
}

/// A scan that may not retry (`max_retries(0)`) fails when its connection is
/// killed mid-batch; the killed connection must not go back to the pool, or
/// every later scan on it fails too. With a pool of one connection lent
/// unchecked (bb8's `test_on_check_out(false)`, deadpool's fast recycling),
/// the later scans get the killed one back unless it was discarded.
#[cfg(feature = "mysql")]
macro_rules! discards_a_connection_killed_mid_batch {
    ($pool:expr, $url:expr) => {{
        let pool = $pool;
        let url: &str = $url;
        let mut s = posts::table
            .chunked_by(posts::id)
            .batch_size(50)
            .max_retries(0)
            .load_stream::<Post>(&pool);
        let first: Vec<i32> = (&mut s)
            .take(50)
            .map_ok(|p| p.id)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(first, (1..=50).collect::<Vec<_>>());
        let url = url.to_owned();
        let killer = tokio::task::spawn_blocking(move || kill_mysql_mid_batch(&url))
            .await
            .unwrap();
        match within(30, s.next()).await {
            Some(Err(Error::Database {
                batch, attempts, ..
            })) => assert_eq!((batch, attempts), (2, 1)),
            other => panic!("expected the killed batch's error, got {other:?}"),
        }
        assert!(killer.join().unwrap().is_some(), "no statement was killed");
        drop(s);
        for _ in 0..3 {
            let ids: Vec<i32> = within(
                30,
                posts::table
                    .chunked_by(posts::id)
                    .batch_size(100)
                    .max_retries(0)
                    .load_stream::<Post>(&pool)
                    .map_ok(|p| p.id)
                    .try_collect(),
            )
            .await
            .expect("a later scan on the same pool");
            assert_eq!(ids, (1..=500).collect::<Vec<_>>());
        }
    }};
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_bb8_discards_a_connection_killed_mid_batch() {
    let (_db, url) = mysql_killable();
    discards_a_connection_killed_mid_batch!(
        bb8_of!(diesel_async::AsyncMysqlConnection, &url, 1),
        &url
    );
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql_deadpool_discards_a_connection_killed_mid_batch() {
    let (_db, url) = mysql_killable();
    discards_a_connection_killed_mid_batch!(
        deadpool_of!(diesel_async::AsyncMysqlConnection, &url, 1),
        &url
    );
}

/// A pool that cannot connect: each attempt fails at check-out, and after
/// `max_retries` the error names the batch and the attempts.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn retries_exhausted_is_a_clear_error() {
    let pool = deadpool::Pool::builder(AsyncDieselConnectionManager::<
        diesel_async::AsyncPgConnection,
    >::new("postgres://nobody@127.0.0.1:1/none"))
    .max_size(1)
    .build()
    .unwrap();
    let mut s = posts::table
        .chunked_by(posts::id)
        .max_retries(2)
        .load_stream::<Post>(&pool);
    match s.next().await {
        Some(Err(Error::AsyncPool {
            batch, attempts, ..
        })) => {
            assert_eq!((batch, attempts), (1, 3))
        }
        other => panic!("expected a pool error, got {other:?}"),
    }
    assert_eq!(s.progress().retries, 2);
}
