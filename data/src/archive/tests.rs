use super::*;

const PIXELS: usize = 3 * 32 * 32;

/// CIFAR-10 records: label byte + 3072 pixels, each image filled with `first + i`.
fn cifar10(n: usize, first: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push((i % 10) as u8);
        out.extend(std::iter::repeat_n(first.wrapping_add(i as u8), PIXELS));
    }
    out
}

fn meta10() -> Vec<u8> {
    (0..10)
        .map(|i| format!("class{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The official CIFAR-10 archive's layout, with 2 images per training batch and 3 test images.
fn cifar10_members(skip: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut m = vec![
        (
            "cifar-10-batches-bin/readme.html".to_string(),
            b"<html/>".to_vec(),
        ),
        (
            "cifar-10-batches-bin/batches.meta.txt".to_string(),
            meta10(),
        ),
    ];
    for b in 1..=5u8 {
        m.push((
            format!("cifar-10-batches-bin/data_batch_{b}.bin"),
            cifar10(2, 10 * b),
        ));
    }
    m.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        cifar10(3, 200),
    ));
    m.retain(|(n, _)| skip.is_none_or(|s| !n.ends_with(s)));
    m
}

fn write(path: &Path, members: &[(String, Vec<u8>)]) {
    let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    write_tar_gz(path, &refs).unwrap();
}

#[test]
fn cifar10_archive_reads_as_published_and_from_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    write(&archive, &cifar10_members(None));
    let train = Dataset::open(&archive, Split::Train).unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!(
        train.image(2)[0],
        20,
        "data_batch_2's first image follows data_batch_1"
    );
    assert_eq!(
        train.class_names[3], "class3",
        "names from batches.meta.txt"
    );
    assert_eq!(train.source, archive.display().to_string());
    let test = Dataset::open(&archive, Split::Test).unwrap();
    assert_eq!((test.len(), test.image(2)[0]), (3, 202));
    // The directory holding the archive (what `data fetch` leaves) reads the same.
    assert_eq!(
        Dataset::open(dir.path(), Split::Test).unwrap().images,
        test.images
    );
    // And so does the unpacked directory, from its parent, itself, or the test batch alone.
    let unpacked = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&unpacked).unwrap();
    for (name, bytes) in cifar10_members(None) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::remove_file(&archive).unwrap();
    for p in [dir.path(), &unpacked] {
        let t = Dataset::open(p, Split::Train).unwrap();
        assert_eq!(
            (t.images.clone(), t.labels.clone()),
            (train.images.clone(), train.labels.clone())
        );
    }
    let single = Dataset::open(&unpacked.join("test_batch.bin"), Split::Test).unwrap();
    assert_eq!(single.images, test.images);
}

#[test]
fn cifar100_archive_uses_fine_labels_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let record = |coarse: u8, fine: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(fine, PIXELS));
        r
    };
    let train: Vec<u8> = [record(1, 42), record(2, 99)].concat();
    let test = record(0, 7);
    let fine: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    let coarse: String = (0..20).map(|i| format!("coarse{i}\n")).collect();
    let archive = dir.path().join("cifar-100-binary.tar.gz");
    write(
        &archive,
        &[
            (
                "cifar-100-binary/coarse_label_names.txt".into(),
                coarse.into_bytes(),
            ),
            (
                "cifar-100-binary/fine_label_names.txt".into(),
                fine.into_bytes(),
            ),
            ("cifar-100-binary/train.bin".into(), train),
            ("cifar-100-binary/test.bin".into(), test),
        ],
    );
    let d = Dataset::open(&archive, Split::Train).unwrap();
    assert_eq!((d.labels.clone(), d.num_classes()), (vec![42, 99], 100));
    assert_eq!(d.class_names[99], "fine99");
    let t = Dataset::open(dir.path(), Split::Test).unwrap();
    assert_eq!((t.labels.clone(), t.image(0)[0]), (vec![7], 7));
}

#[test]
fn idx_files_in_a_tar_and_gz_files_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<u8> = (0..3 * 4 * 4).map(|i| i as u8).collect();
    let ip = dir.path().join("t10k-images-idx3-ubyte.gz");
    let lp = dir.path().join("t10k-labels-idx1-ubyte.gz");
    crate::dataset::write::idx(&ip, &lp, 4, 4, &imgs, &[1, 2, 3]).unwrap();
    let loose = Dataset::open(dir.path(), Split::Test).unwrap();
    assert_eq!((loose.len(), loose.images.clone()), (3, imgs.clone()));
    let members = [
        (
            "mnist/t10k-images-idx3-ubyte.gz".to_string(),
            std::fs::read(&ip).unwrap(),
        ),
        (
            "mnist/t10k-labels-idx1-ubyte.gz".to_string(),
            std::fs::read(&lp).unwrap(),
        ),
    ];
    let archive = dir.path().join("mnist.tgz");
    write(&archive, &members);
    let d = Dataset::open(&archive, Split::Test).unwrap();
    assert_eq!((d.images, d.labels), (imgs, vec![1, 2, 3]));
    write(&archive, &members[..1]);
    let e = Dataset::open(&archive, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mnist.tgz/mnist/t10k-labels-idx1-ubyte.gz") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn missing_member_names_archive_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    write(&archive, &cifar10_members(Some("data_batch_5.bin")));
    let e = Dataset::open(&archive, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cifar-10-binary.tar.gz/cifar-10-batches-bin/data_batch_5.bin")
            && e.contains("missing"),
        "{e}"
    );
    // The test split is complete and still reads.
    assert_eq!(Dataset::open(&archive, Split::Test).unwrap().len(), 3);
    write(&archive, &[("other/readme.txt".into(), b"hi".to_vec())]);
    let e = Dataset::open(&archive, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cifar-10-binary.tar.gz") && e.contains("no data set found"),
        "{e}"
    );
}

#[test]
fn truncated_or_corrupt_archives_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tar.gz");
    write(&good, &cifar10_members(None));
    let bytes = std::fs::read(&good).unwrap();
    // Uncompressed too, so that the cuts also land inside tar headers and member data.
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut raw)
        .unwrap();
    let bad = dir.path().join("cifar-10-binary.tar.gz");
    // Cuts before the end of test_batch.bin, the last member: the test split can never be whole.
    for (full, end, step) in [(&bytes, bytes.len() / 2, 7), (&raw, raw.len() - 2048, 1531)] {
        for cut in (0..end).step_by(step) {
            std::fs::write(&bad, &full[..cut]).unwrap();
            let e = Dataset::open(&bad, Split::Test).unwrap_err().to_string();
            assert!(e.contains("cifar-10-binary.tar.gz"), "cut {cut}: {e}");
            // The training batches come first: whole or not, never a panic or a nameless error.
            if let Err(e) = Dataset::open(&bad, Split::Train) {
                assert!(
                    e.to_string().contains("cifar-10-binary.tar.gz"),
                    "cut {cut}: {e}"
                );
            }
        }
    }
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = Dataset::open(&bad, Split::Test).unwrap_err().to_string();
    assert!(e.contains("corrupt or truncated archive"), "{e}");
    std::fs::write(
        &bad,
        b"this is not an archive at all, but long enough to look at",
    )
    .unwrap();
    let e = Dataset::open(&bad, Split::Train).unwrap_err().to_string();
    assert!(e.contains("cifar-10-binary.tar.gz"), "{e}");
}
