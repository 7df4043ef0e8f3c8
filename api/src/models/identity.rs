//! Identity models: `GET /v1/identities`, `GET /v1/identity/{id}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A security identity and who uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityInfo {
    /// Numeric identity: 1-7 reserved, from 256 per label set, `0x0100_0000 + n` node-local CIDR.
    pub id: u32,
    /// `reserved`, `endpoint` or `cidr`.
    pub kind: String,
    /// Security labels (`reserved:<name>` for reserved identities, `cidr=<prefix>` for CIDR ones).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The prefix of a CIDR identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Who holds a reference (endpoint keys, policies); empty for reserved identities.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Number of owners.
    #[serde(default)]
    pub refs: usize,
}
