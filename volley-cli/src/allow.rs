//! `volley serve`'s allow-list: which client keys get sessions (A1), and reloading it on SIGHUP
//! (A2).
//!
//! It comes from one place, remembered for the reloads: `--allow FILE` (the file is re-read), or
//! the config file's `allow = ["KEY [name]", …]` or `allow_file = "PATH"` (the config file is
//! re-read, and then whichever of the two it holds). A flag wins over the config file, as every
//! flag does; a config file holding both settings is refused, since neither could be meant to
//! win silently.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use volley::{AllowList, AllowListError};

/// Where the allow-list comes from, and is re-read from on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--allow FILE`: one key per line, as `volley_proto::allow` reads it.
    File(PathBuf),
    /// `allow` or `allow_file` in this `serve` config file.
    Config(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Config(p) => write!(f, "config file {}", p.display()),
        }
    }
}

/// The allow-list settings of a `serve` config file.
#[derive(serde::Deserialize, Debug, Default)]
pub struct Settings {
    /// Entries as an allow-list file's lines: `"KEY"` or `"KEY name"`.
    pub allow: Option<Vec<String>>,
    /// An allow-list file, relative to the config file.
    pub allow_file: Option<PathBuf>,
}

impl Settings {
    /// Whether the config file names an allow-list at all; an error when it names two.
    pub fn present(&self, config: &Path) -> anyhow::Result<bool> {
        if self.allow.is_some() && self.allow_file.is_some() {
            bail!(
                "config file {}: `allow` and `allow_file` both name an allow-list; keep one",
                config.display()
            );
        }
        Ok(self.allow.is_some() || self.allow_file.is_some())
    }
}

impl Source {
    /// Reads and parses the list. Errors name the file and the line (or the `allow` entry).
    pub fn load(&self) -> anyhow::Result<AllowList> {
        match self {
            Source::File(path) => file(path),
            Source::Config(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                // Only the allow-list settings are read (and checked): the rest take a restart.
                let settings: Settings = toml::from_str(&text)
                    .with_context(|| format!("config file {}", path.display()))?;
                from_settings(&settings, path)?.with_context(|| {
                    format!(
                        "config file {} no longer holds `allow` or `allow_file` (restart `volley \
                         serve` to serve without an allow-list)",
                        path.display()
                    )
                })
            }
        }
    }
}

/// The list a config file's settings name (None: it names none).
pub fn from_settings(settings: &Settings, config: &Path) -> anyhow::Result<Option<AllowList>> {
    if !settings.present(config)? {
        return Ok(None);
    }
    if let Some(entries) = &settings.allow {
        return inline(entries, config).map(Some);
    }
    match &settings.allow_file {
        Some(rel) => file(&relative_to(config, rel)).map(Some),
        None => Ok(None),
    }
}

/// A path in a config file, relative to the file's folder.
pub fn relative_to(config: &Path, path: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new(".")).join(path)
}

/// An allow-list file.
fn file(path: &Path) -> anyhow::Result<AllowList> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read allow-list {}", path.display()))?;
    AllowList::parse(&text).map_err(|e| anyhow::anyhow!("allow-list {}: {e}", path.display()))
}

/// A config file's `allow = [...]`: each entry one line of the list.
fn inline(entries: &[String], config: &Path) -> anyhow::Result<AllowList> {
    let at = |what: String| anyhow::anyhow!("config file {}: `allow` {what}", config.display());
    if let Some(i) = entries.iter().position(|e| e.contains(['\n', '\r'])) {
        return Err(at(format!(
            "entry {}: one key (and its name) per entry, no line breaks",
            i + 1
        )));
    }
    AllowList::parse(&entries.join("\n")).map_err(|e| at(entry_error(&e)))
}

/// An allow-list error with lines read as `allow` entries (one each, counted from 1).
fn entry_error(e: &AllowListError) -> String {
    match e {
        AllowListError::BadKey { line, found } => {
            format!("entry {line}: expected a public key (64 hex digits), found {found:?}")
        }
        AllowListError::BadName { line } => format!(
            "entry {line}: the name after the key must be at most {} printable bytes",
            volley_proto::allow::MAX_NAME_LEN
        ),
        AllowListError::Duplicate { line, first } => {
            format!("entry {line}: key listed twice (first in entry {first})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volley-allow-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a1_allow_entries_in_a_config_file_parse_and_errors_name_the_file_and_entry() {
        let config = Path::new("/etc/volley/serve.toml");
        let ok = Settings {
            allow: Some(vec![format!("{A} build-7"), format!("{B}  # no name")]),
            allow_file: None,
        };
        let list = from_settings(&ok, config).unwrap().unwrap();
        assert_eq!(list.len(), 2);
        let a = volley::PublicKey::from_hex(A).unwrap();
        assert_eq!(list.get(&a).unwrap().name.as_deref(), Some("build-7"));

        let bad = Settings {
            allow: Some(vec![A.to_string(), "nope".to_string()]),
            allow_file: None,
        };
        let err = format!("{:#}", from_settings(&bad, config).unwrap_err());
        assert!(
            err.contains("/etc/volley/serve.toml")
                && err.contains("entry 2")
                && err.contains("nope"),
            "{err}"
        );
        let twice = Settings {
            allow: Some(vec![A.to_string(), B.to_string(), format!("{A} again")]),
            allow_file: None,
        };
        let err = format!("{:#}", from_settings(&twice, config).unwrap_err());
        assert!(
            err.contains("entry 3: key listed twice (first in entry 1)"),
            "{err}"
        );

        let both = Settings {
            allow: Some(vec![]),
            allow_file: Some("clients.allow".into()),
        };
        let err = format!("{:#}", from_settings(&both, config).unwrap_err());
        assert!(err.contains("`allow` and `allow_file`"), "{err}");
        assert!(
            from_settings(&Settings::default(), config)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a2_a_source_is_reread_and_a_bad_file_names_its_line() {
        let d = dir("reread");
        let list = d.join("clients.allow");
        std::fs::write(&list, format!("# ours\n{A} alice\n")).unwrap();
        let source = Source::File(list.clone());
        assert_eq!(source.load().unwrap().len(), 1);
        std::fs::write(&list, format!("{A} alice\n{B} bob\n")).unwrap();
        assert_eq!(source.load().unwrap().len(), 2, "read afresh each time");
        std::fs::write(&list, format!("{A} alice\n\n{B}x bob\n")).unwrap();
        let err = format!("{:#}", source.load().unwrap_err());
        assert!(
            err.contains(list.to_str().unwrap()) && err.contains("line 3"),
            "{err}"
        );

        // From a config file: its `allow_file` relative to it, re-read with the file.
        let config = d.join("serve.toml");
        std::fs::write(
            &config,
            "listen = \"127.0.0.1:1\"\nallow_file = \"clients.allow\"\n",
        )
        .unwrap();
        std::fs::write(&list, format!("{B} bob\n")).unwrap();
        let source = Source::Config(config.clone());
        assert_eq!(source.load().unwrap().len(), 1);
        std::fs::write(&config, format!("allow = [\"{A}\", \"{B}\"]\n")).unwrap();
        assert_eq!(source.load().unwrap().len(), 2);
        std::fs::write(&config, "listen = \"127.0.0.1:1\"\n").unwrap();
        let err = format!("{:#}", source.load().unwrap_err());
        assert!(err.contains("no longer holds `allow`"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
