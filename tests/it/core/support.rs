//! Helpers for the core tests: reading the logged SQL, and collecting scan results.
#![allow(dead_code)]

use diesel_chunked_iterator::Error;

use crate::common::{Post, QueryLog};

/// A logged statement's text and, when it ends with a literal `LIMIT n` (the
/// regular batches on PostgreSQL, see `tests/it/statements.rs`), the text before
/// `n` and `n` itself.
fn literal_limit(logged: &str) -> (&str, Option<&str>) {
    let text = logged.split(" -- binds: ").next().unwrap_or(logged);
    let digits = text.len() - text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, n) = text.split_at(text.len() - digits);
    if digits > 0 && head.ends_with(" LIMIT ") {
        (head, Some(n))
    } else {
        (text, None)
    }
}

/// The SQL of a logged statement without its binds, with identifier quotes removed
/// and placeholders written `?` on every backend, a literal `LIMIT` too:
/// `SELECT posts.id FROM posts WHERE posts.id > ? ORDER BY posts.id LIMIT ?`.
pub fn sql(logged: &str) -> String {
    let (text, limit) = literal_limit(logged);
    let owned;
    let text = if limit.is_some() {
        owned = format!("{text}?");
        owned.as_str()
    } else {
        text
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {}
            '$' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                }
                out.push('?');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The bind values of a logged statement, `Debug`-formatted (strings keep their
/// quotes), a literal `LIMIT` counted as the last one (as [`sql`] writes it `?`).
///
/// Splits on `", "`: fine for the numbers and simple strings these tests bind.
pub fn binds(logged: &str) -> Vec<String> {
    let mut out: Vec<String> = match logged.split_once(" -- binds: [") {
        Some((_, list)) => {
            let list = list.strip_suffix(']').unwrap_or(list);
            if list.is_empty() {
                Vec::new()
            } else {
                list.split(", ").map(str::to_string).collect()
            }
        }
        None => Vec::new(),
    };
    if let (_, Some(n)) = literal_limit(logged) {
        out.push(n.to_string());
    }
    out
}

/// The `LIMIT` of a logged batch: its last bind value.
pub fn limit_of(logged: &str) -> i64 {
    let b = binds(logged);
    let last = b.last().unwrap_or_else(|| panic!("no binds in {logged:?}"));
    last.parse()
        .unwrap_or_else(|e| panic!("last bind {last:?} of {logged:?} is not a LIMIT: {e}"))
}

/// The `LIMIT` of every logged SELECT, in order.
pub fn limits(log: &QueryLog) -> Vec<i64> {
    log.selects().iter().map(|q| limit_of(q)).collect()
}

/// The SQL (see [`sql`]) of every logged SELECT, in order.
pub fn select_sql(log: &QueryLog) -> Vec<String> {
    log.selects().iter().map(|q| sql(q)).collect()
}

/// A short description of a log for assertion messages: the count and the first
/// and last statements (a 7000-row scan logs too much to print whole).
pub fn summary(log: &QueryLog) -> String {
    let all = log.all();
    match all.len() {
        0 => "no statements".to_string(),
        1..=6 => format!("{} statements: {all:#?}", all.len()),
        n => format!(
            "{n} statements; first: {:?}; last: {:?}",
            all[0],
            all[n - 1]
        ),
    }
}

/// Unwraps every item of a scan, panicking with the error's message.
pub fn collect_ok<T>(it: impl Iterator<Item = Result<T, Error>>) -> Vec<T> {
    it.map(|r| r.unwrap_or_else(|e| panic!("scan failed: {e}")))
        .collect()
}

/// The ids of some posts, in order.
pub fn ids(posts: &[Post]) -> Vec<i32> {
    posts.iter().map(|p| p.id).collect()
}

/// The ids of posts, batch by batch.
pub fn batch_ids(batches: &[Vec<Post>]) -> Vec<Vec<i32>> {
    batches.iter().map(|b| ids(b)).collect()
}

/// The sizes of batches.
pub fn sizes<T>(batches: &[Vec<T>]) -> Vec<usize> {
    batches.iter().map(Vec::len).collect()
}

/// Ids with gaps, in ascending order: 30 of them between 1 and 200.
pub const GAPPY_IDS: [i32; 30] = [
    1, 2, 5, 9, 10, 11, 13, 17, 18, 24, 25, 26, 31, 40, 41, 43, 50, 51, 52, 60, 77, 78, 79, 80,
    100, 101, 150, 151, 152, 200,
];

/// `v` in descending order.
pub fn reversed<T: Clone>(v: &[T]) -> Vec<T> {
    v.iter().rev().cloned().collect()
}

/// Panics if a value occurs twice in `v`.
pub fn assert_no_duplicates<T: Ord + Clone + std::fmt::Debug>(v: &[T]) {
    let mut sorted = v.to_vec();
    sorted.sort();
    for w in sorted.windows(2) {
        assert_ne!(w[0], w[1], "{:?} was yielded twice in {v:?}", w[0]);
    }
}

/// The seek predicate of a first batch with no start key, as [`sql`] writes it:
/// `1 = 1`, on MySQL/MariaDB the floor of the first key column
/// (`posts.id >= (SELECT MIN(posts.id) FROM posts)`, `<= MAX` descending).
pub fn first_predicate(backend: &str, key: &str, desc: bool) -> String {
    if backend != "mysql" {
        return "1 = 1".to_string();
    }
    let column = key.split(", ").next().unwrap_or(key);
    let table = column.rsplit_once('.').map_or(column, |(t, _)| t);
    let (op, agg) = if desc { ("<=", "MAX") } else { (">=", "MIN") };
    format!("{column} {op} (SELECT {agg}({column}) FROM {table})")
}
