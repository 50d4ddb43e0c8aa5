//! Folders of the user's own images, as torchvision's `ImageFolder` and Keras'
//! `image_dataset_from_directory` read them:
//!
//! - `DIR/train/<class>/*` with `DIR/val/<class>/*` and/or `DIR/test/<class>/*`, or
//! - `DIR/<class>/*` alone (the trainer then holds out `--val-size` images, as for CIFAR).
//!
//! Class names are the folder names in sorted (byte) order; a label is the class's index. Files
//! may sit in sub-folders of a class folder. Hidden files and folders (`.name`) are ignored.
//!
//! **Decode once.** The first read decodes every image in parallel, fits it to
//! `image_size` x `image_size` ([`crate::images::fit_square`]) and writes the pixels (uint8,
//! planar) to a cache file, keyed by a hash of the file list, sizes, modification times and the
//! image size. Later reads map the cache file into memory and copy it out, so an epoch costs what
//! CIFAR costs. A changed folder has a new key and is decoded again; the old cache file is removed.
//! The cache lives in `DIR/.sc-cache/` (or `SC_CACHE_DIR`, or the system's temporary directory when
//! `DIR` is read-only).
//!
//! **Bad files.** A file that is not an image or does not decode is an error naming it (up to
//! ten names, and the count), unless the caller asks to skip such files
//! ([`FolderOptions::skip_bad_images`]); the skipped names are then returned. A folder with fewer
//! than two classes, or a class with no images, is an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::dataset::{DataError, Dataset, Result};
use crate::images;

/// Environment variable naming the directory for cache files (instead of `DIR/.sc-cache`).
pub const CACHE_DIR_ENV: &str = "SC_CACHE_DIR";
/// The cache folder inside a data folder.
pub const CACHE_FOLDER: &str = ".sc-cache";
const MAGIC: &[u8; 8] = b"SCFOLDER";
const VERSION: u32 = 1;
/// Images of at most this side are accepted as the cache's target size.
pub const MAX_IMAGE_SIZE: u32 = 1024;

/// How to read a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderOptions {
    /// Side of the square every image is fitted to (default 32).
    pub image_size: u32,
    /// Go on without files that are not images or do not decode (they are reported).
    pub skip_bad_images: bool,
    /// Where cache files go; `None`: `SC_CACHE_DIR`, else `DIR/.sc-cache`, else the temp dir.
    pub cache_dir: Option<PathBuf>,
    /// Decoding threads (0: all the CPU's).
    pub threads: usize,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            image_size: 32,
            skip_bad_images: false,
            cache_dir: None,
            threads: 0,
        }
    }
}

/// Which images of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `train/`, or every image of a folder without splits.
    Train,
    /// `val/` (None from [`Layout::dir`] when absent).
    Val,
    /// `test/`, else `val/`, else every image of a folder without splits.
    Test,
}

/// How a folder is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub root: PathBuf,
    /// The folder whose sub-folders are the classes that name the labels (`train/` or the root).
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    pub test: Option<PathBuf>,
}

impl Layout {
    /// True for `DIR/<class>/*` alone (no `train/`).
    pub fn is_flat(&self) -> bool {
        self.train == self.root
    }

    /// The folder holding `part`, when the layout has one.
    pub fn dir(&self, part: Part) -> Option<&Path> {
        match part {
            Part::Train => Some(&self.train),
            Part::Val => self.val.as_deref(),
            Part::Test => self
                .test
                .as_deref()
                .or(self.val.as_deref())
                .or(self.is_flat().then_some(self.root.as_path())),
        }
    }
}

/// What reading a folder did.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderLoad {
    pub cache: PathBuf,
    /// True when the pixels came from an existing cache file.
    pub from_cache: bool,
    /// Files left out (only with `skip_bad_images`), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Seconds spent (decoding, or reading the cache).
    pub seconds: f64,
    /// When the cache could not go where it should and went elsewhere: why.
    pub cache_note: Option<String>,
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let p = e.path();
        if p.is_dir() && !hidden(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// True when `dir` looks like an image folder: a `train/` with class folders, or class folders
/// holding at least one file with an image extension.
pub fn is_image_folder(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    let holds_images = |class_root: &Path| -> bool {
        subdirs(class_root).unwrap_or_default().iter().any(|c| {
            std::fs::read_dir(c).is_ok_and(|mut it| {
                it.any(|e| e.is_ok_and(|e| images::has_image_extension(&e.path())))
            })
        })
    };
    let train = dir.join("train");
    (train.is_dir() && holds_images(&train)) || holds_images(dir)
}

/// The folder's layout; an error names the folder and what is missing.
pub fn layout(dir: &Path) -> Result<Layout> {
    if !dir.is_dir() {
        return Err(DataError::format(dir, "is not a directory"));
    }
    let train = dir.join("train");
    let opt = |name: &str| {
        let p = dir.join(name);
        p.is_dir().then_some(p)
    };
    if train.is_dir() {
        Ok(Layout {
            root: dir.to_path_buf(),
            train,
            val: opt("val").or_else(|| opt("valid")),
            test: opt("test"),
        })
    } else {
        Ok(Layout {
            root: dir.to_path_buf(),
            train: dir.to_path_buf(),
            val: None,
            test: None,
        })
    }
}

/// The class names of a layout: the sorted sub-folders of its training folder.
pub fn class_names(layout: &Layout) -> Result<Vec<String>> {
    let names: Vec<String> = subdirs(&layout.train)?
        .iter()
        .filter(|p| !(layout.is_flat() && is_split_name(p)))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        0 => Err(DataError::format(
            &layout.train,
            "no class folders: expected DIR/<class>/<images> or DIR/train/<class>/<images>",
        )),
        1 => Err(DataError::format(
            &layout.train,
            format!(
                "only one class folder ({}): a classifier needs at least two",
                names[0]
            ),
        )),
        n if n > 256 => Err(DataError::format(
            &layout.train,
            format!("{n} class folders: at most 256 are supported"),
        )),
        _ => Ok(names),
    }
}

fn is_split_name(p: &Path) -> bool {
    matches!(
        p.file_name().and_then(|n| n.to_str()),
        Some("val" | "valid" | "test")
    )
}

/// One file to read: its path, label, size and modification time.
struct Entry {
    path: PathBuf,
    label: u8,
    size: u64,
    mtime: u128,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if hidden(&p) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// The files of the class folders under `dir`, labelled by `classes`. `flat_root`: `dir` is a
/// folder without splits, whose `val`/`valid`/`test` sub-folders are not classes.
fn list(dir: &Path, classes: &[String], flat_root: bool) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for sub in subdirs(dir)? {
        if flat_root && is_split_name(&sub) {
            continue;
        }
        let name = sub.file_name().unwrap().to_string_lossy().into_owned();
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(DataError::format(
                &sub,
                format!(
                    "class folder '{name}' is not one of the training classes ({})",
                    classes.join(", ")
                ),
            ));
        };
        let mut files = Vec::new();
        walk(&sub, &mut files)?;
        if files.is_empty() {
            return Err(DataError::format(
                &sub,
                format!("class '{name}' holds no files"),
            ));
        }
        for path in files {
            let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.push(Entry {
                path,
                label: label as u8,
                size: meta.len(),
                mtime,
            });
        }
    }
    if out.is_empty() {
        return Err(DataError::format(dir, "no class folders with images"));
    }
    Ok(out)
}

/// FNV-1a, stable across platforms and Rust versions.
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn cache_key(root: &Path, entries: &[Entry], classes: &[String], opts: &FolderOptions) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = fnv1a(h, &VERSION.to_le_bytes());
    h = fnv1a(h, &opts.image_size.to_le_bytes());
    h = fnv1a(h, &[opts.skip_bad_images as u8]);
    for c in classes {
        h = fnv1a(h, c.as_bytes());
        h = fnv1a(h, &[0]);
    }
    for e in entries {
        let rel = e.path.strip_prefix(root).unwrap_or(&e.path);
        h = fnv1a(h, rel.to_string_lossy().as_bytes());
        h = fnv1a(h, &[0, e.label]);
        h = fnv1a(h, &e.size.to_le_bytes());
        h = fnv1a(h, &e.mtime.to_le_bytes());
    }
    h
}

/// Where the cache of `dir` goes, and a note when it is not the usual place.
fn cache_dir(dir: &Path, opts: &FolderOptions) -> (PathBuf, Option<String>) {
    if let Some(d) = &opts.cache_dir {
        return (d.clone(), None);
    }
    if let Some(d) = std::env::var_os(CACHE_DIR_ENV) {
        return (PathBuf::from(d), None);
    }
    let inside = dir.join(CACHE_FOLDER);
    if std::fs::create_dir_all(&inside).is_ok() && writable(&inside) {
        return (inside, None);
    }
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let tag = fnv1a(0xcbf2_9ce4_8422_2325, abs.to_string_lossy().as_bytes());
    let tmp = std::env::temp_dir().join(format!("sc-cache-{tag:016x}"));
    (
        tmp.clone(),
        Some(format!(
            "{} is not writable: the decoded-image cache goes to {} (set {CACHE_DIR_ENV} to choose)",
            dir.display(),
            tmp.display()
        )),
    )
}

fn writable(dir: &Path) -> bool {
    tempfile::NamedTempFile::new_in(dir).is_ok()
}

/// Reads `dir`'s `part` into a data set of `image_size`² RGB images, decoding only when no cache
/// matches. `progress(done, total)` is called while decoding (from worker threads).
pub fn open_folder(
    dir: &Path,
    part: Part,
    opts: &FolderOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Dataset, FolderLoad)> {
    if opts.image_size == 0 || opts.image_size > MAX_IMAGE_SIZE {
        return Err(DataError::format(
            dir,
            format!(
                "image size {} is out of range (1..={MAX_IMAGE_SIZE})",
                opts.image_size
            ),
        ));
    }
    let lay = layout(dir)?;
    let classes = class_names(&lay)?;
    let Some(part_dir) = lay.dir(part) else {
        return Err(DataError::format(
            dir,
            format!(
                "has no {part:?} folder (expected {}/val/<class>/...)",
                dir.display()
            )
            .to_lowercase(),
        ));
    };
    let part_dir = part_dir.to_path_buf();
    let entries = list(&part_dir, &classes, part_dir == lay.root)?;
    let key = cache_key(&lay.root, &entries, &classes, opts);
    let part_name = match part {
        Part::Train => "train",
        Part::Val => "val",
        Part::Test => "test",
    };
    let (cdir, cache_note) = cache_dir(dir, opts);
    let prefix = format!("{part_name}-{}px-", opts.image_size);
    let cache = cdir.join(format!("{prefix}{key:016x}.bin"));
    let source = format!("{} ({part_name})", part_dir.display());
    let started = Instant::now();
    if let Some((ds, skipped)) = read_cache(&cache, &classes, opts.image_size, &source) {
        return Ok((
            ds,
            FolderLoad {
                cache,
                from_cache: true,
                skipped,
                seconds: started.elapsed().as_secs_f64(),
                cache_note,
            },
        ));
    }
    let (ds, skipped) = decode_all(&entries, &classes, opts, &source, progress)?;
    // A cache that cannot be written costs the next run a decode, not this one its data.
    let mut note = cache_note;
    if let Err(e) = write_cache(&cache, &ds, &skipped) {
        note = Some(format!(
            "the decoded-image cache could not be written ({e}); the next run decodes again"
        ));
    } else {
        remove_stale(&cdir, &prefix, &cache);
    }
    Ok((
        ds,
        FolderLoad {
            cache,
            from_cache: false,
            skipped,
            seconds: started.elapsed().as_secs_f64(),
            cache_note: note,
        },
    ))
}

/// Decodes every entry in parallel into planar pixels.
fn decode_all(
    entries: &[Entry],
    classes: &[String],
    opts: &FolderOptions,
    source: &str,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Dataset, Vec<(PathBuf, String)>)> {
    let s = opts.image_size;
    let per = 3 * (s as usize) * (s as usize);
    let n = entries.len();
    let mut pixels = vec![0u8; n * per];
    let mut errors: Vec<Option<String>> = vec![None; n];
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    } else {
        opts.threads
    }
    .clamp(1, n.max(1));
    let done = AtomicUsize::new(0);
    {
        // Workers take the next image (its pixel slot and error slot) from one shared queue;
        // each writes only the slots it took.
        let queue =
            std::sync::Mutex::new(pixels.chunks_mut(per).zip(errors.iter_mut()).enumerate());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, (out, error))) = next else { break };
                    let result = std::fs::read(&entries[i].path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| images::decode(&b))
                        .and_then(|img| images::fit_square(&img, s));
                    match result {
                        Ok(rgb) => images::to_planar(&rgb, out),
                        Err(e) => *error = Some(e),
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d.is_multiple_of(256) || d == n {
                        progress(d, n);
                    }
                });
            }
        });
    }
    let bad: Vec<(PathBuf, String)> = entries
        .iter()
        .zip(&errors)
        .filter_map(|(e, err)| err.as_ref().map(|m| (e.path.clone(), m.clone())))
        .collect();
    if !bad.is_empty() && !opts.skip_bad_images {
        let names: Vec<String> = bad
            .iter()
            .take(10)
            .map(|(p, m)| format!("{}: {m}", p.display()))
            .collect();
        return Err(DataError::format(
            Path::new(source),
            format!(
                "{} of {n} files are not images or do not decode (use --skip-bad-images to go on without them):\n  {}{}",
                bad.len(),
                names.join("\n  "),
                if bad.len() > 10 { "\n  ..." } else { "" }
            ),
        ));
    }
    // Skipped images leave the buffer in place (no second copy of the decoded pixels).
    let mut labels = Vec::with_capacity(n - bad.len());
    for (i, e) in entries.iter().enumerate() {
        if errors[i].is_none() {
            let to = labels.len();
            if to != i {
                pixels.copy_within(i * per..(i + 1) * per, to * per);
            }
            labels.push(e.label);
        }
    }
    pixels.truncate(labels.len() * per);
    let ds = Dataset {
        images: pixels,
        labels,
        channels: 3,
        height: s as usize,
        width: s as usize,
        class_names: classes.to_vec(),
        source: source.to_string(),
    };
    check_classes(&ds, entries)?;
    Ok((ds, bad))
}

/// Every class this part has files for must keep at least one image.
fn check_classes(ds: &Dataset, entries: &[Entry]) -> Result<()> {
    for (c, name) in ds.class_names.iter().enumerate() {
        let listed = entries.iter().any(|e| e.label as usize == c);
        if listed && !ds.labels.iter().any(|&l| l as usize == c) {
            return Err(DataError::format(
                Path::new(&ds.source),
                format!("class '{name}' has no readable images"),
            ));
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_cache(path: &Path, ds: &Dataset, skipped: &[(PathBuf, String)]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        ds.len() as u32,
        ds.channels as u32,
        ds.height as u32,
        ds.width as u32,
        ds.class_names.len() as u32,
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    for c in &ds.class_names {
        put_str(&mut head, c);
    }
    head.extend_from_slice(&(skipped.len() as u32).to_le_bytes());
    for (p, m) in skipped {
        put_str(&mut head, &p.to_string_lossy());
        put_str(&mut head, m);
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        w.write_all(&head)?;
        w.write_all(&ds.labels)?;
        w.write_all(&ds.images)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn remove_stale(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p != keep && name.starts_with(prefix) && name.ends_with(".bin") {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A little-endian reader over the mapped cache; every read is bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The cache's data set when the file exists and is whole and matches; `None` rebuilds it.
fn read_cache(
    path: &Path,
    classes: &[String],
    size: u32,
    source: &str,
) -> Option<(Dataset, Vec<(PathBuf, String)>)> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: the map is read once, bounds-checked, and copied out before this function returns;
    // cache files are only ever replaced by rename, never written in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let mut c = Cursor { b: &map, at: 0 };
    if c.take(8)? != MAGIC || c.u32()? != VERSION {
        return None;
    }
    let (n, ch, h, w, k) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?);
    if (ch, h, w) != (3, size, size) || k as usize != classes.len() {
        return None;
    }
    for name in classes {
        if c.string()? != *name {
            return None;
        }
    }
    let skipped_n = c.u32()?;
    let mut skipped = Vec::new();
    for _ in 0..skipped_n {
        skipped.push((PathBuf::from(c.string()?), c.string()?));
    }
    let n = n as usize;
    let labels = c.take(n)?.to_vec();
    let images = c
        .take(n.checked_mul(3 * size as usize * size as usize)?)?
        .to_vec();
    if c.at != map.len() || labels.iter().any(|&l| l as usize >= classes.len()) {
        return None;
    }
    Some((
        Dataset {
            images,
            labels,
            channels: 3,
            height: size as usize,
            width: size as usize,
            class_names: classes.to_vec(),
            source: source.to_string(),
        },
        skipped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, RgbImage};

    /// A solid-colour image file of `w` x `h` in the format of `name`'s extension.
    fn write_image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb(rgb)))
            .save(path)
            .unwrap();
    }

    fn opts(cache: &Path) -> FolderOptions {
        FolderOptions {
            image_size: 8,
            cache_dir: Some(cache.to_path_buf()),
            threads: 2,
            ..FolderOptions::default()
        }
    }

    #[test]
    fn classes_are_sorted_folder_names_and_images_are_fitted() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pets");
        write_image(&d.join("dog/a.png"), 20, 10, [200, 10, 10]);
        write_image(&d.join("dog/more/b.jpg"), 9, 9, [190, 0, 0]);
        write_image(&d.join("cat/c.bmp"), 8, 8, [0, 0, 250]);
        std::fs::write(
            d.join("README.txt"),
            "top-level files are not images of a class",
        )
        .unwrap();
        assert!(is_image_folder(&d));
        let (ds, load) =
            open_folder(&d, Part::Train, &opts(&t.path().join("c")), &|_, _| {}).unwrap();
        assert_eq!(ds.class_names, ["cat", "dog"]);
        assert_eq!(ds.labels, [0, 1, 1]);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 8, 8));
        assert!(ds.image(0)[128..].iter().all(|&b| b > 240), "cat is blue");
        assert!(ds.image(1)[..64].iter().all(|&b| b > 190), "dog is red");
        assert!(!load.from_cache);
        // The second read comes from the cache, identical.
        let (again, load2) =
            open_folder(&d, Part::Train, &opts(&t.path().join("c")), &|_, _| {}).unwrap();
        assert!(load2.from_cache);
        assert_eq!(again, ds);
        // A changed folder is decoded again, and the old cache file goes.
        write_image(&d.join("cat/d.png"), 8, 8, [0, 0, 250]);
        let (changed, load3) =
            open_folder(&d, Part::Train, &opts(&t.path().join("c")), &|_, _| {}).unwrap();
        assert!(!load3.from_cache);
        assert_eq!(changed.len(), 4);
        assert!(!load.cache.exists());
        assert!(load3.cache.exists());
        // A different size is a different cache.
        let mut o = opts(&t.path().join("c"));
        o.image_size = 4;
        let (small, l4) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(!l4.from_cache);
        assert_eq!(small.height, 4);
    }

    #[test]
    fn split_folders_share_the_training_classes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ds");
        for (part, n) in [("train", 3), ("val", 2)] {
            for (c, rgb) in [("b", [0, 200, 0]), ("a", [200, 0, 0])] {
                for i in 0..n {
                    write_image(&d.join(format!("{part}/{c}/{i}.png")), 10, 12, rgb);
                }
            }
        }
        let o = opts(&t.path().join("c"));
        let l = layout(&d).unwrap();
        assert!(!l.is_flat() && l.val.is_some() && l.test.is_none());
        let (train, _) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        let (val, _) = open_folder(&d, Part::Val, &o, &|_, _| {}).unwrap();
        let (test, _) = open_folder(&d, Part::Test, &o, &|_, _| {}).unwrap();
        assert_eq!((train.len(), val.len()), (6, 4));
        assert_eq!(val.class_names, ["a", "b"]);
        assert_eq!(val.labels, [0, 0, 1, 1]);
        assert_eq!(
            (&test.images, &test.labels),
            (&val.images, &val.labels),
            "test falls back to val"
        );
        // A validation class the training set lacks is an error naming it.
        write_image(&d.join("val/zebra/0.png"), 4, 4, [1, 2, 3]);
        let e = open_folder(&d, Part::Val, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zebra") && e.contains("not one of the training classes"),
            "{e}"
        );
        // No val folder: a clear error.
        let flat = t.path().join("flat");
        write_image(&flat.join("x/0.png"), 4, 4, [1, 2, 3]);
        write_image(&flat.join("y/0.png"), 4, 4, [1, 2, 3]);
        let e = open_folder(&flat, Part::Val, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("no val folder"), "{e}");
    }

    #[test]
    fn bad_files_are_named_and_skipped_only_when_asked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ds");
        write_image(&d.join("a/0.png"), 8, 8, [9, 9, 9]);
        write_image(&d.join("a/1.png"), 8, 8, [9, 9, 9]);
        write_image(&d.join("b/0.png"), 8, 8, [9, 9, 9]);
        std::fs::write(d.join("b/notes.txt"), "not an image").unwrap();
        std::fs::write(d.join("b/broken.jpg"), [0xFF, 0xD8, 0xFF, 0x00, 1, 2]).unwrap();
        let mut o = opts(&t.path().join("c"));
        let e = open_folder(&d, Part::Train, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 of 5 files")
                && e.contains("notes.txt")
                && e.contains("broken.jpg")
                && e.contains("--skip-bad-images"),
            "{e}"
        );
        o.skip_bad_images = true;
        let (ds, load) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(load.skipped.len(), 2);
        // The skipped names survive the cache.
        let (_, again) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(again.from_cache);
        assert_eq!(again.skipped, load.skipped);
        // A class left with nothing readable is an error even when skipping.
        std::fs::remove_file(d.join("b/0.png")).unwrap();
        let e = open_folder(&d, Part::Train, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 'b' has no readable images"), "{e}");
    }

    #[test]
    fn one_class_or_an_empty_class_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("one");
        write_image(&d.join("only/0.png"), 4, 4, [1, 2, 3]);
        let o = opts(&t.path().join("c"));
        let e = open_folder(&d, Part::Train, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("only one class folder (only)"), "{e}");
        std::fs::create_dir_all(d.join("empty")).unwrap();
        let e = open_folder(&d, Part::Train, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 'empty' holds no files"), "{e}");
        let none = t.path().join("none");
        std::fs::create_dir_all(&none).unwrap();
        assert!(!is_image_folder(&none));
        let e = open_folder(&none, Part::Train, &o, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("no class folders"), "{e}");
    }

    /// An image overwritten in place (same name, same byte length, new pixels, a new modification
    /// time as any save gives it) is decoded again; the cache key is the file list with sizes and
    /// modification times, so an edit that kept both would not be noticed.
    #[test]
    fn an_image_edited_in_place_is_decoded_again() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ds");
        // Uncompressed BMP: the same size in pixels is the same size in bytes.
        let edited = d.join("a/0.bmp");
        write_image(&edited, 8, 8, [0, 0, 250]);
        write_image(&d.join("b/0.bmp"), 8, 8, [200, 9, 9]);
        let o = opts(&t.path().join("c"));
        let (ds, load) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(ds.image(0)[128..].iter().all(|&b| b > 240), "blue at first");
        let before = std::fs::metadata(&edited).unwrap();
        write_image(&edited, 8, 8, [0, 250, 0]);
        let after = std::fs::metadata(&edited).unwrap();
        assert_eq!(after.len(), before.len(), "the edit keeps the byte length");
        // A later modification time, set explicitly: two writes within the file system's clock
        // tick may carry the same one.
        let later = before.modified().unwrap() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&edited)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (again, l2) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(
            !l2.from_cache,
            "an edited image must not come from the cache"
        );
        let green = again.image(0);
        assert!(
            green[64..128].iter().all(|&b| b > 240) && green[128..].iter().all(|&b| b < 10),
            "the new pixels: {:?}",
            &green[..]
        );
        assert_eq!(again.image(1), ds.image(1));
        assert_ne!(l2.cache, load.cache);
        assert!(!load.cache.exists(), "the stale cache file is removed");
        // And the rebuilt cache serves the next read.
        let (third, l3) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(l3.from_cache);
        assert_eq!(third, again);
    }

    #[test]
    fn a_damaged_cache_is_rebuilt() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ds");
        write_image(&d.join("a/0.png"), 8, 8, [9, 9, 9]);
        write_image(&d.join("b/0.png"), 8, 8, [200, 9, 9]);
        let o = opts(&t.path().join("c"));
        let (ds, load) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        let bytes = std::fs::read(&load.cache).unwrap();
        std::fs::write(&load.cache, &bytes[..bytes.len() - 5]).unwrap();
        let (again, l2) = open_folder(&d, Part::Train, &o, &|_, _| {}).unwrap();
        assert!(!l2.from_cache);
        assert_eq!(again, ds);
    }

    #[test]
    fn a_data_folder_that_cannot_hold_the_cache_sends_it_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ds");
        write_image(&d.join("a/0.png"), 8, 8, [9, 9, 9]);
        write_image(&d.join("b/0.png"), 8, 8, [200, 9, 9]);
        // A file where the cache folder would go (as good as a read-only folder, even for root).
        std::fs::write(d.join(CACHE_FOLDER), "in the way").unwrap();
        if std::env::var_os(CACHE_DIR_ENV).is_none() {
            let (dir, note) = cache_dir(&d, &FolderOptions::default());
            assert!(dir.starts_with(std::env::temp_dir()), "{dir:?}");
            assert!(note.unwrap().contains("not writable"));
        }
    }
}
