//! `explain()`'s verdicts on the three schemas of a `(created, id)` key
//! (composite index; non-unique index on `created` only; UNIQUE index on
//! `created` only) on every backend, the changed statement on MySQL/MariaDB
//! (ordered by the unique prefix), and the refusal of a plan that sorts every
//! batch.
#![cfg(feature = "chrono")]

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::{prelude::*, Error, Verdict};

diesel::table! {
    stamps (id) {
        id -> Integer,
        created -> Timestamp,
        body -> Text,
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = stamps)]
struct Stamp {
    id: i32,
    created: chrono::NaiveDateTime,
}

const ROWS: i64 = 3000;

/// Creates `stamps` with the index of `schema` and `ROWS` rows; `created`
/// repeats every other row unless the index is unique.
fn setup<C: Connection>(conn: &mut C, backend: &str, schema: &str) {
    let (ts_type, text) = match backend {
        "postgres" => ("TIMESTAMP", "TEXT"),
        "mysql" => ("DATETIME(6)", "VARCHAR(100)"),
        _ => ("TEXT", "TEXT"),
    };
    conn.batch_execute(&format!(
        "CREATE TABLE stamps (id INTEGER PRIMARY KEY, created {ts_type} NOT NULL, body {text} NOT NULL)"
    ))
    .unwrap();
    let index = match schema {
        "composite" => "CREATE INDEX stamps_created_id ON stamps (created, id)",
        "first" => "CREATE INDEX stamps_created ON stamps (created)",
        _ => "CREATE UNIQUE INDEX stamps_created ON stamps (created)",
    };
    conn.batch_execute(index).unwrap();
    let unique = schema == "unique";
    let mut values = Vec::new();
    for id in 1..=ROWS {
        let secs = if unique { id } else { id / 2 };
        values.push(format!(
            "({id}, '{}', 'x')",
            ts(secs * 60).format("%Y-%m-%d %H:%M:%S")
        ));
        if values.len() == 500 {
            conn.batch_execute(&format!("INSERT INTO stamps VALUES {}", values.join(", ")))
                .unwrap();
            values.clear();
        }
    }
    let analyze = match backend {
        "mysql" => "ANALYZE TABLE stamps",
        "postgres" => "ANALYZE stamps",
        _ => "ANALYZE",
    };
    conn.batch_execute(analyze).unwrap();
}

backend_tests! {
    fn composite_index_is_a_range(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "composite");
        let plan = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(100)
            .explain(&mut conn)
            .unwrap();
        eprintln!("{}: composite: {plan}", B::NAME);
        assert_eq!(plan.verdict, Verdict::IndexRangeInKeyOrder, "{plan}");
        assert_eq!(plan.index.as_deref(), Some("stamps_created_id"), "{plan}");
        assert_eq!((plan.suggestion, plan.order_columns), (None, 2));
    }

    fn first_column_index(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "first");
        let plan = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(100)
            .explain(&mut conn)
            .unwrap();
        eprintln!("{}: first column: {plan}", B::NAME);
        // the index holds the primary key after `created` (SQLite's rowid,
        // InnoDB's extended keys); PostgreSQL sorts the ties
        assert!(plan.verdict.is_index_range(), "{plan}");
        assert_eq!(plan.index.as_deref(), Some("stamps_created"), "{plan}");
        assert_eq!(plan.order_columns, 2);
        // a scan runs, in order, every row once
        let ids: Vec<i32> = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(100)
            .load_iter::<Stamp>(&mut conn)
            .map(|s| s.unwrap().id)
            .collect();
        assert_eq!(ids, (1..=ROWS as i32).collect::<Vec<_>>());
    }

    fn unique_first_column(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "unique");
        let plan = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(100)
            .explain(&mut conn)
            .unwrap();
        eprintln!("{}: unique first column: {plan}", B::NAME);
        assert!(plan.verdict.is_index_range(), "{plan}");
        assert_eq!(plan.index.as_deref(), Some("stamps_created"), "{plan}");
        // MySQL/MariaDB order by the unique prefix only
        let expected = if B::NAME == "mysql" { 1 } else { 2 };
        assert_eq!(plan.order_columns, expected);

        let log = QueryLog::install(&mut conn);
        let rows: Vec<(i32, chrono::NaiveDateTime)> = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(100)
            .load_iter::<Stamp>(&mut conn)
            .map(|s| s.map(|s| (s.id, s.created)).unwrap())
            .collect();
        assert_eq!(rows.len(), ROWS as usize);
        assert!(rows.windows(2).all(|w| w[0].1 < w[1].1 && w[0].0 < w[1].0));
        let batches: Vec<String> = log
            .selects()
            .into_iter()
            .filter(|q| q.contains("LIMIT"))
            .collect();
        assert_eq!(batches.len(), 30, "{batches:#?}");
        let order = if B::NAME == "mysql" {
            "ORDER BY stamps.created LIMIT"
        } else {
            "ORDER BY stamps.created, stamps.id LIMIT"
        };
        for sql in &batches {
            assert!(sql.replace(['`', '"'], "").contains(order), "{sql}");
        }
    }

    fn no_index_sorts(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "composite");
        // (body, id): no index starts with body
        let plan = stamps::table
            .chunked_by((stamps::body, stamps::id))
            .batch_size(100)
            .explain(&mut conn)
            .unwrap();
        eprintln!("{}: no index: {plan}", B::NAME);
        assert_eq!(plan.verdict, Verdict::SortsRemainingRows, "{plan}");
        assert_eq!(
            plan.suggestion.as_deref(),
            Some("create the index CREATE INDEX stamps_body_id ON stamps (body, id)")
        );
        let first = stamps::table
            .chunked_by((stamps::body, stamps::id))
            .batch_size(100)
            .load_iter::<Stamp>(&mut conn)
            .next()
            .unwrap();
        if B::NAME == "mysql" {
            // refused before any batch, with the index to create
            match first {
                Err(Error::SortsEveryBatch { columns, suggestion, plan }) => {
                    assert_eq!(columns, "(stamps.body, stamps.id)");
                    assert!(suggestion.contains("ON stamps (body, id)"), "{suggestion}");
                    assert!(plan.contains("filesort"), "{plan}");
                }
                other => panic!("{other:?}"),
            }
            // the opt-out
            let n = stamps::table
                .chunked_by((stamps::body, stamps::id))
                .batch_size(1000)
                .allow_sort()
                .load_iter::<Stamp>(&mut conn)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .len();
            assert_eq!(n, ROWS as usize);
        } else {
            // checked on MySQL/MariaDB only
            assert!(first.is_ok());
        }
    }

    /// A write job runs the scan's order check before its first batch: on
    /// MySQL/MariaDB a composite key that would sort the remaining rows in every
    /// batch is refused before anything is written (`allow_sort` opts out), and
    /// a key with a unique prefix orders its batches by that prefix.
    fn write_jobs_run_the_order_check(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "composite");
        let job = stamps::table
            .chunked_by((stamps::body, stamps::id))
            .batch_size(100)
            .update_all(&mut conn, stamps::created.eq(ts(10_000_000)));
        let changed = |conn: &mut Conn| -> i64 {
            stamps::table.filter(stamps::created.eq(ts(10_000_000))).count().get_result(conn).unwrap()
        };
        if B::NAME == "mysql" {
            match job {
                Err(Error::SortsEveryBatch { columns, suggestion, .. }) => {
                    assert_eq!(columns, "(stamps.body, stamps.id)");
                    assert!(suggestion.contains("ON stamps (body, id)"), "{suggestion}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(changed(&mut conn), 0, "refused before any batch");
            let report = stamps::table
                .chunked_by((stamps::body, stamps::id))
                .batch_size(1000)
                .allow_sort()
                .update_all(&mut conn, stamps::created.eq(ts(10_000_000)))
                .unwrap();
            assert_eq!(report.rows, ROWS as u64);
        } else {
            assert_eq!(job.unwrap().rows, ROWS as u64);
        }
        assert_eq!(changed(&mut conn), ROWS);
    }

    fn write_jobs_order_by_a_unique_prefix(db) {
        let mut conn = connect::<B>(&db);
        setup(&mut conn, B::NAME, "unique");
        let log = QueryLog::install(&mut conn);
        let report = stamps::table
            .chunked_by((stamps::created, stamps::id))
            .batch_size(500)
            .update_all(&mut conn, stamps::body.eq("z"))
            .unwrap();
        assert_eq!((report.rows, report.batches), (ROWS as u64, 6));
        let keys: Vec<String> = log
            .selects()
            .into_iter()
            .filter(|q| q.contains("LIMIT"))
            .collect();
        assert_eq!(keys.len(), 6, "{keys:#?}");
        let order = if B::NAME == "mysql" {
            "ORDER BY stamps.created LIMIT"
        } else {
            "ORDER BY stamps.created, stamps.id LIMIT"
        };
        for sql in &keys {
            assert!(sql.replace(['`', '"'], "").contains(order), "{sql}");
        }
    }
}
