//! What can move a key that `update_all`'s `SET` list leaves alone, read from
//! the schema once per job.
//!
//! - A generated key column (PostgreSQL `GENERATED ALWAYS AS (..) STORED`,
//!   SQLite and MySQL/MariaDB stored or virtual columns): every `UPDATE`
//!   computes it again, so the job is refused before it writes anything.
//! - A MySQL/MariaDB key column with `ON UPDATE CURRENT_TIMESTAMP`: the same.
//! - An `UPDATE` trigger (and, on PostgreSQL, an `UPDATE` rule) may change the
//!   key of the rows it fires for: each batch then counts the table's rows in
//!   its key range before and after its `UPDATE` (see `write.rs`), and stops
//!   the job when rows left the range. On MySQL/MariaDB only a `BEFORE UPDATE`
//!   trigger can change the row being updated (`SET NEW.k = ..`; a trigger
//!   cannot write its own table), and only by naming the column, so a trigger
//!   whose body never names a key column is left out.

use diesel::sql_types::{Nullable, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl};

/// Something in a table's schema that can change a key column of the rows an
/// `UPDATE` writes, although the `UPDATE`'s `SET` list does not name it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct MoveCause {
    /// [`GENERATED`], [`ON_UPDATE`], [`TRIGGER`] or [`RULE`].
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// The key column, trigger or rule.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The column's expression, or the trigger's statement, when known.
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
}

/// A key column every `UPDATE` computes again.
pub(crate) const GENERATED: &str = "generated";
/// A MySQL/MariaDB key column set to the current time by every `UPDATE`.
pub(crate) const ON_UPDATE: &str = "on update";
/// A trigger that fires on `UPDATE`.
pub(crate) const TRIGGER: &str = "trigger";
/// A PostgreSQL rule on `UPDATE`.
pub(crate) const RULE: &str = "rule";

/// What a job does about the causes of its table.
#[derive(Debug, Default)]
pub(crate) struct MoveWatch {
    /// Why the job is refused before it writes anything.
    pub(crate) refused: Option<String>,
    /// The triggers and rules that may move keys: each batch checks its range.
    pub(crate) watched: Vec<String>,
}

impl MoveWatch {
    /// The verdict on `causes`, for the key column(s) `columns` of `table`.
    pub(crate) fn new(table: &str, causes: Vec<MoveCause>) -> Self {
        let mut watch = MoveWatch::default();
        for c in causes {
            let column = format!("{table}.{}", c.name);
            let advice = "rows the update moves ahead of the scan would be updated again in a \
                          later batch; scan by a key the update cannot change, such as the \
                          primary key";
            match c.kind.as_str() {
                GENERATED if watch.refused.is_none() => {
                    let expr = c
                        .detail
                        .map(|d| format!(" ({})", d.trim()))
                        .unwrap_or_default();
                    watch.refused = Some(format!(
                        "{column} is a generated column{expr}: every UPDATE computes it \
                         again, whatever the SET list says, so {advice}, or by the column(s) \
                         it is computed from"
                    ));
                }
                ON_UPDATE if watch.refused.is_none() => {
                    watch.refused = Some(format!(
                        "{column} is set to the current time by every UPDATE that changes a \
                         row (ON UPDATE CURRENT_TIMESTAMP), whatever the SET list says, so \
                         {advice}"
                    ));
                }
                TRIGGER => watch.watched.push(format!("trigger {}", c.name)),
                RULE => watch.watched.push(format!("rule {}", c.name)),
                _ => {}
            }
        }
        watch
    }
}

/// The decisions of a batch's `UPDATE` on a table whose triggers may move
/// keys: the table's rows in the batch's key range (whatever the query's
/// filters) are counted before the `UPDATE` and after it, in a savepoint.
/// Fewer after means the `UPDATE` moved keys out of the range, or another
/// transaction deleted rows of it in between; the `UPDATE` is rolled back to
/// the savepoint and the range counted again to tell which. When the range is
/// as it was, the rows left because of the `UPDATE`: a move. Otherwise the
/// `UPDATE` runs again against the new count (three times at most, then a
/// move: the range never held still). Rows another writer adds to the range
/// while the `UPDATE` runs can hide a move in that batch, but a trigger that
/// moves keys moves them in the next batch too.
///
/// The drivers run the statements: count, then (in a savepoint) update and
/// [`updated`](Self::updated), and after a rollback count and
/// [`recounted`](Self::recounted).
#[derive(Debug)]
pub(crate) struct RangeGuard {
    before: i64,
    attempt: u32,
}

impl RangeGuard {
    /// How often the `UPDATE` runs before a range that keeps changing is
    /// taken as moved.
    const ATTEMPTS: u32 = 3;

    /// The range held `before` rows before the first `UPDATE`.
    pub(crate) fn new(before: i64) -> Self {
        Self { before, attempt: 1 }
    }

    /// The range holds `after` rows after the `UPDATE`: `Err(rows moved)`
    /// when fewer (roll the savepoint back and recount).
    pub(crate) fn updated(&self, after: i64) -> Result<(), u64> {
        match after < self.before {
            true => Err(u64::try_from(self.before - after).unwrap_or(0)),
            false => Ok(()),
        }
    }

    /// After `moved` rows left the range and the `UPDATE` was rolled back,
    /// the range holds `again`: `Err(moved)` when the `UPDATE` moved them
    /// (or the range never held still), `Ok` to run the `UPDATE` again.
    pub(crate) fn recounted(&mut self, moved: u64, again: i64) -> Result<(), u64> {
        if again == self.before || self.attempt >= Self::ATTEMPTS {
            return Err(moved);
        }
        self.before = again;
        self.attempt += 1;
        Ok(())
    }
}

/// The causes of a SQLite table (see [`UniqueIndexes::key_move_causes`](crate::UniqueIndexes)).
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_causes(
    conn: &mut diesel::SqliteConnection,
    schema: Option<&str>,
    table: &str,
    columns: &[&str],
) -> QueryResult<Vec<MoveCause>> {
    // `hidden` is 2 for a virtual and 3 for a stored generated column.
    let generated = "SELECT 'generated' AS kind, name, NULL AS detail \
                     FROM pragma_table_xinfo(?1{schema}) WHERE hidden IN (2, 3)";
    // A trigger of the table's own schema, or a TEMP trigger on it.
    let triggers = "SELECT 'trigger' AS kind, name, sql AS detail FROM {master} \
                    WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE";
    let rows = match schema {
        None => diesel::sql_query(format!(
            "{} UNION ALL {} UNION ALL {}",
            generated.replace("{schema}", ""),
            triggers.replace("{master}", "main.sqlite_master"),
            triggers.replace("{master}", "temp.sqlite_master"),
        ))
        .bind::<Text, _>(table)
        .load::<MoveCause>(conn)?,
        Some(schema) => {
            let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
            diesel::sql_query(format!(
                "{} UNION ALL {} UNION ALL {}",
                generated.replace("{schema}", ", ?2"),
                triggers.replace("{master}", &format!("{quoted}.sqlite_master")),
                triggers.replace("{master}", "temp.sqlite_master"),
            ))
            .bind::<Text, _>(table)
            .bind::<Text, _>(schema)
            .load::<MoveCause>(conn)?
        }
    };
    Ok(rows
        .into_iter()
        .filter(|c| match c.kind.as_str() {
            GENERATED => columns.iter().any(|k| k.eq_ignore_ascii_case(&c.name)),
            _ => c.detail.as_deref().is_some_and(sqlite_fires_on_update),
        })
        .collect())
}

/// Whether the `CREATE TRIGGER` statement `sql` fires on `UPDATE`: its
/// header, up to `ON <table>`, names the event.
#[cfg(feature = "sqlite")]
fn sqlite_fires_on_update(sql: &str) -> bool {
    use crate::unique::sql::{tokenize, Tok};
    let Some(toks) = tokenize(sql) else {
        // unreadable: watch it
        return true;
    };
    let word = |t: &Tok, w: &str| matches!(t, Tok::Word(x) if x.eq_ignore_ascii_case(w));
    toks.iter()
        .take_while(|t| !word(t, "ON"))
        .any(|t| word(t, "UPDATE"))
}

/// The causes of a PostgreSQL table: its generated key columns, its enabled
/// `UPDATE` triggers (row or statement, `BEFORE` or `AFTER`: a trigger
/// function can write its own table) and its `UPDATE` rules.
#[cfg(feature = "postgres")]
pub(crate) const PG_CAUSES: &str = "\
     WITH rel AS (SELECT to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2) \
                  ELSE quote_ident($1) || '.' || quote_ident($2) END) AS oid) \
     SELECT 'generated' AS kind, a.attname::text AS name, \
            pg_get_expr(d.adbin, d.adrelid) AS detail \
     FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid \
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE a.attgenerated <> '' AND NOT a.attisdropped AND a.attname::text = ANY($3) \
     UNION ALL \
     SELECT 'trigger', t.tgname::text, NULL FROM rel JOIN pg_trigger t ON t.tgrelid = rel.oid \
     WHERE NOT t.tgisinternal AND (t.tgtype::int & 16) <> 0 AND t.tgenabled <> 'D' \
     UNION ALL \
     SELECT 'rule', r.rulename::text, NULL FROM rel JOIN pg_rewrite r ON r.ev_class = rel.oid \
     WHERE r.ev_type = '2'";

/// The causes of a PostgreSQL table (see [`PG_CAUSES`]).
#[cfg(feature = "postgres")]
pub(crate) fn pg_causes(
    conn: &mut diesel::PgConnection,
    schema: Option<&str>,
    table: &str,
    columns: &[&str],
) -> QueryResult<Vec<MoveCause>> {
    use diesel::sql_types::Array;
    diesel::sql_query(PG_CAUSES)
        .bind::<Nullable<Text>, _>(schema)
        .bind::<Text, _>(table)
        .bind::<Array<Text>, _>(columns)
        .load::<MoveCause>(conn)
}

/// The causes of a MySQL/MariaDB table: its generated and `ON UPDATE` key
/// columns, and its `BEFORE UPDATE` triggers with their statements.
#[cfg(feature = "mysql")]
pub(crate) const MYSQL_CAUSES: &str = "\
     SELECT CAST(IF(COALESCE(GENERATION_EXPRESSION, '') <> '', 'generated', 'on update') AS CHAR) \
            AS kind, CAST(COLUMN_NAME AS CHAR) AS name, \
            CAST(NULLIF(GENERATION_EXPRESSION, '') AS CHAR) AS detail \
     FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
       AND (COALESCE(GENERATION_EXPRESSION, '') <> '' OR EXTRA LIKE '%on update%') \
     UNION ALL \
     SELECT CAST('trigger' AS CHAR), CAST(TRIGGER_NAME AS CHAR), CAST(ACTION_STATEMENT AS CHAR) \
     FROM information_schema.TRIGGERS \
     WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ? \
       AND EVENT_MANIPULATION = 'UPDATE' AND ACTION_TIMING = 'BEFORE'";

/// The causes of a MySQL/MariaDB table (see [`MYSQL_CAUSES`]): a trigger
/// counts only when its statement names a key column.
#[cfg(feature = "mysql")]
pub(crate) fn mysql_causes(
    conn: &mut diesel::MysqlConnection,
    schema: Option<&str>,
    table: &str,
    columns: &[&str],
) -> QueryResult<Vec<MoveCause>> {
    let rows = diesel::sql_query(MYSQL_CAUSES)
        .bind::<Nullable<Text>, _>(schema)
        .bind::<Text, _>(table)
        .bind::<Nullable<Text>, _>(schema)
        .bind::<Text, _>(table)
        .load::<MoveCause>(conn)?;
    Ok(mysql_relevant(rows, columns))
}

/// The causes of [`MYSQL_CAUSES`] that concern the key `columns`.
#[cfg(feature = "mysql")]
pub(crate) fn mysql_relevant(rows: Vec<MoveCause>, columns: &[&str]) -> Vec<MoveCause> {
    rows.into_iter()
        .filter(|c| match c.kind.as_str() {
            TRIGGER => {
                let body = c.detail.as_deref().unwrap_or_default().to_lowercase();
                columns
                    .iter()
                    .any(|k| c.detail.is_none() || body.contains(&k.to_lowercase()))
            }
            _ => columns.iter().any(|k| k.eq_ignore_ascii_case(&c.name)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(kind: &str, name: &str, detail: Option<&str>) -> MoveCause {
        MoveCause {
            kind: kind.into(),
            name: name.into(),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn generated_and_on_update_key_columns_are_refused_triggers_watched() {
        let w = MoveWatch::new("t", vec![cause(GENERATED, "k", Some("(n * 2)"))]);
        let reason = w.refused.unwrap();
        assert!(
            reason.starts_with("t.k is a generated column ((n * 2))"),
            "{reason}"
        );
        let w = MoveWatch::new("t", vec![cause(ON_UPDATE, "at", None)]);
        assert!(w.refused.unwrap().contains("ON UPDATE CURRENT_TIMESTAMP"));
        let w = MoveWatch::new("t", vec![cause(TRIGGER, "a", None), cause(RULE, "b", None)]);
        assert!(w.refused.is_none());
        assert_eq!(w.watched, ["trigger a", "rule b"]);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_update_triggers_are_told_by_their_header() {
        for sql in [
            "CREATE TRIGGER a AFTER UPDATE ON t BEGIN SELECT 1; END",
            "CREATE TRIGGER a BEFORE UPDATE OF x, y ON t BEGIN SELECT 1; END",
            "create temp trigger if not exists \"on\" update on \"t\" begin select 1; end",
        ] {
            assert!(sqlite_fires_on_update(sql), "{sql}");
        }
        for sql in [
            "CREATE TRIGGER a AFTER INSERT ON t BEGIN UPDATE t SET k = 1; END",
            "CREATE TRIGGER \"update\" AFTER DELETE ON t BEGIN UPDATE t SET k = 1; END",
        ] {
            assert!(!sqlite_fires_on_update(sql), "{sql}");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_causes_of_main_temp_and_attached_tables() {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(
            "ATTACH ':memory:' AS \"ot\"\"her\"; \
             CREATE TABLE g (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, \
                k INTEGER GENERATED ALWAYS AS (n * 2) STORED, v INTEGER AS (n + 1)); \
             CREATE TRIGGER g_ins AFTER INSERT ON g BEGIN UPDATE g SET n = 1; END; \
             CREATE TEMP TRIGGER g_upd AFTER UPDATE ON main.g BEGIN SELECT 1; END; \
             CREATE TABLE \"ot\"\"her\".g (id INTEGER PRIMARY KEY, k INTEGER NOT NULL); \
             CREATE TRIGGER \"ot\"\"her\".g_upd2 BEFORE UPDATE OF k ON g BEGIN SELECT 1; END;",
        )
        .unwrap();
        let names = |causes: Vec<MoveCause>| -> Vec<(String, String)> {
            causes.into_iter().map(|c| (c.kind, c.name)).collect()
        };
        let main = sqlite_causes(&mut conn, None, "g", &["K"]).unwrap();
        assert_eq!(
            names(main),
            [
                (GENERATED.into(), "k".into()),
                (TRIGGER.into(), "g_upd".into())
            ]
        );
        let main = sqlite_causes(&mut conn, None, "g", &["id"]).unwrap();
        assert_eq!(names(main), [(TRIGGER.into(), "g_upd".into())]);
        let other = sqlite_causes(&mut conn, Some("ot\"her"), "g", &["k"]).unwrap();
        // the TEMP trigger is on main.g, but names only its table: kept (a
        // check too many costs a count, never a wrong answer)
        assert_eq!(
            names(other),
            [
                (TRIGGER.into(), "g_upd2".into()),
                (TRIGGER.into(), "g_upd".into())
            ]
        );
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_triggers_count_when_they_name_a_key_column() {
        let rows = vec![
            cause(TRIGGER, "moves", Some("SET NEW.`K` = NEW.k + 1")),
            cause(TRIGGER, "stamps", Some("SET NEW.updated_at = NOW()")),
            cause(GENERATED, "other", Some("`n` * 2")),
            cause(GENERATED, "K", Some("`n` * 2")),
        ];
        let kept: Vec<String> = mysql_relevant(rows, &["k", "id"])
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(kept, ["moves", "K"]);
    }
}
