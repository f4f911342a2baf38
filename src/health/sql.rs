//! The statements that read the health signals, on each backend, and the
//! readings made of their rows.

use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel::QueryableByName;

use super::Reading;

/// The signals this crate reads itself (public in a private module: it is
/// named by [`ReadHealth`], which seals a public trait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ReplicaLag,
    ReplicaLagBytes,
    ThreadsRunning,
    HistoryListLength,
    Autovacuum,
    /// Replica lag from a heartbeat table (pt-heartbeat's), read on replicas.
    HeartbeatLag,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::ReplicaLag | Kind::HeartbeatLag => "replica_lag",
            Kind::ReplicaLagBytes => "replica_lag_bytes",
            Kind::ThreadsRunning => "mysql_threads_running",
            Kind::HistoryListLength => "mysql_history_list_length",
            Kind::Autovacuum => "pg_autovacuum_on_table",
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Kind::ReplicaLag | Kind::HeartbeatLag => " s",
            Kind::ReplicaLagBytes => " bytes",
            _ => "",
        }
    }
}

/// Why a signal gave no readings.
#[derive(Debug, Clone, PartialEq)]
pub enum Unread {
    /// It can be read later (the server is unreachable, replication stopped).
    Failed(String),
    /// It does not exist where it was asked for.
    Unsupported(String),
}

/// How a signal is read on one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Statement {
    /// A `SELECT` of `source`, `value`, `note` rows (a `note` says why the
    /// row's value cannot be read); `table`: whether it binds the job's table.
    Values {
        sql: &'static str,
        table: bool,
        /// Why no row is unreadable.
        empty: &'static str,
    },
    /// A `SHOW GLOBAL STATUS LIKE ..` of one variable.
    Status(&'static str),
    /// `SHOW SLAVE STATUS`.
    ReplicaStatus,
    /// The age of the newest `ts` of the heartbeat table named by the
    /// statement's `table` (quoted by [`quote_table`]), as `Values`.
    Heartbeat,
}

/// A PostgreSQL statement on the primary: a row per standby of
/// `pg_stat_replication` with the value `$value` (SQL), unreadable when the
/// role cannot see the standby or `$when` (more `WHEN .. THEN '<why>'`
/// clauses) says so; and an unreadable row per physical replication slot no
/// standby uses (its standby is gone).
macro_rules! per_standby {
    ($value:literal, $when:literal) => {
        concat!(
            "SELECT coalesce(nullif(application_name, ''), host(client_addr), 'pid ' || pid) AS source, ",
            $value,
            " AS value, CASE WHEN state IS NULL THEN 'pg_stat_replication hides this standby from \
             the role (grant it pg_monitor)' ",
            $when,
            " END AS note FROM pg_stat_replication \
             UNION ALL SELECT slot_name::text, NULL::float8, \
             'replication slot ' || slot_name || ' is inactive: its standby is disconnected' \
             FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active"
        )
    };
}

/// The statement of `kind` on PostgreSQL, on the job's source or (`replica`)
/// on a standby.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn postgres(kind: Kind, replica: bool) -> Result<Statement, Unread> {
    Ok(match (kind, replica) {
        (Kind::ReplicaLag, false) => Statement::Values {
            // `replay_lag` is NULL on a standby that has nothing left to
            // replay and on one whose lag is not measured yet (just
            // connected, catching up): only the first reads 0.
            sql: per_standby!(
                "CASE WHEN replay_lag IS NOT NULL THEN extract(epoch FROM replay_lag)::float8 \
                 WHEN state = 'streaming' AND replay_lsn >= pg_current_wal_lsn() THEN 0::float8 END",
                "WHEN replay_lag IS NULL AND (state IS DISTINCT FROM 'streaming' OR replay_lsn IS NULL \
                 OR replay_lsn < pg_current_wal_lsn()) \
                 THEN 'its lag is not measured yet (state ' || coalesce(state, '?') || ')'"
            ),
            table: false,
            empty: "no standby is connected to this server (pg_stat_replication is empty)",
        },
        (Kind::ReplicaLagBytes, false) => Statement::Values {
            sql: per_standby!(
                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8",
                "WHEN replay_lsn IS NULL THEN 'the standby reports no replay position'"
            ),
            table: false,
            empty: "no standby is connected to this server (pg_stat_replication is empty)",
        },
        (Kind::ReplicaLag, true) => Statement::Values {
            // A standby whose WAL receiver is not streaming replays all it
            // received and then reads 0 while its primary moves on.
            sql: "SELECT coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'standby') AS source, \
                  CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                  WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
                  ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END::float8 AS value, \
                  CASE WHEN NOT pg_is_in_recovery() THEN 'this server is not a standby' \
                  WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') \
                  THEN 'its WAL receiver is not streaming from the primary' \
                  WHEN pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() \
                  AND pg_last_xact_replay_timestamp() IS NULL THEN 'the standby has replayed no transaction yet' END AS note",
            table: false,
            empty: "",
        },
        (Kind::ReplicaLagBytes, true) => Statement::Values {
            sql: "SELECT coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'standby') AS source, \
                  pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 AS value, \
                  CASE WHEN NOT pg_is_in_recovery() THEN 'this server is not a standby' \
                  WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') \
                  THEN 'its WAL receiver is not streaming from the primary' END AS note",
            table: false,
            empty: "",
        },
        (Kind::Autovacuum, false) => Statement::Values {
            // Without pg_read_all_stats, the progress rows of autovacuum
            // workers (the bootstrap superuser's) hide their table.
            sql: "SELECT 'source' AS source, count(v.pid)::float8 AS value, \
                  CASE WHEN to_regclass(quote_ident($1)) IS NULL THEN 'no table ' || quote_ident($1) \
                  WHEN EXISTS (SELECT 1 FROM pg_stat_progress_vacuum WHERE relid IS NULL) \
                  THEN 'pg_stat_progress_vacuum hides the tables of vacuums from the role \
                  (grant it pg_read_all_stats)' END AS note \
                  FROM (SELECT 1) one LEFT JOIN (pg_stat_progress_vacuum v \
                  JOIN pg_stat_activity a ON a.pid = v.pid AND a.backend_type = 'autovacuum worker') \
                  ON v.relid = to_regclass(quote_ident($1))",
            table: true,
            empty: "",
        },
        (Kind::Autovacuum, true) => {
            return Err(Unread::Unsupported(
                "autovacuum is read on the primary, the job's own source".into(),
            ))
        }
        (Kind::ThreadsRunning | Kind::HistoryListLength | Kind::HeartbeatLag, _) => {
            return Err(Unread::Unsupported("MySQL/MariaDB only".into()))
        }
    })
}

/// The statement of `kind` on MySQL/MariaDB, on the job's source or
/// (`replica`) on a replica.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn mysql(kind: Kind, replica: bool) -> Result<Statement, Unread> {
    Ok(match (kind, replica) {
        (Kind::ReplicaLag, true) => Statement::ReplicaStatus,
        (Kind::ReplicaLag, false) => {
            return Err(Unread::Unsupported(
                "MySQL/MariaDB replica lag is read on the replicas: name them with \
                 `replica_lag(..).on(&[&replica_pool])`"
                    .into(),
            ))
        }
        (Kind::HeartbeatLag, true) => Statement::Heartbeat,
        (Kind::HeartbeatLag, false) => {
            return Err(Unread::Unsupported(
                "a heartbeat table is read on the replicas: name them with \
                 `replica_lag(..).heartbeat(..)?.on(&[&replica_pool])`"
                    .into(),
            ))
        }
        (Kind::ThreadsRunning, _) => Statement::Status("SHOW GLOBAL STATUS LIKE 'Threads_running'"),
        (Kind::HistoryListLength, _) => Statement::Values {
            sql: "SELECT 'source' AS source, CAST(`COUNT` AS DOUBLE) AS value, \
                  CASE WHEN TIME_ENABLED IS NULL OR TIME_DISABLED >= TIME_ENABLED \
                  THEN 'the InnoDB counter trx_rseg_history_len is disabled \
                  (SET GLOBAL innodb_monitor_enable = ''trx_rseg_history_len'')' END AS note \
                  FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'",
            table: false,
            empty: "information_schema.INNODB_METRICS has no trx_rseg_history_len",
        },
        (Kind::ReplicaLagBytes | Kind::Autovacuum, _) => {
            return Err(Unread::Unsupported("PostgreSQL only".into()))
        }
    })
}

/// SQLite has no signal.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn sqlite(_: Kind, _: bool) -> Result<Statement, Unread> {
    Err(Unread::Unsupported(
        "SQLite has no replicas and no server load to read".into(),
    ))
}

#[derive(Debug, QueryableByName)]
pub struct ValueRow {
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Nullable<Double>)]
    value: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    note: Option<String>,
}

#[derive(Debug, QueryableByName)]
pub struct StatusRow {
    #[diesel(sql_type = Text, column_name = "Value")]
    value: String,
}

#[derive(Debug, QueryableByName)]
pub struct ReplicaRow {
    #[diesel(sql_type = Nullable<BigInt>, column_name = "Seconds_Behind_Master")]
    behind: Option<i64>,
    #[diesel(sql_type = Text, column_name = "Slave_IO_Running")]
    io: String,
    #[diesel(sql_type = Text, column_name = "Slave_SQL_Running")]
    sql: String,
    #[diesel(sql_type = Text, column_name = "Last_IO_Error")]
    io_error: String,
    #[diesel(sql_type = Text, column_name = "Last_SQL_Error")]
    sql_error: String,
}

/// The heartbeat statement on `table` (already quoted): the age of its
/// newest `ts` (pt-heartbeat writes it as `2026-12-07T02:30:00.123456`, in
/// UTC with `--utc`), in seconds by the replica's UTC clock.
pub(crate) fn heartbeat_sql(table: &str) -> String {
    format!(
        "SELECT 'source' AS source, CAST(TIMESTAMPDIFF(MICROSECOND, \
         CAST(REPLACE(MAX(ts), 'T', ' ') AS DATETIME(6)), UTC_TIMESTAMP(6)) AS DOUBLE) / 1000000 AS value, \
         CASE WHEN MAX(ts) IS NULL THEN 'the heartbeat table is empty' \
         WHEN TIMESTAMPDIFF(MICROSECOND, CAST(REPLACE(MAX(ts), 'T', ' ') AS DATETIME(6)), UTC_TIMESTAMP(6)) < -1000000 \
         THEN 'its newest heartbeat is in the future: is it written in UTC (pt-heartbeat --utc)?' END AS note \
         FROM {table}"
    )
}

/// `db.table` or `table` quoted for MySQL/MariaDB, or why it is not a plain
/// table name.
pub(crate) fn quote_table(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(format!(
            "{name:?} is not a table name of letters, digits, `_` and `$` (optionally `db.table`)"
        ));
    }
    let quoted: Vec<String> = parts.iter().map(|p| format!("`{p}`")).collect();
    Ok(quoted.join("."))
}

/// A row of MySQL 8.4's `SHOW REPLICA STATUS`.
#[derive(Debug, QueryableByName)]
pub struct SourceReplicaRow {
    #[diesel(sql_type = Nullable<BigInt>, column_name = "Seconds_Behind_Source")]
    behind: Option<i64>,
    #[diesel(sql_type = Text, column_name = "Replica_IO_Running")]
    io: String,
    #[diesel(sql_type = Text, column_name = "Replica_SQL_Running")]
    sql: String,
    #[diesel(sql_type = Text, column_name = "Last_IO_Error")]
    io_error: String,
    #[diesel(sql_type = Text, column_name = "Last_SQL_Error")]
    sql_error: String,
}

impl From<SourceReplicaRow> for ReplicaRow {
    fn from(r: SourceReplicaRow) -> Self {
        Self {
            behind: r.behind,
            io: r.io,
            sql: r.sql,
            io_error: r.io_error,
            sql_error: r.sql_error,
        }
    }
}

/// The rows a [`Statement`] returned.
#[derive(Debug)]
pub enum Rows {
    Values(Vec<ValueRow>),
    Status(Vec<StatusRow>),
    Replica(Vec<ReplicaRow>),
}

/// The readings of `kind` against `limit` in `rows`; `label` names the
/// server where the rows do not.
pub(crate) fn readings(
    kind: Kind,
    limit: f64,
    statement: &Statement,
    rows: Rows,
    label: &str,
) -> Result<Vec<Reading>, Unread> {
    let unit = kind.unit();
    let reading = |source: &str, value: f64| Reading::new(source, value, limit).unit(unit);
    let failed = |why: String| Err(Unread::Failed(why));
    match rows {
        Rows::Values(rows) => {
            if rows.is_empty() {
                let empty = match statement {
                    Statement::Values { empty, .. } => *empty,
                    _ => "",
                };
                return failed(empty.to_string());
            }
            rows.into_iter()
                .map(|r| {
                    let source = if r.source == "source" {
                        label
                    } else {
                        &r.source
                    };
                    match (r.value, r.note) {
                        (_, Some(note)) => Err(Unread::Failed(format!("{source}: {note}"))),
                        (None, None) => Err(Unread::Failed(format!("{source}: no value"))),
                        (Some(v), None) => Ok(reading(source, v)),
                    }
                })
                .collect()
        }
        Rows::Status(rows) => match rows.first() {
            Some(r) => match r.value.trim().parse::<f64>() {
                Ok(v) => Ok(vec![reading(label, v)]),
                Err(_) => failed(format!(
                    "{label}: status value {:?} is not a number",
                    r.value
                )),
            },
            None => failed(format!("{label}: the status variable is missing")),
        },
        Rows::Replica(rows) => {
            if rows.is_empty() {
                return failed(format!(
                    "{label}: not a replica (SHOW SLAVE STATUS is empty)"
                ));
            }
            // every replication channel (a multi-source replica has several)
            rows.iter()
                .map(|r| match r.behind {
                    Some(s) => Ok(reading(label, s as f64)),
                    None => {
                        let errors: Vec<&str> = [r.io_error.as_str(), r.sql_error.as_str()]
                            .into_iter()
                            .filter(|e| !e.is_empty())
                            .collect();
                        Err(Unread::Failed(format!(
                            "{label}: replication is not running (Slave_IO_Running: {}, \
                             Slave_SQL_Running: {}){}",
                            r.io,
                            r.sql,
                            match errors.is_empty() {
                                true => String::new(),
                                false => format!(": {}", errors.join("; ")),
                            }
                        )))
                    }
                })
                .collect()
        }
    }
}

/// Reads a signal on this connection: the job's source (`label` `None`) or
/// a replica. Implemented for the blocking connections of each backend;
/// sealed (this module is private).
pub trait ReadHealth {
    /// The statement of `kind`.
    fn health_statement(kind: Kind, replica: bool) -> Result<Statement, Unread>;
    /// Runs `statement`, binding `table` where it needs it.
    fn health_rows(&mut self, statement: &Statement, table: &str) -> diesel::QueryResult<Rows>;

    /// The readings of `kind` against `limit`.
    fn read_health(
        &mut self,
        kind: Kind,
        limit: f64,
        table: &str,
        label: Option<&str>,
    ) -> Result<Vec<Reading>, Unread> {
        let statement = Self::health_statement(kind, label.is_some())?;
        let rows = self.health_rows(&statement, table).map_err(|e| {
            Unread::Failed(match label {
                Some(label) => format!("{label}: {e}"),
                None => e.to_string(),
            })
        })?;
        readings(kind, limit, &statement, rows, label.unwrap_or("source"))
    }
}

/// Runs a [`Statement`] with `load`, the connection's `RunQueryDsl::load`
/// (blocking or async).
macro_rules! health_rows {
    ($conn:expr, $statement:expr, $table:expr, $($await:tt)*) => {{
        let statement: &Statement = $statement;
        Ok(match *statement {
            Statement::Values { sql, table: true, .. } => Rows::Values(
                diesel::sql_query(sql)
                    .bind::<Text, _>($table)
                    .load::<ValueRow>($conn)
                    $($await)*?,
            ),
            Statement::Values { sql, table: false, .. } => {
                Rows::Values(diesel::sql_query(sql).load::<ValueRow>($conn) $($await)*?)
            }
            Statement::Status(sql) => {
                Rows::Status(diesel::sql_query(sql).load::<StatusRow>($conn) $($await)*?)
            }
            // MySQL 8.4 has only `SHOW REPLICA STATUS`, whose columns are
            // named after the source (MariaDB's keep the old names).
            Statement::ReplicaStatus => match diesel::sql_query("SHOW SLAVE STATUS")
                .load::<ReplicaRow>($conn)
                $($await)*
            {
                Ok(rows) => Rows::Replica(rows),
                Err(first) => match diesel::sql_query("SHOW REPLICA STATUS")
                    .load::<SourceReplicaRow>($conn)
                    $($await)*
                {
                    Ok(rows) => Rows::Replica(rows.into_iter().map(ReplicaRow::from).collect()),
                    Err(_) => return Err(first),
                },
            },
            Statement::Heartbeat => Rows::Values(
                diesel::sql_query(heartbeat_sql($table))
                    .load::<ValueRow>($conn)
                    $($await)*?,
            ),
        })
    }};
}

macro_rules! read_health {
    ($conn:ty, $statements:path) => {
        impl ReadHealth for $conn {
            fn health_statement(kind: Kind, replica: bool) -> Result<Statement, Unread> {
                $statements(kind, replica)
            }
            fn health_rows(
                &mut self,
                statement: &Statement,
                table: &str,
            ) -> diesel::QueryResult<Rows> {
                use diesel::RunQueryDsl;
                health_rows!(self, statement, table,)
            }
        }
    };
}

#[cfg(feature = "postgres")]
read_health!(diesel::PgConnection, postgres);
#[cfg(feature = "mysql")]
read_health!(diesel::MysqlConnection, mysql);
#[cfg(feature = "sqlite")]
read_health!(diesel::SqliteConnection, sqlite);

/// How long a replica's pool is waited on for a connection.
#[cfg(feature = "r2d2")]
pub(crate) const REPLICA_CONNECT: std::time::Duration = std::time::Duration::from_secs(5);

/// A replica a signal can be read on (see [`Health::on`](super::Health::on)).
pub trait ReadReplica: Send + Sync + 'static {
    /// The readings of `kind` against `limit` on this replica, named
    /// `label`; `table`: the heartbeat table's quoted name, if it reads one.
    fn read(
        &self,
        kind: Kind,
        limit: f64,
        table: &str,
        label: &str,
    ) -> Result<Vec<Reading>, Unread>;
}

#[cfg(feature = "r2d2")]
impl<C> ReadReplica for diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>
where
    C: diesel::r2d2::R2D2Connection + ReadHealth + Send + 'static,
{
    fn read(
        &self,
        kind: Kind,
        limit: f64,
        table: &str,
        label: &str,
    ) -> Result<Vec<Reading>, Unread> {
        C::health_statement(kind, true)?;
        let mut conn = self
            .get_timeout(REPLICA_CONNECT)
            .map_err(|e| Unread::Failed(format!("{label}: no connection: {e}")))?;
        conn.read_health(kind, limit, table, Some(label))
    }
}

/// [`ReadHealth`] on an async connection: implemented for diesel-async's
/// connections of each backend; sealed (this module is private).
#[cfg(feature = "async")]
pub trait AsyncReadHealth: Send {
    /// The readings of `kind` against `limit` on the job's source.
    fn read_health<'a>(
        &'a mut self,
        kind: Kind,
        limit: f64,
        table: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Reading>, Unread>>;
}

#[cfg(all(feature = "async", any(feature = "postgres", feature = "mysql")))]
macro_rules! async_read_health {
    ($conn:ty, $statements:path) => {
        impl AsyncReadHealth for $conn {
            fn read_health<'a>(
                &'a mut self,
                kind: Kind,
                limit: f64,
                table: &'a str,
            ) -> futures_util::future::BoxFuture<'a, Result<Vec<Reading>, Unread>> {
                Box::pin(async move {
                    use diesel_async::RunQueryDsl;
                    let statement = $statements(kind, false)?;
                    let rows: diesel::QueryResult<Rows> = async {
                        health_rows!(self, &statement, table, .await)
                    }
                    .await;
                    let rows = rows.map_err(|e| Unread::Failed(e.to_string()))?;
                    readings(kind, limit, &statement, rows, "source")
                })
            }
        }
    };
}

#[cfg(all(feature = "async", feature = "postgres"))]
async_read_health!(diesel_async::AsyncPgConnection, postgres);
#[cfg(all(feature = "async", feature = "mysql"))]
async_read_health!(diesel_async::AsyncMysqlConnection, mysql);

#[cfg(all(feature = "async", feature = "sqlite"))]
impl AsyncReadHealth
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    fn read_health<'a>(
        &'a mut self,
        kind: Kind,
        _: f64,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Reading>, Unread>> {
        Box::pin(async move { sqlite(kind, false).map(|_| Vec::new()) })
    }
}
