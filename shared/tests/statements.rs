//! Every SQL statement in the project, prepared against the migrated schema.
//!
//! Statements are runtime-checked `sqlx::query*` calls over literals (see
//! `shared/src/db/mod.rs` for why), so a misspelt column would otherwise
//! surface only when its route runs. This test reads the sources with `syn`,
//! evaluates each statement's literal (`concat!` and the files' own literal
//! macros such as `task_columns!()`), and asks PostgreSQL to parse and plan
//! it. A call it cannot read fails the test unless it is on the short list
//! of statements built at run time, which their own tests cover.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use keel_testing::TestDatabase;
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use sqlx::{Executor as _, SqlSafeStr as _};
use syn::{Expr, ExprCall, ExprLit, ExprMacro, Lit, visit::Visit};

/// Calls whose first argument is a statement.
const QUERY_FUNCTIONS: &[&str] = &["query", "query_as", "query_scalar"];

/// Calls whose SQL is assembled at run time (`file`, then the argument as
/// written): `QueryBuilder`s are not `query` calls and need no entry here.
const BUILT_AT_RUN_TIME: &[(&str, &str)] = &[
    // The retention sweep's batched DELETE, one table name of a fixed list.
    ("shared/src/db/mod.rs", "sqlx :: AssertSqlSafe (sql)"),
    // Runs statements handed in as arrays of literals; those arrays are
    // read below as statements of their own.
    ("shared/src/db/totp.rs", "* statement"),
];

/// One `macro_rules!` arm: its `$names` in order and its body.
struct Arm {
    params: Vec<String>,
    body: TokenStream,
}

/// What one source file says: its literal macros, its statements, and the
/// calls it could not read.
#[derive(Default)]
struct FileScan {
    macros: HashMap<String, Vec<Arm>>,
    statements: Vec<String>,
    unread: Vec<String>,
}

impl FileScan {
    /// The string `expr` evaluates to, if it is a literal, a `concat!` of
    /// literals, or one of this file's literal macros.
    fn evaluate(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s.value()),
            Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            }) => Some(i.base10_digits().to_owned()),
            Expr::Macro(ExprMacro { mac, .. }) => {
                let name = mac.path.get_ident()?.to_string();
                let args = split_args(mac.tokens.clone());
                if name == "concat" {
                    return args
                        .into_iter()
                        .map(|arg| self.evaluate(&syn::parse2(arg).ok()?))
                        .collect();
                }
                let arm = self
                    .macros
                    .get(&name)?
                    .iter()
                    .find(|arm| arm.params.len() == args.len())?;
                let bound: HashMap<&str, &TokenStream> = arm
                    .params
                    .iter()
                    .map(String::as_str)
                    .zip(args.iter())
                    .collect();
                self.evaluate(&syn::parse2(substitute(arm.body.clone(), &bound)).ok()?)
            }
            Expr::Group(group) => self.evaluate(&group.expr),
            Expr::Paren(paren) => self.evaluate(&paren.expr),
            _ => None,
        }
    }
}

/// Splits a macro's arguments at its top-level commas.
fn split_args(tokens: TokenStream) -> Vec<TokenStream> {
    let mut args = vec![TokenStream::new()];
    for token in tokens {
        match &token {
            TokenTree::Punct(p) if p.as_char() == ',' => args.push(TokenStream::new()),
            _ => args.last_mut().expect("one at least").extend([token]),
        }
    }
    args.retain(|arg| !arg.is_empty());
    args
}

/// `body` with each `$name` replaced by its argument.
fn substitute(body: TokenStream, bound: &HashMap<&str, &TokenStream>) -> TokenStream {
    let mut out = TokenStream::new();
    let mut tokens = body.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Punct(p) if p.as_char() == '$' => {
                if let Some(TokenTree::Ident(name)) = tokens.peek()
                    && let Some(arg) = bound.get(name.to_string().as_str())
                {
                    // In a group of its own, as macro_rules passes a fragment.
                    out.extend([TokenTree::Group(proc_macro2::Group::new(
                        Delimiter::None,
                        (*arg).clone(),
                    ))]);
                    tokens.next();
                } else {
                    out.extend([TokenTree::Punct(p)]);
                }
            }
            TokenTree::Group(g) => {
                let mut inner =
                    proc_macro2::Group::new(g.delimiter(), substitute(g.stream(), bound));
                inner.set_span(g.span());
                out.extend([TokenTree::Group(inner)]);
            }
            other => out.extend([other]),
        }
    }
    out
}

/// The arms of a `macro_rules!` body: `(matcher) => { body }`, `;`-separated.
fn arms(tokens: TokenStream) -> Vec<Arm> {
    let mut arms = Vec::new();
    let mut matcher = None;
    for token in tokens {
        match token {
            TokenTree::Group(g) if matcher.is_none() => matcher = Some(g.stream()),
            TokenTree::Group(g) => {
                let params = dollar_names(matcher.take().expect("a matcher first"));
                arms.push(Arm {
                    params,
                    body: g.stream(),
                });
            }
            _ => {}
        }
    }
    arms
}

/// The `$name`s of a matcher, in order.
fn dollar_names(matcher: TokenStream) -> Vec<String> {
    let mut names = Vec::new();
    let mut tokens = matcher.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Punct(p) if p.as_char() == '$' => {
                if let Some(TokenTree::Ident(name)) = tokens.peek() {
                    names.push(name.to_string());
                }
            }
            TokenTree::Group(g) => names.extend(dollar_names(g.stream())),
            _ => {}
        }
    }
    names
}

/// Whether `text` reads as a whole statement rather than a fragment.
fn looks_like_statement(text: &str) -> bool {
    ["SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH "]
        .iter()
        .any(|start| text.trim_start().starts_with(start))
}

/// Collects the statements of one file.
struct Collector<'a> {
    scan: &'a mut FileScan,
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Expr::Path(path) = &*call.func
            && let Some(last) = path.path.segments.last()
            && QUERY_FUNCTIONS.contains(&last.ident.to_string().as_str())
            && let Some(first) = call.args.first()
        {
            match self.scan.evaluate(first) {
                Some(sql) => self.scan.statements.push(sql),
                None => {
                    let written = quote_tokens(first);
                    self.scan.unread.push(written);
                }
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_array(&mut self, array: &'ast syn::ExprArray) {
        // Arrays of whole statements (run one after another by a helper).
        for element in &array.elems {
            if let Some(sql) = self.scan.evaluate(element)
                && looks_like_statement(&sql)
            {
                self.scan.statements.push(sql);
            }
        }
        syn::visit::visit_expr_array(self, array);
    }
}

/// The tokens of `expr`, as `BUILT_AT_RUN_TIME` writes them.
fn quote_tokens(expr: &Expr) -> String {
    use quote::ToTokens as _;
    expr.to_token_stream().to_string()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Reads one file: first its macros, then its statements.
fn scan(path: &Path) -> FileScan {
    let source = std::fs::read_to_string(path).expect("a readable source file");
    let file = syn::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut scan = FileScan::default();
    for item in &file.items {
        if let syn::Item::Macro(m) = item
            && m.mac.path.is_ident("macro_rules")
            && let Some(name) = &m.ident
        {
            scan.macros
                .insert(name.to_string(), arms(m.mac.tokens.clone()));
        }
    }
    Collector { scan: &mut scan }.visit_file(&file);
    scan
}

/// Has PostgreSQL parse and plan `sql`. Run time binds typed parameters;
/// here they come untyped, so where PostgreSQL cannot settle a parameter's
/// type from the statement alone it is tried again with each `$n` as `NULL`,
/// which still checks every table, column and function name.
async fn prepare(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let untyped = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "42P08" || code == "42P18")
    };
    match conn
        .prepare(sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if untyped(&e) => conn
            .prepare(sqlx::AssertSqlSafe(parameters_as_null(sql)).into_sql_str())
            .await
            .map(drop),
        Err(e) => Err(e),
    }
}

/// `sql` with every `$1`, `$2`, … written as `NULL`.
fn parameters_as_null(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push_str("NULL");
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn every_statement_in_the_sources_prepares_against_the_migrated_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for crate_dir in ["shared", "api", "worker", "scheduler"] {
        rust_files(&root.join(crate_dir).join("src"), &mut files);
    }
    files.sort();

    let db = TestDatabase::create().await.expect("a test database");
    let mut conn = db.pool.acquire().await.expect("a connection");
    let mut prepared = 0;
    let mut failures = Vec::new();
    let mut built_seen = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let scan = scan(path);
        for written in &scan.unread {
            let call = (relative.as_str(), written.as_str());
            if BUILT_AT_RUN_TIME.contains(&call) {
                built_seen.push(format!("{relative} {written}"));
            } else {
                failures.push(format!(
                    "{relative}: cannot read the statement `{written}`: use a literal, \
                     `concat!` or a literal macro, or list it in BUILT_AT_RUN_TIME"
                ));
            }
        }
        for sql in &scan.statements {
            match prepare(&mut conn, sql).await {
                Ok(()) => prepared += 1,
                Err(e) => failures.push(format!("{relative}: {e}\n    {sql}")),
            }
        }
    }
    for (file, written) in BUILT_AT_RUN_TIME {
        if !built_seen.contains(&format!("{file} {written}")) {
            failures.push(format!(
                "BUILT_AT_RUN_TIME lists `{written}` in {file}, not there now"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The project has well over a hundred statements; far fewer means the
    // reader has stopped finding them.
    assert!(prepared >= 120, "only {prepared} statements found");
}
