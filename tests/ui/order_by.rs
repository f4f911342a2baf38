// A query with its own ORDER BY cannot be scanned: the scan orders by its key.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .order(posts::title)
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
