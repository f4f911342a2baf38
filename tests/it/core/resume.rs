//! Scans over a table that changes between batches, resuming from `last_key()`,
//! and the `progress()` counters.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

backend_tests! {
    fn rows_changed_during_an_ascending_scan(db) {
        let mut conn = connect::<B>(&db);
        let mut other = connect::<B>(&db);
        insert_posts(&mut conn, 2..=21);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::id).batch_size(5).load_batches::<Post>(&mut conn);
        let mut batches = Vec::new();
        for batch in it.by_ref() {
            batches.push(ids(&batch.unwrap()));
            match batches.len() {
                1 => {
                    // Behind the cursor (6): 1 is not seen, deleting 3 changes nothing.
                    // Ahead of it: 50 and 100 are seen, 12 and 13 are not.
                    insert_posts(&mut other, [1, 50, 100]);
                    diesel::delete(posts::table.filter(posts::id.eq_any([3, 12, 13]))).execute(&mut other).unwrap();
                }
                3 => {
                    // Cursor at 18: 22 is seen, 50 (inserted above) is gone again.
                    insert_posts(&mut other, [22]);
                    diesel::delete(posts::table.filter(posts::id.eq(50))).execute(&mut other).unwrap();
                }
                _ => {}
            }
        }
        let p = it.progress();
        drop(it);

        assert_eq!(batches, [
            vec![2, 3, 4, 5, 6],
            vec![7, 8, 9, 10, 11],
            vec![14, 15, 16, 17, 18],
            vec![19, 20, 21, 22, 100],
        ]);
        let all = batches.concat();
        assert_no_duplicates(&all);
        // Four full batches; the fourth finds no look-ahead row (nothing after
        // 100), so no query runs to find that nothing is left.
        assert_eq!(log.selects().len(), 4, "{:#?}", log.all());
        assert_eq!((p.rows, p.batches, p.queries), (20, 4, 4));
    }

    fn rows_changed_during_a_descending_scan(db) {
        let mut conn = connect::<B>(&db);
        let mut other = connect::<B>(&db);
        insert_posts(&mut conn, 2..=21);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::id).batch_size(5).desc().load_batches::<Post>(&mut conn);
        let mut batches = Vec::new();
        for batch in it.by_ref() {
            batches.push(ids(&batch.unwrap()));
            if batches.len() == 1 {
                // Cursor at 17, going down: 1 is ahead (seen), 100 behind (not seen).
                insert_posts(&mut other, [1, 100]);
                diesel::delete(posts::table.filter(posts::id.eq_any([10, 20]))).execute(&mut other).unwrap();
            }
        }
        drop(it);

        assert_eq!(batches, [
            vec![21, 20, 19, 18, 17],
            vec![16, 15, 14, 13, 12],
            vec![11, 9, 8, 7, 6],
            vec![5, 4, 3, 2, 1],
        ]);
        assert_no_duplicates(&batches.concat());
        // The fourth batch finds no look-ahead row below 1: no fifth query.
        assert_eq!(log.selects().len(), 4, "{:#?}", log.all());
    }

    fn last_key_is_the_last_item_yielded_and_resumes_exactly(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::id).batch_size(4).load_iter::<Post>(&mut conn);
        assert_eq!(it.last_key(), None);
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.retries, p.last_key), (0, 0, 0, 0, None));

        let first: Vec<i32> = (0..6).map(|_| it.next().unwrap().unwrap().id).collect();
        assert_eq!(first, [1, 2, 5, 9, 10, 11]);
        // Two batches were loaded (up to 17); the last item handed out is 11.
        assert_eq!(it.last_key(), Some(&11));
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.retries, p.last_key), (6, 2, 2, 0, Some(11)));
        drop(it);
        assert_eq!(log.selects().len(), 2);

        // Resume: exactly the next row, then the rest.
        log.clear();
        let mut it = posts::table.chunked_by(posts::id).batch_size(4).start_after(11).load_iter::<Post>(&mut conn);
        assert_eq!(it.next().unwrap().unwrap(), post(13));
        assert_eq!(it.last_key(), Some(&13));
        let rest: Vec<i32> = collect_ok(&mut it).iter().map(|p| p.id).collect();
        assert_eq!(rest, GAPPY_IDS[7..]);
        // 24 rows after 11: 6 full batches of 4; the 6th finds no look-ahead row
        // and ends the scan without another query.
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.last_key), (24, 6, 6, Some(200)));
        assert_eq!(it.last_key(), Some(&200));
        assert!(it.next().is_none());
        assert_eq!(it.progress().queries, 6, "no query after the end");
        drop(it);
        assert_eq!(binds(&log.selects()[0]), ["11", "5"]);
    }

    fn last_key_resumes_a_descending_scan(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));

        let mut it = posts::table.chunked_by(posts::id).batch_size(7).desc().load_iter::<Post>(&mut conn);
        let first: Vec<i32> = (0..9).map(|_| it.next().unwrap().unwrap().id).collect();
        let last = *it.last_key().unwrap();
        drop(it);
        assert_eq!(first, reversed(&GAPPY_IDS)[..9]);
        assert_eq!(last, 78);

        let rest = collect_ok(posts::table.chunked_by(posts::id).batch_size(7).desc().start_after(last).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&rest), reversed(&GAPPY_IDS)[9..]);
    }

    fn progress_counts_rows_batches_and_queries(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        let log = QueryLog::install(&mut conn);

        // 20 rows in batches of 5: 4 batches, 4 queries (the 4th finds no
        // look-ahead row, which ends the scan).
        let mut it = posts::table.chunked_by(posts::id).batch_size(5).load_batches::<Post>(&mut conn);
        let mut seen = Vec::new();
        for n in 1..=4u64 {
            let batch = it.next().unwrap().unwrap();
            let p = it.progress();
            assert_eq!((p.rows, p.batches, p.queries), (5 * n, n, n), "after batch {n}");
            assert_eq!(it.last_key(), Some(&(5 * n as i32)), "after batch {n}");
            assert_eq!(p.last_key, Some(5 * n as i32));
            seen.extend(ids(&batch));
        }
        assert!(it.next().is_none());
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.retries), (20, 4, 4, 0));
        assert_eq!(it.last_key(), Some(&20), "the last key of the last batch handed out");
        drop(it);
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        assert_eq!(log.selects().len(), 4);

        // 23 rows in batches of 5 from the item iterator: 5 batches, 5 queries.
        insert_posts(&mut conn, 21..=23);
        log.clear();
        let mut it = posts::table.chunked_by(posts::id).batch_size(5).load_iter::<Post>(&mut conn);
        let n = it.by_ref().map(Result::unwrap).count();
        assert_eq!(n, 23);
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.last_key), (23, 5, 5, Some(23)));
        drop(it);
        assert_eq!(log.selects().len(), 5);
    }
}
