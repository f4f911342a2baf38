//! What can be scanned: filtered queries, joins, boxed queries (and the boxed
//! queries that must be refused), custom selections and models without the key.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

/// Asserts the first item of a scan is `QueryHasClause` naming `clause`, and that
/// the scan then ends.
fn assert_refused<T: std::fmt::Debug>(
    mut it: impl Iterator<Item = Result<T, Error>>,
    clause: &str,
) {
    match it.next() {
        Some(Err(Error::QueryHasClause { clause: c, hint })) => {
            assert_eq!(c, clause, "wrong clause named (hint: {hint})");
            assert!(!hint.is_empty());
        }
        other => panic!("expected QueryHasClause {{ clause: {clause:?} }}, got {other:?}"),
    }
    assert!(it.next().is_none(), "the scan must end after the error");
    assert!(it.next().is_none(), "and stay ended");
}

/// The posts 1..=n joined with their users, where users 1 and 2 exist and user 3
/// (of posts 2, 5, 8, ...) does not.
fn with_user(id: i32) -> (Post, Option<User>) {
    let p = post(id);
    let u = (p.user_id != 3).then(|| user(p.user_id));
    (p, u)
}

backend_tests! {
    fn filters_are_kept_in_every_batch(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(
            posts::table.filter(posts::published.eq(true)).chunked_by(posts::id).batch_size(4).load_iter::<Post>(&mut conn),
        );

        assert_eq!(got, (2..=30).step_by(2).map(post).collect::<Vec<_>>());
        // 15 rows: 4 + 4 + 4 + 3.
        assert_eq!(log.selects().len(), 4, "{:#?}", log.all());
        for (i, q) in log.selects().iter().enumerate() {
            let s = sql(q);
            assert!(s.contains(" WHERE ((posts.published = ?) AND "), "query {i}: {q}");
            assert_eq!(binds(q)[0], "true", "query {i}: {q}");
            if i > 0 {
                assert!(s.contains("AND posts.id > ?) ORDER BY posts.id LIMIT ?"), "query {i}: {q}");
            }
        }
    }

    fn an_or_filter_is_not_broken_by_the_seek_predicate(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let log = QueryLog::install(&mut conn);

        // `published OR id < 6` AND `id > last`: without parentheses the scan would
        // never end (`id < 6` is true again in every batch) or repeat rows.
        let got = collect_ok(
            posts::table
                .filter(posts::published.eq(true).or(posts::id.lt(6)))
                .filter(posts::score.is_not_null())
                .chunked_by(posts::id)
                .batch_size(3)
                .load_iter::<Post>(&mut conn),
        );

        let expected: Vec<i32> = (1..=30).filter(|&id| (id % 2 == 0 || id < 6) && id % 5 != 0).collect();
        assert_eq!(ids(&got), expected);
        assert_eq!(log.selects().len(), expected.len().div_ceil(3), "{:#?}", log.all());
        for q in log.selects() {
            assert!(sql(&q).contains("(posts.published = ?) OR (posts.id < ?)"), "{q}");
            assert!(sql(&q).contains("posts.score IS NOT NULL"), "{q}");
        }
    }

    fn inner_join_loads_post_and_user(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        insert_users(&mut conn, &[user(1), user(2)]);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(
            posts::table.inner_join(users::table).chunked_by(posts::id).batch_size(4).load_iter::<(Post, User)>(&mut conn),
        );

        let expected: Vec<(Post, User)> = (1..=20).map(with_user).filter_map(|(p, u)| Some((p, u?))).collect();
        assert_eq!(expected.len(), 13);
        assert_eq!(got, expected);
        // 13 rows: 4 + 4 + 4 + 1.
        assert_eq!(log.selects().len(), 4, "{:#?}", log.all());
        for q in select_sql(&log) {
            assert!(q.contains("FROM (posts INNER JOIN users ON (posts.user_id = users.id)) WHERE "), "{q}");
            assert!(q.ends_with(" ORDER BY posts.id LIMIT ?"), "{q}");
        }

        // With a filter on the joined table, descending.
        let got = collect_ok(
            posts::table
                .inner_join(users::table)
                .filter(users::name.eq("user 2"))
                .chunked_by(posts::id)
                .batch_size(2)
                .desc()
                .load_batches::<(Post, User)>(&mut conn),
        );
        let ids_of = |b: &Vec<(Post, User)>| b.iter().map(|(p, u)| (p.id, u.id)).collect::<Vec<_>>();
        assert_eq!(got.iter().map(ids_of).collect::<Vec<_>>(), [
            vec![(19, 2), (16, 2)], vec![(13, 2), (10, 2)], vec![(7, 2), (4, 2)], vec![(1, 2)],
        ]);
    }

    fn left_join_loads_missing_users_as_none(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=20);
        insert_users(&mut conn, &[user(1), user(2)]);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(
            posts::table.left_join(users::table).chunked_by(posts::id).batch_size(4).load_iter::<(Post, Option<User>)>(&mut conn),
        );

        let expected: Vec<(Post, Option<User>)> = (1..=20).map(with_user).collect();
        assert_eq!(got, expected);
        assert_eq!(got.iter().filter(|(_, u)| u.is_none()).count(), 7);
        // 20 rows in batches of 4: 5 full batches; the 5th finds no look-ahead row,
        // so no query runs to find that nothing is left.
        assert_eq!(log.selects().len(), 5, "{:#?}", log.all());
        for q in select_sql(&log) {
            assert!(q.contains("FROM (posts LEFT OUTER JOIN users ON (posts.user_id = users.id)) WHERE "), "{q}");
        }

        // Only the posts without a user.
        let got = collect_ok(
            posts::table
                .left_join(users::table)
                .filter(users::id.is_null())
                .chunked_by(posts::id)
                .batch_size(3)
                .load_iter::<(Post, Option<User>)>(&mut conn),
        );
        assert_eq!(got, (1..=20).map(with_user).filter(|(_, u)| u.is_none()).collect::<Vec<_>>());
    }

    fn a_boxed_query_with_dynamic_filters_is_scanned(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let log = QueryLog::install(&mut conn);

        let (only_published, min_id, title_like) = (true, Some(5), None::<&str>);
        let mut query = posts::table.into_boxed::<DB>();
        if only_published {
            query = query.filter(posts::published.eq(true));
        }
        if let Some(min) = min_id {
            query = query.filter(posts::id.ge(min));
        }
        if let Some(pattern) = title_like {
            query = query.filter(posts::title.like(pattern));
        }
        let got = collect_ok(query.chunked_by(posts::id).batch_size(4).load_iter::<Post>(&mut conn));

        assert_eq!(ids(&got), (6..=30).step_by(2).collect::<Vec<_>>());
        // 13 rows: 4 + 4 + 4 + 1.
        assert_eq!(log.selects().len(), 4, "{:#?}", log.all());
        for (i, q) in log.selects().iter().enumerate() {
            let s = sql(q);
            assert!(s.contains("posts.published = ?"), "query {i}: {q}");
            assert!(s.contains("posts.id >= ?"), "query {i}: {q}");
            assert!(s.ends_with(" ORDER BY posts.id LIMIT ?"), "query {i}: {q}");
            assert_eq!(binds(q)[..2], ["true", "5"], "query {i}: {q}");
        }

        // Boxed, descending, capped, batch by batch.
        let query = posts::table.into_boxed::<DB>().filter(posts::published.eq(false));
        let got = collect_ok(query.chunked_by(posts::id).batch_size(4).desc().limit_total(6).load_batches::<Post>(&mut conn));
        assert_eq!(batch_ids(&got), [vec![29, 27, 25, 23], vec![21, 19]]);

        // A boxed join.
        insert_users(&mut conn, &[user(1)]);
        let query = posts::table.inner_join(users::table).into_boxed::<DB>().filter(posts::id.lt(10));
        let got = collect_ok(query.chunked_by(posts::id).batch_size(2).load_iter::<(Post, User)>(&mut conn));
        assert_eq!(got, [(post(3), user(1)), (post(6), user(1)), (post(9), user(1))]);
    }

    fn a_boxed_query_with_order_limit_or_offset_is_refused_without_a_query(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let log = QueryLog::install(&mut conn);

        let boxed = || posts::table.into_boxed::<DB>();
        assert_refused(boxed().order(posts::title).chunked_by(posts::id).load_iter::<Post>(&mut conn), "ORDER BY");
        assert_refused(boxed().order_by(posts::id.desc()).chunked_by(posts::id).load_batches::<Post>(&mut conn), "ORDER BY");
        assert_refused(
            boxed().filter(posts::published.eq(true)).then_order_by(posts::id).chunked_by(posts::id).desc().load_iter::<Post>(&mut conn),
            "ORDER BY",
        );
        assert_refused(boxed().limit(3).chunked_by(posts::id).load_iter::<Post>(&mut conn), "LIMIT");
        assert_refused(boxed().limit(3).offset(1).chunked_by(posts::id).load_iter::<Post>(&mut conn), "LIMIT");
        assert_refused(
            posts::table.select((posts::id, posts::title)).limit(3).into_boxed::<DB>()
                .chunked_by(posts::id)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0),
            "LIMIT",
        );
        // `.offset(..)` alone: SQLite and MySQL render it as `LIMIT -1 OFFSET ?` /
        // `LIMIT 18446744073709551615 OFFSET ?`. Refused on every backend (which clause it
        // is named: see `errors::offset_alone_is_reported_as_offset`).
        let mut it = boxed().offset(2).chunked_by(posts::id).load_iter::<Post>(&mut conn);
        assert!(matches!(it.next(), Some(Err(Error::QueryHasClause { .. }))));
        assert!(it.next().is_none());
        drop(it);

        assert!(log.all().is_empty(), "no query may run: {:#?}", log.all());
    }

    fn a_custom_selection_is_kept_by_the_keyed_terminals(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        let log = QueryLog::install(&mut conn);
        let expected: Vec<(i32, String)> = GAPPY_IDS.iter().map(|&id| (id, format!("post {id}"))).collect();

        let got = collect_ok(
            posts::table
                .select((posts::id, posts::title))
                .chunked_by(posts::id)
                .batch_size(4)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0),
        );
        assert_eq!(got, expected);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        for q in select_sql(&log) {
            assert!(q.starts_with("SELECT posts.id, posts.title FROM posts WHERE "), "{q}");
        }

        log.clear();
        let got = collect_ok(
            posts::table
                .select((posts::id, posts::title))
                .chunked_by(posts::id)
                .batch_size(4)
                .load_batches_keyed(&mut conn, |r: &(i32, String)| r.0),
        );
        let expected_batches: Vec<Vec<(i32, String)>> = expected.chunks(4).map(<[_]>::to_vec).collect();
        assert_eq!(got, expected_batches);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        for q in select_sql(&log) {
            assert!(q.starts_with("SELECT posts.id, posts.title FROM posts WHERE "), "{q}");
        }

        // A selection that is a single column, with a filter, descending.
        log.clear();
        let got = collect_ok(
            posts::table
                .select(posts::slug)
                .filter(posts::id.gt(40))
                .chunked_by(posts::slug)
                .batch_size(3)
                .desc()
                .load_iter_keyed(&mut conn, |slug: &String| slug.clone()),
        );
        let slugs: Vec<String> = GAPPY_IDS.iter().rev().filter(|&&id| id > 40).map(|&id| post(id).slug).collect();
        assert_eq!(got, slugs);
        for q in select_sql(&log) {
            assert!(q.starts_with("SELECT posts.slug FROM posts WHERE ((posts.id > ?) AND "), "{q}");
            assert!(q.ends_with(" ORDER BY posts.slug DESC LIMIT ?"), "{q}");
        }

        // A selection from a join.
        insert_users(&mut conn, &[user(1), user(2), user(3)]);
        let got = collect_ok(
            posts::table
                .inner_join(users::table)
                .select((posts::id, users::name))
                .chunked_by(posts::id)
                .batch_size(7)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0),
        );
        let expected: Vec<(i32, String)> = GAPPY_IDS.iter().map(|&id| (id, format!("user {}", id % 3 + 1))).collect();
        assert_eq!(got, expected);
    }

    fn a_model_without_the_key_column_is_loaded(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).load_iter::<PostTitle>(&mut conn));

        let titles: Vec<PostTitle> = GAPPY_IDS.iter().map(|id| PostTitle { title: format!("post {id}") }).collect();
        assert_eq!(got, titles);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        for (i, q) in select_sql(&log).iter().enumerate() {
            // The scan selects the key itself, after the model's columns.
            assert!(q.starts_with("SELECT posts.title, posts.id FROM posts WHERE "), "{q}");
            if i > 0 {
                assert!(q.contains("WHERE posts.id > ? ORDER BY posts.id LIMIT ?"), "{q}");
            }
        }

        // Descending, by a text key that is not in the model either.
        let got = collect_ok(posts::table.chunked_by(posts::slug).batch_size(4).desc().load_batches::<PostTitle>(&mut conn));
        let expected: Vec<Vec<PostTitle>> = reversed(&titles).chunks(4).map(<[_]>::to_vec).collect();
        assert_eq!(got, expected);
    }

    fn the_key_is_read_from_the_models_own_columns(db) {
        let mut conn = connect::<B>(&db);
        // Slug and created_at orders differ from id order, so a key read from the
        // wrong column would show in `last_key` and in the next batch's bound.
        let rows: Vec<Post> = GAPPY_IDS
            .iter()
            .map(|&id| Post {
                slug: format!("slug-{:06}", 100_000 - id),
                created_at: ts(i64::from(id % 7) * 100_000 + i64::from(id)),
                ..post(id)
            })
            .collect();
        insert_post_rows(&mut conn, &rows);
        let log = QueryLog::install(&mut conn);
        let model = "posts.id, posts.user_id, posts.title, posts.slug, posts.published, \
                     posts.score, posts.created_at, posts.body";

        // The key is the model's first column: every column is selected once.
        let mut expected = rows.clone();
        expected.sort_by_key(|p| p.id);
        let mut it = posts::table.chunked_by(posts::id).batch_size(4).load_iter::<Post>(&mut conn);
        let mut got = Vec::new();
        while let Some(p) = it.next() {
            let p = p.unwrap();
            assert_eq!(it.last_key(), Some(&p.id));
            got.push(p);
        }
        assert_eq!(got, expected);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        for q in select_sql(&log) {
            assert!(q.starts_with(&format!("SELECT {model} FROM posts WHERE ")), "{q}");
        }

        // A key in the middle of the model, descending.
        log.clear();
        expected.sort_by(|a, b| b.slug.cmp(&a.slug));
        let mut it = posts::table.chunked_by(posts::slug).batch_size(4).desc().load_iter::<Post>(&mut conn);
        let mut got = Vec::new();
        while let Some(p) = it.next() {
            let p = p.unwrap();
            assert_eq!(it.last_key(), Some(&p.slug));
            got.push(p);
        }
        assert_eq!(got, expected);
        for q in select_sql(&log) {
            assert!(q.starts_with(&format!("SELECT {model} FROM posts WHERE ")), "{q}");
            assert!(q.ends_with(" ORDER BY posts.slug DESC LIMIT ?"), "{q}");
        }

        // A composite key whose columns are the model's 7th and 1st, in batches
        // (timestamp keys need the `chrono` feature).
        #[cfg(feature = "chrono")]
        {
            log.clear();
            expected.sort_by_key(|p| (p.created_at, p.id));
            let mut it = posts::table
                .chunked_by((posts::created_at, posts::id))
                .batch_size(4)
                .load_batches::<Post>(&mut conn);
            let mut got = Vec::new();
            while let Some(batch) = it.next() {
                let batch = batch.unwrap();
                let last = batch.last().unwrap();
                assert_eq!(it.last_key(), Some(&(last.created_at, last.id)));
                got.extend(batch);
            }
            assert_eq!(got, expected);
            assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
            for q in select_sql(&log) {
                assert!(q.starts_with(&format!("SELECT {model} FROM posts WHERE ")), "{q}");
            }
        }

        // A composite key partly outside the model: both its columns are appended.
        log.clear();
        let got = collect_ok(
            posts::table
                .chunked_by((posts::slug, posts::id))
                .batch_size(4)
                .load_iter::<PostTitle>(&mut conn),
        );
        expected.sort_by(|a, b| a.slug.cmp(&b.slug));
        let titles: Vec<PostTitle> = expected.iter().map(|p| PostTitle { title: p.title.clone() }).collect();
        assert_eq!(got, titles);
        for q in select_sql(&log) {
            assert!(q.starts_with("SELECT posts.title, posts.slug, posts.id FROM posts WHERE "), "{q}");
        }
    }

    fn descending_with_a_filter_and_limit_total(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=30);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(
            posts::table
                .filter(posts::published.eq(true))
                .chunked_by(posts::id)
                .desc()
                .batch_size(4)
                .limit_total(10)
                .load_iter::<Post>(&mut conn),
        );

        assert_eq!(ids(&got), [30, 28, 26, 24, 22, 20, 18, 16, 14, 12]);
        assert_eq!(log.selects().len(), 3, "{:#?}", log.all());
        // One more than each batch keeps (the look-ahead row); the last shrinks to
        // the 2 rows left, plus one.
        assert_eq!(limits(&log), [5, 5, 3]);
        let queries = select_sql(&log);
        let first = first_predicate(B::NAME, "posts.id", true);
        assert!(queries[0].contains(&format!(" WHERE ((posts.published = ?) AND {first}) ORDER BY posts.id DESC LIMIT ?")), "{}", queries[0]);
        for q in &queries[1..] {
            assert!(q.contains(" WHERE ((posts.published = ?) AND posts.id < ?) ORDER BY posts.id DESC LIMIT ?"), "{q}");
        }
        assert!(queries.iter().all(|q| !q.contains("posts.id > ")), "{queries:#?}");
        let seek: Vec<Vec<String>> = log.selects().iter().map(|q| binds(q)).collect();
        assert_eq!(seek, [vec!["true", "5"], vec!["true", "24", "5"], vec!["true", "16", "3"]]);
    }
}
