//! Scratch directories for tests.
//!
//! A [`TempDir`] is a fresh directory under the system temp dir, removed
//! when dropped, except when dropped during a panic (or with
//! `KT_KEEP_TMP=1`): then it stays and its path is printed, so the sockets,
//! logs and policy files of a failed test can be inspected. Owns nothing
//! else. Unix socket paths must stay under 108 bytes, so names are short.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Distinguishes directories made by one process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory removed on drop (kept on panic).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/kt-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> io::Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kt-{name}-{}-{n}", std::process::id()));
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let keep = std::env::var_os("KT_KEEP_TMP").is_some_and(|v| v == "1");
        if std::thread::panicking() || keep {
            eprintln!("kt-tests: kept {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("kt-tests: could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_distinct_and_removed() {
        let a = TempDir::new("t").expect("a");
        let b = TempDir::new("t").expect("b");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        fs::write(a.join("f"), b"x").expect("write");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
