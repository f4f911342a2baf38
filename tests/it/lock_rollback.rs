//! A connection that breaks at the `ROLLBACK` of a batch's first attempt,
//! whose checkpoint lock found the row held (a proxy drops the answer to the
//! first `ROLLBACK`): on a pool the batch is retried on another connection and
//! every row is written once; on a lent connection the error is the broken
//! connection's, not a `BEGIN` tried on it after. And an async job dropped
//! while it waits for the row leaves its connection usable.
#![cfg(all(feature = "r2d2", any(feature = "postgres", feature = "mysql")))]

use crate::common;

use std::time::Duration;

use crate::lost_commit::{at, counter_rows, counters, create_tables, BATCH, ROWS};
use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::prelude::*;

/// Holds the checkpoint row `name` from another connection for `hold`.
fn hold_row<B: TestBackend>(
    url: String,
    name: &'static str,
    hold: Duration,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)
where
    B::Conn: Send + 'static,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<B::Conn>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut holder = B::connect_url(&url);
        let _ = holder.transaction(|c| {
            diesel::sql_query(format!(
                "UPDATE chunked_checkpoints SET rows_done = rows_done WHERE name = '{name}'"
            ))
            .execute(c)?;
            tx.send(()).unwrap();
            std::thread::sleep(hold);
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        });
    });
    (h, rx)
}

macro_rules! review_tests {
    ($module:ident, $backend:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use crate::lost_commit::proxy::Proxy;
            use diesel::r2d2::{ConnectionManager, Pool};
            type B = $backend;
            type Conn = <B as TestBackend>::Conn;

            /// A fresh database whose job `held` committed its first batch
            /// (rows 1..=BATCH), and a connection to it.
            pub(super) fn prepare() -> (TestDb, Conn) {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                checkpoint::create_table(&mut conn).unwrap();
                let first = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("held")
                    .limit_total(BATCH)
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!(first.rows, BATCH);
                (db, conn)
            }

            /// A pool job: the connection breaks at the ROLLBACK after the first
            /// attempt found the row held. A broken connection is transient for
            /// a pool: the batch should be retried on another connection.
            #[test]
            fn pool_job_survives_a_broken_rollback_after_a_lock_conflict() {
                let (db, mut conn) = prepare();
                let proxy = Proxy::start_cutting(&db.url, "ROLLBACK", 1);
                let pool = Pool::builder()
                    .max_size(2)
                    .build(ConnectionManager::<Conn>::new(proxy.url(&db.url)))
                    .unwrap();
                let (holder, locked) =
                    hold_row::<B>(db.url.clone(), "held", Duration::from_millis(300));
                locked.recv().unwrap();
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("held")
                    .max_retries(50)
                    .update_all(&pool, counters::n.eq(counters::n + 1));
                holder.join().unwrap();
                assert_eq!(
                    proxy.answers_dropped(),
                    1,
                    "the proxy must have cut a ROLLBACK"
                );
                let report = report.expect("a broken connection is retried on a pool");
                assert!(report.done, "{report:?}");
                assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
            }

            /// A lent connection: the error should be the broken connection's,
            /// not a BrokenTransactionManager from a BEGIN tried after it.
            #[test]
            fn lent_connection_reports_the_broken_rollback() {
                let (db, _conn) = prepare();
                let proxy = Proxy::start_cutting(&db.url, "ROLLBACK", 1);
                let mut lent = Conn::establish(&proxy.url(&db.url)).unwrap();
                let (holder, locked) =
                    hold_row::<B>(db.url.clone(), "held", Duration::from_millis(300));
                locked.recv().unwrap();
                let err = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("held")
                    .update_all(&mut lent, counters::n.eq(counters::n + 1))
                    .expect_err("the connection broke");
                holder.join().unwrap();
                assert_eq!(
                    proxy.answers_dropped(),
                    1,
                    "the proxy must have cut a ROLLBACK"
                );
                eprintln!("error: {err:?}");
                assert!(
                    !matches!(
                        err.as_diesel(),
                        Some(diesel::result::Error::BrokenTransactionManager)
                    ),
                    "the rollback's broken connection is hidden: {err:?}"
                );
            }
        }
    };
}

review_tests!(postgres, Pg, "postgres");
review_tests!(mysql, Mysql, "mysql");

#[cfg(all(feature = "async", feature = "deadpool", feature = "postgres"))]
mod async_postgres {
    use super::*;
    use crate::lost_commit::proxy::Proxy;
    use diesel_async::pooled_connection::{deadpool, AsyncDieselConnectionManager};
    use diesel_async::AsyncConnection;
    type Conn = diesel_async::AsyncPgConnection;

    use super::postgres::prepare;

    #[tokio::test(flavor = "multi_thread")]
    async fn async_pool_job_survives_a_broken_rollback_after_a_lock_conflict() {
        let (db, mut conn) = prepare();
        let proxy = Proxy::start_cutting(&db.url, "ROLLBACK", 1);
        let url = proxy.url(&db.url).replace("&gssencmode=disable", "");
        let pool = deadpool::Pool::builder(AsyncDieselConnectionManager::<Conn>::new(url))
            .max_size(2)
            .build()
            .unwrap();
        let (holder, locked) = hold_row::<Pg>(db.url.clone(), "held", Duration::from_millis(300));
        locked.recv().unwrap();
        let report = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .checkpoint("held")
            .max_retries(50)
            .update_all(&pool, counters::n.eq(counters::n + 1))
            .await;
        holder.join().unwrap();
        assert_eq!(
            proxy.answers_dropped(),
            1,
            "the proxy must have cut a ROLLBACK"
        );
        let report = report.expect("a broken connection is retried on a pool");
        assert!(report.done, "{report:?}");
        assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn async_lent_connection_reports_the_broken_rollback() {
        let (db, _conn) = prepare();
        let proxy = Proxy::start_cutting(&db.url, "ROLLBACK", 1);
        let url = proxy.url(&db.url).replace("&gssencmode=disable", "");
        let mut lent = Conn::establish(&url).await.unwrap();
        let (holder, locked) = hold_row::<Pg>(db.url.clone(), "held", Duration::from_millis(300));
        locked.recv().unwrap();
        let err = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .checkpoint("held")
            .update_all(&mut lent, counters::n.eq(counters::n + 1))
            .await
            .expect_err("the connection broke");
        holder.join().unwrap();
        assert_eq!(
            proxy.answers_dropped(),
            1,
            "the proxy must have cut a ROLLBACK"
        );
        assert!(
            !matches!(
                err.as_diesel(),
                Some(diesel::result::Error::BrokenTransactionManager)
            ),
            "the rollback's broken connection is hidden: {err:?}"
        );
    }
}

#[cfg(all(feature = "async", feature = "postgres"))]
mod async_cancel {
    use super::*;
    use diesel_async::AsyncConnection;

    /// The job future dropped while it waits between tries: the lent
    /// connection must be outside any transaction and usable.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_dropped_while_it_waits_leaves_its_connection_usable() {
        let (db, mut sync) = super::postgres::prepare();
        let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
            .await
            .unwrap();
        let (holder, locked) = hold_row::<Pg>(db.url.clone(), "held", Duration::from_millis(700));
        locked.recv().unwrap();
        let timed = tokio::time::timeout(
            Duration::from_millis(200),
            counters::table
                .chunked_by(counters::id)
                .batch_size(BATCH)
                .checkpoint("held")
                .update_all(&mut conn, counters::n.eq(counters::n + 1)),
        )
        .await;
        assert!(timed.is_err(), "{timed:?}");
        holder.join().unwrap();
        let report = counters::table
            .chunked_by(counters::id)
            .batch_size(BATCH)
            .checkpoint("held")
            .update_all(&mut conn, counters::n.eq(counters::n + 1))
            .await
            .unwrap();
        assert!(report.done);
        assert_eq!(counter_rows(&mut sync), at(1, ROWS, 1));
    }
}
