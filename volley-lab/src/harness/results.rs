//! Where an experiment's results go: its output folder, and in it `results.md` (the report a
//! person reads) and `results.json` (every figure, for a program).

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Creates the output folder `out` (and its parents) if missing.
pub fn out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// Writes `value` as pretty-printed JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Writes `md` to `out/results.md` and `results` to `out/results.json`.
pub fn write(out: &Path, md: &str, results: &impl Serialize) -> anyhow::Result<()> {
    let path = out.join("results.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    write_json(&out.join("results.json"), results)
}

/// [`write`](fn@write), then prints `md` on stdout.
pub fn publish(out: &Path, md: &str, results: &impl Serialize) -> anyhow::Result<()> {
    write(out, md, results)?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_a_markdown_report_and_pretty_json_side_by_side() {
        let out = std::env::temp_dir()
            .join(format!("volley-lab-results-{}", std::process::id()))
            .join("nested");
        out_dir(&out).unwrap();
        write(&out, "# report\n", &serde_json::json!({"runs": [1, 2]})).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("results.md")).unwrap(),
            "# report\n"
        );
        let json = std::fs::read_to_string(out.join("results.json")).unwrap();
        assert!(json.contains("\n  \"runs\""), "pretty: {json}");
        let _ = std::fs::remove_dir_all(out.parent().unwrap());
    }
}
