//! Write jobs whose connection breaks at the worst moments, on the real
//! servers: right after the server committed a batch and before its answer
//! reached the client (a proxy in the test drops the answer to one `COMMIT`
//! and closes the connection), while the closure of `for_each_batch` runs (the
//! connection is terminated from another one), and a closure that panics.
//!
//! Every row is checked one by one: a counter column `n` that each write adds 1
//! to (`update_all`), the rows left (`delete_all`), and a copy of each key into
//! a table whose primary key refuses a second copy (`for_each_batch`).

use crate::common;
#[cfg(all(feature = "r2d2", any(feature = "postgres", feature = "mysql")))]
#[path = "common/proxy.rs"]
pub(crate) mod proxy;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, Error};

diesel::table! {
    counters (id) {
        id -> Integer,
        n -> Integer,
    }
}

diesel::table! {
    copies (id) {
        id -> Integer,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = counters)]
pub(crate) struct Counter {
    pub(crate) id: i32,
    pub(crate) n: i32,
}

/// Rows in `counters`.
pub(crate) const ROWS: i32 = 100;
/// Rows per batch: 10 batches.
pub(crate) const BATCH: u64 = 10;

/// Creates `counters` with rows `1..=rows`, all at `n = 0`, and an empty
/// `copies`.
pub(crate) fn create_tables<C>(conn: &mut C, rows: i32)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(conn)
        .unwrap();
    diesel::sql_query("CREATE TABLE copies (id INTEGER PRIMARY KEY)")
        .execute(conn)
        .unwrap();
    if rows > 0 {
        let values: Vec<String> = (1..=rows).map(|i| format!("({i}, 0)")).collect();
        diesel::sql_query(format!(
            "INSERT INTO counters (id, n) VALUES {}",
            values.join(", ")
        ))
        .execute(conn)
        .unwrap();
    }
}

/// Every row of `counters` as `(id, n)`, by id.
pub(crate) fn counter_rows<C>(conn: &mut C) -> Vec<(i32, i32)>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> diesel::dsl::Order<
        diesel::dsl::Select<counters::table, (counters::id, counters::n)>,
        counters::id,
    >: diesel::query_dsl::LoadQuery<'a, C, (i32, i32)>,
{
    counters::table
        .select((counters::id, counters::n))
        .order(counters::id)
        .load(conn)
        .unwrap()
}

/// Every id in `copies`, in order.
pub(crate) fn copy_ids<C>(conn: &mut C) -> Vec<i32>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> diesel::dsl::Order<diesel::dsl::Select<copies::table, copies::id>, copies::id>:
        diesel::query_dsl::LoadQuery<'a, C, i32>,
{
    copies::table
        .select(copies::id)
        .order(copies::id)
        .load(conn)
        .unwrap()
}

/// `(id, n)` for rows `from..=to` all at `n`.
pub(crate) fn at(from: i32, to: i32, n: i32) -> Vec<(i32, i32)> {
    (from..=to).map(|id| (id, n)).collect()
}

/// The tests through the proxy, for one server backend.
#[cfg(feature = "r2d2")]
macro_rules! lost_commit_tests {
    ($module:ident, $backend:ty, $feature:literal, $kill:literal, $own_id:literal) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use crate::lost_commit::proxy::Proxy;
            use diesel::r2d2::{ConnectionManager, Pool};

            type B = $backend;
            type Conn = <B as TestBackend>::Conn;

            /// A pool of 2 connections to the test's database through a proxy
            /// that loses the answer to the `cut_at`-th `COMMIT`.
            fn proxied(db: &TestDb, cut_at: usize) -> (Proxy, Pool<ConnectionManager<Conn>>) {
                let proxy = Proxy::start(&db.url, cut_at);
                let pool = Pool::builder()
                    .max_size(2)
                    .build(ConnectionManager::<Conn>::new(proxy.url(&db.url)))
                    .expect("a pool through the proxy");
                (proxy, pool)
            }

            /// The error of a job whose third batch's `COMMIT` answer was lost:
            /// batch 3, keys 21 to 30 after 20. Returns its last key, parsed.
            fn assert_commit_unknown(err: &Error) -> i32 {
                match err {
                    Error::CommitUnknown {
                        batch: 3,
                        after: Some(after),
                        first,
                        last,
                        checkpoint: None,
                        source,
                    } => {
                        assert_eq!(
                            (after.as_str(), first.as_str(), last.as_str()),
                            ("20", "21", "30")
                        );
                        assert!(err.as_diesel().is_some_and(|e| std::ptr::eq(e, &**source)));
                    }
                    other => panic!("expected CommitUnknown for batch 3, got {other:?}"),
                }
                let text = err.to_string();
                for part in [
                    "batch 3 may have committed",
                    "COMMIT was sent",
                    "keys 21 to 30",
                    "after key 20",
                    "start_after(30)",
                    "start_after(20)",
                    ".checkpoint(name)",
                ] {
                    assert!(text.contains(part), "{part:?} not in: {text}");
                }
                match err {
                    Error::CommitUnknown { last, .. } => last.parse().unwrap(),
                    _ => unreachable!(),
                }
            }

            /// `update_all` (`n = n + 1`) loses batch 3's answer after the server
            /// committed it. Without a checkpoint the job stops with
            /// `CommitUnknown` instead of writing batch 3 again, and a rerun
            /// after its last key finishes with every row at exactly 1; with a
            /// checkpoint the job goes on by itself, exactly once.
            #[test]
            fn update_all_with_a_lost_commit_answer_writes_every_row_once() {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                checkpoint::create_table(&mut conn).unwrap();

                let (proxy, pool) = proxied(&db, 3);
                let err = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .expect_err("the job must stop at the lost answer");
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                let last = assert_commit_unknown(&err);
                // The server committed batch 3; nothing ran it again.
                let mut expected = at(1, 30, 1);
                expected.extend(at(31, ROWS, 0));
                assert_eq!(counter_rows(&mut conn), expected);
                let rest = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .start_after(last)
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!((rest.rows, rest.done), (70, true));
                assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));

                let (proxy, pool) = proxied(&db, 3);
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("bump")
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done && report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
                assert_eq!(counter_rows(&mut conn), at(1, ROWS, 2));
                let c = checkpoint::status(&mut conn, "bump").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (ROWS as u64, 10, true));
            }

            /// On one connection, which is never retried, a checkpointed job
            /// whose batch 3 answer is lost stops with `CommitUnknown` naming
            /// its checkpoint; run again, it resumes right after batch 3, which
            /// the server committed.
            #[test]
            fn a_job_on_one_connection_resumes_from_its_checkpoint() {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                checkpoint::create_table(&mut conn).unwrap();
                let proxy = Proxy::start(&db.url, 3);
                let mut lost = Conn::establish(&proxy.url(&db.url)).unwrap();
                let job = || {
                    counters::table
                        .chunked_by(counters::id)
                        .batch_size(BATCH)
                        .checkpoint("bump")
                };
                let err = job()
                    .update_all(&mut lost, counters::n.eq(counters::n + 1))
                    .expect_err("the job must stop at the lost answer");
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                match &err {
                    Error::CommitUnknown {
                        batch: 3,
                        first,
                        last,
                        checkpoint: Some(name),
                        ..
                    } => {
                        assert_eq!(
                            (first.as_str(), last.as_str(), name.as_str()),
                            ("21", "30", "bump")
                        );
                    }
                    other => panic!("expected CommitUnknown for batch 3, got {other:?}"),
                }
                let text = err.to_string();
                assert!(
                    text.contains("run the job again: its checkpoint \"bump\""),
                    "{text}"
                );
                let rest = job()
                    .update_all(&mut conn, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!(rest.resumed_after, Some(30));
                assert_eq!(
                    (rest.rows, rest.total_rows, rest.total_batches, rest.done),
                    (70, 100, 10, true)
                );
                assert_eq!(counter_rows(&mut conn), at(1, ROWS, 1));
            }

            /// `delete_all` loses batch 3's answer: without a checkpoint the job
            /// stops with `CommitUnknown` (rows 1 to 30 gone, the others left),
            /// a rerun after its last key deletes the rest; with a checkpoint
            /// the job finishes by itself and counts each row once.
            #[test]
            fn delete_all_with_a_lost_commit_answer_deletes_every_row_once() {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                checkpoint::create_table(&mut conn).unwrap();

                let (proxy, pool) = proxied(&db, 3);
                let err = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .delete_all(&pool)
                    .expect_err("the job must stop at the lost answer");
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                let last = assert_commit_unknown(&err);
                assert_eq!(counter_rows(&mut conn), at(31, ROWS, 0));
                let rest = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .start_after(last)
                    .delete_all(&pool)
                    .unwrap();
                assert_eq!((rest.rows, rest.done), (70, true));
                assert_eq!(counter_rows(&mut conn), vec![]);

                create_tables_again(&mut conn);
                let (proxy, pool) = proxied(&db, 3);
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("purge")
                    .delete_all(&pool)
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done && report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
                assert_eq!(counter_rows(&mut conn), vec![]);
                let c = checkpoint::status(&mut conn, "purge").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (ROWS as u64, 10, true));
            }

            /// Refills `counters` with rows `1..=ROWS` at `n = 0`.
            fn create_tables_again(conn: &mut Conn) {
                let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, 0)")).collect();
                diesel::sql_query(format!(
                    "INSERT INTO counters (id, n) VALUES {}",
                    values.join(", ")
                ))
                .execute(conn)
                .unwrap();
            }

            /// Copies each batch's keys into `copies`, whose primary key refuses
            /// a second copy.
            fn copy(conn: &mut Conn, batch: Vec<Counter>) -> QueryResult<()> {
                for c in &batch {
                    diesel::insert_into(copies::table)
                        .values(copies::id.eq(c.id))
                        .execute(conn)?;
                }
                Ok(())
            }

            /// `for_each_batch` loses batch 3's answer: without a checkpoint the
            /// job stops with `CommitUnknown`, not with a duplicate key said to
            /// be rolled back; a rerun after its last key copies the rest, each
            /// key once. With a checkpoint the job finishes by itself.
            #[test]
            fn for_each_batch_with_a_lost_commit_answer_runs_every_batch_once() {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                checkpoint::create_table(&mut conn).unwrap();

                let (proxy, pool) = proxied(&db, 3);
                let err = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .for_each_batch(&pool, copy)
                    .expect_err("the job must stop at the lost answer");
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                let last = assert_commit_unknown(&err);
                assert_eq!(copy_ids(&mut conn), (1..=30).collect::<Vec<_>>());
                let rest = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .start_after(last)
                    .for_each_batch(&pool, copy)
                    .unwrap();
                assert_eq!((rest.rows, rest.done), (70, true));
                assert_eq!(copy_ids(&mut conn), (1..=ROWS).collect::<Vec<_>>());

                diesel::delete(copies::table).execute(&mut conn).unwrap();
                let (proxy, pool) = proxied(&db, 3);
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .checkpoint("copy")
                    .for_each_batch(&pool, copy)
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done && report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
                assert_eq!(copy_ids(&mut conn), (1..=ROWS).collect::<Vec<_>>());
            }

            /// A checkpointed job on an empty table: its only batch commits
            /// `done` and the answer is lost. The retry finds the checkpoint
            /// done and reports the job done.
            #[test]
            fn an_empty_job_whose_only_commit_answer_is_lost_is_done() {
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, 0);
                checkpoint::create_table(&mut conn).unwrap();
                let (proxy, pool) = proxied(&db, 1);
                let report = counters::table
                    .chunked_by(counters::id)
                    .checkpoint("empty")
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done, "{report:?}");
                assert_eq!((report.rows, report.batches, report.last_key), (0, 0, None));
                let c = checkpoint::status(&mut conn, "empty").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (0, 0, true));

                // Without a checkpoint, the lost answer of an empty batch
                // changes nothing either.
                let (proxy, pool) = proxied(&db, 1);
                let report = counters::table
                    .chunked_by(counters::id)
                    .update_all(&pool, counters::n.eq(counters::n + 1))
                    .unwrap();
                assert_eq!(proxy.answers_dropped(), 1, "the proxy must have cut");
                assert!(report.done, "{report:?}");
            }

            /// The connection of a batch is terminated from another connection
            /// while the closure runs (between two of its inserts): nothing was
            /// committed, so the batch is retried on another connection, and
            /// every key is copied once.
            #[test]
            fn a_connection_terminated_inside_the_closure_is_retried() {
                #[derive(QueryableByName)]
                struct Id {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    id: i64,
                }
                let db = <B as TestBackend>::create();
                let mut conn = <B as TestBackend>::connect(&db);
                create_tables(&mut conn, ROWS);
                let pool = Pool::builder()
                    .max_size(2)
                    .build(ConnectionManager::<Conn>::new(&db.url))
                    .unwrap();
                let mut killer = <B as TestBackend>::connect(&db);
                let mut calls = 0;
                let mut killed = 0;
                let report = counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .for_each_batch(&pool, |conn, batch: Vec<Counter>| -> QueryResult<()> {
                        calls += 1;
                        for (i, c) in batch.iter().enumerate() {
                            if calls == 2 && i == 5 {
                                let own = diesel::sql_query($own_id).get_result::<Id>(conn)?.id;
                                diesel::sql_query(format!($kill, own))
                                    .execute(&mut killer)
                                    .unwrap();
                                killed += 1;
                            }
                            diesel::insert_into(copies::table)
                                .values(copies::id.eq(c.id))
                                .execute(conn)?;
                        }
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("the job must retry the batch: {e}"));
                assert_eq!(killed, 1);
                assert!(report.done && report.retries >= 1, "{report:?}");
                assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
                assert_eq!(copy_ids(&mut conn), (1..=ROWS).collect::<Vec<_>>());
            }
        }
    };
}

#[cfg(feature = "r2d2")]
lost_commit_tests!(
    pg,
    common::Pg,
    "postgres",
    "SELECT pg_terminate_backend({})",
    "SELECT CAST(pg_backend_pid() AS BIGINT) AS id"
);
#[cfg(feature = "r2d2")]
lost_commit_tests!(
    mysql,
    common::Mysql,
    "mysql",
    "KILL CONNECTION {}",
    "SELECT CAST(CONNECTION_ID() AS SIGNED) AS id"
);

mod panics {
    use super::*;

    backend_tests! {
        /// A closure that panics in a job on `&mut conn`: the batch's
        /// transaction is rolled back before the panic goes on, so the
        /// connection is outside any transaction, the panicking batch's writes
        /// are gone and the batch before it stays committed.
        fn a_panicking_closure_leaves_no_open_transaction(db) {
            use diesel::connection::{AnsiTransactionManager, TransactionManager};
            let mut conn = connect::<B>(&db);
            create_tables(&mut conn, ROWS);
            let mut calls = 0;
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                counters::table
                    .chunked_by(counters::id)
                    .batch_size(BATCH)
                    .for_each_batch(&mut conn, |conn, batch: Vec<Counter>| -> QueryResult<()> {
                        calls += 1;
                        for c in &batch {
                            diesel::insert_into(copies::table).values(copies::id.eq(c.id)).execute(conn)?;
                        }
                        if calls == 2 {
                            panic!("the closure panics");
                        }
                        Ok(())
                    })
            }));
            let payload = panicked.expect_err("the panic goes on");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"the closure panics"));
            let depth = AnsiTransactionManager::transaction_manager_status_mut(&mut conn)
                .transaction_depth()
                .unwrap();
            assert_eq!(depth, None, "the connection is left in a transaction");
            assert_eq!(copy_ids(&mut conn), (1..=10).collect::<Vec<_>>());
            // The connection works, and what it commits is seen by others.
            conn.transaction(|conn| {
                diesel::insert_into(copies::table).values(copies::id.eq(500)).execute(conn)
            })
            .unwrap();
            let mut other = connect::<B>(&db);
            let mut expected: Vec<i32> = (1..=10).collect();
            expected.push(500);
            assert_eq!(copy_ids(&mut other), expected);
        }
    }
}
