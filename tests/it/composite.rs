//! Composite keys, bounds, checkpoints, duplicate-key detection and the
//! unique-index check, on every backend.

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{EndReason, Error};

/// Events whose `(kind, seq)` repeat a lot: only `(kind, seq, id)` is unique.
fn insert_events<C>(conn: &mut C, n: i64)
where
    C: Connection,
    for<'a> &'a [Event]: diesel::Insertable<events::table>,
    for<'a> diesel::query_builder::InsertStatement<
        events::table,
        <&'a [Event] as diesel::Insertable<events::table>>::Values,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    let kinds = ["alpha", "beta", "gamma"];
    let rows: Vec<Event> = (1..=n)
        .map(|i| Event {
            // ids with gaps, not in key order
            id: (i * 7919) % 10_007 + 1,
            code: i as i16,
            kind: kinds[(i % 3) as usize].to_string(),
            seq: (i % 4) as i32,
            payload: format!("e{i}"),
        })
        .collect();
    for chunk in rows.chunks(500) {
        diesel::insert_into(events::table)
            .values(chunk)
            .execute(conn)
            .expect("insert events");
    }
}

fn ids<T, E: std::fmt::Debug>(
    it: impl Iterator<Item = Result<T, E>>,
    f: impl Fn(&T) -> i64,
) -> Vec<i64> {
    it.map(|r| f(&r.expect("row"))).collect()
}

backend_tests! {
    fn three_column_key_both_directions(db) {
        let mut conn = connect::<B>(&db);
        insert_events(&mut conn, 200);
        let key = (events::kind, events::seq, events::id);
        let expected_asc: Vec<i64> = events::table
            .order((events::kind, events::seq, events::id))
            .select(events::id)
            .load(&mut conn)
            .unwrap();
        let expected_desc: Vec<i64> = events::table
            .order((events::kind.desc(), events::seq.desc(), events::id.desc()))
            .select(events::id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(expected_asc.len(), 200);

        let log = QueryLog::install(&mut conn);
        let asc = ids(
            events::table.chunked_by(key).batch_size(7).load_iter::<Event>(&mut conn),
            |e| e.id,
        );
        assert_eq!(asc, expected_asc);
        // 200 rows in batches of 7: 28 full batches and a short one.
        assert_eq!(log.selects().len(), 29);
        log.clear();
        let desc: Vec<i64> = events::table
            .chunked_by(key)
            .batch_size(7)
            .desc()
            .load_batches::<Event>(&mut conn)
            .flat_map(|b| b.unwrap())
            .map(|e| e.id)
            .collect();
        assert_eq!(desc, expected_desc);
        let sql = log.selects();
        assert!(sql[1].contains("ORDER BY") && sql[1].contains(" DESC, "), "{}", sql[1]);
        // a seek predicate on all three columns, never `a > x AND b > y`
        assert!(!sql[1].contains("1 = 1"), "{}", sql[1]);
    }

    fn composite_start_after_and_end_at(db) {
        let mut conn = connect::<B>(&db);
        insert_events(&mut conn, 120);
        let all: Vec<(String, i32, i64)> = events::table
            .order((events::kind, events::seq, events::id))
            .select((events::kind, events::seq, events::id))
            .load(&mut conn)
            .unwrap();
        let key = (events::kind, events::seq, events::id);
        let (lo, hi) = (all[17].clone(), all[90].clone());
        let keyed = |r: &(String, i32, i64)| r.clone();

        // ascending: exclusive start, inclusive end
        let got: Vec<(String, i32, i64)> = events::table
            .select((events::kind, events::seq, events::id))
            .chunked_by(key)
            .start_after(lo.clone())
            .end_at(hi.clone())
            .batch_size(10)
            .load_iter_keyed(&mut conn, keyed)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, all[18..=90].to_vec());

        // descending: start below `hi`, end at `lo` inclusive
        let got: Vec<(String, i32, i64)> = events::table
            .select((events::kind, events::seq, events::id))
            .chunked_by(key)
            .desc()
            .start_after(hi.clone())
            .end_at(lo.clone())
            .batch_size(10)
            .load_iter_keyed(&mut conn, keyed)
            .collect::<Result<_, _>>()
            .unwrap();
        let mut expected = all[17..90].to_vec();
        expected.reverse();
        assert_eq!(got, expected);

        // with limit_total
        let got: Vec<(String, i32, i64)> = events::table
            .select((events::kind, events::seq, events::id))
            .chunked_by(key)
            .start_after(lo.clone())
            .end_at(hi.clone())
            .limit_total(15)
            .batch_size(10)
            .load_iter_keyed(&mut conn, keyed)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, all[18..33].to_vec());
    }

    fn integer_bounds_inclusive_exclusive_empty_inverted(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=50);
        let log = QueryLog::install(&mut conn);
        let scan = |conn: &mut Conn, after: Option<i32>, until: Option<i32>, desc: bool| {
            let mut c = posts::table.chunked_by(posts::id).batch_size(4);
            if let Some(a) = after { c = c.start_after(a); }
            if let Some(u) = until { c = c.end_at(u); }
            if desc { c = c.desc(); }
            let mut it = c.load_iter::<Post>(conn);
            let ids: Vec<i32> = it.by_ref().map(|p| p.unwrap().id).collect();
            (ids, it.end_reason())
        };
        assert_eq!(scan(&mut conn, Some(10), Some(20), false).0, (11..=20).collect::<Vec<_>>());
        assert_eq!(scan(&mut conn, None, Some(5), false).0, vec![1, 2, 3, 4, 5]);
        assert_eq!(scan(&mut conn, Some(20), Some(10), true).0, (10..20).rev().collect::<Vec<_>>());
        assert_eq!(scan(&mut conn, None, Some(47), true).0, vec![50, 49, 48, 47]);
        assert_eq!(scan(&mut conn, Some(49), Some(100), false).0, vec![50]);
        // empty (start_after == end_at) and inverted bounds: nothing, and no query
        log.clear();
        for (after, until, desc) in [(10, 10, false), (20, 10, false), (10, 10, true), (10, 20, true)] {
            let (ids, reason) = scan(&mut conn, Some(after), Some(until), desc);
            assert!(ids.is_empty());
            assert_eq!(reason, Some(EndReason::EmptyBounds));
        }
        assert!(log.selects().is_empty(), "{:#?}", log.all());
        // bounds that hold no row but are not inverted: one query, a normal end
        let (ids, reason) = scan(&mut conn, Some(100), Some(200), false);
        assert!(ids.is_empty());
        assert_eq!(reason, Some(EndReason::Exhausted));
        assert_eq!(log.selects().len(), 1);
    }

    fn text_bounds_follow_the_database_collation(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let slugs: Vec<String> = posts::table.order(posts::slug).select(posts::slug).load(&mut conn).unwrap();
        let got: Vec<String> = posts::table
            .chunked_by(posts::slug)
            .start_after(slugs[4].clone())
            .end_at(slugs[20].clone())
            .batch_size(6)
            .load_iter::<Post>(&mut conn)
            .map(|p| p.unwrap().slug)
            .collect();
        assert_eq!(got, slugs[5..=20].to_vec());
        // inverted text bounds cannot be judged in Rust (collations): the database says so
        let mut it = posts::table
            .chunked_by(posts::slug)
            .start_after(slugs[20].clone())
            .end_at(slugs[4].clone())
            .load_iter::<Post>(&mut conn);
        assert!(it.next().is_none());
        assert_eq!(it.end_reason(), Some(EndReason::Exhausted));
    }

    fn resume_from_every_checkpoint(db) {
        let mut conn = connect::<B>(&db);
        insert_events(&mut conn, 23);
        let key = (events::kind, events::seq, events::id);
        for desc in [false, true] {
            let full: Vec<i64> = {
                let c = events::table.chunked_by(key).batch_size(5);
                let c = if desc { c.desc() } else { c };
                ids(c.load_iter::<Event>(&mut conn), |e| e.id)
            };
            assert_eq!(full.len(), 23);
            for k in 0..=full.len() {
                let c = events::table.chunked_by(key).batch_size(5);
                let c = if desc { c.desc() } else { c };
                let mut it = c.load_iter::<Event>(&mut conn);
                let mut seen: Vec<i64> = it.by_ref().take(k).map(|e| e.unwrap().id).collect();
                // the checkpoint is the last item handed out, not the last row loaded
                let checkpoint = it.last_key().cloned();
                drop(it);
                let c = events::table.chunked_by(key).batch_size(5);
                let c = if desc { c.desc() } else { c };
                let c = match checkpoint {
                    Some(k) => c.start_after(k),
                    None => c,
                };
                seen.extend(ids(c.load_iter::<Event>(&mut conn), |e| e.id));
                assert_eq!(seen, full, "desc={desc} k={k}");
            }
        }
    }

    fn checkpoint_round_trips_through_json(db) {
        let mut conn = connect::<B>(&db);
        insert_events(&mut conn, 40);
        let key = (events::kind, events::seq, events::id);
        let mut it = events::table.chunked_by(key).batch_size(8).load_iter::<Event>(&mut conn);
        let first: Vec<i64> = it.by_ref().take(13).map(|e| e.unwrap().id).collect();
        let json = serde_json::to_string(it.last_key().unwrap()).unwrap();
        drop(it);
        let saved: (String, i32, i64) = serde_json::from_str(&json).unwrap();
        let rest = ids(
            events::table.chunked_by(key).batch_size(8).start_after(saved).load_iter::<Event>(&mut conn),
            |e| e.id,
        );
        assert_eq!(first.len() + rest.len(), 40);
        let mut all = first;
        all.extend(rest);
        let expected: Vec<i64> = events::table
            .order((events::kind, events::seq, events::id))
            .select(events::id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(all, expected);
    }

    fn duplicate_keys_in_a_batch_are_an_error(db) {
        let mut conn = connect::<B>(&db);
        insert_events(&mut conn, 30);
        // (kind, seq) is not unique: 30 rows, 12 distinct values
        let mut it = events::table
            .chunked_by((events::kind, events::seq))
            .batch_size(10)
            .load_iter::<Event>(&mut conn);
        match it.next() {
            Some(Err(Error::DuplicateKey { columns, value, batch })) => {
                assert_eq!(columns, "(events.kind, events.seq)");
                assert_eq!(value, "(\"alpha\", 0)");
                assert_eq!(batch, 1);
            }
            other => panic!("expected DuplicateKey, got {other:?}"),
        }
        assert!(it.next().is_none());
        assert_eq!(it.progress().rows, 0);
    }

    fn verify_unique_reads_the_schema(db) {
        let mut conn = connect::<B>(&db);
        posts::table.chunked_by(posts::id).verify_unique(&mut conn).unwrap();
        posts::table.chunked_by(posts::slug).verify_unique(&mut conn).unwrap();
        #[cfg(feature = "chrono")]
        posts::table.chunked_by((posts::created_at, posts::id)).verify_unique(&mut conn).unwrap();
        events::table.chunked_by(events::code).verify_unique(&mut conn).unwrap();
        events::table.chunked_by((events::kind, events::seq, events::id)).verify_unique(&mut conn).unwrap();
        #[cfg(feature = "chrono")]
        assert!(matches!(
            posts::table.chunked_by(posts::created_at).verify_unique(&mut conn).unwrap_err(),
            Error::NotUnique { .. }
        ));
        for err in [
            posts::table.chunked_by(posts::user_id).verify_unique(&mut conn).unwrap_err(),
            events::table.chunked_by((events::kind, events::seq)).verify_unique(&mut conn).unwrap_err(),
        ] {
            assert!(matches!(err, Error::NotUnique { .. }), "{err}");
        }
        let err = posts::table.chunked_by(posts::user_id).verify_unique(&mut conn).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no primary key or unique index of table posts is made of key columns only \
             (posts.user_id); rows sharing a key value would be skipped at batch boundaries: \
             add a unique tiebreaker column to the key, e.g. (posts.user_id, id)"
        );
    }
}

/// Timestamp keys need the crate's `chrono` feature.
#[cfg(feature = "chrono")]
mod timestamps {
    use super::*;

    /// 90 posts on 9 distinct `created_at` values: 10 rows share each value,
    /// more than a batch of 4.
    fn crowded() -> Vec<Post> {
        (1..=90)
            .map(|id| Post {
                created_at: ts(i64::from((id * 37) % 9) * 3600),
                ..post(id)
            })
            .collect()
    }

    backend_tests! {
        fn created_at_with_id_tiebreaker_both_directions(db) {
            let mut conn = connect::<B>(&db);
            insert_post_rows(&mut conn, &crowded());
            let asc: Vec<i32> = posts::table
                .order((posts::created_at, posts::id))
                .select(posts::id)
                .load(&mut conn)
                .unwrap();
            let desc: Vec<i32> = posts::table
                .order((posts::created_at.desc(), posts::id.desc()))
                .select(posts::id)
                .load(&mut conn)
                .unwrap();
            let key = (posts::created_at, posts::id);
            let log = QueryLog::install(&mut conn);
            let got: Vec<i32> = posts::table.chunked_by(key).batch_size(4)
                .load_iter::<Post>(&mut conn).map(|p| p.unwrap().id).collect();
            assert_eq!(got, asc);
            // 90 rows by 4: 22 full batches and a short one
            assert_eq!(log.selects().len(), 23);
            let got: Vec<i32> = posts::table.chunked_by(key).batch_size(4).desc()
                .load_iter::<Post>(&mut conn).map(|p| p.unwrap().id).collect();
            assert_eq!(got, desc);
            // a single non-unique column is caught
            let first = posts::table.chunked_by(posts::created_at).batch_size(4)
                .load_iter::<Post>(&mut conn).next();
            assert!(matches!(first, Some(Err(Error::DuplicateKey { .. }))), "{first:?}");
        }

        fn timestamp_bounds_and_checkpoint(db) {
            let mut conn = connect::<B>(&db);
            insert_post_rows(&mut conn, &crowded());
            let all: Vec<(chrono::NaiveDateTime, i32)> = posts::table
                .order((posts::created_at, posts::id))
                .select((posts::created_at, posts::id))
                .load(&mut conn)
                .unwrap();
            let key = (posts::created_at, posts::id);
            let got: Vec<(chrono::NaiveDateTime, i32)> = posts::table
                .chunked_by(key)
                .start_after(all[12])
                .end_at(all[60])
                .batch_size(7)
                .load_iter::<Post>(&mut conn)
                .map(|p| { let p = p.unwrap(); (p.created_at, p.id) })
                .collect();
            assert_eq!(got, all[13..=60].to_vec());
            // timestamps compare in Rust: inverted bounds run no query
            let log = QueryLog::install(&mut conn);
            let mut it = posts::table.chunked_by(key).start_after(all[60]).end_at(all[12])
                .load_iter::<Post>(&mut conn);
            assert!(it.next().is_none());
            assert_eq!(it.end_reason(), Some(EndReason::EmptyBounds));
            assert!(log.selects().is_empty());
        }
    }

    #[cfg(feature = "serde")]
    mod json {
        use super::*;
        backend_tests! {
            fn timestamp_checkpoint_as_json(db) {
                let mut conn = connect::<B>(&db);
                insert_post_rows(&mut conn, &crowded());
                let key = (posts::created_at, posts::id);
                let mut it = posts::table.chunked_by(key).batch_size(8).load_iter::<Post>(&mut conn);
                let first: Vec<i32> = it.by_ref().take(30).map(|p| p.unwrap().id).collect();
                let json = serde_json::to_string(it.last_key().unwrap()).unwrap();
                drop(it);
                let saved: (chrono::NaiveDateTime, i32) = serde_json::from_str(&json).unwrap();
                let rest: Vec<i32> = posts::table.chunked_by(key).batch_size(8).start_after(saved)
                    .load_iter::<Post>(&mut conn).map(|p| p.unwrap().id).collect();
                let expected: Vec<i32> = posts::table.order((posts::created_at, posts::id))
                    .select(posts::id).load(&mut conn).unwrap();
                assert_eq!([first, rest].concat(), expected);
            }
        }
    }
}
