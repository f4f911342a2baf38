//! `copy_into` and `move_into` on every backend: the rows that arrive, column
//! by column; the statements of a batch; a move killed at arbitrary instants
//! and run again, every row in exactly one table; a conflict in the
//! destination; the destination being the source.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, Error};

diesel::table! {
    orders (id) {
        id -> Integer,
        grp -> Integer,
        note -> Text,
        amount -> Nullable<BigInt>,
    }
}

diesel::table! {
    orders_archive (id) {
        id -> Integer,
        grp -> Integer,
        note -> Text,
        amount -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// A destination with a column the source does not have.
    orders_wide (id) {
        id -> Integer,
        grp -> Integer,
        note -> Text,
        amount -> Nullable<BigInt>,
        extra -> Integer,
    }
}

diesel::table! {
    /// A destination whose integer columns are wider than the source's.
    orders_big (id) {
        id -> BigInt,
        grp -> BigInt,
        note -> Text,
        amount -> Nullable<BigInt>,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders, treat_none_as_default_value = false)]
pub(crate) struct Order {
    pub(crate) id: i32,
    pub(crate) grp: i32,
    pub(crate) note: String,
    pub(crate) amount: Option<i64>,
}

/// `Order` whose `None` inserts as `DEFAULT` (Diesel's default): on SQLite,
/// which has no `DEFAULT` in a multi-row `VALUES`, such rows leave the column
/// out, so they go in statements of their own.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
struct OrderWithDefaults {
    id: i32,
    grp: i32,
    note: String,
    amount: Option<i64>,
}

pub(crate) const ROWS: i32 = 300;

pub(crate) fn order(id: i32) -> Order {
    Order {
        id,
        grp: id % 3,
        note: format!("note {id} é"),
        amount: (id % 7 != 0).then_some(i64::from(id) * 1_000_000_007),
    }
}

fn create_tables<C>(conn: &mut C)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    create_tables_with(conn, true)
}

pub(crate) fn create_tables_with<C>(conn: &mut C, fill: bool)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    for t in ["orders", "orders_archive"] {
        diesel::sql_query(format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, \
             note VARCHAR(60) NOT NULL, amount BIGINT)"
        ))
        .execute(conn)
        .unwrap();
    }
    if !fill {
        return;
    }
    let values: Vec<String> = (1..=ROWS)
        .map(order)
        .map(|o| {
            let amount = o.amount.map_or("NULL".to_string(), |a| a.to_string());
            format!("({}, {}, '{}', {amount})", o.id, o.grp, o.note)
        })
        .collect();
    diesel::sql_query(format!("INSERT INTO orders VALUES {}", values.join(", ")))
        .execute(conn)
        .unwrap();
}

/// Every row of a table, by id.
pub(crate) fn rows_of<C>(conn: &mut C, archive: bool) -> BTreeMap<i32, Order>
where
    C: Connection + diesel::connection::LoadConnection,
    for<'a> orders::table: diesel::query_dsl::LoadQuery<'a, C, Order>,
    for<'a> diesel::dsl::Select<
        orders_archive::table,
        (
            orders_archive::id,
            orders_archive::grp,
            orders_archive::note,
            orders_archive::amount,
        ),
    >: diesel::query_dsl::LoadQuery<'a, C, Order>,
{
    let rows: Vec<Order> = match archive {
        false => orders::table.load(conn).unwrap(),
        true => orders_archive::table
            .select((
                orders_archive::id,
                orders_archive::grp,
                orders_archive::note,
                orders_archive::amount,
            ))
            .load(conn)
            .unwrap(),
    };
    rows.into_iter().map(|o| (o.id, o)).collect()
}

/// Every original row is in exactly one of the tables, with its values;
/// `moved(id)` says which.
fn assert_in_one_table(
    source: &BTreeMap<i32, Order>,
    archive: &BTreeMap<i32, Order>,
    moved: impl Fn(i32) -> bool,
) {
    for id in 1..=ROWS {
        let (here, there) = match moved(id) {
            true => (archive, source),
            false => (source, archive),
        };
        assert_eq!(here.get(&id), Some(&order(id)), "row {id}");
        assert!(!there.contains_key(&id), "row {id} is in both tables");
    }
    assert_eq!(source.len() + archive.len(), ROWS as usize);
}

/// Puts rows 120 and 250 in `orders_archive` (or `orders`, with
/// `same_name`) with values of their own: the conflicts of the
/// `on_conflict_do_nothing` tests.
fn plant_conflicts<C>(conn: &mut C, same_name: bool)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    let table = if same_name {
        "orders"
    } else {
        "orders_archive"
    };
    diesel::sql_query(format!(
        "INSERT INTO {table} VALUES (120, 9, 'old', NULL), (250, 9, 'old', 5)"
    ))
    .execute(conn)
    .unwrap();
}

/// The destination after a job that skipped the planted rows: every row of
/// `ids`, the planted ones as they were.
fn assert_planted_kept(dest: &BTreeMap<i32, Order>, ids: impl Iterator<Item = i32>) {
    let mut expected: BTreeMap<i32, Order> = ids.map(|i| (i, order(i))).collect();
    expected.insert(
        120,
        Order {
            id: 120,
            grp: 9,
            note: "old".into(),
            amount: None,
        },
    );
    expected.insert(
        250,
        Order {
            id: 250,
            grp: 9,
            note: "old".into(),
            amount: Some(5),
        },
    );
    assert_eq!(dest, &expected);
}

/// The clause that skips conflicts, as the backend named `name` writes it
/// after an `INSERT` into `orders_archive` (or `orders`).
fn skip_clause(name: &str, table: &str) -> String {
    match name {
        "mysql" => format!(" ON DUPLICATE KEY UPDATE `{table}`.`id` = `{table}`.`id`"),
        _ => " ON CONFLICT DO NOTHING".to_string(),
    }
}

backend_tests! {
    /// `on_conflict_do_nothing`: the rows the archive already holds are
    /// skipped (and kept as they were), each batch's INSERT ends with the
    /// backend's clause, the report counts every row taken; a copy that
    /// stopped on the conflict resumes with the option (it is not part of
    /// the job's identity).
    fn copy_into_and_move_into_skip_the_rows_the_destination_holds(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        plant_conflicts(&mut conn, false);
        let job = || orders::table.chunked_by(orders::id).batch_size(50).checkpoint("copy-skip");
        let err = job().copy_into(&mut conn, orders_archive::table).unwrap_err();
        assert!(matches!(err, Error::Database { .. } | Error::Query { .. }), "{err:?}");
        let log = QueryLog::install(&mut conn);
        let report = job().on_conflict_do_nothing().copy_into(&mut conn, orders_archive::table).unwrap();
        assert_eq!((report.resumed_after, report.rows, report.batches, report.done), (Some(100), 200, 4, true));
        let inserts: Vec<String> = log.all().into_iter()
            .filter(|q| q.starts_with("INSERT INTO") && !q.contains("chunked_checkpoints")).collect();
        assert_eq!(inserts.len(), 4, "{inserts:#?}");
        let clause = skip_clause(B::NAME, "orders_archive");
        for q in &inserts {
            assert!(q.contains(&clause), "{q}\nexpected {clause:?}");
        }
        assert_planted_kept(&rows_of(&mut conn, true), 1..=ROWS);
        assert_eq!(rows_of(&mut conn, false).len(), ROWS as usize, "the source keeps its rows");

        // A move: every source row goes, the planted ones are skipped and kept.
        diesel::sql_query("DELETE FROM orders_archive WHERE id <> 120 AND id <> 250").execute(&mut conn).unwrap();
        let report = orders::table.filter(orders::grp.ne(0)).chunked_by(orders::id).batch_size(50)
            .checkpoint("move-skip").on_conflict_do_nothing()
            .move_into(&mut conn, orders_archive::table).unwrap();
        assert_eq!((report.rows, report.done), (200, true));
        let left = rows_of(&mut conn, false);
        assert_eq!(left.keys().copied().collect::<Vec<_>>(), (1..=ROWS).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        assert_planted_kept(&rows_of(&mut conn, true), (1..=ROWS).filter(|i| i % 3 != 0));
        let c = checkpoint::status(&mut conn, "move-skip").unwrap().unwrap();
        assert_eq!((c.rows, c.done), (200, true));
    }

    /// `on_conflict_do_nothing` on a job that inserts nothing is an error
    /// before its first statement.
    fn on_conflict_do_nothing_is_refused_by_jobs_that_insert_nothing(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        let log = QueryLog::install(&mut conn);
        let err = orders::table.chunked_by(orders::id).on_conflict_do_nothing()
            .update_all(&mut conn, orders::grp.eq(5)).unwrap_err();
        assert!(matches!(&err, Error::OptionUnsupported { option: "on_conflict_do_nothing", job: "update_all", .. }), "{err:?}");
        assert!(err.to_string().contains("copy_into"), "{err}");
        let err = orders::table.chunked_by(orders::id).on_conflict_do_nothing()
            .delete_all(&mut conn).unwrap_err();
        assert!(matches!(&err, Error::OptionUnsupported { job: "delete_all", .. }), "{err:?}");
        assert!(log.all().is_empty(), "{:#?}", log.all());
        assert_eq!(rows_of(&mut conn, false).len(), ROWS as usize);
    }

    /// `move_to` between two connections to one database: refused before
    /// anything is copied (the job's checkpoint row would be both sides').
    fn move_to_into_the_same_database_is_refused(db) {
        let (mut src, mut dest) = (connect::<B>(&db), connect::<B>(&db));
        create_tables(&mut src);
        checkpoint::create_table(&mut src).unwrap();
        let err = orders::table.chunked_by(orders::id).batch_size(50).checkpoint("same-db")
            .move_to::<Order>(&mut src, &mut dest, orders_archive::table)
            .unwrap_err();
        assert!(matches!(&err, Error::MoveSameDatabase { name } if name == "same-db"), "{err:?}");
        assert_eq!(rows_of(&mut src, false).len(), ROWS as usize);
        assert!(rows_of(&mut src, true).is_empty(), "nothing copied");
    }

    fn copy_into_copies_the_query_s_rows_column_by_column(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        let log = QueryLog::install(&mut conn);
        let report = orders::table
            .filter(orders::grp.eq(1))
            .chunked_by(orders::id)
            .batch_size(40)
            .copy_into(&mut conn, orders_archive::table)
            .unwrap();
        assert_eq!((report.rows, report.batches, report.done), (100, 3, true));
        let inserts: Vec<String> = log.all().into_iter().filter(|q| q.starts_with("INSERT")).collect();
        assert_eq!(inserts.len(), 3, "{inserts:#?}");
        let q = |s: &str| match B::NAME { "postgres" => format!("\"{s}\""), _ => format!("`{s}`") };
        let head = format!(
            "INSERT INTO {} ({}, {}, {}, {}) SELECT {t}.{}, {t}.{}, {t}.{}, {t}.{} FROM {t} WHERE",
            q("orders_archive"), q("id"), q("grp"), q("note"), q("amount"),
            q("id"), q("grp"), q("note"), q("amount"), t = q("orders"),
        );
        assert!(inserts[0].starts_with(&head), "{}\nexpected to start with\n{head}", inserts[0]);
        let source = rows_of(&mut conn, false);
        let archive = rows_of(&mut conn, true);
        assert_eq!(source.len(), ROWS as usize, "the source keeps its rows");
        let expected: BTreeMap<i32, Order> = (1..=ROWS).filter(|i| i % 3 == 1).map(|i| (i, order(i))).collect();
        assert_eq!(archive, expected);
    }

    fn move_into_moves_each_row_once_with_the_batch_s_statements(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let log = QueryLog::install(&mut conn);
        let report = orders::table
            .filter(orders::grp.ne(0))
            .chunked_by(orders::id)
            .batch_size(50)
            .checkpoint("archive")
            .move_into(&mut conn, orders_archive::table)
            .unwrap();
        assert_eq!((report.rows, report.batches, report.done), (200, 4, true));
        let writes: Vec<String> = log
            .all()
            .into_iter()
            .filter(|q| !q.contains("chunked_checkpoints"))
            .filter(|q| q.contains("orders_archive") || q.contains("FOR UPDATE") || q.starts_with("DELETE"))
            .map(|q| q.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect();
        let per_batch: &[&str] = match B::NAME {
            "postgres" => &["WITH chunked_moved AS"],
            "mysql" => &["SELECT COUNT(*) FROM", "INSERT INTO `orders_archive`", "DELETE FROM `orders`"],
            _ => &["INSERT INTO `orders_archive`", "DELETE FROM `orders`"],
        };
        let expected: Vec<String> = per_batch.iter().cycle().take(per_batch.len() * 4).map(|s| s.to_string()).collect();
        assert_eq!(writes, expected);
        let source = rows_of(&mut conn, false);
        let archive = rows_of(&mut conn, true);
        assert_in_one_table(&source, &archive, |id| id % 3 != 0);
        let c = checkpoint::status(&mut conn, "archive").unwrap().unwrap();
        assert_eq!((c.rows, c.done), (200, true));

        // Run again: done, nothing moves.
        let again = orders::table.filter(orders::grp.ne(0)).chunked_by(orders::id)
            .batch_size(50).checkpoint("archive").move_into(&mut conn, orders_archive::table).unwrap();
        assert_eq!((again.rows, again.done), (0, true));
    }

    fn a_row_the_destination_already_holds_stops_the_job_at_its_batch(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        diesel::insert_into(orders_archive::table)
            .values((orders_archive::id.eq(120), orders_archive::grp.eq(9), orders_archive::note.eq("old"), orders_archive::amount.eq(None::<i64>)))
            .execute(&mut conn)
            .unwrap();
        let job = || orders::table.chunked_by(orders::id).batch_size(50).checkpoint("dup");
        let err = job().move_into(&mut conn, orders_archive::table).unwrap_err();
        assert!(matches!(err, Error::Database { .. } | Error::Query { .. }), "{err:?}");
        let c = checkpoint::status(&mut conn, "dup").unwrap().unwrap();
        assert_eq!((c.rows, c.batches, c.done), (100, 2, false));
        let source = rows_of(&mut conn, false);
        let archive = rows_of(&mut conn, true);
        assert_eq!(source.keys().copied().collect::<Vec<_>>(), (101..=ROWS).collect::<Vec<_>>());
        assert_eq!(archive.len(), 101);
        assert_eq!(archive[&120].note, "old", "the conflicting row is left as it was");

        // Once the conflict is gone, the job resumes at the batch that failed.
        diesel::delete(orders_archive::table.filter(orders_archive::id.eq(120))).execute(&mut conn).unwrap();
        let report = job().move_into(&mut conn, orders_archive::table).unwrap();
        assert_eq!((report.resumed_after, report.rows, report.done), (Some(100), 200, true));
        let source = rows_of(&mut conn, false);
        let archive = rows_of(&mut conn, true);
        assert_in_one_table(&source, &archive, |_| true);
    }

    fn the_source_table_as_destination_is_refused(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        let err = orders::table.chunked_by(orders::id).move_into(&mut conn, orders::table).unwrap_err();
        assert!(matches!(&err, Error::SameTable { verb: "move_into", .. }), "{err:?}");
        assert_eq!(rows_of(&mut conn, false).len(), ROWS as usize);
    }

    /// A move run in a child process that is killed (SIGKILL) at arbitrary
    /// instants, five times, then finished here: every row is in exactly
    /// one table, with its values.
    fn a_move_killed_at_any_instant_resumes_exactly(db) {
        let mut conn = connect::<B>(&db);
        create_tables(&mut conn);
        checkpoint::create_table(&mut conn).unwrap();
        let spawn = || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "transfer::move_child", "--nocapture", "--test-threads=1"])
                .env("CHUNKED_MOVE_URL", &db.url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let killed_while_running = kill_five_times(spawn, || rows_of(&mut conn, true).len());
        assert!(killed_while_running >= 3, "the child finished before it was killed");
        let mid = rows_of(&mut conn, true).len();
        assert!(mid > 0 && mid < ROWS as usize, "{mid} rows moved by the killed runs");
        let report = orders::table.chunked_by(orders::id).batch_size(7).checkpoint("killed")
            .move_into(&mut conn, orders_archive::table)
            .unwrap();
        assert!(report.done);
        assert_eq!(report.rows as usize, ROWS as usize - mid);
        let source = rows_of(&mut conn, false);
        let archive = rows_of(&mut conn, true);
        assert_in_one_table(&source, &archive, |_| true);
    }
}

/// The runner `a_move_killed_at_any_instant_resumes_exactly` kills: run by
/// that test only (it is ignored otherwise).
#[test]
#[ignore = "run as a child process by a_move_killed_at_any_instant_resumes_exactly"]
fn move_child() {
    let url = std::env::var("CHUNKED_MOVE_URL").expect("CHUNKED_MOVE_URL");
    macro_rules! run {
        ($conn:ty) => {{
            let mut conn = <$conn>::establish(&url).unwrap();
            let _ = orders::table
                .chunked_by(orders::id)
                .batch_size(7)
                .pause(Duration::from_millis(10))
                .checkpoint("killed")
                .move_into(&mut conn, orders_archive::table);
        }};
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        run!(diesel::PgConnection);
        return;
    }
    #[cfg(feature = "mysql")]
    if url.starts_with("mysql") {
        run!(diesel::MysqlConnection);
        return;
    }
    #[cfg(feature = "sqlite")]
    run!(diesel::SqliteConnection);
}

/// `copy_to` / `move_to` between two databases: for each pair, `S` is the
/// source's backend, `D` the destination's. Each test has two databases of
/// its own.
macro_rules! cross_tests {
    ($($module:ident: $src:ident($sf:literal) -> $dest:ident($df:literal);)*) => {$(
        #[cfg(all(feature = $sf, feature = $df))]
        mod $module {
            use super::*;
            type S = common::$src;
            type D = common::$dest;

            fn databases() -> (TestDb, TestDb, <S as TestBackend>::Conn, <D as TestBackend>::Conn) {
                let (src_db, dest_db) = (S::create(), D::create());
                let mut src = S::connect(&src_db);
                let mut dest = D::connect(&dest_db);
                create_tables_with(&mut src, true);
                create_tables_with(&mut dest, false);
                checkpoint::create_table(&mut src).unwrap();
                checkpoint::create_table(&mut dest).unwrap();
                (src_db, dest_db, src, dest)
            }

            #[test]
            fn copy_to_copies_each_row_once_column_by_column() {
                let (_s, _d, mut src, mut dest) = databases();
                let log = QueryLog::install(&mut dest);
                let report = orders::table
                    .filter(orders::grp.ne(0))
                    .chunked_by(orders::id)
                    .batch_size(40)
                    .checkpoint("copy")
                    .copy_to::<Order>(&mut src, &mut dest, orders::table)
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (200, 5, true));
                // One statement a batch: a binary COPY into PostgreSQL, a multi-row INSERT elsewhere.
                let statements = log.all();
                let inserts = statements.iter().filter(|q| q.starts_with("INSERT INTO") && !q.contains("chunked_checkpoints")).count();
                let copies: Vec<&String> = statements.iter().filter(|q| q.starts_with("COPY")).collect();
                if <D as TestBackend>::NAME == "postgres" {
                    assert_eq!((inserts, copies.len()), (0, 5), "{statements:#?}");
                    assert!(copies[0].starts_with(r#"COPY "orders"("id", "grp", "note", "amount") FROM STDIN WITH (FORMAT binary)"#), "{}", copies[0]);
                } else {
                    assert_eq!((inserts, copies.len()), (5, 0), "{statements:#?}");
                }
                let expected: BTreeMap<i32, Order> =
                    (1..=ROWS).filter(|i| i % 3 != 0).map(|i| (i, order(i))).collect();
                assert_eq!(rows_of(&mut dest, false), expected);
                assert_eq!(rows_of(&mut src, false).len(), ROWS as usize, "the source keeps its rows");
                let c = checkpoint::status(&mut dest, "copy").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (200, 5, true));
                assert!(checkpoint::status(&mut src, "copy").unwrap().is_none(), "the source has no checkpoint row");
            }

            #[test]
            fn copy_to_and_move_to_skip_the_rows_the_destination_holds() {
                let (_s, _d, mut src, mut dest) = databases();
                plant_conflicts(&mut dest, true);
                let log = QueryLog::install(&mut dest);
                let report = orders::table.chunked_by(orders::id).batch_size(40)
                    .checkpoint("copy-skip").on_conflict_do_nothing()
                    .copy_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((report.rows, report.batches, report.done), (300, 8, true));
                let inserts: Vec<String> = log.all().into_iter()
                    .filter(|q| q.starts_with("INSERT INTO") && !q.contains("chunked_checkpoints")).collect();
                assert_eq!(inserts.len(), 8, "{inserts:#?}");
                let clause = skip_clause(<D as TestBackend>::NAME, "orders");
                assert!(inserts.iter().all(|q| q.contains(&clause)), "{inserts:#?}\nexpected {clause:?}");
                assert_planted_kept(&rows_of(&mut dest, false), 1..=ROWS);
                assert_eq!(rows_of(&mut src, false).len(), ROWS as usize);

                // Without the option the planted rows stop a copy at their batch.
                let err = orders::table.chunked_by(orders::id).batch_size(40)
                    .copy_to::<Order>(&mut src, &mut dest, orders::table)
                    .unwrap_err();
                assert!(matches!(err, Error::Database { .. } | Error::Query { .. }), "{err:?}");

                // A move takes every row out of the source, skipped or not.
                diesel::sql_query("DELETE FROM orders WHERE id <> 120 AND id <> 250").execute(&mut dest).unwrap();
                let report = orders::table.chunked_by(orders::id).batch_size(40)
                    .checkpoint("move-skip").on_conflict_do_nothing()
                    .move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((report.rows, report.done), (300, true));
                assert!(rows_of(&mut src, false).is_empty());
                assert_planted_kept(&rows_of(&mut dest, false), 1..=ROWS);
            }

            /// A destination with more columns: its `INSERT` names the source's
            /// columns (never a `COPY`, which would need them all), and the others
            /// take their defaults.
            #[test]
            fn copy_to_a_wider_table_leaves_its_other_columns_to_their_defaults() {
                let (_s, _d, mut src, mut dest) = databases();
                diesel::sql_query("CREATE TABLE orders_wide (id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, \
                     note VARCHAR(60) NOT NULL, amount BIGINT, extra INTEGER NOT NULL DEFAULT 7)")
                    .execute(&mut dest).unwrap();
                let log = QueryLog::install(&mut dest);
                let report = orders::table.filter(orders::id.le(60)).chunked_by(orders::id).batch_size(25)
                    .copy_to::<Order>(&mut src, &mut dest, orders_wide::table).unwrap();
                assert_eq!((report.rows, report.batches), (60, 3));
                let statements = log.all();
                assert!(statements.iter().all(|q| !q.starts_with("COPY")), "{statements:#?}");
                let rows: Vec<(i32, i32, String, Option<i64>, i32)> =
                    orders_wide::table.order(orders_wide::id).load(&mut dest).unwrap();
                let expected: Vec<(i32, i32, String, Option<i64>, i32)> = (1..=60)
                    .map(|i| { let o = order(i); (o.id, o.grp, o.note, o.amount, 7) }).collect();
                assert_eq!(rows, expected);
            }

            /// A destination whose columns are of wider types than the model's: the
            /// database casts each value of an `INSERT` (a binary `COPY` would take
            /// the bytes as they are, so it is not sent).
            #[test]
            fn copy_to_a_table_of_wider_types_casts_each_value() {
                let (_s, _d, mut src, mut dest) = databases();
                diesel::sql_query("CREATE TABLE orders_big (id BIGINT PRIMARY KEY, grp BIGINT NOT NULL, \
                     note TEXT NOT NULL, amount BIGINT)")
                    .execute(&mut dest).unwrap();
                let log = QueryLog::install(&mut dest);
                let report = orders::table.filter(orders::id.le(60)).chunked_by(orders::id).batch_size(25)
                    .copy_to::<Order>(&mut src, &mut dest, orders_big::table).unwrap();
                assert_eq!((report.rows, report.batches), (60, 3));
                let statements = log.all();
                assert!(statements.iter().all(|q| !q.starts_with("COPY")), "{statements:#?}");
                let rows: Vec<(i64, i64, String, Option<i64>)> =
                    orders_big::table.order(orders_big::id).load(&mut dest).unwrap();
                let expected: Vec<(i64, i64, String, Option<i64>)> = (1..=60)
                    .map(|i| { let o = order(i); (o.id.into(), o.grp.into(), o.note, o.amount) }).collect();
                assert_eq!(rows, expected);
            }

            #[test]
            fn copy_to_a_table_of_another_name() {
                let (_s, _d, mut src, mut dest) = databases();
                let report = orders::table
                    .filter(orders::id.le(50))
                    .chunked_by(orders::id)
                    .copy_to::<Order>(&mut src, &mut dest, orders_archive::table)
                    .unwrap();
                assert_eq!((report.rows, report.batches), (50, 1));
                let expected: BTreeMap<i32, Order> = (1..=50).map(|i| (i, order(i))).collect();
                assert_eq!(rows_of(&mut dest, true), expected);
                assert!(rows_of(&mut dest, false).is_empty());
            }

            #[test]
            fn copy_to_rows_whose_none_inserts_as_default() {
                let (_s, _d, mut src, mut dest) = databases();
                let log = QueryLog::install(&mut dest);
                let report = orders::table
                    .filter(orders::id.between(1, 30))
                    .chunked_by(orders::id)
                    .copy_to::<OrderWithDefaults>(&mut src, &mut dest, orders::table)
                    .unwrap();
                assert_eq!(report.rows, 30);
                let expected: BTreeMap<i32, Order> = (1..=30).map(|i| (i, order(i))).collect();
                assert_eq!(rows_of(&mut dest, false), expected);
                let inserts = log.all().into_iter().filter(|q| q.starts_with("INSERT INTO") && !q.contains("chunked_checkpoints")).count();
                // Rows 7, 14, 21, 28 have no amount: on SQLite each splits the run of rows.
                assert_eq!(inserts, if <D as TestBackend>::NAME == "sqlite" { 9 } else { 1 });
            }

            #[test]
            fn move_to_moves_each_row_once_and_runs_again_as_done() {
                let (_s, _d, mut src, mut dest) = databases();
                let job = || orders::table.filter(orders::grp.ne(0)).chunked_by(orders::id)
                    .batch_size(40).checkpoint("move");
                let report = job().move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((report.rows, report.batches, report.done), (200, 5, true));
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_in_one_table(&left, &moved, |id| id % 3 != 0);
                let marker = checkpoint::status(&mut src, "move").unwrap().unwrap();
                assert_eq!((marker.rows, marker.batches, marker.done), (200, 5, true));
                let again = job().move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((again.rows, again.done), (0, true));
                assert_eq!(rows_of(&mut src, false), left);
            }

            #[cfg(feature = "r2d2")]
            #[test]
            fn move_to_between_two_pools() {
                use diesel::r2d2::{ConnectionManager, Pool};
                let (s, d, mut src, mut dest) = databases();
                let src_pool: Pool<ConnectionManager<<S as TestBackend>::Conn>> =
                    Pool::builder().max_size(2).build(ConnectionManager::new(&s.url)).unwrap();
                let dest_pool: Pool<ConnectionManager<<D as TestBackend>::Conn>> =
                    Pool::builder().max_size(2).build(ConnectionManager::new(&d.url)).unwrap();
                let report = orders::table
                    .filter(orders::grp.eq(2))
                    .chunked_by(orders::id)
                    .batch_size(25)
                    .checkpoint("pools")
                    .move_to::<Order>(&src_pool, &dest_pool, orders::table)
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (100, 4, true));
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_in_one_table(&left, &moved, |id| id % 3 == 2);
            }

            /// The destination's checkpoint row reset alone: the source's row
            /// says more rows were deleted than the destination's says were
            /// copied, and the job stops before it copies anything.
            #[test]
            fn a_destination_reset_alone_is_refused() {
                let (_s, _d, mut src, mut dest) = databases();
                let job = || orders::table.chunked_by(orders::id).batch_size(50).checkpoint("half");
                let first = job().limit_total(100).move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((first.rows, first.done), (100, false));
                checkpoint::reset(&mut dest, "half").unwrap();
                let err = job().move_to::<Order>(&mut src, &mut dest, orders::table).unwrap_err();
                assert!(matches!(&err, Error::CheckpointMismatch { name, .. } if name == "half"), "{err:?}");
                assert_eq!(rows_of(&mut dest, false).len(), 100);
                assert_eq!(rows_of(&mut src, false).len(), ROWS as usize - 100);
                // Both reset: the job starts over and moves what is left.
                checkpoint::reset(&mut src, "half").unwrap();
                let rest = job().move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((rest.rows, rest.done), (ROWS as u64 - 100, true));
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_in_one_table(&left, &moved, |_| true);
            }

            /// Between the destination's commit of batch 1 and the source's
            /// delete, another writer deletes a copied row and inserts a new
            /// row into the batch's range: the delete takes the copied keys
            /// only, so the new row stays in the source and the deleted one
            /// is in the destination only.
            #[test]
            fn a_delete_and_an_insert_between_the_commits_lose_nothing() {
                let (s, _d, mut src, mut dest) = databases();
                let url = s.url.clone();
                let meddle = move || {
                    let mut w = <S as TestBackend>::connect_url(&url);
                    diesel::delete(orders::table.filter(orders::id.eq(3))).execute(&mut w).unwrap();
                    diesel::insert_into(orders::table).values(&order(0)).execute(&mut w).unwrap();
                };
                let report = orders::table.chunked_by(orders::id).batch_size(10).checkpoint("race")
                    .observe(AtBatch(1, std::sync::Mutex::new(Some(Box::new(meddle)))))
                    .move_to::<Order>(&mut src, &mut dest, orders::table)
                    .unwrap();
                assert_eq!((report.rows, report.done), (ROWS as u64, true));
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![0], "the new row stays");
                assert_eq!(left[&0], order(0));
                let expected: BTreeMap<i32, Order> = (1..=ROWS).map(|i| (i, order(i))).collect();
                assert_eq!(moved, expected, "row 3 was copied before it was deleted");
            }

            #[test]
            fn move_to_without_a_checkpoint_is_refused() {
                let (_s, _d, mut src, mut dest) = databases();
                let err = orders::table.chunked_by(orders::id)
                    .move_to::<Order>(&mut src, &mut dest, orders::table).unwrap_err();
                assert!(matches!(err, Error::MoveNeedsCheckpoint), "{err:?}");
                assert!(rows_of(&mut dest, false).is_empty());
            }

            /// The runner stops between the destination's commit of batch 3
            /// and the source's delete of it (it aborts in `on_batch`): batch
            /// 3's rows are in both databases, those of batches 1 and 2 in
            /// the destination only. The next run deletes batch 3's rows
            /// from the source first, then goes on.
            #[test]
            fn a_move_stopped_between_the_two_commits_is_finished_by_the_next_run() {
                let (s, d, mut src, mut dest) = databases();
                let status = child(&s, &d, Some(3)).wait().unwrap();
                assert!(!status.success());
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_eq!(moved.keys().copied().collect::<Vec<_>>(), (1..=21).collect::<Vec<_>>());
                assert_eq!(left.keys().copied().collect::<Vec<_>>(), (15..=ROWS).collect::<Vec<_>>());
                let report = orders::table.chunked_by(orders::id).batch_size(7).checkpoint("killed")
                    .move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert_eq!((report.resumed_after, report.done), (Some(21), true));
                assert_eq!(report.rows as i32, ROWS - 21);
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_in_one_table(&left, &moved, |_| true);
            }

            /// Killed (SIGKILL) at arbitrary instants, five times, then
            /// finished here: every row in exactly one database.
            #[test]
            fn a_move_killed_at_any_instant_resumes_exactly() {
                let (s, d, mut src, mut dest) = databases();
                let killed_while_running =
                    kill_five_times(|| child(&s, &d, None), || rows_of(&mut dest, false).len());
                assert!(killed_while_running >= 3, "the child finished before it was killed");
                let mid = rows_of(&mut dest, false).len();
                assert!(mid > 0 && mid < ROWS as usize, "{mid} rows moved by the killed runs");
                let report = orders::table.chunked_by(orders::id).batch_size(7).checkpoint("killed")
                    .move_to::<Order>(&mut src, &mut dest, orders::table).unwrap();
                assert!(report.done);
                let (left, moved) = (rows_of(&mut src, false), rows_of(&mut dest, false));
                assert_in_one_table(&left, &moved, |_| true);
            }
        }
    )*};
}

/// Starts a runner five times with `spawn`, and kills it (SIGKILL) each time
/// a little after `moved()` (the rows in the destination) has grown, at an
/// instant nobody chose: how many of the five were still running.
fn kill_five_times(
    spawn: impl Fn() -> std::process::Child,
    mut moved: impl FnMut() -> usize,
) -> usize {
    let mut killed_while_running = 0;
    for round in 0..5u64 {
        let mut child = spawn();
        let before = moved();
        let started = Instant::now();
        while moved() == before && started.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(3 + 7 * round));
        if child.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        child.kill().ok();
        child.wait().unwrap();
    }
    killed_while_running
}

/// The child process of the cross-database kill tests.
fn child(src: &TestDb, dest: &TestDb, abort_at: Option<u64>) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "transfer::move_to_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CHUNKED_SRC_URL", &src.url)
    .env("CHUNKED_DEST_URL", &dest.url)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if let Some(n) = abort_at {
        cmd.env("CHUNKED_ABORT_AT", n.to_string());
    }
    cmd.spawn().unwrap()
}

cross_tests! {
    sqlite_to_sqlite: Sqlite("sqlite") -> Sqlite("sqlite");
    pg_to_pg: Pg("postgres") -> Pg("postgres");
    mysql_to_mysql: Mysql("mysql") -> Mysql("mysql");
    pg_to_mysql: Pg("postgres") -> Mysql("mysql");
    sqlite_to_pg: Sqlite("sqlite") -> Pg("postgres");
    mysql_to_sqlite: Mysql("mysql") -> Sqlite("sqlite");
}

/// Runs a closure once, when batch `n` is committed in the destination.
struct AtBatch(u64, std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl diesel_chunked_iterator::WriteObserver for AtBatch {
    fn on_batch(&self, stats: &diesel_chunked_iterator::BatchStats) {
        if stats.batch == self.0 {
            if let Some(f) = self.1.lock().unwrap().take() {
                f();
            }
        }
    }
}

/// Aborts the process once batch `n` is committed in the destination,
/// before its rows are deleted from the source.
struct AbortAt(u64);

impl diesel_chunked_iterator::WriteObserver for AbortAt {
    fn on_batch(&self, stats: &diesel_chunked_iterator::BatchStats) {
        if stats.batch == self.0 {
            std::process::abort();
        }
    }
}

/// The runner the cross-database kill tests stop: run by them only.
#[test]
#[ignore = "run as a child process by the cross-database move tests"]
fn move_to_child() {
    let src = std::env::var("CHUNKED_SRC_URL").expect("CHUNKED_SRC_URL");
    let dest = std::env::var("CHUNKED_DEST_URL").expect("CHUNKED_DEST_URL");
    let abort_at: u64 = std::env::var("CHUNKED_ABORT_AT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    macro_rules! with_conn {
        ($url:expr, $c:ident => $body:expr) => {{
            let url: &str = &$url;
            #[cfg(feature = "postgres")]
            let pg = url.starts_with("postgres");
            #[cfg(not(feature = "postgres"))]
            let pg = false;
            #[cfg(feature = "mysql")]
            let my = url.starts_with("mysql");
            #[cfg(not(feature = "mysql"))]
            let my = false;
            if pg {
                #[cfg(feature = "postgres")]
                {
                    let mut $c = diesel::PgConnection::establish(url).unwrap();
                    $body;
                }
            } else if my {
                #[cfg(feature = "mysql")]
                {
                    let mut $c = diesel::MysqlConnection::establish(url).unwrap();
                    $body;
                }
            } else {
                #[cfg(feature = "sqlite")]
                {
                    let mut $c = diesel::SqliteConnection::establish(url).unwrap();
                    $body;
                }
            }
        }};
    }
    with_conn!(src, s => with_conn!(dest, d => {
        let _ = orders::table
            .chunked_by(orders::id)
            .batch_size(7)
            .pause(Duration::from_millis(10))
            .checkpoint("killed")
            .observe(AbortAt(abort_at))
            .move_to::<Order>(&mut s, &mut d, orders::table);
    }));
}

/// `copy_into` / `move_into` on diesel-async connections: the same verbs,
/// the same rows.
#[cfg(feature = "async")]
macro_rules! async_transfer_tests {
    ($name:ident, $backend:ident, $conn:ty, $feature:literal) => {
        #[cfg(feature = $feature)]
        mod $name {
            use super::*;
            use diesel_async::AsyncConnection;

            #[tokio::test(flavor = "multi_thread")]
            async fn copy_into_and_move_into_write_each_row_once() {
                let db = common::$backend::create();
                let mut sync = common::$backend::connect(&db);
                create_tables(&mut sync);
                checkpoint::create_table(&mut sync).unwrap();
                let mut conn = <$conn>::establish(&db.url).await.expect("async connection");

                let copied = orders::table
                    .filter(orders::grp.eq(0))
                    .chunked_by(orders::id)
                    .batch_size(30)
                    .copy_into(&mut conn, orders_archive::table)
                    .await
                    .unwrap();
                assert_eq!((copied.rows, copied.batches), (100, 4));
                diesel::RunQueryDsl::execute(
                    diesel::delete(orders::table.filter(orders::grp.eq(0))),
                    &mut sync,
                )
                .unwrap();

                let moved = orders::table
                    .chunked_by(orders::id)
                    .batch_size(30)
                    .checkpoint("async-move")
                    .move_into(&mut conn, orders_archive::table)
                    .await
                    .unwrap();
                assert_eq!((moved.rows, moved.batches, moved.done), (200, 7, true));
                let (left, archive) = (rows_of(&mut sync, false), rows_of(&mut sync, true));
                assert!(left.is_empty(), "{left:?}");
                let expected: BTreeMap<i32, Order> = (1..=ROWS).map(|i| (i, order(i))).collect();
                assert_eq!(archive, expected);
            }
        }
    };
}

#[cfg(feature = "async")]
async_transfer_tests!(
    async_sqlite,
    Sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    "sqlite"
);
#[cfg(feature = "async")]
async_transfer_tests!(async_pg, Pg, diesel_async::AsyncPgConnection, "postgres");
#[cfg(feature = "async")]
async_transfer_tests!(
    async_mysql,
    Mysql,
    diesel_async::AsyncMysqlConnection,
    "mysql"
);

/// `copy_to` / `move_to` on diesel-async connections and pools: the same
/// verbs, the same statements, awaited. `$src`/`$dest` are the backends,
/// `$sc`/`$dc` their async connection types.
#[cfg(feature = "async")]
macro_rules! async_cross_tests {
    ($($module:ident: $src:ident($sf:literal, $sc:ty) -> $dest:ident($df:literal, $dc:ty);)*) => {$(
        #[cfg(all(feature = $sf, feature = $df))]
        mod $module {
            use super::*;
            use diesel_async::AsyncConnection;
            type S = common::$src;
            type D = common::$dest;

            struct Databases {
                src_db: TestDb,
                dest_db: TestDb,
                src: <S as TestBackend>::Conn,
                dest: <D as TestBackend>::Conn,
            }

            fn databases() -> Databases {
                let (src_db, dest_db) = (S::create(), D::create());
                let mut src = S::connect(&src_db);
                let mut dest = D::connect(&dest_db);
                create_tables_with(&mut src, true);
                create_tables_with(&mut dest, false);
                checkpoint::create_table(&mut src).unwrap();
                checkpoint::create_table(&mut dest).unwrap();
                Databases { src_db, dest_db, src, dest }
            }

            async fn connect(db: &Databases) -> ($sc, $dc) {
                let src = <$sc>::establish(&db.src_db.url).await.expect("async source");
                let dest = <$dc>::establish(&db.dest_db.url).await.expect("async destination");
                (src, dest)
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn copy_to_copies_each_row_once_column_by_column() {
                let mut db = databases();
                let (mut src, mut dest) = connect(&db).await;
                let report = orders::table
                    .filter(orders::grp.ne(0))
                    .chunked_by(orders::id)
                    .batch_size(40)
                    .checkpoint("copy")
                    .copy_to::<Order>(&mut src, &mut dest, orders::table)
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (200, 5, true));
                let expected: BTreeMap<i32, Order> =
                    (1..=ROWS).filter(|i| i % 3 != 0).map(|i| (i, order(i))).collect();
                assert_eq!(rows_of(&mut db.dest, false), expected);
                assert_eq!(rows_of(&mut db.src, false).len(), ROWS as usize, "the source keeps its rows");
                let c = checkpoint::status(&mut db.dest, "copy").unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (200, 5, true));
                assert!(checkpoint::status(&mut db.src, "copy").unwrap().is_none());
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn copy_to_a_table_of_another_name_with_none_as_default() {
                let mut db = databases();
                let (mut src, mut dest) = connect(&db).await;
                let report = orders::table
                    .filter(orders::id.le(30))
                    .chunked_by(orders::id)
                    .copy_to::<OrderWithDefaults>(&mut src, &mut dest, orders_archive::table)
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches), (30, 1));
                let expected: BTreeMap<i32, Order> = (1..=30).map(|i| (i, order(i))).collect();
                assert_eq!(rows_of(&mut db.dest, true), expected);
                assert!(rows_of(&mut db.dest, false).is_empty());
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn move_to_moves_each_row_once_and_runs_again_as_done() {
                let mut db = databases();
                let (mut src, mut dest) = connect(&db).await;
                let job = || orders::table.filter(orders::grp.ne(0)).chunked_by(orders::id)
                    .batch_size(40).checkpoint("move");
                let report = job().move_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap();
                assert_eq!((report.rows, report.batches, report.done), (200, 5, true));
                let (left, moved) = (rows_of(&mut db.src, false), rows_of(&mut db.dest, false));
                assert_in_one_table(&left, &moved, |id| id % 3 != 0);
                let marker = checkpoint::status(&mut db.src, "move").unwrap().unwrap();
                assert_eq!((marker.rows, marker.batches, marker.done), (200, 5, true));
                let again = job().move_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap();
                assert_eq!((again.rows, again.done), (0, true));
                assert_eq!(rows_of(&mut db.src, false), left);
            }

            /// A blocking run stopped between the destination's commit of
            /// batch 3 and the source's delete of it, finished by an async
            /// run: it deletes batch 3's rows from the source first (by the
            /// range and the count), then goes on.
            #[tokio::test(flavor = "multi_thread")]
            async fn move_to_finishes_a_run_stopped_between_the_two_commits() {
                let mut db = databases();
                let status = child(&db.src_db, &db.dest_db, Some(3)).wait().unwrap();
                assert!(!status.success());
                let (left, moved) = (rows_of(&mut db.src, false), rows_of(&mut db.dest, false));
                assert_eq!(moved.keys().copied().collect::<Vec<_>>(), (1..=21).collect::<Vec<_>>());
                assert_eq!(left.keys().copied().collect::<Vec<_>>(), (15..=ROWS).collect::<Vec<_>>());
                let (mut src, mut dest) = connect(&db).await;
                let report = orders::table.chunked_by(orders::id).batch_size(7).checkpoint("killed")
                    .move_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap();
                assert_eq!((report.resumed_after, report.done), (Some(21), true));
                assert_eq!(report.rows as i32, ROWS - 21);
                let (left, moved) = (rows_of(&mut db.src, false), rows_of(&mut db.dest, false));
                assert_in_one_table(&left, &moved, |_| true);
            }

            /// As the blocking test: a writer deletes a copied row and
            /// inserts a new one between the commits of batch 1.
            #[tokio::test(flavor = "multi_thread")]
            async fn a_delete_and_an_insert_between_the_commits_lose_nothing() {
                let mut db = databases();
                let (mut src, mut dest) = connect(&db).await;
                let url = db.src_db.url.clone();
                let meddle = move || {
                    let mut w = <S as TestBackend>::connect_url(&url);
                    diesel::delete(orders::table.filter(orders::id.eq(3))).execute(&mut w).unwrap();
                    diesel::insert_into(orders::table).values(&order(0)).execute(&mut w).unwrap();
                };
                let report = orders::table.chunked_by(orders::id).batch_size(10).checkpoint("race")
                    .observe(AtBatch(1, std::sync::Mutex::new(Some(Box::new(meddle)))))
                    .move_to::<Order>(&mut src, &mut dest, orders::table)
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.done), (ROWS as u64, true));
                let (left, moved) = (rows_of(&mut db.src, false), rows_of(&mut db.dest, false));
                assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![0], "the new row stays");
                let expected: BTreeMap<i32, Order> = (1..=ROWS).map(|i| (i, order(i))).collect();
                assert_eq!(moved, expected);
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn copy_to_and_move_to_skip_the_rows_the_destination_holds() {
                let mut db = databases();
                plant_conflicts(&mut db.dest, true);
                let (mut src, mut dest) = connect(&db).await;
                let report = orders::table.chunked_by(orders::id).batch_size(40)
                    .checkpoint("copy-skip").on_conflict_do_nothing()
                    .copy_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap();
                assert_eq!((report.rows, report.batches, report.done), (300, 8, true));
                assert_planted_kept(&rows_of(&mut db.dest, false), 1..=ROWS);
                diesel::sql_query("DELETE FROM orders WHERE id <> 120 AND id <> 250").execute(&mut db.dest).unwrap();
                let report = orders::table.chunked_by(orders::id).batch_size(40)
                    .checkpoint("move-skip").on_conflict_do_nothing()
                    .move_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap();
                assert_eq!((report.rows, report.done), (300, true));
                assert!(rows_of(&mut db.src, false).is_empty());
                assert_planted_kept(&rows_of(&mut db.dest, false), 1..=ROWS);
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn move_to_without_a_checkpoint_is_refused() {
                let mut db = databases();
                let (mut src, mut dest) = connect(&db).await;
                let err = orders::table.chunked_by(orders::id)
                    .move_to::<Order>(&mut src, &mut dest, orders::table).await.unwrap_err();
                assert!(matches!(err, Error::MoveNeedsCheckpoint), "{err:?}");
                assert!(rows_of(&mut db.dest, false).is_empty());
            }

            /// Two connections to the source's database: one checkpoint
            /// table, refused before anything is copied.
            #[tokio::test(flavor = "multi_thread")]
            async fn move_to_the_same_database_is_refused() {
                let mut db = databases();
                let mut src = <$sc>::establish(&db.src_db.url).await.unwrap();
                let mut same = <$sc>::establish(&db.src_db.url).await.unwrap();
                let err = orders::table.chunked_by(orders::id).checkpoint("same")
                    .move_to::<Order>(&mut src, &mut same, orders_archive::table).await.unwrap_err();
                assert!(matches!(&err, Error::MoveSameDatabase { name } if name == "same"), "{err:?}");
                assert!(rows_of(&mut db.src, true).is_empty());
                assert_eq!(rows_of(&mut db.src, false).len(), ROWS as usize);
            }

            /// Pools on both sides: one connection a batch, lent by deadpool.
            #[cfg(feature = "deadpool")]
            #[tokio::test(flavor = "multi_thread")]
            async fn move_to_between_two_deadpool_pools() {
                use diesel_async::pooled_connection::{deadpool, AsyncDieselConnectionManager};
                let mut db = databases();
                let src_pool = deadpool::Pool::builder(AsyncDieselConnectionManager::<$sc>::new(&db.src_db.url))
                    .max_size(2).build().unwrap();
                let dest_pool = deadpool::Pool::builder(AsyncDieselConnectionManager::<$dc>::new(&db.dest_db.url))
                    .max_size(2).build().unwrap();
                let report = orders::table
                    .filter(orders::grp.eq(2))
                    .chunked_by(orders::id)
                    .batch_size(25)
                    .checkpoint("pools")
                    .move_to::<Order>(&src_pool, &dest_pool, orders::table)
                    .await
                    .unwrap();
                assert_eq!((report.rows, report.batches, report.done), (100, 4, true));
                let (left, moved) = (rows_of(&mut db.src, false), rows_of(&mut db.dest, false));
                assert_in_one_table(&left, &moved, |id| id % 3 == 2);
            }
        }
    )*};
}

#[cfg(feature = "async")]
async_cross_tests! {
    async_pg_to_pg: Pg("postgres", diesel_async::AsyncPgConnection) -> Pg("postgres", diesel_async::AsyncPgConnection);
    async_pg_to_mysql: Pg("postgres", diesel_async::AsyncPgConnection) -> Mysql("mysql", diesel_async::AsyncMysqlConnection);
    async_mysql_to_sqlite: Mysql("mysql", diesel_async::AsyncMysqlConnection) -> Sqlite("sqlite", diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>);
    async_sqlite_to_pg: Sqlite("sqlite", diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>) -> Pg("postgres", diesel_async::AsyncPgConnection);
}

/// `copy_to` into PostgreSQL by binary `COPY`: every field is the value
/// Diesel binds, so each type arrives as an `INSERT` would have written it.
#[cfg(all(feature = "postgres", feature = "chrono", feature = "uuid"))]
mod pg_copy_types {
    use super::*;

    diesel::table! {
        typed (id) {
            id -> Uuid,
            at -> Timestamptz,
            local -> Timestamp,
            day -> Date,
            tags -> Array<Text>,
            counts -> Nullable<Array<Nullable<Int4>>>,
            blob -> Binary,
            ratio -> Nullable<Double>,
            small -> SmallInt,
            big -> BigInt,
            flag -> Bool,
            label -> Text,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
    #[diesel(table_name = typed, treat_none_as_default_value = false)]
    struct Typed {
        id: uuid::Uuid,
        at: chrono::DateTime<chrono::Utc>,
        local: chrono::NaiveDateTime,
        day: chrono::NaiveDate,
        tags: Vec<String>,
        counts: Option<Vec<Option<i32>>>,
        blob: Vec<u8>,
        ratio: Option<f64>,
        small: i16,
        big: i64,
        flag: bool,
        label: String,
    }

    fn typed_row(i: u32) -> Typed {
        use chrono::TimeZone;
        let at = chrono::Utc
            .timestamp_opt(1_700_000_000 + i64::from(i) * 3_601, i * 1_000)
            .unwrap();
        Typed {
            id: uuid::Uuid::from_u128(
                0x1234_5678_9abc_def0_0000_0000_0000_0000 + u128::from(i) * 7919,
            ),
            at,
            local: at.naive_utc() - chrono::Duration::microseconds(i64::from(i)),
            day: at.date_naive(),
            tags: (0..i % 4).map(|t| format!("tag \"{t}\" ,{{é}}")).collect(),
            counts: (i % 5 != 0).then(|| vec![Some(i as i32), None, Some(-1)]),
            blob: (0..(i % 9) as u8).map(|b| b.wrapping_mul(37)).collect(),
            ratio: (i % 3 != 0).then_some(f64::from(i) / 7.0),
            small: -(i as i16),
            big: i64::MAX - i64::from(i),
            flag: i % 2 == 0,
            label: format!("row {i}\ttab\nline \\ back"),
        }
    }

    const CREATE: &str = "CREATE TABLE typed (id UUID PRIMARY KEY, at TIMESTAMPTZ NOT NULL, \
        local TIMESTAMP NOT NULL, day DATE NOT NULL, tags TEXT[] NOT NULL, counts INT4[], \
        blob BYTEA NOT NULL, ratio FLOAT8, small INT2 NOT NULL, big INT8 NOT NULL, \
        flag BOOL NOT NULL, label VARCHAR(80) NOT NULL)";

    #[test]
    fn copy_to_postgresql_by_copy_keeps_every_value() {
        let (src_db, dest_db) = (Pg::create(), Pg::create());
        let (mut src, mut dest) = (Pg::connect(&src_db), Pg::connect(&dest_db));
        for conn in [&mut src, &mut dest] {
            diesel::sql_query(CREATE).execute(conn).unwrap();
        }
        checkpoint::create_table(&mut dest).unwrap();
        let rows: Vec<Typed> = (1..=120).map(typed_row).collect();
        diesel::insert_into(typed::table)
            .values(&rows)
            .execute(&mut src)
            .unwrap();
        let log = QueryLog::install(&mut dest);
        let report = typed::table
            .chunked_by(typed::id)
            .batch_size(50)
            .checkpoint("typed")
            .copy_to::<Typed>(&mut src, &mut dest, typed::table)
            .unwrap();
        assert_eq!((report.rows, report.batches, report.done), (120, 3, true));
        let copies = log
            .all()
            .into_iter()
            .filter(|q| q.starts_with("COPY"))
            .count();
        assert_eq!(copies, 3, "{:#?}", log.all());
        let mut expected = rows;
        expected.sort_by_key(|r| r.id);
        let copied: Vec<Typed> = typed::table.order(typed::id).load(&mut dest).unwrap();
        assert_eq!(copied, expected);
    }

    /// A destination that is a view (which takes `INSERT`s, not a `COPY`):
    /// its batches go by the `INSERT`.
    #[test]
    fn copy_to_a_postgresql_view_inserts() {
        let (src_db, dest_db) = (Pg::create(), Pg::create());
        let (mut src, mut dest) = (Pg::connect(&src_db), Pg::connect(&dest_db));
        diesel::sql_query(CREATE).execute(&mut src).unwrap();
        diesel::sql_query(CREATE.replace("TABLE typed", "TABLE typed_base"))
            .execute(&mut dest)
            .unwrap();
        diesel::sql_query("CREATE VIEW typed AS SELECT * FROM typed_base")
            .execute(&mut dest)
            .unwrap();
        let rows: Vec<Typed> = (1..=30).map(typed_row).collect();
        diesel::insert_into(typed::table)
            .values(&rows)
            .execute(&mut src)
            .unwrap();
        let log = QueryLog::install(&mut dest);
        let report = typed::table
            .chunked_by(typed::id)
            .batch_size(20)
            .copy_to::<Typed>(&mut src, &mut dest, typed::table)
            .unwrap();
        assert_eq!((report.rows, report.batches), (30, 2));
        let statements = log.all();
        assert!(
            statements.iter().all(|q| !q.starts_with("COPY")),
            "{statements:#?}"
        );
        assert_eq!(
            statements
                .iter()
                .filter(|q| q.starts_with("INSERT INTO"))
                .count(),
            2,
            "{statements:#?}"
        );
        let mut expected = rows;
        expected.sort_by_key(|r| r.id);
        let copied: Vec<Typed> = typed::table.order(typed::id).load(&mut dest).unwrap();
        assert_eq!(copied, expected);
    }
}

/// Edge cases: a destination where a `COPY` and an `INSERT` would differ,
/// and tables that are one though rendered differently.
mod edge_cases {
    use super::*;

    #[cfg(feature = "postgres")]
    fn pg_exec(conn: &mut diesel::PgConnection, sql: &str) {
        diesel::sql_query(sql)
            .execute(conn)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A destination with row-level security, written by a role that is
    /// neither its owner nor a superuser, with a policy that admits every
    /// row: an INSERT is allowed, PostgreSQL refuses COPY FROM.
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_to_a_table_with_row_level_security() {
        let (src_db, dest_db) = (Pg::create(), Pg::create());
        let (mut src, mut dest) = (Pg::connect(&src_db), Pg::connect(&dest_db));
        create_tables_with(&mut src, true);
        create_tables_with(&mut dest, false);
        checkpoint::create_table(&mut dest).unwrap();
        let role = unique_name("chunked_rls");
        #[derive(QueryableByName)]
        struct S {
            #[diesel(sql_type = diesel::sql_types::Text)]
            s: String,
        }
        let schema = diesel::sql_query("SELECT current_schema()::text AS s")
            .get_result::<S>(&mut dest)
            .unwrap()
            .s;
        pg_exec(&mut dest, &format!("CREATE ROLE {role}"));
        pg_exec(
            &mut dest,
            &format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        );
        pg_exec(
            &mut dest,
            &format!("GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        );
        pg_exec(&mut dest, "ALTER TABLE orders ENABLE ROW LEVEL SECURITY");
        pg_exec(
            &mut dest,
            "CREATE POLICY everyone ON orders USING (true) WITH CHECK (true)",
        );
        pg_exec(&mut dest, &format!("SET ROLE {role}"));
        let result = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .copy_to::<Order>(&mut src, &mut dest, orders::table);
        pg_exec(&mut dest, "RESET ROLE");
        let n: i64 = orders::table.count().get_result(&mut dest).unwrap();
        pg_exec(&mut dest, &format!("DROP OWNED BY {role}"));
        pg_exec(&mut dest, &format!("DROP ROLE {role}"));
        let report = result.expect("an INSERT is allowed by the policy: copy_to should succeed");
        assert_eq!((report.rows, n), (ROWS as u64, i64::from(ROWS)));
    }

    /// A destination whose key is GENERATED ALWAYS AS IDENTITY: an INSERT of
    /// an explicit id fails; COPY writes it (and leaves the sequence behind).
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_to_an_identity_always_column_behaves_as_the_insert() {
        let (src_db, dest_db) = (Pg::create(), Pg::create());
        let (mut src, mut dest) = (Pg::connect(&src_db), Pg::connect(&dest_db));
        create_tables_with(&mut src, true);
        pg_exec(
            &mut dest,
            "CREATE TABLE orders (id INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             grp INTEGER NOT NULL, note VARCHAR(60) NOT NULL, amount BIGINT)",
        );
        // The INSERT path (forced by on_conflict_do_nothing) refuses.
        let by_insert = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .on_conflict_do_nothing()
            .copy_to::<Order>(&mut src, &mut dest, orders::table);
        assert!(by_insert.is_err(), "{by_insert:?}");
        let by_copy = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .copy_to::<Order>(&mut src, &mut dest, orders::table);
        let n: i64 = orders::table.count().get_result(&mut dest).unwrap();
        assert!(
            by_copy.is_err(),
            "COPY path accepted explicit ids into a GENERATED ALWAYS column: {by_copy:?}, {n} rows"
        );
    }

    /// Note columns of other types than the model's `text` (binary-coercible
    /// ones take the COPY): the COPY path writes what the INSERT path writes.
    #[cfg(feature = "postgres")]
    fn pg_copy_matches_insert(note_type: &str, setup: &str) {
        let (src_db, a_db, b_db) = (Pg::create(), Pg::create(), Pg::create());
        let (mut src, mut a, mut b) =
            (Pg::connect(&src_db), Pg::connect(&a_db), Pg::connect(&b_db));
        create_tables_with(&mut src, true);
        for conn in [&mut a, &mut b] {
            if !setup.is_empty() {
                pg_exec(conn, setup);
            }
            pg_exec(
                conn,
                &format!(
                    "CREATE TABLE orders (id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, \
                     note {note_type} NOT NULL, amount BIGINT)"
                ),
            );
        }
        let log = QueryLog::install(&mut a);
        let ra = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .copy_to::<Order>(&mut src, &mut a, orders::table);
        let rb = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .on_conflict_do_nothing()
            .copy_to::<Order>(&mut src, &mut b, orders::table);
        let copies = log.all().iter().filter(|q| q.starts_with("COPY")).count();
        eprintln!("{note_type}: COPY statements {copies}; copy {ra:?}; insert {rb:?}");
        assert_eq!(ra.is_ok(), rb.is_ok(), "{note_type}: {ra:?} vs {rb:?}");
        let dump = |c: &mut diesel::PgConnection| -> Vec<(i32, String, Option<i64>)> {
            diesel::sql_query("SELECT id, note::text AS note, amount FROM orders ORDER BY id")
                .load::<Dump>(c)
                .unwrap()
                .into_iter()
                .map(|d| (d.id, d.note, d.amount))
                .collect()
        };
        assert_eq!(dump(&mut a), dump(&mut b), "{note_type}");
    }

    #[derive(QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        id: i32,
        #[diesel(sql_type = diesel::sql_types::Text)]
        note: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        amount: Option<i64>,
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_char_n() {
        pg_copy_matches_insert("CHAR(20)", "");
    }
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_varchar_too_short() {
        pg_copy_matches_insert("VARCHAR(9)", "");
    }
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_citext() {
        pg_copy_matches_insert(
            "public.citext",
            "CREATE EXTENSION IF NOT EXISTS citext SCHEMA public",
        );
    }
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_domain() {
        pg_copy_matches_insert(
            "short_note",
            "CREATE DOMAIN short_note AS TEXT CHECK (length(VALUE) < 10)",
        );
    }
    #[cfg(feature = "postgres")]
    #[test]
    fn pg_copy_xml_like_name() {
        pg_copy_matches_insert("NAME", "");
    }

    /// The same table under two renderings (`main`.`orders` and `orders`):
    /// SameTable is not raised, and with on_conflict_do_nothing every row of
    /// the batch conflicts with itself, is skipped, then deleted.
    mod same_sqlite {
        diesel::table! {
            main.orders (id) {
                id -> Integer,
                grp -> Integer,
                note -> Text,
                amount -> Nullable<BigInt>,
            }
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_move_into_the_same_table_schema_qualified_is_refused() {
        let db = Sqlite::create();
        let mut conn = Sqlite::connect(&db);
        create_tables_with(&mut conn, true);
        let result = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .on_conflict_do_nothing()
            .move_into(&mut conn, same_sqlite::orders::table);
        let left: i64 = orders::table.count().get_result(&mut conn).unwrap();
        assert_eq!(
            left,
            i64::from(ROWS),
            "rows lost: {left} left, job said {result:?}"
        );
        assert!(matches!(result, Err(Error::SameTable { .. })), "{result:?}");
    }

    #[cfg(feature = "mysql")]
    fn mysql_base() -> String {
        let server = server_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test");
        server.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap()
    }

    mod same_mysql {
        diesel::table! {
            chunked_same_db.orders (id) {
                id -> Integer,
                grp -> Integer,
                note -> Text,
                amount -> Nullable<BigInt>,
            }
        }
        diesel::table! {
            chunked_other_db.orders_archive (id) {
                id -> Integer,
                grp -> Integer,
                note -> Text,
                amount -> Nullable<BigInt>,
            }
        }
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_move_into_the_same_table_schema_qualified_is_refused() {
        let mut admin =
            diesel::MysqlConnection::establish(&format!("{}/test", mysql_base())).unwrap();
        diesel::sql_query("DROP DATABASE IF EXISTS chunked_same_db")
            .execute(&mut admin)
            .unwrap();
        diesel::sql_query("CREATE DATABASE chunked_same_db")
            .execute(&mut admin)
            .unwrap();
        let mut conn =
            diesel::MysqlConnection::establish(&format!("{}/chunked_same_db", mysql_base()))
                .unwrap();
        create_tables_with(&mut conn, true);
        let result = orders::table
            .chunked_by(orders::id)
            .batch_size(100)
            .on_conflict_do_nothing()
            .move_into(&mut conn, same_mysql::orders::table);
        let left: i64 = orders::table.count().get_result(&mut conn).unwrap();
        diesel::sql_query("DROP DATABASE chunked_same_db")
            .execute(&mut admin)
            .unwrap();
        assert_eq!(
            left,
            i64::from(ROWS),
            "rows lost: {left} left, job said {result:?}"
        );
        assert!(
            matches!(
                result,
                Err(Error::OptionUnsupported {
                    option: "on_conflict_do_nothing",
                    job: "move_into",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    /// ON DUPLICATE KEY UPDATE on a destination of another database
    /// (`db`.`table`.`col`), copy_into and move_into.
    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_skip_into_a_schema_qualified_destination() {
        let db = Mysql::create();
        let mut conn = Mysql::connect(&db);
        create_tables_with(&mut conn, true);
        checkpoint::create_table(&mut conn).unwrap();
        diesel::sql_query("DROP DATABASE IF EXISTS chunked_other_db")
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query("CREATE DATABASE chunked_other_db")
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query(
            "CREATE TABLE chunked_other_db.orders_archive (id INTEGER PRIMARY KEY, \
             grp INTEGER NOT NULL, note VARCHAR(60) NOT NULL, amount BIGINT)",
        )
        .execute(&mut conn)
        .unwrap();
        diesel::sql_query(
            "INSERT INTO chunked_other_db.orders_archive VALUES (120, 9, 'old', NULL), (250, 9, 'old', 5)",
        )
        .execute(&mut conn)
        .unwrap();
        let log = QueryLog::install(&mut conn);
        let copy = orders::table
            .filter(orders::grp.eq(0))
            .chunked_by(orders::id)
            .batch_size(50)
            .on_conflict_do_nothing()
            .copy_into(&mut conn, same_mysql::orders_archive::table);
        let mv = orders::table
            .filter(orders::grp.ne(0))
            .chunked_by(orders::id)
            .batch_size(50)
            .on_conflict_do_nothing()
            .move_into(&mut conn, same_mysql::orders_archive::table);
        let n: i64 = same_mysql::orders_archive::table
            .count()
            .get_result(&mut conn)
            .unwrap();
        let left: i64 = orders::table.count().get_result(&mut conn).unwrap();
        diesel::sql_query("DROP DATABASE chunked_other_db")
            .execute(&mut conn)
            .unwrap();
        let inserts: Vec<String> = log
            .all()
            .into_iter()
            .filter(|q| q.starts_with("INSERT"))
            .take(1)
            .collect();
        let copy = copy.unwrap_or_else(|e| panic!("copy_into: {e:?}\n{inserts:#?}"));
        let mv = mv.unwrap_or_else(|e| panic!("move_into: {e:?}\n{inserts:#?}"));
        assert_eq!((copy.rows, mv.rows), (100, 200));
        assert_eq!((n, left), (300, 100));
    }

    diesel::table! {
        kw_src (key) {
            #[sql_name = "order"]
            order_ -> Integer,
            key -> Integer,
            #[sql_name = "select"]
            select_ -> Text,
        }
    }
    diesel::table! {
        kw_dst (key) {
            #[sql_name = "order"]
            order_ -> Integer,
            key -> Integer,
            #[sql_name = "select"]
            select_ -> Text,
        }
    }

    #[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
    #[diesel(table_name = kw_src)]
    struct Kw {
        order_: i32,
        key: i32,
        select_: String,
    }

    /// Keyword column names, the first one not the key: copy_into,
    /// move_into (same database) and copy_to (another database) with
    /// on_conflict_do_nothing.
    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_skip_with_keyword_columns() {
        let (db, other) = (Mysql::create(), Mysql::create());
        let (mut conn, mut dest) = (Mysql::connect(&db), Mysql::connect(&other));
        for c in [&mut conn, &mut dest] {
            for t in ["kw_src", "kw_dst"] {
                diesel::sql_query(format!(
                    "CREATE TABLE {t} (`order` INTEGER NOT NULL, `key` INTEGER PRIMARY KEY, \
                     `select` VARCHAR(20) NOT NULL, UNIQUE (`select`))"
                ))
                .execute(c)
                .unwrap();
            }
        }
        checkpoint::create_table(&mut dest).unwrap();
        let values: Vec<String> = (1..=60)
            .map(|i| format!("({}, {i}, 's{i}')", i % 4))
            .collect();
        diesel::sql_query(format!("INSERT INTO kw_src VALUES {}", values.join(", ")))
            .execute(&mut conn)
            .unwrap();
        // conflicts: key 10 (primary) and `select` 's20' (secondary unique)
        for c in [&mut conn, &mut dest] {
            diesel::sql_query("INSERT INTO kw_dst VALUES (7, 10, 'old10'), (7, 999, 's20')")
                .execute(c)
                .unwrap();
        }
        let to = kw_src::table
            .chunked_by(kw_src::key)
            .batch_size(25)
            .on_conflict_do_nothing()
            .copy_to::<Kw>(&mut conn, &mut dest, kw_dst::table);
        let copy = kw_src::table
            .filter(kw_src::order_.eq(0))
            .chunked_by(kw_src::key)
            .batch_size(7)
            .on_conflict_do_nothing()
            .copy_into(&mut conn, kw_dst::table);
        let mv = kw_src::table
            .filter(kw_src::order_.ne(0))
            .chunked_by(kw_src::key)
            .batch_size(7)
            .on_conflict_do_nothing()
            .move_into(&mut conn, kw_dst::table);
        let to = to.unwrap();
        let copy = copy.unwrap();
        let mv = mv.unwrap();
        assert_eq!((to.rows, copy.rows, mv.rows), (60, 15, 45));
        let n_dest: i64 = kw_dst::table.count().get_result(&mut dest).unwrap();
        let n_here: i64 = kw_dst::table.count().get_result(&mut conn).unwrap();
        let left: i64 = kw_src::table.count().get_result(&mut conn).unwrap();
        // 60 rows + 'old10'/'s20' planted, 2 skipped => 60 rows in each kw_dst
        assert_eq!((n_dest, n_here, left), (60, 60, 15));
        let kept: String = kw_dst::table
            .find(10)
            .select(kw_dst::select_)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(kept, "old10");
    }
}
