//! The plans the backends choose for a batch: every batch of a composite-key scan
//! must be an index range scan in key order, not a full scan with a sort.
//!
//! The batch SQL is taken from the statement the scan really ran (through Diesel's
//! instrumentation), its placeholders replaced by the literals the test passed,
//! and handed to `EXPLAIN`.
#![cfg(feature = "chrono")]

use crate::common;

use common::*;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_chunked_iterator::prelude::*;

#[derive(QueryableByName, Debug)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    line: String,
}

/// The SQL of the one batch in `log`, without the binds comment.
///
/// On MySQL/MariaDB a composite-key scan reads the indexes first (a schema read,
/// not in `selects()`); on SQLite a timestamp start key given as a Rust value is
/// checked first against the row just before it (the probe: the excluded side,
/// nearest first, one row).
fn batch_sql(log: &QueryLog) -> String {
    let mut selects = log.selects();
    if selects.len() == 2 {
        let probe = selects.remove(0);
        assert!(
            (probe.contains(") <= (") && probe.contains(" DESC"))
                || (probe.contains(") >= (") && !probe.contains(" DESC")),
            "{probe}"
        );
    }
    assert_eq!(selects.len(), 1, "{selects:#?}");
    selects[0].split(" -- binds:").next().unwrap().to_string()
}

/// Replaces `$1, $2, …` (PostgreSQL) or `?` (MySQL, SQLite) with `literals`, in order.
fn inline(sql: &str, literals: &[&str]) -> String {
    let mut out = sql.to_string();
    if out.contains("$1") {
        for (i, lit) in literals.iter().enumerate().rev() {
            out = out.replace(&format!("${}", i + 1), lit);
        }
    } else {
        for lit in literals {
            out = out.replacen('?', lit, 1);
        }
    }
    out
}

/// 20,000 rows, 4 per created_at value: the composite index is the way in.
fn crowded_posts() -> Vec<Post> {
    (1..=20_000)
        .map(|id| Post {
            created_at: ts(i64::from(id / 4) * 60),
            body: "x".repeat(100),
            ..post(id)
        })
        .collect()
}

/// Runs one batch of a `(created_at, id)` scan after `(ts(60_000), 9)` on
/// `$conn` and evaluates to its SQL with the binds inlined.
macro_rules! composite_batch {
    ($conn:expr, $desc:expr) => {{
        let log = QueryLog::install($conn);
        let c = posts::table
            .chunked_by((posts::created_at, posts::id))
            .start_after((ts(60_000), 9))
            .batch_size(500)
            .limit_total(500);
        let c = if $desc { c.desc() } else { c };
        assert_eq!(c.load_iter::<Post>(&mut *$conn).count(), 500);
        with_literals(&batch_sql(&log))
    }};
}

/// Inlines the binds of the batch after `(ts(60_000), 9)` with `LIMIT 501` (the
/// 500 rows of the batch and the look-ahead row, as the scan binds it; PostgreSQL
/// writes it into the statement already).
fn with_literals(sql: &str) -> String {
    let stamp = "'2026-01-01 16:40:00'";
    assert_eq!(ts(60_000).to_string(), "2026-01-01 16:40:00");
    // row values bind each key part once; the expanded form (MySQL) binds
    // created_at three times and id once
    let n = sql.matches('?').count().max(sql.matches('$').count());
    let literals: Vec<&str> = match n {
        2 if sql.ends_with(" LIMIT 501") => vec![stamp, "9"],
        3 => vec![stamp, "9", "501"],
        5 => vec![stamp, stamp, stamp, "9", "501"],
        other => panic!("unexpected number of binds {other} in {sql}"),
    };
    inline(sql, &literals)
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_batches_are_index_range_scans() {
    let db = <Pg as TestBackend>::create();
    let mut conn = connect::<Pg>(&db);
    insert_post_rows(&mut conn, &crowded_posts());
    diesel::sql_query("ANALYZE posts")
        .execute(&mut conn)
        .unwrap();
    for desc in [false, true] {
        let sql = composite_batch!(&mut conn, desc);
        assert!(
            sql.contains("(\"posts\".\"created_at\", \"posts\".\"id\") "),
            "{sql}"
        );
        let plan = explain_pg(&mut conn, &sql);
        assert!(
            plan.contains("Index Scan") && plan.contains("posts_created_at_id"),
            "{plan}"
        );
        assert!(plan.contains("Index Cond: (ROW(created_at, id)"), "{plan}");
        assert!(
            !plan.contains("Sort") && !plan.contains("Seq Scan"),
            "{plan}"
        );
    }
}

#[cfg(feature = "mysql")]
#[derive(QueryableByName, Debug)]
struct MysqlPlan {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>, column_name = "type")]
    access: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>, column_name = "Extra")]
    extra: Option<String>,
}

/// `EXPLAIN` of `sql` on MySQL/MariaDB, a row per table read.
#[cfg(feature = "mysql")]
fn mysql_plan(conn: &mut MysqlConnection, sql: &str) -> Vec<MysqlPlan> {
    diesel::sql_query(format!("EXPLAIN {sql}"))
        .load::<MysqlPlan>(conn)
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_batches_are_index_range_scans() {
    let db = <Mysql as TestBackend>::create();
    let mut conn = connect::<Mysql>(&db);
    insert_post_rows(&mut conn, &crowded_posts());
    diesel::sql_query("ANALYZE TABLE posts")
        .execute(&mut conn)
        .unwrap();
    for desc in [false, true] {
        let sql = composite_batch!(&mut conn, desc);
        // the expanded form, with a leading range on the first index column
        let lead = if desc {
            "(`posts`.`created_at` <= "
        } else {
            "(`posts`.`created_at` >= "
        };
        assert!(sql.contains(lead), "{sql}");
        let plan = mysql_plan(&mut conn, &sql);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].access.as_deref(), Some("range"), "{plan:?}");
        assert_eq!(
            plan[0].key.as_deref(),
            Some("posts_created_at_id"),
            "{plan:?}"
        );
        let extra = plan[0].extra.clone().unwrap_or_default();
        assert!(!extra.contains("filesort"), "{plan:?}");
    }
}

/// The first batch of a scan with no start key has no bound to give MariaDB a
/// range: with `1 = 1` it reads a batch of 10% of the table by a full scan and
/// a sort of every row. The scan bounds it by the key's minimum instead.
#[cfg(feature = "mysql")]
#[test]
fn mysql_first_batch_is_an_index_range_scan() {
    let db = <Mysql as TestBackend>::create();
    let mut conn = connect::<Mysql>(&db);
    insert_post_rows(&mut conn, &crowded_posts());
    diesel::sql_query("ANALYZE TABLE posts")
        .execute(&mut conn)
        .unwrap();
    for desc in [false, true] {
        let log = QueryLog::install(&mut conn);
        let c = posts::table
            .chunked_by((posts::created_at, posts::id))
            .batch_size(2_000)
            .limit_total(2_000);
        let c = if desc { c.desc() } else { c };
        let ids: Vec<i32> = c
            .load_iter::<Post>(&mut conn)
            .map(|p| p.unwrap().id)
            .collect();
        // the first 2,000 rows in key order, from either end
        let expected: Vec<i32> = if desc {
            (18_001..=20_000).rev().collect()
        } else {
            (1..=2_000).collect()
        };
        assert_eq!(ids, expected);
        let sql = batch_sql(&log);
        let floor = if desc {
            "WHERE `posts`.`created_at` <= (SELECT MAX(`posts`.`created_at`) FROM `posts`) ORDER BY"
        } else {
            "WHERE `posts`.`created_at` >= (SELECT MIN(`posts`.`created_at`) FROM `posts`) ORDER BY"
        };
        assert!(sql.contains(floor), "{sql}");
        let sql = inline(&sql, &["2001"]);
        let plans = mysql_plan(&mut conn, &sql);
        assert_eq!(
            plans.len(),
            2,
            "the statement and its MIN/MAX subquery: {plans:?}"
        );
        let plan = &plans[0];
        assert_eq!(plan.access.as_deref(), Some("range"), "{plan:?}");
        assert_eq!(plan.key.as_deref(), Some("posts_created_at_id"), "{plan:?}");
        assert!(
            !plan.extra.clone().unwrap_or_default().contains("filesort"),
            "{plan:?}"
        );
        // what the floor replaces: the same batch without a bound sorts the table
        let unbounded = sql.replace(&floor[6..floor.len() - 9], "1 = 1");
        let plan = mysql_plan(&mut conn, &unbounded);
        assert!(
            plan[0]
                .extra
                .clone()
                .unwrap_or_default()
                .contains("filesort"),
            "{unbounded}: {plan:?}"
        );
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_batches_search_the_index() {
    let db = <Sqlite as TestBackend>::create();
    let mut conn = connect::<Sqlite>(&db);
    insert_post_rows(&mut conn, &crowded_posts());
    diesel::sql_query("ANALYZE").execute(&mut conn).unwrap();
    for desc in [false, true] {
        let sql = composite_batch!(&mut conn, desc);
        let plan: Vec<String> = diesel::sql_query(format!(
            "SELECT detail AS line FROM (EXPLAIN QUERY PLAN {sql})"
        ))
        .load::<PlanLine>(&mut conn)
        .map(|v| v.into_iter().map(|l| l.line).collect())
        .unwrap_or_else(|_| explain_sqlite(&mut conn, &sql));
        let plan = plan.join("\n");
        assert!(
            plan.contains("SEARCH posts USING INDEX posts_created_at_id"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}

#[cfg(feature = "sqlite")]
fn explain_sqlite(conn: &mut diesel::SqliteConnection, sql: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
        .load::<Row>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.detail)
        .collect()
}
