//! A batch of [`copy_to`](crate::TransferDsl::copy_to) into PostgreSQL as one
//! binary `COPY <dest> (<columns>) FROM STDIN (FORMAT binary)`, Diesel's
//! `copy_from`: a `copy_to` took 1.20× the rows per second of the same job
//! sending multi-row `INSERT`s at batch 1000, 2.14× at 10,000
//! (`benches/copy_from.rs`).
//!
//! Each field is the row's bind value as Diesel serializes it for a
//! statement, which is PostgreSQL's binary format, the format of a binary
//! `COPY`; but where an `INSERT` casts a value to its column's type, a binary
//! `COPY` takes the bytes as they are. So a batch goes by `COPY` only when
//! the destination table, as the database has it (`pg_attribute`, read in
//! the batch's transaction), has exactly the model's columns, in its order,
//! each of the type the model binds or one it converts to without a
//! function (`text` to `varchar`: a binary coercion in `pg_cast`), and every
//! row binds a value for each:
//! otherwise (a row whose value is `DEFAULT`, a wider or other column) it
//! goes by the `INSERT`.

use diesel::pg::{CopyFormat, Pg, PgConnection};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::QueryFragment;
use diesel::result::Error as DieselError;
use diesel::{QueryResult, Table};

use crate::write::render_sql;

/// The header of a binary `COPY`: its signature, no flags, no extension.
const HEADER: [u8; 19] = [
    b'P', b'G', b'C', b'O', b'P', b'Y', b'\n', 0xFF, b'\r', b'\n', 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A column of the destination as the database has it.
#[derive(diesel::QueryableByName)]
struct Column {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    /// Whether the type bound at its position is the column's, or converts
    /// to it by a binary coercion.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
    fits: Option<bool>,
}

/// The columns of the table `from` (as rendered: `"orders"`), in their
/// order, each with whether a value of type `types[i]` fits it bytes as
/// they are; none where a `COPY` would not do what the `INSERT` does: `from`
/// is not a table or a partitioned table (a view takes no `COPY`), has
/// row-level security (which refuses a `COPY`), a column `GENERATED ALWAYS
/// AS IDENTITY` (whose values a `COPY` overrides where an `INSERT` fails), or
/// a rule on `INSERT` (which a `COPY` would not apply).
fn columns_of(conn: &mut PgConnection, from: &str, types: &[u32]) -> QueryResult<Vec<Column>> {
    use diesel::RunQueryDsl;
    diesel::sql_query(
        "SELECT a.attname::text AS name, (a.atttypid = t.oid OR EXISTS (SELECT 1 FROM pg_cast c \
         WHERE c.castsource = t.oid AND c.casttarget = a.atttypid AND c.castmethod = 'b')) AS fits \
         FROM (SELECT attname, atttypid, row_number() OVER (ORDER BY attnum) AS n FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped \
         AND (SELECT relkind IN ('r', 'p') AND NOT relrowsecurity FROM pg_class \
         WHERE oid = $1::regclass) \
         AND NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass \
         AND attidentity = 'a') \
         AND NOT EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_class = $1::regclass AND ev_type = '3')) a \
         LEFT JOIN unnest($2::oid[]) WITH ORDINALITY AS t(oid, n) ON t.n = a.n ORDER BY a.n",
    )
    .bind::<diesel::sql_types::Text, _>(from)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Oid>, _>(types)
    .load(conn)
}

/// The types the values of `row` are bound as, or `None` if one has no
/// known type.
fn bound_types<V: QueryFragment<Pg>>(
    conn: &mut PgConnection,
    row: &V,
) -> QueryResult<Option<Vec<u32>>> {
    let mut binds = RawBytesBindCollector::<Pg>::new();
    row.collect_binds(&mut binds, conn, &Pg)?;
    Ok(binds.metadata.iter().map(|m| m.oid().ok()).collect())
}

/// The binary `COPY` data of `rows` (each row's values) into `columns`
/// columns, or `None` when a row does not bind exactly one value for each.
fn copy_data<V: QueryFragment<Pg>>(
    conn: &mut PgConnection,
    rows: &[V],
    columns_len: usize,
) -> QueryResult<Option<Vec<u8>>> {
    let fields =
        i16::try_from(columns_len).map_err(|e| DieselError::SerializationError(e.into()))?;
    let mut data = Vec::with_capacity(HEADER.len() + rows.len() * (2 + columns_len * 12) + 2);
    data.extend_from_slice(&HEADER);
    for row in rows {
        let mut binds = RawBytesBindCollector::<Pg>::new();
        row.collect_binds(&mut binds, conn, &Pg)?;
        if binds.binds.len() != columns_len {
            return Ok(None);
        }
        data.extend_from_slice(&fields.to_be_bytes());
        for value in &binds.binds {
            match value {
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(bytes) => {
                    let len = i32::try_from(bytes.len())
                        .map_err(|e| DieselError::SerializationError(e.into()))?;
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(bytes);
                }
            }
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(Some(data))
}

/// Copies `rows` (values of table `Src`, whose columns render as `names`)
/// into `dest` with one binary `COPY`: the rows copied, or `None` (nothing
/// sent) when they cannot go that way.
pub(super) fn copy_rows<T, V>(
    conn: &mut PgConnection,
    dest: T,
    rows: &[V],
    names: Option<String>,
) -> QueryResult<Option<usize>>
where
    T: Table + diesel::pg::CopyTarget<Table = T> + Copy,
    T::FromClause: QueryFragment<Pg>,
    T::AllColumns: QueryFragment<Pg>,
    V: QueryFragment<Pg>,
{
    let Some(from) = render_sql::<Pg, _>(&dest.from_clause()) else {
        return Ok(None);
    };
    let (Some(names), Some(dest_names)) = (names, super::column_list::<Pg, T>(&from)) else {
        return Ok(None);
    };
    if names != dest_names || rows.is_empty() {
        return Ok(None);
    }
    // The model's values are of one type per column in every row (a row
    // with a `DEFAULT` binds fewer, which `copy_data` finds).
    let Some(types) = bound_types(conn, &rows[0])? else {
        return Ok(None);
    };
    let columns = columns_of(conn, &from, &types)?;
    let quoted: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
        .collect();
    let fits = columns.len() == types.len() && columns.iter().all(|c| c.fits == Some(true));
    if !fits || quoted.join(", ") != names {
        return Ok(None);
    }
    let Some(data) = copy_data(conn, rows, columns.len())? else {
        return Ok(None);
    };
    let copy = diesel::copy_from(dest)
        .from_raw_data(dest, move |out: &mut dyn std::io::Write| {
            out.write_all(&data)
                .map_err(|e| DieselError::SerializationError(e.into()))
        })
        .with_format(CopyFormat::Binary);
    diesel::ExecuteCopyFromDsl::execute(copy, conn).map(Some)
}

#[cfg(test)]
mod tests {
    use super::HEADER;

    #[test]
    fn the_header_is_postgresql_s_binary_copy_signature_without_flags() {
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&HEADER[11..], &[0u8; 8]);
    }
}
