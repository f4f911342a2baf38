//! Errors a scan reports instead of returning wrong rows: a key that is not unique,
//! a key closure that does not return the key, a boxed query with a clause the
//! scan must own, and a failing query.

use crate::common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

/// A post by `user_id`, otherwise like `post(id)`.
fn post_by(id: i32, user_id: i32) -> Post {
    Post {
        user_id,
        ..post(id)
    }
}

/// Asserts `item` is `DuplicateKey` for `posts.user_id` with `value` in `batch`.
fn assert_duplicate<T: std::fmt::Debug>(item: Option<Result<T, Error>>, value: &str, batch: u64) {
    match item {
        Some(Err(e @ Error::DuplicateKey { .. })) => {
            let Error::DuplicateKey {
                columns,
                value: v,
                batch: b,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(
                (columns.as_str(), v.as_str(), *b),
                ("posts.user_id", value, batch),
                "{e}"
            );
            assert!(
                e.to_string().contains("key posts.user_id is not unique"),
                "{e}"
            );
        }
        other => {
            panic!("expected DuplicateKey {{ value: {value}, batch: {batch} }}, got {other:?}")
        }
    }
}

backend_tests! {
    fn a_non_unique_key_is_an_error_before_the_batch_is_yielded(db) {
        let mut conn = connect::<B>(&db);
        // post(id).user_id is id % 3 + 1: users 1, 2 and 3 have several posts each.
        insert_posts(&mut conn, 1..=10);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table.chunked_by(posts::user_id).batch_size(5).load_iter::<Post>(&mut conn);
        assert_duplicate(it.next(), "1", 1);
        assert!(it.next().is_none());
        drop(it);

        let mut it = posts::table.chunked_by(posts::user_id).batch_size(5).desc().load_batches::<Post>(&mut conn);
        assert_duplicate(it.next(), "3", 1);
        assert!(it.next().is_none());
        drop(it);

        assert_eq!(log.selects().len(), 2, "{:#?}", log.all());
    }

    fn a_non_unique_key_in_a_later_batch(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &[post_by(1, 1), post_by(2, 2), post_by(3, 3), post_by(4, 3), post_by(5, 4)]);
        let log = QueryLog::install(&mut conn);

        // The first batch (users 1, 2) is fine and handed out; the second (3, 3) is not.
        let mut it = posts::table.chunked_by(posts::user_id).batch_size(2).load_iter::<Post>(&mut conn);
        assert_eq!(it.next().unwrap().unwrap(), post_by(1, 1));
        assert_eq!(it.next().unwrap().unwrap(), post_by(2, 2));
        assert_duplicate(it.next(), "3", 2);
        assert!(it.next().is_none());
        assert_eq!(it.last_key(), Some(&2), "the scan can be resumed after the last good row");
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries), (2, 1, 2));
        drop(it);
        assert_eq!(log.selects().len(), 2, "{:#?}", log.all());

        let mut it = posts::table.chunked_by(posts::user_id).batch_size(2).load_batches::<Post>(&mut conn);
        assert_eq!(it.next().unwrap().unwrap(), [post_by(1, 1), post_by(2, 2)]);
        assert_duplicate(it.next(), "3", 2);
        assert!(it.next().is_none());
    }

    fn a_key_closure_that_does_not_return_the_key_is_an_error(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let log = QueryLog::install(&mut conn);

        let mut it = posts::table
            .select((posts::id, posts::title))
            .chunked_by(posts::id)
            .batch_size(1)
            .load_iter_keyed(&mut conn, |_: &(i32, String)| 0);
        // The batch and its look-ahead row are both keyed 0: before any row is
        // handed out, the scan stops instead of starting the next batch after
        // "0" and finding row 1 again.
        match it.next() {
            Some(Err(Error::DuplicateKey { columns, value, batch })) => {
                assert_eq!((columns.as_str(), value.as_str(), batch), ("posts.id", "0", 1));
            }
            other => panic!("expected DuplicateKey, got {other:?}"),
        }
        assert!(it.next().is_none());
        drop(it);
        assert_eq!(log.selects().len(), 1, "{:#?}", log.all());

        // A key closure that returns the same key as the bound: no progress.
        let mut it = posts::table
            .select((posts::id, posts::title))
            .chunked_by(posts::id)
            .batch_size(2)
            .start_after(3)
            .load_iter_keyed(&mut conn, |_: &(i32, String)| 3);
        match it.next() {
            Some(Err(e @ Error::NoProgress { .. })) => {
                assert!(e.to_string().contains("the key closure must return"), "{e}");
            }
            other => panic!("expected NoProgress, got {other:?}"),
        }
    }

    fn a_key_closure_reading_another_column_never_repeats_rows(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=10);

        // user_id (id % 3 + 1) instead of id: keyed 2, 3, 1, the next batch would
        // start after 1 and find rows 2.. again. The first batch already goes
        // backwards: an error before any row is yielded, not a repeat.
        let mut it = posts::table
            .select((posts::id, posts::user_id))
            .chunked_by(posts::id)
            .batch_size(3)
            .load_iter_keyed(&mut conn, |r: &(i32, i32)| r.1);
        match it.next() {
            Some(Err(e @ Error::KeyOutOfOrder { .. })) => {
                let Error::KeyOutOfOrder { columns, previous, next, batch } = &e else { unreachable!() };
                assert_eq!((columns.as_str(), batch), ("posts.id", &1), "{e}");
                assert_eq!((previous.as_str(), next.as_str()), ("3", "1"), "{e}");
                assert!(e.to_string().starts_with("keys out of order in batch 1: 1 came after 3;"), "{e}");
            }
            other => panic!("expected KeyOutOfOrder, got {other:?}"),
        }
        assert!(it.next().is_none());

        // a negated key: every batch would be the same batch, forever
        let mut it = posts::table
            .select((posts::id, posts::user_id))
            .chunked_by(posts::id)
            .batch_size(2)
            .load_batches_keyed(&mut conn, |r: &(i32, i32)| -r.0);
        assert!(matches!(it.next(), Some(Err(Error::KeyOutOfOrder { batch: 1, .. }))));
        assert!(it.next().is_none());

        // descending: keys must fall
        let n = posts::table
            .select((posts::id, posts::user_id))
            .chunked_by(posts::id)
            .desc()
            .batch_size(4)
            .load_iter_keyed(&mut conn, |r: &(i32, i32)| r.0)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len();
        assert_eq!(n, 10);
        let mut it = posts::table
            .select((posts::id, posts::user_id))
            .chunked_by(posts::id)
            .desc()
            .batch_size(4)
            .load_iter_keyed(&mut conn, |r: &(i32, i32)| -r.0);
        assert!(matches!(it.next(), Some(Err(Error::KeyOutOfOrder { batch: 1, .. }))));
    }

    fn a_failing_batch_is_a_database_error_with_its_position(db) {
        let mut conn = connect::<B>(&db);
        let mut other = connect::<B>(&db);
        insert_events(&mut conn, &(1..=10).map(|id| event(id, id as i16)).collect::<Vec<_>>());

        let mut it = events::table.chunked_by(events::id).batch_size(5).load_batches::<Event>(&mut conn);
        assert_eq!(it.next().unwrap().unwrap().len(), 5);
        diesel::sql_query("DROP TABLE events").execute(&mut other).unwrap();
        match it.next() {
            Some(Err(e @ Error::Database { .. })) => {
                let Error::Database { batch, last_key, attempts, .. } = &e else { unreachable!() };
                assert_eq!((*batch, last_key.as_deref(), *attempts), (2, Some("5"), 1), "{e}");
                assert!(e.as_diesel().is_some());
                assert!(e.to_string().starts_with("batch 2 failed (after key 5): "), "{e}");
            }
            other => panic!("expected a Database error, got {other:?}"),
        }
        assert!(it.next().is_none());
        let p = it.progress();
        assert_eq!((p.rows, p.batches, p.queries, p.retries), (5, 1, 2, 0));
    }

    fn offset_alone_is_reported_as_offset(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let log = QueryLog::install(&mut conn);

        // The user wrote no LIMIT; the error must not tell them to remove one.
        let mut it = posts::table.into_boxed::<DB>().offset(2).chunked_by(posts::id).load_iter::<Post>(&mut conn);
        match it.next() {
            Some(Err(Error::QueryHasClause { clause, hint })) => {
                assert_eq!(clause, "OFFSET", "hint given: {hint}");
            }
            other => panic!("expected QueryHasClause, got {other:?}"),
        }
        assert!(it.next().is_none());
        drop(it);
        assert!(log.all().is_empty());
    }
}
