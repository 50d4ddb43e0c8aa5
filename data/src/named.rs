//! Data sets by the names users say them (`cifar10`, `cifar-test`, `fashion-mnist-train`, ...),
//! found in the data home where `sc-trainer data fetch` puts them, and a data set's identity by
//! its content rather than by where it lies.
//!
//! The data home is `SC_DATA_DIR`, else the platform's data directory
//! (`$XDG_DATA_HOME/super-convergence`, `~/.local/share/super-convergence` on Linux,
//! `~/Library/Application Support/super-convergence` on macOS), as torchvision's `root` or the
//! Hugging Face cache do: never a source folder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dataset::{DataError, Dataset, Result, Split};

/// Environment variable naming the data home (the folder holding `cifar10/`, `mnist/`, ...).
pub const DATA_DIR_ENV: &str = "SC_DATA_DIR";

/// The data home's folder name under the platform's data directory.
const APP_DIR: &str = "super-convergence";

/// A data set `data fetch` knows.
pub struct KnownSet {
    /// The folder under the data home, and the name in run identities.
    pub name: &'static str,
    /// The names users say (a `-train` or `-test` suffix picks the split).
    pub aliases: &'static [&'static str],
    pub title: &'static str,
    /// SHA-256 of the training split's content ([`content_sha256`]) as published, when known:
    /// the same data under another folder name is recognised as this set.
    pub train_sha256: Option<&'static str>,
    /// Folder names this set was known by in run names before they used its content
    /// ([`DataIdentity::legacy_names`]).
    pub legacy_folders: &'static [&'static str],
}

/// The data sets `data fetch` knows, in the order it lists them.
pub const KNOWN: [KnownSet; 4] = [
    KnownSet {
        name: "cifar10",
        aliases: &["cifar10", "cifar", "cifar-10"],
        title: "CIFAR-10",
        // The official cifar-10-binary.tar.gz's five training batches.
        train_sha256: Some("4774d484ccb817e7c10e8474862c9d753df3f300fcbcdd5813a976e6a173e29b"),
        legacy_folders: &["cifar-10-batches-bin"],
    },
    KnownSet {
        name: "cifar100",
        aliases: &["cifar100", "cifar-100"],
        title: "CIFAR-100",
        train_sha256: None,
        legacy_folders: &["cifar-100-binary"],
    },
    KnownSet {
        name: "mnist",
        aliases: &["mnist"],
        title: "MNIST",
        train_sha256: None,
        legacy_folders: &[],
    },
    KnownSet {
        name: "fashion-mnist",
        aliases: &["fashion-mnist", "fashionmnist", "fmnist"],
        title: "Fashion-MNIST",
        train_sha256: None,
        legacy_folders: &[],
    },
];

/// The data home: `SC_DATA_DIR`, else `<platform data dir>/super-convergence`. An error only
/// when neither is set and the platform has no data directory (no home directory).
pub fn data_root() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::data_dir().map(|d| d.join(APP_DIR)).ok_or_else(|| {
        DataError::format(
            Path::new(DATA_DIR_ENV),
            format!("no data home: set {DATA_DIR_ENV} (this platform has no data directory)"),
        )
    })
}

/// The directory `sc-trainer data fetch SET` fills by default.
pub fn default_dir(set: &str) -> Result<PathBuf> {
    Ok(data_root()?.join(set))
}

fn known_by_alias(alias: &str) -> Option<&'static KnownSet> {
    KNOWN.iter().find(|k| k.aliases.contains(&alias))
}

/// A short name as the directory it names in the data home and the split it asks for (`None`:
/// the caller's). `None` when `arg` is not a short name; an error when it is one whose data has
/// not been fetched. Callers try it only for paths that do not exist, so a folder wins.
pub fn resolve(arg: &Path) -> Option<Result<(PathBuf, Option<Split>)>> {
    let s = arg.to_str()?.to_ascii_lowercase();
    let (set, split) = if let Some(p) = s.strip_suffix("-test") {
        (p, Some(Split::Test))
    } else if let Some(p) = s.strip_suffix("-train") {
        (p, Some(Split::Train))
    } else {
        (s.as_str(), None)
    };
    let known = known_by_alias(set)?;
    let dir = match default_dir(known.name) {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    if dir.exists() {
        Some(Ok((dir, split)))
    } else {
        Some(Err(DataError::format(
            arg,
            format!(
                "{} is not in {}: fetch it with `sc-trainer data fetch {}` (or point {DATA_DIR_ENV} at the folder holding {}/)",
                known.title,
                dir.display(),
                known.name,
                known.name
            ),
        )))
    }
}

/// SHA-256 of a data set's content: shape, class count, labels and pixels, as read. The same
/// data gives the same digest whatever its format on disk (archive, unpacked folder) and wherever
/// it lies.
pub fn content_sha256(ds: &Dataset) -> String {
    let mut h = Sha256::new();
    for n in [ds.channels, ds.height, ds.width, ds.num_classes(), ds.len()] {
        h.update((n as u64).to_le_bytes());
    }
    h.update(&ds.labels);
    h.update(&ds.images);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// What a data set is, by content: a known set's name (or, for others, `data`) and the SHA-256
/// of its training split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIdentity {
    pub name: String,
    pub sha256: String,
    /// The folder name it was opened from (for the names runs had before identities).
    pub folder: Option<String>,
}

impl DataIdentity {
    /// The identity of the training split at `path` (a path or a short name).
    pub fn of(path: &Path) -> Result<DataIdentity> {
        let ds = Dataset::open(path, Split::Train)?;
        let folder = path
            .exists()
            .then(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .flatten();
        Ok(DataIdentity::of_training_set(&ds, folder))
    }

    /// The identity of an opened training split (`folder`: where it was opened from, if a path).
    pub fn of_training_set(ds: &Dataset, folder: Option<String>) -> DataIdentity {
        let sha256 = content_sha256(ds);
        let name = KNOWN
            .iter()
            .find(|k| k.train_sha256 == Some(sha256.as_str()))
            .map(|k| k.name)
            .unwrap_or("data")
            .to_string();
        DataIdentity {
            name,
            sha256,
            folder,
        }
    }

    /// `name@sha256:<first 16 hex digits>`: what run names hash.
    pub fn key(&self) -> String {
        format!(
            "{}@sha256:{}",
            self.name,
            &self.sha256[..16.min(self.sha256.len())]
        )
    }

    /// The folder names runs of this data were named by before identities: the folder it was
    /// opened from, and a known set's usual folders.
    pub fn legacy_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.folder.iter().cloned().collect();
        if let Some(k) = KNOWN.iter().find(|k| k.name == self.name) {
            for f in k.legacy_folders {
                if !out.iter().any(|o| o == f) {
                    out.push(f.to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_to_the_fetch_directory() {
        assert!(resolve(Path::new("some/dir")).is_none());
        assert!(resolve(Path::new("imagenet-test")).is_none());
        let home = tempfile::tempdir().unwrap();
        // Not fetched: a clear error that says how to fetch.
        let e = with_data_dir(home.path(), || resolve(Path::new("cifar-test")))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sc-trainer data fetch cifar10"), "{e}");
        std::fs::create_dir(home.path().join("cifar10")).unwrap();
        for (arg, split) in [
            ("cifar-test", Some(Split::Test)),
            ("CIFAR10-train", Some(Split::Train)),
            ("cifar10", None),
        ] {
            let (dir, s) = with_data_dir(home.path(), || resolve(Path::new(arg)))
                .unwrap()
                .unwrap();
            assert_eq!(dir, home.path().join("cifar10"), "{arg}");
            assert_eq!(s, split, "{arg}");
        }
    }

    #[test]
    fn the_data_home_is_never_the_working_directory() {
        let root = with_data_dir(Path::new(""), data_root).unwrap();
        assert!(root.is_absolute(), "{}", root.display());
        assert!(root.ends_with(APP_DIR), "{}", root.display());
    }

    #[test]
    fn the_identity_is_the_content_not_the_place() {
        let ds = |pixel: u8| Dataset {
            images: vec![pixel; 2 * 3 * 4 * 4],
            labels: vec![0, 1],
            channels: 3,
            height: 4,
            width: 4,
            class_names: vec!["a".into(), "b".into()],
            source: "here".into(),
        };
        let a = content_sha256(&ds(7));
        let mut moved = ds(7);
        moved.source = "elsewhere".into();
        assert_eq!(content_sha256(&moved), a);
        assert_ne!(content_sha256(&ds(8)), a);
        let mut relabelled = ds(7);
        relabelled.labels = vec![1, 0];
        assert_ne!(content_sha256(&relabelled), a);
    }

    /// Runs `f` with `SC_DATA_DIR` set to `dir` (empty: unset). Tests in this module that touch
    /// the variable hold the lock.
    fn with_data_dir<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::env::var_os(DATA_DIR_ENV);
        if dir.as_os_str().is_empty() {
            std::env::remove_var(DATA_DIR_ENV)
        } else {
            std::env::set_var(DATA_DIR_ENV, dir)
        }
        let out = f();
        match old {
            Some(v) => std::env::set_var(DATA_DIR_ENV, v),
            None => std::env::remove_var(DATA_DIR_ENV),
        }
        out
    }
}
