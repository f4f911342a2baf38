//! Write jobs with checkpoints on every backend: resume after a run that
//! stopped, a finished job run again, reset, a checkpoint of another key, two
//! runners of one job at once, a process killed with SIGKILL while a batch's
//! transaction is open, and (PostgreSQL, MariaDB) a writer of rows outside
//! the open batch that is never blocked. A counter column `n` checks "exactly
//! once" row by row.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, Error, WriteReport};

diesel::table! {
    items (id) {
        id -> Integer,
        n -> Integer,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = items)]
struct Item {
    id: i32,
    n: i32,
}

const ROWS: i32 = 600;

fn create_items<C>(conn: &mut C)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(conn)
        .unwrap();
    let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, 0)")).collect();
    diesel::sql_query(format!(
        "INSERT INTO items (id, n) VALUES {}",
        values.join(", ")
    ))
    .execute(conn)
    .unwrap();
}

fn counters<C>(conn: &mut C) -> BTreeMap<i32, i32>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> items::table: diesel::query_dsl::LoadQuery<'a, C, Item>,
{
    let rows: Vec<Item> = items::table.load(conn).unwrap();
    rows.into_iter().map(|i| (i.id, i.n)).collect()
}

/// A `for_each_batch` closure that adds 1 to `n` of each row of its batch.
fn bump<C>(conn: &mut C, batch: Vec<Item>) -> QueryResult<()>
where
    C: Connection,
    for<'a> diesel::dsl::Update<
        diesel::dsl::Find<items::table, i32>,
        diesel::dsl::Eq<items::n, diesel::dsl::Add<items::n, i32>>,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    for it in &batch {
        diesel::update(items::table.find(it.id))
            .set(items::n.eq(items::n + 1))
            .execute(conn)?;
    }
    Ok(())
}

fn all_once(c: &BTreeMap<i32, i32>) -> bool {
    c.len() == ROWS as usize && c.values().all(|&n| n == 1)
}

backend_tests! {
    fn a_dry_run_starts_where_the_checkpoint_resumes_and_writes_nothing(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=50);
        let job = || posts::table.chunked_by(posts::id).batch_size(10).checkpoint("dry");
        // no checkpoint table yet: from the start
        let dry = job().dry_run(&mut conn).unwrap();
        assert_eq!((dry.resumes_after.as_deref(), dry.checkpoint_done), (None, false));
        assert_eq!(dry.first_keys, Some(("1".into(), "10".into())));
        checkpoint::create_table(&mut conn).unwrap();
        let first = job().limit_total(30).update_all(&mut conn, posts::title.eq("x")).unwrap();
        assert_eq!(first.rows, 30);
        let dry = job().dry_run(&mut conn).unwrap();
        assert_eq!(dry.resumes_after.as_deref(), Some("30"));
        assert!(!dry.checkpoint_done);
        assert_eq!(dry.first_keys, Some(("31".into(), "40".into())));
        assert!(dry.first_batch.ends_with("-- binds: [30, 11]"), "{}", dry.first_batch);
        assert!(dry.later_batch.as_deref().unwrap().ends_with("-- binds: [40, 11]"), "{dry}");
        assert!(dry.to_string().starts_with("checkpoint: resumes after key 30\n"), "{dry}");
        let titles: Vec<String> = posts::table.select(posts::title).order(posts::id).load(&mut conn).unwrap();
        assert_eq!(titles.iter().filter(|t| *t == "x").count(), 30, "the dry run wrote nothing");
        let rest = job().update_all(&mut conn, posts::title.eq("x")).unwrap();
        assert_eq!((rest.rows, rest.done), (20, true));
        let dry = job().dry_run(&mut conn).unwrap();
        assert!(dry.checkpoint_done, "{dry}");
        assert_eq!(dry.first_keys, None);
    }
    /// An update of a key column would meet the rows it moves ahead of the scan
    /// again (`id = id + 1000` would never end): refused before any batch.
    fn an_update_of_the_key_is_refused(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        let err = items::table
            .chunked_by(items::id)
            .batch_size(50)
            .update_all(&mut conn, (items::n.eq(1), items::id.eq(items::id + 1000)))
            .unwrap_err();
        match &err {
            Error::KeyChanged { column, columns } => {
                assert_eq!((column.as_str(), columns.as_str()), ("items.id", "items.id"));
            }
            other => panic!("{other:?}"),
        }
        assert!(counters(&mut conn).values().all(|&n| n == 0), "nothing written");
        // a composite key: any of its columns
        let err = items::table
            .chunked_by((items::n, items::id))
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap_err();
        assert!(matches!(err, Error::KeyChanged { ref column, .. } if column == "items.n"), "{err}");
        // columns outside the key are fine
        let report = items::table
            .chunked_by(items::id)
            .batch_size(50)
            .update_all(&mut conn, items::n.eq(items::n + 1))
            .unwrap();
        assert_eq!(report.rows, ROWS as u64);
        assert!(all_once(&counters(&mut conn)));
    }

    fn a_job_resumes_after_its_last_committed_batch(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        checkpoint::create_table(&mut conn).unwrap();
        let job = || items::table.chunked_by(items::id).batch_size(50).checkpoint("bump");

        // A run stopped by limit_total, then by a failing batch, then to the end
        // (one job: the same query, key and kind each time).
        let first = job().limit_total(120).for_each_batch(&mut conn, bump).unwrap();
        assert_eq!((first.rows, first.batches, first.last_key, first.done), (120, 3, Some(120), false));
        let mut calls = 0;
        let err = job()
            .for_each_batch(&mut conn, |conn, batch: Vec<Item>| -> QueryResult<()> {
                calls += 1;
                for it in &batch {
                    diesel::update(items::table.find(it.id)).set(items::n.eq(items::n + 1)).execute(conn)?;
                }
                if calls == 2 { Err(diesel::result::Error::RollbackTransaction) } else { Ok(()) }
            })
            .unwrap_err();
        assert!(matches!(&err, Error::Batch { batch: 2, last_committed: Some(k), .. } if k == "170"), "{err:?}");
        let c = checkpoint::status(&mut conn, "bump").unwrap().unwrap();
        assert_eq!((c.rows, c.batches, c.done), (170, 4, false));
        let rest = job().for_each_batch(&mut conn, bump).unwrap();
        assert_eq!(rest.resumed_after, Some(170));
        assert_eq!((rest.rows, rest.total_rows, rest.total_batches, rest.done), (430, 600, 13, true));
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));

        // Finished: a rerun does nothing.
        let again = job().for_each_batch(&mut conn, bump).unwrap();
        assert_eq!((again.rows, again.batches, again.done), (0, 0, true));
        assert!(all_once(&counters(&mut conn)));

        // Reset: it runs from the start again.
        checkpoint::reset(&mut conn, "bump").unwrap();
        assert_eq!(checkpoint::status(&mut conn, "bump").unwrap(), None);
        let over = job().update_all(&mut conn, items::n.eq(items::n - 1)).unwrap();
        assert_eq!((over.rows, over.resumed_after), (600, None));
        assert!(counters(&mut conn).values().all(|&n| n == 0));

        // The same name with another key: a clear error, nothing written.
        checkpoint::reset(&mut conn, "bump").unwrap();
        job().limit_total(10).update_all(&mut conn, items::n.eq(items::n + 1)).unwrap();
        let err = items::table.chunked_by((items::n, items::id)).checkpoint("bump")
            .for_each_batch(&mut conn, |_, _: Vec<Item>| QueryResult::Ok(())).unwrap_err();
        assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err:?}");
        assert_eq!(counters(&mut conn).values().sum::<i32>(), 10);
    }

    /// Two jobs under one name, with the same key but another query (other
    /// filters, other bind values, another kind of write, other changes, other
    /// bounds): the second is refused and writes nothing; the first, run
    /// again, resumes where it stopped and writes each of its rows once.
    fn a_name_reused_by_another_query_is_refused(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let first = || items::table.filter(items::id.le(300)).chunked_by(items::id).batch_size(50).checkpoint("reused");
        let stopped = first().limit_total(100).update_all(&mut conn, items::n.eq(items::n + 1)).unwrap();
        assert_eq!((stopped.rows, stopped.last_key, stopped.done), (100, Some(100), false));
        let row = checkpoint::status(&mut conn, "reused").unwrap().unwrap();
        let stored = row.query_fingerprint.clone().expect("a fingerprint");
        assert!(stored.starts_with("update_all "), "{stored}");
        let expected: BTreeMap<i32, i32> = (1..=ROWS).map(|i| (i, i32::from(i <= 100))).collect();
        assert_eq!(counters(&mut conn), expected);

        let refused = |r: Result<WriteReport<i32>, Error>| match r {
            Err(Error::CheckpointMismatch { name, stored, expected }) => {
                assert_eq!(name, "reused");
                assert_ne!(stored, expected);
                format!("{stored} / {expected}")
            }
            other => panic!("expected CheckpointMismatch, got {other:?}"),
        };
        let add = items::n.eq(items::n + 1);
        // Other filters (the issue's case: 300 rows, 99 of them below 101).
        let other = || items::table.filter(items::id.gt(300)).chunked_by(items::id).batch_size(50).checkpoint("reused");
        let text = refused(other().update_all(&mut conn, add));
        assert!(text.contains(&stored), "{text}");
        // The same SQL with another bind value.
        refused(items::table.filter(items::id.le(200)).chunked_by(items::id).checkpoint("reused").update_all(&mut conn, add));
        // Other changes, another kind of write.
        refused(first().update_all(&mut conn, items::n.eq(items::n + 2)));
        refused(first().delete_all(&mut conn));
        refused(first().for_each_batch(&mut conn, bump));
        // Other bounds.
        refused(first().start_after(150).update_all(&mut conn, add));
        refused(first().desc().update_all(&mut conn, add));
        assert_eq!(counters(&mut conn), expected, "nothing written by a refused job");
        assert_eq!(checkpoint::status(&mut conn, "reused").unwrap().unwrap(), row);

        // The job itself, run again, resumes after its last committed batch;
        // batch_size and limit_total are not part of what it is.
        let rest = first().batch_size(70).update_all(&mut conn, add).unwrap();
        assert_eq!((rest.resumed_after, rest.rows, rest.total_rows, rest.done), (Some(100), 200, 300, true));
        let expected: BTreeMap<i32, i32> = (1..=ROWS).map(|i| (i, i32::from(i <= 300))).collect();
        assert_eq!(counters(&mut conn), expected);
        // Finished: still refused to the other query, and nothing to do for itself.
        refused(other().update_all(&mut conn, add));
        let again = first().update_all(&mut conn, add).unwrap();
        assert_eq!((again.rows, again.batches, again.done), (0, 0, true));
        assert_eq!(counters(&mut conn), expected);
        // Another name runs the other query in full.
        let second = items::table.filter(items::id.gt(300)).chunked_by(items::id).batch_size(50)
            .checkpoint("reused-2").update_all(&mut conn, add).unwrap();
        assert_eq!((second.rows, second.done), (300, true));
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
    }

    /// The slices of a partitioned job, each under its own name: a slice run
    /// again resumes; another slice under a taken name is refused.
    fn a_slice_resumes_under_its_name_and_no_other(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let parts = items::table.chunked_by(items::id).partitions(3, &mut conn).unwrap();
        let slice = |i: usize| items::table.chunked_by(items::id).within(&parts[i]).batch_size(40);
        let add = items::n.eq(items::n + 1);
        let stopped = slice(1).checkpoint("slices/1").limit_total(80).update_all(&mut conn, add).unwrap();
        assert!(!stopped.done);
        let err = slice(2).checkpoint("slices/1").update_all(&mut conn, add).unwrap_err();
        assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err:?}");
        let rest = slice(1).checkpoint("slices/1").update_all(&mut conn, add).unwrap();
        assert_eq!((rest.resumed_after, rest.total_rows, rest.done), (stopped.last_key, parts[1].rows, true));
        for i in [0, 2] {
            let r = slice(i).checkpoint(format!("slices/{i}")).update_all(&mut conn, add).unwrap();
            assert_eq!((r.rows, r.done), (parts[i].rows, true));
        }
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
    }

    /// A checkpoint table made before `query_fingerprint` existed: a job is
    /// refused with a clear error until `create_table` adds the column; then
    /// the job resumes from its row, which takes the job's fingerprint.
    fn a_table_of_the_earlier_version_is_upgraded(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        let ddl = match <B as TestBackend>::NAME {
            "sqlite" => checkpoint::CREATE_TABLE_SQLITE,
            "postgres" => checkpoint::CREATE_TABLE_POSTGRES,
            _ => checkpoint::CREATE_TABLE_MYSQL,
        };
        let old = ddl.replace(",\n    query_fingerprint TEXT", "");
        assert_ne!(old, ddl);
        diesel::sql_query(old).execute(&mut conn).unwrap();
        // A job of the earlier version stopped after 100 rows.
        for i in 1..=100 {
            diesel::update(items::table.find(i)).set(items::n.eq(1)).execute(&mut conn).unwrap();
        }
        let last_key = r#"{"value":100,"exact":true}"#;
        diesel::sql_query(format!(
            "INSERT INTO chunked_checkpoints (name, key_type, last_key, rows_done, batches_done) \
             VALUES ('old', 'items.id as i32', '{last_key}', 100, 2)"
        ))
        .execute(&mut conn)
        .unwrap();
        let job = || items::table.chunked_by(items::id).batch_size(50).checkpoint("old");
        let err = job().for_each_batch(&mut conn, bump).unwrap_err();
        assert!(matches!(err, Error::CheckpointTableOutdated { .. }), "{err:?}");
        assert!(err.to_string().contains("checkpoint::create_table"), "{err}");
        let err = checkpoint::status(&mut conn, "old").unwrap_err();
        assert!(matches!(err, Error::CheckpointTableOutdated { .. }), "{err:?}");
        assert!(counters(&mut conn).iter().all(|(&id, &n)| n == i32::from(id <= 100)));

        checkpoint::create_table(&mut conn).unwrap();
        checkpoint::create_table(&mut conn).unwrap();
        let row = checkpoint::status(&mut conn, "old").unwrap().unwrap();
        assert_eq!((row.rows, row.batches, row.last_key.as_deref(), row.query_fingerprint), (100, 2, Some(last_key), None));
        let rest = job().for_each_batch(&mut conn, bump).unwrap();
        assert_eq!((rest.resumed_after, rest.rows, rest.total_rows, rest.done), (Some(100), 500, 600, true));
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
        let fp = checkpoint::status(&mut conn, "old").unwrap().unwrap().query_fingerprint.unwrap();
        assert!(fp.starts_with("for_each_batch "), "{fp}");
        let err = job().update_all(&mut conn, items::n.eq(items::n + 1)).unwrap_err();
        assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err:?}");
        assert!(all_once(&counters(&mut conn)));
    }

    /// A batch with a checkpoint is six statements, in this order, and no
    /// savepoint: BEGIN (on MySQL/MariaDB with its isolation level, sent as
    /// one), the checkpoint row's lock, the key query, the range UPDATE, the
    /// checkpoint's advance, COMMIT.
    fn a_batch_with_a_checkpoint_is_six_statements(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let log = QueryLog::install(&mut conn);
        let r = items::table.chunked_by(items::id).batch_size(100).checkpoint("six")
            .update_all(&mut conn, items::n.eq(items::n + 1)).unwrap();
        assert_eq!((r.rows, r.batches, r.done), (600, 6, true));
        assert!(all_once(&counters(&mut conn)));
        let all = log.all();
        assert!(!all.iter().any(|q| q.to_uppercase().contains("SAVEPOINT")), "{all:#?}");
        let kind = |q: &str| -> &'static str {
            let q = q.to_uppercase();
            if q.starts_with("BEGIN") || q.starts_with("SET TRANSACTION") {
                assert_eq!(q.starts_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN"), <B as TestBackend>::NAME == "mysql", "{q}");
                "begin"
            } else if q.starts_with("COMMIT") {
                "commit"
            } else if q.contains("CHUNKED_CHECKPOINTS") && q.starts_with("SELECT") {
                "checkpoint"
            } else if q.contains("CHUNKED_CHECKPOINTS") && q.starts_with("UPDATE") {
                "advance"
            } else if q.starts_with("SELECT") && q.contains("ITEMS") && q.contains("LIMIT") {
                "keys"
            } else if q.starts_with("UPDATE") && q.contains("ITEMS") {
                "update"
            } else {
                "other"
            }
        };
        // The third batch, as every batch after the first (which reads the
        // schema besides): from its BEGIN to the next batch's.
        let begins: Vec<usize> = all.iter().enumerate().filter(|(_, q)| kind(q) == "begin").map(|(i, _)| i).collect();
        assert_eq!(begins.len(), 6, "{all:#?}");
        let third = &all[begins[2]..begins[3]];
        let kinds: Vec<&str> = third.iter().map(|q| kind(q)).collect();
        assert_eq!(kinds, ["begin", "checkpoint", "keys", "update", "advance", "commit"], "{all:#?}");
        // The lock: FOR UPDATE NOWAIT (SQLite's BEGIN IMMEDIATE is its lock).
        assert_eq!(third[1].contains("FOR UPDATE NOWAIT"), <B as TestBackend>::NAME != "sqlite", "{}", third[1]);
        assert_eq!(third[0].starts_with("BEGIN IMMEDIATE"), <B as TestBackend>::NAME == "sqlite", "{}", third[0]);
    }

    /// Without the checkpoint table, or with a name the table cannot hold, a
    /// job stops with a clear error before any statement of its own.
    fn a_missing_table_or_a_bad_name_is_a_clear_error(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        let log = QueryLog::install(&mut conn);
        let err = items::table.chunked_by(items::id).checkpoint("job")
            .update_all(&mut conn, items::n.eq(items::n + 1)).unwrap_err();
        assert!(matches!(err, Error::CheckpointTableMissing { .. }), "{err:?}");
        assert!(err.to_string().starts_with("the checkpoint table chunked_checkpoints is missing: create it once with checkpoint::create_table"), "{err}");
        assert!(!log.all().iter().any(|q| q.contains("items")), "{:?}", log.all());
        for e in [checkpoint::status(&mut conn, "job").unwrap_err(), checkpoint::reset(&mut conn, "job").unwrap_err()] {
            assert!(matches!(e, Error::CheckpointTableMissing { .. }), "{e:?}");
        }

        checkpoint::create_table(&mut conn).unwrap();
        log.clear();
        for (name, says) in [
            ("x".repeat(256), "256 characters"),
            ("a\0b".to_string(), "U+0000"),
            ("line\nbreak".to_string(), "U+000A"),
            (String::new(), "empty"),
        ] {
            let err = items::table.chunked_by(items::id).checkpoint(name.clone())
                .update_all(&mut conn, items::n.eq(items::n + 1)).unwrap_err();
            match &err {
                Error::InvalidCheckpointName { name: n, reason } => {
                    assert_eq!(n, &name);
                    assert!(reason.contains(says), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            let err = checkpoint::status(&mut conn, &name).unwrap_err();
            assert!(matches!(err, Error::InvalidCheckpointName { .. }), "{err:?}");
            let err = checkpoint::reset(&mut conn, &name).unwrap_err();
            assert!(matches!(err, Error::InvalidCheckpointName { .. }), "{err:?}");
        }
        assert_eq!(log.all(), Vec::<String>::new(), "no statement ran");
        // 255 characters, however many bytes, are fine.
        let name = "é".repeat(255);
        let r = items::table.chunked_by(items::id).batch_size(100).checkpoint(name.clone())
            .update_all(&mut conn, items::n.eq(items::n + 1)).unwrap();
        assert_eq!((r.rows, r.done), (600, true));
        assert!(checkpoint::status(&mut conn, &name).unwrap().unwrap().done);
        assert!(all_once(&counters(&mut conn)));
    }

    /// Bounds that hold no key: the job is finished (and its checkpoint too),
    /// nothing written, whether it has run before or not.
    fn a_job_with_empty_bounds_is_done(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let add = items::n.eq(items::n + 1);
        let empty = |lo: i32, hi: i32| items::table.chunked_by(items::id).start_after(lo).end_at(hi);
        for (i, (lo, hi)) in [(100, 50), (100, 100)].into_iter().enumerate() {
            let name = format!("empty-{i}");
            let r = empty(lo, hi).checkpoint(name.clone()).update_all(&mut conn, add).unwrap();
            assert_eq!((r.rows, r.batches, r.done), (0, 0, true));
            let c = checkpoint::status(&mut conn, &name).unwrap().unwrap();
            assert_eq!((c.rows, c.batches, c.done, c.last_key), (0, 0, true, None));
            let again = empty(lo, hi).checkpoint(name.clone()).update_all(&mut conn, add).unwrap();
            assert_eq!((again.rows, again.done), (0, true));
            let r = empty(lo, hi).checkpoint(format!("{name}-delete")).delete_all(&mut conn).unwrap();
            assert!(r.done);
            let r = empty(lo, hi).checkpoint(format!("{name}-each"))
                .for_each_batch(&mut conn, |_, b: Vec<Item>| -> QueryResult<()> { panic!("a batch of {b:?}") })
                .unwrap();
            assert!(r.done);
            assert!(checkpoint::status(&mut conn, &format!("{name}-each")).unwrap().unwrap().done);
            // And without a checkpoint.
            let r = empty(lo, hi).update_all(&mut conn, add).unwrap();
            assert_eq!((r.rows, r.done), (0, true));
        }
        assert!(counters(&mut conn).values().all(|&n| n == 0));
        assert_eq!(counters(&mut conn).len(), ROWS as usize);
    }

    fn two_runners_of_one_job_never_both_write_a_batch(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let run = |gate: Arc<Barrier>, first: bool| {
            let mut conn = connect::<B>(&db);
            let mut calls = 0;
            items::table.chunked_by(items::id).batch_size(40).checkpoint("shared")
                .for_each_batch(&mut conn, move |conn, batch: Vec<Item>| -> QueryResult<()> {
                    calls += 1;
                    for it in &batch {
                        diesel::update(items::table.find(it.id)).set(items::n.eq(items::n + 1)).execute(conn)?;
                    }
                    if first && calls == 1 {
                        gate.wait(); // the other runner starts now, while this batch is open
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Ok(())
                })
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| run(Arc::clone(&gate), true));
            gate.wait();
            let b = s.spawn(|| run(Arc::clone(&gate), false));
            (a.join().unwrap(), b.join().unwrap())
        });
        let busy = |r: &Result<_, Error>| matches!(r, Err(Error::CheckpointBusy { .. }));
        assert!(busy(&a) != busy(&b), "exactly one runner must stop: {a:?} / {b:?}");
        let winner = if busy(&a) { b } else { a }.unwrap();
        assert!(winner.done);
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
    }

    /// A run started while the job's checkpoint row is still locked by a
    /// runner that died inside a batch (the server has not yet noticed its
    /// closed connection and rolled its transaction back; here another
    /// connection holds the row and lets it go after 700 ms) waits for the
    /// row and resumes exactly, instead of stopping with `CheckpointBusy`.
    fn a_run_started_before_a_dead_runner_s_lock_is_gone_waits_for_it(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let job = || items::table.chunked_by(items::id).batch_size(50).checkpoint("held");
        let first = job().limit_total(150).for_each_batch(&mut conn, bump).unwrap();
        assert_eq!((first.rows, first.batches, first.done), (150, 3, false));

        let mut holder = connect::<B>(&db);
        let locked = Barrier::new(2);
        let log = QueryLog::install(&mut conn);
        let (report, held) = std::thread::scope(|s| {
            let held = s.spawn(|| {
                holder.transaction(|c| {
                    // Locks the row (SQLite: takes the database's write lock).
                    diesel::sql_query("UPDATE chunked_checkpoints SET rows_done = rows_done WHERE name = 'held'")
                        .execute(c)?;
                    locked.wait();
                    std::thread::sleep(Duration::from_millis(700));
                    Err::<(), _>(diesel::result::Error::RollbackTransaction)
                })
            });
            locked.wait(); // the row is locked now
            let report = job().for_each_batch(&mut conn, bump);
            (report, held.join().unwrap())
        });
        assert_eq!(held, Err(diesel::result::Error::RollbackTransaction));
        let report = report.unwrap();
        assert_eq!((report.resumed_after, report.rows, report.total_batches, report.done), (Some(150), 450, 12, true));
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
        // No savepoint: the first batch found the row held, so its transaction,
        // in which only the lock ran, was rolled back and begun again (SQLite
        // waits in its BEGIN IMMEDIATE instead).
        let all = log.all();
        assert!(!all.iter().any(|q| q.to_uppercase().contains("SAVEPOINT")), "{all:#?}");
        if <B as TestBackend>::NAME != "sqlite" {
            let lock = all.iter().position(|q| q.contains("FOR UPDATE NOWAIT")).unwrap();
            assert!(all[lock + 1].starts_with("ROLLBACK"), "{all:#?}");
            let again = &all[lock + 2];
            assert!(again.starts_with("BEGIN") || again.starts_with("SET TRANSACTION"), "{all:#?}");
            assert!(all[lock + 3].contains("FOR UPDATE NOWAIT"), "{all:#?}");
        }
    }

    fn a_runner_killed_inside_a_batch_resumes_exactly(db) {
        let mut conn = connect::<B>(&db);
        create_items(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let marker = std::env::temp_dir().join(unique_name("crash-marker"));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "write_jobs::crash_child", "--nocapture", "--test-threads=1"])
            .env("CHUNKED_CRASH_URL", &db.url)
            .env("CHUNKED_CRASH_MARKER", &marker)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The child commits 3 batches and stops inside the 4th, its transaction open.
        let started = Instant::now();
        while !marker.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "the child never reached batch 4");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the child exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let _ = std::fs::remove_file(&marker);

        let c = checkpoint::status(&mut conn, "crash").unwrap().unwrap();
        assert_eq!((c.batches, c.rows, c.done), (3, 150, false));
        let before = counters(&mut conn);
        assert!(before.iter().all(|(&id, &n)| n == i32::from(id <= 150)), "{before:?}");

        let report = items::table.chunked_by(items::id).batch_size(50).checkpoint("crash")
            .for_each_batch(&mut conn, bump).unwrap();
        assert_eq!((report.resumed_after, report.rows, report.done), (Some(150), 450, true));
        assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
    }
}

/// A checkpoint row that another transaction holds for longer than a run
/// waits for it (a live runner's long batch, or a dead runner's that the
/// server has not noticed): the run stops with `CheckpointBusy` once its wait
/// of 5 s is over, and writes nothing. Were the wait endless, the holder would
/// give the row up after a minute and the run would go on. PostgreSQL and
/// MariaDB: on SQLite the write lock is waited for by the `busy_timeout`.
macro_rules! held_lock_test {
    ($name:ident, $backend:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        #[test]
        fn $name() {
            let db = <$backend as TestBackend>::create();
            let mut conn = <$backend as TestBackend>::connect(&db);
            create_items(&mut conn);
            checkpoint::create_table(&mut conn).unwrap();
            let job = || {
                items::table
                    .chunked_by(items::id)
                    .batch_size(50)
                    .checkpoint("held")
            };
            job()
                .limit_total(150)
                .for_each_batch(&mut conn, bump)
                .unwrap();
            let mut holder = <$backend as TestBackend>::connect(&db);
            let locked = Barrier::new(2);
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (result, waited) = std::thread::scope(|s| {
                let (holder, locked) = (&mut holder, &locked);
                let held = s.spawn(move || {
                    holder.transaction(|c| {
                        diesel::sql_query(
                            "UPDATE chunked_checkpoints SET rows_done = rows_done WHERE name = 'held'",
                        )
                        .execute(c)?;
                        locked.wait();
                        let _ = released.recv_timeout(Duration::from_secs(60));
                        Err::<(), _>(diesel::result::Error::RollbackTransaction)
                    })
                });
                locked.wait(); // the row is locked now, until the run returns
                let t = Instant::now();
                let result = job().for_each_batch(&mut conn, bump);
                let waited = t.elapsed();
                release.send(()).unwrap();
                assert!(held.join().unwrap().is_err());
                (result, waited)
            });
            assert!(
                matches!(&result, Err(Error::CheckpointBusy { name }) if name == "held"),
                "{result:?}"
            );
            assert!(waited >= Duration::from_secs(5), "gave up after {waited:?}");
            let c = counters(&mut conn);
            assert!(
                c.iter().all(|(&id, &n)| n == i32::from(id <= 150)),
                "{c:?}"
            );
            let row = checkpoint::status(&mut conn, "held").unwrap().unwrap();
            assert_eq!((row.rows, row.batches, row.done), (150, 3, false));
        }
    };
}

held_lock_test!(
    postgres_a_lock_held_longer_than_the_wait_is_checkpoint_busy,
    common::Pg,
    "postgres"
);
held_lock_test!(
    mariadb_a_lock_held_longer_than_the_wait_is_checkpoint_busy,
    common::Mysql,
    "mysql"
);

/// The process `a_runner_killed_inside_a_batch_resumes_exactly` kills: run by
/// that test only (it is ignored otherwise).
#[test]
#[ignore = "run as a child process by a_runner_killed_inside_a_batch_resumes_exactly"]
fn crash_child() {
    let url = std::env::var("CHUNKED_CRASH_URL").expect("CHUNKED_CRASH_URL");
    let marker = std::env::var("CHUNKED_CRASH_MARKER").expect("CHUNKED_CRASH_MARKER");
    macro_rules! run {
        ($conn:ty) => {{
            let mut conn = <$conn>::establish(&url).unwrap();
            let mut calls = 0;
            let _ = items::table
                .chunked_by(items::id)
                .batch_size(50)
                .checkpoint("crash")
                .for_each_batch(
                    &mut conn,
                    |conn: &mut $conn, batch: Vec<Item>| -> QueryResult<()> {
                        calls += 1;
                        for it in &batch {
                            diesel::update(items::table.find(it.id))
                                .set(items::n.eq(items::n + 1))
                                .execute(conn)?;
                        }
                        if calls == 4 {
                            std::fs::write(&marker, "in batch 4").unwrap();
                            std::thread::sleep(Duration::from_secs(120));
                        }
                        Ok(())
                    },
                );
        }};
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        run!(diesel::PgConnection);
        return;
    }
    #[cfg(feature = "mysql")]
    if url.starts_with("mysql") {
        run!(diesel::MysqlConnection);
        return;
    }
    #[cfg(feature = "sqlite")]
    run!(diesel::SqliteConnection);
}

/// While a batch's transaction is open (each row's update sleeps in the
/// database, 5 rows a batch), another connection updates a row of a later batch
/// with a short lock timeout: it is not blocked. A row of the open batch is:
/// the same update of its first row, right after, times out.
///
/// No clock is read: the other connection first waits until the batch holds
/// its first row (a `FOR UPDATE NOWAIT` read of it fails), and the update of
/// that row failing after the outside update shows the batch was open all
/// through it. So had the outside update met a lock of the batch, it would
/// have waited past its lock timeout and failed.
macro_rules! outside_writer_test {
    ($name:ident, $backend:ty, $feature:literal, $sleep:literal, $timeout:literal) => {
        #[cfg(feature = $feature)]
        #[test]
        fn $name() {
            let db = <$backend as TestBackend>::create();
            let mut conn = <$backend as TestBackend>::connect(&db);
            create_items(&mut conn);
            let mut other = <$backend as TestBackend>::connect(&db);
            diesel::sql_query($timeout).execute(&mut other).unwrap();
            let (outside, inside) = std::thread::scope(|s| {
                let job = s.spawn(|| {
                    items::table
                        .chunked_by(items::id)
                        .batch_size(5)
                        .limit_total(5)
                        .update_all(
                            &mut conn,
                            items::n
                                .eq(items::n
                                    + diesel::dsl::sql::<diesel::sql_types::Integer>($sleep)),
                        )
                });
                // Wait until the batch is open and has locked its first row.
                loop {
                    let probe = items::table
                        .find(1)
                        .select(items::id)
                        .for_update()
                        .no_wait()
                        .first::<i32>(&mut other);
                    match probe {
                        Ok(_) => {
                            assert!(!job.is_finished(), "the batch never held row 1");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => {
                            assert!(checkpoint::is_lock_conflict(&e), "{e:?}");
                            break;
                        }
                    }
                }
                let outside = diesel::update(items::table.find(300))
                    .set(items::n.eq(items::n + 10))
                    .execute(&mut other);
                let inside = diesel::update(items::table.find(1))
                    .set(items::n.eq(items::n + 10))
                    .execute(&mut other);
                let report = job.join().unwrap().unwrap();
                assert_eq!(report.rows, 5);
                (outside, inside)
            });
            assert_eq!(outside, Ok(1), "a row of a later batch must not wait");
            let inside = inside.expect_err("a row of the open batch is locked");
            assert!(checkpoint::is_lock_conflict(&inside), "{inside:?}");
            let c = counters(&mut conn);
            assert_eq!((c[&1], c[&5], c[&300], c[&6]), (1, 1, 10, 0));
        }
    };
}

outside_writer_test!(
    postgres_writers_outside_the_open_batch_are_not_blocked,
    common::Pg,
    "postgres",
    "(SELECT 1 FROM pg_sleep(0.2 + 0 * items.n))",
    "SET lock_timeout = '100ms'"
);
outside_writer_test!(
    mariadb_writers_outside_the_open_batch_are_not_blocked,
    common::Mysql,
    "mysql",
    "(1 + 0 * SLEEP(0.6 + 0 * items.n))",
    "SET SESSION innodb_lock_wait_timeout = 1"
);

/// A JetStream slice whose bounds hold no key (`start_after == end_at`) is a
/// finished job: its worker records it done and acknowledges it, with its
/// checkpoint done, instead of failing it on every delivery.
#[cfg(all(feature = "jetstream", feature = "sqlite"))]
#[test]
fn an_empty_jetstream_slice_is_done() {
    use diesel_chunked_iterator::jetstream::{Job, JobOptions, SliceState, Worker};
    use diesel_chunked_iterator::Partition;

    let db = <common::Sqlite as TestBackend>::create();
    let mut conn = <common::Sqlite as TestBackend>::connect(&db);
    create_items(&mut conn);
    checkpoint::create_table(&mut conn).unwrap();
    let slice = |index, lo, hi| Partition {
        index,
        start_after: lo,
        end_at: hi,
        rows: 0,
    };
    let parts = vec![
        slice(0, None, Some(300)),
        slice(1, Some(300), Some(300)),
        slice(2, Some(300), None),
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = common::server_url("NATS_URL", "nats://127.0.0.1:4222");
    let name = unique_name("empty-slice");
    let (status, report) = rt.block_on(async {
        let js =
            async_nats::jetstream::new(async_nats::connect(&url).await.expect("NATS is reachable"));
        let options = JobOptions::default()
            .max_deliveries(1)
            .retry_delay(Duration::from_millis(10));
        let job = Job::publish_with(&js, &name, &parts, options)
            .await
            .unwrap();
        let url = db.url.clone();
        let report = Worker::new(&js, &name)
            .poll(Duration::from_millis(100))
            .run(move |s| {
                let mut conn = <common::Sqlite as TestBackend>::Conn::establish(&url).unwrap();
                items::table
                    .chunked_by(items::id)
                    .within(s)
                    .batch_size(100)
                    .checkpoint(s.checkpoint_name())
                    .throttle(s.progress())
                    .for_each_batch(&mut conn, bump)
            })
            .await
            .unwrap();
        let status = job.wait(Duration::from_millis(100)).await.unwrap();
        job.delete().await.unwrap();
        (status, report)
    });
    assert_eq!((status.done, status.failed), (3, 0), "{status:?}");
    assert!(
        status.slice.iter().all(|s| s.state == SliceState::Done),
        "{status:?}"
    );
    assert_eq!(
        (report.done, report.failed, report.rows),
        (3, 0, ROWS as u64)
    );
    let empty = checkpoint::status(&mut conn, &format!("{name}/slice-1"))
        .unwrap()
        .unwrap();
    assert_eq!((empty.done, empty.rows, empty.batches), (true, 0, 0));
    assert!(all_once(&counters(&mut conn)), "{:?}", counters(&mut conn));
}
