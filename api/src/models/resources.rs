//! Models of `ciliumctl apply`/`delete`/`get`: the outcome per object.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What applying or deleting did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceAction {
    /// The object did not exist and was stored.
    Created,
    /// The object existed and was changed.
    Configured,
    /// The object existed with the same content.
    Unchanged,
    /// The object was deleted.
    Deleted,
    /// Delete named an object that does not exist.
    NotFound,
}

impl ResourceAction {
    /// The word `ciliumctl` prints (`created`, `not-found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
            Self::NotFound => "not-found",
        }
    }
}

/// One object touched by `POST /v1/apply` or `POST /v1/delete`, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceChange {
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Namespace; empty for cluster-scoped kinds.
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub action: ResourceAction,
}
