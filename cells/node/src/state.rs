//! Crash-safe JSON state files: write to a temporary file, fsync, rename over the old one,
//! fsync the directory. A reader sees either the old or the new content, never a mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// One JSON file in the state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read and decode; `Ok(None)` when the file does not exist.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    what: "read state".into(),
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    /// Encode and replace the file atomically.
    pub fn store<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        self.store_bytes(&bytes)
    }

    /// Replace the file atomically with `bytes` (already encoded JSON; large state files
    /// assemble theirs from cached parts instead of re-encoding everything).
    pub fn store_bytes(&self, bytes: &[u8]) -> Result<(), Error> {
        let io = |what: &str, source| Error::Io {
            what: what.into(),
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io("create the state directory", e))?;
        // Unique per process and call: two threads storing at once never share a temp file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .path
            .with_extension(format!("tmp.{}.{seq}", std::process::id()));
        {
            let mut f =
                std::fs::File::create(&tmp).map_err(|e| io("create a temporary state file", e))?;
            f.write_all(bytes).map_err(|e| io("write state", e))?;
            f.sync_all().map_err(|e| io("sync state", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace state", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Persist the rename itself; failure here only weakens durability, not atomicity.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Remove the file; absent is fine.
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                what: "remove state".into(),
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("sub/x.json"));
        assert!(f.load::<BTreeMap<String, u32>>().unwrap().is_none());
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), 1u32);
        f.store(&m).unwrap();
        assert_eq!(f.load::<BTreeMap<String, u32>>().unwrap(), Some(m));
        f.remove().unwrap();
        f.remove().unwrap();
        assert!(f.load::<BTreeMap<String, u32>>().unwrap().is_none());
    }

    #[test]
    fn corrupt_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = StateFile::new(&path).load::<u32>().unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("corrupt"), "{err}");
    }
}
