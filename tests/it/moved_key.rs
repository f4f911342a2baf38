//! `update_all` over a key that the `UPDATE` moves without its `SET` list
//! naming it: a generated key column, a trigger that changes the key. A row
//! moved ahead of the scan would be met and written again by a later batch (an
//! update that moves every row never ends), so the job must stop with a clear
//! error; a trigger that leaves the key alone must not stop it. Every write
//! adds 1 to a counter column, so "written once" is checked row by row.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::Error;

diesel::table! {
    /// `k` is generated: `n * 2`.
    generated (id) {
        id -> Integer,
        n -> Integer,
        k -> Integer,
        writes -> Integer,
    }
}

diesel::table! {
    /// `touched` is counted by a trigger on every update; `k` may be moved by one.
    triggered (id) {
        id -> Integer,
        k -> Integer,
        writes -> Integer,
        touched -> Integer,
    }
}

const ROWS: i32 = 1000;

/// Creates `generated` with ids 1..=ROWS, `n` = id, so `k` = 2 × id.
fn create_generated(conn: &mut impl SimpleConnection, backend: &str) {
    let k = match backend {
        "mysql" => "k INTEGER AS (n * 2) STORED",
        _ => "k INTEGER GENERATED ALWAYS AS (n * 2) STORED",
    };
    conn.batch_execute(&format!(
        "CREATE TABLE generated (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, {k}, \
         writes INTEGER NOT NULL DEFAULT 0); \
         CREATE UNIQUE INDEX generated_k ON generated (k);"
    ))
    .unwrap();
    let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, {i})")).collect();
    conn.batch_execute(&format!(
        "INSERT INTO generated (id, n) VALUES {}",
        values.join(", ")
    ))
    .unwrap();
}

/// Creates `triggered` with ids 1..=ROWS, `k` = id, and an `UPDATE` trigger
/// that counts each update of a row in `touched`; with `moves`, another that
/// adds 1,000,000 to the key of each updated row whose key is above 500.
fn create_triggered(conn: &mut impl SimpleConnection, backend: &str, moves: bool) {
    conn.batch_execute(
        "CREATE TABLE triggered (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, \
         writes INTEGER NOT NULL DEFAULT 0, touched INTEGER NOT NULL DEFAULT 0); \
         CREATE UNIQUE INDEX triggered_k ON triggered (k);",
    )
    .unwrap();
    let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, {i})")).collect();
    conn.batch_execute(&format!(
        "INSERT INTO triggered (id, k) VALUES {}",
        values.join(", ")
    ))
    .unwrap();
    let touch = match backend {
        "sqlite" => "CREATE TRIGGER triggered_touch AFTER UPDATE OF writes ON triggered \
                     BEGIN UPDATE triggered SET touched = touched + 1 WHERE id = NEW.id; END;"
            .to_string(),
        "postgres" => "CREATE FUNCTION triggered_touch() RETURNS trigger LANGUAGE plpgsql AS \
                       $$ BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END $$; \
                       CREATE TRIGGER triggered_touch BEFORE UPDATE ON triggered \
                       FOR EACH ROW EXECUTE FUNCTION triggered_touch();"
            .to_string(),
        _ => "CREATE TRIGGER triggered_touch BEFORE UPDATE ON triggered FOR EACH ROW \
              SET NEW.touched = NEW.touched + 1"
            .to_string(),
    };
    conn.batch_execute(&touch).unwrap();
    if moves {
        let sql = match backend {
            // SQLite: an AFTER trigger that updates the row again (an UPDATE
            // of `k` only, which fires neither trigger)
            "sqlite" => {
                "CREATE TRIGGER triggered_moves AFTER UPDATE OF writes ON triggered \
                         WHEN OLD.k > 500 \
                         BEGIN UPDATE triggered SET k = k + 1000000 WHERE id = NEW.id; END;"
            }
            "postgres" => {
                "CREATE FUNCTION triggered_moves() RETURNS trigger LANGUAGE plpgsql \
                           AS $$ BEGIN IF OLD.k > 500 THEN NEW.k := NEW.k + 1000000; END IF; \
                           RETURN NEW; END $$; \
                           CREATE TRIGGER triggered_moves BEFORE UPDATE ON triggered \
                           FOR EACH ROW EXECUTE FUNCTION triggered_moves();"
            }
            _ => {
                "CREATE TRIGGER triggered_moves BEFORE UPDATE ON triggered FOR EACH ROW \
                  SET NEW.k = IF(OLD.k > 500, NEW.k + 1000000, NEW.k)"
            }
        };
        conn.batch_execute(sql).unwrap();
    }
}

backend_tests! {
    fn a_generated_key_is_refused_before_any_row_is_written(db) {
        let mut conn = connect::<B>(&db);
        create_generated(&mut conn, B::NAME);
        let err = generated::table
            .chunked_by(generated::k)
            .batch_size(100)
            .limit_total(5000)
            .update_all(
                &mut conn,
                (generated::n.eq(generated::n + 1_000_000), generated::writes.eq(generated::writes + 1)),
            )
            .unwrap_err();
        assert!(matches!(err, Error::KeyMayMove { .. }), "{}: {err:?}", B::NAME);
        let message = err.to_string();
        assert!(message.starts_with("update_all cannot scan by generated.k: generated.k is a generated column"), "{message}");
        assert!(message.contains("scan by a key the update cannot change"), "{message}");

        let rows: Vec<(i32, i32, i32, i32)> = generated::table
            .select((generated::id, generated::n, generated::k, generated::writes))
            .order(generated::id)
            .load(&mut conn)
            .unwrap();
        let expected: Vec<(i32, i32, i32, i32)> = (1..=ROWS).map(|i| (i, i, 2 * i, 0)).collect();
        assert_eq!(rows, expected, "no row may be written");

        // Scanning by the column it is computed from runs, each row once.
        let report = generated::table
            .chunked_by(generated::id)
            .batch_size(100)
            .update_all(
                &mut conn,
                (generated::n.eq(generated::n + 1_000_000), generated::writes.eq(generated::writes + 1)),
            )
            .unwrap();
        assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
        let writes: Vec<i32> = generated::table
            .select(generated::writes)
            .order(generated::id)
            .load(&mut conn)
            .unwrap();
        assert!(writes.iter().all(|&w| w == 1), "{writes:?}");
    }

    fn a_trigger_that_moves_the_key_stops_the_job_in_the_batch_it_moves(db) {
        let mut conn = connect::<B>(&db);
        create_triggered(&mut conn, B::NAME, true);
        let err = triggered::table
            .chunked_by(triggered::k)
            .batch_size(100)
            .limit_total(5000)
            .update_all(&mut conn, triggered::writes.eq(triggered::writes + 1))
            .unwrap_err();
        let Error::KeyMoved { columns, range, moved, cause } = &err else {
            panic!("{}: {err:?}", B::NAME);
        };
        assert_eq!(columns, "triggered.k");
        assert_eq!(range, "after key 500 up to key 600");
        assert_eq!(*moved, 100);
        assert!(cause.contains("trigger triggered_moves"), "{cause}");
        let message = err.to_string();
        assert!(
            message.starts_with("the batch after key 500 up to key 600 of update_all moved 100 row(s) out of its range of triggered.k"),
            "{message}"
        );
        assert!(message.contains("the batch was rolled back and the job stopped"), "{message}");

        // Batches 1 to 5 committed, each of their rows written once; batch 6
        // was rolled back; nothing after it ran.
        let rows: BTreeMap<i32, (i32, i32, i32)> = triggered::table
            .select((triggered::id, triggered::k, triggered::writes, triggered::touched))
            .load::<(i32, i32, i32, i32)>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|(id, k, w, t)| (id, (k, w, t)))
            .collect();
        let expected: BTreeMap<i32, (i32, i32, i32)> = (1..=ROWS)
            .map(|i| (i, if i <= 500 { (i, 1, 1) } else { (i, 0, 0) }))
            .collect();
        assert_eq!(rows, expected);
    }

    fn a_trigger_that_leaves_the_key_alone_does_not_stop_the_job(db) {
        let mut conn = connect::<B>(&db);
        create_triggered(&mut conn, B::NAME, false);
        let report = triggered::table
            .chunked_by(triggered::k)
            .batch_size(100)
            .update_all(&mut conn, triggered::writes.eq(triggered::writes + 1))
            .unwrap();
        assert_eq!((report.rows, report.batches), (ROWS as u64, 10));
        assert!(report.done);
        let rows: Vec<(i32, i32, i32, i32)> = triggered::table
            .select((triggered::id, triggered::k, triggered::writes, triggered::touched))
            .order(triggered::id)
            .load(&mut conn)
            .unwrap();
        let expected: Vec<(i32, i32, i32, i32)> = (1..=ROWS).map(|i| (i, i, 1, 1)).collect();
        assert_eq!(rows, expected, "every row written exactly once, its key unchanged");

        // Descending, with a filter the update changes: still each row once.
        let report = triggered::table
            .filter(triggered::writes.eq(1))
            .chunked_by(triggered::k)
            .desc()
            .batch_size(64)
            .update_all(&mut conn, triggered::writes.eq(triggered::writes + 1))
            .unwrap();
        assert_eq!(report.rows, ROWS as u64);
        let rows: Vec<(i32, i32, i32, i32)> = triggered::table
            .select((triggered::id, triggered::k, triggered::writes, triggered::touched))
            .order(triggered::id)
            .load(&mut conn)
            .unwrap();
        let expected: Vec<(i32, i32, i32, i32)> = (1..=ROWS).map(|i| (i, i, 2, 2)).collect();
        assert_eq!(rows, expected);
    }
}

/// MySQL/MariaDB: a key column with `ON UPDATE CURRENT_TIMESTAMP` moves to the
/// current time whenever a row changes.
#[cfg(feature = "mysql")]
mod mysql_on_update {
    use super::*;

    diesel::table! {
        stamped (id) {
            id -> Integer,
            at -> Timestamp,
            writes -> Integer,
        }
    }

    #[test]
    fn a_key_set_on_update_is_refused_before_any_row_is_written() {
        let db = <Mysql as TestBackend>::create();
        let mut conn = connect::<Mysql>(&db);
        conn.batch_execute(
            "CREATE TABLE stamped (id INTEGER PRIMARY KEY, \
             at TIMESTAMP(6) NOT NULL DEFAULT '2026-01-01 00:00:00' ON UPDATE CURRENT_TIMESTAMP(6), \
             writes INTEGER NOT NULL DEFAULT 0, UNIQUE KEY stamped_at (at, id))",
        )
        .unwrap();
        let values: Vec<String> = (1..=ROWS).map(|i| format!("({i})")).collect();
        conn.batch_execute(&format!(
            "INSERT INTO stamped (id) VALUES {}",
            values.join(", ")
        ))
        .unwrap();
        let err = stamped::table
            .chunked_by((stamped::at, stamped::id))
            .batch_size(100)
            .limit_total(5000)
            .update_all(&mut conn, stamped::writes.eq(stamped::writes + 1))
            .unwrap_err();
        assert!(matches!(err, Error::KeyMayMove { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("stamped.at is set to the current time by every UPDATE"),
            "{err}"
        );
        let writes: Vec<i32> = stamped::table
            .select(stamped::writes)
            .load(&mut conn)
            .unwrap();
        assert_eq!(writes.len(), ROWS as usize);
        assert!(writes.iter().all(|&w| w == 0), "no row may be written");
    }
}
