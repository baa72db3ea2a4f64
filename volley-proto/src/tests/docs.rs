//! Every public item of this crate is documented. The crate root denies `missing_docs`, so a
//! public item added without docs stops this crate — and so every test of it — from compiling.
//! This test keeps that guard from being dropped or weakened to a warning that nobody sees.

#[test]
fn docs_every_public_item_must_be_documented() {
    let root = include_str!("../lib.rs");
    let guard = root
        .lines()
        .find(|l| l.trim_start().starts_with("#![") && l.contains("missing_docs"))
        .expect("the crate root sets the missing_docs lint");
    assert_eq!(
        guard.trim(),
        "#![deny(missing_docs)]",
        "undocumented public items must fail the build"
    );
}
