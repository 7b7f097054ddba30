//! The registry's version parsing (src/registry/domain.rs): semantic versions of packages,
//! npm-style engine ranges and editor versions, and the package.json manifest that carries them.
//!
//! The first byte picks the mode: 0, the rest is a version; 1, `range \n editor version`; else a
//! manifest. Properties: an accepted version displays as the text it was parsed from and
//! re-parses equal, and `latest` never prefers a pre-release to a release; a range the parser
//! accepts is one a manifest may carry in `engines.atom` and answers the same there; an accepted
//! manifest keeps its limits and, written back as JSON, parses to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quintet::{
    error::Error,
    registry::domain::{EditorVersion, EngineRange, Manifest, Semver, choose_latest},
};
use quintet_fuzz::{Input, text};
use serde_json::{Value, json};

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    match input.byte() % 3 {
        0 => version(&text(input.rest())),
        1 => {
            let range = text(input.until(b'\n'));
            let editor = text(input.rest());
            engine_range(&range, &editor);
        }
        _ => manifest(&text(input.rest())),
    }
});

fn version(text: &str) {
    let Ok(parsed) = Semver::parse("version", text) else {
        return;
    };
    assert!(text.len() <= 256);
    assert_eq!(parsed.to_string(), text);
    let again = Semver::parse("version", &parsed.to_string()).expect("a shown version parses");
    assert_eq!(again, parsed);
    assert_eq!(
        parsed.is_prerelease(),
        text.split('+').next().unwrap_or_default().contains('-')
    );
    let release = Semver::parse("v", "0.0.0").unwrap();
    let latest = choose_latest([(&parsed, 1), (&release, 2)]);
    let expected = if parsed.is_prerelease() { 2 } else { 1 };
    assert!(parsed.is_prerelease() || parsed >= release);
    assert_eq!(latest, Some(expected));
}

fn engine_range(range: &str, editor: &str) {
    let parsed = EngineRange::parse("engines.atom", range);
    let from_manifest = Manifest::editor_range(&json!({ "atom": range }));
    assert_eq!(parsed.is_ok(), from_manifest.is_some(), "{range:?}");
    let in_manifest = Manifest::parse(
        "m",
        &json!({"name": "pkg", "version": "1.0.0", "engines": {"atom": range}}).to_string(),
    );
    assert_eq!(parsed.is_ok(), in_manifest.is_ok(), "{range:?}");
    if let Err(error) = &in_manifest {
        assert!(
            matches!(error, Error::InvalidArgument { field, .. } if field == "m.engines.atom"),
            "{error:?}"
        );
    }
    let (Ok(parsed), Some(from_manifest), Ok(editor)) = (
        parsed,
        from_manifest,
        EditorVersion::parse("engine_version", editor),
    ) else {
        return;
    };
    assert_eq!(parsed.accepts(&editor), from_manifest.accepts(&editor));
}

fn manifest(text: &str) {
    let parsed = match Manifest::parse("m", text) {
        Ok(parsed) => parsed,
        Err(error) => {
            assert!(
                matches!(&error, Error::InvalidArgument { field, .. } if field.starts_with('m')),
                "{error:?}"
            );
            return;
        }
    };
    assert!(!parsed.name.as_str().is_empty() && parsed.name.as_str().len() <= 214);
    assert!(parsed.keywords.len() <= 64);
    assert!(parsed.license.len() <= 256);
    assert!(parsed.engines.is_object());
    let written = serde_json::to_string(&Value::Object(parsed.raw.clone())).unwrap();
    if written.len() > quintet::registry::domain::MAX_MANIFEST_BYTES {
        // Written back longer than given (numbers such as 1e5 print as 100000.0).
        return;
    }
    let again = Manifest::parse("m", &written).expect("a manifest written back parses");
    assert_eq!(again.name, parsed.name);
    assert_eq!(again.version, parsed.version);
    assert_eq!(again.keywords, parsed.keywords);
    assert_eq!(again.repository, parsed.repository);
    assert_eq!(again.engines, parsed.engines);
    assert_eq!(again.is_theme, parsed.is_theme);
    assert_eq!(again.raw, parsed.raw);
}
