// Shared set-up for the doc tests: an in-memory SQLite database with five posts.
use diesel::prelude::*;

diesel::table! {
    posts (id) {
        id -> Integer,
        title -> Text,
        published -> Bool,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = posts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct Post {
    id: i32,
    title: String,
    published: bool,
}

#[allow(dead_code)]
fn doc_connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    fill(&mut conn);
    conn
}

#[allow(dead_code)]
fn fill(conn: &mut SqliteConnection) {
    diesel::sql_query(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY NOT NULL, title TEXT NOT NULL, published BOOLEAN NOT NULL)",
    )
    .execute(conn)
    .expect("create table");
    diesel::sql_query(
        "INSERT INTO posts VALUES (1, 'one', 1), (2, 'two', 0), (3, 'three', 1), (4, 'four', 0), (5, 'five', 1)",
    )
    .execute(conn)
    .expect("insert rows");
}
