//! Keys compared as the database stores them (SQLite).
//!
//! SQLite has no timestamp type: a `Timestamp` column holds whatever text or
//! number was written, and Diesel reads many of those formats into one
//! `NaiveDateTime` but binds its own format back. These tests write the formats
//! other programs write (Rails' six fraction digits, JavaScript's ISO 8601 with
//! `T` and `Z`, SQLite's `julianday()` REALs, a mix of them) and check that a
//! scan yields every row exactly once in the database's own order
//! (`ORDER BY created`), in both directions and with a composite key; that
//! resuming from `last_stored_key()` is exact; and that what cannot be exact
//! (a bound given as a Rust value on such a column, Unix-epoch integers Diesel
//! cannot read as a timestamp) is a clear error, never a short result.
#![cfg(all(feature = "sqlite", feature = "chrono"))]

use crate::common;

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

diesel::table! {
    stamps (id) {
        id -> Integer,
        created -> Timestamp,
        day -> Date,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = stamps)]
struct Stamp {
    id: i32,
    created: NaiveDateTime,
    day: NaiveDate,
}

const ROWS: i32 = 2000;

struct Db {
    conn: SqliteConnection,
    path: std::path::PathBuf,
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a row's `created` value is written.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// `2026-01-01 12:00:07.000000`: six fraction digits, always.
    SixDigits,
    /// `2026-01-01T12:00:07.250Z`
    Iso,
    /// `julianday('2026-01-01 12:00:07.250')`, a REAL.
    Julian,
    /// Diesel's own: `2026-01-01 12:00:07.250`.
    Diesel,
}

/// The `created` of row `id`: unique, in an order unrelated to the ids
/// (1999 is invertible mod 2003), with fractions of a second.
fn created_of(id: i32) -> NaiveDateTime {
    let slot = i64::from(id) * 1999 % 2003;
    NaiveDate::from_ymd_opt(2026, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        + TimeDelta::seconds(slot * 7)
        + TimeDelta::milliseconds((slot % 4) * 250)
}

/// The SQL literal that writes `t` in `format`.
fn literal(t: NaiveDateTime, format: Format) -> String {
    match format {
        Format::SixDigits => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
        Format::Iso => format!("'{}'", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        Format::Julian => format!("julianday('{}')", t.format("%Y-%m-%d %H:%M:%S%.3f")),
        Format::Diesel => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.f")),
    }
}

/// A database with `ROWS` stamps, row `id` written in `format_of(id)`.
fn stamps_db(format_of: impl Fn(i32) -> Format) -> Db {
    let path = std::env::temp_dir().join(format!("{}.sqlite3", common::unique_name("stored")));
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
    diesel::sql_query(
        "CREATE TABLE stamps (id INTEGER PRIMARY KEY, created TIMESTAMP NOT NULL UNIQUE, \
         day DATE NOT NULL UNIQUE)",
    )
    .execute(&mut conn)
    .unwrap();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|&id| {
                let t = created_of(id);
                let day = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()
                    + TimeDelta::days(i64::from(id) * 7 % 2003);
                format!(
                    "({id}, {}, '{}')",
                    literal(t, format_of(id)),
                    day.format("%F")
                )
            })
            .collect();
        diesel::sql_query(format!(
            "INSERT INTO stamps (id, created, day) VALUES {}",
            values.join(", ")
        ))
        .execute(&mut conn)
        .unwrap();
    }
    Db { conn, path }
}

/// The ids in the database's own order of `order_by`.
fn db_order(conn: &mut SqliteConnection, order_by: &str) -> Vec<i32> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        id: i32,
    }
    diesel::sql_query(format!("SELECT id FROM stamps ORDER BY {order_by}"))
        .load::<Id>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn ids<E: std::fmt::Debug>(rows: impl Iterator<Item = Result<Stamp, E>>) -> Vec<i32> {
    rows.map(|r| r.expect("scan failed").id).collect()
}

/// Every scan of the `created` key over `db`: single and composite keys, both
/// directions, rows and batches, equal to the database's own order.
fn assert_scans_in_database_order(db: &mut Db, what: &str) {
    let asc = db_order(&mut db.conn, "created, id");
    let desc = db_order(&mut db.conn, "created DESC, id DESC");
    assert_eq!(asc.len(), ROWS as usize);
    let conn = &mut db.conn;

    let got = ids(stamps::table
        .chunked_by(stamps::created)
        .batch_size(100)
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!(got, asc, "{what}: chunked_by(created) ascending");
    let got = ids(stamps::table
        .chunked_by(stamps::created)
        .batch_size(100)
        .desc()
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!(got, desc, "{what}: chunked_by(created) descending");
    let got = ids(stamps::table
        .chunked_by((stamps::created, stamps::id))
        .batch_size(100)
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!(got, asc, "{what}: chunked_by((created, id)) ascending");
    let got = ids(stamps::table
        .chunked_by((stamps::created, stamps::id))
        .batch_size(100)
        .desc()
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!(got, desc, "{what}: chunked_by((created, id)) descending");
    let batches: Vec<Vec<Stamp>> = stamps::table
        .chunked_by(stamps::created)
        .batch_size(7)
        .load_batches::<Stamp>(&mut *conn)
        .collect::<Result<_, _>>()
        .unwrap();
    let got: Vec<i32> = batches.concat().iter().map(|s| s.id).collect();
    assert_eq!(got, asc, "{what}: load_batches, batch_size(7)");

    // Resuming from the stored form of the last key handed out is exact.
    let mut it = stamps::table
        .chunked_by(stamps::created)
        .batch_size(100)
        .load_iter::<Stamp>(&mut *conn);
    let first: Vec<i32> = it.by_ref().take(250).map(|s| s.unwrap().id).collect();
    let saved = it.last_stored_key().cloned().unwrap();
    drop(it);
    let rest = ids(stamps::table
        .chunked_by(stamps::created)
        .batch_size(100)
        .start_after(saved)
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!(
        [first, rest].concat(),
        asc,
        "{what}: resumed from last_stored_key()"
    );
}

#[test]
fn six_fraction_digits_are_scanned_in_database_order() {
    let mut db = stamps_db(|_| Format::SixDigits);
    assert_scans_in_database_order(&mut db, "six digits");
}

#[test]
fn iso_8601_with_t_and_z_is_scanned_in_database_order() {
    let mut db = stamps_db(|_| Format::Iso);
    assert_scans_in_database_order(&mut db, "ISO 8601");
}

#[test]
fn julian_day_reals_are_scanned_in_database_order() {
    let mut db = stamps_db(|_| Format::Julian);
    assert_scans_in_database_order(&mut db, "julian REAL");
}

#[test]
fn a_column_of_mixed_formats_is_scanned_in_database_order() {
    // SQLite orders REALs before all text, and text by its bytes: the database's
    // order is not the timestamps' order, and a scan follows the database.
    let mut db = stamps_db(|id| match id % 4 {
        0 => Format::SixDigits,
        1 => Format::Iso,
        2 => Format::Julian,
        _ => Format::Diesel,
    });
    assert_scans_in_database_order(&mut db, "mixed");
}

#[test]
fn diesel_written_timestamps_keep_exact_rust_keys() {
    let mut db = stamps_db(|_| Format::Diesel);
    assert_scans_in_database_order(&mut db, "Diesel's format");
    let asc = db_order(&mut db.conn, "created");
    let conn = &mut db.conn;
    // No stored form is kept: last_key() resumes exactly, and partitions work.
    let mut it = stamps::table
        .chunked_by(stamps::created)
        .batch_size(64)
        .load_iter::<Stamp>(&mut *conn);
    let first: Vec<i32> = it.by_ref().take(100).map(|s| s.unwrap().id).collect();
    assert!(!it.last_stored_key().unwrap().has_stored_form());
    let saved = *it.last_key().unwrap();
    drop(it);
    let rest = ids(stamps::table
        .chunked_by(stamps::created)
        .start_after(saved)
        .load_iter::<Stamp>(&mut *conn));
    assert_eq!([first, rest].concat(), asc);

    let parts = stamps::table
        .chunked_by(stamps::created)
        .partitions(3, &mut *conn)
        .unwrap();
    let mut all = Vec::new();
    for p in &parts {
        all.extend(ids(stamps::table
            .chunked_by(stamps::created)
            .within(p)
            .batch_size(50)
            .load_iter::<Stamp>(&mut *conn)));
    }
    assert_eq!(all, asc);
}

#[test]
fn a_rust_bound_on_a_column_in_another_format_is_an_error_not_a_short_scan() {
    let mut db = stamps_db(|_| Format::Iso);
    let asc = db_order(&mut db.conn, "created");
    let conn = &mut db.conn;
    let pivot = {
        let mut it = stamps::table
            .chunked_by(stamps::created)
            .batch_size(100)
            .load_iter::<Stamp>(&mut *conn);
        let _: Vec<_> = it.by_ref().take(500).collect();
        *it.last_key().unwrap()
    };
    // `pivot` binds as '2026-01-01 ...', the column holds '2026-01-01T...Z':
    // in either direction the comparison would be wrong, so the scan refuses.
    for desc in [false, true] {
        let c = stamps::table
            .chunked_by(stamps::created)
            .batch_size(100)
            .start_after(pivot);
        let c = if desc { c.desc() } else { c };
        let mut it = c.load_iter::<Stamp>(&mut *conn);
        match it.next() {
            Some(Err(e @ Error::StoredForm { .. })) => {
                assert!(e.to_string().contains("last_stored_key()"), "{e}");
            }
            // An empty first batch cannot tell; it must then be truly empty.
            None => assert!(!desc && asc.len() == 500, "desc={desc}: a short scan"),
            other => panic!("desc={desc}: expected StoredForm, got {other:?}"),
        }
    }
    // Partitions cannot carry stored forms: refused, with the reason.
    match stamps::table
        .chunked_by(stamps::created)
        .partitions(4, &mut *conn)
    {
        Err(e @ Error::StoredForm { .. }) => assert!(e.to_string().contains("stored"), "{e}"),
        other => panic!("expected StoredForm, got {other:?}"),
    }
}

#[test]
fn unix_epoch_integers_are_an_error_before_any_row() {
    // Diesel reads no Unix-epoch integer as a Timestamp: the first batch fails
    // to load, before a row is handed out (declare such a column as BigInt).
    let mut db = stamps_db(|_| Format::Diesel);
    diesel::sql_query("UPDATE stamps SET created = CAST(strftime('%s', created) AS INTEGER)")
        .execute(&mut db.conn)
        .unwrap();
    let mut it = stamps::table
        .chunked_by(stamps::created)
        .load_iter::<Stamp>(&mut db.conn);
    assert!(matches!(
        it.next(),
        Some(Err(Error::Database { batch: 1, .. }))
    ));
    assert!(it.next().is_none());

    diesel::table! {
        epochs (id) {
            id -> Integer,
            created -> BigInt,
        }
    }
    diesel::sql_query("CREATE TABLE epochs AS SELECT id, created FROM stamps")
        .execute(&mut db.conn)
        .unwrap();
    let got: Vec<i32> = epochs::table
        .select((epochs::id, epochs::created))
        .chunked_by(epochs::created)
        .batch_size(100)
        .desc()
        .load_iter_keyed(&mut db.conn, |r: &(i32, i64)| r.1)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(got, db_order(&mut db.conn, "created DESC"));
}

#[test]
fn date_keys_in_both_directions_and_composite() {
    let mut db = stamps_db(|_| Format::Diesel);
    let asc = db_order(&mut db.conn, "day");
    let desc = db_order(&mut db.conn, "day DESC");
    let conn = &mut db.conn;
    assert_eq!(
        ids(stamps::table
            .chunked_by(stamps::day)
            .batch_size(99)
            .load_iter::<Stamp>(&mut *conn)),
        asc
    );
    assert_eq!(
        ids(stamps::table
            .chunked_by(stamps::day)
            .batch_size(99)
            .desc()
            .load_iter::<Stamp>(&mut *conn)),
        desc
    );
    assert_eq!(
        ids(stamps::table
            .chunked_by((stamps::day, stamps::id))
            .batch_size(99)
            .load_iter::<Stamp>(&mut *conn)),
        asc
    );
    assert_eq!(
        ids(stamps::table
            .chunked_by((stamps::day, stamps::created))
            .batch_size(99)
            .desc()
            .load_iter::<Stamp>(&mut *conn)),
        desc
    );
}

#[test]
fn a_checkpointed_job_resumes_exactly_on_a_column_in_another_format() {
    use diesel_chunked_iterator::checkpoint;
    let mut db = stamps_db(|id| {
        if id % 2 == 0 {
            Format::Iso
        } else {
            Format::Julian
        }
    });
    let order = db_order(&mut db.conn, "created, id");
    let conn = &mut db.conn;
    checkpoint::create_table(&mut *conn).unwrap();
    diesel::sql_query("ALTER TABLE stamps ADD COLUMN n INTEGER NOT NULL DEFAULT 0")
        .execute(&mut *conn)
        .unwrap();
    diesel::table! {
        counted (id) {
            id -> Integer,
            created -> Timestamp,
            n -> Integer,
        }
    }
    diesel::sql_query("CREATE VIEW counted AS SELECT id, created, n FROM stamps")
        .execute(&mut *conn)
        .unwrap();
    // Three runs of at most 700 rows each, resumed from the stored form the
    // checkpoint keeps, then nothing left.
    let mut seen = Vec::new();
    for run in 0..4 {
        let report = stamps::table
            .chunked_by(stamps::created)
            .batch_size(64)
            .limit_total(700)
            .checkpoint("iso")
            .for_each_batch(
                &mut *conn,
                |conn: &mut SqliteConnection, batch: Vec<Stamp>| -> QueryResult<()> {
                    for s in &batch {
                        diesel::sql_query(format!(
                            "UPDATE stamps SET n = n + 1 WHERE id = {}",
                            s.id
                        ))
                        .execute(conn)?;
                    }
                    Ok(())
                },
            )
            .unwrap();
        seen.push(report.rows);
        assert_eq!(report.done, run >= 2, "run {run}: {report:?}");
    }
    assert_eq!(seen, [700, 700, 600, 0]);
    let counts: Vec<(i32, i32)> = counted::table
        .select((counted::id, counted::n))
        .load(&mut *conn)
        .unwrap();
    assert!(
        counts.iter().all(|&(_, n)| n == 1),
        "every row exactly once"
    );
    assert_eq!(counts.len(), order.len());
}
