//! Timestamp keys (`posts.created_at`), with the crate's `chrono` feature.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

/// 30 posts whose `created_at` values are unique and in an order unrelated to
/// their ids; with `millis`, some differ from others by less than a second.
fn dated_posts(millis: bool) -> Vec<Post> {
    (1..=30)
        .map(|id| {
            // 17 is invertible mod 31: ids 1..=30 get distinct slots 1..=30.
            let slot = i64::from(id * 17 % 31);
            let mut at = ts(slot * 3600 - 86_400 * 400);
            if millis {
                at = ts((slot / 2) * 3600) + chrono::TimeDelta::milliseconds((slot % 2) * 250 + 1);
            }
            Post {
                created_at: at,
                ..post(id)
            }
        })
        .collect()
}

fn by_created_at(mut posts: Vec<Post>) -> Vec<Post> {
    posts.sort_by_key(|p| p.created_at);
    posts
}

backend_tests! {
    fn timestamp_key_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        let rows = dated_posts(false);
        insert_post_rows(&mut conn, &rows);
        let sorted = by_created_at(rows);
        let log = QueryLog::install(&mut conn);

        for n in [1u64, 4, 30] {
            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(n).load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&sorted), "ascending, batch_size({n})");
            assert_eq!(got, sorted);
            // ceil(30 / n) queries: the batch without a look-ahead row is the last.
            assert_eq!(log.selects().len(), 30usize.div_ceil(n as usize), "batch_size({n})");
            for q in &select_sql(&log)[1..] {
                assert!(q.contains("WHERE posts.created_at > ? ORDER BY posts.created_at LIMIT ?"), "{q}");
            }

            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(n).desc().load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&reversed(&sorted)), "descending, batch_size({n})");
            for q in &select_sql(&log)[1..] {
                assert!(q.contains("WHERE posts.created_at < ? ORDER BY posts.created_at DESC LIMIT ?"), "{q}");
            }
        }

        // Resume from a timestamp, both ways.
        let pivot = sorted[11].created_at;
        let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(4).start_after(pivot).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), ids(&sorted[12..]));
        let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(4).desc().start_after(pivot).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), ids(&reversed(&sorted[..11])));

        // And `last_key()` is a timestamp that resumes exactly.
        let mut it = posts::table.chunked_by(posts::created_at).batch_size(4).load_iter::<Post>(&mut conn);
        let first: Vec<i32> = (0..6).map(|_| it.next().unwrap().unwrap().id).collect();
        let last = *it.last_key().unwrap();
        drop(it);
        assert_eq!(first, ids(&sorted[..6]));
        assert_eq!(last, sorted[5].created_at);
        let rest = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(4).start_after(last).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&rest), ids(&sorted[6..]));
    }

    fn timestamp_key_with_sub_second_values(db) {
        let mut conn = connect::<B>(&db);
        let rows = dated_posts(true);
        insert_post_rows(&mut conn, &rows);
        let sorted = by_created_at(rows);
        let from_db: Vec<Post> = posts::table.order(posts::created_at).load(&mut conn).unwrap();
        assert_eq!(from_db, sorted, "the values survive the round trip");

        for n in [1u64, 3, 4] {
            let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(n).load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&sorted), "ascending, batch_size({n})");
            let got = collect_ok(posts::table.chunked_by(posts::created_at).batch_size(n).desc().load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&reversed(&sorted)), "descending, batch_size({n})");
        }

        // A composite (timestamp, id) key with ties on the timestamp.
        diesel::update(posts::table.filter(posts::id.le(10))).set(posts::created_at.eq(ts(0))).execute(&mut conn).unwrap();
        let expected: Vec<Post> = posts::table.order((posts::created_at, posts::id)).load(&mut conn).unwrap();
        let got = collect_ok(posts::table.chunked_by((posts::created_at, posts::id)).batch_size(3).load_iter::<Post>(&mut conn));
        assert_eq!(got, expected);
        let got = collect_ok(posts::table.chunked_by((posts::created_at, posts::id)).batch_size(3).desc().load_iter::<Post>(&mut conn));
        assert_eq!(got, reversed(&expected));
    }
}
