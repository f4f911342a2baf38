// A UNION is not one SELECT: the scan cannot page through it as a whole.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .select(posts::id)
        .union(posts::table.select(posts::id))
        .chunked_by(posts::id)
        .load_iter_keyed(conn, |id: &i32| *id);
}
