// A query with its own OFFSET cannot be scanned: a keyset scan never uses OFFSET (use .start_after(key)).
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .offset(10)
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
