//! Typed client methods of the identity routes (`ciliumctl identity list|get`).

use crate::client::{Client, ClientError, encode_segment};
use crate::models::IdentityInfo;

impl Client {
    /// `GET /v1/identities`: every identity, by id.
    pub async fn identity_list(&self) -> Result<Vec<IdentityInfo>, ClientError> {
        self.get("/v1/identities").await
    }

    /// `GET /v1/identity/{id}`: one identity (404 when unknown).
    pub async fn identity_get(&self, id: &str) -> Result<IdentityInfo, ClientError> {
        self.get(&format!("/v1/identity/{}", encode_segment(id)))
            .await
    }
}
