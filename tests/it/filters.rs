//! Filters the seek predicate must not change: raw SQL with a top-level `OR`
//! (refused before any query), Diesel's grouped `OR`s (scanned), and keys on
//! either side of a join.
//!
//! Every test runs on SQLite, PostgreSQL and MariaDB/MySQL (`backend_tests!`) and
//! compares the scan with Diesel's own `load` of the same query.

use crate::common;

use crate::core_scans::support;

use common::*;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;
use support::*;

/// The raw filter of the bug report: two rows, far apart.
const RAW_OR: &str = "title = 'post 6' OR title = 'post 1'";

/// Asserts `item` is `UngroupedOr` naming `OR` and the raw condition.
fn assert_ungrouped_or<T: std::fmt::Debug>(item: Option<Result<T, Error>>, condition: &str) {
    match item {
        Some(Err(e @ Error::UngroupedOr { .. })) => {
            let Error::UngroupedOr {
                operator,
                condition: c,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*operator, "OR", "{e}");
            assert!(c.contains(condition), "{c:?} does not show {condition:?}");
            let msg = e.to_string();
            assert!(msg.contains("outside parentheses"), "{msg}");
            assert!(msg.contains("sql(\"(a OR b)\")"), "{msg}");
            assert!(msg.contains(".or_filter(..)"), "{msg}");
        }
        other => panic!("expected UngroupedOr, got {other:?}"),
    }
}

backend_tests! {
    fn a_raw_filter_with_a_top_level_or_is_refused_before_any_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=10);
        let log = QueryLog::install(&mut conn);
        let raw = || posts::table.filter(sql::<Bool>(RAW_OR));

        // Before: `WHERE (title = 'post 6' OR title = 'post 1' AND id <= 3)` gave [1, 6].
        let mut it = raw().chunked_by(posts::id).end_at(3).load_iter::<Post>(&mut conn);
        assert_ungrouped_or(it.next(), RAW_OR);
        assert!(it.next().is_none(), "the scan must end after the error");
        drop(it);

        // Before: a text key in batches of 2 never ended (`take` keeps a broken
        // scan finite), and batches of 1 failed with NoProgress.
        let got: Vec<_> = raw().chunked_by(posts::slug).batch_size(2).load_iter::<Post>(&mut conn).take(100).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_ungrouped_or(got.into_iter().next(), RAW_OR);
        let mut it = raw()
            .select((posts::slug, posts::id))
            .chunked_by(posts::slug)
            .batch_size(1)
            .load_iter_keyed(&mut conn, |r: &(String, i32)| r.0.clone());
        assert_ungrouped_or(it.next(), RAW_OR);
        assert!(it.next().is_none());
        drop(it);

        // Descending, in batches, and in lower case.
        let mut it = posts::table
            .filter(sql::<Bool>("title = 'post 6' or title = 'post 1'"))
            .chunked_by(posts::id)
            .desc()
            .load_batches::<Post>(&mut conn);
        assert_ungrouped_or(it.next(), "title = 'post 6' or title = 'post 1'");
        assert!(it.next().is_none());
        drop(it);

        // A boxed query, and `or_filter` of raw SQL on a query without a filter.
        let mut it = posts::table.into_boxed::<DB>().filter(sql::<Bool>(RAW_OR)).chunked_by(posts::id).load_iter::<Post>(&mut conn);
        assert_ungrouped_or(it.next(), RAW_OR);
        drop(it);
        let mut it = posts::table.or_filter(sql::<Bool>(RAW_OR)).chunked_by(posts::id).load_iter::<Post>(&mut conn);
        assert_ungrouped_or(it.next(), RAW_OR);
        drop(it);

        // The planning calls.
        assert_ungrouped_or(Some(raw().chunked_by(posts::id).partitions(2, &mut conn)), RAW_OR);
        assert_ungrouped_or(Some(raw().chunked_by(posts::id).estimate_total(&mut conn)), RAW_OR);

        assert!(log.all().is_empty(), "no query may run: {:#?}", log.all());
    }

    fn grouped_ors_are_scanned_like_diesel_loads_them(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        // Diesel's `.or(..)`, `or_filter` after a filter, raw SQL in parentheses,
        // raw SQL followed by a filter (Diesel groups the two), a boxed query.
        let query = |name: &str| -> posts::BoxedQuery<'static, DB> {
            let raw = |s: &'static str| sql::<Bool>(s);
            match name {
                "or" => posts::table.filter(posts::published.eq(true).or(posts::id.lt(20))).into_boxed(),
                "or_filter" => posts::table.filter(posts::published.eq(true)).or_filter(posts::id.lt(20)).into_boxed(),
                "raw in parentheses" => posts::table.filter(raw("(published = TRUE OR id < 20)")).into_boxed(),
                "raw, then a filter" => posts::table.filter(raw("published = TRUE OR id < 20")).filter(posts::id.ne(9)).into_boxed(),
                "boxed" => posts::table.into_boxed().filter(raw("(title = 'post 52' OR title = 'post 2')")),
                _ => unreachable!(),
            }
        };
        for name in ["or", "or_filter", "raw in parentheses", "raw, then a filter", "boxed"] {
            let rebuild = || query(name);
            let mut expected: Vec<Post> = rebuild().load(&mut conn).unwrap();
            expected.sort_by_key(|p| p.id);
            assert!(expected.len() >= 2, "{name}");
            for batch in [1, 2, 3] {
                // ascending, by id
                let got = collect_ok(rebuild().chunked_by(posts::id).batch_size(batch).load_iter::<Post>(&mut conn));
                assert_eq!(ids(&got), ids(&expected), "{name}, batch {batch}");
                // descending, by a text key, up to an end
                let end = post(25).slug;
                let got = collect_ok(rebuild().chunked_by(posts::slug).batch_size(batch).desc().end_at(end.clone()).load_iter::<Post>(&mut conn));
                let want: Vec<i32> = expected.iter().rev().filter(|p| p.slug >= end).map(|p| p.id).collect();
                assert_eq!(ids(&got), want, "{name}, batch {batch}, desc by slug");
                // ascending by a text key, up to an end, keyed
                let got = collect_ok(
                    rebuild()
                        .select((posts::slug, posts::id))
                        .chunked_by(posts::slug)
                        .batch_size(batch)
                        .end_at(post(3).slug)
                        .load_iter_keyed(&mut conn, |r: &(String, i32)| r.0.clone()),
                );
                let want: Vec<i32> = expected.iter().filter(|p| p.id <= 3).map(|p| p.id).collect();
                assert_eq!(got.iter().map(|r| r.1).collect::<Vec<_>>(), want, "{name}, batch {batch}, keyed");
            }
            // the planning calls see the same rows
            let parts = rebuild().chunked_by(posts::id).partitions(3, &mut conn).unwrap();
            assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), expected.len() as u64, "{name}");
            let mut from_parts = Vec::new();
            for p in &parts {
                from_parts.extend(collect_ok(rebuild().chunked_by(posts::id).within(p).batch_size(2).load_iter::<Post>(&mut conn)));
            }
            assert_eq!(ids(&from_parts), ids(&expected), "{name}, partitions");
            if B::NAME != "postgres" {
                assert_eq!(rebuild().chunked_by(posts::id).estimate_total(&mut conn).unwrap(), expected.len() as u64, "{name}");
            }
        }
    }

    fn a_union_wrapped_in_a_filter_is_scanned(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        insert_users(&mut conn, &[user(1), user(2), user(3)]);

        // What the compile error for `.union(..)` suggests: the posts of users 1
        // and 3 (post(id).user_id is id % 3 + 1).
        let union = users::table
            .select(users::id)
            .filter(users::id.eq(1))
            .union(users::table.select(users::id).filter(users::id.eq(3)));
        let got = collect_ok(
            posts::table
                .filter(posts::user_id.eq_any(union))
                .chunked_by(posts::id)
                .batch_size(2)
                .desc()
                .load_iter::<Post>(&mut conn),
        );
        let want: Vec<i32> = GAPPY_IDS.iter().rev().copied().filter(|&id| id % 3 != 1).collect();
        assert_eq!(ids(&got), want);
    }

    fn keys_from_the_always_present_side_of_a_join(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        // Users 1 and 2 exist; user 3 (of posts 2, 5, 8, ...) does not.
        insert_users(&mut conn, &[user(1), user(2), user(4)]);

        // users INNER JOIN posts, by a posts key: every pair.
        let got = collect_ok(
            users::table
                .inner_join(posts::table)
                .select((posts::id, users::name))
                .chunked_by(posts::id)
                .batch_size(3)
                .desc()
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0),
        );
        let want: Vec<(i32, String)> = (1..=20).rev().filter(|id| id % 3 != 2).map(|id| (id, format!("user {}", id % 3 + 1))).collect();
        assert_eq!(got, want);
        let got = collect_ok(users::table.inner_join(posts::table).chunked_by(posts::id).batch_size(4).load_iter::<(User, Post)>(&mut conn));
        assert_eq!(got.iter().map(|(u, p)| (p.id, u.name.clone())).rev().collect::<Vec<_>>(), want);
        let parts = users::table.inner_join(posts::table).chunked_by(posts::id).partitions(3, &mut conn).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), want.len() as u64);

        // posts LEFT JOIN users, by a posts key: every post, with or without a user.
        let got = collect_ok(
            posts::table
                .left_join(users::table)
                .select((posts::id, users::name.nullable()))
                .chunked_by(posts::id)
                .batch_size(3)
                .end_at(10)
                .load_iter_keyed(&mut conn, |r: &(i32, Option<String>)| r.0),
        );
        let want: Vec<(i32, Option<String>)> = (1..=10).map(|id| (id, (id % 3 != 2).then(|| format!("user {}", id % 3 + 1)))).collect();
        assert_eq!(got, want);
        let parts = posts::table.left_join(users::table).chunked_by(posts::id).partitions(4, &mut conn).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 20);

        // users LEFT JOIN posts, by a users key: the users without a post.
        let got = collect_ok(
            users::table
                .left_join(posts::table)
                .filter(posts::id.is_null())
                .select((users::id, users::name))
                .chunked_by(users::id)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0),
        );
        assert_eq!(got, [(4, "user 4".to_string())]);
    }
}
