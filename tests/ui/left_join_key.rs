// A key from the nullable side of a LEFT JOIN is NULL in the rows without a match: the scan
// would drop them, so it must not compile (as it does not for `load_iter::<M>`).
include!("common/schema.rs");

diesel::table! {
    comments (id) {
        id -> Integer,
        post_id -> Integer,
    }
}

diesel::joinable!(comments -> posts (post_id));
diesel::allow_tables_to_appear_in_same_query!(posts, comments);

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .left_join(comments::table)
        .select((posts::id, comments::id.nullable()))
        .chunked_by(comments::id)
        .load_iter_keyed(conn, |r: &(i32, Option<i32>)| r.1.unwrap_or_default());
    // the planning calls too
    let _parts = posts::table
        .left_join(comments::table)
        .chunked_by(comments::id)
        .partitions(2, conn);
}
