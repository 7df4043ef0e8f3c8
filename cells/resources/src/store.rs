//! The kind registry and the all-or-nothing apply/delete path.
//!
//! Every kind (Namespace and Pod here; Service, NetworkPolicy, ... from later cells) implements
//! [`ResourceKind`] and registers with [`Resources::register`]. Applying a file validates
//! every document first; only when all are valid does one write transaction over every
//! affected table write them, and the state file is written before that transaction commits,
//! so a file is either applied and persisted as a whole or not at all.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cilium_api::models::{ResourceAction, ResourceChange};
use cilium_node::StateFile;
use hive::Health;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use statedb::{AnyTable, Db, Key, ReadTxn, Table, WriteTxn};

use crate::document::{Document, FieldError, parse_documents};
use crate::error::{DocumentError, ResourcesError};

/// Namespace a namespaced document lands in when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The identity of an object inside its kind: namespace (empty for cluster-scoped kinds) and
/// name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// Namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A kind of object that `ciliumctl apply` accepts. Implement it for each kind and register
/// it with [`Resources::register`]; the registry does the rest (routing documents by
/// `apiVersion`/`kind`, all-or-nothing writes, `get`, delete, persistence and restore).
pub trait ResourceKind: Send + Sync + 'static {
    /// The stored object; serialized into `resources.json` and decoded from it at restore.
    type Object: Clone + PartialEq + Send + Sync + Serialize + DeserializeOwned + 'static;

    /// The `kind` of its documents, e.g. `"Pod"`.
    fn kind(&self) -> &'static str;

    /// The accepted `apiVersion`s, e.g. `["v1"]`.
    fn api_versions(&self) -> &'static [&'static str];

    /// Lowercase names `ciliumctl get` accepts: singular, plural, short names.
    fn names(&self) -> &'static [&'static str];

    /// True for namespaced kinds (documents default to namespace `default`).
    fn namespaced(&self) -> bool;

    /// The table the objects live in.
    fn table(&self) -> &Table<Self::Object>;

    /// Primary key in [`ResourceKind::table`] of the object called `id`.
    fn key(&self, id: &ObjectId) -> Key;

    /// The identity of a stored object.
    fn id_of(&self, obj: &Self::Object) -> ObjectId;

    /// Validate a document into an object. `doc.namespace` is already resolved (the default
    /// namespace filled in for namespaced kinds) and `doc.name` is a valid DNS subdomain.
    /// Return every problem found, each naming its field path.
    fn parse(&self, doc: &Document) -> Result<Self::Object, Vec<FieldError>>;

    /// Carry fields the agent owns (e.g. a uid) from the stored version into a re-applied one,
    /// so that re-applying the same document is `unchanged`.
    fn carry_over(&self, new: Self::Object, _old: &Self::Object) -> Self::Object {
        new
    }
}

/// The object-safe view of a registered [`ResourceKind`].
trait ErasedKind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn api_versions(&self) -> &'static [&'static str];
    fn names(&self) -> &'static [&'static str];
    fn namespaced(&self) -> bool;
    fn any_table(&self) -> &dyn AnyTable;
    fn parse(&self, doc: &Document) -> Result<Box<dyn Any + Send>, Vec<FieldError>>;
    fn write(
        &self,
        txn: &mut WriteTxn,
        obj: Box<dyn Any + Send>,
    ) -> Result<ResourceAction, ResourcesError>;
    fn delete(&self, txn: &mut WriteTxn, id: &ObjectId) -> Result<bool, ResourcesError>;
    fn list(&self, txn: &ReadTxn, namespace: Option<&str>, name: Option<&str>) -> Vec<Value>;
    /// The kind's objects as `txn` sees them, to be encoded as a JSON array by the returned
    /// job (which may run on another thread).
    fn dump_json<'a>(
        &self,
        txn: &'a WriteTxn,
        size_hint: usize,
    ) -> Box<dyn FnOnce() -> String + Send + 'a>;
    fn len(&self, txn: &ReadTxn) -> usize;
    fn restore(
        &self,
        txn: &mut WriteTxn,
        objects: &[Value],
        path: &str,
    ) -> Result<usize, ResourcesError>;
    fn register_initializer(
        &self,
        txn: &mut WriteTxn,
    ) -> Result<statedb::Initializer, ResourcesError>;
}

struct Erased<K>(K);

impl<K: ResourceKind> ErasedKind for Erased<K> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn api_versions(&self) -> &'static [&'static str] {
        self.0.api_versions()
    }
    fn names(&self) -> &'static [&'static str] {
        self.0.names()
    }
    fn namespaced(&self) -> bool {
        self.0.namespaced()
    }
    fn any_table(&self) -> &dyn AnyTable {
        self.0.table()
    }
    fn parse(&self, doc: &Document) -> Result<Box<dyn Any + Send>, Vec<FieldError>> {
        self.0
            .parse(doc)
            .map(|o| Box::new(o) as Box<dyn Any + Send>)
    }
    fn write(
        &self,
        txn: &mut WriteTxn,
        obj: Box<dyn Any + Send>,
    ) -> Result<ResourceAction, ResourcesError> {
        let Ok(obj) = obj.downcast::<K::Object>() else {
            return Err(ResourcesError::Db(statedb::Error::ForeignTable {
                table: self.0.table().name().to_string(),
            }));
        };
        let table = self.0.table();
        let key = self.0.key(&self.0.id_of(&obj));
        let old = table.get(&*txn, &table.primary_index().query(&key));
        let (obj, action) = match old {
            None => (*obj, ResourceAction::Created),
            Some(old) => {
                let new = self.0.carry_over(*obj, &old);
                if new == *old {
                    return Ok(ResourceAction::Unchanged);
                }
                (new, ResourceAction::Configured)
            }
        };
        table.insert(txn, obj)?;
        Ok(action)
    }
    fn delete(&self, txn: &mut WriteTxn, id: &ObjectId) -> Result<bool, ResourcesError> {
        Ok(self.0.table().delete_key(txn, self.0.key(id))?.is_some())
    }
    fn list(&self, txn: &ReadTxn, namespace: Option<&str>, name: Option<&str>) -> Vec<Value> {
        self.0
            .table()
            .all(txn)
            .filter(|o| {
                let id = self.0.id_of(o);
                namespace.is_none_or(|n| n == id.namespace) && name.is_none_or(|n| n == id.name)
            })
            .filter_map(|o| serde_json::to_value(&*o).ok())
            .collect()
    }
    fn dump_json<'a>(
        &self,
        txn: &'a WriteTxn,
        size_hint: usize,
    ) -> Box<dyn FnOnce() -> String + Send + 'a> {
        let objects = self.0.table().all(txn);
        Box::new(move || {
            // A JSON array written straight from the objects (no intermediate `Value`s), into
            // a buffer sized from the last encoding (growing a 10 MB buffer copies it
            // repeatedly).
            let mut out = Vec::with_capacity(size_hint + size_hint / 4 + 4096);
            out.push(b'[');
            for (i, o) in objects.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if serde_json::to_writer(&mut out, &*o).is_err() {
                    // An object that cannot be encoded is skipped, as before; it cannot happen
                    // for the kinds' own types (plain data), and the file stays valid JSON.
                    if out.last() == Some(&b',') {
                        out.pop();
                    }
                }
            }
            out.push(b']');
            String::from_utf8(out).unwrap_or_else(|_| "[]".to_string())
        })
    }
    fn len(&self, txn: &ReadTxn) -> usize {
        self.0.table().len(txn)
    }
    fn restore(
        &self,
        txn: &mut WriteTxn,
        objects: &[Value],
        path: &str,
    ) -> Result<usize, ResourcesError> {
        for (index, v) in objects.iter().enumerate() {
            let obj: K::Object =
                serde_json::from_value(v.clone()).map_err(|e| ResourcesError::CorruptState {
                    path: path.to_string(),
                    kind: self.0.kind().to_string(),
                    index,
                    reason: e.to_string(),
                })?;
            self.0.table().insert(txn, obj)?;
        }
        Ok(objects.len())
    }
    fn register_initializer(
        &self,
        txn: &mut WriteTxn,
    ) -> Result<statedb::Initializer, ResourcesError> {
        Ok(self
            .0
            .table()
            .register_initializer(txn, "resources-restore")?)
    }
}

/// Layout of `resources.json`: the objects of each kind, by kind name.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Persisted {
    kinds: BTreeMap<String, Vec<Value>>,
}

/// The registry of kinds and the apply/delete/get entry points, injected as `Arc<Resources>`.
pub struct Resources {
    db: Db,
    file: StateFile,
    kinds: RwLock<Vec<Arc<dyn ErasedKind>>>,
    /// Objects loaded from the state file, handed to each kind when it registers.
    loaded: Mutex<BTreeMap<String, Vec<Value>>>,
    /// What the state file holds, per kind, as encoded JSON arrays: a write re-encodes only
    /// the kinds it touched, and kinds not registered (yet) are never dropped.
    saved: Mutex<BTreeMap<String, Arc<String>>>,
    /// Serializes every mutation and state-file write.
    write_lock: Mutex<()>,
    /// Stages `apply --wait` waits for.
    sync: crate::sync::SyncWaiters,
    health: Option<Health>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("file", &self.file.path())
            .field("kinds", &self.kind_names())
            .finish()
    }
}

/// A validated document waiting to be written.
struct Pending {
    kind: Arc<dyn ErasedKind>,
    id: ObjectId,
    object: Box<dyn Any + Send>,
}

impl Resources {
    /// A registry persisting to `file` (loaded now; each kind's objects are restored when the
    /// kind registers).
    pub fn new(db: Db, file: StateFile, health: Option<Health>) -> Result<Self, ResourcesError> {
        let persisted: Persisted = file.load()?.unwrap_or_default();
        let saved = persisted
            .kinds
            .iter()
            .map(|(k, objects)| {
                let text = serde_json::to_string(objects).unwrap_or_else(|_| "[]".to_string());
                (k.clone(), Arc::new(text))
            })
            .collect();
        Ok(Self {
            db,
            file,
            kinds: RwLock::new(Vec::new()),
            loaded: Mutex::new(persisted.kinds),
            saved: Mutex::new(saved),
            write_lock: Mutex::new(()),
            sync: crate::sync::SyncWaiters::default(),
            health,
        })
    }

    /// Register a kind: its table gets an initializer, the kind's persisted objects are
    /// restored into the table, and the initializer is marked done in the same transaction.
    pub fn register<K: ResourceKind>(&self, kind: K) -> Result<(), ResourcesError> {
        let _w = self.write_lock.lock();
        let erased: Arc<dyn ErasedKind> = Arc::new(Erased(kind));
        {
            let kinds = self.kinds.read();
            for k in kinds.iter() {
                let clash = (k.kind() == erased.kind())
                    .then_some(erased.kind())
                    .or_else(|| {
                        erased
                            .names()
                            .iter()
                            .copied()
                            .find(|n| k.names().contains(n))
                    });
                if let Some(name) = clash {
                    return Err(ResourcesError::DuplicateKind {
                        kind: erased.kind().into(),
                        name: name.into(),
                    });
                }
            }
        }
        let objects = self.loaded.lock().remove(erased.kind()).unwrap_or_default();
        let mut txn = self.db.write_txn(&[erased.any_table()])?;
        let init = erased.register_initializer(&mut txn)?;
        let path = self.file.path().display().to_string();
        let restored = erased.restore(&mut txn, &objects, &path)?;
        init.done(&mut txn)?;
        txn.commit();
        tracing::info!(kind = erased.kind(), restored, "resource kind registered");
        self.kinds.write().push(erased);
        self.report();
        Ok(())
    }

    /// Register a stage that `apply --wait` waits for (see [`crate::SyncWaiters`]).
    pub fn add_sync_waiter(&self, name: &'static str, rank: u32, waiter: crate::SyncWaiter) {
        self.sync.add(name, rank, waiter);
    }

    /// Wait until every registered stage has handled what was committed before the call
    /// (within `timeout`); returns each stage's time.
    pub async fn wait_synced(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Vec<(&'static str, std::time::Duration)>, ResourcesError> {
        self.sync.wait(timeout).await
    }

    /// The registered kinds, in registration order.
    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.read().iter().map(|k| k.kind()).collect()
    }

    fn known(&self) -> String {
        self.kinds
            .read()
            .iter()
            .map(|k| format!("{} ({})", k.kind(), k.names().join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn by_document(&self, doc: &Document) -> Result<Arc<dyn ErasedKind>, FieldError> {
        let kinds = self.kinds.read();
        if doc.kind.is_empty() {
            return Err(FieldError::new("kind", "required"));
        }
        let Some(k) = kinds.iter().find(|k| k.kind() == doc.kind) else {
            let known: Vec<&str> = kinds.iter().map(|k| k.kind()).collect();
            return Err(FieldError::new(
                "kind",
                format!(
                    "unknown kind {:?}; known kinds: {}",
                    doc.kind,
                    known.join(", ")
                ),
            ));
        };
        if !k.api_versions().contains(&doc.api_version.as_str()) {
            return Err(FieldError::new(
                "apiVersion",
                format!(
                    "{} needs apiVersion {}, got {:?}",
                    k.kind(),
                    k.api_versions().join(" or "),
                    doc.api_version
                ),
            ));
        }
        Ok(k.clone())
    }

    /// Resolve a kind named on the command line (case-insensitive; singular, plural or short).
    fn by_name(&self, name: &str) -> Result<Arc<dyn ErasedKind>, ResourcesError> {
        let lower = name.to_ascii_lowercase();
        self.kinds
            .read()
            .iter()
            .find(|k| k.kind().eq_ignore_ascii_case(name) || k.names().contains(&lower.as_str()))
            .cloned()
            .ok_or_else(|| ResourcesError::UnknownKind {
                kind: name.to_string(),
                known: self.known(),
            })
    }

    /// Route, check and identify every document; errors are collected across documents.
    fn resolve(
        &self,
        docs: &mut [Document],
        errors: &mut Vec<DocumentError>,
    ) -> Vec<Option<(Arc<dyn ErasedKind>, ObjectId)>> {
        let mut seen: BTreeMap<(String, ObjectId), String> = BTreeMap::new();
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs.iter_mut() {
            let mut err = |doc: &Document, namespace: &str, e: FieldError| {
                errors.push(DocumentError {
                    label: doc.label.clone(),
                    document: doc.index,
                    kind: doc.kind.clone(),
                    namespace: namespace.to_string(),
                    name: doc.name.clone(),
                    field: e.field,
                    reason: e.reason,
                });
            };
            if !doc.value.is_object() {
                err(
                    doc,
                    "",
                    FieldError::new(
                        "(document)",
                        format!(
                            "must be an object, got {}",
                            crate::document::type_name(&doc.value)
                        ),
                    ),
                );
                out.push(None);
                continue;
            }
            let kind = match self.by_document(doc) {
                Ok(k) => k,
                Err(e) => {
                    err(doc, doc.namespace.as_deref().unwrap_or_default(), e);
                    out.push(None);
                    continue;
                }
            };
            let namespace = if kind.namespaced() {
                doc.namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
            } else {
                String::new()
            };
            doc.namespace = kind.namespaced().then(|| namespace.clone());
            let mut bad = false;
            if kind.namespaced()
                && let Err(r) = crate::document::validate_dns_label(&namespace)
            {
                err(doc, &namespace, FieldError::new("metadata.namespace", r));
                bad = true;
            }
            if doc.name.is_empty() {
                err(
                    doc,
                    &namespace,
                    FieldError::new("metadata.name", "required"),
                );
                bad = true;
            } else if let Err(r) = crate::document::validate_dns_subdomain(&doc.name) {
                err(doc, &namespace, FieldError::new("metadata.name", r));
                bad = true;
            }
            if bad {
                out.push(None);
                continue;
            }
            let id = ObjectId {
                namespace,
                name: doc.name.clone(),
            };
            if let Some(first) =
                seen.insert((kind.kind().to_string(), id.clone()), doc.label.clone())
            {
                err(
                    doc,
                    &id.namespace,
                    FieldError::new(
                        "metadata.name",
                        format!("{} {id} is already in {first} of this file", kind.kind()),
                    ),
                );
                out.push(None);
                continue;
            }
            out.push(Some((kind, id)));
        }
        out
    }

    /// Apply every document of `text` (YAML or JSON), all or nothing. Returns one change per
    /// document in file order.
    pub fn apply(&self, text: &str) -> Result<Vec<ResourceChange>, ResourcesError> {
        let started = std::time::Instant::now();
        let mut docs = parse_documents(text)?;
        let parsed = started.elapsed();
        if docs.is_empty() {
            return Err(ResourcesError::Empty);
        }
        let mut errors = Vec::new();
        let resolved = self.resolve(&mut docs, &mut errors);
        let outcomes = parse_all(&docs, &resolved);
        let mut pending = Vec::new();
        for ((doc, r), outcome) in docs.iter().zip(resolved).zip(outcomes) {
            let (Some((kind, id)), Some(outcome)) = (r, outcome) else {
                continue;
            };
            match outcome {
                Ok(object) => pending.push(Pending { kind, id, object }),
                Err(errs) => errors.extend(errs.into_iter().map(|e| DocumentError {
                    label: doc.label.clone(),
                    document: doc.index,
                    kind: doc.kind.clone(),
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    field: e.field,
                    reason: e.reason,
                })),
            }
        }
        if !errors.is_empty() {
            // Routing errors are found before field errors; report in file order.
            errors.sort_by_key(|e| e.document);
            return Err(ResourcesError::Invalid(errors));
        }
        // Freeing the documents of a large file takes a while (tens of ms for 20,000): done on
        // another thread, beside the write and the persist.
        if docs.len() >= PARALLEL_PARSE_MIN {
            let _ = std::thread::Builder::new()
                .name("apply-free".into())
                .spawn(move || drop(docs));
        } else {
            drop(docs);
        }
        let validated = started.elapsed();
        let _w = self.write_lock.lock();
        let kinds: Vec<Arc<dyn ErasedKind>> = pending.iter().map(|p| p.kind.clone()).collect();
        let mut txn = self.write_txn(&kinds)?;
        let mut changes = Vec::with_capacity(pending.len());
        for p in pending {
            let kind = p.kind.kind();
            let action = p.kind.write(&mut txn, p.object)?;
            changes.push(change(kind, &p.id, action));
        }
        let written = started.elapsed();
        let times = self.persist_and_commit(txn, &kinds)?;
        log_changes(&changes, "applied");
        tracing::info!(
            objects = changes.len(),
            parse_ms = ms(parsed),
            validate_ms = ms(validated - parsed),
            write_ms = ms(written - validated),
            persist_ms = ms(started.elapsed() - written),
            encode_ms = ms(times.encode),
            fsync_ms = ms(times.store),
            "apply done"
        );
        Ok(changes)
    }

    /// Delete the objects named by the documents of `text` (only apiVersion, kind and
    /// metadata are read). Missing objects are reported as `not-found`, not as errors.
    pub fn delete(&self, text: &str) -> Result<Vec<ResourceChange>, ResourcesError> {
        let mut docs = parse_documents(text)?;
        if docs.is_empty() {
            return Err(ResourcesError::Empty);
        }
        let mut errors = Vec::new();
        let resolved: Vec<(Arc<dyn ErasedKind>, ObjectId)> = self
            .resolve(&mut docs, &mut errors)
            .into_iter()
            .flatten()
            .collect();
        if !errors.is_empty() {
            return Err(ResourcesError::Invalid(errors));
        }
        let _w = self.write_lock.lock();
        let kinds: Vec<Arc<dyn ErasedKind>> = resolved.iter().map(|(k, _)| k.clone()).collect();
        let mut txn = self.write_txn(&kinds)?;
        let mut changes = Vec::with_capacity(resolved.len());
        for (kind, id) in &resolved {
            let action = if kind.delete(&mut txn, id)? {
                ResourceAction::Deleted
            } else {
                ResourceAction::NotFound
            };
            changes.push(change(kind.kind(), id, action));
        }
        self.persist_and_commit(txn, &kinds)?;
        log_changes(&changes, "deleted");
        Ok(changes)
    }

    /// The stored objects of the kind called `kind` (case-insensitive; singular, plural or
    /// short name), optionally only in `namespace` and/or called `name`, as JSON.
    pub fn list(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Value>, ResourcesError> {
        let k = self.by_name(kind)?;
        Ok(k.list(&self.db.read_txn(), namespace, name))
    }

    /// The canonical kind for a name given on the command line (`pods` → `Pod`).
    pub fn canonical_kind(&self, name: &str) -> Result<&'static str, ResourcesError> {
        self.by_name(name).map(|k| k.kind())
    }

    fn write_txn(&self, kinds: &[Arc<dyn ErasedKind>]) -> Result<WriteTxn, ResourcesError> {
        let mut names = BTreeSet::new();
        let tables: Vec<&dyn AnyTable> = kinds
            .iter()
            .filter(|k| names.insert(k.kind()))
            .map(|k| k.any_table())
            .collect();
        Ok(self.db.write_txn(&tables)?)
    }

    /// Write the state file from what `txn` sees, then commit. Only the kinds in `touched`
    /// are re-encoded; the others keep their last encoding. A failed write aborts the
    /// transaction, so memory and disk never disagree.
    fn persist_and_commit(
        &self,
        txn: WriteTxn,
        touched: &[Arc<dyn ErasedKind>],
    ) -> Result<PersistTimes, ResourcesError> {
        let started = std::time::Instant::now();
        let mut saved = self.saved.lock().clone();
        let mut done = BTreeSet::new();
        let todo: Vec<(&Arc<dyn ErasedKind>, usize)> = touched
            .iter()
            .filter(|k| done.insert(k.kind()))
            .map(|k| (k, saved.get(k.kind()).map_or(0, |t| t.len())))
            .collect();
        // Each touched kind is encoded on its own thread when there is enough to encode (a
        // 10,000-service apply touches Services and EndpointSlices, 6 MB each).
        let parallel = todo.len() > 1
            && todo.iter().map(|(_, hint)| hint).sum::<usize>() >= PARALLEL_ENCODE_MIN_BYTES;
        let jobs: Vec<_> = todo
            .iter()
            .map(|&(k, hint)| k.dump_json(&txn, hint))
            .collect();
        let encoded: Vec<String> = if parallel {
            std::thread::scope(|s| {
                let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
                // A panic while encoding goes on as it would on this thread.
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        } else {
            jobs.into_iter().map(|job| job()).collect()
        };
        for ((k, _), text) in todo.iter().zip(encoded) {
            saved.insert(k.kind().to_string(), Arc::new(text));
        }
        // `{"kinds":{"Kind":[...],...}}`: the layout of [`Persisted`], assembled from parts.
        let mut bytes =
            Vec::with_capacity(saved.values().map(|t| t.len() + 32).sum::<usize>() + 16);
        bytes.extend_from_slice(b"{\"kinds\":{");
        for (i, (kind, text)) in saved.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            bytes.extend_from_slice(
                serde_json::to_string(kind)
                    .unwrap_or_else(|_| "\"\"".into())
                    .as_bytes(),
            );
            bytes.push(b':');
            bytes.extend_from_slice(text.as_bytes());
        }
        bytes.extend_from_slice(b"}}\n");
        let encoded = started.elapsed();
        self.file.store_bytes(&bytes)?;
        let stored = started.elapsed();
        txn.commit();
        *self.saved.lock() = saved;
        self.report();
        Ok(PersistTimes {
            encode: encoded,
            store: stored - encoded,
        })
    }

    fn report(&self) {
        if let Some(h) = &self.health {
            let txn = self.db.read_txn();
            let counts: Vec<String> = self
                .kinds
                .read()
                .iter()
                .map(|k| {
                    format!(
                        "{} {}",
                        k.len(&txn),
                        k.names().get(1).copied().unwrap_or(k.kind())
                    )
                })
                .collect();
            h.ok(counts.join(", "));
        }
    }
}

/// Files with at least this many documents are parsed on several threads.
pub(crate) const PARALLEL_PARSE_MIN: usize = 2000;

/// Kinds are encoded for the state file on one thread each when their last encodings add up
/// to at least this many bytes (below it a thread costs more than it saves).
const PARALLEL_ENCODE_MIN_BYTES: usize = 1 << 20;

/// How long writing the state file took: encoding the touched kinds, then writing and
/// syncing the file.
struct PersistTimes {
    encode: std::time::Duration,
    store: std::time::Duration,
}

/// What parsing one document gave (`None`: not routed to a kind).
type ParseOutcome = Option<Result<Box<dyn Any + Send>, Vec<FieldError>>>;

/// The kind and id a document was routed to (`None`: routing failed).
type Routed = Option<(Arc<dyn ErasedKind>, ObjectId)>;

/// Parse every routed document with its kind, in file order (large files on every CPU;
/// documents are independent).
fn parse_all(docs: &[Document], resolved: &[Routed]) -> Vec<ParseOutcome> {
    let pairs: Vec<(&Document, &Routed)> = docs.iter().zip(resolved).collect();
    crate::par::par_map(&pairs, PARALLEL_PARSE_MIN, |(doc, r)| {
        r.as_ref().map(|(kind, _)| kind.parse(doc))
    })
}

/// Up to this many changes of one apply/delete are logged one by one at info level; beyond it
/// one summary line is logged (the per-object lines go to debug).
const LOGGED_CHANGES: usize = 20;

fn log_changes(changes: &[ResourceChange], verb: &str) {
    let changed = || {
        changes.iter().filter(|c| {
            !matches!(
                c.action,
                ResourceAction::Unchanged | ResourceAction::NotFound
            )
        })
    };
    let many = changed().count() > LOGGED_CHANGES;
    for c in changed() {
        if many {
            tracing::debug!(kind = %c.kind, namespace = %c.namespace, name = %c.name, action = ?c.action, "object {verb}");
        } else {
            tracing::info!(kind = %c.kind, namespace = %c.namespace, name = %c.name, action = ?c.action, "object {verb}");
        }
    }
    if many {
        tracing::info!(
            objects = changed().count(),
            "objects {verb} (listed at debug level)"
        );
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn change(kind: &str, id: &ObjectId, action: ResourceAction) -> ResourceChange {
    ResourceChange {
        kind: kind.to_string(),
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        action,
    }
}
