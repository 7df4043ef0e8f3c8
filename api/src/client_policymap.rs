//! Typed client calls of the policy map routes (cilium-policymap).

use crate::client::{Client, ClientError};
use crate::models::{BpfPolicy, PolicyRuleStats};

impl Client {
    /// `GET /v1/bpf/policy/{endpoint}`: an endpoint's policy as the datapath holds it.
    pub async fn bpf_policy(&self, endpoint_id: u16) -> Result<BpfPolicy, ClientError> {
        self.get(&format!("/v1/bpf/policy/{endpoint_id}")).await
    }

    /// `GET /v1/policy/stats`: per-rule (cookie) packet and byte counters.
    pub async fn policy_stats(&self) -> Result<Vec<PolicyRuleStats>, ClientError> {
        self.get("/v1/policy/stats").await
    }
}
