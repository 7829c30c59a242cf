//! Reading the files the configuration names (the configuration itself, secrets, blueprints,
//! the assignment, certificates and keys): a regular file of bounded size only. A device
//! (`/dev/zero`), a FIFO or a directory is refused before it is opened, so it can neither fill
//! memory nor hang the start; a file larger than the bound is refused after reading one byte
//! more than the bound.
//!
//! Layer: a leaf; imports nothing of the crate.

use std::io::Read;
use std::path::Path;

/// The largest configuration, blueprint, assignment, secret or PEM file read (16 MiB: the
/// largest shipped one is kilobytes).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a named file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system's error (missing, no permission, …).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A device, a FIFO, a socket or a directory.
    #[error("not a regular file (a device, a FIFO or a directory is not read)")]
    NotRegular,
    /// More bytes than the bound.
    #[error("larger than {max} bytes")]
    TooLarge {
        /// The bound.
        max: u64,
    },
}

impl FileError {
    /// The same as an I/O error (for error types that carry one).
    pub fn into_io(self) -> std::io::Error {
        match self {
            FileError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    // Following links: a link to a regular file is read, a link to a device is not.
    if !std::fs::metadata(path)?.is_file() {
        return Err(FileError::NotRegular);
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge { max });
    }
    Ok(bytes)
}

/// The text (UTF-8) of the regular file at `path`, at most [`MAX_FILE_BYTES`].
pub fn read_text(path: &Path) -> Result<String, FileError> {
    let bytes = read_bounded(path, MAX_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        FileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({})", e.utf8_error()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_and_devices_directories_and_large_files_are_not() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "a = 1\n").expect("write");
        assert_eq!(read_text(&p).expect("read"), "a = 1\n");
        assert!(matches!(
            read_bounded(&p, 3),
            Err(FileError::TooLarge { max: 3 })
        ));
        assert_eq!(read_bounded(&p, 6).expect("read").len(), 6);
        assert!(matches!(read_text(dir.path()), Err(FileError::NotRegular)));
        assert!(matches!(
            read_text(Path::new("/dev/zero")),
            Err(FileError::NotRegular)
        ));
        assert!(matches!(
            read_text(&dir.path().join("missing")),
            Err(FileError::Io(_))
        ));
        std::fs::write(&p, [0xff, 0xfe]).expect("write");
        assert!(read_text(&p).is_err(), "not UTF-8");
    }

    /// A FIFO is refused at once: opening it for reading would wait for a writer forever.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        assert!(matches!(read_text(&p), Err(FileError::NotRegular)));
    }

    /// A link to a regular file is read; a link to a device is not.
    #[cfg(unix)]
    #[test]
    fn links_are_judged_by_what_they_point_to() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("secret");
        std::fs::write(&target, "s3cret").expect("write");
        let to_file = dir.path().join("to-file");
        let to_dev = dir.path().join("to-dev");
        std::os::unix::fs::symlink(&target, &to_file).expect("link");
        std::os::unix::fs::symlink("/dev/zero", &to_dev).expect("link");
        assert_eq!(read_text(&to_file).expect("read"), "s3cret");
        assert!(matches!(read_text(&to_dev), Err(FileError::NotRegular)));
    }
}
