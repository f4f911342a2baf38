// A UNION is not one SELECT: the scan cannot page through it as a whole.
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

diesel::table! {
    posts (id) {
        id -> Integer,
        title -> Text,
        score -> Nullable<Integer>,
    }
}

#[allow(dead_code)]
#[derive(Queryable, Selectable)]
#[diesel(table_name = posts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct Post {
    id: i32,
    title: String,
    score: Option<i32>,
}

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .select(posts::id)
        .union(posts::table.select(posts::id))
        .chunked_by(posts::id)
        .load_iter_keyed(conn, |id: &i32| *id);
}
