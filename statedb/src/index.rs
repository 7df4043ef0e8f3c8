//! Index descriptions and queries.

use std::sync::Arc;

use smallvec::SmallVec;

/// An index key: raw bytes compared lexicographically. Keys up to 24 bytes stay inline.
pub type Key = SmallVec<[u8; 24]>;

/// The keys an object has in one index (usually exactly one).
pub type KeySet = SmallVec<[Key; 1]>;

type KeysFn<T> = Arc<dyn Fn(&T) -> KeySet + Send + Sync>;

/// Key of a string (its UTF-8 bytes).
pub fn key_from_str(s: &str) -> Key {
    Key::from_slice(s.as_bytes())
}

/// Key of an integer, big-endian so byte order equals numeric order.
pub fn key_from_u64(n: u64) -> Key {
    Key::from_slice(&n.to_be_bytes())
}

/// Describes one index of a table: a name, how to derive keys from an object, and
/// whether a key may map to at most one object.
pub struct Index<T> {
    name: &'static str,
    unique: bool,
    keys: KeysFn<T>,
}

impl<T> Clone for Index<T> {
    fn clone(&self) -> Self {
        Index {
            name: self.name,
            unique: self.unique,
            keys: self.keys.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Index<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("name", &self.name)
            .field("unique", &self.unique)
            .finish()
    }
}

impl<T> Index<T> {
    /// A unique index with exactly one key per object (use this for the primary index).
    pub fn primary(name: &'static str, key: impl Fn(&T) -> Key + Send + Sync + 'static) -> Self {
        Index {
            name,
            unique: true,
            keys: Arc::new(move |o| smallvec::smallvec![key(o)]),
        }
    }

    /// A unique secondary index: each key maps to at most one object.
    pub fn unique(name: &'static str, keys: impl Fn(&T) -> KeySet + Send + Sync + 'static) -> Self {
        Index {
            name,
            unique: true,
            keys: Arc::new(keys),
        }
    }

    /// A non-unique secondary index: many objects may share a key.
    pub fn non_unique(
        name: &'static str,
        keys: impl Fn(&T) -> KeySet + Send + Sync + 'static,
    ) -> Self {
        Index {
            name,
            unique: false,
            keys: Arc::new(keys),
        }
    }

    /// The index name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True if a key maps to at most one object.
    pub fn is_unique(&self) -> bool {
        self.unique
    }

    /// The keys of `obj` in this index.
    pub fn keys(&self, obj: &T) -> KeySet {
        (self.keys)(obj)
    }

    /// The single (first) key of `obj`; used for the primary index.
    pub(crate) fn primary_key(&self, obj: &T) -> Key {
        (self.keys)(obj).into_iter().next().unwrap_or_default()
    }

    /// A query for `key` on this index.
    pub fn query(&self, key: impl AsRef<[u8]>) -> Query {
        Query::new(self.name, key)
    }
}

/// A lookup on a named index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Index name.
    pub index: &'static str,
    /// Key (or key prefix / lower bound, depending on the operation).
    pub key: Key,
}

impl Query {
    /// A query for `key` on the index called `index`.
    pub fn new(index: &'static str, key: impl AsRef<[u8]>) -> Self {
        Query {
            index,
            key: Key::from_slice(key.as_ref()),
        }
    }
}

/// Internal form of a primary key: the first 8 bytes as a big-endian integer (so most
/// comparisons are one integer compare, no `memcmp`), the length, and for keys longer
/// than 8 bytes the full bytes behind a shared pointer (cloning never allocates).
/// Ordering equals byte-lexicographic ordering of the key bytes.
#[derive(Clone)]
pub(crate) struct IKey {
    head: u64,
    len: usize,
    long: Option<Arc<[u8]>>,
}

impl IKey {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        let mut buf = [0u8; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        IKey {
            head: u64::from_be_bytes(buf),
            len: bytes.len(),
            long: (bytes.len() > 8).then(|| Arc::from(bytes)),
        }
    }

    /// Calls `f` with the key bytes.
    pub(crate) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.long {
            Some(b) => f(b),
            None => f(&self.head.to_be_bytes()[..self.len]),
        }
    }

    /// The key bytes as a [`Key`].
    pub(crate) fn to_key(&self) -> Key {
        self.with_bytes(Key::from_slice)
    }

    /// True if the key bytes start with `prefix`.
    pub(crate) fn starts_with(&self, prefix: &[u8]) -> bool {
        self.with_bytes(|b| b.starts_with(prefix))
    }
}

impl PartialEq for IKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
            && self.len == other.len
            && (self.len <= 8 || self.long == other.long)
    }
}

impl Eq for IKey {}

impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Zero-padded first 8 bytes decide unless equal (a differing padded byte is
        // either a real difference or marks the shorter key as a prefix of the other).
        match self.head.cmp(&other.head) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
        if self.len <= 8 && other.len <= 8 {
            return self.len.cmp(&other.len);
        }
        self.with_bytes(|a| other.with_bytes(|b| a.cmp(b)))
    }
}

impl std::fmt::Debug for IKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_bytes(|b| write!(f, "{b:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ikey_order_matches_bytes(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..14),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..14),
        ) {
            let (ka, kb) = (IKey::new(&a), IKey::new(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.to_key().to_vec(), a.clone());
            prop_assert!(ka.starts_with(&a[..a.len() / 2]));
        }
    }

    #[test]
    fn ikey_prefix_and_padding_cases() {
        let keys: [&[u8]; 7] = [
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"a\0\0\0\0\0\0\0\0",
            b"abcdefgh",
            b"abcdefghi",
        ];
        for x in keys {
            for y in keys {
                assert_eq!(IKey::new(x).cmp(&IKey::new(y)), x.cmp(y), "{x:?} vs {y:?}");
            }
        }
    }
}
