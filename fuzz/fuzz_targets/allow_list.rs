//! `AllowList::parse` on arbitrary text (PROTOCOL.md §4.7; the operator's file, but a file can hold
//! anything): it must never panic; an error names a line that exists; and a list that parses
//! round-trips: written back one `key name` per line, it parses to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::allow::{AllowList, AllowListError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match AllowList::parse(&text) {
        Ok(list) => {
            let mut out = String::new();
            for key in list.keys() {
                let entry = list.get(key).expect("a listed key has an entry");
                out.push_str(&key.to_hex());
                if let Some(name) = &entry.name {
                    out.push(' ');
                    out.push_str(name);
                }
                out.push('\n');
            }
            assert_eq!(AllowList::parse(&out).expect("re-parses"), list);
        }
        Err(e) => {
            let line = match e {
                AllowListError::BadKey { line, .. }
                | AllowListError::BadName { line }
                | AllowListError::Duplicate { line, .. } => line,
                _ => return,
            };
            assert!(line >= 1 && line <= text.lines().count(), "{e}");
        }
    }
});
