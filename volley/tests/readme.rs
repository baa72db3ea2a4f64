//! The README's library examples are `examples/readme.rs` and `examples/pool.rs` (which
//! `cargo test` builds), verbatim.

#[test]
fn the_readme_library_example_is_the_built_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/readme.rs");
    let block = format!("```rust\n{example}```");
    assert!(
        readme.contains(&block),
        "README.md's library example differs from volley/examples/readme.rs"
    );
}

#[test]
fn p3_the_readme_pool_example_is_the_built_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/pool.rs");
    let block = format!("```rust\n{example}```");
    assert!(
        readme.contains(&block),
        "README.md's Pool example differs from volley/examples/pool.rs"
    );
}
