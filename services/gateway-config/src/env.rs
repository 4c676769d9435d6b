//! The environment a configuration needs: every `${NAME}` it names (in a source's or a view's
//! options, in a shared cache tier's URL) must be set, and so must the salt of a training log
//! that hashes personal data. Checked when the gateway starts and by `validate` (unless told the
//! secrets are not meant to exist where it runs), each unset variable a problem at the field
//! that names it.
//!
//! This reads the environment and nothing else: no value is ever part of a message.

use fetcher_api::{Env, EnvTemplate};

use crate::{Config, training_log::PiiMode};

/// Every variable `config` names that `env` does not set, at the field naming it.
pub fn unset_variables(config: &Config, env: &Env) -> Vec<(Vec<String>, String)> {
    let mut problems = Vec::new();
    for source in config.sources.values() {
        let at = vec!["sources".to_owned(), source.name.clone()];
        walk(&source.spec.options.0, &at, env, &mut problems);
        for view in &source.spec.views {
            let at = vec!["views".to_owned(), view.name.clone()];
            walk(&view.options.0, &at, env, &mut problems);
        }
        if let Some(shared) = source.cache.as_ref().and_then(|c| c.shared.as_ref()) {
            let mut at = at.clone();
            at.extend(["cache", "shared", "url"].map(String::from));
            check(&shared.url, at, env, &mut problems);
        }
    }
    if let Some(log) = &config.training_log {
        let hashes_pii = log.pii == PiiMode::Hash
            && config
                .views
                .values()
                .any(|v| v.features.values().any(|f| f.pii));
        if hashes_pii && env.get(&log.pii_salt_env).is_none() {
            problems.push((
                vec!["training_log".to_owned()],
                format!(
                    "`{}` is not set in the environment: features marked `pii = true` are hashed \
                     with its salt (`pii_salt_env` names another variable)",
                    log.pii_salt_env
                ),
            ));
        }
    }
    problems
}

/// Checks every string under `table`, at its path.
fn walk(table: &toml::Table, at: &[String], env: &Env, problems: &mut Vec<(Vec<String>, String)>) {
    for (key, value) in table {
        let mut path = at.to_vec();
        path.push(key.clone());
        walk_value(value, path, env, problems);
    }
}

fn walk_value(
    value: &toml::Value,
    path: Vec<String>,
    env: &Env,
    problems: &mut Vec<(Vec<String>, String)>,
) {
    match value {
        toml::Value::String(text) => check(text, path, env, problems),
        toml::Value::Table(table) => walk(table, &path, env, problems),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut path = path.clone();
                path.push(i.to_string());
                walk_value(item, path, env, problems);
            }
        }
        _ => {}
    }
}

/// One string: its `${NAME}` references that are unset. A string that is not a valid template
/// is the source kind's to report; it is skipped here.
fn check(text: &str, path: Vec<String>, env: &Env, problems: &mut Vec<(Vec<String>, String)>) {
    if !text.contains("${") {
        return;
    }
    let Ok(template) = EnvTemplate::parse(text) else {
        return;
    };
    for name in template.env_names() {
        if env.get(name).is_none() {
            problems.push((
                path.clone(),
                format!("`${{{name}}}` is not set in the environment"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unset_variables_are_reported_at_the_field_naming_them() {
        let text = r#"
[entities.user_id]
type = "string"

[sources.kv]
kind = "redis"
url = "redis://:${KV_PASSWORD}@127.0.0.1:6379"
cache = { ttl = "1s", shared = { url = "redis://:${TIER_PASSWORD}@127.0.0.1:6380" } }

[views.user]
source = "kv"
entities = ["user_id"]
key = "user:{user_id}"
features = { score = { type = "double", pii = true } }

[feature_services.fs]
features = ["user:score"]

[training_log]
dir = "log"
"#;
        let config = crate::load_str(
            text,
            "c.toml",
            Path::new("/nonexistent"),
            &fetcher_builtin::registry(),
        )
        .expect("valid");
        let env = Env::from_fn(|name| (name == "TIER_PASSWORD").then(|| "x".to_owned()));
        let problems = unset_variables(&config, &env);
        let paths: Vec<String> = problems.iter().map(|(p, _)| p.join(".")).collect();
        assert_eq!(paths, ["sources.kv.url", "training_log"], "{problems:?}");
        assert!(problems[0].1.contains("`${KV_PASSWORD}` is not set"));
        assert!(problems[1].1.contains("FEATURE_GATEWAY_PII_SALT"));
        let all = Env::from_fn(|_| Some("x".to_owned()));
        assert!(unset_variables(&config, &all).is_empty());
    }
}
