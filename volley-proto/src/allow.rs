//! Allow-lists: the client static keys a server opens sessions for (`docs/PROTOCOL.md` §4.7).
//!
//! The text form, one entry per line:
//!
//! ```text
//! # comments start with '#', anywhere on a line
//! 3f5c…64 hex digits…a1  build-agent-7     # an optional name after the key
//! 9be0…64 hex digits…04
//! ```
//!
//! A line that is not blank or a comment must start with a key (64 hex digits); what follows
//! it, up to a `#`, is its name (at most [`MAX_NAME_LEN`] bytes, printable, no control
//! characters). A key listed twice is an error: the operator meant something by each line.
//! Parsing names the line that failed, so an operator can fix it; a server that fails to load a
//! new list keeps the old one.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::crypto::PublicKey;

/// Longest name an allow-list entry may carry, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One listed client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// The client's static public key.
    pub key: PublicKey,
    /// The name the operator gave it, if any.
    pub name: Option<Arc<str>>,
}

/// A set of client static keys, each with an optional name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: HashMap<PublicKey, Option<Arc<str>>>,
}

/// Why an allow-list did not parse. `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AllowListError {
    /// The line does not start with 64 hex digits.
    #[error("line {line}: expected a public key (64 hex digits), found {found:?}")]
    BadKey {
        /// The line number.
        line: usize,
        /// The first word of the line (at most 80 characters of it).
        found: String,
    },
    /// The name after the key is too long or holds control characters.
    #[error("line {line}: the name after the key must be at most {MAX_NAME_LEN} printable bytes")]
    BadName {
        /// The line number.
        line: usize,
    },
    /// The key was listed before.
    #[error("line {line}: key listed twice (first on line {first})")]
    Duplicate {
        /// The line number of the repeat.
        line: usize,
        /// Where it was first listed.
        first: usize,
    },
}

impl AllowList {
    /// An empty list: no client may connect.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list of these keys, without names.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            entries: keys.into_iter().map(|k| (k, None)).collect(),
        }
    }

    /// Adds (or renames) one entry.
    pub fn insert(&mut self, key: PublicKey, name: Option<&str>) {
        self.entries.insert(key, name.map(Arc::from));
    }

    /// Parses the text form (see the module docs).
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        let mut entries = HashMap::new();
        let mut first_line: HashMap<PublicKey, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let (word, rest) = content
                .split_once(char::is_whitespace)
                .unwrap_or((content, ""));
            let key = PublicKey::from_hex(word).map_err(|_| AllowListError::BadKey {
                line,
                found: word.chars().take(80).collect(),
            })?;
            let name = rest.trim();
            if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(AllowListError::BadName { line });
            }
            if let Some(&first) = first_line.get(&key) {
                return Err(AllowListError::Duplicate { line, first });
            }
            first_line.insert(key, line);
            entries.insert(key, (!name.is_empty()).then(|| Arc::from(name)));
        }
        Ok(Self { entries })
    }

    /// The entry for `key`, if listed.
    pub fn get(&self, key: &PublicKey) -> Option<AllowEntry> {
        self.entries.get(key).map(|name| AllowEntry {
            key: *key,
            name: name.clone(),
        })
    }

    /// Whether `key` is listed.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.entries.contains_key(key)
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listed keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.entries.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    #[test]
    fn a1_allow_list_parses_keys_names_and_comments() {
        let text = format!("# clients\n\n{A}  build agent 7 # the old one\n  {B}\n# {A}\n");
        let list = AllowList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        let a = PublicKey::from_hex(A).unwrap();
        assert_eq!(list.get(&a).unwrap().name.as_deref(), Some("build agent 7"));
        assert_eq!(
            list.get(&PublicKey::from_hex(B).unwrap()).unwrap().name,
            None
        );
        assert!(AllowList::parse("").unwrap().is_empty());
    }

    #[test]
    fn a1_allow_list_errors_name_the_line() {
        let bad = format!("{A}\nnot-a-key name\n");
        assert_eq!(
            AllowList::parse(&bad),
            Err(AllowListError::BadKey {
                line: 2,
                found: "not-a-key".into()
            })
        );
        let dup = format!("{A} x\n# c\n{A} y\n");
        assert_eq!(
            AllowList::parse(&dup),
            Err(AllowListError::Duplicate { line: 3, first: 1 })
        );
        let long = format!("{A} {}\n", "n".repeat(MAX_NAME_LEN + 1));
        assert_eq!(
            AllowList::parse(&long),
            Err(AllowListError::BadName { line: 1 })
        );
        assert!(
            AllowList::parse(&format!("{A}\u{7} bell"))
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }
}
