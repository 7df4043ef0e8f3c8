//! Typed client calls of the load-balancer map routes (cilium-lbmap).

use crate::client::{Client, ClientError};
use crate::models::{BpfLbList, BpfNatList};

impl Client {
    /// `GET /v1/bpf/lb[?backends=true]`: the services map (and backends) as the datapath
    /// holds them.
    pub async fn bpf_lb(&self, backends: bool) -> Result<BpfLbList, ClientError> {
        if backends {
            self.get("/v1/bpf/lb?backends=true").await
        } else {
            self.get("/v1/bpf/lb").await
        }
    }

    /// `GET /v1/bpf/nat`: reverse NAT entries and translated flows.
    pub async fn bpf_nat(&self) -> Result<BpfNatList, ClientError> {
        self.get("/v1/bpf/nat").await
    }
}
