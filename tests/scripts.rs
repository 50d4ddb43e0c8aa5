//! The scripts users run first (`scripts/main-job.sh`, the benchmarks) are checked for syntax on
//! every test run: a quoting slip in one of them would otherwise surface only on a user's machine.

use std::path::PathBuf;
use std::process::Command;

fn scripts() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh" || x == "py"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_script_parses() {
    let all = scripts();
    assert!(
        all.iter().any(|p| p.ends_with("main-job.sh")),
        "scripts/main-job.sh not found among {all:?}"
    );
    let mut bad = Vec::new();
    for path in &all {
        let out = if path.extension().is_some_and(|x| x == "sh") {
            Command::new("bash").arg("-n").arg(path).output()
        } else {
            // Parse only (no bytecode written next to the script).
            Command::new("python3")
                .args([
                    "-c",
                    "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])",
                ])
                .arg(path)
                .output()
        };
        let out = out.unwrap_or_else(|e| panic!("running the parser on {}: {e}", path.display()));
        if !out.status.success() {
            bad.push(format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "scripts that do not parse:\n{}",
        bad.join("\n")
    );
}
