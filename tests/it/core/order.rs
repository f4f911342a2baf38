//! Exact order, no row twice and none missing, ascending and descending, for every
//! key type the crate maps without features (Integer, Text, BigInt, SmallInt) and
//! for composite keys; the bounds `start_after` and `end_at`.

use crate::common::*;
use super::support::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

/// Posts whose slugs sort differently under different collations (case,
/// punctuation, digits, spaces), and differently from their ids.
fn slug_posts() -> Vec<Post> {
    const STEMS: [&str; 12] = [
        "apple", "Banana", "cherry-", "_dash", "Eagle", "fig tree", "10", "9", "Zulu", "zeta",
        "a-b", "a_b",
    ];
    (1..=40)
        .map(|id| Post {
            slug: format!("{}{}", STEMS[(id * 7) as usize % STEMS.len()], id),
            ..post(id)
        })
        .collect()
}

/// Events with ids spread over the whole `BIGINT` range and unique `SMALLINT`
/// codes spread over theirs, in an order unrelated to the ids.
fn spread_events() -> Vec<Event> {
    let ids: [i64; 16] = [
        -9_000_000_000_000_000_000,
        -5_000_000_000,
        -4_294_967_296,
        -3,
        0,
        1,
        2,
        7,
        2_147_483_647,
        2_147_483_648,
        4_294_967_296,
        4_294_967_297,
        5_000_000_000,
        1_000_000_000_000,
        9_000_000_000_000_000_000,
        i64::MAX,
    ];
    let codes: [i16; 16] = [
        300, -32768, 255, 0, 32767, -1, 256, 1, -300, 12, -12, 1000, -1000, 2, -2, 32766,
    ];
    ids.iter()
        .zip(codes)
        .map(|(&id, code)| event(id, code))
        .collect()
}

/// The SQL every batch after the first must have: `<key> <op> ? ORDER BY <key>[ DESC] LIMIT ?`.
fn assert_seek_sql(log: &QueryLog, backend: &str, key: &str, desc: bool) {
    let (op, dir) = if desc { ("<", " DESC") } else { (">", "") };
    for (i, q) in select_sql(log).iter().enumerate() {
        assert!(
            q.ends_with(&format!(" ORDER BY {key}{dir} LIMIT ?")),
            "query {i}: {q}"
        );
        if i == 0 {
            let first = first_predicate(backend, key, desc);
            assert!(
                q.contains(&format!("WHERE {first} ORDER BY")),
                "query {i}: {q}"
            );
        } else {
            assert!(
                q.contains(&format!("WHERE {key} {op} ? ORDER BY")),
                "query {i}: {q}"
            );
        }
    }
}

backend_tests! {
    fn integer_key_with_gaps_ascending(db) {
        let mut conn = connect::<B>(&db);
        let rows: Vec<Post> = GAPPY_IDS.iter().map(|&id| post(id)).collect();
        insert_post_rows(&mut conn, &reversed(&rows));
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).load_iter::<Post>(&mut conn));

        assert_eq!(got, rows);
        // 7 batches of 4 and one of 2.
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "posts.id", false);
        let seek: Vec<String> = log.selects()[1..].iter().map(|q| binds(q)[0].clone()).collect();
        assert_eq!(seek, ["9", "17", "26", "43", "60", "80", "151"]);

        log.clear();
        let batches = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).load_batches::<Post>(&mut conn));
        let expected: Vec<Vec<i32>> = GAPPY_IDS.chunks(4).map(<[i32]>::to_vec).collect();
        assert_eq!(batch_ids(&batches), expected);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
    }

    fn integer_key_with_gaps_descending(db) {
        let mut conn = connect::<B>(&db);
        let rows: Vec<Post> = GAPPY_IDS.iter().map(|&id| post(id)).collect();
        insert_post_rows(&mut conn, &rows);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).desc().load_iter::<Post>(&mut conn));

        assert_eq!(got, reversed(&rows));
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "posts.id", true);
        let seek: Vec<String> = log.selects()[1..].iter().map(|q| binds(q)[0].clone()).collect();
        assert_eq!(seek, ["150", "79", "52", "41", "25", "13", "5"]);

        log.clear();
        let batches = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).desc().load_batches::<Post>(&mut conn));
        let expected: Vec<Vec<i32>> = reversed(&GAPPY_IDS).chunks(4).map(<[i32]>::to_vec).collect();
        assert_eq!(batch_ids(&batches), expected);
        assert_eq!(log.selects().len(), 8, "{:#?}", log.all());

        // The last call wins: `.desc().asc()` is ascending.
        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).desc().asc().load_iter::<Post>(&mut conn));
        assert_eq!(got, rows);
        assert_seek_sql(&log, B::NAME, "posts.id", false);
    }

    fn text_key_follows_the_database_collation(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &slug_posts());
        let asc: Vec<Post> = posts::table.order(posts::slug.asc()).load(&mut conn).unwrap();
        let desc: Vec<Post> = posts::table.order(posts::slug.desc()).load(&mut conn).unwrap();
        assert_eq!(asc.len(), 40);
        assert_eq!(reversed(&asc), desc, "slugs are unique");
        let log = QueryLog::install(&mut conn);

        for n in [1u64, 3, 4, 7, 40, 41] {
            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::slug).batch_size(n).load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&asc), "ascending, batch_size({n})");
            // ceil(40 / n) queries: the batch without a look-ahead row is the last.
            assert_eq!(log.selects().len(), 40usize.div_ceil(n as usize), "batch_size({n})");
            // One read of the schema first: the string key's column type
            // (MariaDB/MySQL), or the collations its unique indexes hold it
            // unique in (SQLite, PostgreSQL).
            assert_eq!(log.schema_reads().len(), 1, "{:#?}", log.all());
            assert_seek_sql(&log, B::NAME, "posts.slug", false);

            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::slug).batch_size(n).desc().load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), ids(&desc), "descending, batch_size({n})");
            assert_seek_sql(&log, B::NAME, "posts.slug", true);
        }

        // The seek bound is the slug of the batch's last row, bound as a string.
        log.clear();
        let first = collect_ok(posts::table.chunked_by(posts::slug).batch_size(4).load_iter::<Post>(&mut conn).take(5));
        assert_eq!(first, asc[..5]);
        assert_eq!(binds(&log.selects()[1])[0], format!("{:?}", asc[3].slug));
    }

    fn bigint_key_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        let rows = spread_events();
        insert_events(&mut conn, &reversed(&rows));
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(events::table.chunked_by(events::id).batch_size(3).load_iter::<Event>(&mut conn));
        assert_eq!(got, rows);
        assert_eq!(log.selects().len(), 6, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "events.id", false);

        log.clear();
        let got = collect_ok(events::table.chunked_by(events::id).batch_size(3).desc().load_iter::<Event>(&mut conn));
        assert_eq!(got, reversed(&rows));
        assert_eq!(log.selects().len(), 6, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "events.id", true);

        log.clear();
        let got = collect_ok(events::table.chunked_by(events::id).batch_size(3).start_after(2_147_483_647i64).load_iter::<Event>(&mut conn));
        assert_eq!(got, rows[9..]);
    }

    fn smallint_key_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        let rows = spread_events();
        insert_events(&mut conn, &rows);
        let mut by_code = rows.clone();
        by_code.sort_by_key(|e| e.code);
        let log = QueryLog::install(&mut conn);

        let got = collect_ok(events::table.chunked_by(events::code).batch_size(3).load_iter::<Event>(&mut conn));
        assert_eq!(got, by_code);
        assert_eq!(log.selects().len(), 6, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "events.code", false);

        log.clear();
        let got = collect_ok(events::table.chunked_by(events::code).batch_size(3).desc().load_iter::<Event>(&mut conn));
        assert_eq!(got, reversed(&by_code));
        assert_eq!(log.selects().len(), 6, "{:#?}", log.all());
        assert_seek_sql(&log, B::NAME, "events.code", true);

        let got = collect_ok(events::table.chunked_by(events::code).batch_size(2).start_after(0i16).load_iter::<Event>(&mut conn));
        let positive: Vec<Event> = by_code.iter().filter(|e| e.code > 0).cloned().collect();
        assert_eq!(got, positive);
        let got = collect_ok(events::table.chunked_by(events::code).batch_size(2).desc().start_after(0i16).load_iter::<Event>(&mut conn));
        let negative: Vec<Event> = by_code.iter().rev().filter(|e| e.code < 0).cloned().collect();
        assert_eq!(got, negative);
    }

    fn composite_keys_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        // 60 events: kind takes 3 values, seq 5, so only (kind, id) and (kind, seq, id) are unique.
        let rows: Vec<Event> = (1..=60).map(|i| event(i * 11 % 61, i as i16)).collect();
        insert_events(&mut conn, &rows);
        let log = QueryLog::install(&mut conn);

        let expected: Vec<Event> = events::table.order((events::kind, events::id)).load(&mut conn).unwrap();
        for n in [1u64, 4, 7] {
            log.clear();
            let got = collect_ok(events::table.chunked_by((events::kind, events::id)).batch_size(n).load_iter::<Event>(&mut conn));
            assert_eq!(got, expected, "(kind, id) ascending, batch_size({n})");
            assert_eq!(log.selects().len(), 60usize.div_ceil(n as usize));
            let q = sql(&log.selects()[1]);
            assert!(q.contains(" ORDER BY events.kind, events.id LIMIT ?"), "{q}");
        }
        let expected: Vec<Event> = events::table.order((events::kind.desc(), events::id.desc())).load(&mut conn).unwrap();
        let got = collect_ok(events::table.chunked_by((events::kind, events::id)).batch_size(4).desc().load_iter::<Event>(&mut conn));
        assert_eq!(got, expected, "(kind, id) descending");

        let expected: Vec<Event> = events::table.order((events::kind, events::seq, events::id)).load(&mut conn).unwrap();
        let got = collect_ok(events::table.chunked_by((events::kind, events::seq, events::id)).batch_size(4).load_iter::<Event>(&mut conn));
        assert_eq!(got, expected, "(kind, seq, id) ascending");
        let got = collect_ok(events::table.chunked_by((events::kind, events::seq, events::id)).batch_size(1).desc().load_iter::<Event>(&mut conn));
        assert_eq!(got, reversed(&expected), "(kind, seq, id) descending");

        // Resuming inside a run of equal `kind`s.
        let middle = &expected[25];
        let got = collect_ok(
            events::table
                .chunked_by((events::kind, events::seq, events::id))
                .batch_size(4)
                .start_after((middle.kind.clone(), middle.seq, middle.id))
                .load_iter::<Event>(&mut conn),
        );
        assert_eq!(got, expected[26..]);
    }

    fn start_after_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        let log = QueryLog::install(&mut conn);
        let after = |v: i32| GAPPY_IDS.iter().copied().filter(|&id| id > v).collect::<Vec<_>>();
        let before = |v: i32| GAPPY_IDS.iter().rev().copied().filter(|&id| id < v).collect::<Vec<_>>();

        // A key that exists, and one that does not.
        for v in [10, 12] {
            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).start_after(v).load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), after(v), "asc start_after({v})");
            let first = &log.selects()[0];
            assert!(sql(first).contains("WHERE posts.id > ? ORDER BY posts.id LIMIT ?"), "{first}");
            // LIMIT 5: the batch of 4 and its look-ahead row.
            assert_eq!(binds(first), [v.to_string(), "5".to_string()]);

            log.clear();
            let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).desc().start_after(v).load_iter::<Post>(&mut conn));
            assert_eq!(ids(&got), before(v), "desc start_after({v})");
            let first = &log.selects()[0];
            assert!(sql(first).contains("WHERE posts.id < ? ORDER BY posts.id DESC LIMIT ?"), "{first}");
            assert_eq!(binds(first), [v.to_string(), "5".to_string()]);
        }

        // Nothing after the last key (one query), nothing before the first.
        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).start_after(200).load_iter::<Post>(&mut conn));
        assert!(got.is_empty(), "{got:?}");
        let got = collect_ok(posts::table.chunked_by(posts::id).desc().start_after(1).load_iter::<Post>(&mut conn));
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(log.selects().len(), 2, "{:#?}", log.all());

        // Before the first key / after the last: everything.
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(7).start_after(0).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), GAPPY_IDS);
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(7).desc().start_after(201).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), reversed(&GAPPY_IDS));
    }

    fn end_at_ascending_and_descending(db) {
        let mut conn = connect::<B>(&db);
        insert_post_rows(&mut conn, &GAPPY_IDS.map(post));
        let log = QueryLog::install(&mut conn);
        let range = |lo: i32, hi: i32| GAPPY_IDS.iter().copied().filter(|&id| lo < id && id <= hi).collect::<Vec<_>>();

        // Inclusive end, both when the key exists and when it does not.
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).end_at(50).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), range(i32::MIN, 50));
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).end_at(49).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), range(i32::MIN, 49));
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(4).desc().end_at(50).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), reversed(&range(49, i32::MAX)));

        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(3).start_after(10).end_at(50).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), range(10, 50));
        let q = &log.selects()[0];
        assert!(sql(q).contains("WHERE posts.id > ? AND posts.id <= ? ORDER BY posts.id LIMIT ?"), "{q}");
        assert_eq!(binds(q), ["10", "50", "4"]);

        log.clear();
        let got = collect_ok(posts::table.chunked_by(posts::id).batch_size(3).desc().start_after(50).end_at(10).load_iter::<Post>(&mut conn));
        assert_eq!(ids(&got), reversed(&range(9, 49)));
        let q = &log.selects()[0];
        assert!(sql(q).contains("WHERE posts.id < ? AND posts.id >= ? ORDER BY posts.id DESC LIMIT ?"), "{q}");
    }
}
