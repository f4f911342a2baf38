//! The sampled planner, `partitions_sampled(n)`: slices from a sample of the
//! keys (row addresses on PostgreSQL, index probes on MariaDB/MySQL and SQLite).
//!
//! "Covering" is checked exactly: the slices scanned one after the other with
//! `within` give the rows of a single scan, in order, each once. "Balanced" is
//! checked against the rows each slice really yields: every slice holds between
//! `ideal / 1.5` and `1.5 · ideal` rows (`ideal = rows / n`), on uniform,
//! skewed and gappy keys, with the sampling statements in the log (not a read of
//! every key). The draws come from a fixed seed, so these sizes are the same on
//! every run.

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{Error, Partition};

/// Scans each slice of `posts` by id and returns the ids slice by slice.
macro_rules! scan_slices {
    ($conn:expr, $query:expr, $parts:expr) => {
        $parts
            .iter()
            .map(|p| {
                $query
                    .chunked_by(posts::id)
                    .within(p)
                    .batch_size(2_000)
                    .load_iter::<Post>(&mut *$conn)
                    .map(|r| r.expect("slice scan").id)
                    .collect::<Vec<i32>>()
            })
            .collect::<Vec<_>>()
    };
}

/// Covering, touching, open ends, and every slice within 1.5× of the ideal.
fn check_sampled<T: PartialEq + std::fmt::Debug>(
    parts: &[Partition<T>],
    slices: &[Vec<T>],
    ids: &[T],
    n: usize,
    what: &str,
) {
    assert_eq!(parts.len(), n, "{what}: n = {n}");
    assert_eq!(
        parts.iter().map(|p| p.index).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    assert_eq!(parts[0].start_after, None, "{what}: open below");
    assert_eq!(parts[n - 1].end_at, None, "{what}: open above");
    for w in parts.windows(2) {
        assert_eq!(w[0].end_at, w[1].start_after, "{what}: slices touch");
    }
    let union: Vec<&T> = slices.iter().flatten().collect();
    assert_eq!(
        union,
        ids.iter().collect::<Vec<_>>(),
        "{what}: n = {n}: every row exactly once, in order"
    );
    let ideal = ids.len() as f64 / n as f64;
    let sizes: Vec<usize> = slices.iter().map(Vec::len).collect();
    eprintln!(
        "DBG {what} n={n} {sizes:?} est={}",
        parts.iter().map(|p| p.rows).sum::<u64>()
    );
    for (i, s) in sizes.iter().enumerate() {
        let s = *s as f64;
        assert!(
            s <= 1.5 * ideal && s >= ideal / 1.5,
            "{what}: n = {n}, slice {i} holds {s} rows, ideal {ideal}: {sizes:?}"
        );
    }
    // the estimated sizes add up to about the rows
    let estimated: u64 = parts.iter().map(|p| p.rows).sum();
    let rows = ids.len() as f64;
    assert!(
        (estimated as f64) > 0.8 * rows && (estimated as f64) < 1.2 * rows,
        "{what}: n = {n}: estimated {estimated} rows of {rows}"
    );
}

/// Whether the log shows the sampling statements, not a read of every key.
fn sampled(log: &QueryLog) -> bool {
    let all = log.all();
    all.iter().any(|q| q.contains("ctid = ANY")) || all.iter().any(|q| q.contains(" UNION ALL "))
}

/// 30,000 ids: uniform, skewed (90 % of the rows in 10 % of the range), and
/// dense runs separated by gaps of 100,000.
fn key_sets() -> [(&'static str, Vec<i32>); 3] {
    [
        ("uniform", (1..=30_000).collect()),
        (
            "skewed",
            (1..=27_000)
                .chain((1..=3_000).map(|i| 27_000 + i * 81))
                .collect(),
        ),
        (
            "gappy",
            (0..6)
                .flat_map(|run| (1..=5_000).map(move |i| run * 100_000 + i * (1 + run % 2)))
                .collect(),
        ),
    ]
}

backend_tests! {
    fn sampled_slices_cover_and_balance_uniform_skewed_and_gappy_keys(db) {
        let mut conn = connect::<B>(&db);
        let log = QueryLog::install(&mut conn);
        for (what, ids) in key_sets() {
            diesel::delete(posts::table).execute(&mut conn).unwrap();
            insert_posts(&mut conn, ids.iter().copied());
            if B::NAME == "postgres" {
                diesel::sql_query("VACUUM ANALYZE posts").execute(&mut conn).unwrap();
            }
            for n in [2usize, 5, 8, 16] {
                log.clear();
                let parts = posts::table.chunked_by(posts::id).partitions_sampled(n, &mut conn).unwrap();
                assert!(sampled(&log), "{what}: n = {n}: sampled, not read: {:?}", log.all().first());
                let slices = scan_slices!(&mut conn, posts::table, &parts);
                check_sampled(&parts, &slices, &ids, n, what);
            }
        }
    }

    /// Keys `1..=20,000` with outliers at the ends of the key's type: one row at
    /// 2147483647 (`i32`), and rows at `i64::MIN` and `i64::MAX` (`i64`). The
    /// probes of a range that the outliers make 10⁵ to 10¹⁵ times wider than
    /// the dense keys must still find them: every slice within 1.5× of the
    /// ideal, the estimate within 20 % of the rows.
    fn sampled_slices_balance_with_outliers_at_the_ends_of_the_key_range(db) {
        let mut conn = connect::<B>(&db);
        let log = QueryLog::install(&mut conn);
        let ids: Vec<i32> = (1..=20_000).chain([i32::MAX]).collect();
        // (a time stamp of its own: MariaDB's TIMESTAMP ends in 2038)
        let rows: Vec<Post> = ids.iter().map(|&id| Post { created_at: ts(0), ..post(id) }).collect();
        insert_post_rows(&mut conn, &rows);
        let events: Vec<Event> = [(i64::MIN, -1)]
            .into_iter()
            .chain((1..=20_000).map(|i| (i, i as i16)))
            .chain([(i64::MAX, -2)])
            .map(|(id, code)| event(id, code))
            .collect();
        insert_events(&mut conn, &events);
        let event_ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        if B::NAME == "postgres" {
            diesel::sql_query("VACUUM ANALYZE posts").execute(&mut conn).unwrap();
            diesel::sql_query("VACUUM ANALYZE events").execute(&mut conn).unwrap();
        }
        for n in [2usize, 5, 8, 16] {
            log.clear();
            let parts = posts::table.chunked_by(posts::id).partitions_sampled(n, &mut conn).unwrap();
            assert!(sampled(&log), "i32: n = {n}: sampled, not read");
            let slices = scan_slices!(&mut conn, posts::table, &parts);
            check_sampled(&parts, &slices, &ids, n, "i32 with a row at 2147483647");

            log.clear();
            let parts = events::table.chunked_by(events::id).partitions_sampled(n, &mut conn).unwrap();
            assert!(sampled(&log), "i64: n = {n}: sampled, not read");
            let slices: Vec<Vec<i64>> = parts
                .iter()
                .map(|p| {
                    events::table
                        .chunked_by(events::id)
                        .within(p)
                        .batch_size(5_000)
                        .load_iter::<Event>(&mut conn)
                        .map(|e| e.unwrap().id)
                        .collect()
                })
                .collect();
            check_sampled(&parts, &slices, &event_ids, n, "i64 with rows at i64::MIN and i64::MAX");
        }
    }

    fn sampled_slices_of_filtered_and_joined_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_users(&mut conn, &(1..=3).map(user).collect::<Vec<_>>());
        let ids: Vec<i32> = (1..=18_000).chain((1..=2_000).map(|i| 18_000 + i * 50)).collect();
        insert_posts(&mut conn, ids.iter().copied());
        let log = QueryLog::install(&mut conn);

        // a filter: half of the rows
        let published: Vec<i32> = ids.iter().copied().filter(|i| i % 2 == 0).collect();
        let query = || posts::table.filter(posts::published.eq(true));
        let parts = query().chunked_by(posts::id).partitions_sampled(6, &mut conn).unwrap();
        assert!(sampled(&log));
        let slices = scan_slices!(&mut conn, query(), &parts);
        check_sampled(&parts, &slices, &published, 6, "filtered");

        // a join: the key's table is sampled, the other one joined to it
        let joined = || posts::table.inner_join(users::table).filter(users::id.ne(2)).select(posts::id);
        let kept: Vec<i32> = ids.iter().copied().filter(|i| i % 3 + 1 != 2).collect();
        log.clear();
        let parts = joined().chunked_by(posts::id).partitions_sampled(4, &mut conn).unwrap();
        assert!(sampled(&log));
        let slices: Vec<Vec<i32>> = parts
            .iter()
            .map(|p| {
                joined()
                    .chunked_by(posts::id)
                    .within(p)
                    .load_iter_keyed(&mut conn, |id: &i32| *id)
                    .map(|r| r.unwrap())
                    .collect()
            })
            .collect();
        check_sampled(&parts, &slices, &kept, 4, "joined");
    }

    fn sampled_slices_carry_the_scans_bounds(db) {
        let mut conn = connect::<B>(&db);
        let ids: Vec<i32> = (1..=30_000).collect();
        insert_posts(&mut conn, ids.iter().copied());

        // start_after / end_at: the outer ends of the slices
        let parts = posts::table
            .chunked_by(posts::id)
            .start_after(2_000)
            .end_at(26_000)
            .partitions_sampled(4, &mut conn)
            .unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].start_after, Some(2_000));
        assert_eq!(parts[3].end_at, Some(26_000));
        let slices = scan_slices!(&mut conn, posts::table, &parts);
        let union: Vec<i32> = slices.iter().flatten().copied().collect();
        assert_eq!(union, (2_001..=26_000).collect::<Vec<_>>());
        for s in &slices {
            assert!(s.len() >= 4_000 && s.len() <= 9_000, "{}", s.len());
        }

        // a within() slice is split again, inside its own ends
        let outer = Partition { index: 0, start_after: Some(5_000), end_at: Some(25_000), rows: 0 };
        let parts = posts::table
            .chunked_by(posts::id)
            .within(&outer)
            .partitions_sampled(2, &mut conn)
            .unwrap();
        assert_eq!((parts[0].start_after, parts[1].end_at), (Some(5_000), Some(25_000)));
        let slices = scan_slices!(&mut conn, posts::table, &parts);
        assert_eq!(slices.concat(), (5_001..=25_000).collect::<Vec<_>>());

        // a descending scan without bounds: the ascending scan's slices
        let desc = posts::table.chunked_by(posts::id).desc().partitions_sampled(3, &mut conn).unwrap();
        let asc = posts::table.chunked_by(posts::id).partitions_sampled(3, &mut conn).unwrap();
        assert_eq!(desc, asc);
        // ... and with bounds, the error of `partitions`
        let err = posts::table
            .chunked_by(posts::id)
            .desc()
            .start_after(100)
            .partitions_sampled(3, &mut conn)
            .unwrap_err();
        assert!(matches!(err, Error::PartitionBounds { .. }), "{err}");
    }

    fn index_probes_have_the_documented_shape_and_count(db) {
        if B::NAME == "postgres" {
            return; // row addresses there, checked above
        }
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30_000);
        let log = QueryLog::install(&mut conn);
        let n = 8usize;
        let parts = posts::table.chunked_by(posts::id).partitions_sampled(n, &mut conn).unwrap();
        assert_eq!(parts.len(), n);
        let statements = log.all();
        let (terms, first): (usize, &str) = (
            statements.iter().map(|q| q.matches(" UNION ALL ").count() + 1).sum(),
            &statements[0],
        );
        if B::NAME == "mysql" {
            // MIN/MAX of the key, answered from the index
            assert!(
                first.starts_with("SELECT MIN(chunked_q0.chunked_k0) AS chunked_k0 FROM (SELECT"),
                "{first}"
            );
            assert!(first.contains(") chunked_q0 HAVING MIN(chunked_q0.chunked_k0) IS NOT NULL UNION ALL SELECT MAX(chunked_q1.chunked_k0)"), "{first}");
            assert!(!statements.iter().any(|q| q.contains("LIMIT")), "no LIMIT probes: {first}");
        } else {
            assert!(first.starts_with("SELECT chunked_q0.chunked_k0 FROM (SELECT"), "{first}");
            assert!(first.contains(" ORDER BY chunked_k0 LIMIT 1) chunked_q0 UNION ALL "), "{first}");
            assert!(first.contains(" ORDER BY chunked_k0 DESC LIMIT 1) chunked_q1"), "{first}");
        }
        // the two ends, two rounds of 48 points per slice, and at most one
        // predecessor per point, 250 probes per statement
        let points = 48 * n;
        assert!(terms <= 2 + 4 * points, "{terms} probes");
        assert!(terms >= 2 + 2 * points, "{terms} probes");
        assert!(statements.len() <= 1 + 4 * points.div_ceil(250), "{} statements", statements.len());
    }

    fn sampled_small_inputs_and_bad_input(db) {
        let mut conn = connect::<B>(&db);
        let log = QueryLog::install(&mut conn);
        for n in [0, diesel_chunked_iterator::plan::MAX_PARTITIONS + 1] {
            let err = posts::table.chunked_by(posts::id).partitions_sampled(n, &mut conn).unwrap_err();
            assert!(matches!(err, Error::InvalidPartitionCount { n: m } if m == n), "{err}");
        }
        assert!(log.all().is_empty(), "no query for a bad n");

        // an empty table: one open slice
        let parts = posts::table.chunked_by(posts::id).partitions_sampled(8, &mut conn).unwrap();
        assert_eq!(parts, [Partition { index: 0, start_after: None, end_at: None, rows: 0 }]);

        // small inputs (a key range or table of fewer than 4 · 200 · n keys or
        // row addresses): every key read, the exact planner's slices
        insert_posts(&mut conn, (1..=700).chain([5_000, 6_000]));
        for n in [8usize, 50, 1_000] {
            let exact = posts::table.chunked_by(posts::id).partitions(n, &mut conn).unwrap();
            let sampled = posts::table.chunked_by(posts::id).partitions_sampled(n, &mut conn).unwrap();
            assert_eq!(sampled, exact, "n = {n}");
        }

        // composite keys: sampled on PostgreSQL; elsewhere a clear error
        let events: Vec<Event> = (1..=999).map(|i| event(i, i as i16)).collect();
        insert_events(&mut conn, &events);
        let got = events::table.chunked_by((events::kind, events::id)).partitions_sampled(3, &mut conn);
        if B::NAME == "postgres" {
            let exact = events::table.chunked_by((events::kind, events::id)).partitions(3, &mut conn).unwrap();
            assert_eq!(got.unwrap(), exact, "a small table: every key read");
        } else {
            let err = got.unwrap_err();
            assert!(matches!(err, Error::SamplingUnsupported { .. }), "{err}");
            assert!(err.to_string().contains("integer key of one column"), "{err}");
        }
    }
}

#[cfg(feature = "postgres")]
mod pg_only {
    use super::*;

    /// PostgreSQL samples any key: a text key, and a composite one, on a table
    /// large enough to be sampled.
    #[test]
    fn text_and_composite_keys_are_sampled() {
        let db = <common::Pg as TestBackend>::create();
        let mut conn = connect::<common::Pg>(&db);
        let events: Vec<Event> = (1..=30_000)
            .map(|i| event(i, (i % 30_000) as i16))
            .collect();
        insert_events(&mut conn, &events);
        let log = QueryLog::install(&mut conn);
        let single: Vec<i64> = events::table
            .chunked_by((events::kind, events::id))
            .load_iter::<Event>(&mut conn)
            .map(|e| e.unwrap().id)
            .collect();
        log.clear();
        let parts = events::table
            .chunked_by((events::kind, events::id))
            .partitions_sampled(5, &mut conn)
            .unwrap();
        assert!(sampled(&log));
        let mut union = Vec::new();
        for p in &parts {
            let got: Vec<i64> = events::table
                .chunked_by((events::kind, events::id))
                .within(p)
                .batch_size(5_000)
                .load_iter::<Event>(&mut conn)
                .map(|e| e.unwrap().id)
                .collect();
            assert!(got.len() >= 4_000 && got.len() <= 9_000, "{}", got.len());
            union.extend(got);
        }
        assert_eq!(union, single);

        let parts = posts::table
            .chunked_by(posts::slug)
            .partitions_sampled(3, &mut conn)
            .unwrap();
        assert_eq!(parts.len(), 1, "no posts: one slice");
    }
}

/// `partitions_sampled_async` runs the same sampler on an async connection:
/// the same statements, the same seeded draws, so the same slices as the
/// blocking call, on a table large enough to be sampled (not read whole),
/// filtered, with gaps; and the same errors.
#[cfg(feature = "async")]
macro_rules! async_sampled_tests {
    ($name:ident, $backend:ty, $conn:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            use diesel_async::AsyncConnection;
            let db = <$backend as TestBackend>::create();
            let mut sync = <$backend as TestBackend>::connect(&db);
            let ids: Vec<i32> = (1..=18_000)
                .chain((1..=2_000).map(|i| 18_000 + i * 50))
                .collect();
            insert_posts(&mut sync, ids.iter().copied());
            let mut conn = <$conn>::establish(&db.url).await.unwrap();
            let query = || posts::table.filter(posts::id.ne(7)).chunked_by(posts::id);
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
            let sink = std::sync::Arc::clone(&seen);
            conn.set_instrumentation(move |event: diesel::connection::InstrumentationEvent<'_>| {
                if let diesel::connection::InstrumentationEvent::StartQuery { query, .. } = event {
                    sink.lock().unwrap().push(query.to_string());
                }
            });
            let sql = |log: &[String]| -> Vec<String> {
                log.iter()
                    .map(|q| q.split(" -- binds").next().unwrap().to_string())
                    .collect()
            };
            for n in [2, 5, 8] {
                let log = QueryLog::install(&mut sync);
                let blocking = query().partitions_sampled(n, &mut sync).unwrap();
                seen.lock().unwrap().clear();
                let awaited = query()
                    .partitions_sampled_async(n, &mut conn)
                    .await
                    .unwrap();
                assert_eq!(awaited, blocking, "n = {n}");
                let statements = sql(&log.all());
                assert!(
                    statements.len() >= 2,
                    "sampled, not read whole: {statements:?}"
                );
                assert_eq!(
                    sql(&seen.lock().unwrap()),
                    statements,
                    "n = {n}: the same statements"
                );
            }
            let err = query()
                .partitions_sampled_async(0, &mut conn)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidPartitionCount { n: 0 }),
                "{err:?}"
            );
        }
    };
}

#[cfg(feature = "async")]
async_sampled_tests!(
    sqlite_async_sampled_slices_are_the_blocking_ones,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    "sqlite"
);
#[cfg(feature = "async")]
async_sampled_tests!(
    postgres_async_sampled_slices_are_the_blocking_ones,
    Pg,
    diesel_async::AsyncPgConnection,
    "postgres"
);
#[cfg(feature = "async")]
async_sampled_tests!(
    mysql_async_sampled_slices_are_the_blocking_ones,
    Mysql,
    diesel_async::AsyncMysqlConnection,
    "mysql"
);
