//! Readers for the image-classification data formats the project trains and evaluates on:
//! CIFAR-10 / CIFAR-100 binary batches and (Fashion-)MNIST IDX files, gzip or raw, loose or in
//! their official archives ([`crate::archive`]).
//!
//! Plain Rust with no candle, so that both the runtime and the trainer use the same code.
//! Every error names the file and the problem; nothing here panics on bad input, and no buffer is
//! allocated from a size read in a header before the file has been checked to hold that much data.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// CIFAR-10's class names, in label order (used when `batches.meta.txt` is absent).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const CIFAR_PIXELS: usize = 3 * 32 * 32;
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest IDX image count we accept from a header (far above any real set; bounds allocation).
const IDX_MAX_ITEMS: u64 = 100_000_000;

/// A data error: always names the file (or directory) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn format(path: &Path, problem: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Which part of a data set to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Which label of a CIFAR-100 record to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarFormat {
    /// 1 label byte + 3072 pixels.
    Cifar10,
    /// coarse label byte + fine label byte + 3072 pixels; the fine (100-class) label is used.
    Cifar100,
}

/// Images as bytes in planar `[N, C, H, W]` order, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() * channels * height * width` pixel bytes, each image planar (C, then H, then W).
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
    /// Where the data came from (for messages and metadata).
    pub source: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The pixel bytes of image `i` (planar).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }
    /// A new data set holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }
    /// The first `n` images (all when `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
    }
    pub(crate) fn append(&mut self, other: Dataset, path: &Path) -> Result<()> {
        if (other.channels, other.height, other.width) != (self.channels, self.height, self.width) {
            return Err(DataError::format(
                path,
                "image shape differs from the other files of this data set",
            ));
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }

    /// Opens a data set by path, recognising the format:
    /// - a CIFAR-10 directory (`data_batch_1..5.bin` for train, `test_batch.bin` for test),
    /// - a CIFAR-100 directory (`train.bin` / `test.bin`),
    /// - a directory of IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-…` for test),
    /// - an official archive as downloaded (`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`, or
    ///   any `.tar`/`.tar.gz`/`.tgz` holding one of these layouts), read in memory without unpacking,
    /// - a directory holding one of those archives or the directory they unpack to
    ///   (`cifar-10-batches-bin/`, `cifar-100-binary/`), as `sc-trainer data fetch` leaves it,
    /// - a single CIFAR `.bin` file or an IDX images file (labels found beside it); for a single file
    ///   `split` is ignored,
    /// - a folder of images ([`crate::folder`]: `DIR/<class>/*` or `DIR/train|val|test/<class>/*`),
    ///   fitted to 32x32 (use [`crate::folder::open_folder`] for other sizes and options); the
    ///   test split is `test/`, else `val/`, else every image.
    ///
    /// A path that does not exist may be a short name ([`crate::named`]: `cifar10`, `cifar-test`,
    /// `fashion-mnist-train`, ...), found in the data home; a `-train`/`-test` suffix wins over
    /// `split`.
    pub fn open(path: &Path, split: Split) -> Result<Dataset> {
        if !path.exists() {
            if let Some(named) = crate::named::resolve(path) {
                let (dir, named_split) = named?;
                return Dataset::open(&dir, named_split.unwrap_or(split));
            }
        }
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() && crate::folder::is_image_folder(path) {
            let part = match split {
                Split::Train => crate::folder::Part::Train,
                Split::Test => crate::folder::Part::Test,
            };
            let opts = crate::folder::FolderOptions::default();
            crate::folder::open_folder(path, part, &opts, &|_, _| {}).map(|(d, _)| d)
        } else if meta.is_dir() {
            crate::archive::open_dir(path, split)
        } else if crate::archive::is_archive(path) {
            crate::archive::open_archive(path, split)
        } else if find_idx_kind(path).is_some() {
            let labels = idx_labels_beside(path)?;
            read_idx_pair(path, &labels)
        } else {
            read_cifar_file(path, guess_cifar_format(path, meta.len())?, None)
        }
    }
}

fn guess_cifar_format(path: &Path, len: u64) -> Result<CifarFormat> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name == "train.bin" || name == "test.bin" || name.contains("100") {
        return Ok(CifarFormat::Cifar100);
    }
    if len.is_multiple_of(CIFAR_PIXELS as u64 + 1) || !len.is_multiple_of(CIFAR_PIXELS as u64 + 2) {
        Ok(CifarFormat::Cifar10)
    } else {
        Ok(CifarFormat::Cifar100)
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory, expected a file"));
    }
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Reads one CIFAR binary batch file. `class_names`: defaults to CIFAR-10's names or "0".."99".
pub fn read_cifar_file(
    path: &Path,
    format: CifarFormat,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let bytes = read_file(path)?;
    read_cifar_bytes(&bytes, format, class_names, path)
}

/// Parses CIFAR binary records held in memory (what [`read_cifar_file`] does after reading the
/// file); `source` names them in errors. `class_names`, when given, must hold 10 (CIFAR-10) or 100
/// (CIFAR-100) names.
pub fn read_cifar_bytes(
    bytes: &[u8],
    format: CifarFormat,
    class_names: Option<Vec<String>>,
    source: &Path,
) -> Result<Dataset> {
    let path = source;
    let (label_bytes, classes) = match format {
        CifarFormat::Cifar10 => (1, 10),
        CifarFormat::Cifar100 => (2, 100),
    };
    if let Some(names) = &class_names {
        if names.len() != classes {
            return Err(DataError::format(
                path,
                format!(
                    "{} class names given for CIFAR-{classes}, which has {classes}",
                    names.len()
                ),
            ));
        }
    }
    let record = label_bytes + CIFAR_PIXELS;
    if bytes.is_empty() {
        return Err(DataError::format(
            path,
            "empty file, expected CIFAR records",
        ));
    }
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::format(
            path,
            format!(
                "size {} bytes is not a multiple of the {record}-byte CIFAR-{classes} record \
                 (truncated file, or not a CIFAR-{classes} batch): {} whole records and {} bytes left over",
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            ),
        ));
    }
    let n = bytes.len() / record;
    let mut images = Vec::with_capacity(n * CIFAR_PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_bytes - 1];
        if label as usize >= classes {
            return Err(DataError::format(
                path,
                format!("record {i}: label {label} is out of range for {classes} classes"),
            ));
        }
        labels.push(label);
        images.extend_from_slice(&rec[label_bytes..]);
    }
    let class_names = class_names.unwrap_or_else(|| match format {
        CifarFormat::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        CifarFormat::Cifar100 => (0..100).map(|i| i.to_string()).collect(),
    });
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        class_names,
        source: path.display().to_string(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum IdxKind {
    Images,
    Labels,
}

fn find_idx_kind(path: &Path) -> Option<IdxKind> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    if name.contains("images-idx3") || name.contains("idx3-ubyte") {
        Some(IdxKind::Images)
    } else if name.contains("labels-idx1") || name.contains("idx1-ubyte") {
        Some(IdxKind::Labels)
    } else {
        None
    }
}

fn idx_labels_beside(images: &Path) -> Result<PathBuf> {
    let name = images
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if find_idx_kind(images) != Some(IdxKind::Images) {
        return Err(DataError::format(
            images,
            "expected an IDX images file (…-images-idx3-ubyte[.gz])",
        ));
    }
    let label_name = name
        .replace("images-idx3", "labels-idx1")
        .replace("idx3-ubyte", "idx1-ubyte");
    Ok(images.with_file_name(label_name))
}

/// Opens a file, transparently gunzipping it when it starts with the gzip magic.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory, expected a file"));
    }
    let f = BufReader::new(File::open(path).map_err(|e| DataError::io(path, e))?);
    maybe_gz(f).map_err(|e| DataError::io(path, e))
}

/// `r`, gunzipped when it starts with the gzip magic.
pub(crate) fn maybe_gz<'a, R: Read + 'a>(mut r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut r, &mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(r);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(chained)))
    } else {
        Ok(Box::new(chained))
    }
}

fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

/// Reads exactly `n` bytes of an IDX payload, growing the buffer only as data arrives.
fn read_payload(r: &mut dyn Read, n: u64, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n.min(1 << 24) as usize);
    let got = r
        .take(n)
        .read_to_end(&mut out)
        .map_err(|e| DataError::format(path, format!("cannot read IDX data: {e}")))?;
    if (got as u64) < n {
        return Err(DataError::format(
            path,
            format!("truncated: the header promises {n} data bytes, the file holds {got}"),
        ));
    }
    let mut extra = [0u8; 1];
    if read_up_to(r, &mut extra).map_err(|e| DataError::format(path, e.to_string()))? != 0 {
        return Err(DataError::format(
            path,
            "trailing bytes after the data the header describes",
        ));
    }
    Ok(out)
}

fn read_idx_header(r: &mut dyn Read, path: &Path, kind: IdxKind) -> Result<Vec<u32>> {
    let mut word = [0u8; 4];
    let bad = |e: std::io::Error| DataError::format(path, format!("cannot read IDX header: {e}"));
    if read_up_to(r, &mut word).map_err(bad)? != 4 {
        return Err(DataError::format(path, "too short for an IDX header"));
    }
    let magic = u32::from_be_bytes(word);
    let (expected, dims) = match kind {
        IdxKind::Images => (IDX_IMAGES_MAGIC, 3),
        IdxKind::Labels => (IDX_LABELS_MAGIC, 1),
    };
    if magic != expected {
        return Err(DataError::format(
            path,
            format!(
                "wrong IDX magic {magic:#010x}, expected {expected:#010x} (unsigned bytes, {dims} dimension{})",
                if dims == 1 { "" } else { "s" }
            ),
        ));
    }
    let mut out = Vec::with_capacity(dims);
    for _ in 0..dims {
        if read_up_to(r, &mut word).map_err(bad)? != 4 {
            return Err(DataError::format(path, "IDX header is truncated"));
        }
        out.push(u32::from_be_bytes(word));
    }
    Ok(out)
}

/// Reads an IDX images file and its labels file into one data set (1 channel).
pub fn read_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
    let (images, [n, h, w]) = read_idx_images(&mut *open_maybe_gz(images_path)?, images_path)?;
    let labels = read_idx_labels(
        &mut *open_maybe_gz(labels_path)?,
        labels_path,
        n,
        images_path,
    )?;
    idx_dataset(images, labels, [h, w], images_path, labels_path)
}

/// Parses an IDX images file and labels file held in memory (gzip or raw), as [`read_idx_pair`]
/// does after opening the files; the paths name them in errors (and `fashion` in the images path
/// selects Fashion-MNIST's class names).
pub fn read_idx_bytes(
    images: &[u8],
    labels: &[u8],
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset> {
    let mut r = maybe_gz(images).map_err(|e| DataError::io(images_path, e))?;
    let (images, [n, h, w]) = read_idx_images(&mut *r, images_path)?;
    let mut r = maybe_gz(labels).map_err(|e| DataError::io(labels_path, e))?;
    let labels = read_idx_labels(&mut *r, labels_path, n, images_path)?;
    idx_dataset(images, labels, [h, w], images_path, labels_path)
}

/// The pixels of an IDX images stream and its `[n, h, w]`.
fn read_idx_images(r: &mut dyn Read, images_path: &Path) -> Result<(Vec<u8>, [u64; 3])> {
    let dims = read_idx_header(r, images_path, IdxKind::Images)?;
    let (n, h, w) = (dims[0] as u64, dims[1] as u64, dims[2] as u64);
    if n == 0 || h == 0 || w == 0 {
        return Err(DataError::format(
            images_path,
            format!("IDX header has an empty dimension ({n} x {h} x {w})"),
        ));
    }
    if n > IDX_MAX_ITEMS || h * w > 1 << 24 {
        return Err(DataError::format(
            images_path,
            format!("implausible IDX dimensions {n} x {h} x {w}"),
        ));
    }
    let images = read_payload(r, n * h * w, images_path)?;
    Ok((images, [n, h, w]))
}

/// The `n` labels of an IDX labels stream.
fn read_idx_labels(
    r: &mut dyn Read,
    labels_path: &Path,
    n: u64,
    images_path: &Path,
) -> Result<Vec<u8>> {
    let ldims = read_idx_header(r, labels_path, IdxKind::Labels)?;
    if ldims[0] as u64 != n {
        return Err(DataError::format(
            labels_path,
            format!(
                "holds {} labels but {} holds {n} images",
                ldims[0],
                images_path.display()
            ),
        ));
    }
    read_payload(r, n, labels_path)
}

fn idx_dataset(
    images: Vec<u8>,
    labels: Vec<u8>,
    [h, w]: [u64; 2],
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset> {
    let lower = images_path.to_string_lossy().to_lowercase();
    let class_names: Vec<String> = if lower.contains("fashion") {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        (0..10).map(|i| i.to_string()).collect()
    };
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= class_names.len())
    {
        return Err(DataError::format(
            labels_path,
            format!(
                "label {i} is {l}, out of range for {} classes",
                class_names.len()
            ),
        ));
    }
    Ok(Dataset {
        images,
        labels,
        channels: 1,
        height: h as usize,
        width: w as usize,
        class_names,
        source: images_path.display().to_string(),
    })
}

/// Writers for the same formats: used by tests and tools to make small data sets.
pub mod write {
    use super::*;
    use std::io::Write;

    /// CIFAR-10 records, one per image: its label byte, then its 3072 planar pixels. `images`
    /// holds the images back to back, `labels` one byte each.
    pub fn cifar10_bytes(images: &[u8], labels: &[u8]) -> Vec<u8> {
        assert_eq!(
            images.len(),
            labels.len() * CIFAR_PIXELS,
            "a CIFAR image has 3072 bytes"
        );
        let mut out = Vec::with_capacity(labels.len() * (CIFAR_PIXELS + 1));
        for (label, px) in labels.iter().zip(images.chunks_exact(CIFAR_PIXELS)) {
            out.push(*label);
            out.extend_from_slice(px);
        }
        out
    }

    /// Writes CIFAR-10 records (label byte + 3072 planar pixels) for `(label, pixels)` pairs.
    pub fn cifar10(path: &Path, records: &[(u8, Vec<u8>)]) -> std::io::Result<()> {
        let labels: Vec<u8> = records.iter().map(|r| r.0).collect();
        let images: Vec<u8> = records.iter().flat_map(|r| r.1.iter().copied()).collect();
        std::fs::write(path, cifar10_bytes(&images, &labels))
    }

    /// The bytes of an IDX images file (`h` x `w` one-channel images back to back) and of its
    /// labels file.
    pub fn idx_bytes(h: usize, w: usize, images: &[u8], labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(
            images.len(),
            labels.len() * h * w,
            "an IDX image has h*w bytes"
        );
        let n = labels.len() as u32;
        let mut img = Vec::with_capacity(16 + images.len());
        img.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
        for d in [n, h as u32, w as u32] {
            img.extend_from_slice(&d.to_be_bytes());
        }
        img.extend_from_slice(images);
        let mut lab = Vec::with_capacity(8 + labels.len());
        lab.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend_from_slice(labels);
        (img, lab)
    }

    /// Writes an IDX images file and labels file (gzip when the name ends in `.gz`).
    pub fn idx(
        images_path: &Path,
        labels_path: &Path,
        h: usize,
        w: usize,
        images: &[u8],
        labels: &[u8],
    ) -> std::io::Result<()> {
        let (img, lab) = idx_bytes(h, w, images, labels);
        for (p, bytes) in [(images_path, img), (labels_path, lab)] {
            if p.extension().is_some_and(|e| e == "gz") {
                let mut enc = flate2::write::GzEncoder::new(
                    std::fs::File::create(p)?,
                    flate2::Compression::fast(),
                );
                enc.write_all(&bytes)?;
                enc.finish()?;
            } else {
                std::fs::write(p, bytes)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cifar_records(n: usize) -> Vec<(u8, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    (i % 10) as u8,
                    (0..CIFAR_PIXELS).map(|p| ((p + i) % 251) as u8).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn cifar100_directory_uses_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        // Records: coarse label, fine label, 3072 pixels.
        let mut bytes = Vec::new();
        for (coarse, fine) in [(3u8, 77u8), (19, 99), (0, 0)] {
            bytes.push(coarse);
            bytes.push(fine);
            bytes.extend(std::iter::repeat_n(fine, CIFAR_PIXELS));
        }
        std::fs::write(dir.path().join("train.bin"), &bytes).unwrap();
        let d = Dataset::open(dir.path(), Split::Train).unwrap();
        assert_eq!((d.len(), d.num_classes()), (3, 100));
        assert_eq!(d.labels, [77, 99, 0]);
        assert_eq!(d.image(1)[0], 99);
        bytes[1] = 100;
        std::fs::write(dir.path().join("train.bin"), &bytes).unwrap();
        let e = Dataset::open(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.bin") && e.contains("label 100"), "{e}");
    }

    #[test]
    fn cifar_roundtrip_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        for b in 1..=5 {
            write::cifar10(
                &dir.path().join(format!("data_batch_{b}.bin")),
                &cifar_records(4),
            )
            .unwrap();
        }
        write::cifar10(&dir.path().join("test_batch.bin"), &cifar_records(3)).unwrap();
        let train = Dataset::open(dir.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 20);
        assert_eq!(train.labels[..4], [0, 1, 2, 3]);
        assert_eq!(train.image(1)[0], 1);
        assert_eq!(train.class_names[9], "truck");
        let test = Dataset::open(dir.path(), Split::Test).unwrap();
        assert_eq!(test.len(), 3);
        let single = Dataset::open(&dir.path().join("test_batch.bin"), Split::Train).unwrap();
        assert_eq!(
            single,
            Dataset {
                source: single.source.clone(),
                ..test
            }
        );
    }

    #[test]
    fn cifar_bad_inputs_name_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bin");
        let mut bytes = vec![0u8; 3073 * 2];
        bytes.truncate(3073 * 2 - 10);
        std::fs::write(&p, &bytes).unwrap();
        let e = Dataset::open(&p, Split::Test).unwrap_err().to_string();
        assert!(e.contains("b.bin") && e.contains("not a multiple"), "{e}");

        let mut bytes = vec![0u8; 3073];
        bytes[0] = 10;
        std::fs::write(&p, &bytes).unwrap();
        let e = read_cifar_file(&p, CifarFormat::Cifar10, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 10 is out of range"), "{e}");

        std::fs::write(&p, b"").unwrap();
        let e = Dataset::open(&p, Split::Test).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");

        let e = Dataset::open(&dir.path().join("missing.bin"), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.bin"), "{e}");

        let e = Dataset::open(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data set found"), "{e}");
    }

    #[test]
    fn idx_gzip_and_raw() {
        let dir = tempfile::tempdir().unwrap();
        let imgs: Vec<u8> = (0..5 * 28 * 28).map(|i| (i % 256) as u8).collect();
        let labels = [0u8, 1, 2, 9, 4];
        for ext in ["", ".gz"] {
            let ip = dir.path().join(format!("train-images-idx3-ubyte{ext}"));
            let lp = dir.path().join(format!("train-labels-idx1-ubyte{ext}"));
            write::idx(&ip, &lp, 28, 28, &imgs, &labels).unwrap();
            let d = Dataset::open(&ip, Split::Train).unwrap();
            assert_eq!((d.len(), d.channels, d.height, d.width), (5, 1, 28, 28));
            assert_eq!(d.images, imgs);
            assert_eq!(d.labels, labels);
            std::fs::remove_file(&ip).unwrap();
            std::fs::remove_file(&lp).unwrap();
        }
    }

    #[test]
    fn idx_bad_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let ip = dir.path().join("train-images-idx3-ubyte");
        let lp = dir.path().join("train-labels-idx1-ubyte");
        write::idx(&ip, &lp, 2, 2, &[0; 12], &[1, 2, 3]).unwrap();
        // mismatched counts
        write::idx(
            &dir.path().join("x-images-idx3-ubyte"),
            &lp,
            2,
            2,
            &[0; 8],
            &[1, 2],
        )
        .unwrap();
        let e = read_idx_pair(&ip, &lp).unwrap_err().to_string();
        assert!(e.contains("holds 2 labels"), "{e}");
        // wrong magic
        std::fs::write(&ip, [0u8, 0, 8, 1, 0, 0, 0, 1]).unwrap();
        let e = read_idx_pair(&ip, &lp).unwrap_err().to_string();
        assert!(
            e.contains("wrong IDX magic") && e.contains("train-images"),
            "{e}"
        );
        // huge header, tiny file: must fail without allocating
        let mut h = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [60_000u32, 20_000, 20_000] {
            h.extend_from_slice(&d.to_be_bytes());
        }
        std::fs::write(&ip, &h).unwrap();
        let e = read_idx_pair(&ip, &lp).unwrap_err().to_string();
        assert!(e.contains("implausible"), "{e}");
        // corrupt gzip
        let gz = dir.path().join("t10k-images-idx3-ubyte.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        let e = Dataset::open(&gz, Split::Test).unwrap_err().to_string();
        assert!(e.contains("t10k-images"), "{e}");
    }
}
