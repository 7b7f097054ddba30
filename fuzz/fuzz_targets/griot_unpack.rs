//! Griot's extraction of package archives (src/griot/unpack.rs) with its limits, into a fresh
//! temporary directory per input.
//!
//! The first byte picks the form: even, the rest is a tar archive the target gzips (so that the
//! tar parser is reached past gzip's checksums); odd, the rest is the `.tar.gz` as is.
//! Properties, whether extraction succeeds or stops half way: nothing is written beside the
//! root; the root holds only directories, files and links; nothing is set-uid, set-gid or
//! sticky, and no file world-writable; every link that resolves, resolves inside the root. After
//! a success: the counts respect the limits, and the bytes counted are the bytes on disk.
#![no_main]

use std::{
    collections::HashSet,
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::LazyLock,
};

use libfuzzer_sys::fuzz_target;
use quintet::griot::unpack::{Limits, Unpacked, unpack};

const LIMITS: Limits = Limits {
    max_bytes: 256 * 1024,
    max_entries: 32,
};

/// Where each input gets its directory: memory if the system has it there.
static SCRATCH: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
});

fuzz_target!(|bytes: &[u8]| {
    let Some((form, rest)) = bytes.split_first() else {
        return;
    };
    let archive = if form % 2 == 0 {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(rest).expect("writing to memory");
        gzip.finish().expect("writing to memory")
    } else {
        rest.to_vec()
    };
    let dir = tempfile::tempdir_in(&*SCRATCH).expect("a scratch directory");
    let file = dir.path().join("package.tar.gz");
    fs::write(&file, &archive).expect("writing the archive");
    let beside = dir.path().join("beside");
    fs::create_dir(&beside).expect("a directory beside the root");
    let root = dir.path().join("root");

    let result = unpack(&file, &root, LIMITS, &|| false);

    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names == ["beside", "package.tar.gz", "root"] || names == ["beside", "package.tar.gz"],
        "written beside the root: {names:?}"
    );
    assert_eq!(
        fs::read_dir(&beside).unwrap().count(),
        0,
        "written beside the root"
    );
    if root.exists() {
        let on_disk = check_tree(&root);
        if let Ok(Unpacked { entries, bytes }) = result {
            assert!(entries <= LIMITS.max_entries);
            assert!(bytes <= LIMITS.max_bytes);
            assert_eq!(bytes, on_disk, "bytes counted are not the bytes written");
        }
    } else {
        assert!(result.is_err(), "a success without a root");
    }
});

/// Checks everything under `root`; returns the size of its distinct files.
fn check_tree(root: &Path) -> u64 {
    let canonical_root = fs::canonicalize(root).unwrap();
    let mut inodes = HashSet::new();
    let mut bytes = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            if kind.is_symlink() {
                if let Ok(target) = fs::canonicalize(&path) {
                    assert!(
                        target.starts_with(&canonical_root),
                        "{} leads out to {}",
                        path.display(),
                        target.display()
                    );
                }
                continue;
            }
            // Directories get the process's umask like any other; files their own modes.
            let mode = meta.permissions().mode();
            let forbidden = if kind.is_dir() { 0o7000 } else { 0o7002 };
            assert_eq!(mode & forbidden, 0, "{} has mode {mode:o}", path.display());
            if kind.is_dir() {
                pending.push(path);
            } else {
                assert!(
                    kind.is_file(),
                    "{} is neither file, directory nor link",
                    path.display()
                );
                if inodes.insert(meta.ino()) {
                    bytes += meta.len();
                }
            }
        }
    }
    bytes
}
