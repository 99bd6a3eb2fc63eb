//! `TOLLGATE_<SECTION>_<KEY>` environment overrides on a parsed TOML document.
//!
//! `TOLLGATE_GATEWAY_LISTEN=0.0.0.0:8080` sets `[gateway] listen`; the section is the first word
//! after `TOLLGATE_`, the rest (lower-cased) is the key, so `TOLLGATE_GATEWAY_METRICS_LISTEN`
//! sets `metrics_listen`. Values are read as TOML (`42`, `true`, `["a","b"]`) and otherwise taken
//! as a string. Only the named sections are overridable; other `TOLLGATE_*` variables (the service
//! token, the config path) are not configuration keys and are ignored here.

/// Applies overrides for the given `sections` from `vars` to `doc`.
pub fn apply_env_overrides<I>(doc: &mut toml::Table, sections: &[&str], vars: I)
where
    I: IntoIterator<Item = (String, String)>,
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
        let parsed = parse_value(&value);
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = table {
            t.insert(key.to_string(), parsed);
        }
    }
}

fn parse_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Reads, overrides and returns the document: the one place both binaries load TOML.
pub fn load_document(text: &str, sections: &[&str]) -> Result<toml::Table, String> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    apply_env_overrides(&mut doc, sections, std::env::vars());
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides() {
        let mut doc: toml::Table = "[gateway]\nlisten = \"a\"\n".parse().unwrap_or_default();
        apply_env_overrides(
            &mut doc,
            &["gateway", "backend"],
            vec![
                (
                    "TOLLGATE_GATEWAY_LISTEN".to_string(),
                    "127.0.0.1:1".to_string(),
                ),
                ("TOLLGATE_GATEWAY_WORKERS".to_string(), "3".to_string()),
                ("TOLLGATE_BACKEND_MODE".to_string(), "remote".to_string()),
                ("TOLLGATE_SERVICE_TOKEN".to_string(), "secret".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ],
        );
        let gw = doc
            .get("gateway")
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            gw.get("listen").and_then(|v| v.as_str()),
            Some("127.0.0.1:1")
        );
        assert_eq!(gw.get("workers").and_then(|v| v.as_integer()), Some(3));
        assert!(doc.get("service").is_none());
        let be = doc
            .get("backend")
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        assert_eq!(be.get("mode").and_then(|v| v.as_str()), Some("remote"));
    }
}
