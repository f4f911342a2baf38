//! `verify_unique` beyond one table in the default schema: tables in another
//! schema or renamed with `#[sql_name]`, joins, and (on MariaDB) key columns the
//! database cannot order and compare consistently.

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::{prelude::*, Error, UniqueIndexes};

/// `items` in a schema (PostgreSQL), database (MySQL) or attached database
/// (SQLite) of its own; a table of the same name in the test's default schema
/// has a unique `n`, this one does not.
mod other {
    diesel::table! {
        cit_unique_other.items (id) {
            id -> Integer,
            n -> Integer,
        }
    }
}

mod local {
    diesel::table! {
        items (id) {
            id -> Integer,
            n -> Integer,
        }
    }

    diesel::table! {
        #[sql_name = "real_items"]
        renamed (id) {
            id -> Integer,
            n -> Integer,
        }
    }
}

const OTHER: &str = "cit_unique_other";

fn exec<C>(conn: &mut C, sql: &str)
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn not_unique_over_query(err: Error) -> (String, String) {
    match err {
        Error::NotUniqueOverQuery { table, reason, .. } => (table, reason),
        other => panic!("expected NotUniqueOverQuery, got {other:?}"),
    }
}

backend_tests! {
    fn a_table_in_another_schema_is_checked_there(db) {
        let mut conn = connect::<B>(&db);
        let attached = format!("{}-other", db.url);
        match B::NAME {
            "sqlite" => exec(&mut conn, &format!("ATTACH DATABASE '{attached}' AS {OTHER}")),
            "postgres" => {
                exec(&mut conn, &format!("DROP SCHEMA IF EXISTS {OTHER} CASCADE"));
                exec(&mut conn, &format!("CREATE SCHEMA {OTHER}"));
            }
            _ => {
                exec(&mut conn, &format!("DROP DATABASE IF EXISTS {OTHER}"));
                exec(&mut conn, &format!("CREATE DATABASE {OTHER}"));
            }
        }
        exec(&mut conn, "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL UNIQUE)");
        exec(
            &mut conn,
            &format!("CREATE TABLE {OTHER}.items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"),
        );
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // the same name in the default schema: `n` is unique there
            local::items::table.chunked_by(local::items::n).verify_unique(&mut conn).unwrap();
            other::items::table.chunked_by(other::items::id).verify_unique(&mut conn).unwrap();
            match other::items::table.chunked_by(other::items::n).verify_unique(&mut conn) {
                Err(Error::NotUnique { table, columns }) => {
                    assert_eq!(table, format!("{OTHER}.items"));
                    assert_eq!(columns, "items.n");
                }
                other => panic!("expected NotUnique, got {other:?}"),
            }
            assert_eq!(
                conn.unique_column_sets_in(Some(OTHER), "items").unwrap(),
                [vec!["id".to_string()]]
            );
            assert_eq!(conn.unique_column_sets("items").unwrap().len(), 2);
        }));
        match B::NAME {
            "sqlite" => {
                exec(&mut conn, &format!("DETACH DATABASE {OTHER}"));
                let _ = std::fs::remove_file(&attached);
            }
            "postgres" => exec(&mut conn, &format!("DROP SCHEMA {OTHER} CASCADE")),
            _ => exec(&mut conn, &format!("DROP DATABASE {OTHER}")),
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    fn a_table_renamed_with_sql_name_is_found(db) {
        let mut conn = connect::<B>(&db);
        exec(&mut conn, "CREATE TABLE real_items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
        local::renamed::table.chunked_by(local::renamed::id).verify_unique(&mut conn).unwrap();
        match local::renamed::table.chunked_by(local::renamed::n).verify_unique(&mut conn) {
            Err(Error::NotUnique { table, .. }) => assert_eq!(table, "real_items"),
            other => panic!("expected NotUnique, got {other:?}"),
        }
    }

    fn a_join_that_repeats_the_key_is_not_unique(db) {
        let mut conn = connect::<B>(&db);
        insert_users(&mut conn, &[user(1), user(2)]);
        let posts_of_one: Vec<Post> =
            (1..=3).map(|id| Post { user_id: 1, ..post(id) }).collect();
        insert_post_rows(&mut conn, &posts_of_one);
        // the user with 3 posts comes back 3 times under one key value
        let rows = users::table.inner_join(posts::table).select(users::id).load::<i32>(&mut conn).unwrap();
        assert_eq!(rows, [1, 1, 1]);

        let (table, reason) = not_unique_over_query(
            users::table.inner_join(posts::table).chunked_by(users::id).verify_unique(&mut conn).unwrap_err(),
        );
        assert_eq!(table, "posts");
        assert!(reason.contains("chunked_by((users::id, posts::id))"), "{reason}");
        let err = users::table.left_join(posts::table).chunked_by(users::id).verify_unique(&mut conn).unwrap_err();
        assert_eq!(not_unique_over_query(err).0, "posts");
        let err = users::table
            .inner_join(posts::table)
            .into_boxed()
            .chunked_by(users::id)
            .verify_unique(&mut conn)
            .unwrap_err();
        assert_eq!(not_unique_over_query(err).0, "posts");
        let p = diesel::alias!(posts as p);
        let err = users::table
            .inner_join(p.on(p.field(posts::user_id).eq(users::id)))
            .chunked_by(users::id)
            .verify_unique(&mut conn)
            .unwrap_err();
        let (table, reason) = not_unique_over_query(err);
        assert_eq!(table, "posts");
        assert!(reason.contains("posts (as p)"), "{reason}");
        // a condition that is not a conjunction of equalities proves nothing
        let err = posts::table
            .inner_join(users::table.on(users::id.eq(posts::user_id).or(users::id.eq(1))))
            .chunked_by(posts::id)
            .verify_unique(&mut conn)
            .unwrap_err();
        assert_eq!(not_unique_over_query(err).0, "users");
        // the key on a table that is not in the query
        let err = users::table.chunked_by(events::id).verify_unique(&mut conn).unwrap_err();
        assert!(matches!(err, Error::NotUniqueOverQuery { .. }), "{err}");
    }

    fn a_join_that_cannot_repeat_the_key_is_unique(db) {
        let mut conn = connect::<B>(&db);
        // posts.user_id = users.id: one user per post
        posts::table.inner_join(users::table).chunked_by(posts::id).verify_unique(&mut conn).unwrap();
        posts::table.left_join(users::table).chunked_by(posts::id).verify_unique(&mut conn).unwrap();
        posts::table
            .inner_join(users::table)
            .filter(users::name.eq("user 1"))
            .into_boxed()
            .chunked_by(posts::id)
            .verify_unique(&mut conn)
            .unwrap();
        let u = diesel::alias!(users as u);
        posts::table
            .inner_join(u.on(u.field(users::id).eq(posts::user_id)))
            .chunked_by(posts::id)
            .verify_unique(&mut conn)
            .unwrap();
        // the key covers a unique column set of every table
        users::table
            .inner_join(posts::table)
            .chunked_by((users::id, posts::id))
            .verify_unique(&mut conn)
            .unwrap();
        // a unique column equated with a constant
        users::table
            .inner_join(events::table.on(events::code.eq(7_i16)))
            .chunked_by(users::id)
            .verify_unique(&mut conn)
            .unwrap();
        // a key that covers no unique column set of any table
        let err = users::table
            .inner_join(posts::table)
            .chunked_by(posts::user_id)
            .verify_unique(&mut conn)
            .unwrap_err();
        assert!(matches!(err, Error::NotUnique { .. }), "{err}");
    }

    fn key_column_problems_are_none_for_ordinary_columns(db) {
        let mut conn = connect::<B>(&db);
        for column in ["id", "slug", "user_id"] {
            assert_eq!(conn.key_column_problem(None, "posts", column).unwrap(), None, "{column}");
        }
        assert_eq!(conn.key_column_problem(None, "no_such_table", "id").unwrap(), None);
    }
}

/// MariaDB/MySQL columns a keyset scan cannot rely on.
#[cfg(feature = "mysql")]
mod mariadb_keys {
    use super::*;

    diesel::table! {
        odd (id) {
            id -> Integer,
            code -> Text,
            body -> Text,
            wide -> Text,
            fine -> Text,
            short -> Text,
        }
    }

    fn odd_table(conn: &mut diesel::MysqlConnection) {
        exec(
            conn,
            "CREATE TABLE odd (\
                 id INTEGER PRIMARY KEY, \
                 code CHAR(8) CHARACTER SET latin1 COLLATE latin1_nopad_bin NOT NULL UNIQUE, \
                 body TEXT CHARACTER SET latin1 NOT NULL, \
                 wide VARCHAR(300) CHARACTER SET utf8mb4 NOT NULL, \
                 fine VARCHAR(100) CHARACTER SET utf8mb4 NOT NULL UNIQUE, \
                 short CHAR(8) CHARACTER SET latin1 COLLATE latin1_bin NOT NULL UNIQUE)",
        );
    }

    #[test]
    fn key_column_problem_names_no_pad_chars_and_long_strings() {
        let db = <Mysql as TestBackend>::create();
        let mut conn = connect::<Mysql>(&db);
        odd_table(&mut conn);
        let code = conn
            .key_column_problem(None, "odd", "code")
            .unwrap()
            .expect("code");
        assert!(
            code.contains("NO PAD") && code.contains("latin1_nopad_bin"),
            "{code}"
        );
        let body = conn
            .key_column_problem(None, "odd", "body")
            .unwrap()
            .expect("body");
        assert!(
            body.contains("max_sort_length") && body.contains("TEXT"),
            "{body}"
        );
        // 300 characters of up to 4 bytes: longer than the default 1024 bytes
        let wide = conn
            .key_column_problem(None, "odd", "wide")
            .unwrap()
            .expect("wide");
        assert!(
            wide.contains("max_sort_length") && wide.contains("1200"),
            "{wide}"
        );
        for column in ["id", "fine", "short"] {
            assert_eq!(
                conn.key_column_problem(None, "odd", column).unwrap(),
                None,
                "{column}"
            );
        }
        // the schema is honoured
        let database = db.url.rsplit('/').next().unwrap();
        assert!(conn
            .key_column_problem(Some(database), "odd", "code")
            .unwrap()
            .is_some());
        assert_eq!(
            conn.key_column_problem(Some("mysql"), "odd", "code")
                .unwrap(),
            None
        );
    }

    #[test]
    fn verify_unique_refuses_keys_the_server_cannot_order() {
        let db = <Mysql as TestBackend>::create();
        let mut conn = connect::<Mysql>(&db);
        odd_table(&mut conn);
        odd::table
            .chunked_by(odd::fine)
            .verify_unique(&mut conn)
            .unwrap();
        odd::table
            .chunked_by(odd::short)
            .verify_unique(&mut conn)
            .unwrap();
        for (err, column) in [
            (
                odd::table
                    .chunked_by(odd::code)
                    .verify_unique(&mut conn)
                    .unwrap_err(),
                "code",
            ),
            (
                odd::table
                    .chunked_by((odd::body, odd::id))
                    .verify_unique(&mut conn)
                    .unwrap_err(),
                "body",
            ),
            (
                odd::table
                    .chunked_by((odd::wide, odd::id))
                    .verify_unique(&mut conn)
                    .unwrap_err(),
                "wide",
            ),
        ] {
            match &err {
                Error::UnsupportedKey { reason, .. } => {
                    assert!(reason.contains(&format!("odd.{column}")), "{reason}")
                }
                other => panic!("expected UnsupportedKey for {column}, got {other:?}"),
            }
            assert!(err.to_string().starts_with("key "), "{err}");
        }
    }
}
