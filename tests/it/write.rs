//! Batched writes on every backend: `update_all`, `delete_all` and
//! `for_each_batch`, each batch one transaction. Every write adds 1 to a
//! counter column `n`, so "exactly once" is checked row by row.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

diesel::table! {
    items (id) {
        id -> Integer,
        grp -> Integer,
        flag -> Bool,
        n -> Integer,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = items)]
struct Item {
    id: i32,
    grp: i32,
    flag: bool,
    n: i32,
}

/// Creates `items` with ids 1..=rows (every 7th id missing: gaps), `grp` =
/// id % 5, `flag` = id % 3 == 0, `n` = 0.
fn create_items<C: Connection>(conn: &mut C, rows: i32)
where
    C::Backend: diesel::backend::Backend,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, \
         flag BOOLEAN NOT NULL, n INTEGER NOT NULL)",
    )
    .execute(conn)
    .unwrap();
    let ids: Vec<i32> = (1..=rows).filter(|i| i % 7 != 0).collect();
    for chunk in ids.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "({i}, {}, {}, 0)",
                    i % 5,
                    if i % 3 == 0 { "TRUE" } else { "FALSE" }
                )
            })
            .collect();
        diesel::sql_query(format!(
            "INSERT INTO items (id, grp, flag, n) VALUES {}",
            values.join(", ")
        ))
        .execute(conn)
        .unwrap();
    }
}

/// `n` of every row, by id.
fn counters<C>(conn: &mut C) -> BTreeMap<i32, i32>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> items::table: diesel::query_dsl::LoadQuery<'a, C, Item>,
{
    let rows: Vec<Item> = items::table.load(conn).unwrap();
    rows.into_iter().map(|i| (i.id, i.n)).collect()
}

fn ids(rows: i32) -> Vec<i32> {
    (1..=rows).filter(|i| i % 7 != 0).collect()
}

backend_tests! {
    fn update_all_writes_every_row_exactly_once(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 1000);
        let log = QueryLog::install(&mut conn);

        let report = items::table
            .chunked_by(items::id)
            .batch_size(100)
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        let all = ids(1000);
        assert_eq!((report.rows, report.batches), (all.len() as u64, 9));
        assert_eq!(report.last_key, all.last().copied());
        assert!(report.done);
        // Per batch: BEGIN, SELECT of the keys, UPDATE of the range, COMMIT;
        // and in the first, one read of the schema for what else could move
        // the key (generated key columns, UPDATE triggers: none here).
        let updates: Vec<String> = log.all().into_iter().filter(|q| q.starts_with("UPDATE")).collect();
        assert_eq!(updates.len(), 9);
        let schema_read = |q: &String| {
            ["pragma_table_xinfo", "pg_trigger", "information_schema.TRIGGERS"].iter().any(|t| q.contains(t))
        };
        assert_eq!(log.all().iter().filter(|q| schema_read(q)).count(), 1, "{:#?}", log.all());
        assert_eq!(log.selects().iter().filter(|q| !schema_read(q)).count(), 9);
        assert!(counters(&mut conn).values().all(|&n| n == 1), "{:?}", counters(&mut conn));
        let shape = |q: &str| {
            let q = q.split(" -- binds").next().unwrap().replace(['"', '`'], "");
            (1..=3).fold(q, |q, i| q.replace(&format!("${i}"), "?"))
        };
        assert_eq!(shape(&updates[0]), "UPDATE items SET n = (items.n + ?) WHERE items.id <= ?");
        assert_eq!(shape(&updates[1]), "UPDATE items SET n = (items.n + ?) WHERE items.id > ? AND items.id <= ?");
    }

    fn an_update_that_changes_its_own_filter_writes_each_row_once(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 500);
        let report = items::table
            .filter(items::flag.eq(false))
            .chunked_by(items::id)
            .batch_size(17)
            .update_all(&mut conn, (items::flag.eq(true), items::n.eq(items::n + 1)))
            .unwrap();
        let expected: BTreeMap<i32, i32> = ids(500).into_iter().map(|i| (i, i32::from(i % 3 != 0))).collect();
        assert_eq!(counters(&mut conn), expected);
        assert_eq!(report.rows, expected.values().filter(|&&n| n == 1).count() as u64);
        // Run again: nothing matches any more.
        let again = items::table.filter(items::flag.eq(false)).chunked_by(items::id)
            .update_all(&mut conn, items::n.eq(items::n + 1)).unwrap();
        assert_eq!((again.rows, again.batches), (0, 0));
    }

    fn delete_all_deletes_exactly_the_matching_rows(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 700);
        let report = items::table
            .filter(items::grp.eq(2))
            .chunked_by(items::id)
            .batch_size(9)
            .desc()
            .delete_all(&mut conn)
            .unwrap();
        let left: Vec<i32> = counters(&mut conn).into_keys().collect();
        let expected: Vec<i32> = ids(700).into_iter().filter(|i| i % 5 != 2).collect();
        assert_eq!(left, expected);
        assert_eq!(report.rows as usize, ids(700).len() - expected.len());
    }

    fn composite_keys_bounds_and_limits_apply(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 300);
        let all = ids(300);
        // (grp, id) ascending, only grp 1..=3 by bounds, at most 40 rows.
        let report = items::table
            .chunked_by((items::grp, items::id))
            .batch_size(7)
            .start_after((0, i32::MAX))
            .end_at((3, i32::MAX))
            .limit_total(40)
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        let mut in_range: Vec<(i32, i32)> = all.iter().map(|&i| (i % 5, i)).filter(|&(g, _)| (1..=3).contains(&g)).collect();
        in_range.sort();
        let written: Vec<i32> = in_range.iter().take(40).map(|&(_, i)| i).collect();
        let c = counters(&mut conn);
        for i in &all {
            assert_eq!(c[i], i32::from(written.contains(i)), "id {i}");
        }
        assert_eq!((report.rows, report.done, report.last_key), (40, false, Some(in_range[39])));

        // Descending, within a partition of the scan.
        let parts = items::table.chunked_by(items::id).partitions(3, &mut conn).unwrap();
        let report = items::table.chunked_by(items::id).within(&parts[1]).desc().batch_size(11)
            .update_all(&mut conn, items::n.eq(items::n + 10)).unwrap();
        assert_eq!(report.rows, parts[1].rows);
        let c = counters(&mut conn);
        for i in &all {
            assert_eq!(c[i] >= 10, parts[1].contains(i), "id {i}");
        }
    }

    /// With `target_batch_time`, the first batch too is within
    /// `[min_batch_size, max_batch_size]`: its statement asks for at most
    /// `max + 1` rows (the look-ahead row) and writes at most `max`.
    fn the_first_sized_batch_is_within_min_and_max(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 400);
        let all = ids(400);
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&sizes);
        let log = QueryLog::install(&mut conn);
        let report = items::table
            .chunked_by(items::id)
            .batch_size(1000)
            .max_batch_size(10)
            .target_batch_time(std::time::Duration::from_secs(1))
            .limit_total(25)
            .throttle(move |s| { seen.lock().unwrap().push((s.batch, s.rows)); None })
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.first(), Some(&(1, 10)), "{sizes:?}");
        assert!(sizes.iter().all(|&(_, rows)| rows <= 10), "{sizes:?}");
        assert_eq!(report.rows, 25);
        let first = &log.selects()[0];
        assert!(first.contains("LIMIT 11") || first.ends_with(", 11]") || first.ends_with("[11]"), "{first}");
        let c = counters(&mut conn);
        for (k, i) in all.iter().enumerate() {
            assert_eq!(c[i], i32::from(k < 25), "id {i}");
        }

        // Below the minimum: the first batch is the minimum.
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&sizes);
        items::table
            .chunked_by(items::id)
            .batch_size(5)
            .min_batch_size(40)
            .target_batch_time(std::time::Duration::from_secs(1))
            .limit_total(80)
            .throttle(move |s| { seen.lock().unwrap().push((s.batch, s.rows)); None })
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.first(), Some(&(1, 40)), "{sizes:?}");
        let c = counters(&mut conn);
        for (k, i) in all.iter().enumerate() {
            assert_eq!(c[i], i32::from(k < 25) + i32::from(k < 80), "id {i}");
        }
    }

    /// `pause(Duration::MAX)` and a throttle: the wait after a batch saturates
    /// at `Duration::MAX` instead of overflowing. A one-batch job never
    /// waits; a longer one is still waiting after its first batch (it would
    /// wait for ever), not panicking.
    fn a_pause_of_duration_max_does_not_overflow(db) {
        use std::time::Duration;
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 100);
        let r = items::table
            .chunked_by(items::id)
            .batch_size(1000)
            .pause(Duration::MAX)
            .throttle(|_| Some(Duration::from_secs(1)))
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        assert_eq!((r.rows, r.batches, r.done), (ids(100).len() as u64, 1, true));
        assert!(r.elapsed < Duration::from_secs(60));
        assert!(counters(&mut conn).values().all(|&n| n == 1));

        let (tx, rx) = std::sync::mpsc::channel();
        let mut other = connect::<B>(&db);
        let job = std::thread::spawn(move || {
            items::table
                .chunked_by(items::id)
                .batch_size(10)
                .pause(Duration::MAX)
                .throttle(move |s| {
                    let _ = tx.send(s.batch);
                    Some(Duration::from_secs(1))
                })
                .update_all(&mut other, items::n.eq(items::n + 1))
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(1));
        // Still waiting after batch 1 (a panic, backtrace included, ends the
        // thread well within this time); the thread is left asleep (it holds no
        // transaction and no lock).
        let watched = std::time::Instant::now();
        while watched.elapsed() < Duration::from_secs(2) && !job.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!job.is_finished(), "the job ended: {:?}", job.join());
        let c = counters(&mut conn);
        for (k, i) in ids(100).iter().enumerate() {
            assert_eq!(c[i], 1 + i32::from(k < 10), "id {i}");
        }
    }

    fn a_failing_closure_rolls_back_its_batch_and_stops(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn, 200);
        let all = ids(200);
        let mut calls = 0;
        let err = items::table
            .chunked_by(items::id)
            .batch_size(10)
            .for_each_batch(&mut conn, |conn, batch: Vec<Item>| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                calls += 1;
                for it in &batch {
                    diesel::update(items::table.find(it.id)).set(items::n.eq(items::n + 1)).execute(conn)?;
                }
                if calls == 3 {
                    return Err("third batch refused".into());
                }
                Ok(())
            })
            .unwrap_err();
        match &err {
            Error::Batch { batch, last_committed, source } => {
                assert_eq!((*batch, last_committed.as_deref()), (3, Some(all[19].to_string().as_str())));
                assert_eq!(source.to_string(), "third batch refused");
            }
            other => panic!("expected Error::Batch, got {other:?}"),
        }
        let c = counters(&mut conn);
        for (k, i) in all.iter().enumerate() {
            assert_eq!(c[i], i32::from(k < 20), "id {i}: only the first two batches committed");
        }

        // A closure returning a Diesel error (QueryResult) works the same way.
        let err = items::table.chunked_by(items::id).batch_size(10)
            .for_each_batch(&mut conn, |_, _: Vec<Item>| -> QueryResult<()> { Err(diesel::result::Error::NotFound) })
            .unwrap_err();
        assert!(matches!(&err, Error::Batch { batch: 1, last_committed: None, .. }), "{err:?}");
        let Error::Batch { source, .. } = err else { unreachable!() };
        assert!(matches!(source.downcast_ref::<diesel::result::Error>(), Some(diesel::result::Error::NotFound)));
    }
}
