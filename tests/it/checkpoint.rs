//! The checkpoint table: creation, the row's life (start, lock, advance, read,
//! delete), transactions that roll back, and locking between two runs of a job,
//! on every backend.

use crate::common;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_chunked_iterator::checkpoint::{
    self, is_lock_conflict, Checkpoint, CheckpointConnection,
};
use diesel_chunked_iterator::Error;

/// A key whose text must come back byte for byte.
const AWKWARD_KEY: &str =
    "[\"it's \\\"quoted\\\"\",\"naïve — 日本語 🦀\",\"line one\\nline two\",\"tab\\there\"]\n\r\t'\"`\\";

/// Makes a failed lock wait show up as a slow test rather than a hang, and makes
/// SQLite fail at once instead of waiting for the lock.
fn no_waiting<C: Connection>(conn: &mut C, backend: &str) {
    let sql = match backend {
        "sqlite" => "PRAGMA busy_timeout = 0",
        "postgres" => "SET lock_timeout = '5s'",
        _ => "SET SESSION innodb_lock_wait_timeout = 5",
    };
    conn.batch_execute(sql).expect(sql);
}

fn rows_of(c: &Checkpoint) -> (u64, u64, bool, Option<&str>) {
    (c.rows, c.batches, c.done, c.last_key.as_deref())
}

backend_tests! {
    fn create_table_twice(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        checkpoint::create_table(&mut conn).unwrap();
        assert_eq!(checkpoint::status(&mut conn, "nothing").unwrap(), None);
    }

    fn status_without_table_says_to_create_it(db) {
        let mut conn = common::connect::<B>(&db);
        let err = checkpoint::status(&mut conn, "job").unwrap_err();
        assert!(matches!(err, Error::CheckpointTableMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("create it once with checkpoint::create_table"), "{err}");
        let err = checkpoint::reset(&mut conn, "job").unwrap_err();
        assert!(matches!(err, Error::CheckpointTableMissing { .. }), "{err:?}");
        // Another table missing is not the checkpoint table missing.
        checkpoint::create_table(&mut conn).unwrap();
        let err = diesel::sql_query("SELECT * FROM no_such_table_here").execute(&mut conn).unwrap_err();
        assert!(checkpoint::table_problem(&err).is_none(), "{err}");
    }

    fn create_table_adds_the_fingerprint_column(db) {
        let mut conn = common::connect::<B>(&db);
        let ddl = match <B as common::TestBackend>::NAME {
            "sqlite" => checkpoint::CREATE_TABLE_SQLITE,
            "postgres" => checkpoint::CREATE_TABLE_POSTGRES,
            _ => checkpoint::CREATE_TABLE_MYSQL,
        };
        diesel::sql_query(ddl.replace(",\n    query_fingerprint TEXT", "")).execute(&mut conn).unwrap();
        diesel::sql_query("INSERT INTO chunked_checkpoints (name, key_type) VALUES ('job', 'k')").execute(&mut conn).unwrap();
        let err = conn.read_checkpoint("job").unwrap_err();
        assert!(matches!(checkpoint::table_problem(&err), Some(Error::CheckpointTableOutdated { .. })), "{err}");
        checkpoint::create_table(&mut conn).unwrap();
        checkpoint::create_table(&mut conn).unwrap();
        let row = conn.read_checkpoint("job").unwrap().unwrap();
        assert_eq!((row.key_type.as_str(), row.query_fingerprint), ("k", None));
        // The first claim stores its fingerprint; a second one leaves it.
        assert_eq!(conn.claim_checkpoint("job", "update_all 1").unwrap().query_fingerprint.as_deref(), Some("update_all 1"));
        assert_eq!(conn.claim_checkpoint("job", "delete_all 2").unwrap().query_fingerprint.as_deref(), Some("update_all 1"));
        assert_eq!(checkpoint::status(&mut conn, "job").unwrap().unwrap().query_fingerprint.as_deref(), Some("update_all 1"));
    }

    fn start_creates_once(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let first = conn.start_checkpoint("job", "posts.id: i32").unwrap();
        assert_eq!(first.name, "job");
        assert_eq!(first.key_type, "posts.id: i32");
        assert_eq!(rows_of(&first), (0, 0, false, None));
        assert!(!first.updated_at.is_empty());
        // A second start returns the row as it is, whatever key type it is given.
        let again = conn.start_checkpoint("job", "posts.slug: String").unwrap();
        assert_eq!(again, first);
        assert_eq!(checkpoint::status(&mut conn, "job").unwrap(), Some(first.clone()));
        assert_eq!(conn.read_checkpoint("job").unwrap(), Some(first));
        assert_eq!(conn.read_checkpoint("other").unwrap(), None);
        // Names are exact: another case is another job.
        assert_eq!(conn.read_checkpoint("JOB").unwrap(), None);
        let upper = conn.start_checkpoint("JOB", "k").unwrap();
        assert_eq!(upper.name, "JOB");
        assert_eq!(conn.read_checkpoint("job").unwrap().unwrap().key_type, "posts.id: i32");
    }

    fn advance_round_trips_exactly(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let name = "é".repeat(255);
        let started = conn.start_checkpoint(&name, "(posts.created_at, posts.id)").unwrap();
        assert_eq!(started.name, name);

        let big = (1u64 << 53) + 1; // not exact as an f64
        conn.batch_transaction(|c| {
            let locked = c.lock_checkpoint(&name)?.expect("the row");
            assert_eq!(locked, started);
            c.advance_checkpoint(&name, Some(AWKWARD_KEY), big, 7, false)
        })
        .unwrap();
        let read = checkpoint::status(&mut conn, &name).unwrap().unwrap();
        assert_eq!(rows_of(&read), (big, 7, false, Some(AWKWARD_KEY)));
        assert_eq!(read.key_type, "(posts.created_at, posts.id)");

        let max = i64::MAX as u64;
        conn.batch_transaction(|c| {
            c.lock_checkpoint(&name)?;
            c.advance_checkpoint(&name, None, max, max, true)
        })
        .unwrap();
        let read = conn.read_checkpoint(&name).unwrap().unwrap();
        assert_eq!(rows_of(&read), (max, max, true, None));

        // Totals a BIGINT cannot hold are refused, and nothing is written.
        let err = conn
            .batch_transaction(|c| c.advance_checkpoint(&name, Some("[1]"), max + 1, 1, false))
            .unwrap_err();
        assert!(matches!(err, DieselError::SerializationError(_)), "{err}");
        assert_eq!(conn.read_checkpoint(&name).unwrap().unwrap(), read);
    }

    fn advance_of_a_missing_row_is_not_found(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let err = conn
            .batch_transaction(|c| {
                assert_eq!(c.lock_checkpoint("ghost")?, None);
                c.advance_checkpoint("ghost", Some("[1]"), 1, 1, false)
            })
            .unwrap_err();
        assert!(matches!(err, DieselError::NotFound), "{err}");
        assert_eq!(conn.read_checkpoint("ghost").unwrap(), None);
    }

    fn updated_at_moves(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let started = conn.start_checkpoint("job", "k").unwrap();
        // SQLite's CURRENT_TIMESTAMP has whole seconds.
        std::thread::sleep(Duration::from_millis(1100));
        conn.batch_transaction(|c| c.advance_checkpoint("job", Some("[1]"), 1, 1, false))
            .unwrap();
        let read = conn.read_checkpoint("job").unwrap().unwrap();
        assert!(read.updated_at > started.updated_at, "{} then {}", started.updated_at, read.updated_at);
        assert!(read.updated_at.starts_with("20"), "{}", read.updated_at);
    }

    fn name_longer_than_255_is_refused(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let name = "x".repeat(256);
        assert!(conn.start_checkpoint(&name, "k").is_err());
        assert_eq!(conn.read_checkpoint(&"x".repeat(255)).unwrap(), None);
    }

    fn rolled_back_batch_leaves_the_row(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        conn.start_checkpoint("job", "k").unwrap();
        conn.batch_transaction(|c| c.advance_checkpoint("job", Some("[10]"), 10, 1, false))
            .unwrap();
        let before = conn.read_checkpoint("job").unwrap().unwrap();

        #[derive(Debug)]
        enum Failed {
            Db(#[allow(dead_code)] DieselError),
            Batch,
        }
        impl From<DieselError> for Failed {
            fn from(e: DieselError) -> Self {
                Failed::Db(e)
            }
        }
        let out: Result<(), Failed> = conn.batch_transaction(|c| {
            c.lock_checkpoint("job")?;
            c.advance_checkpoint("job", Some("[20]"), 20, 2, true)?;
            Err(Failed::Batch)
        });
        assert!(matches!(out, Err(Failed::Batch)), "{out:?}");
        assert_eq!(conn.read_checkpoint("job").unwrap().unwrap(), before);
        // The connection is usable afterwards, outside any transaction.
        conn.batch_transaction(|c| c.advance_checkpoint("job", Some("[30]"), 30, 2, false))
            .unwrap();
        let after = conn.read_checkpoint("job").unwrap().unwrap();
        assert_eq!(rows_of(&after), (30, 2, false, Some("[30]")));
    }

    fn batch_transactions_do_not_nest(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        let err = conn
            .transaction(|c| c.batch_transaction(|_| Ok::<_, DieselError>(())))
            .unwrap_err();
        assert!(matches!(err, DieselError::AlreadyInTransaction), "{err}");
        let err = conn
            .batch_transaction(|c| c.batch_transaction(|_| Ok::<_, DieselError>(())))
            .unwrap_err();
        assert!(matches!(err, DieselError::AlreadyInTransaction), "{err}");
        conn.batch_transaction(|_| Ok::<_, DieselError>(())).unwrap();
    }

    fn delete_and_reset(db) {
        let mut conn = common::connect::<B>(&db);
        checkpoint::create_table(&mut conn).unwrap();
        conn.start_checkpoint("a", "k").unwrap();
        conn.start_checkpoint("b", "k").unwrap();
        assert!(conn.delete_checkpoint("a").unwrap());
        assert!(!conn.delete_checkpoint("a").unwrap());
        assert_eq!(conn.read_checkpoint("a").unwrap(), None);
        checkpoint::reset(&mut conn, "b").unwrap();
        checkpoint::reset(&mut conn, "b").unwrap();
        checkpoint::reset(&mut conn, "never").unwrap();
        assert_eq!(checkpoint::status(&mut conn, "b").unwrap(), None);
        // A reset job starts from the beginning.
        let fresh = conn.start_checkpoint("b", "other").unwrap();
        assert_eq!((rows_of(&fresh), fresh.key_type.as_str()), ((0, 0, false, None), "other"));
    }

    fn a_locked_row_fails_at_once(db) {
        let mut a = common::connect::<B>(&db);
        let mut b = common::connect::<B>(&db);
        no_waiting(&mut b, <B as common::TestBackend>::NAME);
        checkpoint::create_table(&mut a).unwrap();
        a.start_checkpoint("job", "k").unwrap();

        a.batch_transaction(|a| {
            a.lock_checkpoint("job")?.expect("the row");
            a.advance_checkpoint("job", Some("[1]"), 1, 1, false)?;

            let started = Instant::now();
            let err = b
                .batch_transaction(|b| {
                    b.lock_checkpoint("job")?;
                    b.advance_checkpoint("job", Some("[99]"), 99, 99, false)
                })
                .unwrap_err();
            let waited = started.elapsed();
            assert!(is_lock_conflict(&err), "not a lock conflict: {err:?}");
            assert!(waited < Duration::from_millis(900), "waited {waited:?}: {err}");

            // Outside a batch, B reads and starts without waiting: the committed row.
            let started = Instant::now();
            let seen = b.start_checkpoint("job", "k").unwrap();
            assert_eq!(rows_of(&seen), (0, 0, false, None));
            assert_eq!(checkpoint::status(&mut b, "job").unwrap(), Some(seen));
            assert!(started.elapsed() < Duration::from_millis(900));
            Ok::<_, DieselError>(())
        })
        .unwrap();

        // A committed: B's batch goes through and sees A's batch.
        b.batch_transaction(|b| {
            let row = b.lock_checkpoint("job")?.expect("the row");
            assert_eq!(rows_of(&row), (1, 1, false, Some("[1]")));
            b.advance_checkpoint("job", Some("[2]"), 2, 2, false)
        })
        .unwrap();
        let row = checkpoint::status(&mut a, "job").unwrap().unwrap();
        assert_eq!(rows_of(&row), (2, 2, false, Some("[2]")));
    }

    fn a_locked_row_fails_at_once_across_threads(db) {
        let mut a = common::connect::<B>(&db);
        checkpoint::create_table(&mut a).unwrap();
        a.start_checkpoint("job", "k").unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            a.batch_transaction(|a| {
                a.lock_checkpoint("job")?;
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                a.advance_checkpoint("job", Some("[1]"), 1, 1, false)
            })
            .unwrap();
        });
        locked_rx.recv().unwrap();
        let mut b = common::connect::<B>(&db);
        no_waiting(&mut b, <B as common::TestBackend>::NAME);
        let started = Instant::now();
        let err = b.batch_transaction(|b| b.lock_checkpoint("job")).unwrap_err();
        assert!(is_lock_conflict(&err), "not a lock conflict: {err:?}");
        assert!(started.elapsed() < Duration::from_millis(900));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let row = b.batch_transaction(|b| b.lock_checkpoint("job")).unwrap().unwrap();
        assert_eq!(rows_of(&row), (1, 1, false, Some("[1]")));
    }
}

/// On MySQL/MariaDB a batch transaction runs at READ COMMITTED: a second read in
/// it sees a row another connection committed after the first read. The
/// session's own level (REPEATABLE READ by default) is untouched.
#[cfg(feature = "mysql")]
#[test]
fn mysql_batch_transaction_is_read_committed() {
    use common::TestBackend;
    let db = common::Mysql::create();
    let mut a = common::Mysql::connect(&db);
    let mut b = common::Mysql::connect(&db);
    checkpoint::create_table(&mut a).unwrap();
    a.start_checkpoint("job", "k").unwrap();

    #[derive(QueryableByName)]
    struct Level {
        #[diesel(sql_type = diesel::sql_types::Text)]
        level: String,
    }
    // MySQL 8 has only @@transaction_isolation, MariaDB before 11.1 only @@tx_isolation.
    let session_level = |c: &mut MysqlConnection| {
        diesel::sql_query("SELECT @@transaction_isolation AS level")
            .get_result::<Level>(c)
            .or_else(|_| diesel::sql_query("SELECT @@tx_isolation AS level").get_result(c))
            .unwrap()
            .level
    };
    let session = session_level(&mut a);

    let mut n = 0u64;
    let mut sees_other_commit = |a: &mut MysqlConnection, b: &mut MysqlConnection| {
        n += 1;
        let before = a.read_checkpoint("job")?.unwrap();
        b.batch_transaction(|b| b.advance_checkpoint("job", None, n, n, false))?;
        let after = a.read_checkpoint("job")?.unwrap();
        Ok::<_, DieselError>(before != after)
    };
    let read_committed = a
        .batch_transaction(|a| {
            // The transaction's own level, as InnoDB reports it once it has written.
            a.advance_checkpoint("job", None, 0, 0, false)?;
            let level = diesel::sql_query(
                "SELECT trx_isolation_level AS level FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID()",
            )
            .get_result::<Level>(a)?
            .level;
            assert_eq!(level, "READ COMMITTED");
            Ok::<_, DieselError>(())
        })
        .and_then(|()| a.batch_transaction(|a| sees_other_commit(a, &mut b)))
        .unwrap();
    assert!(
        read_committed,
        "a batch transaction did not see a committed change"
    );

    // The session keeps its level: the next plain transaction is not READ COMMITTED.
    assert_eq!(session_level(&mut a), session);
    if session == "REPEATABLE-READ" {
        let moved = a.transaction(|a| sees_other_commit(a, &mut b)).unwrap();
        assert!(
            !moved,
            "a plain transaction after a batch ran at READ COMMITTED"
        );
    }
}

/// The SQLite lock conflict comes from `BEGIN IMMEDIATE`, before the batch runs
/// anything.
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_second_writer_fails_at_begin() {
    use common::TestBackend;
    let db = common::Sqlite::create();
    let mut a = common::Sqlite::connect(&db);
    let mut b = common::Sqlite::connect(&db);
    no_waiting(&mut b, "sqlite");
    checkpoint::create_table(&mut a).unwrap();
    a.start_checkpoint("job", "k").unwrap();
    a.batch_transaction(|_| {
        let mut ran = false;
        let err = b
            .batch_transaction(|_| {
                ran = true;
                Ok::<_, DieselError>(())
            })
            .unwrap_err();
        assert!(!ran, "the second writer's batch ran");
        assert!(is_lock_conflict(&err), "{err:?}");
        assert!(err.to_string().contains("database is locked"), "{err}");
        Ok::<_, DieselError>(())
    })
    .unwrap();
    b.batch_transaction(|b| b.advance_checkpoint("job", Some("[1]"), 1, 1, false))
        .unwrap();
}

/// The examples of the `checkpoint` docs, as tests.
#[cfg(feature = "sqlite")]
#[allow(dead_code)]
mod doc_examples {
    include!("../doc/setup.rs");
    use diesel_chunked_iterator::checkpoint;
    use diesel_chunked_iterator::checkpoint::CheckpointConnection;

    #[test]
    fn create_table() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = doc_connection();
        checkpoint::create_table(&mut conn)?;
        checkpoint::create_table(&mut conn)?; // already there: nothing to do
        assert_eq!(checkpoint::status(&mut conn, "archive-posts")?, None);
        Ok(())
    }

    #[test]
    fn reset() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = doc_connection();
        checkpoint::create_table(&mut conn)?;
        conn.start_checkpoint("archive-posts", "posts.id: i32")?;
        // ... a run of job "archive-posts" stopped half-way ...
        assert!(checkpoint::status(&mut conn, "archive-posts")?.is_some());
        checkpoint::reset(&mut conn, "archive-posts")?;
        assert_eq!(checkpoint::status(&mut conn, "archive-posts")?, None);
        checkpoint::reset(&mut conn, "archive-posts")?; // no row: fine
        Ok(())
    }

    #[test]
    fn status() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = doc_connection();
        checkpoint::create_table(&mut conn)?;
        conn.start_checkpoint("archive-posts", "posts.id: i32")?;
        conn.batch_transaction(|c| {
            c.lock_checkpoint("archive-posts")?;
            c.advance_checkpoint("archive-posts", Some("[3]"), 3, 1, false)
        })?;
        // ... a run of job "archive-posts" committed one batch of 3 rows ...
        let ckpt = checkpoint::status(&mut conn, "archive-posts")?.expect("a checkpoint");
        assert_eq!((ckpt.rows, ckpt.batches, ckpt.done), (3, 1, false));
        assert_eq!(ckpt.last_key.as_deref(), Some("[3]"));
        println!(
            "{}: {} rows, last written {}",
            ckpt.name, ckpt.rows, ckpt.updated_at
        );
        Ok(())
    }
}
