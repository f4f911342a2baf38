//! Text keys whose uniqueness holds in another collation than the one they
//! are compared in, and the checks a write job makes before its first batch.
//!
//! A column compared case-insensitively (SQLite `COLLATE NOCASE`, a
//! PostgreSQL nondeterministic ICU collation) whose unique index holds it
//! unique only byte for byte can hold `a` and `A`: the seek predicate and
//! `ORDER BY` see them as one key value, and a keyset scan skips one of them
//! at a batch boundary. Such a key is refused by `verify_unique`, by a scan
//! before its first batch and by a write job before its first batch, and no
//! row is written. On MariaDB an index always holds its column unique in the
//! column's own collation: a case-insensitive key is walked row by row.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

diesel::table! {
    names (id) {
        id -> Integer,
        name -> Text,
        n -> Integer,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = names)]
struct Name {
    id: i32,
    name: String,
    n: i32,
}

fn exec<C>(conn: &mut C, sql: &str)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `names` with a case-insensitive `name` whose unique index is case-sensitive
/// (binary), and 52 rows: `a`..`z` as ids 1..=26, `A`..`Z` as ids 27..=52.
fn case_blind_names<C>(conn: &mut C, backend: &str)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    match backend {
        "sqlite" => {
            exec(
                conn,
                "CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE NOT NULL, \
                 n INTEGER NOT NULL DEFAULT 0)",
            );
            exec(
                conn,
                "CREATE UNIQUE INDEX names_name ON names (name COLLATE BINARY)",
            );
        }
        "postgres" => {
            // ICU ships with the server (pg_collation has provider 'i' rows).
            exec(
                conn,
                "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', \
                 deterministic = false)",
            );
            exec(
                conn,
                "CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT COLLATE ci NOT NULL, \
                 n INTEGER NOT NULL DEFAULT 0)",
            );
            exec(
                conn,
                "CREATE UNIQUE INDEX names_name ON names (name COLLATE \"C\")",
            );
        }
        other => panic!("no case-blind column with a binary unique index on {other}"),
    }
    insert_letters(conn, |i| char::from(b'a' + i as u8).to_string());
}

/// 52 rows: ids 1..=26 named `lower(i)`, ids 27..=52 named `upper(i)`.
fn insert_letters<C>(conn: &mut C, lower: impl Fn(usize) -> String)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    let values: Vec<String> = (0..26)
        .map(|i| format!("({}, '{}')", i + 1, lower(i)))
        .chain((0..26).map(|i| format!("({}, '{}')", i + 27, lower(i).to_uppercase())))
        .collect();
    exec(
        conn,
        &format!("INSERT INTO names (id, name) VALUES {}", values.join(", ")),
    );
}

fn counters<C>(conn: &mut C) -> BTreeMap<i32, i32>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> names::table: diesel::query_dsl::LoadQuery<'a, C, Name>,
{
    let rows: Vec<Name> = names::table.load(conn).unwrap();
    rows.into_iter().map(|r| (r.id, r.n)).collect()
}

/// The refusal of the case-blind key: names the column and both collations.
fn assert_refused(err: &Error, column_collation: &str, index_collation: &str) {
    match err {
        Error::UnsupportedKey { columns, reason } => {
            assert_eq!(columns, "names.name");
            assert!(reason.contains("names.name"), "{reason}");
            assert!(reason.contains(column_collation), "{reason}");
            assert!(reason.contains(index_collation), "{reason}");
            assert!(reason.contains("names_name"), "{reason}");
        }
        other => panic!("expected UnsupportedKey, got {other:?}"),
    }
}

backend_tests! {
    fn a_key_unique_only_in_another_collation_is_refused_everywhere(db) {
        if B::NAME == "mysql" {
            // MariaDB cannot build this table: see `mariadb` below.
            return;
        }
        let mut conn = connect::<B>(&db);
        case_blind_names(&mut conn, B::NAME);
        let (column_collation, index_collation) = match B::NAME {
            "sqlite" => ("NOCASE", "BINARY"),
            _ => ("ci", "C"),
        };

        let err = names::table.chunked_by(names::name).verify_unique(&mut conn).unwrap_err();
        assert_refused(&err, column_collation, index_collation);
        assert!(err.to_string().starts_with("key names.name cannot be scanned"), "{err}");

        for batch in [1, 5, 100] {
            let mut it = names::table
                .chunked_by(names::name)
                .batch_size(batch)
                .load_iter::<Name>(&mut conn);
            match it.next() {
                Some(Err(e)) => assert_refused(&e, column_collation, index_collation),
                other => panic!("batch {batch}: expected the refusal, got {other:?}"),
            }
            assert!(it.next().is_none(), "batch {batch}: fused after the error");
        }
        let mut batches = names::table
            .chunked_by(names::name)
            .batch_size(5)
            .load_batches::<Name>(&mut conn);
        match batches.next() {
            Some(Err(e)) => assert_refused(&e, column_collation, index_collation),
            other => panic!("expected the refusal, got {other:?}"),
        }

        // every slice of the partitions is a scan by the same key: refused
        let parts = names::table.chunked_by(names::name).partitions(4, &mut conn).unwrap();
        for p in &parts {
            let mut it = names::table
                .chunked_by(names::name)
                .within(p)
                .load_iter::<Name>(&mut conn);
            match it.next() {
                Some(Err(e)) => assert_refused(&e, column_collation, index_collation),
                other => panic!("slice {p:?}: expected the refusal, got {other:?}"),
            }
        }

        // write jobs: refused before any batch, nothing written
        let err = names::table
            .chunked_by(names::name)
            .batch_size(5)
            .update_all(&mut conn, names::n.eq(names::n + 1))
            .unwrap_err();
        assert_refused(&err, column_collation, index_collation);
        let err = names::table
            .chunked_by(names::name)
            .batch_size(5)
            .for_each_batch(&mut conn, |conn, rows: Vec<Name>| -> QueryResult<()> {
                let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
                diesel::update(names::table.filter(names::id.eq_any(ids)))
                    .set(names::n.eq(names::n + 1))
                    .execute(conn)?;
                Ok(())
            })
            .unwrap_err();
        assert_refused(&err, column_collation, index_collation);
        let err = names::table
            .chunked_by(names::name)
            .delete_all(&mut conn)
            .unwrap_err();
        assert_refused(&err, column_collation, index_collation);
        let untouched: BTreeMap<i32, i32> = (1..=52).map(|id| (id, 0)).collect();
        assert_eq!(counters(&mut conn), untouched, "no row written or deleted");

        // a tiebreaker that is unique in any collation makes the key safe:
        // every row exactly once, in the column's own (case-blind) order
        let mut seen = Vec::new();
        for row in names::table
            .chunked_by((names::name, names::id))
            .batch_size(5)
            .load_iter::<Name>(&mut conn)
        {
            seen.push(row.unwrap().id);
        }
        let mut expected: Vec<i32> = (1..=26).flat_map(|i| [i, i + 26]).collect();
        assert_eq!(seen, expected);
        names::table.chunked_by((names::name, names::id)).verify_unique(&mut conn).unwrap();
        let report = names::table
            .chunked_by((names::name, names::id))
            .batch_size(5)
            .update_all(&mut conn, names::n.eq(names::n + 1))
            .unwrap();
        assert_eq!(report.rows, 52);
        let once: BTreeMap<i32, i32> = (1..=52).map(|id| (id, 1)).collect();
        assert_eq!(counters(&mut conn), once, "every row updated exactly once");

        // an index in the column's own collation makes the key unique as it
        // is compared: 'a' and 'A' can no longer both exist
        exec(&mut conn, "DELETE FROM names WHERE id > 26");
        exec(&mut conn, "CREATE UNIQUE INDEX names_name_own ON names (name)");
        names::table.chunked_by(names::name).verify_unique(&mut conn).unwrap();
        seen.clear();
        for row in names::table.chunked_by(names::name).batch_size(1).load_iter::<Name>(&mut conn) {
            seen.push(row.unwrap().id);
        }
        expected = (1..=26).collect();
        assert_eq!(seen, expected);
    }

    fn integer_and_well_collated_text_keys_read_no_collation(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=7);
        let log = QueryLog::install(&mut conn);
        let ids: Vec<i32> = posts::table
            .chunked_by(posts::id)
            .batch_size(3)
            .load_iter::<Post>(&mut conn)
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(ids, (1..=7).collect::<Vec<_>>());
        // an integer key: the batches and nothing else
        assert_eq!(log.all().len(), 3, "{:?}", log.all());
        posts::table.chunked_by(posts::slug).verify_unique(&mut conn).unwrap();
        let slugs: Vec<i32> = posts::table
            .chunked_by(posts::slug)
            .batch_size(3)
            .load_iter::<Post>(&mut conn)
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(slugs, (1..=7).collect::<Vec<_>>());
    }
}

/// A write job that starts after a key given as a Rust value probes the row
/// before it, as a read scan does: on SQLite a timestamp stored in another
/// format than Diesel binds cannot be compared with that value exactly.
#[cfg(all(feature = "sqlite", feature = "chrono"))]
mod stored_forms {
    use super::*;
    use chrono::NaiveDate;

    diesel::table! {
        stamps (id) {
            id -> Integer,
            created -> Timestamp,
            n -> Integer,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
    #[diesel(table_name = stamps)]
    struct Stamp {
        id: i32,
        created: chrono::NaiveDateTime,
        n: i32,
    }

    fn counters(conn: &mut diesel::SqliteConnection) -> BTreeMap<i32, i32> {
        let rows: Vec<Stamp> = stamps::table.load(conn).unwrap();
        rows.into_iter().map(|r| (r.id, r.n)).collect()
    }

    #[test]
    fn a_write_job_after_a_rust_value_on_stored_forms_is_refused_as_a_scan_is() {
        let db = <Sqlite as TestBackend>::create();
        let mut conn = connect::<Sqlite>(&db);
        exec(
            &mut conn,
            "CREATE TABLE stamps (id INTEGER PRIMARY KEY, created TIMESTAMP NOT NULL UNIQUE, \
             n INTEGER NOT NULL DEFAULT 0)",
        );
        // ISO 8601 with 'T' and 'Z', as JavaScript writes it: one a minute
        let values: Vec<String> = (1..=20)
            .map(|i| format!("({i}, '2026-01-01T00:{i:02}:00.000Z')"))
            .collect();
        exec(
            &mut conn,
            &format!(
                "INSERT INTO stamps (id, created) VALUES {}",
                values.join(", ")
            ),
        );
        let pivot = NaiveDate::from_ymd_opt(2026, 1, 1)
            .unwrap()
            .and_hms_opt(0, 10, 0)
            .unwrap();
        // Descending from 00:10 as Diesel binds it ('2026-01-01 00:10:00'):
        // every stored value ('2026-01-01T00:..') sorts after it, so the first
        // batch would be empty and the job would end at once as if done; only
        // the probe of the row before the start key sees the stored form.
        let job = || {
            stamps::table
                .chunked_by(stamps::created)
                .batch_size(3)
                .start_after(pivot)
                .desc()
        };
        let mut it = job().load_iter::<Stamp>(&mut conn);
        assert!(
            matches!(it.next(), Some(Err(Error::StoredForm { .. }))),
            "the read scan refuses"
        );
        let err = job()
            .update_all(&mut conn, stamps::n.eq(stamps::n + 1))
            .unwrap_err();
        assert!(matches!(err, Error::StoredForm { .. }), "{err:?}");
        let err = job()
            .for_each_batch(&mut conn, |conn, rows: Vec<Stamp>| -> QueryResult<()> {
                let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
                diesel::update(stamps::table.filter(stamps::id.eq_any(ids)))
                    .set(stamps::n.eq(stamps::n + 1))
                    .execute(conn)?;
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::StoredForm { .. }), "{err:?}");
        let err = job().delete_all(&mut conn).unwrap_err();
        assert!(matches!(err, Error::StoredForm { .. }), "{err:?}");
        let untouched: BTreeMap<i32, i32> = (1..=20).map(|id| (id, 0)).collect();
        assert_eq!(counters(&mut conn), untouched, "no row written or deleted");

        // from the stored key of a row, the job is exact: rows 11..=20, once
        let stored = {
            let mut it = stamps::table
                .chunked_by(stamps::created)
                .batch_size(3)
                .load_iter::<Stamp>(&mut conn);
            let firsts: Vec<i32> = it.by_ref().take(10).map(|r| r.unwrap().id).collect();
            assert_eq!(firsts, (1..=10).collect::<Vec<_>>());
            it.last_stored_key().cloned().unwrap()
        };
        let report = stamps::table
            .chunked_by(stamps::created)
            .batch_size(3)
            .start_after(stored)
            .update_all(&mut conn, stamps::n.eq(stamps::n + 1))
            .unwrap();
        assert_eq!(report.rows, 10);
        let expected: BTreeMap<i32, i32> = (1..=20).map(|id| (id, i32::from(id > 10))).collect();
        assert_eq!(counters(&mut conn), expected);
    }
}

/// MariaDB: an index holds its column unique in the column's own collation,
/// so a case-insensitive key is unique as it is compared.
#[cfg(feature = "mysql")]
mod mariadb {
    use super::*;

    #[test]
    fn a_case_insensitive_key_is_walked_row_by_row() {
        let db = <Mysql as TestBackend>::create();
        let mut conn = connect::<Mysql>(&db);
        exec(
            &mut conn,
            "CREATE TABLE names (id INTEGER PRIMARY KEY, \
             name VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL UNIQUE, \
             n INTEGER NOT NULL DEFAULT 0)",
        );
        // the server refuses 'A' next to 'a': the index is case-insensitive too
        exec(&mut conn, "INSERT INTO names (id, name) VALUES (1, 'a')");
        let dup =
            diesel::sql_query("INSERT INTO names (id, name) VALUES (2, 'A')").execute(&mut conn);
        assert!(dup.is_err(), "{dup:?}");
        exec(&mut conn, "DELETE FROM names");
        // 52 names alternating in case: their case-blind order is not their byte order
        let values: Vec<String> = (0..52)
            .map(|i| {
                let letter = char::from(b'a' + (i / 2) as u8);
                let name = match i % 2 {
                    0 => format!("{letter}{i:02}"),
                    _ => format!("{}{i:02}", letter.to_ascii_uppercase()),
                };
                format!("({}, '{name}')", i + 1)
            })
            .collect();
        exec(
            &mut conn,
            &format!("INSERT INTO names (id, name) VALUES {}", values.join(", ")),
        );
        let expected: Vec<i32> = (1..=52).collect();
        names::table
            .chunked_by(names::name)
            .verify_unique(&mut conn)
            .unwrap();
        for batch in [1, 5, 100] {
            let seen: Vec<i32> = names::table
                .chunked_by(names::name)
                .batch_size(batch)
                .load_iter::<Name>(&mut conn)
                .map(|r| r.unwrap().id)
                .collect();
            assert_eq!(seen, expected, "batch {batch}");
        }
        let parts = names::table
            .chunked_by(names::name)
            .partitions(4, &mut conn)
            .unwrap();
        let mut seen = Vec::new();
        for p in &parts {
            for row in names::table
                .chunked_by(names::name)
                .within(p)
                .batch_size(3)
                .load_iter::<Name>(&mut conn)
            {
                seen.push(row.unwrap().id);
            }
        }
        assert_eq!(seen, expected, "partitions(4)");
        let report = names::table
            .chunked_by(names::name)
            .batch_size(5)
            .update_all(&mut conn, names::n.eq(names::n + 1))
            .unwrap();
        assert_eq!(report.rows, 52);
        let once: BTreeMap<i32, i32> = (1..=52).map(|id| (id, 1)).collect();
        assert_eq!(counters(&mut conn), once, "every row updated exactly once");
    }

    #[test]
    fn a_unique_prefix_index_does_not_vouch_for_the_key() {
        let db = <Mysql as TestBackend>::create();
        let mut conn = connect::<Mysql>(&db);
        exec(
            &mut conn,
            "CREATE TABLE names (id INTEGER PRIMARY KEY, \
             name VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL, \
             n INTEGER NOT NULL DEFAULT 0, UNIQUE KEY names_name (name(3)))",
        );
        match names::table
            .chunked_by(names::name)
            .verify_unique(&mut conn)
        {
            Err(Error::NotUnique { table, .. }) => assert_eq!(table, "names"),
            other => panic!("expected NotUnique, got {other:?}"),
        }
    }
}

/// The async drivers make the same check: `verify_unique_async`, and a stream
/// before its first batch, on diesel-async's PostgreSQL connection and on
/// SQLite in its blocking wrapper.
#[cfg(feature = "async")]
mod streams {
    use super::*;
    use diesel_async::AsyncConnection;
    use futures_util::TryStreamExt;

    macro_rules! refused {
        ($name:ident, $backend:ty, $conn:ty, $own:expr, $index:expr) => {
            #[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                let db = <$backend as TestBackend>::create();
                let mut sync = <$backend as TestBackend>::connect(&db);
                case_blind_names(&mut sync, <$backend as TestBackend>::NAME);
                let mut conn = <$conn>::establish(&db.url).await.expect("async connection");
                let err = names::table
                    .chunked_by(names::name)
                    .verify_unique_async(&mut conn)
                    .await
                    .unwrap_err();
                assert_refused(&err, $own, $index);
                for batch in [1, 5] {
                    let got: Result<Vec<Name>, Error> = names::table
                        .chunked_by(names::name)
                        .batch_size(batch)
                        .load_stream::<Name>(&mut conn)
                        .try_collect()
                        .await;
                    assert_refused(&got.unwrap_err(), $own, $index);
                }
                let ids: Vec<i32> = names::table
                    .chunked_by((names::name, names::id))
                    .batch_size(5)
                    .load_stream::<Name>(&mut conn)
                    .map_ok(|r| r.id)
                    .try_collect()
                    .await
                    .unwrap();
                let expected: Vec<i32> = (1..=26).flat_map(|i| [i, i + 26]).collect();
                assert_eq!(ids, expected);
            }
        };
    }

    #[cfg(feature = "sqlite")]
    refused!(
        sqlite,
        Sqlite,
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
        "NOCASE",
        "BINARY"
    );
    #[cfg(feature = "postgres")]
    refused!(postgres, Pg, diesel_async::AsyncPgConnection, "ci", "C");
}
