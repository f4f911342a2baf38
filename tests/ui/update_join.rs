// `update_all` / `delete_all` need a query of one table: a join cannot be the target of
// an UPDATE or a DELETE. The error must point to `for_each_batch`.
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

diesel::table! {
    posts (id) {
        id -> Integer,
        user_id -> Integer,
        title -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> Integer,
        name -> Text,
    }
}

diesel::joinable!(posts -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(posts, users);

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _ = posts::table
        .inner_join(users::table)
        .chunked_by(posts::id)
        .update_all(conn, posts::title.eq("x"));
    let _ = posts::table
        .inner_join(users::table)
        .chunked_by(posts::id)
        .delete_all(conn);
}
