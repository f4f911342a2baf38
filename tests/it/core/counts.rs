//! How many queries a scan runs: one per batch. Each batch asks for one row
//! more than it keeps (`LIMIT n + 1`); when that look-ahead row is missing, no
//! rows are left and the scan ends without another query.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::DEFAULT_BATCH_SIZE;

/// `n` batches of `size` rows followed by one of `rest` rows (if `rest > 0`).
fn expected_sizes(size: usize, n: usize, rest: usize) -> Vec<usize> {
    let mut v = vec![size; n];
    if rest > 0 {
        v.push(rest);
    }
    v
}

backend_tests! {
    fn batch_size_345_over_7000_rows_runs_21_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=7000);
        let log = QueryLog::install(&mut conn);

        let batches = collect_ok(
            posts::table.chunked_by(posts::id).batch_size(345).load_batches::<Post>(&mut conn),
        );

        // 20 full batches and one of 100: the short one ends the scan.
        assert_eq!(sizes(&batches), expected_sizes(345, 20, 100));
        assert_eq!(batches.concat().iter().map(|p| p.id).collect::<Vec<_>>(), (1..=7000).collect::<Vec<_>>());
        assert_eq!(log.selects().len(), 21, "{}", summary(&log));
        assert_eq!(log.all().len(), 21, "only SELECTs: {}", summary(&log));
        assert!(limits(&log).iter().all(|&l| l == 346), "{:?}", limits(&log));
    }

    fn batch_size_11_limit_total_33_over_7000_rows_runs_3_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=7000);
        let log = QueryLog::install(&mut conn);

        let posts = collect_ok(
            posts::table.chunked_by(posts::id).batch_size(11).limit_total(33).load_iter::<Post>(&mut conn),
        );

        assert_eq!(ids(&posts), (1..=33).collect::<Vec<_>>());
        assert_eq!(log.selects().len(), 3, "{}", summary(&log));
        assert_eq!(limits(&log), [12, 12, 12]);
    }

    fn default_batch_size_over_7000_rows_runs_8_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=7000);
        let log = QueryLog::install(&mut conn);

        let batches = collect_ok(posts::table.chunked_by(posts::id).load_batches::<Post>(&mut conn));

        assert_eq!(DEFAULT_BATCH_SIZE, 1000);
        assert_eq!(sizes(&batches), expected_sizes(1000, 7, 0));
        assert_eq!(batches.concat().iter().map(|p| p.id).collect::<Vec<_>>(), (1..=7000).collect::<Vec<_>>());
        // 7000 is a multiple of 1000: the 7th batch finds no look-ahead row, and
        // no query is run to find out that nothing is left.
        assert_eq!(log.selects().len(), 7, "{}", summary(&log));
        assert_eq!(limits(&log), [1001; 7]);
    }

    fn rows_a_multiple_of_the_batch_size_take_no_extra_query(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS[..20].iter().map(|&id| post(id)).collect::<Vec<_>>());
        let expected = GAPPY_IDS[..20].to_vec();
        let log = QueryLog::install(&mut conn);

        // R = 20 rows: ceil(R / n) queries, whether n divides R or not.
        for (n, queries) in [(1, 20), (4, 5), (5, 4), (10, 2), (20, 1), (3, 7), (7, 3), (21, 1), (1000, 1)] {
            log.clear();
            let batches = collect_ok(
                posts::table.chunked_by(posts::id).batch_size(n).load_batches::<Post>(&mut conn),
            );
            assert_eq!(batches.concat().iter().map(|p| p.id).collect::<Vec<_>>(), expected, "batch_size({n})");
            assert_eq!(batches.len(), 20usize.div_ceil(n as usize), "batch_size({n})");
            assert_eq!(log.selects().len(), queries, "batch_size({n}): {}", summary(&log));
        }
    }

    fn a_short_batch_ends_the_scan_without_another_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=23);
        let log = QueryLog::install(&mut conn);

        let batches = collect_ok(
            posts::table.chunked_by(posts::id).batch_size(5).load_batches::<Post>(&mut conn),
        );

        assert_eq!(batch_ids(&batches), [
            vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10], vec![11, 12, 13, 14, 15],
            vec![16, 17, 18, 19, 20], vec![21, 22, 23],
        ]);
        assert_eq!(log.selects().len(), 5, "{:#?}", log.all());
        // The seek bound of each query is the last key of the batch before.
        let after: Vec<Vec<String>> = log.selects().iter().map(|q| binds(q)).collect();
        assert_eq!(after, [vec!["6"], vec!["5", "6"], vec!["10", "6"], vec!["15", "6"], vec!["20", "6"]]);
    }

    fn an_empty_table_runs_exactly_one_query(db) {
        let mut conn = connect::<B>(&db);
        let log = QueryLog::install(&mut conn);

        let posts = collect_ok(posts::table.chunked_by(posts::id).batch_size(10).load_iter::<Post>(&mut conn));
        assert!(posts.is_empty(), "{posts:?}");
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());
        assert_eq!(log.all().len(), 1, "{:#?}", log.all());

        log.clear();
        let mut it = posts::table.chunked_by(posts::id).desc().load_batches::<Post>(&mut conn);
        assert!(it.next().is_none());
        assert!(it.next().is_none(), "fused");
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries), (0, 0, 1));
        assert_eq!(it.last_key(), None);
        drop(it);
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());

        log.clear();
        let events = collect_ok(events::table.chunked_by(events::id).load_iter::<Event>(&mut conn));
        assert!(events.is_empty());
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());
    }

    fn an_item_iterator_stopped_early_runs_one_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=25);
        let log = QueryLog::install(&mut conn);

        let first = collect_ok(
            posts::table.chunked_by(posts::id).batch_size(10).load_iter::<Post>(&mut conn).take(3),
        );

        assert_eq!(first, [post(1), post(2), post(3)]);
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());
        assert_eq!(limits(&log), [11]);

        // Stopping right after the end of a batch does not run the next one either.
        log.clear();
        let first = collect_ok(
            posts::table.chunked_by(posts::id).batch_size(10).load_iter::<Post>(&mut conn).take(10),
        );
        assert_eq!(ids(&first), (1..=10).collect::<Vec<_>>());
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());
    }

    fn load_batches_never_yields_an_empty_vec(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::id).batch_size(10).load_batches::<Post>(&mut conn);
        assert_eq!(ids(&it.next().unwrap().unwrap()), (1..=10).collect::<Vec<_>>());
        assert_eq!(ids(&it.next().unwrap().unwrap()), (11..=20).collect::<Vec<_>>());
        // The second query found no look-ahead row: that is the end, with no
        // third query and no empty batch.
        assert!(it.next().is_none());
        assert!(it.next().is_none());
        drop(it);
        assert_eq!(log.selects().len(), 2, "{:#?}", log.all());

        // Same with a filter that leaves the last query empty, descending.
        log.clear();
        let batches = collect_ok(
            posts::table
                .filter(posts::published.eq(true))
                .chunked_by(posts::id)
                .batch_size(5)
                .desc()
                .load_batches::<Post>(&mut conn),
        );
        assert_eq!(batch_ids(&batches), [vec![20, 18, 16, 14, 12], vec![10, 8, 6, 4, 2]]);
        assert!(batches.iter().all(|b| !b.is_empty()));
        assert_eq!(log.selects().len(), 2, "{:#?}", log.all());
    }
}
