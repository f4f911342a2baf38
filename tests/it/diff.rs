//! Diffs of one query on two sources: two databases of one backend (each a
//! test database of its own), and across backends (PostgreSQL → MariaDB,
//! SQLite → PostgreSQL). Identical tables show no difference, and cost one
//! checksum statement per chunk and side where the backend checksums; rows
//! missing on either side and changed rows are reported by key; composite,
//! text and timestamp keys; values stored in other forms that are equal in
//! Rust are no difference.

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{DiffReport, Error};

diesel::table! {
    stamps (id) {
        id -> Integer,
        at -> Timestamp,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = stamps)]
struct Stamp {
    id: i32,
    at: chrono::NaiveDateTime,
}

/// `stamps` with `at` stored with `precision` fractional digits where the
/// backend has one (SQLite: text with that many digits), rows 1..=n at whole
/// seconds.
fn create_stamps<C>(conn: &mut C, backend: &str, precision: u32, n: i32)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    let ddl = match backend {
        "postgres" => format!(
            "CREATE TABLE stamps (id INTEGER PRIMARY KEY, at TIMESTAMP({precision}) NOT NULL)"
        ),
        "mysql" => format!(
            "CREATE TABLE stamps (id INTEGER PRIMARY KEY, at DATETIME({precision}) NOT NULL)"
        ),
        _ => "CREATE TABLE stamps (id INTEGER PRIMARY KEY NOT NULL, at TIMESTAMP NOT NULL)"
            .to_string(),
    };
    diesel::sql_query(ddl).execute(conn).unwrap();
    let fraction = match (backend, precision) {
        ("sqlite", p) if p > 0 => format!(".{}", "0".repeat(p as usize)),
        _ => String::new(),
    };
    let values: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                "({i}, '{}{fraction}')",
                ts(i64::from(i) * 61).format("%Y-%m-%d %H:%M:%S")
            )
        })
        .collect();
    diesel::sql_query(format!(
        "INSERT INTO stamps (id, at) VALUES {}",
        values.join(", ")
    ))
    .execute(conn)
    .unwrap();
}

/// The statements of a log that checksum a chunk, and the others.
fn checksums_and_others(log: &QueryLog) -> (usize, Vec<String>) {
    let (sums, others): (Vec<String>, Vec<String>) = log
        .selects()
        .into_iter()
        .partition(|q| q.starts_with("SELECT COUNT(*),"));
    (sums.len(), others)
}

/// Asserts that a statement selects only the key column `posts.id`.
fn key_query_only(q: &str) {
    let select = q.split(" FROM ").next().unwrap();
    assert!(
        select.ends_with(".`id`") || select.ends_with(".\"id\"") || select.ends_with("`id`"),
        "not a key query: {q}"
    );
}

fn assert_keys<V: PartialEq + std::fmt::Debug>(
    d: &DiffReport<V>,
    missing_in_right: &[V],
    missing_in_left: &[V],
    different: &[V],
) {
    assert_eq!(
        d.missing_in_right.keys, missing_in_right,
        "missing_in_right: {d:?}"
    );
    assert_eq!(
        d.missing_in_left.keys, missing_in_left,
        "missing_in_left: {d:?}"
    );
    assert_eq!(d.different.keys, different, "different: {d:?}");
    assert_eq!(d.missing_in_right.count, missing_in_right.len() as u64);
    assert_eq!(d.missing_in_left.count, missing_in_left.len() as u64);
    assert_eq!(d.different.count, different.len() as u64);
}

backend_tests! {
    /// Two identical tables: no difference. Where the backend checksums, a
    /// chunk costs its key query on the left and one checksum per side, and
    /// no row is loaded; on SQLite each chunk's rows are loaded once per side.
    fn identical_tables_cost_one_checksum_per_chunk_and_side(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, 1..=250);
        insert_posts(&mut right, 1..=250);
        let (llog, rlog) = (QueryLog::install(&mut left), QueryLog::install(&mut right));
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right)
            .batch_size(100)
            .run()
            .unwrap();
        assert!(d.is_identical(), "{d:?}");
        assert_keys(&d, &[], &[], &[]);
        assert_eq!(d.chunks, 3);
        let (lsums, lothers) = checksums_and_others(&llog);
        let (rsums, rothers) = checksums_and_others(&rlog);
        if B::NAME == "sqlite" {
            assert!(!d.in_database);
            assert_eq!((d.chunks_loaded, d.rows_compared, d.checksums), (3, 250, 0));
            assert_eq!((lsums, rsums), (0, 0));
            // one page of rows per chunk and side: SELECT posts.id, posts.user_id, ...
            assert_eq!((lothers.len(), rothers.len()), (3, 3), "{lothers:#?} {rothers:#?}");
            for q in lothers.iter().chain(&rothers) {
                assert!(q.contains("title"), "{q}");
            }
        } else {
            assert!(d.in_database);
            assert_eq!((d.chunks_loaded, d.rows_compared, d.checksums), (0, 0, 3));
            assert_eq!((lsums, rsums), (3, 3), "{:#?} {:#?}", llog.all(), rlog.all());
            // the left's key queries, nothing else; the right runs checksums only
            assert_eq!(lothers.len(), 3, "{lothers:#?}");
            lothers.iter().for_each(|q| key_query_only(q));
            assert!(rothers.is_empty(), "{rothers:#?}");
        }
    }

    /// Rows missing on either side (also after the left's last key) and a
    /// changed column: each reported by its key, and nothing else. Chunks
    /// of 1000 rows are split before their rows are loaded.
    fn missing_and_changed_rows_are_reported_by_key(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, (1..=2000).filter(|&i| i != 42));
        insert_posts(&mut right, (1..=2002).filter(|&i| i != 17 && i != 1500));
        diesel::update(posts::table.find(1230))
            .set(posts::score.eq(Some(99)))
            .execute(&mut right)
            .unwrap();
        diesel::update(posts::table.find(7))
            .set(posts::title.eq("changed"))
            .execute(&mut left)
            .unwrap();
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right)
            .batch_size(1000)
            .run()
            .unwrap();
        assert_keys(&d, &[17, 1500], &[42, 2001, 2002], &[7, 1230]);
        assert!(!d.is_identical());
        assert_eq!(d.chunks, 2);
        assert_eq!(d.chunks_loaded, 2);
        if B::NAME == "sqlite" {
            assert_eq!(d.rows_compared, 2002);
        } else {
            // 2 chunks, each split in 8 parts; the parts of 17, 42 and 7
            // (one), 1230, 1500 and the open last one loaded, 125 rows or so each
            assert_eq!(d.checksums, 18);
            assert!(d.rows_compared > 4 * 120 && d.rows_compared < 4 * 130, "{d:?}");
        }
        // swapped sides: swapped kinds
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut right, &mut left)
            .batch_size(300)
            .run()
            .unwrap();
        assert_keys(&d, &[42, 2001, 2002], &[17, 1500], &[7, 1230]);
        // the key cap: counts stay exact
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut right, &mut left)
            .batch_size(300)
            .max_keys(1)
            .run()
            .unwrap();
        assert_eq!((d.missing_in_right.count, d.missing_in_right.keys.clone()), (3, vec![42]));
        assert!(d.missing_in_right.is_truncated() && !d.different.keys.is_empty());
        // an empty side
        diesel::delete(posts::table).execute(&mut right).unwrap();
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right)
            .batch_size(700)
            .max_keys(0)
            .run()
            .unwrap();
        assert_eq!((d.missing_in_right.count, d.missing_in_left.count, d.different.count), (1999, 0, 0));
        let d = posts::table
            .chunked_by(posts::id)
            .diff::<Post>(&mut right, &mut left)
            .batch_size(700)
            .run()
            .unwrap();
        assert_eq!((d.missing_in_right.count, d.missing_in_left.count, d.chunks), (0, 1999, 1));
    }

    /// Two rows that swap the values of a column (what the `XOR` of linear
    /// row hashes such as `CRC32`'s alone would not see): both reported.
    fn values_swapped_between_rows_are_found(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, 1..=300);
        insert_posts(&mut right, 1..=300);
        for (id, from) in [(110, 111), (111, 110)] {
            diesel::update(posts::table.find(id))
                .set(posts::slug.eq(format!("swap-{from:06}")))
                .execute(&mut left)
                .unwrap();
            diesel::update(posts::table.find(id))
                .set(posts::slug.eq(format!("swap-{id:06}")))
                .execute(&mut right)
                .unwrap();
        }
        let d = posts::table.chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right).batch_size(100).run().unwrap();
        assert_keys(&d, &[], &[], &[110, 111]);
        // where the database checksums, only the chunk of the two rows is loaded
        assert_eq!(d.chunks_loaded, if d.in_database { 1 } else { 3 });
        assert_eq!(d.in_database, B::NAME != "sqlite");
    }

    /// Composite, text and timestamp keys on identical tables: no false
    /// difference; one changed row is found under each.
    fn composite_text_and_timestamp_keys(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, 1..=120);
        insert_posts(&mut right, 1..=120);
        let events: Vec<Event> = (1..=90).map(|i| event(i * 3, i as i16)).collect();
        insert_events(&mut left, &events);
        insert_events(&mut right, &events);
        #[cfg(feature = "chrono")]
        {
            let d = posts::table.chunked_by((posts::created_at, posts::id))
                .diff::<Post>(&mut left, &mut right).batch_size(7).run().unwrap();
            assert!(d.is_identical(), "{d:?}");
            assert_eq!(d.chunks, 18);
            let d = posts::table.chunked_by(posts::created_at)
                .diff::<Post>(&mut left, &mut right).batch_size(7).run().unwrap();
            assert!(d.is_identical(), "{d:?}");
        }
        let d = posts::table.chunked_by(posts::slug)
            .diff::<Post>(&mut left, &mut right).batch_size(7).run().unwrap();
        assert!(d.is_identical(), "{d:?}");
        let d = events::table.chunked_by((events::kind, events::seq, events::id))
            .diff::<Event>(&mut left, &mut right).batch_size(7).run().unwrap();
        assert!(d.is_identical(), "{d:?}");
        assert_eq!(d.chunks, 13);
        // SmallInt and BigInt keys
        let d = events::table.chunked_by(events::code)
            .diff::<Event>(&mut left, &mut right).batch_size(7).run().unwrap();
        assert!(d.is_identical() && d.chunks == 13, "{d:?}");
        let d = events::table.chunked_by(events::id)
            .diff::<Event>(&mut left, &mut right).batch_size(7).run().unwrap();
        assert!(d.is_identical() && d.chunks == 13, "{d:?}");

        diesel::update(posts::table.find(55)).set(posts::body.eq("x")).execute(&mut right).unwrap();
        diesel::update(events::table.find(30)).set(events::payload.eq("x")).execute(&mut right).unwrap();
        #[cfg(feature = "chrono")]
        {
            let d = posts::table.chunked_by((posts::created_at, posts::id))
                .diff::<Post>(&mut left, &mut right).batch_size(7).run().unwrap();
            assert_keys(&d, &[], &[], &[(ts(55 * 60), 55)]);
        }
        let d = posts::table.chunked_by(posts::slug)
            .diff::<Post>(&mut left, &mut right).batch_size(7).run().unwrap();
        assert_keys(&d, &[], &[], &["slug-000055".to_string()]);
        let d = events::table.chunked_by((events::kind, events::seq, events::id))
            .diff::<Event>(&mut left, &mut right).batch_size(7).run().unwrap();
        let e = event(30, 10);
        assert_keys(&d, &[], &[], &[(e.kind, e.seq, 30)]);
    }

    /// Timestamps stored with another precision (and, on SQLite, as another
    /// text) are equal in Rust: no difference, although on MariaDB and
    /// SQLite the stored forms, and so the checksums, differ.
    fn timestamps_of_another_precision_are_no_difference(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        create_stamps(&mut left, B::NAME, 0, 300);
        create_stamps(&mut right, B::NAME, 6, 300);
        let d = stamps::table.chunked_by(stamps::id)
            .diff::<Stamp>(&mut left, &mut right).batch_size(100).run().unwrap();
        assert!(d.is_identical(), "{d:?}");
        match B::NAME {
            // `2026-01-01 00:01:01` and `2026-01-01 00:01:01.000000`
            "mysql" => assert_eq!((d.chunks_loaded, d.rows_compared), (3, 300), "{d:?}"),
            // the row texts are equal
            "postgres" => assert_eq!((d.chunks_loaded, d.rows_compared), (0, 0), "{d:?}"),
            _ => assert_eq!(d.rows_compared, 300),
        }
        // a timestamp keyed diff over the same tables
        #[cfg(feature = "chrono")]
        {
            let d = stamps::table.chunked_by(stamps::at)
                .diff::<Stamp>(&mut left, &mut right).batch_size(100).run().unwrap();
            assert!(d.is_identical(), "{d:?}");
        }
        // a real difference of one second is one
        diesel::update(stamps::table.find(5)).set(stamps::at.eq(ts(5 * 61 + 1))).execute(&mut right).unwrap();
        let d = stamps::table.chunked_by(stamps::id)
            .diff::<Stamp>(&mut left, &mut right).batch_size(100).run().unwrap();
        assert_keys(&d, &[], &[], &[5]);
    }

    /// The scan's bounds apply: the diffs of the left's partitions add up
    /// to the whole diff; filters apply on both sides.
    fn partitions_and_filters(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, 1..=400);
        insert_posts(&mut right, (1..=410).filter(|i| i % 50 != 0));
        let parts = posts::table.chunked_by(posts::id).partitions(3, &mut left).unwrap();
        let (mut right_only, mut left_only) = (vec![], vec![]);
        for p in &parts {
            let d = posts::table.chunked_by(posts::id).within(p)
                .diff::<Post>(&mut left, &mut right).batch_size(60).run().unwrap();
            right_only.extend(d.missing_in_left.keys);
            left_only.extend(d.missing_in_right.keys);
        }
        assert_eq!(left_only, [50, 100, 150, 200, 250, 300, 350, 400]);
        assert_eq!(right_only, (401..=410).collect::<Vec<_>>());
        let d = posts::table.filter(posts::published.eq(true)).chunked_by(posts::id)
            .start_after(100).end_at(300)
            .diff::<Post>(&mut left, &mut right).batch_size(30).run().unwrap();
        assert_keys(&d, &[150, 200, 250, 300], &[], &[]);
    }

    /// Pools as sources; the throttle is asked after each chunk but the last.
    #[cfg(feature = "r2d2")]
    fn pools_and_throttle(db) {
        use diesel::r2d2::{ConnectionManager, Pool};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let other = <B as TestBackend>::create();
        insert_posts(&mut connect::<B>(&db), 1..=250);
        insert_posts(&mut connect::<B>(&other), (1..=250).filter(|&i| i != 99));
        let pool = |url: &str| Pool::builder().max_size(1).build(ConnectionManager::<Conn>::new(url)).unwrap();
        let (left, right) = (pool(&db.url), pool(&other.url));
        let asked = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&asked);
        let d = posts::table
            .chunked_by(posts::id)
            .throttle(move |stats| {
                assert_eq!(stats.rows, 100);
                seen.fetch_add(stats.total_rows, Ordering::Relaxed);
                None
            })
            .diff::<Post>(&left, &right)
            .batch_size(100)
            .run()
            .unwrap();
        assert_keys(&d, &[99], &[], &[]);
        assert_eq!(asked.load(Ordering::Relaxed), 100 + 200);
    }

    /// Settings a diff cannot honour, and a side that fails, are errors.
    fn errors(db) {
        let other = <B as TestBackend>::create();
        let (mut left, mut right) = (connect::<B>(&db), connect::<B>(&other));
        insert_posts(&mut left, 1..=10);
        let err = posts::table.chunked_by(posts::id).desc()
            .diff::<Post>(&mut left, &mut right).run().unwrap_err();
        assert!(matches!(err, Error::DiffUnsupported { .. }), "{err}");
        let err = posts::table.chunked_by(posts::id).limit_total(3)
            .diff::<Post>(&mut left, &mut right).run().unwrap_err();
        assert!(matches!(err, Error::DiffUnsupported { .. }), "{err}");
        let err = posts::table.chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right).batch_size(0).run().unwrap_err();
        assert!(matches!(err, Error::InvalidBatchSize { batch_size: 0 }), "{err}");
        diesel::sql_query("DROP TABLE posts").execute(&mut right).unwrap();
        let err = posts::table.chunked_by(posts::id)
            .diff::<Post>(&mut left, &mut right).batch_size(4).run().unwrap_err();
        match &err {
            Error::DiffFailed { side, chunk, after, .. } => {
                assert_eq!((*side, *chunk, after.as_deref()), ("right", 1, None), "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.as_diesel().is_some());
    }
}

/// Across backends: the rows of PostgreSQL and MariaDB decoded and compared
/// in Rust (a `TIMESTAMP` and a `DATETIME(6)`), chunk by chunk.
#[cfg(all(feature = "postgres", feature = "mysql"))]
#[test]
fn postgres_to_mariadb() {
    let (pg, my) = (Pg::create(), Mysql::create());
    let (mut left, mut right) = (Pg::connect(&pg), Mysql::connect(&my));
    insert_posts(&mut left, 1..=500);
    insert_posts(&mut right, 1..=500);
    let d = posts::table
        .chunked_by(posts::id)
        .diff::<Post>(&mut left, &mut right)
        .batch_size(64)
        .run()
        .unwrap();
    assert!(d.is_identical(), "{d:?}");
    assert!(!d.in_database);
    assert_eq!((d.chunks, d.chunks_loaded, d.rows_compared), (8, 8, 500));
    let d = posts::table
        .chunked_by(posts::slug)
        .diff::<Post>(&mut left, &mut right)
        .batch_size(64)
        .run()
        .unwrap();
    assert!(d.is_identical(), "{d:?}");
    #[cfg(feature = "chrono")]
    {
        let d = posts::table
            .chunked_by((posts::created_at, posts::id))
            .diff::<Post>(&mut left, &mut right)
            .batch_size(64)
            .run()
            .unwrap();
        assert!(d.is_identical(), "{d:?}");
    }

    diesel::delete(posts::table.find(64))
        .execute(&mut right)
        .unwrap();
    diesel::delete(posts::table.find(65))
        .execute(&mut left)
        .unwrap();
    insert_posts(&mut right, 501..=503);
    diesel::update(posts::table.find(300))
        .set(posts::created_at.eq(ts(1)))
        .execute(&mut right)
        .unwrap();
    let d = posts::table
        .chunked_by(posts::id)
        .diff::<Post>(&mut left, &mut right)
        .batch_size(64)
        .run()
        .unwrap();
    assert_keys(&d, &[64], &[65, 501, 502, 503], &[300]);
    let d = posts::table
        .chunked_by(posts::id)
        .diff::<Post>(&mut right, &mut left)
        .batch_size(64)
        .run()
        .unwrap();
    assert_keys(&d, &[65, 501, 502, 503], &[64], &[300]);
}

/// Across backends: SQLite (a timestamp as text) against PostgreSQL.
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "chrono"))]
#[test]
fn sqlite_to_postgres() {
    let (lite, pg) = (Sqlite::create(), Pg::create());
    let (mut left, mut right) = (Sqlite::connect(&lite), Pg::connect(&pg));
    insert_posts(&mut left, 1..=300);
    insert_posts(&mut right, 1..=300);
    let d = posts::table
        .chunked_by(posts::id)
        .diff::<Post>(&mut left, &mut right)
        .batch_size(100)
        .run()
        .unwrap();
    assert!(d.is_identical(), "{d:?}");
    assert_eq!((d.chunks, d.rows_compared), (3, 300));
    let d = posts::table
        .chunked_by((posts::created_at, posts::id))
        .diff::<Post>(&mut left, &mut right)
        .batch_size(7)
        .run()
        .unwrap();
    assert!(d.is_identical(), "{d:?}");
    // timestamps SQLite holds as another text: equal in Rust
    diesel::sql_query("UPDATE posts SET created_at = created_at || '.000' WHERE id <= 50")
        .execute(&mut left)
        .unwrap();
    create_stamps(&mut left, "sqlite", 3, 100);
    create_stamps(&mut right, "postgres", 6, 100);
    let d = stamps::table
        .chunked_by(stamps::at)
        .diff::<Stamp>(&mut left, &mut right)
        .batch_size(30)
        .run()
        .unwrap();
    assert!(d.is_identical(), "{d:?}");
    assert_eq!(d.rows_compared, 100);

    diesel::delete(posts::table.filter(posts::id.eq_any([1, 300])))
        .execute(&mut right)
        .unwrap();
    diesel::update(posts::table.find(150))
        .set(posts::published.eq(false))
        .execute(&mut right)
        .unwrap();
    insert_posts(&mut right, [301]);
    let d = posts::table
        .chunked_by((posts::created_at, posts::id))
        .diff::<Post>(&mut left, &mut right)
        .batch_size(100)
        .run()
        .unwrap();
    assert_keys(
        &d,
        &[(ts(60), 1), (ts(300 * 60), 300)],
        &[(ts(301 * 60), 301)],
        &[(ts(150 * 60), 150)],
    );
}

/// A column type PostgreSQL cannot hash (`json`).
#[cfg(feature = "postgres")]
mod unhashable {
    use super::*;

    diesel::table! {
        docs (id) {
            id -> Integer,
            body -> Text,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
    #[diesel(table_name = docs)]
    struct Doc {
        id: i32,
        body: String,
    }

    /// A column type PostgreSQL cannot hash (`json`): the first checksum
    /// fails, and the diff compares rows instead, from the start.
    #[test]
    fn a_table_the_database_cannot_hash_is_compared_by_rows() {
        let (a, b) = (Pg::create(), Pg::create());
        let (mut left, mut right) = (Pg::connect(&a), Pg::connect(&b));
        for conn in [&mut left, &mut right] {
            diesel::sql_query("CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSON NOT NULL)")
                .execute(conn)
                .unwrap();
            diesel::sql_query(
                "INSERT INTO docs SELECT i, json_build_object('n', i)::json FROM generate_series(1, 50) AS i",
            )
            .execute(conn)
            .unwrap();
        }
        diesel::sql_query("UPDATE docs SET body = '{\"n\": 0}' WHERE id = 33")
            .execute(&mut right)
            .unwrap();
        let d = docs::table
            .chunked_by(docs::id)
            .diff::<Doc>(&mut left, &mut right)
            .batch_size(20)
            .run()
            .unwrap();
        assert_keys(&d, &[], &[], &[33]);
        assert!(!d.in_database);
        assert_eq!((d.chunks, d.checksums, d.rows_compared), (3, 0, 50));
    }
}

/// The key types of PostgreSQL alone: `uuid`, `timestamptz`, `date`.
#[cfg(all(feature = "postgres", feature = "uuid", feature = "chrono"))]
mod pg_key_types {
    use super::*;

    diesel::table! {
        tagged (id) {
            id -> Uuid,
            at -> Timestamptz,
            day -> Date,
            n -> Integer,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
    #[diesel(table_name = tagged)]
    struct Tagged {
        id: uuid::Uuid,
        at: chrono::DateTime<chrono::Utc>,
        day: chrono::NaiveDate,
        n: i32,
    }

    #[test]
    fn uuid_timestamptz_and_date_keys() {
        let (a, b) = (Pg::create(), Pg::create());
        let (mut left, mut right) = (Pg::connect(&a), Pg::connect(&b));
        for conn in [&mut left, &mut right] {
            diesel::sql_query(
                "CREATE TABLE tagged (id UUID PRIMARY KEY, at TIMESTAMPTZ NOT NULL UNIQUE, \
                 day DATE NOT NULL UNIQUE, n INTEGER NOT NULL)",
            )
            .execute(conn)
            .unwrap();
            diesel::sql_query(
                "INSERT INTO tagged SELECT md5(i::text)::uuid, \
                 timestamptz '2026-01-01 00:00:00+00' + i * interval '61 seconds', \
                 date '2026-01-01' + i, i FROM generate_series(1, 100) AS i",
            )
            .execute(conn)
            .unwrap();
        }
        let d = tagged::table
            .chunked_by(tagged::id)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert!(d.is_identical() && d.in_database && d.chunks == 12, "{d:?}");
        let d = tagged::table
            .chunked_by(tagged::at)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert!(d.is_identical() && d.chunks == 12, "{d:?}");
        let d = tagged::table
            .chunked_by(tagged::day)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert!(d.is_identical() && d.chunks == 12, "{d:?}");

        diesel::update(tagged::table.filter(tagged::n.eq(40)))
            .set(tagged::n.eq(-40))
            .execute(&mut right)
            .unwrap();
        let changed: Tagged = tagged::table
            .filter(tagged::n.eq(40))
            .first(&mut left)
            .unwrap();
        let d = tagged::table
            .chunked_by(tagged::id)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert_keys(&d, &[], &[], &[changed.id]);
        let d = tagged::table
            .chunked_by(tagged::at)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert_keys(&d, &[], &[], &[changed.at]);
        let d = tagged::table
            .chunked_by(tagged::day)
            .diff::<Tagged>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert_keys(&d, &[], &[], &[changed.day]);
    }
}

/// MySQL/MariaDB's unsigned keys.
#[cfg(feature = "mysql")]
mod mysql_key_types {
    use super::*;

    diesel::table! {
        unsigned_keys (id) {
            id -> Unsigned<BigInt>,
            n -> Integer,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
    #[diesel(table_name = unsigned_keys)]
    struct UnsignedKey {
        id: u64,
        n: i32,
    }

    #[test]
    fn unsigned_keys() {
        let (a, b) = (Mysql::create(), Mysql::create());
        let (mut left, mut right) = (Mysql::connect(&a), Mysql::connect(&b));
        for conn in [&mut left, &mut right] {
            diesel::sql_query(
                "CREATE TABLE unsigned_keys (id BIGINT UNSIGNED PRIMARY KEY, n INTEGER NOT NULL)",
            )
            .execute(conn)
            .unwrap();
            diesel::sql_query(
                "INSERT INTO unsigned_keys SELECT 18446744073709551615 - seq * 1000, seq \
                 FROM seq_1_to_100",
            )
            .execute(conn)
            .unwrap();
        }
        let d = unsigned_keys::table
            .chunked_by(unsigned_keys::id)
            .diff::<UnsignedKey>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert!(d.is_identical() && d.in_database && d.chunks == 12, "{d:?}");
        diesel::sql_query("DELETE FROM unsigned_keys WHERE n = 3")
            .execute(&mut right)
            .unwrap();
        let d = unsigned_keys::table
            .chunked_by(unsigned_keys::id)
            .diff::<UnsignedKey>(&mut left, &mut right)
            .batch_size(9)
            .run()
            .unwrap();
        assert_keys(&d, &[u64::MAX - 3000], &[], &[]);
    }
}
