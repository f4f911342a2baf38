// A nullable column cannot be a key: NULLs do not compare, so rows would be skipped.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .chunked_by(posts::score)
        .load_iter::<Post>(conn);
}
