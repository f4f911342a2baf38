//! Planning a scan: `partitions(n)` (balanced, disjoint, covering slices of the
//! key range, in one query), `within(&partition)`, `estimate_total`, and the
//! progress counters of scans over slices.
//!
//! "Covering" is checked exactly: the slices scanned one after the other give the
//! rows of a single scan, in the same order, each once. "Balanced" is checked
//! against the slice sizes the partition query reports and against the rows each
//! slice really yields: no slice holds more than the ideal `⌈rows / n⌉` (the
//! method splits to one row), well inside the issue's bound of twice the ideal.

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{Error, Partition};

/// Scans each slice and returns the ids slice by slice.
macro_rules! scan_slices {
    ($conn:expr, $parts:expr, $batch:expr) => {
        $parts
            .iter()
            .map(|p| {
                posts::table
                    .chunked_by(posts::id)
                    .within(p)
                    .batch_size($batch)
                    .load_iter::<Post>(&mut *$conn)
                    .map(|r| r.expect("slice scan").id)
                    .collect::<Vec<i32>>()
            })
            .collect::<Vec<_>>()
    };
}

/// The checks every partitioning must pass, for `n` slices of `ids` (sorted).
fn check_partitions(
    parts: &[Partition<i32>],
    slices: &[Vec<i32>],
    ids: &[i32],
    n: usize,
    what: &str,
) {
    let expected_len = n.min(ids.len()).max(1);
    assert_eq!(parts.len(), expected_len, "{what}: n = {n}");
    assert_eq!(
        parts.iter().map(|p| p.index).collect::<Vec<_>>(),
        (0..parts.len()).collect::<Vec<_>>()
    );
    assert_eq!(
        parts[0].start_after, None,
        "{what}: the first slice is open below"
    );
    assert_eq!(
        parts.last().unwrap().end_at,
        None,
        "{what}: the last slice is open above"
    );
    for w in parts.windows(2) {
        assert_eq!(w[0].end_at, w[1].start_after, "{what}: slices must touch");
        assert!(w[0].end_at.is_some());
    }
    // exactly the single scan, in order, each row once
    let union: Vec<i32> = slices.iter().flatten().copied().collect();
    assert_eq!(union, ids, "{what}: n = {n}");
    // balanced: every slice holds ⌊rows/n⌋ or ⌈rows/n⌉ rows, as reported
    let ideal = ids.len().div_ceil(n.max(1)).max(1);
    for (p, s) in parts.iter().zip(slices) {
        assert_eq!(
            p.rows,
            s.len() as u64,
            "{what}: slice {} reports its size",
            p.index
        );
        assert!(
            s.len() <= ideal,
            "{what}: n = {n}, slice {} holds {} > ideal {ideal}",
            p.index,
            s.len()
        );
        if !ids.is_empty() && n <= ids.len() {
            assert!(
                s.len() >= ids.len() / n,
                "{what}: n = {n}, slice {} holds {}",
                p.index,
                s.len()
            );
        }
    }
}

backend_tests! {
    fn partitions_of_uniform_skewed_and_gappy_keys(db) {
        let mut conn = connect::<B>(&db);
        // 20,000 rows: 8,000 dense ids, 8,000 ids 500 apart, then 4,000 ids after
        // a gap of a million: uniform, skewed and gappy regions in one key range.
        // (Ids stay below 6.3 million: `created_at` is derived from them and must
        // fit MariaDB's TIMESTAMP.)
        let ids: Vec<i32> = (1..=8_000)
            .chain((1..=8_000).map(|i| 10_000 + i * 500))
            .chain((1..=4_000).map(|i| 5_100_000 + i * 7))
            .collect();
        insert_posts(&mut conn, ids.iter().copied());
        let log = QueryLog::install(&mut conn);
        for n in [1usize, 2, 3, 7, 8, 50] {
            log.clear();
            let parts = posts::table.chunked_by(posts::id).partitions(n, &mut conn).unwrap();
            assert_eq!(log.all().len(), 1, "one query for n = {n}: {:#?}", log.all());
            let slices = scan_slices!(&mut conn, &parts, 1_000);
            check_partitions(&parts, &slices, &ids, n, "mixed keys");
        }
        // the SQL: window functions over the key, the slice count bound
        log.clear();
        posts::table.chunked_by(posts::id).partitions(4, &mut conn).unwrap();
        let sql = log.all()[0].replace(['"', '`'], "");
        assert!(sql.starts_with("SELECT chunked_p.chunked_k0, chunked_p.chunked_rn, chunked_p.chunked_cnt FROM (SELECT chunked_d.chunked_k0, ROW_NUMBER() OVER (ORDER BY chunked_d.chunked_k0) AS chunked_rn, COUNT(*) OVER () AS chunked_cnt FROM (SELECT posts.id AS chunked_k0 FROM posts WHERE 1 = 1) chunked_d) chunked_p WHERE CASE WHEN chunked_p.chunked_cnt <= "), "{sql}");
        assert!(sql.contains(" ORDER BY chunked_p.chunked_rn"), "{sql}");
    }

    fn partitions_of_a_filtered_query_with_bounds(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=1_000);
        let published: Vec<i32> = (1..=1_000).filter(|i| i % 2 == 0).collect();
        let parts = posts::table
            .filter(posts::published.eq(true))
            .chunked_by(posts::id)
            .partitions(4, &mut conn)
            .unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), [125, 125, 125, 125]);
        assert_eq!(parts[0].end_at, Some(250));
        let mut union = Vec::new();
        for p in &parts {
            let got: Vec<i32> = posts::table
                .filter(posts::published.eq(true))
                .chunked_by(posts::id)
                .within(p)
                .batch_size(40)
                .load_iter::<Post>(&mut conn)
                .map(|r| r.unwrap().id)
                .collect();
            assert_eq!(got.len() as u64, p.rows);
            union.extend(got);
        }
        assert_eq!(union, published);

        // the scan's own bounds limit the rows that are split
        let parts = posts::table
            .chunked_by(posts::id)
            .start_after(100)
            .end_at(300)
            .partitions(2, &mut conn)
            .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].end_at, parts[0].rows, parts[1].rows), (Some(200), 100, 100));
    }

    fn partitions_edge_cases(db) {
        let mut conn = connect::<B>(&db);
        let log = QueryLog::install(&mut conn);

        // n = 0: an error, and no query
        let err = posts::table.chunked_by(posts::id).partitions(0, &mut conn).unwrap_err();
        assert!(matches!(err, Error::InvalidPartitionCount { n: 0 }), "{err}");
        assert_eq!(err.to_string(), "partitions(n) needs n between 1 and 100000 (got 0)");
        for n in [100_001, usize::MAX] {
            let err = posts::table.chunked_by(posts::id).partitions(n, &mut conn).unwrap_err();
            assert!(matches!(err, Error::InvalidPartitionCount { n: m } if m == n), "{err}");
        }
        assert!(log.all().is_empty());

        // an empty table: one open slice, which covers rows inserted later
        let parts = posts::table.chunked_by(posts::id).partitions(8, &mut conn).unwrap();
        assert_eq!(parts, [Partition { index: 0, start_after: None, end_at: None, rows: 0 }]);
        insert_posts(&mut conn, [10, 20, 30]);
        let got = scan_slices!(&mut conn, &parts, 2);
        assert_eq!(got, [vec![10, 20, 30]]);

        // more slices asked than rows: one slice per row (also at the largest n,
        // where `rn * n` is never computed)
        for n in [8, diesel_chunked_iterator::plan::MAX_PARTITIONS] {
            let parts = posts::table.chunked_by(posts::id).partitions(n, &mut conn).unwrap();
            let slices = scan_slices!(&mut conn, &parts, 2);
            check_partitions(&parts, &slices, &[10, 20, 30], n, "3 rows");
            assert_eq!(slices, [vec![10], vec![20], vec![30]]);
        }

        // n = 1: one open slice
        let parts = posts::table.chunked_by(posts::id).partitions(1, &mut conn).unwrap();
        assert_eq!(parts, [Partition { index: 0, start_after: None, end_at: None, rows: 3 }]);

        // rows inserted after the split, before the first key and after the last,
        // land in the first and the last slice; rows between land in their slice
        let parts = posts::table.chunked_by(posts::id).partitions(3, &mut conn).unwrap();
        insert_posts(&mut conn, [5, 15, 35]);
        let slices = scan_slices!(&mut conn, &parts, 100);
        assert_eq!(slices, [vec![5, 10], vec![15, 20], vec![30, 35]]);
    }

    fn partitions_of_a_composite_key(db) {
        let mut conn = connect::<B>(&db);
        let events: Vec<Event> = (1..=999).map(|i| event(i, i as i16)).collect();
        insert_events(&mut conn, &events);
        let single: Vec<i64> = events::table
            .chunked_by((events::kind, events::id))
            .load_iter::<Event>(&mut conn)
            .map(|e| e.unwrap().id)
            .collect();
        assert_eq!(single.len(), 999);
        for n in [1usize, 4, 10] {
            let parts = events::table
                .chunked_by((events::kind, events::id))
                .partitions(n, &mut conn)
                .unwrap();
            assert_eq!(parts.len(), n);
            let mut union = Vec::new();
            for p in &parts {
                let got: Vec<i64> = events::table
                    .chunked_by((events::kind, events::id))
                    .within(p)
                    .batch_size(64)
                    .load_iter::<Event>(&mut conn)
                    .map(|e| e.unwrap().id)
                    .collect();
                assert_eq!(got.len() as u64, p.rows, "n = {n}, slice {}", p.index);
                assert!(got.len() <= 999usize.div_ceil(n));
                union.extend(got);
            }
            assert_eq!(union, single, "n = {n}");
        }
        let parts = events::table.chunked_by((events::kind, events::id)).partitions(3, &mut conn).unwrap();
        // 333 events of each kind, ids 3, 6, ... for "alpha": the first slice is all of "alpha"
        assert_eq!(parts[0].end_at, Some(("alpha".to_string(), 999)));
        assert_eq!(parts[1].start_after, Some(("alpha".to_string(), 999)));
    }

    fn partitions_of_joins_distinct_and_boxed_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_users(&mut conn, &(1..=30).map(user).collect::<Vec<_>>());
        // user 1 has 60 posts, users 2..=30 one each
        insert_post_rows(
            &mut conn,
            &(1..=89).map(|id| Post { user_id: if id <= 60 { 1 } else { id - 59 }, ..post(id) }).collect::<Vec<_>>(),
        );
        // the users that have posts, each once: the join repeats user 1 sixty times
        let authors = || users::table.inner_join(posts::table).select(users::id).distinct();
        let parts = authors().chunked_by(users::id).partitions(3, &mut conn).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), [10, 10, 10]);
        let mut union = Vec::new();
        for p in &parts {
            let got: Vec<i32> = authors()
                .chunked_by(users::id)
                .within(p)
                .batch_size(4)
                .load_iter_keyed(&mut conn, |id: &i32| *id)
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(got.len() as u64, p.rows);
            union.extend(got);
        }
        assert_eq!(union, (1..=30).collect::<Vec<_>>());
        let est = authors().chunked_by(users::id).estimate_total(&mut conn).unwrap();
        if B::NAME != "postgres" {
            assert_eq!(est, 30, "a count of the distinct rows");
        } else {
            assert!(est > 0);
        }

        // a composite key over both tables of a join: (users.id, posts.id)
        let joined = || posts::table.inner_join(users::table).chunked_by((users::id, posts::id));
        let parts = joined().partitions(4, &mut conn).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), [23, 22, 22, 22]);
        assert_eq!(parts[0].end_at, Some((1, 23)));
        if B::NAME != "postgres" {
            assert_eq!(joined().estimate_total(&mut conn).unwrap(), 89);
        } else {
            assert!(joined().estimate_total(&mut conn).unwrap() > 0);
        }

        // a boxed query with dynamic filters
        let boxed = || {
            let mut q = posts::table.into_boxed::<DB>();
            q = q.filter(posts::user_id.eq(1));
            q
        };
        let parts = boxed().chunked_by(posts::id).partitions(2, &mut conn).unwrap();
        assert_eq!((parts[0].end_at, parts[0].rows, parts[1].rows), (Some(30), 30, 30));
        if B::NAME != "postgres" {
            assert_eq!(boxed().chunked_by(posts::id).estimate_total(&mut conn).unwrap(), 60);
        }
        let n = boxed().chunked_by(posts::id).within(&parts[1]).load_iter::<Post>(&mut conn).count();
        assert_eq!(n, 30);
    }

    fn within_descending_scans_the_same_slice(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=100);
        let parts = posts::table.chunked_by(posts::id).partitions(3, &mut conn).unwrap();
        let log = QueryLog::install(&mut conn);
        let mut union = Vec::new();
        for p in parts.iter().rev() {
            let got: Vec<i32> = posts::table
                .chunked_by(posts::id)
                .within(p)
                .desc()
                .batch_size(10)
                .load_iter::<Post>(&mut conn)
                .map(|r| r.unwrap().id)
                .collect();
            assert_eq!(got.len() as u64, p.rows);
            union.extend(got);
        }
        assert_eq!(union, (1..=100).rev().collect::<Vec<_>>());

        // resuming inside a slice: start_after and the slice both apply
        let p = &parts[1];
        log.clear();
        let got: Vec<i32> = posts::table
            .chunked_by(posts::id)
            .within(p)
            .start_after(50)
            .load_iter::<Post>(&mut conn)
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(got, (51..=p.end_at.unwrap()).collect::<Vec<_>>());
        let sql = log.all()[0].replace(['"', '`'], "");
        assert!(sql.contains("posts.id > ") && sql.contains("posts.id <= "), "{sql}");

        // a slice that cannot hold rows under the scan's bounds: no query at all
        log.clear();
        let n = posts::table
            .chunked_by(posts::id)
            .within(&parts[0])
            .start_after(parts[0].end_at.unwrap())
            .load_iter::<Post>(&mut conn)
            .count();
        assert_eq!(n, 0);
        assert!(log.all().is_empty(), "{:#?}", log.all());
    }

    fn estimate_total_counts_or_estimates(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=3_000);
        let published = || posts::table.filter(posts::published.eq(true)).chunked_by(posts::id);
        if B::NAME == "postgres" {
            // the planner's estimate, good once the table has statistics
            diesel::sql_query("ANALYZE posts").execute(&mut conn).unwrap();
            let est = published().estimate_total(&mut conn).unwrap();
            assert!((1_200..=1_800).contains(&est), "estimate {est} for 1,500 rows");
            let est = posts::table.chunked_by(posts::id).estimate_total(&mut conn).unwrap();
            assert!((2_700..=3_300).contains(&est), "estimate {est} for 3,000 rows");
        } else {
            // exact counts, with the filters and the bounds
            assert_eq!(published().estimate_total(&mut conn).unwrap(), 1_500);
            assert_eq!(published().start_after(1_000).estimate_total(&mut conn).unwrap(), 1_000);
            assert_eq!(published().desc().start_after(1_000).estimate_total(&mut conn).unwrap(), 499);
            let parts = posts::table.chunked_by(posts::id).partitions(3, &mut conn).unwrap();
            let est = posts::table.chunked_by(posts::id).within(&parts[1]).estimate_total(&mut conn).unwrap();
            assert_eq!(est, parts[1].rows);
        }
        // capped by limit_total
        assert_eq!(published().limit_total(10).estimate_total(&mut conn).unwrap(), 10);
    }

    fn progress_counts_scans_of_slices_exactly(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=95);
        let parts = posts::table.chunked_by(posts::id).partitions(2, &mut conn).unwrap();
        assert_eq!((parts[0].rows, parts[1].rows), (48, 47));

        let mut it = posts::table.chunked_by(posts::id).within(&parts[0]).batch_size(10).load_iter::<Post>(&mut conn);
        let first: Vec<i32> = it.by_ref().take(15).map(|r| r.unwrap().id).collect();
        assert_eq!(first, (1..=15).collect::<Vec<_>>());
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.retries, p.last_key), (15, 2, 2, 0, Some(15)));
        assert_eq!(it.by_ref().count(), 33);
        let p = it.progress();
        // 48 rows: batches of 10, 10, 10, 10, 8; the short one ends the scan
        assert_eq!((p.rows, p.batches, p.queries, p.last_key), (48, 5, 5, Some(48)));

        let mut it = posts::table.chunked_by(posts::id).within(&parts[1]).batch_size(47).load_batches::<Post>(&mut conn);
        assert_eq!(it.next().unwrap().unwrap().len(), 47);
        assert!(it.next().is_none());
        let p = it.progress();
        // exactly a batch: no look-ahead row, so no second query
        assert_eq!((p.rows, p.batches, p.queries, p.last_key), (47, 1, 1, Some(95)));
    }
}

#[cfg(feature = "r2d2")]
mod pooled {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool};
    use std::time::Duration;

    backend_tests! {
        fn all_partitions_scanned_at_once_on_a_pool(db) {
            let mut conn = connect::<B>(&db);
            let ids: Vec<i32> = (1..=3_000).map(|i| if i <= 2_000 { i } else { 100_000 + i * 13 }).collect();
            insert_posts(&mut conn, ids.iter().copied());
            let parts = posts::table.chunked_by(posts::id).partitions(6, &mut conn).unwrap();
            let pool = Pool::builder()
                .max_size(4)
                .connection_timeout(Duration::from_secs(20))
                .build(ConnectionManager::<Conn>::new(&db.url))
                .unwrap();
            let per_worker: Vec<Vec<i32>> = std::thread::scope(|s| {
                let workers: Vec<_> = parts
                    .iter()
                    .map(|p| {
                        let pool = &pool;
                        s.spawn(move || {
                            posts::table
                                .chunked_by(posts::id)
                                .within(p)
                                .batch_size(100)
                                .load_batches::<Post>(pool)
                                .flat_map(|b| b.expect("batch on the pool"))
                                .map(|post| post.id)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            for (p, got) in parts.iter().zip(&per_worker) {
                assert_eq!(got.len() as u64, p.rows, "worker {}", p.index);
                assert_eq!(p.rows, 500);
            }
            let union: Vec<i32> = per_worker.concat();
            assert_eq!(union, ids);
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn partitions_serialize() {
    let p = Partition {
        index: 2,
        start_after: Some(41),
        end_at: None,
        rows: 7,
    };
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"index":2,"start_after":41,"end_at":null,"rows":7}"#
    );
    assert_eq!(serde_json::from_str::<Partition<i32>>(&json).unwrap(), p);
    let c = Partition {
        index: 0,
        start_after: None,
        end_at: Some(("beta".to_string(), 9i64)),
        rows: 3,
    };
    let back: Partition<(String, i64)> =
        serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}
