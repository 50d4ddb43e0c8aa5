//! Finding a data set's files, in a directory or inside the archive it was published as.
//!
//! The official archives are read as they are, in memory, without unpacking:
//! - `cifar-10-binary.tar.gz`: `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin` and
//!   `batches.meta.txt`;
//! - `cifar-100-binary.tar.gz`: `cifar-100-binary/{train,test}.bin` and `fine_label_names.txt`;
//! - any `.tar`, `.tar.gz` or `.tgz` holding one of the layouts [`Dataset::open`] reads in a
//!   directory (IDX files too).
//!
//! Only the members the split needs are kept (CIFAR-10's training batches are 150 MB). A corrupt
//! or truncated archive, or a missing member, is an error naming the archive and the member.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::dataset::{
    maybe_gz, read_cifar_bytes, read_file, read_idx_bytes, CifarFormat, DataError, Dataset, Result,
    Split,
};

/// The directory an archive unpacks to, and the archive's file name, for each data set whose
/// official download is one archive (what `sc-trainer data fetch` leaves in its directory).
pub const KNOWN_ARCHIVES: [(&str, &str); 2] = [
    ("cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
    ("cifar-100-binary", "cifar-100-binary.tar.gz"),
];

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// Whether `path` is named like a tar archive (`.tar`, `.tar.gz`, `.tgz`).
pub fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// The file names (without directory) a split may need, in any of the layouts.
fn wanted(name: &str, split: Split) -> bool {
    let (cifar10, cifar100, idx) = match split {
        Split::Train => (CIFAR10_TRAIN.contains(&name), "train.bin", "train-"),
        Split::Test => (name == "test_batch.bin", "test.bin", "t10k-"),
    };
    cifar10
        || name == cifar100
        || name == "batches.meta.txt"
        || name == "fine_label_names.txt"
        || (name.starts_with(idx) && (name.contains("-idx3-ubyte") || name.contains("-idx1-ubyte")))
}

/// Where a layout's files come from: a directory, or the members of an archive read into memory.
enum Members {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        /// The directory inside the archive the data files sit in (for messages).
        prefix: String,
        /// File name -> contents.
        files: HashMap<String, Vec<u8>>,
    },
}

impl Members {
    fn has(&self, name: &str) -> bool {
        match self {
            Members::Dir(d) => d.join(name).exists(),
            Members::Archive { files, .. } => files.contains_key(name),
        }
    }

    /// The path that names `name` in messages (`archive.tar.gz/dir/name` for a member).
    fn path(&self, name: &str) -> PathBuf {
        match self {
            Members::Dir(d) => d.join(name),
            Members::Archive { path, prefix, .. } => path.join(prefix).join(name),
        }
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let p = self.path(name);
        match self {
            Members::Dir(d) => read_file(&d.join(name)),
            Members::Archive { path, files, .. } => files.remove(name).ok_or_else(|| {
                DataError::format(
                    path,
                    format!(
                        "missing member {}",
                        p.strip_prefix(&*path).unwrap_or(&p).display()
                    ),
                )
            }),
        }
    }

    fn source(&self) -> &Path {
        match self {
            Members::Dir(d) => d,
            Members::Archive { path, .. } => path,
        }
    }
}

/// Reads the data set in directory `dir`: its files directly, or else an unpacked or packed
/// official archive inside it ([`KNOWN_ARCHIVES`]).
pub(crate) fn open_dir(dir: &Path, split: Split) -> Result<Dataset> {
    let mut members = Members::Dir(dir.to_path_buf());
    if let Some(d) = open_layout(&mut members, split)? {
        return Ok(d);
    }
    for (unpacked, archive) in KNOWN_ARCHIVES {
        let sub = dir.join(unpacked);
        if sub.is_dir() {
            return open_dir(&sub, split);
        }
        let file = dir.join(archive);
        if file.is_file() {
            return open_archive(&file, split);
        }
    }
    Err(not_found(dir, split))
}

/// Reads the data set held in a tar archive (gzip or not), without unpacking it.
pub(crate) fn open_archive(path: &Path, split: Split) -> Result<Dataset> {
    let mut members = read_archive(path, split)?;
    open_layout(&mut members, split)?.ok_or_else(|| not_found(path, split))
}

fn not_found(path: &Path, split: Split) -> DataError {
    let (name, prefix) = match split {
        Split::Train => ("train", "train"),
        Split::Test => ("test", "t10k"),
    };
    DataError::format(
        path,
        format!(
            "no data set found for the {name} split: expected CIFAR-10 (data_batch_N.bin / test_batch.bin), \
             CIFAR-100 (train.bin / test.bin), IDX files ({prefix}-images-idx3-ubyte[.gz]) or one of \
             the official archives (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz)"
        ),
    )
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::format(path, format!("corrupt or truncated archive: {e}"))
}

/// The members of the archive at `path` that `split` may need, read into memory.
fn read_archive(path: &Path, split: Split) -> Result<Members> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(
            path,
            "is a directory, expected an archive",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = maybe_gz(BufReader::new(file)).map_err(|e| DataError::io(path, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut files = HashMap::new();
    let mut prefix = None;
    let mut entries = 0usize;
    for entry in archive.entries().map_err(|e| corrupt(path, e))? {
        let mut entry = entry.map_err(|e| corrupt(path, e))?;
        entries += 1;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(|e| corrupt(path, e))?.into_owned();
        let Some(name) = member.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !wanted(&name, split) || files.contains_key(&name) {
            continue;
        }
        let size = entry.size();
        // Grow as data arrives: the header's size is not trusted for the allocation.
        let mut bytes = Vec::with_capacity(size.min(1 << 24) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(&path.join(&member), e))?;
        if bytes.len() as u64 != size {
            return Err(corrupt(
                &path.join(&member),
                format!(
                    "the header promises {size} bytes, the archive holds {}",
                    bytes.len()
                ),
            ));
        }
        prefix.get_or_insert_with(|| {
            member
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        files.insert(name, bytes);
    }
    if entries == 0 {
        return Err(corrupt(path, "no members (empty or not a tar archive)"));
    }
    Ok(Members::Archive {
        path: path.to_path_buf(),
        prefix: prefix.unwrap_or_default(),
        files,
    })
}

/// Recognises the layout in `m` and reads it; `None` when none of the layouts is there.
fn open_layout(m: &mut Members, split: Split) -> Result<Option<Dataset>> {
    let source = m.source().display().to_string();
    // CIFAR-10
    if m.has("data_batch_1.bin") || m.has("test_batch.bin") {
        let classes = class_names(m, "batches.meta.txt", 10)?;
        let files: &[&str] = match split {
            Split::Train => &CIFAR10_TRAIN,
            Split::Test => &["test_batch.bin"],
        };
        let mut out: Option<Dataset> = None;
        for f in files {
            let path = m.path(f);
            if !m.has(f) {
                return Err(DataError::format(
                    &path,
                    "missing: a CIFAR-10 data set needs data_batch_1..5.bin for training and test_batch.bin for testing",
                ));
            }
            let d = read_cifar_bytes(&m.read(f)?, CifarFormat::Cifar10, classes.clone(), &path)?;
            match out.as_mut() {
                None => out = Some(d),
                Some(o) => o.append(d, &path)?,
            }
        }
        return Ok(out.map(|d| Dataset { source, ..d }));
    }
    // CIFAR-100
    let c100 = if split == Split::Train {
        "train.bin"
    } else {
        "test.bin"
    };
    if m.has(c100) {
        let classes = class_names(m, "fine_label_names.txt", 100)?;
        let path = m.path(c100);
        let d = read_cifar_bytes(&m.read(c100)?, CifarFormat::Cifar100, classes, &path)?;
        return Ok(Some(Dataset { source, ..d }));
    }
    // IDX
    let prefix = if split == Split::Train {
        "train"
    } else {
        "t10k"
    };
    for ext in ["", ".gz"] {
        let images = format!("{prefix}-images-idx3-ubyte{ext}");
        let labels = format!("{prefix}-labels-idx1-ubyte{ext}");
        if m.has(&images) {
            let (ip, lp) = (m.path(&images), m.path(&labels));
            let ib = m.read(&images)?;
            if !m.has(&labels) {
                return Err(DataError::format(
                    &lp,
                    "missing: the labels for the IDX images",
                ));
            }
            let lb = m.read(&labels)?;
            return read_idx_bytes(&ib, &lb, &ip, &lp).map(Some);
        }
    }
    Ok(None)
}

/// `batches.meta.txt`-style class names, one per line; `None` when the file is absent.
fn class_names(m: &mut Members, name: &str, expected: usize) -> Result<Option<Vec<String>>> {
    if !m.has(name) {
        return Ok(None);
    }
    let path = m.path(name);
    let bytes = m.read(name)?;
    let text = String::from_utf8(bytes).map_err(|_| DataError::format(&path, "not UTF-8 text"))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != expected {
        return Err(DataError::format(
            &path,
            format!("expected {expected} class names, found {}", names.len()),
        ));
    }
    Ok(Some(names))
}

/// Writes a gzip-compressed tar archive of `(member path, contents)` pairs: for tests and tools
/// that make small data sets in the official layout.
pub fn write_tar_gz(path: &Path, members: &[(&str, &[u8])]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, *bytes)?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests;
