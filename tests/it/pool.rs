//! Scans on an r2d2 pool: one connection per batch, none held between batches,
//! and batches retried on a fresh connection when the server kills the old one.
#![cfg(feature = "r2d2")]

use crate::common;

use std::time::Duration;

use common::*;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

backend_tests! {
    fn pool_of_one_is_free_between_batches(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=95);
        let pool = Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(2))
            .build(ConnectionManager::<Conn>::new(&db.url))
            .unwrap();
        let mut seen = Vec::new();
        for post in posts::table.chunked_by(posts::id).batch_size(10).load_iter::<Post>(&pool) {
            seen.push(post.unwrap().id);
            // the scan's connection is back in the pool while we hold a row
            let mut c = pool.get().expect("the pool's only connection is free");
            let n: i64 = posts::table.count().get_result(&mut c).unwrap();
            assert_eq!(n, 95);
        }
        assert_eq!(seen, (1..=95).collect::<Vec<_>>());
        let batches: Vec<usize> = posts::table
            .chunked_by(posts::id)
            .batch_size(40)
            .load_batches::<Post>(&pool)
            .map(|b| b.unwrap().len())
            .collect();
        assert_eq!(batches, [40, 40, 15]);
    }

    fn non_transient_errors_are_not_retried(db) {
        let pool = Pool::builder()
            .max_size(2)
            .build(ConnectionManager::<Conn>::new(&db.url))
            .unwrap();
        {
            let mut c = pool.get().unwrap();
            diesel::sql_query("DROP TABLE posts").execute(&mut c).unwrap();
        }
        let mut it = posts::table.chunked_by(posts::id).max_retries(5).load_iter::<Post>(&pool);
        match it.next() {
            Some(Err(Error::Database { batch, attempts, .. })) => {
                assert_eq!((batch, attempts), (1, 1));
            }
            other => panic!("expected a database error, got {other:?}"),
        }
        assert_eq!(it.progress().queries, 1);
        assert_eq!(it.progress().retries, 0);
        assert!(it.next().is_none());
    }
}

/// Reads a scan of posts, calling `kill` after every 120th: the ids read, and
/// how many connections `kill` killed.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn read_through_kills(
    it: &mut impl Iterator<Item = Result<Post, Error>>,
    mut kill: impl FnMut() -> usize,
) -> (Vec<i32>, usize) {
    let mut seen = Vec::new();
    let mut kills = 0;
    for post in it {
        let id = post
            .unwrap_or_else(|e| panic!("after {} rows: {e}", seen.len()))
            .id;
        seen.push(id);
        if id % 120 == 0 {
            kills += kill();
        }
    }
    (seen, kills)
}

#[cfg(feature = "postgres")]
#[test]
fn pg_batches_survive_killed_connections() {
    let db = <Pg as TestBackend>::create();
    let url = format!("{}&application_name={}", db.url, unique_name("scan"));
    let mut conn = diesel::PgConnection::establish(&url).unwrap();
    insert_posts(&mut conn, 1..=500);
    drop(conn);
    let pool = Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .build(ConnectionManager::<diesel::PgConnection>::new(&url))
        .unwrap();
    let mut it = posts::table
        .chunked_by(posts::id)
        .batch_size(50)
        .load_iter::<Post>(&pool);
    let (seen, kills) = read_through_kills(&mut it, || kill_pg(&url));
    assert_survived_kills(&seen, kills);
    assert!(it.progress().retries >= 1, "{:?}", it.progress());
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_batches_survive_killed_connections() {
    let db = <Mysql as TestBackend>::create();
    let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
    insert_posts(&mut conn, 1..=500);
    drop(conn);
    let pool = Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .build(ConnectionManager::<diesel::MysqlConnection>::new(&db.url))
        .unwrap();
    let mut it = posts::table
        .chunked_by(posts::id)
        .batch_size(50)
        .load_iter::<Post>(&pool);
    let (seen, kills) = read_through_kills(&mut it, || kill_mysql(&db.url));
    assert_survived_kills(&seen, kills);
    assert!(it.progress().retries >= 1, "{:?}", it.progress());
}

#[cfg(feature = "postgres")]
#[test]
fn retries_exhausted_is_a_clear_error() {
    let db = <Pg as TestBackend>::create();
    // a pool whose connections cannot be made: every attempt fails at check-out
    let bad = "postgres://nobody@127.0.0.1:1/none";
    let pool = Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_millis(200))
        .build_unchecked(ConnectionManager::<diesel::PgConnection>::new(bad));
    let mut it = posts::table
        .chunked_by(posts::id)
        .max_retries(2)
        .load_iter::<Post>(&pool);
    match it.next() {
        Some(Err(Error::Pool {
            batch, attempts, ..
        })) => assert_eq!((batch, attempts), (1, 3)),
        other => panic!("expected a pool error, got {other:?}"),
    }
    assert_eq!(it.progress().retries, 2);
    drop(db);
}

/// A borrowed connection is not retried: when the server kills it mid-scan the
/// error comes back (naming the batch, the last key and one attempt), and a new
/// scan on a new connection, started after the last key handed out, yields the
/// rest: every row exactly once in all.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! borrowed_connection_resume {
    ($conn_ty:ty, $url:expr, $kill:expr) => {{
        let url = $url;
        let mut conn = <$conn_ty>::establish(&url).unwrap();
        insert_posts(&mut conn, 1..=300);
        let mut seen = Vec::new();
        let mut it = posts::table
            .chunked_by(posts::id)
            .batch_size(40)
            .load_iter::<Post>(&mut conn);
        let mut failure = None;
        for post in it.by_ref() {
            match post {
                Ok(p) => {
                    seen.push(p.id);
                    if p.id == 100 {
                        assert!($kill(&url) >= 1, "the scan's connection must be killed");
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        let err = failure.expect("the killed connection must fail the next batch");
        match &err {
            Error::Database {
                batch,
                last_key,
                attempts,
                ..
            } => {
                assert_eq!(
                    (*batch, last_key.as_deref(), *attempts),
                    (4, Some("120"), 1),
                    "{err}"
                );
            }
            other => panic!("expected a Database error, got {other:?}"),
        }
        let p = it.progress();
        assert_eq!((p.rows, p.retries, p.last_key), (120, 0, Some(120)));
        let resume = it.last_key().copied().unwrap();
        drop(it);
        let mut fresh = <$conn_ty>::establish(&url).unwrap();
        for post in posts::table
            .chunked_by(posts::id)
            .batch_size(40)
            .start_after(resume)
            .load_iter::<Post>(&mut fresh)
        {
            seen.push(post.unwrap().id);
        }
        assert_every_row_once(&seen, 300);
    }};
}

#[cfg(feature = "postgres")]
#[test]
fn pg_borrowed_connection_is_not_retried_and_resumes() {
    let db = <Pg as TestBackend>::create();
    let url = format!("{}&application_name={}", db.url, unique_name("borrowed"));
    borrowed_connection_resume!(diesel::PgConnection, url, |u: &str| kill_pg(u));
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_borrowed_connection_is_not_retried_and_resumes() {
    let db = <Mysql as TestBackend>::create();
    borrowed_connection_resume!(diesel::MysqlConnection, db.url.clone(), |u: &str| {
        kill_mysql(u)
    });
}
