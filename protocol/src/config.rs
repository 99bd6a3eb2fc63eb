//! The configuration layer both binaries load through: defaults → TOML file →
//! `TOLLGATE_<SECTION>_<KEY>` environment variables, and the error lines an operator acts on.
//!
//! - [`Document`]: the parsed file plus the overrides, remembering which variable set what. A
//!   TOML syntax error is one line with `file:line:column`.
//! - [`Fields`]: reads one table (`[gateway]`, `[backend]`, one `[[routes]]` entry) setting by
//!   setting, converting each to the type that setting needs, and collects one line per bad
//!   setting naming it: `gateway.listen: ...`, `routes[2].plans: ...`, or the variable when the
//!   value came from the environment (`TOLLGATE_GATEWAY_LISTEN="notaport" is not a socket
//!   address like 127.0.0.1:8080`). Values are shown as TOML, never as Rust debug text, and
//!   never at all for secrets (tokens, passwords; a URL's password is masked).
//! - [`catalogue`]: the `[[plans]]` tables, read the same way.
//! - [`prepare_data_dir`]: creates and probes `data_dir`, naming the path when it cannot.
//!
//! Environment values stay strings until the setting they override converts them: `"1"` is a
//! valid `gateway_id`, and the number `1` for `workers`. Lists accept `a,b` or `["a","b"]`.
//! `TOLLGATE_GATEWAY_METRICS_LISTEN` sets `[gateway] metrics_listen`: the section is the first
//! word after `TOLLGATE_`, the rest (lower-cased) is the key. Only the sections a binary names
//! are overridable; other `TOLLGATE_*` variables (`TOLLGATE_SERVICE_TOKEN`, `TOLLGATE_CONFIG`)
//! are not configuration keys and are ignored here.

use crate::money::Currency;
use crate::plans::{Catalogue, Plan};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// A secret setting (a token, a provider key): it never shows in `Debug` output or logs; read
/// it with [`Secret::expose`] where it is used.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The configuration document: the file's tables with the environment overrides applied.
#[derive(Clone, Debug, Default)]
pub struct Document {
    table: toml::Table,
    /// `(section, key)` → the variable that set it.
    env: BTreeMap<(String, String), String>,
    /// Variables that could not be applied (not UTF-8, or a section that is not a table).
    problems: Vec<String>,
}

/// `line:column` (1-based, columns in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// One line, whatever the source text held.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Document {
    /// Parses TOML `text`; `file` names it in a syntax error (`config.toml:3:7: ...`).
    pub fn parse(text: &str, file: &str) -> Result<Document, String> {
        match text.parse::<toml::Table>() {
            Ok(table) => Ok(Document::from_table(table)),
            Err(e) => {
                let at = match e.span() {
                    Some(span) => {
                        let (line, col) = line_col(text, span.start);
                        format!("{file}:{line}:{col}")
                    }
                    None => file.to_string(),
                };
                Err(format!(
                    "{at}: TOML syntax error: {}",
                    one_line(e.message())
                ))
            }
        }
    }

    /// A document from an already parsed table (every value counts as from the file).
    pub fn from_table(table: toml::Table) -> Document {
        Document {
            table,
            env: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// Reads and parses the file at `path`, or an empty document without one.
    pub fn read(path: Option<&Path>) -> Result<Document, String> {
        let Some(path) = path else {
            return Ok(Document::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: cannot read it: {e}", path.display()))?;
        Document::parse(&text, &path.display().to_string())
    }

    /// [`Document::read`], then the process environment's overrides for `sections`; every
    /// problem is one line.
    pub fn load(path: Option<&Path>, sections: &[&str]) -> Result<Document, Vec<String>> {
        let mut doc = Document::read(path).map_err(|e| vec![e])?;
        doc.override_from_env(sections);
        Ok(doc)
    }

    /// Applies `TOLLGATE_<SECTION>_<KEY>` from the process environment.
    pub fn override_from_env(&mut self, sections: &[&str]) {
        let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v)));
        self.override_from(sections, vars);
    }

    /// Applies overrides for `sections` from `vars` (name, value). Values are kept as strings.
    pub fn override_from<I, V>(&mut self, sections: &[&str], vars: I)
    where
        I: IntoIterator<Item = (String, V)>,
        V: Into<OsString>,
    {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("TOLLGATE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if !sections.contains(&section) || key.is_empty() {
                continue;
            }
            let Ok(value) = value.into().into_string() else {
                self.problems
                    .push(format!("{name}: the value is not valid UTF-8"));
                continue;
            };
            let table = self
                .table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(t) => {
                    t.insert(key.to_string(), toml::Value::String(value));
                    self.env
                        .insert((section.to_string(), key.to_string()), name.clone());
                }
                _ => self.problems.push(format!(
                    "{name}: cannot set {section}.{key}: {section} in the file is not a table"
                )),
            }
        }
    }

    /// Lines for overrides that could not be applied.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The whole (overridden) document.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// The variable that set `section.key`, if one did.
    pub fn env_var(&self, section: &str, key: &str) -> Option<&str> {
        self.env
            .get(&(section.to_string(), key.to_string()))
            .map(String::as_str)
    }

    /// Sets `section.key` unless the file or environment did (the embedded backend's
    /// `data_dir` defaults to the gateway's).
    pub fn set_default(&mut self, section: &str, key: &str, value: toml::Value) {
        let t = self
            .table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = t {
            t.entry(key.to_string()).or_insert(value);
        }
    }

    /// A reader for the table `[section]` (absent = empty), aware of the section's overrides.
    pub fn fields<'e>(&self, section: &str, errors: &'e mut Vec<String>) -> Fields<'e> {
        let env = self
            .env
            .iter()
            .filter(|((s, _), _)| s == section)
            .map(|((_, k), var)| (k.clone(), var.clone()))
            .collect();
        let mut f = Fields::new(section, self.table.get(section), errors);
        f.env = env;
        f
    }

    /// One line per top-level key that is not one of `known` sections.
    pub fn check_sections(&self, known: &[&str], errors: &mut Vec<String>) {
        for key in self.table.keys() {
            if !known.contains(&key.as_str()) {
                let list = known
                    .iter()
                    .map(|k| match *k {
                        "plans" | "routes" => format!("[[{k}]]"),
                        _ => format!("[{k}]"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.push(format!("{key}: unknown section (expected {list})"));
            }
        }
    }
}

/// A TOML value as an operator would have written it (strings quoted, lists bracketed).
pub fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => quote(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// What kind of value `v` is, in words.
pub fn kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// `"text"` with quotes, backslashes and control characters escaped as in TOML.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Settings whose values are never shown in an error line.
fn is_secret(key: &str) -> bool {
    key.contains("token") || key.contains("secret") || key.contains("password")
}

/// `scheme://user:password@host/...` with the password replaced by `***`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Levenshtein distance, for "did you mean" on unknown settings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads a table's settings one by one, collecting one error line per bad setting.
pub struct Fields<'e> {
    at: String,
    table: toml::Table,
    /// key → the variable that set it.
    env: BTreeMap<String, String>,
    /// Keys asked for, in order (what `finish` suggests from, and what `--help` documents).
    asked: Vec<String>,
    errors: &'e mut Vec<String>,
}

impl<'e> Fields<'e> {
    /// A reader for `value` (a table, or absent), whose settings are named `{at}.{key}`.
    pub fn new(at: &str, value: Option<&toml::Value>, errors: &'e mut Vec<String>) -> Fields<'e> {
        let table = match value {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(other) => {
                errors.push(format!("{at}: must be a table, got {}", kind(other)));
                toml::Table::new()
            }
        };
        Fields {
            at: at.to_string(),
            table,
            env: BTreeMap::new(),
            asked: Vec::new(),
            errors,
        }
    }

    /// How an error names `key`: the variable that set it, else `{at}.{key}`.
    pub fn name(&self, key: &str) -> String {
        match self.env.get(key) {
            Some(var) => var.clone(),
            None => format!("{}.{key}", self.at),
        }
    }

    /// True when `key`'s value came from an environment variable.
    pub fn from_env(&self, key: &str) -> bool {
        self.env.contains_key(key)
    }

    /// An error about `key` that needs no value shown: `{name}: {msg}`.
    pub fn err(&mut self, key: &str, msg: impl std::fmt::Display) {
        let line = format!("{}: {msg}", self.name(key));
        self.errors.push(line);
    }

    /// An error about `key`'s value `shown` (already rendered as TOML): from the file
    /// `gateway.listen: "x" is not ...`, from the environment `TOLLGATE_GATEWAY_LISTEN="x" is
    /// not ...`; a secret's value is left out.
    pub fn invalid(&mut self, key: &str, shown: &str, problem: impl std::fmt::Display) {
        let shown = if is_secret(key) {
            None
        } else if key.ends_with("_url") {
            Some(mask_url_password(shown))
        } else {
            Some(shown.to_string())
        };
        let line = match (self.env.get(key), shown) {
            (Some(var), Some(v)) => format!("{var}={v} {problem}"),
            (Some(var), None) => format!("{var}: the value {problem}"),
            (None, Some(v)) => format!("{}.{key}: {v} {problem}", self.at),
            (None, None) => format!("{}.{key}: the value {problem}", self.at),
        };
        self.errors.push(line);
    }

    /// Removes and returns `key`'s raw value.
    pub fn take(&mut self, key: &str) -> Option<toml::Value> {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_string());
        }
        self.table.remove(key)
    }

    /// Reports a value of the wrong type: `expected {what}, got a whole number 1`.
    fn wrong_type(&mut self, key: &str, what: &str, v: &toml::Value) {
        let got = match v {
            toml::Value::Table(_) => "a table".to_string(),
            toml::Value::Array(_) => format!("a list {}", show(v)),
            _ if is_secret(key) => kind(v).to_string(),
            _ => format!("{} {}", kind(v), show(v)),
        };
        self.err(key, format!("expected {what}, got {got}"));
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.take(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.wrong_type(key, "a string", &other);
                None
            }
        }
    }

    /// A string that must be present.
    pub fn required_string(&mut self, key: &str) -> Option<String> {
        let v = self.string(key);
        if v.is_none() && !self.errors_mention(key) {
            self.err(key, "required");
        }
        v
    }

    fn errors_mention(&self, key: &str) -> bool {
        let name = self.name(key);
        self.errors.iter().any(|e| e.starts_with(&name))
    }

    /// A whole number (from the environment: its decimal text).
    pub fn i64(&mut self, key: &str) -> Option<i64> {
        let v = self.take(key)?;
        match &v {
            toml::Value::Integer(i) => Some(*i),
            toml::Value::String(s) if self.from_env(key) => match s.trim().parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.invalid(key, &quote(s), "is not a whole number");
                    None
                }
            },
            _ => {
                self.wrong_type(key, "a whole number", &v);
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub fn u64(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.i64(key)?;
        let shown = if self.from_env(key) {
            quote(&n.to_string())
        } else {
            n.to_string()
        };
        match u64::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.invalid(key, &shown, format!("is out of range ({min}..={max})"));
                None
            }
        }
    }

    /// A required whole number in `min..=max`.
    pub fn required_u64(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let present = self.table.contains_key(key);
        let v = self.u64(key, min, max);
        if !present {
            self.err(key, "required");
        }
        v
    }

    /// Milliseconds in `min..=max`, else `default`.
    pub fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.u64(key, min, max).unwrap_or(default))
    }

    /// `true` or `false` (from the environment also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        let v = self.take(key)?;
        match &v {
            toml::Value::Boolean(b) => Some(*b),
            toml::Value::String(s) if self.from_env(key) => {
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Some(true),
                    "false" | "0" | "no" | "off" => Some(false),
                    _ => {
                        self.invalid(key, &quote(s), "must be true or false");
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(key, "true or false", &v);
                None
            }
        }
    }

    /// A list of strings (from the environment: `a,b` or `["a", "b"]`).
    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let v = self.take(key)?;
        let v = match v {
            toml::Value::String(s) if self.from_env(key) => {
                let t = s.trim();
                if t.starts_with('[') {
                    match format!("v = {t}").parse::<toml::Table>() {
                        Ok(mut table) => table.remove("v").unwrap_or(toml::Value::Array(vec![])),
                        Err(_) => {
                            self.invalid(
                                key,
                                &quote(&s),
                                "is not a list like a,b or [\"a\", \"b\"]",
                            );
                            return None;
                        }
                    }
                } else {
                    return Some(
                        t.split(',')
                            .map(str::trim)
                            .filter(|x| !x.is_empty())
                            .map(str::to_string)
                            .collect(),
                    );
                }
            }
            other => other,
        };
        let list = v.as_array().map(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        });
        match list {
            Some(Some(l)) => Some(l),
            Some(None) => {
                self.invalid(key, &show(&v), "must be a list of strings");
                None
            }
            None => {
                self.wrong_type(key, "a list of strings", &v);
                None
            }
        }
    }

    /// A string → string table (`provider_prices = { stripe_monthly = "price_..." }`).
    pub fn string_map(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
        let v = self.take(key)?;
        let toml::Value::Table(t) = &v else {
            self.wrong_type(key, "a table of strings", &v);
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, x) in t {
            match x.as_str() {
                Some(s) => {
                    out.insert(k.clone(), s.to_string());
                }
                None => {
                    let line = format!("{}.{key}.{k}", self.at);
                    self.errors.push(format!(
                        "{line}: expected a string, got {} {}",
                        kind(x),
                        show(x)
                    ));
                }
            }
        }
        Some(out)
    }

    /// A socket address like `127.0.0.1:8080`, else `default` (itself an address).
    pub fn addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let fallback = default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let Some(text) = self.string(key) else {
            return fallback;
        };
        match text.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                self.invalid(
                    key,
                    &quote(&text),
                    format!("is not a socket address like {default} (IP:port)"),
                );
                fallback
            }
        }
    }

    /// The keys asked for so far.
    pub fn asked(&self) -> &[String] {
        &self.asked
    }

    /// Reports every key nobody asked for (with the nearest known name), and returns the keys
    /// that were asked for.
    pub fn finish(self) -> Vec<String> {
        for key in self.table.keys() {
            let hint = self
                .asked
                .iter()
                .map(|k| (distance(key, k), k))
                .filter(|(d, k)| *d <= 2.max(k.len() / 4))
                .min()
                .map(|(_, k)| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            let line = match self.env.get(key) {
                Some(var) => format!("{var}: unknown setting {}.{key}{hint}", self.at),
                None => format!("{}.{key}: unknown setting{hint}", self.at),
            };
            self.errors.push(line);
        }
        self.asked
    }
}

/// The `[[plans]]` catalogue (the three defaults without any), one line per bad setting:
/// `plans[1].daily_limit: expected a whole number, got a string "5000"`.
pub fn catalogue(doc: &Document, errors: &mut Vec<String>) -> Option<Catalogue> {
    let before = errors.len();
    let mut list: Vec<Plan> = Vec::new();
    match doc.get("plans") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(p) = plan(&format!("plans[{i}]"), item, errors) {
                    list.push(p);
                }
            }
        }
        Some(other) => errors.push(format!(
            "plans: must be an array of tables ([[plans]]), got {}",
            kind(other)
        )),
    }
    if errors.len() > before {
        return None;
    }
    match Catalogue::new(list) {
        Ok(c) => Some(c),
        Err(es) => {
            errors.extend(es);
            None
        }
    }
}

fn plan(at: &str, item: &toml::Value, errors: &mut Vec<String>) -> Option<Plan> {
    let before = errors.len();
    let mut f = Fields::new(at, Some(item), errors);
    let id = f.required_string("id");
    let name = f.required_string("name");
    let currency = match f.string("currency") {
        None => Some(Currency::EUR),
        Some(code) => match Currency::parse(&code) {
            Ok(c) => Some(c),
            Err(_) => {
                f.invalid(
                    "currency",
                    &quote(&code),
                    "is not an ISO 4217 currency code",
                );
                None
            }
        },
    };
    let monthly = f.i64("price_monthly_minor");
    let yearly = f.i64("price_yearly_minor");
    let per_minute = f.required_u64("rate_limit_per_minute", 0, u64::MAX >> 1);
    let per_day = f.required_u64("daily_limit", 0, u64::MAX >> 1);
    let features = f.strings("features").unwrap_or_default();
    let max_keys = f
        .required_u64("max_keys_per_user", 0, u64::from(u32::MAX))
        .and_then(|n| u32::try_from(n).ok());
    let provider_prices = f.string_map("provider_prices").unwrap_or_default();
    for key in ["price_monthly_minor", "price_yearly_minor"] {
        let missing = match key {
            "price_monthly_minor" => monthly.is_none(),
            _ => yearly.is_none(),
        };
        if missing && !f.errors_mention(key) {
            f.err(key, "required (in minor units: 2900 = 29.00)");
        }
    }
    f.finish();
    if errors.len() > before {
        return None;
    }
    Some(Plan {
        id: id?,
        name: name?,
        currency: currency?,
        price_monthly_minor: monthly?,
        price_yearly_minor: yearly?,
        rate_limit_per_minute: per_minute?,
        daily_limit: per_day?,
        features,
        max_keys_per_user: max_keys?,
        provider_prices,
    })
}

/// Creates `dir` (and its parents) and checks that files can be written in it, before anything
/// else is created there. The error names the setting and the path.
pub fn prepare_data_dir(setting: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{setting}: cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".tollgate-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("{setting}: cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A command-line parser's message as one line: its first paragraph (the error and, when it
/// says which, the missing arguments or possible values) without the `error: ` prefix, and
/// where to look next.
pub fn clap_error_line(text: &str) -> String {
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = first.join(" ");
    let joined = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{joined} (see --help)")
}

/// Keeps the first of each repeated line (a setting checked by two readers is reported once).
pub fn dedup(errors: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    errors.retain(|e| seen.insert(e.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str, vars: &[(&str, &str)]) -> Document {
        let mut d = Document::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        d.override_from(
            &["gateway", "backend"],
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        d
    }

    #[test]
    fn overrides_stay_strings_and_remember_their_variable() {
        let d = doc(
            "[gateway]\nlisten = \"a\"\n",
            &[
                ("TOLLGATE_GATEWAY_LISTEN", "127.0.0.1:1"),
                ("TOLLGATE_GATEWAY_WORKERS", "3"),
                ("TOLLGATE_BACKEND_MODE", "remote"),
                ("TOLLGATE_SERVICE_TOKEN", "secret"),
                ("OTHER", "x"),
            ],
        );
        let gw = d
            .get("gateway")
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            gw.get("listen").and_then(|v| v.as_str()),
            Some("127.0.0.1:1")
        );
        assert_eq!(gw.get("workers").and_then(|v| v.as_str()), Some("3"));
        assert!(d.get("service").is_none());
        assert_eq!(d.env_var("backend", "mode"), Some("TOLLGATE_BACKEND_MODE"));
        assert_eq!(
            d.env_var("gateway", "listen"),
            Some("TOLLGATE_GATEWAY_LISTEN")
        );
        assert_eq!(d.env_var("gateway", "data_dir"), None);
        let mut errors = Vec::new();
        let mut f = d.fields("gateway", &mut errors);
        assert_eq!(f.u64("workers", 1, 8), Some(3));
        assert_eq!(f.string("listen").as_deref(), Some("127.0.0.1:1"));
        f.finish();
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_syntax_error_has_file_line_and_column() {
        let e = Document::parse("[gateway]\nlisten = \"a\"\nworkers = = 3\n", "x/g.toml")
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("x/g.toml:3:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn errors_name_the_variable_or_the_setting_and_show_toml() {
        let d = doc(
            "[gateway]\nworkers = \"4\"\nmetrics_listen = \"x\"\n",
            &[
                ("TOLLGATE_GATEWAY_LISTEN", "notaport"),
                ("TOLLGATE_GATEWAY_ID", "1"),
                ("TOLLGATE_GATEWAY_FLUSH", "abc"),
                ("TOLLGATE_GATEWAY_FEED_TOKEN", "hunter2"),
                ("TOLLGATE_GATEWAY_LISTNE", "1"),
            ],
        );
        let mut errors = Vec::new();
        let mut f = d.fields("gateway", &mut errors);
        f.addr("listen", "127.0.0.1:8080");
        f.addr("metrics_listen", "127.0.0.1:9464");
        assert_eq!(f.string("id").as_deref(), Some("1"));
        f.u64("workers", 1, 8);
        f.u64("flush", 1, 8);
        f.u64("feed_token", 1, 8);
        f.finish();
        let want = [
            "TOLLGATE_GATEWAY_LISTEN=\"notaport\" is not a socket address like 127.0.0.1:8080 (IP:port)",
            "gateway.metrics_listen: \"x\" is not a socket address like 127.0.0.1:9464 (IP:port)",
            "gateway.workers: expected a whole number, got a string \"4\"",
            "TOLLGATE_GATEWAY_FLUSH=\"abc\" is not a whole number",
            "TOLLGATE_GATEWAY_FEED_TOKEN: the value is not a whole number",
            "TOLLGATE_GATEWAY_LISTNE: unknown setting gateway.listne (did you mean listen?)",
        ];
        assert_eq!(errors, want);
        assert!(errors
            .iter()
            .all(|e| !e.contains("hunter2") && !e.contains("String(")));
    }

    #[test]
    fn lists_and_booleans_from_the_environment() {
        let d = doc(
            "",
            &[
                ("TOLLGATE_GATEWAY_A", "x, y"),
                ("TOLLGATE_GATEWAY_B", "[\"p\", \"q\"]"),
                ("TOLLGATE_GATEWAY_C", "yes"),
                ("TOLLGATE_GATEWAY_D", "maybe"),
            ],
        );
        let mut errors = Vec::new();
        let mut f = d.fields("gateway", &mut errors);
        assert_eq!(f.strings("a"), Some(vec!["x".to_string(), "y".to_string()]));
        assert_eq!(f.strings("b"), Some(vec!["p".to_string(), "q".to_string()]));
        assert_eq!(f.bool("c"), Some(true));
        assert_eq!(f.bool("d"), None);
        f.finish();
        assert_eq!(
            errors,
            ["TOLLGATE_GATEWAY_D=\"maybe\" must be true or false"]
        );
    }

    #[test]
    fn plans_errors_name_the_field() {
        let d = doc(
            "[[plans]]\nid = \"free\"\nname = \"Free\"\nprice_monthly_minor = 0\nprice_yearly_minor = 0\nrate_limit_per_minute = \"10\"\ndaily_limit = 50\nmax_keys_per_user = 2\ncolour = 1\n",
            &[],
        );
        let mut errors = Vec::new();
        assert!(catalogue(&d, &mut errors).is_none());
        assert_eq!(
            errors,
            [
                "plans[0].rate_limit_per_minute: expected a whole number, got a string \"10\"",
                "plans[0].colour: unknown setting"
            ]
        );
        let d = doc("[[plans]]\nid = \"free\"\n", &[]);
        let mut errors = Vec::new();
        assert!(catalogue(&d, &mut errors).is_none());
        assert!(
            errors.contains(&"plans[0].name: required".to_string()),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("plans[0].price_monthly_minor: required")),
            "{errors:?}"
        );
        let mut errors = Vec::new();
        let c = catalogue(&doc("", &[]), &mut errors);
        assert_eq!(c.map(|c| c.all().len()), Some(3));
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(mask_url_password("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn an_unusable_data_dir_is_named() {
        let base = std::env::temp_dir().join(format!("tollgate-cfg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&base);
        let file = base.join("file");
        let _ = std::fs::write(&file, b"x");
        let e = prepare_data_dir("gateway.data_dir", &file.join("data"))
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("gateway.data_dir: cannot create "), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(prepare_data_dir("x", &base.join("ok")).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }
}
