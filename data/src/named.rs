//! Data sets by the names users say them: `cifar-test`, `cifar10-train`, `fashion-mnist-test`,
//! found where `sc-trainer data fetch` puts them (`data/<set>`, or under `SC_DATA_DIR`).

use std::path::{Path, PathBuf};

use crate::dataset::{DataError, Result, Split};

/// Environment variable naming the root of fetched data sets (default `data`).
pub const DATA_DIR_ENV: &str = "SC_DATA_DIR";

/// (fetch name, the names users say, what it is).
const SETS: [(&str, &[&str], &str); 4] = [
    ("cifar10", &["cifar", "cifar10", "cifar-10"], "CIFAR-10"),
    ("cifar100", &["cifar100", "cifar-100"], "CIFAR-100"),
    ("mnist", &["mnist"], "MNIST"),
    (
        "fashion-mnist",
        &["fashion-mnist", "fashionmnist", "fmnist"],
        "Fashion-MNIST",
    ),
];

/// Where fetched data sets live: `SC_DATA_DIR`, else `data` (relative to the working directory).
pub fn data_root() -> PathBuf {
    std::env::var_os(DATA_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// The directory `sc-trainer data fetch SET` fills by default.
pub fn default_dir(set: &str) -> PathBuf {
    data_root().join(set)
}

/// A short name (`cifar-test`, `mnist-train`, ...) as the directory and split it names. `None`
/// when `arg` is not a short name; an error when it is one whose data has not been fetched.
pub fn resolve(arg: &Path) -> Option<Result<(PathBuf, Split)>> {
    let s = arg.to_str()?.to_ascii_lowercase();
    let (set, split) = if let Some(p) = s.strip_suffix("-test") {
        (p, Split::Test)
    } else if let Some(p) = s.strip_suffix("-train") {
        (p, Split::Train)
    } else {
        return None;
    };
    let (name, _, title) = SETS.iter().find(|(_, names, _)| names.contains(&set))?;
    let dir = default_dir(name);
    if dir.exists() {
        Some(Ok((dir, split)))
    } else {
        Some(Err(DataError::format(
            arg,
            format!(
                "{title} is not in {}: fetch it with `sc-trainer data fetch {name}` (or point {DATA_DIR_ENV} at the folder holding {name}/)",
                dir.display()
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_to_the_fetch_directory() {
        assert!(resolve(Path::new("some/dir")).is_none());
        assert!(resolve(Path::new("imagenet-test")).is_none());
        // Not fetched (no data/ here while testing): a clear error that says how to fetch.
        if std::env::var_os(DATA_DIR_ENV).is_none() && !Path::new("data/cifar10").exists() {
            let e = resolve(Path::new("cifar-test"))
                .unwrap()
                .unwrap_err()
                .to_string();
            assert!(e.contains("sc-trainer data fetch cifar10"), "{e}");
        }
    }
}
