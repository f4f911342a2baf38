//! Reading the SQL Diesel renders for a scan: the key's columns, and the tables
//! and join conditions of the query's `FROM` clause.
//!
//! The reader is deliberately narrow: it understands what Diesel's query
//! builder writes (quoted identifiers, `INNER JOIN` / `LEFT OUTER JOIN` with
//! parenthesised `ON` conditions, aliases) and reports anything else as
//! unreadable, so that the uniqueness check never answers yes by mistake.

/// A token of rendered SQL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A quoted identifier, unquoted.
    Ident(String),
    /// A bare word (keyword, function name or unquoted identifier).
    Word(String),
    Open,
    Close,
    Dot,
    Comma,
    Eq,
    /// A bind parameter (`$1`, `?`).
    Param,
    /// A number or string literal.
    Literal,
    /// Any other operator or character.
    Other(char),
}

impl Tok {
    fn is_word(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x.eq_ignore_ascii_case(w))
    }
}

/// Splits rendered SQL into tokens; stops at a `--` comment (Diesel's
/// `debug_query` appends the binds after one). `None` for an unterminated
/// quote.
pub(crate) fn tokenize(sql: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => break,
            '"' | '`' => {
                let (ident, next) = quoted(&chars, i, c)?;
                out.push(Tok::Ident(ident));
                i = next;
            }
            '\'' => {
                let (_, next) = quoted(&chars, i, '\'')?;
                out.push(Tok::Literal);
                i = next;
            }
            '(' => (out.push(Tok::Open), i += 1).1,
            ')' => (out.push(Tok::Close), i += 1).1,
            '.' => (out.push(Tok::Dot), i += 1).1,
            ',' => (out.push(Tok::Comma), i += 1).1,
            '=' => (out.push(Tok::Eq), i += 1).1,
            '?' => (out.push(Tok::Param), i += 1).1,
            '$' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                out.push(Tok::Param);
            }
            c if c.is_ascii_digit() => {
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
                {
                    i += 1;
                }
                out.push(Tok::Literal);
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => (out.push(Tok::Other(other)), i += 1).1,
        }
    }
    Some(out)
}

/// A quoted string starting at `start` (`q` doubled inside is one `q`): its
/// content and the index after it.
fn quoted(chars: &[char], start: usize, q: char) -> Option<(String, usize)> {
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return None,
            Some(&c) if c == q => {
                if chars.get(i + 1) == Some(&q) {
                    s.push(q);
                    i += 2;
                } else {
                    return Some((s, i + 1));
                }
            }
            Some(&c) => {
                s.push(c);
                i += 1;
            }
        }
    }
}

/// A table name as rendered: `"schema"."table"` or `"table"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TableName {
    pub(crate) schema: Option<String>,
    pub(crate) table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

/// A key column as rendered: its table and its SQL name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyColumn {
    pub(crate) table: TableName,
    pub(crate) column: String,
}

/// The key's columns from the rendered selection (`"t"."a", "s"."t"."b"`).
pub(crate) fn key_columns(sql: &str) -> Result<Vec<KeyColumn>, String> {
    let toks = tokenize(sql).ok_or("unterminated quote")?;
    let mut out = Vec::new();
    for part in toks.split(|t| *t == Tok::Comma) {
        let names =
            ident_chain(part).ok_or_else(|| "a key part is not a table column".to_string())?;
        let (column, table) = match names.as_slice() {
            [t, c] => (
                c,
                TableName {
                    schema: None,
                    table: t.clone(),
                },
            ),
            [s, t, c] => (
                c,
                TableName {
                    schema: Some(s.clone()),
                    table: t.clone(),
                },
            ),
            _ => return Err("a key part is not a table column".into()),
        };
        out.push(KeyColumn {
            table,
            column: column.clone(),
        });
    }
    if out.is_empty() {
        return Err("the key has no columns".into());
    }
    Ok(out)
}

/// `a.b.c` written as quoted identifiers separated by dots, exactly.
fn ident_chain(toks: &[Tok]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match (i % 2, t) {
            (0, Tok::Ident(s)) => names.push(s.clone()),
            (1, Tok::Dot) => {}
            _ => return None,
        }
    }
    (toks.len() % 2 == 1).then_some(names)
}

/// One table of a `FROM` clause.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    pub(crate) name: TableName,
    pub(crate) alias: Option<String>,
}

/// What one side of an equality is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// A column of the instance with this index.
    Column(usize, String),
    /// A bind parameter or literal.
    Constant,
}

/// An equality of a join condition that holds for every row in which the
/// instances it may pin are not null-extended: `pinned` lists them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Equality {
    pub(crate) left: Operand,
    pub(crate) right: Operand,
    pub(crate) pinned: Vec<usize>,
}

/// The tables of a `FROM` clause and the equalities of its join conditions.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct FromClause {
    pub(crate) instances: Vec<Instance>,
    pub(crate) equalities: Vec<Equality>,
}

const CLAUSE_ENDS: [&str; 14] = [
    "WHERE",
    "GROUP",
    "HAVING",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FOR",
    "WINDOW",
    "FETCH",
    "LOCK",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "RETURNING",
];

/// The `FROM` clause of a rendered query: a `SELECT`, or a table on its own.
pub(crate) fn from_clause(sql: &str) -> Result<FromClause, String> {
    let toks = tokenize(sql).ok_or("unterminated quote")?;
    let from = match toks.first() {
        Some(t) if t.is_word("SELECT") => {
            let mut depth = 0i32;
            let mut start = None;
            let mut end = toks.len();
            for (i, t) in toks.iter().enumerate() {
                match t {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    Tok::Word(w) if depth == 0 => {
                        let upper = w.to_ascii_uppercase();
                        if ["UNION", "INTERSECT", "EXCEPT"].contains(&upper.as_str()) {
                            return Err(format!("the query is a {upper} of queries"));
                        }
                        if start.is_none() && upper == "FROM" {
                            start = Some(i + 1);
                        } else if start.is_some()
                            && end == toks.len()
                            && CLAUSE_ENDS.contains(&upper.as_str())
                        {
                            end = i;
                        }
                    }
                    _ => {}
                }
            }
            let start = start.ok_or("the query has no FROM clause")?;
            &toks[start..end]
        }
        Some(Tok::Ident(_)) => &toks[..],
        _ => return Err("the query is not a SELECT".into()),
    };
    let mut parser = Parser {
        toks: from,
        pos: 0,
        out: FromClause::default(),
        pending: Vec::new(),
    };
    parser.item()?;
    if parser.pos != from.len() {
        return Err(format!(
            "unexpected {} in the FROM clause",
            describe(&from[parser.pos])
        ));
    }
    parser.resolve()?;
    Ok(parser.out)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier {s}"),
        Tok::Word(w) => format!("keyword {w}"),
        Tok::Open => "(".into(),
        Tok::Close => ")".into(),
        Tok::Dot => ".".into(),
        Tok::Comma => ",".into(),
        Tok::Eq => "=".into(),
        Tok::Param => "a bind parameter".into(),
        Tok::Literal => "a literal".into(),
        Tok::Other(c) => format!("{c}"),
    }
}

/// An equality before its column references are resolved to instances.
struct Pending {
    left: Vec<String>,
    right: Vec<String>,
    pinned: Vec<usize>,
}

struct Parser<'t> {
    toks: &'t [Tok],
    pos: usize,
    out: FromClause,
    pending: Vec<Pending>,
}

impl<'t> Parser<'t> {
    fn peek(&self, ahead: usize) -> Option<&'t Tok> {
        self.toks.get(self.pos + ahead)
    }

    /// `primary { join }`
    fn item(&mut self) -> Result<(), String> {
        let item_start = self.out.instances.len();
        self.primary()?;
        loop {
            let inner = match (self.peek(0), self.peek(1), self.peek(2)) {
                (Some(Tok::Comma), _, _) => {
                    self.pos += 1;
                    self.primary()?;
                    continue;
                }
                (Some(a), Some(b), _) if a.is_word("INNER") && b.is_word("JOIN") => {
                    self.pos += 2;
                    true
                }
                (Some(a), Some(b), _) if a.is_word("CROSS") && b.is_word("JOIN") => {
                    self.pos += 2;
                    true
                }
                (Some(a), _, _) if a.is_word("JOIN") => {
                    self.pos += 1;
                    true
                }
                (Some(a), Some(b), _) if a.is_word("LEFT") && b.is_word("JOIN") => {
                    self.pos += 2;
                    false
                }
                (Some(a), Some(b), Some(c))
                    if a.is_word("LEFT") && b.is_word("OUTER") && c.is_word("JOIN") =>
                {
                    self.pos += 3;
                    false
                }
                (Some(a), _, _)
                    if [
                        "RIGHT",
                        "FULL",
                        "NATURAL",
                        "STRAIGHT_JOIN",
                        "LATERAL",
                        "USING",
                    ]
                    .iter()
                    .any(|w| a.is_word(w)) =>
                {
                    return Err(format!("{} joins are not checked", describe(a)));
                }
                _ => return Ok(()),
            };
            // Instances so far are the left side; the ones `primary` adds are the right.
            let left_end = self.out.instances.len();
            self.primary()?;
            let right: Vec<usize> = (left_end..self.out.instances.len()).collect();
            if self.peek(0).is_some_and(|t| t.is_word("ON")) {
                self.pos += 1;
                let cond = self.condition();
                // An inner join's condition holds on every row; a left join's only
                // where its right side is not null-extended, so it pins only that side.
                let pinned: Vec<usize> = if inner {
                    (item_start..self.out.instances.len()).collect()
                } else {
                    right
                };
                for (left, right) in equalities(cond) {
                    self.pending.push(Pending {
                        left,
                        right,
                        pinned: pinned.clone(),
                    });
                }
            } else if self.peek(0).is_some_and(|t| t.is_word("USING")) {
                return Err("JOIN ... USING is not checked".into());
            }
        }
    }

    /// `( item )` or `name [AS alias]`
    fn primary(&mut self) -> Result<(), String> {
        match self.peek(0) {
            Some(Tok::Open) => {
                self.pos += 1;
                if self.peek(0).is_some_and(|t| t.is_word("SELECT")) {
                    return Err("a subquery in the FROM clause is not checked".into());
                }
                self.item()?;
                match self.peek(0) {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(())
                    }
                    Some(t) => Err(format!("unexpected {} in the FROM clause", describe(t))),
                    None => Err("unbalanced parentheses in the FROM clause".into()),
                }
            }
            Some(Tok::Ident(first)) => {
                let first = first.clone();
                self.pos += 1;
                let name = if self.peek(0) == Some(&Tok::Dot) {
                    match self.peek(1) {
                        Some(Tok::Ident(t)) => {
                            let t = t.clone();
                            self.pos += 2;
                            TableName {
                                schema: Some(first),
                                table: t,
                            }
                        }
                        _ => return Err("a table name the check cannot read".into()),
                    }
                } else {
                    TableName {
                        schema: None,
                        table: first,
                    }
                };
                if self.peek(0).is_some_and(|t| t.is_word("AS")) {
                    self.pos += 1;
                }
                let alias = match self.peek(0) {
                    Some(Tok::Ident(a)) => {
                        let a = a.clone();
                        self.pos += 1;
                        Some(a)
                    }
                    _ => None,
                };
                self.out.instances.push(Instance { name, alias });
                Ok(())
            }
            Some(t) => Err(format!("unexpected {} in the FROM clause", describe(t))),
            None => Err("the FROM clause ends too early".into()),
        }
    }

    /// The tokens of an `ON` condition: up to a `)` closing the enclosing
    /// group, the next join, or the end.
    fn condition(&mut self) -> &'t [Tok] {
        let toks = self.toks;
        let start = self.pos;
        let mut depth = 0i32;
        while let Some(t) = self.peek(0) {
            match t {
                Tok::Open => depth += 1,
                Tok::Close if depth == 0 => break,
                Tok::Close => depth -= 1,
                Tok::Comma if depth == 0 => break,
                t if depth == 0
                    && ["INNER", "CROSS", "JOIN", "RIGHT", "FULL", "NATURAL"]
                        .iter()
                        .any(|w| t.is_word(w)) =>
                {
                    break
                }
                t if depth == 0
                    && t.is_word("LEFT")
                    && self
                        .peek(1)
                        .is_some_and(|n| n.is_word("JOIN") || n.is_word("OUTER")) =>
                {
                    break
                }
                _ => {}
            }
            self.pos += 1;
        }
        &toks[start..self.pos]
    }

    /// Resolves the column references of the equalities to instances; a
    /// reference that names no instance, or several, makes the equality unusable
    /// (it is dropped, which can only make the check stricter).
    fn resolve(&mut self) -> Result<(), String> {
        for p in std::mem::take(&mut self.pending) {
            let (Some(left), Some(right)) = (self.operand(&p.left), self.operand(&p.right)) else {
                continue;
            };
            self.out.equalities.push(Equality {
                left,
                right,
                pinned: p.pinned,
            });
        }
        Ok(())
    }

    fn operand(&self, names: &[String]) -> Option<Operand> {
        match names {
            [] => Some(Operand::Constant),
            [q, c] => {
                let found: Vec<usize> = self
                    .out
                    .instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| match &i.alias {
                        Some(a) => a == q,
                        None => i.name.schema.is_none() && &i.name.table == q,
                    })
                    .map(|(n, _)| n)
                    .collect();
                match found.as_slice() {
                    [n] => Some(Operand::Column(*n, c.clone())),
                    _ => None,
                }
            }
            [s, t, c] => {
                let found: Vec<usize> = self
                    .out
                    .instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| {
                        i.alias.is_none()
                            && i.name.schema.as_deref() == Some(s.as_str())
                            && &i.name.table == t
                    })
                    .map(|(n, _)| n)
                    .collect();
                match found.as_slice() {
                    [n] => Some(Operand::Column(*n, c.clone())),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The equalities `a = b` that are conjuncts of a condition, each side a column
/// reference (its names) or a constant (no names). Anything that is not a plain
/// conjunction of equalities (`OR`, `NOT`, functions, other operators) yields
/// nothing for its part.
fn equalities(toks: &[Tok]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    conjuncts(toks, &mut out);
    out
}

fn conjuncts(toks: &[Tok], out: &mut Vec<(Vec<String>, Vec<String>)>) {
    // Only identifiers, dots, `=`, constants, `AND` and whole groups may appear
    // at this level; anything else could bind looser than AND.
    let mut depth = 0i32;
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth < 0 {
                    return;
                }
            }
            _ if depth > 0 => {}
            t if t.is_word("AND") => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            Tok::Ident(_) | Tok::Dot | Tok::Eq | Tok::Param | Tok::Literal => {}
            _ => return,
        }
    }
    if depth != 0 {
        return;
    }
    parts.push(&toks[start..]);
    for part in parts {
        if part.first() == Some(&Tok::Open) && closes_at_end(part) {
            conjuncts(&part[1..part.len() - 1], out);
        } else if let Some(eq) = equality(part) {
            out.push(eq);
        }
    }
}

/// Whether the `(` at the start of `toks` is closed by its last token.
fn closes_at_end(toks: &[Tok]) -> bool {
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return i == toks.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

fn equality(toks: &[Tok]) -> Option<(Vec<String>, Vec<String>)> {
    let at = toks.iter().position(|t| *t == Tok::Eq)?;
    let side = |s: &[Tok]| -> Option<Vec<String>> {
        match s {
            [Tok::Param] | [Tok::Literal] => Some(Vec::new()),
            s => ident_chain(s).filter(|n| n.len() >= 2),
        }
    };
    Some((side(&toks[..at])?, side(&toks[at + 1..])?))
}

/// A token of an SQLite `CREATE TABLE` statement as the user wrote it.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone, PartialEq)]
enum DdlTok {
    /// A bare word.
    Word(String),
    /// A name or string in quotes (`"a"`, `` `a` ``, `[a]`, `'a'`), unquoted.
    Quoted(String),
    Open,
    Close,
    Comma,
    Other,
}

/// Splits an SQLite `CREATE TABLE` statement into tokens, comments dropped;
/// `None` for an unterminated quote or comment.
#[cfg(feature = "sqlite")]
fn ddl_tokens(sql: &str) -> Option<Vec<DdlTok>> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let end = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '/')?;
                i = end + 2;
            }
            q @ ('"' | '`' | '\'') => {
                let (name, next) = quoted(&chars, i, q)?;
                out.push(DdlTok::Quoted(name));
                i = next;
            }
            '[' => {
                let end = (i + 1..chars.len()).find(|&j| chars[j] == ']')?;
                out.push(DdlTok::Quoted(chars[i + 1..end].iter().collect()));
                i = end + 1;
            }
            '(' => (out.push(DdlTok::Open), i += 1).1,
            ')' => (out.push(DdlTok::Close), i += 1).1,
            ',' => (out.push(DdlTok::Comma), i += 1).1,
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                {
                    i += 1;
                }
                out.push(DdlTok::Word(chars[start..i].iter().collect()));
            }
            _ => (out.push(DdlTok::Other), i += 1).1,
        }
    }
    Some(out)
}

/// The collation `column` is declared with in SQLite's `CREATE TABLE`
/// statement `create` (`BINARY` when it names none), or `None` when the
/// statement has no such column or cannot be read.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_column_collation(create: &str, column: &str) -> Option<String> {
    let toks = ddl_tokens(create)?;
    let open = toks.iter().position(|t| *t == DdlTok::Open)?;
    let mut depth = 0i32;
    let mut part_start = open + 1;
    for i in open..toks.len() {
        match &toks[i] {
            DdlTok::Open => depth += 1,
            DdlTok::Close | DdlTok::Comma if depth == 1 => {
                if let Some(coll) = column_def_collation(&toks[part_start..i], column) {
                    return Some(coll);
                }
                if toks[i] == DdlTok::Close {
                    return None;
                }
                part_start = i + 1;
            }
            DdlTok::Close => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The collation of one column definition (or table constraint) `def` if it
/// defines `column`.
#[cfg(feature = "sqlite")]
fn column_def_collation(def: &[DdlTok], column: &str) -> Option<String> {
    let name = match def.first()? {
        DdlTok::Word(w) => {
            let constraint = ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"];
            if constraint.iter().any(|c| w.eq_ignore_ascii_case(c)) {
                return None;
            }
            w
        }
        DdlTok::Quoted(q) => q,
        _ => return None,
    };
    if !name.eq_ignore_ascii_case(column) {
        return None;
    }
    let mut depth = 0i32;
    for (i, t) in def.iter().enumerate().skip(1) {
        match t {
            DdlTok::Open => depth += 1,
            DdlTok::Close => depth -= 1,
            DdlTok::Word(w) if depth == 0 && w.eq_ignore_ascii_case("COLLATE") => {
                return match def.get(i + 1) {
                    Some(DdlTok::Word(c) | DdlTok::Quoted(c)) => Some(c.clone()),
                    _ => None,
                };
            }
            _ => {}
        }
    }
    Some("BINARY".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: Option<&str>, t: &str) -> TableName {
        TableName {
            schema: s.map(str::to_owned),
            table: t.into(),
        }
    }

    #[test]
    fn key_columns_with_and_without_schema() {
        let cols = key_columns("\"other\".\"items\".\"id\", `posts`.`a``b` -- binds: []").unwrap();
        assert_eq!(cols[0].table, table(Some("other"), "items"));
        assert_eq!(cols[0].column, "id");
        assert_eq!(cols[1].table, table(None, "posts"));
        assert_eq!(cols[1].column, "a`b");
        assert!(key_columns("lower(\"posts\".\"title\")").is_err());
    }

    #[test]
    fn joins_and_conditions() {
        let f = from_clause(
            "SELECT DISTINCT `posts`.`id` FROM (`posts` LEFT OUTER JOIN (`users` INNER JOIN \
             `other`.`items` ON ((`other`.`items`.`n` = `users`.`id`) AND (`other`.`items`.`id` = ?))) \
             ON (`posts`.`user_id` = `users`.`id`)) WHERE (`posts`.`id` = ?) -- binds: [2, 3]",
        )
        .unwrap();
        assert_eq!(f.instances.len(), 3);
        assert_eq!(f.instances[2].name, table(Some("other"), "items"));
        assert_eq!(f.equalities.len(), 3);
        // the inner join's condition pins both of its sides, not the outer table
        assert_eq!(f.equalities[0].pinned, [1, 2]);
        assert_eq!(f.equalities[1].right, Operand::Constant);
        // the left join's condition pins only its right side
        assert_eq!(f.equalities[2].pinned, [1, 2]);
        assert_eq!(f.equalities[2].left, Operand::Column(0, "user_id".into()));
    }

    #[test]
    fn anything_but_a_conjunction_of_equalities_gives_nothing() {
        let t = tokenize("(\"a\".\"x\" = \"b\".\"y\") OR (\"a\".\"z\" = $1)").unwrap();
        assert!(equalities(&t).is_empty());
        let t = tokenize("\"a\".\"x\" BETWEEN 1 AND \"b\".\"y\" = \"c\".\"z\"").unwrap();
        assert!(equalities(&t).is_empty());
        let t = tokenize("(\"a\".\"x\" = \"b\".\"y\") AND ((\"a\".\"z\" = 2) AND f(\"a\".\"q\"))")
            .unwrap();
        assert_eq!(equalities(&t).len(), 1);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_column_collations() {
        let create = "CREATE TABLE \"t x\" ( -- a comment, with (parens\n\
                      id INTEGER PRIMARY KEY, [Name] VARCHAR(10) DEFAULT 'a,b' COLLATE nocase, \
                      /* b ) */ `b` TEXT CHECK (b COLLATE RTRIM <> 'x'), \
                      'c' TEXT NOT NULL CoLLaTe \"RTRIM\", \
                      UNIQUE (b COLLATE NOCASE), CONSTRAINT k CHECK (id > 0))";
        let coll = |c| sqlite_column_collation(create, c);
        assert_eq!(coll("name").as_deref(), Some("nocase"));
        assert_eq!(coll("B").as_deref(), Some("BINARY"));
        assert_eq!(coll("c").as_deref(), Some("RTRIM"));
        assert_eq!(coll("id").as_deref(), Some("BINARY"));
        assert_eq!(coll("k"), None);
        assert_eq!(coll("unique"), None);
        assert_eq!(
            sqlite_column_collation("CREATE TABLE t (a TEXT COLLATE", "a"),
            None
        );
        assert_eq!(
            sqlite_column_collation("CREATE TABLE t (a 'unterminated)", "a"),
            None
        );
    }

    #[test]
    fn unreadable_queries_are_errors() {
        for sql in [
            "SELECT 1",
            "(SELECT \"a\".\"id\" FROM \"a\") UNION (SELECT \"b\".\"id\" FROM \"b\")",
            "SELECT \"a\".\"id\" FROM (SELECT 1) AS \"a\"",
            "SELECT \"a\".\"id\" FROM \"a\" RIGHT JOIN \"b\" ON (\"a\".\"id\" = \"b\".\"id\")",
            "SELECT \"a\".\"id\" FROM \"a\" UNION SELECT \"b\".\"id\" FROM \"b\"",
        ] {
            assert!(from_clause(sql).is_err(), "{sql}");
        }
        let f = from_clause("\"posts\"").unwrap();
        assert_eq!(f.instances[0].name, table(None, "posts"));
        let f = from_clause("SELECT \"u\".\"id\" FROM (\"posts\" INNER JOIN \"users\" AS \"u\" ON (\"u\".\"id\" = \"posts\".\"user_id\"))").unwrap();
        assert_eq!(f.instances[1].alias.as_deref(), Some("u"));
        assert_eq!(f.equalities.len(), 1);
    }
}
