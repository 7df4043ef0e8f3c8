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
