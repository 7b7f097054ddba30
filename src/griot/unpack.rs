//! Safe extraction of a package's `.tar.gz` into a fresh directory.
//!
//! An artifact is untrusted even when signed (a key can leak, a signer can err), so extraction
//! refuses rather than repairs: absolute paths, `..` in entry paths, entries written through a
//! link, symbolic links whose target leaves the root, hard links to anything but a file already
//! extracted, devices and fifos, duplicate paths, and archives that unpack to more bytes or
//! entries than the limits (decompression bombs). Sizes are counted as bytes are written, not
//! taken from headers. Modes are normalised to 0644/0755: no set-uid bits, no world-writable files.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Component, Path, PathBuf},
};

/// Deepest path accepted inside an archive.
const MAX_DEPTH: usize = 128;
/// Longest path accepted inside an archive, in bytes.
const MAX_PATH_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes all files may unpack to.
    pub max_bytes: u64,
    /// Most entries the archive may hold.
    pub max_entries: u64,
}

/// What was extracted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive tries something extraction refuses.
    #[error("unsafe archive: {0}")]
    Unsafe(String),
    /// The archive is not a valid `.tar.gz`.
    #[error("not a valid .tar.gz: {0}")]
    Corrupt(String),
    #[error("cancelled")]
    Cancelled,
    /// Writing the files failed.
    #[error("cannot write the files: {0}")]
    Io(#[from] io::Error),
}

fn unsafe_entry(path: &Path, why: &str) -> UnpackError {
    UnpackError::Unsafe(format!("{}: {why}", path.display()))
}

/// An entry path as normal components under the root; `None` for the root itself (`./`).
fn relative_path(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    if raw.as_os_str().len() > MAX_PATH_BYTES {
        return Err(unsafe_entry(raw, "path too long"));
    }
    let mut relative = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry(raw, "path contains ..")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(raw, "absolute path"));
            }
        }
    }
    if relative.components().count() > MAX_DEPTH {
        return Err(unsafe_entry(raw, "path too deep"));
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

/// Refuses a path whose existing ancestors under `root` include anything but real directories:
/// nothing is ever written through a link.
fn check_ancestors(root: &Path, relative: &Path) -> Result<(), UnpackError> {
    let mut current = root.to_path_buf();
    let components: Vec<_> = relative.components().collect();
    for component in &components[..components.len().saturating_sub(1)] {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Err(unsafe_entry(relative, "a parent is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A symbolic link's target is allowed when it is relative, leads with at most as many `..` as
/// the link is deep, and has no `..` after its first normal component. Since links are never
/// written through, the link's parent is a real directory, so the leading `..`s land inside the
/// root, and the rest only descends (through links that obey the same rule).
fn check_symlink_target(relative: &Path, target: &Path) -> Result<(), UnpackError> {
    let depth = relative.components().count() - 1;
    let mut ups = 0;
    let mut descended = false;
    for component in target.components() {
        match component {
            Component::ParentDir if !descended => ups += 1,
            Component::ParentDir => {
                return Err(unsafe_entry(relative, "link target has .. after a name"));
            }
            Component::Normal(_) => descended = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(relative, "link target is absolute"));
            }
        }
    }
    if ups > depth {
        return Err(unsafe_entry(relative, "link target leaves the package"));
    }
    if target.as_os_str().is_empty() || target.as_os_str().len() > MAX_PATH_BYTES {
        return Err(unsafe_entry(relative, "bad link target"));
    }
    Ok(())
}

/// Why [`Capped`] stopped reading.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum CapHit {
    #[default]
    No,
    Size,
    Cancelled,
}

/// The decompressed archive, cut off after `cap` bytes: headers and the data of entries that are
/// not files (GNU long names, PAX records, directories with data...) are read by the tar parser
/// itself, before any entry reaches the checks below, so the limit must hold underneath it.
struct Capped<'a, R> {
    inner: R,
    read: u64,
    cap: u64,
    hit: &'a std::cell::Cell<CapHit>,
    cancelled: &'a dyn Fn() -> bool,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read > self.cap {
            self.hit.set(CapHit::Size);
            return Err(io::Error::other("decompressed size limit"));
        }
        let n = self.inner.read(buf)?;
        let before = self.read;
        self.read += n as u64;
        if before / (1024 * 1024) != self.read / (1024 * 1024) && (self.cancelled)() {
            self.hit.set(CapHit::Cancelled);
            return Err(io::Error::other("cancelled"));
        }
        Ok(n)
    }
}

/// Extracts the `.tar.gz` at `archive` into `root` (created; must not exist), polling
/// `cancelled` between entries and every megabyte.
pub fn unpack(
    archive: &Path,
    root: &Path,
    limits: Limits,
    cancelled: &dyn Fn() -> bool,
) -> Result<Unpacked, UnpackError> {
    let hit = std::cell::Cell::new(CapHit::No);
    let result = unpack_capped(archive, root, limits, cancelled, &hit);
    match hit.get() {
        CapHit::No => result,
        CapHit::Cancelled => Err(UnpackError::Cancelled),
        CapHit::Size => Err(UnpackError::Unsafe(format!(
            "unpacks to more than {} bytes",
            limits.max_bytes
        ))),
    }
}

/// Directories are made `rwxr-xr-x` like the files' modes are fixed, whatever the archive says:
/// the process's umask can only take bits away (a lax one must not make a package's directories
/// writable by its group or others).
fn directory(recursive: bool) -> fs::DirBuilder {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(recursive).mode(0o755);
    builder
}

fn unpack_capped(
    archive: &Path,
    root: &Path,
    limits: Limits,
    cancelled: &dyn Fn() -> bool,
    hit: &std::cell::Cell<CapHit>,
) -> Result<Unpacked, UnpackError> {
    directory(false).create(root)?;
    let file = File::open(archive)?;
    let gzip = flate2::read::GzDecoder::new(BufReader::with_capacity(256 * 1024, file));
    // Room for every entry's header and a long name on top of the files' bytes.
    let cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(8 * 1024))
        .saturating_add(1024 * 1024);
    let mut tar = tar::Archive::new(Capped {
        inner: gzip,
        read: 0,
        cap,
        hit,
        cancelled,
    });
    let mut done = Unpacked::default();
    let entries = tar
        .entries()
        .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
    for entry in entries {
        if cancelled() {
            return Err(UnpackError::Cancelled);
        }
        let mut entry = entry.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(UnpackError::Unsafe(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?
            .into_owned();
        let Some(relative) = relative_path(&raw)? else {
            continue;
        };
        check_ancestors(root, &relative)?;
        let target = root.join(&relative);
        if let Some(parent) = target.parent() {
            directory(true).create(parent)?;
        }
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => return Err(unsafe_entry(&relative, "duplicate path")),
                Err(_) => directory(false).create(&target)?,
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let remaining = limits.max_bytes - done.bytes;
            if entry.size() > remaining {
                return Err(UnpackError::Unsafe(format!(
                    "unpacks to more than {} bytes",
                    limits.max_bytes
                )));
            }
            let executable = entry
                .header()
                .mode()
                .map(|m| m & 0o111 != 0)
                .unwrap_or(false);
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if executable { 0o755 } else { 0o644 })
                .open(&target)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => unsafe_entry(&relative, "duplicate path"),
                    _ => e.into(),
                })?;
            // Counted as written: the header's size is the archive's claim, not a fact.
            let mut limited = (&mut entry).take(remaining + 1);
            let mut buffer = vec![0u8; 64 * 1024];
            let mut written = 0u64;
            loop {
                let n = limited
                    .read(&mut buffer)
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > remaining {
                    return Err(UnpackError::Unsafe(format!(
                        "unpacks to more than {} bytes",
                        limits.max_bytes
                    )));
                }
                io::Write::write_all(&mut out, &buffer[..n])?;
                if written % (1024 * 1024) < n as u64 && cancelled() {
                    return Err(UnpackError::Cancelled);
                }
            }
            done.bytes += written;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                .ok_or_else(|| unsafe_entry(&relative, "link without a target"))?
                .into_owned();
            check_symlink_target(&relative, &link)?;
            std::os::unix::fs::symlink(&link, &target).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => unsafe_entry(&relative, "duplicate path"),
                _ => e.into(),
            })?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                .ok_or_else(|| unsafe_entry(&relative, "link without a target"))?
                .into_owned();
            let source_relative = relative_path(&link)?
                .ok_or_else(|| unsafe_entry(&relative, "hard link to the root"))?;
            check_ancestors(root, &source_relative)?;
            let source = root.join(&source_relative);
            match fs::symlink_metadata(&source) {
                Ok(meta) if meta.file_type().is_file() => {}
                _ => {
                    return Err(unsafe_entry(
                        &relative,
                        "hard link to something other than a file extracted before it",
                    ));
                }
            }
            fs::hard_link(&source, &target).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => unsafe_entry(&relative, "duplicate path"),
                _ => e.into(),
            })?;
        } else {
            return Err(unsafe_entry(
                &relative,
                &format!("entry type {kind:?} is not allowed"),
            ));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    /// Writes a raw path into a header, bypassing the builder's own checks (as an attacker would).
    fn raw_path(header: &mut tar::Header, path: &str) {
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
    }

    fn raw_link(header: &mut tar::Header, target: &str) {
        let name = &mut header.as_old_mut().linkname;
        name.fill(0);
        name[..target.len()].copy_from_slice(target.as_bytes());
    }

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn archive(items: &[Item]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for item in items {
            let (mut h, path, data): (tar::Header, &str, &[u8]) = match item {
                Item::File(path, data) => (
                    header(tar::EntryType::Regular, data.len() as u64),
                    path,
                    data,
                ),
                Item::Dir(path) => (header(tar::EntryType::Directory, 0), path, &[]),
                Item::Symlink(path, target) => {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    raw_link(&mut h, target);
                    (h, path, &[])
                }
                Item::HardLink(path, target) => {
                    let mut h = header(tar::EntryType::Link, 0);
                    raw_link(&mut h, target);
                    (h, path, &[])
                }
                Item::Fifo(path) => (header(tar::EntryType::Fifo, 0), path, &[]),
            };
            raw_path(&mut h, path);
            h.set_cksum();
            builder.append(&h, data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn run(items: &[Item], limits: Limits) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        fs::write(&path, archive(items)).unwrap();
        let result = unpack(&path, &dir.path().join("root"), limits, &|| false);
        (dir, result)
    }

    #[test]
    fn extracts_files_directories_and_inner_links() {
        let (dir, result) = run(
            &[
                Item::Dir("./"),
                Item::Dir("package/"),
                Item::File("package/index.js", b"hello"),
                Item::Dir("package/bin"),
                Item::Symlink("package/bin/run", "../index.js"),
                Item::HardLink("package/copy.js", "package/index.js"),
            ],
            LIMITS,
        );
        assert_eq!(result.unwrap().bytes, 5);
        let root = dir.path().join("root");
        assert_eq!(fs::read(root.join("package/bin/run")).unwrap(), b"hello");
        assert_eq!(fs::read(root.join("package/copy.js")).unwrap(), b"hello");
    }

    #[test]
    fn directories_are_rwxr_xr_x_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // A lax umask (group-writable) for this test only: the process-wide setting can only
        // loosen modes that other tests do not check.
        // SAFETY: umask is a plain syscall.
        let previous = unsafe { libc::umask(0o002) };
        let (dir, result) = run(
            &[
                Item::Dir("package/"),
                Item::File("package/deep/er/index.js", b"hello"),
            ],
            LIMITS,
        );
        unsafe { libc::umask(previous) };
        result.unwrap();
        let root = dir.path().join("root");
        for path in ["", "package", "package/deep", "package/deep/er"] {
            let mode = fs::metadata(root.join(path)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{path:?}: {mode:o}");
        }
        let mode = fs::metadata(root.join("package/deep/er/index.js"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn refuses_what_would_escape_or_overwrite() {
        let cases: Vec<(&str, Vec<Item>)> = vec![
            ("traversal", vec![Item::File("../evil", b"x")]),
            ("nested traversal", vec![Item::File("a/../../evil", b"x")]),
            ("absolute", vec![Item::File("/tmp/evil", b"x")]),
            ("absolute link", vec![Item::Symlink("l", "/etc")]),
            ("escaping link", vec![Item::Symlink("a/l", "../../x")]),
            (
                "link with .. after a name",
                vec![Item::Symlink("l", "a/../../x")],
            ),
            (
                "write through a link",
                vec![
                    Item::Symlink("l", "d"),
                    Item::Dir("d"),
                    Item::File("l/x", b"x"),
                ],
            ),
            (
                "hard link outside",
                vec![Item::HardLink("h", "../../etc/passwd")],
            ),
            (
                "hard link to a link",
                vec![Item::Symlink("l", "x"), Item::HardLink("h", "l")],
            ),
            (
                "duplicate",
                vec![Item::File("a", b"1"), Item::File("a", b"2")],
            ),
            ("fifo", vec![Item::Fifo("f")]),
        ];
        for (what, items) in cases {
            let (dir, result) = run(&items, LIMITS);
            assert!(
                matches!(result, Err(UnpackError::Unsafe(_))),
                "{what}: {result:?}"
            );
            assert!(!dir.path().join("evil").exists(), "{what}");
        }
    }

    #[test]
    fn refuses_bombs() {
        let big = vec![0u8; 2 << 20];
        let (_dir, result) = run(&[Item::File("zeros", &big)], LIMITS);
        assert!(matches!(result, Err(UnpackError::Unsafe(m)) if m.contains("bytes")));
        let many: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
        let items: Vec<Item> = many.iter().map(|p| Item::File(p, b"")).collect();
        let (_dir, result) = run(&items, LIMITS);
        assert!(matches!(result, Err(UnpackError::Unsafe(m)) if m.contains("entries")));
    }

    #[test]
    fn a_huge_long_name_header_is_cut_off_before_it_is_read_into_memory() {
        // A GNU long-name entry claiming 64 MiB of name: the tar parser reads such data whole,
        // before any entry reaches the checks, so the decompressed stream itself is capped.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let size = 64 << 20;
        let mut h = header(tar::EntryType::GNULongName, size);
        raw_path(&mut h, "././@LongLink");
        h.set_cksum();
        builder.append(&h, io::repeat(b'a').take(size)).unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        fs::write(&path, bytes).unwrap();
        let result = unpack(&path, &dir.path().join("root"), LIMITS, &|| false);
        assert!(
            matches!(&result, Err(UnpackError::Unsafe(m)) if m.contains("bytes")),
            "{result:?}"
        );
    }

    #[test]
    fn refuses_garbage_and_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        fs::write(&path, b"not gzip at all").unwrap();
        let result = unpack(&path, &dir.path().join("root"), LIMITS, &|| false);
        assert!(matches!(result, Err(UnpackError::Corrupt(_))), "{result:?}");

        fs::write(&path, archive(&[Item::File("a", b"1")])).unwrap();
        let result = unpack(&path, &dir.path().join("root2"), LIMITS, &|| true);
        assert!(matches!(result, Err(UnpackError::Cancelled)));
    }
}
