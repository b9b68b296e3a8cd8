//! The docs stay true to the code: the README's manifest is the shipped one, and every relative
//! link in the README and docs/ points at a file that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_readme_manifest_is_the_shipped_manifest() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let marker = "`manifest.json` (the shipped one";
    let after = &readme[readme
        .find(marker)
        .ok_or_else(|| anyhow::anyhow!("no manifest block"))?..];
    let start = after
        .find("```json\n")
        .ok_or_else(|| anyhow::anyhow!("no json fence"))?
        + 8;
    let end = after[start..]
        .find("```")
        .ok_or_else(|| anyhow::anyhow!("unclosed fence"))?;
    let documented: serde_json::Value = serde_json::from_str(&after[start..start + end])?;
    let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("models/shapes/manifest.json"),
    )?)?;
    assert_eq!(
        documented, shipped,
        "README.md's manifest.json drifted from models/shapes"
    );
    Ok(())
}

/// Relative link targets of the markdown file at `path`: `](target)` without a scheme or anchor.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| {
            target
                .split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .filter(|target| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_resolves() -> anyhow::Result<()> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let folder = file.parent().unwrap_or(Path::new("."));
        for link in relative_links(&text) {
            if !folder.join(&link).exists() {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    Ok(())
}
