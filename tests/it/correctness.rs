//! No row lost or repeated: keys that repeat across a batch boundary (joins),
//! partitions of a bounded scan, PostgreSQL `char(n)` keys, and the messages
//! of what a scan refuses. Every case checks the exact rows, or that the scan
//! stops with the named error before a row could be lost or repeated.

use crate::common;

use std::collections::HashSet;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

backend_tests! {
    fn a_key_repeated_by_a_join_is_an_error_wherever_the_run_falls(db) {
        let mut conn = connect::<B>(&db);
        // Users 1..=5; user 2 has posts 2, 3 and 4, every other user one post:
        // `users ⋈ posts` has 7 rows, user 2's key three times in a row.
        insert_users(&mut conn, &(1..=5).map(user).collect::<Vec<_>>());
        let author = |id: i32| match id {
            1 => 1,
            2..=4 => 2,
            n => n - 2,
        };
        let rows: Vec<Post> = (1..=7).map(|id| Post { user_id: author(id), ..post(id) }).collect();
        insert_post_rows(&mut conn, &rows);

        for n in [1u64, 2, 3, 4, 100] {
            let mut seen = HashSet::new();
            let mut error = None;
            for row in users::table
                .inner_join(posts::table)
                .chunked_by(users::id)
                .batch_size(n)
                .load_iter::<(User, Post)>(&mut conn)
            {
                match row {
                    Ok((u, p)) => assert!(seen.insert((u.id, p.id)), "batch_size({n}): ({}, {}) twice", u.id, p.id),
                    Err(e) => error = Some(e),
                }
            }
            // Before the run of user 2's rows is cut at a boundary, the scan stops.
            match error {
                Some(e @ Error::DuplicateKey { .. }) => {
                    let Error::DuplicateKey { columns, value, .. } = &e else { unreachable!() };
                    assert_eq!((columns.as_str(), value.as_str()), ("users.id", "2"), "batch_size({n})");
                    assert!(e.to_string().contains("join"), "{e}");
                }
                other => panic!("batch_size({n}): expected DuplicateKey, got {other:?} after {seen:?}"),
            }
            assert!(seen.len() < 7, "batch_size({n})");
            assert!(seen.iter().all(|&(u, _)| u <= 2), "batch_size({n}): rows past the run: {seen:?}");
        }

        // A key that tells the joined rows apart scans all 7 exactly once.
        for n in [1u64, 2, 3] {
            let got: Vec<(i32, i32)> = users::table
                .inner_join(posts::table)
                .chunked_by((users::id, posts::id))
                .batch_size(n)
                .load_iter::<(User, Post)>(&mut conn)
                .map(|r| r.map(|(u, p)| (u.id, p.id)))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, [(1, 1), (2, 2), (2, 3), (2, 4), (3, 5), (4, 6), (5, 7)], "batch_size({n})");
        }
    }

    fn slices_of_a_bounded_scan_carry_its_bounds(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=10);
        let scan = || posts::table.chunked_by(posts::id).start_after(4).end_at(8);

        let parts = scan().partitions(2, &mut conn).unwrap();
        let ends: Vec<_> = parts.iter().map(|p| (p.start_after, p.end_at, p.rows)).collect();
        assert_eq!(ends, [(Some(4), Some(6), 2), (Some(6), Some(8), 2)]);
        // A slice alone, on a scan without bounds: exactly the planned rows.
        let mut all = Vec::new();
        for p in &parts {
            for desc in [false, true] {
                let c = posts::table.chunked_by(posts::id).within(p).batch_size(1);
                let c = if desc { c.desc() } else { c };
                let mut got: Vec<i32> = c.load_iter::<Post>(&mut conn).map(|r| r.unwrap().id).collect();
                if desc {
                    got.reverse();
                } else {
                    all.extend(got.iter().copied());
                }
                assert_eq!(got.len() as u64, p.rows, "{p:?} desc={desc}");
            }
        }
        assert_eq!(all, [5, 6, 7, 8]);

        // More slices than rows, and slices of a slice.
        let parts = scan().partitions(10, &mut conn).unwrap();
        assert_eq!(parts.first().unwrap().start_after, Some(4));
        assert_eq!(parts.last().unwrap().end_at, Some(8));
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 4);
        let outer = &posts::table.chunked_by(posts::id).partitions(2, &mut conn).unwrap()[1];
        let inner = posts::table.chunked_by(posts::id).within(outer).partitions(2, &mut conn).unwrap();
        assert_eq!(
            inner.iter().map(|p| (p.start_after, p.end_at)).collect::<Vec<_>>(),
            [(Some(5), Some(8)), (Some(8), None)]
        );
        // start_after and a within slice together: the tighter end is the slice's.
        let both = posts::table.chunked_by(posts::id).within(outer).start_after(7).partitions(1, &mut conn).unwrap();
        assert_eq!((both[0].start_after, both[0].end_at, both[0].rows), (Some(7), None, 3));

        // A descending scan's bounds cannot be a slice's: a clear error.
        match posts::table.chunked_by(posts::id).desc().start_after(8).partitions(2, &mut conn) {
            Err(e @ Error::PartitionBounds { .. }) => assert!(e.to_string().contains("within(&slice).desc()"), "{e}"),
            other => panic!("expected PartitionBounds, got {other:?}"),
        }
    }

    fn messages_say_what_is_wrong_and_what_to_do(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=3);

        let e = posts::table.chunked_by(posts::id).batch_size(u64::MAX).load_iter::<Post>(&mut conn).next();
        let e = e.unwrap().unwrap_err().to_string();
        assert!(e.contains("between 1 and 9223372036854775807") && e.contains(&u64::MAX.to_string()), "{e}");

        // A repeated non-id key: the advice names the table's id as a tiebreaker.
        insert_events(&mut conn, &[event(1, 1), event(4, 4), event(7, 7)]); // all "beta"
        let e = events::table.chunked_by(events::kind).load_iter::<Event>(&mut conn).next().unwrap().unwrap_err();
        assert!(matches!(e, Error::DuplicateKey { .. }), "{e:?}");
        assert!(e.to_string().contains("chunked_by((events::kind, events::id))"), "{e}");
    }
}

/// PostgreSQL `char(n)` keys compare as `bpchar`, blank-padded, as `ORDER BY`
/// does: bound as `text`, the padded value read back sorted differently.
#[cfg(feature = "postgres")]
#[test]
fn postgres_char_n_keys_compare_as_stored() {
    diesel::table! {
        codes (code) {
            code -> Bpchar,
            n -> Integer,
        }
    }
    let db = <common::Pg as TestBackend>::create();
    let mut conn = <common::Pg as TestBackend>::connect(&db);
    diesel::sql_query("CREATE TABLE codes (code CHAR(8) PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&mut conn)
        .unwrap();
    // 269 codes of 1 to 8 characters: padded, their text and bpchar orders differ.
    let alphabet = ["a", "b", "ab", "a-", "-a", "A", "z", "0"];
    let mut codes: Vec<String> = Vec::new();
    for i in 0..269usize {
        let base = alphabet[i % alphabet.len()];
        let code = format!("{base}{}", i / alphabet.len());
        codes.push(code.chars().take(8).collect());
    }
    let values: Vec<String> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("('{c}', {i})"))
        .collect();
    diesel::sql_query(format!("INSERT INTO codes VALUES {}", values.join(", ")))
        .execute(&mut conn)
        .unwrap();

    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        n: i32,
    }
    let order = |conn: &mut PgConnection, dir: &str| -> Vec<i32> {
        diesel::sql_query(format!("SELECT n FROM codes ORDER BY code {dir}"))
            .load::<N>(conn)
            .unwrap()
            .into_iter()
            .map(|r| r.n)
            .collect()
    };
    let (asc, desc) = (order(&mut conn, "ASC"), order(&mut conn, "DESC"));
    for n in [1u64, 7, 100] {
        for (is_desc, expected) in [(false, &asc), (true, &desc)] {
            let c = codes::table
                .select((codes::code, codes::n))
                .chunked_by(codes::code)
                .batch_size(n);
            let c = if is_desc { c.desc() } else { c };
            let got: Vec<i32> = c
                .load_iter_keyed(&mut conn, |r: &(String, i32)| r.0.clone())
                .map(|r| r.unwrap().1)
                .collect();
            assert_eq!(&got, expected, "batch_size({n}) desc={is_desc}");
        }
    }
}

/// MariaDB keys whose `ORDER BY` disagrees with `>`: a `TEXT` column (sorted on
/// its first `max_sort_length` bytes) and a `CHAR` column with a `NO PAD`
/// collation. A scan refuses them before its first batch.
#[cfg(feature = "mysql")]
#[test]
fn mariadb_keys_it_cannot_order_are_refused_before_the_first_batch() {
    diesel::table! {
        notes (id) {
            id -> Integer,
            body -> Text,
            code -> Text,
        }
    }
    let db = <common::Mysql as TestBackend>::create();
    let mut conn = <common::Mysql as TestBackend>::connect(&db);
    diesel::sql_query(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, \
         code CHAR(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL UNIQUE)",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query("INSERT INTO notes VALUES (1, 'a', 'a'), (2, 'b', 'b')")
        .execute(&mut conn)
        .unwrap();
    for (key, what) in [("body", "max_sort_length"), ("code", "PAD")] {
        let log = QueryLog::install(&mut conn);
        let first = if key == "body" {
            notes::table
                .select((notes::id, notes::body))
                .chunked_by(notes::body)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.1.clone())
                .next()
        } else {
            notes::table
                .select((notes::id, notes::code))
                .chunked_by(notes::code)
                .load_iter_keyed(&mut conn, |r: &(i32, String)| r.1.clone())
                .next()
        };
        match first {
            Some(Err(e @ Error::UnsupportedKey { .. })) => {
                assert!(e.to_string().contains(what), "{key}: {e}");
            }
            other => panic!("{key}: expected UnsupportedKey, got {other:?}"),
        }
        assert!(
            log.selects().iter().all(|q| !q.contains("FROM `notes`")),
            "{key}: a batch ran: {:?}",
            log.all()
        );
    }
    // An integer key of the same table scans as usual, with no extra query.
    let log = QueryLog::install(&mut conn);
    let ids: Vec<i32> = notes::table
        .select((notes::id, notes::body))
        .chunked_by(notes::id)
        .load_iter_keyed(&mut conn, |r: &(i32, String)| r.0)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(log.all().len(), 1, "{:?}", log.all());
}
