//! What a newcomer copies from the README points at things that exist: the dependency paths are
//! the crates they name, the examples it runs are examples, and every relative link of the
//! README and the `docs/` pages leads to a file. (The Rust blocks are doctests: `src/docs.rs`.)

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The package name a `Cargo.toml` declares.
fn package_name(manifest: &str) -> Option<&str> {
    manifest
        .lines()
        .skip_while(|line| line.trim() != "[package]")
        .find_map(|line| line.trim().strip_prefix("name = "))
        .map(|name| name.trim_matches('"'))
}

#[test]
fn the_install_lines_name_the_crates_at_their_paths() {
    let readme = read(&workspace().join("README.md"));
    let lines: Vec<&str> = readme
        .lines()
        .filter(|line| line.contains("path = \"../relock/"))
        .collect();
    assert!(lines.len() >= 2, "README's dependency lines: {lines:?}");
    for line in lines {
        let (name, rest) = line.split_once(" = ").expect("name = { path = .. }");
        let dir = rest
            .split("path = \"../relock/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a path");
        let manifest = workspace().join(dir).join("Cargo.toml");
        assert_eq!(
            package_name(&read(&manifest)),
            Some(name),
            "README: `{line}`, but {} is another package",
            manifest.display()
        );
    }
    assert!(
        readme.contains(r#"tokio = { version = "1", features = ["macros", "rt-multi-thread"] }"#),
        "README's Install names tokio's features"
    );
}

#[test]
fn the_commands_run_examples_and_packages_that_exist() {
    let readme = read(&workspace().join("README.md"));
    let mut examples = 0;
    for part in readme.split("--example ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let file = workspace().join(format!("examples/examples/{name}.rs"));
        assert!(
            file.is_file(),
            "README runs the example `{name}`: no {}",
            file.display()
        );
        examples += 1;
    }
    assert!(examples >= 2, "README's example commands");
    for part in readme.split("cargo install --path ").skip(1) {
        let dir = part.split_whitespace().next().unwrap();
        assert!(
            workspace().join(dir).join("Cargo.toml").is_file(),
            "README installs from `{dir}`"
        );
    }
}

#[test]
fn relative_links_lead_to_files() {
    let root = workspace();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap();
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let resolved = page.parent().unwrap().join(file);
            if !resolved.exists() {
                broken.push(format!("{}: ({target})", page.display()));
            }
        }
    }
    assert!(pages.len() >= 5, "the pages: {pages:?}");
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}
