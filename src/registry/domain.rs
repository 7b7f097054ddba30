//! The registry's domain types, parsed once from untrusted input: package names, versions,
//! manifests, token scopes, usernames, listing orders.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Longest package name (npm's limit).
pub const MAX_NAME_LEN: usize = 214;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// Largest readme accepted.
pub const MAX_README_BYTES: usize = 1024 * 1024;

/// Names no package may take: the editors' own, npm's reserved ones, and names that would
/// confuse URLs or file systems.
const BANNED_NAMES: &[&str] = &[
    "atom",
    "pulsar",
    "pulsar-edit",
    "core",
    "node_modules",
    "favicon.ico",
    "package",
    "packages",
    "theme",
    "themes",
    "admin",
    "api",
    "login",
    "logout",
    "settings",
    "search",
    "featured",
    "owners",
    "stars",
    "users",
    "user",
    "new",
    "null",
    "undefined",
];

/// Why a name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    Invalid,
    Banned,
}

/// A validated package name: 1 to 214 characters of lowercase ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit, not on the ban list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageName(String);

impl PackageName {
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        Self::check(name).map_err(|(_, why)| Error::invalid_argument(field, why))
    }

    /// The name, or why it cannot be used, without deciding on an error code.
    pub fn check(name: &str) -> std::result::Result<Self, (NameProblem, String)> {
        let invalid = |why: &str| Err((NameProblem::Invalid, why.to_owned()));
        if name.is_empty() {
            return invalid("must not be empty");
        }
        if name.len() > MAX_NAME_LEN {
            return invalid("must be at most 214 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        {
            return invalid("may contain only lowercase letters, digits, '-', '_' and '.'");
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return invalid("must start with a letter or digit");
        }
        if BANNED_NAMES.contains(&name) {
            return Err((NameProblem::Banned, format!("{name:?} is reserved")));
        }
        Ok(PackageName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lookup by name: any string that could be a name; lookups of impossible names are
/// INVALID_ARGUMENT rather than NOT_FOUND, so typos are told apart from absent packages.
pub fn lookup_name(field: &str, name: &str) -> Result<String> {
    match PackageName::check(name) {
        Ok(name) => Ok(name.0),
        // A banned name may still be an old package's name in a database made elsewhere.
        Err((NameProblem::Banned, _)) => Ok(name.to_owned()),
        Err((NameProblem::Invalid, why)) => Err(Error::invalid_argument(field, why)),
    }
}

/// A semantic version (SemVer 2.0), at most 256 characters as the seed's column allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver(semver::Version);

impl Semver {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text.len() > 256 {
            return Err(Error::invalid_argument(
                field,
                "must be at most 256 characters",
            ));
        }
        semver::Version::parse(text)
            .map(Semver)
            .map_err(|e| Error::invalid_argument(field, format!("not a semantic version: {e}")))
    }

    pub fn is_prerelease(&self) -> bool {
        !self.0.pre.is_empty()
    }
}

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The version among `versions` that new installs should get: the highest release, or if there
/// is none, the highest pre-release. `None` if nothing is offered.
pub fn choose_latest<'a, T>(versions: impl IntoIterator<Item = (&'a Semver, T)>) -> Option<T> {
    let mut best: Option<(&Semver, T)> = None;
    for (version, id) in versions {
        let better = match &best {
            None => true,
            Some((current, _)) => {
                (!version.is_prerelease(), version) > (!current.is_prerelease(), *current)
            }
        };
        if better {
            best = Some((version, id));
        }
    }
    best.map(|(_, id)| id)
}

/// An npm-style range over editor versions (the manifest's `engines.atom`), e.g.
/// `>=1.0.0 <2.0.0` or `^1.50.0 || ^2`.
#[derive(Debug, Clone)]
pub struct EngineRange(nodejs_semver::Range);

impl EngineRange {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        nodejs_semver::Range::parse(text)
            .map(EngineRange)
            .map_err(|_| Error::invalid_argument(field, format!("{text:?} is not a version range")))
    }

    pub fn accepts(&self, version: &EditorVersion) -> bool {
        self.0.satisfies(&version.0)
    }
}

/// An editor version to test engine ranges against.
#[derive(Debug, Clone)]
pub struct EditorVersion(nodejs_semver::Version);

impl EditorVersion {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        nodejs_semver::Version::parse(text)
            .map(EditorVersion)
            .map_err(|_| Error::invalid_argument(field, format!("{text:?} is not a version")))
    }
}

/// A package.json-style manifest, checked for what the registry relies on; everything else is
/// kept as given in `raw`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: PackageName,
    pub version: Semver,
    pub description: String,
    pub keywords: Vec<String>,
    pub repository: String,
    pub license: String,
    pub engines: Value,
    pub is_theme: bool,
    pub raw: Map<String, Value>,
}

impl Manifest {
    /// Parses the manifest; `field` is its path in the request (`header.manifest_json`).
    pub fn parse(field: &str, json: &str) -> Result<Self> {
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(Error::invalid_argument(field, "larger than 256 KiB"));
        }
        let raw: Map<String, Value> = serde_json::from_str(json)
            .map_err(|e| Error::invalid_argument(field, format!("not a JSON object: {e}")))?;
        let text = |key: &str| -> Result<Option<String>> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::invalid_argument(
                    format!("{field}.{key}"),
                    "must be a string",
                )),
            }
        };
        let name = text("name")?
            .ok_or_else(|| Error::invalid_argument(format!("{field}.name"), "is required"))?;
        let name = PackageName::parse(&format!("{field}.name"), &name)?;
        let version = text("version")?
            .ok_or_else(|| Error::invalid_argument(format!("{field}.version"), "is required"))?;
        let version = Semver::parse(&format!("{field}.version"), &version)?;
        let keywords = match raw.get("keywords") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() <= 64 => items
                .iter()
                .map(|k| match k {
                    Value::String(s) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
                    _ => Err(Error::invalid_argument(
                        format!("{field}.keywords"),
                        "must be strings of 1 to 64 characters",
                    )),
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(Error::invalid_argument(
                    format!("{field}.keywords"),
                    "must be an array of at most 64 strings",
                ));
            }
        };
        // `repository` is a URL string or `{ "type": "git", "url": "..." }`.
        let repository = match raw.get("repository") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => match o.get("url") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(Error::invalid_argument(
                        format!("{field}.repository.url"),
                        "must be a string",
                    ));
                }
            },
            Some(_) => {
                return Err(Error::invalid_argument(
                    format!("{field}.repository"),
                    "must be a string or an object with a url",
                ));
            }
        };
        let license = text("license")?.unwrap_or_default();
        if license.len() > 256 {
            return Err(Error::invalid_argument(
                format!("{field}.license"),
                "must be at most 256 characters",
            ));
        }
        let engines = match raw.get("engines") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(engines)) => {
                for (editor, range) in engines {
                    let Value::String(range) = range else {
                        return Err(Error::invalid_argument(
                            format!("{field}.engines.{editor}"),
                            "must be a version range string",
                        ));
                    };
                    EngineRange::parse(&format!("{field}.engines.{editor}"), range)?;
                }
                Value::Object(engines.clone())
            }
            Some(_) => {
                return Err(Error::invalid_argument(
                    format!("{field}.engines"),
                    "must be an object",
                ));
            }
        };
        let is_theme = match raw.get("theme") {
            None | Some(Value::Null) => false,
            Some(Value::String(kind)) if kind == "syntax" || kind == "ui" => true,
            Some(_) => {
                return Err(Error::invalid_argument(
                    format!("{field}.theme"),
                    "must be \"syntax\" or \"ui\"",
                ));
            }
        };
        Ok(Manifest {
            name,
            version,
            description: text("description")?.unwrap_or_default(),
            keywords,
            repository,
            license,
            engines,
            is_theme,
            raw,
        })
    }

    /// The range of editor versions this version supports (`engines.atom`), if it says.
    pub fn editor_range(engines: &Value) -> Option<EngineRange> {
        engines
            .get("atom")
            .and_then(Value::as_str)
            .and_then(|r| EngineRange::parse("engines.atom", r).ok())
    }
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    PublishNew,
    PublishUpdate,
    Yank,
    Star,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PublishNew => "publish-new",
            Scope::PublishUpdate => "publish-update",
            Scope::Yank => "yank",
            Scope::Star => "star",
        }
    }

    pub fn from_db(text: &str) -> Option<Self> {
        Some(match text {
            "publish-new" => Scope::PublishNew,
            "publish-update" => Scope::PublishUpdate,
            "yank" => Scope::Yank,
            "star" => Scope::Star,
            _ => return None,
        })
    }
}

/// A username: 1 to 39 letters, digits and single inner hyphens (GitHub's rule).
pub fn parse_username(field: &str, name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(name.to_owned())
    } else {
        Err(Error::invalid_argument(
            field,
            "must be 1 to 39 letters, digits or single inner hyphens",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["minimap", "language-rust", "a", "x.y_z-1", "0day"] {
            assert!(PackageName::check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Minimap",
            "-x",
            ".x",
            "_x",
            "a b",
            "ä",
            "a/b",
            &"a".repeat(215),
        ] {
            assert_eq!(
                PackageName::check(bad).unwrap_err().0,
                NameProblem::Invalid,
                "{bad}"
            );
        }
        assert_eq!(
            PackageName::check("atom").unwrap_err().0,
            NameProblem::Banned
        );
        assert!(lookup_name("name", "atom").is_ok());
        assert!(lookup_name("name", "Bad Name").is_err());
    }

    #[test]
    fn latest_prefers_releases() {
        let v = |s: &str| Semver::parse("v", s).unwrap();
        let (a, b, c) = (v("1.0.0"), v("2.0.0-beta.1"), v("1.10.0"));
        assert_eq!(choose_latest([(&a, 1), (&b, 2), (&c, 3)]), Some(3));
        assert_eq!(choose_latest([(&b, 2)]), Some(2));
        assert_eq!(choose_latest::<i32>([]), None);
    }

    #[test]
    fn manifests() {
        let m = Manifest::parse(
            "m",
            r#"{"name":"minimap","version":"4.1.0","keywords":["map"],"engines":{"atom":">=1.0.0 <2.0.0"},
               "repository":{"type":"git","url":"https://github.com/x/minimap"},"theme":null,"license":"MIT"}"#,
        )
        .unwrap();
        assert_eq!(m.name.as_str(), "minimap");
        assert_eq!(m.repository, "https://github.com/x/minimap");
        let range = Manifest::editor_range(&m.engines).unwrap();
        assert!(range.accepts(&EditorVersion::parse("v", "1.5.0").unwrap()));
        assert!(!range.accepts(&EditorVersion::parse("v", "2.0.0").unwrap()));

        let field = |json: &str| match Manifest::parse("m", json).unwrap_err() {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field("[]"), "m");
        assert_eq!(field(r#"{"version":"1.0.0"}"#), "m.name");
        assert_eq!(field(r#"{"name":"x","version":"1.0"}"#), "m.version");
        assert_eq!(
            field(r#"{"name":"x","version":"1.0.0","engines":{"atom":"nope nope"}}"#),
            "m.engines.atom"
        );
        assert_eq!(
            field(r#"{"name":"x","version":"1.0.0","keywords":"a"}"#),
            "m.keywords"
        );
        assert_eq!(
            field(r#"{"name":"x","version":"1.0.0","theme":"dark"}"#),
            "m.theme"
        );
        assert_eq!(
            field(&format!(
                r#"{{"name":"x","version":"1.0.0","d":"{}"}}"#,
                "a".repeat(MAX_MANIFEST_BYTES)
            )),
            "m"
        );
    }

    #[test]
    fn usernames() {
        assert!(parse_username("u", "octo-cat").is_ok());
        for bad in ["", "-a", "a-", "a--b", "a b", &"a".repeat(40)] {
            assert!(parse_username("u", bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Client text never panics the parsers, and what they accept satisfies their rules.
        #[test]
        fn parsers_never_panic(text in ".{0,300}") {
            if let Ok(name) = PackageName::check(&text) {
                proptest::prop_assert!(name.as_str().len() <= MAX_NAME_LEN);
                proptest::prop_assert!(name.as_str().bytes().all(|b| !b.is_ascii_uppercase()));
            }
            let _ = Semver::parse("v", &text);
            let _ = EngineRange::parse("r", &text);
            let _ = EditorVersion::parse("e", &text);
            let _ = parse_username("u", &text);
            let _ = Manifest::parse("m", &text);
        }

        /// `latest` is an offered version, and no offered release is above it.
        #[test]
        fn latest_is_the_highest_release(versions in proptest::collection::vec((0u64..5, 0u64..5, 0u64..5, proptest::prelude::any::<bool>()), 1..12)) {
            let parsed: Vec<Semver> = versions
                .iter()
                .map(|(a, b, c, pre)| Semver::parse("v", &format!("{a}.{b}.{c}{}", if *pre { "-rc.1" } else { "" })).unwrap())
                .collect();
            let latest = choose_latest(parsed.iter().map(|v| (v, v))).unwrap();
            if parsed.iter().any(|v| !v.is_prerelease()) {
                proptest::prop_assert!(!latest.is_prerelease());
                proptest::prop_assert!(parsed.iter().filter(|v| !v.is_prerelease()).all(|v| v <= latest));
            } else {
                proptest::prop_assert!(parsed.iter().all(|v| v <= latest));
            }
        }
    }
}
