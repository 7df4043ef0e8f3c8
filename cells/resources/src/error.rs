//! Errors of the resources cell.

use cilium_api::{ApiError, ErrorCode};

/// One invalid field of one document of an applied file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// How the document is named (`document 2`, `document 1 items[0]`).
    pub label: String,
    /// 1-based position of the document in the file.
    pub document: usize,
    /// Its kind, when known.
    pub kind: String,
    /// Its namespace, when namespaced.
    pub namespace: String,
    /// Its name, when known.
    pub name: String,
    /// The offending field's path.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.label)?;
        let id = match (self.namespace.is_empty(), self.name.is_empty()) {
            (_, true) => String::new(),
            (true, false) => self.name.clone(),
            (false, false) => format!("{}/{}", self.namespace, self.name),
        };
        match (self.kind.is_empty(), id.is_empty()) {
            (true, true) => {}
            (false, true) => write!(f, " ({})", self.kind)?,
            (true, false) => write!(f, " ({id})")?,
            (false, false) => write!(f, " ({} {id})", self.kind)?,
        }
        write!(f, ": {}: {}", self.field, self.reason)
    }
}

fn summary(errors: &[DocumentError]) -> String {
    match errors {
        [] => "no documents were valid".into(),
        [one] => format!("{one}; nothing was changed"),
        [first, rest @ ..] => format!(
            "{first} (and {} more errors); nothing was changed",
            rest.len()
        ),
    }
}

/// What went wrong applying, deleting or listing objects.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    /// The text is not valid YAML or JSON.
    #[error("document {document}: {reason}; nothing was changed")]
    Syntax {
        /// 1-based document position.
        document: usize,
        /// Parser message with line and column.
        reason: String,
    },
    /// The file holds no document.
    #[error("the file holds no document; give YAML or JSON with apiVersion, kind and metadata")]
    Empty,
    /// Documents failed validation; nothing was applied.
    #[error("{}", summary(.0))]
    Invalid(Vec<DocumentError>),
    /// `GET /v1/resources/{kind}` named a kind nobody registered.
    #[error("unknown kind {kind:?}; known kinds: {known}")]
    UnknownKind {
        /// The requested kind.
        kind: String,
        /// The registered kinds and their names.
        known: String,
    },
    /// A kind (or one of its names) was registered twice.
    #[error("kind {kind:?} is registered twice ({name:?} already taken); register each kind once")]
    DuplicateKind {
        /// The kind.
        kind: String,
        /// The clashing name.
        name: String,
    },
    /// The persisted objects of a kind cannot be decoded.
    #[error(
        "state file {path}: {kind} object {index} cannot be decoded: {reason}; move the file away to start from scratch"
    )]
    CorruptState {
        /// The file.
        path: String,
        /// The kind.
        kind: String,
        /// Position in the file's list of that kind.
        index: usize,
        /// Decoder message.
        reason: String,
    },
    /// Reading or writing `resources.json` failed.
    #[error("resources state: {0}")]
    State(#[from] cilium_node::Error),
    /// Writing a table failed.
    #[error("resources table: {0}")]
    Db(#[from] statedb::Error),
    /// `apply --wait`: a stage did not catch up in time (the objects ARE applied).
    #[error(
        "the objects were applied, but {stage} has not put them into the datapath after {timeout_secs} s; `ciliumctl status` and `ciliumctl db frontends` show what is pending"
    )]
    NotSynced {
        /// The stage still working.
        stage: String,
        /// The timeout given.
        timeout_secs: f64,
    },
    /// `apply --wait`: a stage cannot catch up (the objects ARE applied).
    #[error("the objects were applied, but {stage} cannot put them into the datapath: {reason}")]
    SyncFailed {
        /// The failing stage.
        stage: String,
        /// Why.
        reason: String,
    },
}

impl From<ResourcesError> for ApiError {
    fn from(e: ResourcesError) -> Self {
        match &e {
            ResourcesError::Syntax { document, reason } => ApiError::bad_request(e.to_string())
                .with_details(serde_json::json!({
                    "errors": [{"document": document, "field": "", "reason": reason}]
                })),
            ResourcesError::Empty => ApiError::bad_request(e.to_string()),
            ResourcesError::Invalid(errors) => {
                let list: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "document": d.document,
                            "label": d.label,
                            "kind": d.kind,
                            "namespace": d.namespace,
                            "name": d.name,
                            "field": d.field,
                            "reason": d.reason,
                            "message": d.to_string(),
                        })
                    })
                    .collect();
                ApiError::new(ErrorCode::Invalid, e.to_string())
                    .with_details(serde_json::json!({ "errors": list }))
            }
            ResourcesError::UnknownKind { .. } => ApiError::not_found(e.to_string()),
            ResourcesError::DuplicateKind { .. }
            | ResourcesError::CorruptState { .. }
            | ResourcesError::State(_)
            | ResourcesError::Db(_) => ApiError::internal(e.to_string()),
            ResourcesError::NotSynced { stage, .. } | ResourcesError::SyncFailed { stage, .. } => {
                ApiError::unavailable(e.to_string())
                    .with_details(serde_json::json!({ "applied": true, "stage": stage }))
            }
        }
    }
}
