//! `limit_total` (rows and queries, the last LIMIT shrinking) and `batch_size`
//! values that cannot be used.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

/// Asserts the first item of a scan is `InvalidBatchSize { batch_size: size }`, and
/// that the scan then ends.
fn assert_invalid_batch_size<T: std::fmt::Debug>(
    mut it: impl Iterator<Item = Result<T, Error>>,
    size: u64,
) {
    match it.next() {
        Some(Err(Error::InvalidBatchSize { batch_size })) => assert_eq!(batch_size, size),
        other => panic!("expected InvalidBatchSize {{ batch_size: {size} }}, got {other:?}"),
    }
    assert!(it.next().is_none(), "the scan must end after the error");
    assert!(it.next().is_none(), "and stay ended");
}

backend_tests! {
    fn size_hint_counts_the_error_of_an_invalid_scan(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=3);
        // The error is the one item left, even under limit_total(0).
        for total in [None, Some(0), Some(5)] {
            let q = posts::table.chunked_by(posts::id).batch_size(0);
            let q = match total { Some(t) => q.limit_total(t), None => q };
            let mut it = q.load_iter::<Post>(&mut conn);
            assert_eq!(it.size_hint(), (0, Some(1)), "limit_total {total:?}");
            assert!(matches!(it.next(), Some(Err(Error::InvalidBatchSize { .. }))));
            assert_eq!(it.size_hint(), (0, Some(0)));
        }
        let mut it = posts::table.into_boxed::<DB>().order(posts::id)
            .chunked_by(posts::id).limit_total(0).load_batches::<Post>(&mut conn);
        assert_eq!(it.size_hint(), (0, Some(1)));
        assert!(matches!(it.next(), Some(Err(Error::QueryHasClause { .. }))));
        assert_eq!(it.size_hint(), (0, Some(0)));
        assert!(it.next().is_none());

        // Exact where limit_total bounds the scan.
        let mut it = posts::table.chunked_by(posts::id).limit_total(2).load_iter::<Post>(&mut conn);
        assert_eq!(it.size_hint(), (0, Some(2)));
        it.next().unwrap().unwrap();
        assert_eq!(it.size_hint(), (1, Some(1)));
    }

    fn limit_total_caps_rows_and_shrinks_the_last_limit(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=25);
        let log = QueryLog::install(&mut conn);

        // (limit_total, rows returned, LIMIT of each query), batch_size(10) over 25
        // rows. Each LIMIT is one more than the rows the batch keeps: the
        // look-ahead row.
        let cases: [(u64, i32, &[i64]); 10] = [
            (0, 0, &[]),              // nothing to load: no query at all
            (1, 1, &[2]),
            (7, 7, &[8]),             // less than a batch
            (10, 10, &[11]),          // exactly a batch: no second query
            (20, 20, &[11, 11]),      // a multiple of the batch size
            (23, 23, &[11, 11, 4]),   // the last LIMIT shrinks
            (25, 25, &[11, 11, 6]),   // exactly the rows there are
            (26, 25, &[11, 11, 7]),   // one more: the short batch ends the scan
            (30, 25, &[11, 11, 11]),
            (1000, 25, &[11, 11, 11]),
        ];
        for (total, rows, expected_limits) in cases {
            log.clear();
            let got = collect_ok(
                posts::table.chunked_by(posts::id).batch_size(10).limit_total(total).load_iter::<Post>(&mut conn),
            );
            assert_eq!(ids(&got), (1..=rows).collect::<Vec<_>>(), "limit_total({total})");
            assert_eq!(limits(&log), expected_limits, "limit_total({total}): {:#?}", log.all());

            log.clear();
            let batches = collect_ok(
                posts::table.chunked_by(posts::id).batch_size(10).limit_total(total).load_batches::<Post>(&mut conn),
            );
            let expected_sizes: Vec<usize> = (1..=rows).collect::<Vec<_>>().chunks(10).map(<[i32]>::len).collect();
            assert_eq!(sizes(&batches), expected_sizes, "load_batches, limit_total({total})");
            assert_eq!(limits(&log), expected_limits, "load_batches, limit_total({total})");
        }
    }

    fn limit_total_reached_at_the_end_of_the_rows_runs_no_extra_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        let log = QueryLog::install(&mut conn);

        // The cap is reached with the second batch: no third query to find the end.
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(10).limit_total(20).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), (1..=20).collect::<Vec<_>>());
        assert_eq!(limits(&log), [11, 11]);

        // Without it, the missing look-ahead row of the second batch ends the scan.
        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(10).limit_total(21).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), (1..=20).collect::<Vec<_>>());
        assert_eq!(limits(&log), [11, 11]);

        // A cap smaller than the batch size, descending, resumed from a key.
        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(10).desc().start_after(15).limit_total(3).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), [14, 13, 12]);
        assert_eq!(log.selects().len(), 1);
        assert_eq!(binds(&log.selects()[0]), ["15", "4"]);
    }

    fn limit_total_zero_runs_no_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::id).limit_total(0).load_iter::<Post>(&mut conn);
        assert!(it.next().is_none());
        assert!(it.next().is_none());
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries), (0, 0, 0));
        drop(it);

        let mut it = posts::table.chunked_by(posts::id).desc().limit_total(0).load_batches::<Post>(&mut conn);
        assert!(it.next().is_none());
        drop(it);

        assert!(log.all().is_empty(), "{:#?}", log.all());
    }

    fn batch_size_zero_is_an_error_without_a_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let log = QueryLog::install(&mut conn);

        assert_invalid_batch_size(posts::table.chunked_by(posts::id).batch_size(0).load_iter::<Post>(&mut conn), 0);
        assert_invalid_batch_size(posts::table.chunked_by(posts::id).batch_size(0).load_batches::<Post>(&mut conn), 0);
        assert_invalid_batch_size(
            posts::table.chunked_by(posts::id).batch_size(0).desc().limit_total(3).load_iter::<Post>(&mut conn),
            0,
        );
        assert_invalid_batch_size(
            posts::table.select((posts::id, posts::title)).chunked_by(posts::id).batch_size(0)
                .load_batches_keyed(&mut conn, |r: &(i32, String)| r.0),
            0,
        );
        // A size SQL's LIMIT (a signed 64-bit integer) cannot hold.
        assert_invalid_batch_size(
            posts::table.chunked_by(posts::id).batch_size(u64::MAX).load_iter::<Post>(&mut conn),
            u64::MAX,
        );
        assert!(log.all().is_empty(), "no query may run: {:#?}", log.all());

        // The largest size that fits works.
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(i64::MAX as u64).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), [1, 2, 3, 4, 5]);
        assert_eq!(limits(&log), [i64::MAX]);
    }
}
