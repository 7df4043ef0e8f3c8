//! Typed client methods of the policy routes (`ciliumctl policy list|explain`).

use crate::client::{Client, ClientError, encode_segment};
use crate::models::{PolicyEndpointDetail, PolicyExplanation, PolicySummary};

impl Client {
    /// `GET /v1/policies`: stored policies and the endpoints they select.
    pub async fn policy_list(&self) -> Result<Vec<PolicySummary>, ClientError> {
        self.get("/v1/policies").await
    }

    /// `GET /v1/policy/explain`: the verdict for `from` → `to` (`namespace/pod`) on
    /// `port`/`protocol` and the rules deciding it.
    pub async fn policy_explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> Result<PolicyExplanation, ClientError> {
        self.get(&format!(
            "/v1/policy/explain?from={}&to={}&port={port}&protocol={}",
            encode_segment(from),
            encode_segment(to),
            encode_segment(protocol)
        ))
        .await
    }

    /// `GET /v1/policy/endpoint/{id}`: an endpoint's resolved policy entries.
    pub async fn policy_endpoint(&self, id: &str) -> Result<PolicyEndpointDetail, ClientError> {
        self.get(&format!("/v1/policy/endpoint/{}", encode_segment(id)))
            .await
    }
}
