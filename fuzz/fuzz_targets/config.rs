//! The configuration file: arbitrary text parsed and validated (no I/O: validation never reads
//! the files a source names), then every feature service compiled into its plan as the gateway
//! does at start-up.
//!
//! The contract: nothing panics; a refused file has at least one error, every error has a
//! message, and a position, when given, is a real `line:column` of the text.
#![no_main]

use std::{path::Path, sync::OnceLock};

use fetcher_api::Registry;
use gateway::plan;
use gateway_config as config;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(fetcher_builtin::registry)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::load_str_checked(
        text,
        "fuzz.toml",
        Path::new("/nonexistent"),
        registry(),
        &plan::check_all,
    ) {
        Ok(config) => {
            for fs in config.feature_services.values() {
                let _ = plan::compile(
                    &config,
                    &fs.name,
                    &fs.description,
                    fs.deadline,
                    &fs.features,
                    &fs.defaults,
                );
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "a refused file has an error");
            let lines = text.split('\n').count();
            for e in &errors.errors {
                assert!(
                    !e.message.trim().is_empty(),
                    "an error without a message: {e:?}"
                );
                if let Some((line, col)) = e.position {
                    assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e:?}");
                    assert!(col >= 1, "{e:?}");
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
});
