//! cilium-policy: network policy for the agent.
//!
//! Owns the kinds NetworkPolicy (`networking.k8s.io/v1`), CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy (`cilium.io/v2`, L3/L4 parts) registered with the
//! resources registry (tables `networkpolicies`, `ciliumnetworkpolicies`,
//! `ciliumclusterwidenetworkpolicies`), their conversion into one internal rule model
//! ([`Policy`]), the selector cache (selector → identities, updated incrementally from the
//! `identities` table), the resolution of every endpoint's policy into the statedb table
//! `endpoint_policies` ([`EndpointPolicy`], injected as `Arc<Table<EndpointPolicy>>`) that
//! the policymap cell reconciles into BPF maps, the [`lookup`] function the datapath mirrors,
//! the [`Repository`] (injected as `Arc<Repository>`: `explain`, `rule_by_cookie`), the
//! `EnforcementLookup` of `endpoint get`, and the routes `GET /v1/policies`,
//! `GET /v1/policy/explain`, `GET /v1/policy/endpoint/{id}`. See docs/policy.md.

pub mod api;
mod error;
mod kinds;
mod lookup;
mod model;
mod parse;
mod repository;
mod resolve;
mod selector;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use cilium_api::routes::ApiRoutes;
use cilium_endpoint::{EndpointObj, EnforcementLookup};
use cilium_identity::{IdentityAllocator, IdentityObj};
use cilium_resources::Resources;
use hive::{BoxCell, Invoke, Job, JobGroup, Module, Provide};
use statedb::{Db, Table, WatchSet};

pub use error::PolicyError;
pub use kinds::{
    CILIUM_CLUSTERWIDE_POLICIES_TABLE, CILIUM_NETWORK_POLICIES_TABLE, NETWORK_POLICIES_TABLE,
    PolicyResourceKind,
};
pub use lookup::{Decision, Reason, entry_matches, lookup, lookup_enforced};
pub use model::{
    Direction, ENDPOINT_POLICIES_INDEX, ENDPOINT_POLICIES_TABLE, EndpointPolicy, Entity, L4, Peer,
    Policy, PolicyEntry, PolicyKind, PolicySpec, PortSpec, Rule, RuleRef, endpoint_policy_key,
    endpoint_policy_query, new_endpoint_policies_table, new_policy_table, policy_key,
    split_port_range,
};
pub use parse::{parse_cilium_policy, parse_network_policy, proto};
pub use repository::{CIDR_OWNER_PREFIX, Explanation, PodEndpoint, Repository, ResolveStats};
pub use resolve::{
    Cookies, EndpointInfo, Resolver, SelectorCache, policy_cidrs, reserved, selects,
};
pub use selector::{
    Labels, NAMESPACE_LABELS_PREFIX, Operator, POD_NAMESPACE_LABEL, Requirement, Selector,
    strip_source,
};

/// Registers the three policy tables and kinds and builds the repository.
fn new_repository(
    db: Arc<Db>,
    resources: Arc<Resources>,
    endpoints: Arc<Table<EndpointObj>>,
    identities: Arc<Table<IdentityObj>>,
    allocator: Arc<IdentityAllocator>,
    endpoint_policies: Arc<Table<EndpointPolicy>>,
    registry: Arc<prometheus::Registry>,
) -> hive::anyhow::Result<Repository> {
    let mut tables = Vec::new();
    for kind in [
        PolicyKind::NetworkPolicy,
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
    ] {
        let table = new_policy_table(&db, PolicyResourceKind::table_name(kind))?;
        resources
            .register(PolicyResourceKind {
                kind,
                table: table.clone(),
            })
            .map_err(|e| PolicyError::Register {
                kind: kind.as_str(),
                reason: e.to_string(),
            })?;
        tables.push((kind, table));
    }
    Ok(Repository::new(
        (*db).clone(),
        tables,
        (*endpoints).clone(),
        (*identities).clone(),
        (*endpoint_policies).clone(),
        Some(allocator),
        Some(&registry),
    )?)
}

/// Runs resolution whenever a policy, endpoint or identity changes, until cancelled. Waits
/// for every input table to be initialized (restored) first, so the first write is
/// complete; changes that arrive during a pass are picked up by the next one (coalesced).
pub async fn run_resolver(
    repo: Arc<Repository>,
    cancel: hive::CancellationToken,
    health: hive::Health,
) -> hive::anyhow::Result<()> {
    loop {
        let mut ws = WatchSet::new();
        let txn = repo.read_txn();
        if repo.inputs_initialized(&txn, &mut ws) {
            break;
        }
        health.ok("waiting for policy, endpoint and identity tables to be restored");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ws.wait() => {}
        }
    }
    loop {
        let r = repo.clone();
        // Everything committed before this point is seen by the pass below.
        let seen = repo.input_revisions(&repo.read_txn());
        let res = tokio::task::spawn_blocking(move || r.resolve()).await;
        if matches!(res, Ok(Ok(_))) {
            repo.mark_processed(seen);
        }
        let mut ws = match res {
            Ok(Ok((stats, ws))) if stats.cidr_failures > 0 => {
                // The rows are written, but some CIDR identity is missing or stale: retry
                // soon even if nothing else changes.
                health.degraded(
                    "policy resolution incomplete",
                    format_args!(
                        "{} CIDR identities could not be allocated or released; retrying",
                        stats.cidr_failures
                    ),
                );
                let mut ws = ws;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = ws.wait() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Ok(Ok((stats, ws))) => {
                health.ok(format!(
                    "{} policies, {} endpoints resolved",
                    stats.policies, stats.endpoints
                ));
                ws
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "policy resolution failed; retrying");
                health.degraded("policy resolution failed", e);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ws.wait() => {}
        }
    }
}

/// The policy cell: policy kinds, `Arc<Repository>`, `Arc<Table<EndpointPolicy>>`,
/// `Arc<EnforcementLookup>`, the resolver job and the policy routes.
pub fn cell() -> BoxCell {
    Module::new(
        "policy",
        "network policy: kinds, selector cache, resolution into endpoint_policies, explain",
        vec![
            Provide::new(|db: Arc<Db>| Ok(new_endpoint_policies_table(&db)?)),
            Provide::new(new_repository),
            Provide::new(|repo: Arc<Repository>| {
                Ok(EnforcementLookup(Box::new(move |id| repo.enforcement(id))))
            }),
            Invoke::new(
                |repo: Arc<Repository>,
                 routes: Arc<ApiRoutes>,
                 resources: Arc<Resources>,
                 jobs: JobGroup| {
                    routes.add(api::router(repo.clone()));
                    resources.add_sync_waiter(
                        "policy resolution",
                        cilium_resources::RANK_TABLES,
                        repo.sync_waiter(),
                    );
                    jobs.add(Job::one_shot("resolve", move |cancel, health| {
                        run_resolver(repo.clone(), cancel, health)
                    }));
                    Ok(())
                },
            ),
        ],
    )
}
