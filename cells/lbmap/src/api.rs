//! Routes: `GET /v1/bpf/lb` (services map, `?backends=true` adds the backends map) and
//! `GET /v1/bpf/nat` (reverse NAT and translated conntrack flows).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use cilium_api::ApiError;
use cilium_api::models::{
    BpfLbBackend, BpfLbList, BpfLbService, BpfLbSlot, BpfNatFlow, BpfNatList, BpfRevNatEntry,
    BpfSnatEntry,
};
use cilium_bpf::types::{
    CT_F_HAIRPIN, CT_F_NODEPORT, CT_F_SERVICE, CT_KEY_F_SERVICE, LB_ALG_MAGLEV, LB_SCOPE_INT,
    SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_NO_BACKENDS, SVC_F_SRC_RANGE, SVC_F_SRC_RANGE_DENY,
    SVC_F_TWO_SCOPES,
};
use cilium_bpf::{Datapath, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, SNAT_DIR_OUT};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// State of the LB map routes.
#[derive(Clone)]
pub struct LbMapApi {
    /// The loaded datapath.
    pub dp: Arc<Datapath>,
}

impl LbMapApi {
    /// The router with both routes.
    pub fn router(self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(bpf_lb))
            .routes(routes!(bpf_nat))
            .with_state(self)
    }
}

/// Protocol name.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        p => format!("proto-{p}"),
    }
}

fn ep(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}")
}

/// Decodes a services-map dump into frontends (sorted) using the backends map.
pub fn decode_services(
    entries: &[(Lb4Key, Lb4Service)],
    backends: &BTreeMap<u32, Lb4Backend>,
    ranges: &[(u16, Ipv4Addr, u8)],
) -> Vec<BpfLbService> {
    /// One scope of a frontend: header and slots.
    type Scope = (Option<Lb4Service>, BTreeMap<u16, u32>);
    let mut by_fe: BTreeMap<(Ipv4Addr, u16, u8), [Scope; 2]> = BTreeMap::new();
    for (k, v) in entries {
        let scopes = by_fe.entry((k.addr(), k.port(), k.proto)).or_default();
        let e = &mut scopes[usize::from(k.scope == LB_SCOPE_INT)];
        if k.slot == 0 {
            e.0 = Some(*v);
        } else {
            e.1.insert(k.slot, v.backend_id);
        }
    }
    // The slots a header names (surplus ones are hidden), decoded.
    let decode_slots = |h: &Lb4Service, slots: BTreeMap<u16, u32>| -> Vec<BpfLbSlot> {
        slots
            .into_iter()
            .filter(|(s, _)| *s <= h.count)
            .map(|(slot, id)| BpfLbSlot {
                slot,
                backend_id: id,
                backend: backends
                    .get(&id)
                    .map(|b| ep(b.addr(), b.port_host()))
                    .unwrap_or_default(),
            })
            .collect()
    };
    by_fe
        .into_iter()
        .filter_map(|((addr, port, proto), [(h, slots), (ih, islots)])| {
            let h = h?;
            let mut flags = Vec::new();
            if h.flags & SVC_F_AFFINITY != 0 {
                flags.push("affinity".to_string());
            }
            if h.flags & SVC_F_NO_BACKENDS != 0 {
                flags.push("no-backends".to_string());
            }
            if h.flags & SVC_F_EXTERNAL != 0 {
                flags.push("external".to_string());
            }
            let mut source_ranges = Vec::new();
            if h.flags & SVC_F_SRC_RANGE != 0 {
                flags.push("source-range".to_string());
                if h.flags & SVC_F_SRC_RANGE_DENY != 0 {
                    flags.push("source-range-deny".to_string());
                }
                source_ranges = ranges
                    .iter()
                    .filter(|(id, _, _)| *id == h.rev_nat_id)
                    .map(|(_, a, l)| format!("{a}/{l}"))
                    .collect();
            }
            let mut internal_slots = Vec::new();
            if h.flags & SVC_F_TWO_SCOPES != 0 {
                flags.push("two-scopes".to_string());
                if let Some(ih) = ih {
                    internal_slots = decode_slots(&ih, islots);
                }
            }
            let maglev = h.algorithm == LB_ALG_MAGLEV;
            Some(BpfLbService {
                frontend: ep(addr, port),
                protocol: proto_name(proto),
                service_id: h.rev_nat_id,
                count: h.count,
                algorithm: if maglev { "maglev" } else { "random" }.into(),
                maglev_table_size: if maglev { h.backend_id } else { 0 },
                flags,
                affinity_timeout_secs: h.affinity_timeout,
                source_ranges,
                slots: decode_slots(&h, slots),
                internal_slots,
            })
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, cilium_bpf::Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("{what} failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("{what} failed: {e}")))
}

/// Query of `GET /v1/bpf/lb`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LbQuery {
    /// Also list the backends map.
    #[serde(default)]
    backends: bool,
}

/// The services map (frontends with their slots), optionally the backends map.
#[utoipa::path(get, path = "/v1/bpf/lb", tag = "bpf", params(LbQuery),
    responses((status = 200, body = BpfLbList)))]
async fn bpf_lb(
    State(api): State<LbMapApi>,
    Query(q): Query<LbQuery>,
) -> Result<Json<BpfLbList>, ApiError> {
    let dp = api.dp.clone();
    let list = blocking("reading the load-balancer maps", move || {
        let lb = &dp.maps().lb;
        let backends: BTreeMap<u32, Lb4Backend> = lb.backends.entries()?.into_iter().collect();
        let services = decode_services(&lb.services.entries()?, &backends, &lb.src_ranges()?);
        let backends = if q.backends {
            backends
                .iter()
                .map(|(id, b)| BpfLbBackend {
                    id: *id,
                    address: ep(b.addr(), b.port_host()),
                    protocol: proto_name(b.proto),
                    state: if b.state == 1 {
                        "terminating"
                    } else {
                        "active"
                    }
                    .into(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(BpfLbList { services, backends })
    })
    .await?;
    Ok(Json(list))
}

/// Reverse NAT entries and the conntrack entries of translated flows.
#[utoipa::path(get, path = "/v1/bpf/nat", tag = "bpf",
    responses((status = 200, body = BpfNatList)))]
async fn bpf_nat(State(api): State<LbMapApi>) -> Result<Json<BpfNatList>, ApiError> {
    let dp = api.dp.clone();
    let list = blocking("reading reverse NAT and conntrack", move || {
        let maps = dp.maps();
        let revnat: BTreeMap<u16, Lb4RevNat> = maps
            .lb
            .revnat
            .entries()?
            .into_iter()
            .map(|(k, v)| (k.rev_nat_id, v))
            .collect();
        let mut flows = Vec::new();
        for r in maps.conntrack.dump()? {
            let (k, e) = (r.key, r.entry);
            if e.flags & CT_F_SERVICE == 0 || k.flags & CT_KEY_F_SERVICE != 0 {
                continue;
            }
            let mut flags = vec!["service".to_string()];
            if e.flags & CT_F_HAIRPIN != 0 {
                flags.push("hairpin".into());
            }
            if e.flags & CT_F_NODEPORT != 0 {
                flags.push("nodeport".into());
            }
            flows.push(BpfNatFlow {
                protocol: proto_name(k.proto),
                source: ep(k.src(), k.src_port()),
                backend: ep(k.dst(), k.dst_port()),
                frontend: revnat
                    .get(&e.rev_nat_id)
                    .map(|v| ep(v.addr(), v.port_host()))
                    .unwrap_or_default(),
                service_id: e.rev_nat_id,
                flags,
            });
        }
        flows.sort_by(|a, b| (&a.backend, &a.source).cmp(&(&b.backend, &b.source)));
        // One row per flow, from its client → backend entry (the reply entry mirrors it).
        let mut snat: Vec<BpfSnatEntry> = maps
            .lb
            .snat
            .entries()?
            .into_iter()
            .filter(|(k, _)| k.dir == SNAT_DIR_OUT)
            .map(|(k, v)| BpfSnatEntry {
                protocol: proto_name(k.proto),
                client: ep(k.src(), k.src_port()),
                backend: ep(k.dst(), k.dst_port()),
                node: ep(v.addr(), v.port_host()),
            })
            .collect();
        snat.sort_by(|a, b| (&a.backend, &a.client).cmp(&(&b.backend, &b.client)));
        Ok(BpfNatList {
            reverse_nat: revnat
                .iter()
                .map(|(id, v)| BpfRevNatEntry {
                    service_id: *id,
                    frontend: ep(v.addr(), v.port_host()),
                })
                .collect(),
            flows,
            snat,
        })
    })
    .await?;
    Ok(Json(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_decode_with_slots_and_flags() {
        let fe = Ipv4Addr::new(10, 96, 0, 10);
        let entries = vec![
            (
                Lb4Key::new(fe, 80, 6, 0),
                Lb4Service {
                    count: 1,
                    rev_nat_id: 7,
                    flags: SVC_F_AFFINITY,
                    affinity_timeout: 30,
                    ..Default::default()
                },
            ),
            (
                Lb4Key::new(fe, 80, 6, 1),
                Lb4Service {
                    backend_id: 3,
                    rev_nat_id: 7,
                    ..Default::default()
                },
            ),
            // surplus slot beyond count is hidden
            (
                Lb4Key::new(fe, 80, 6, 2),
                Lb4Service {
                    backend_id: 4,
                    ..Default::default()
                },
            ),
        ];
        let backends =
            BTreeMap::from([(3, Lb4Backend::new(Ipv4Addr::new(10, 200, 0, 5), 8080, 6, 0))]);
        let s = decode_services(&entries, &backends, &[]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].frontend, "10.96.0.10:80");
        assert_eq!(s[0].flags, vec!["affinity"]);
        assert_eq!(s[0].slots.len(), 1);
        assert_eq!(s[0].slots[0].backend, "10.200.0.5:8080");
    }

    #[test]
    fn two_scopes_decode_into_one_frontend_with_internal_slots() {
        let fe = Ipv4Addr::new(192, 0, 2, 1);
        let slot = |scope, slot, id| {
            (
                Lb4Key::scoped(fe, 30080, 6, slot, scope),
                Lb4Service {
                    backend_id: id,
                    rev_nat_id: 9,
                    ..Default::default()
                },
            )
        };
        let header = |scope, count, flags| {
            (
                Lb4Key::scoped(fe, 30080, 6, 0, scope),
                Lb4Service {
                    count,
                    rev_nat_id: 9,
                    flags,
                    ..Default::default()
                },
            )
        };
        let entries = vec![
            header(0, 1, SVC_F_EXTERNAL | SVC_F_TWO_SCOPES),
            slot(0, 1, 3),
            header(LB_SCOPE_INT, 2, SVC_F_EXTERNAL),
            slot(LB_SCOPE_INT, 1, 3),
            slot(LB_SCOPE_INT, 2, 4),
        ];
        let backends = BTreeMap::from([
            (3, Lb4Backend::new(Ipv4Addr::new(10, 200, 0, 5), 8080, 6, 0)),
            (4, Lb4Backend::new(Ipv4Addr::new(10, 201, 0, 6), 8080, 6, 0)),
        ]);
        let s = decode_services(&entries, &backends, &[]);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].flags, vec!["external", "two-scopes"]);
        let names = |v: &[BpfLbSlot]| v.iter().map(|x| x.backend.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s[0].slots), ["10.200.0.5:8080"]);
        assert_eq!(
            names(&s[0].internal_slots),
            ["10.200.0.5:8080", "10.201.0.6:8080"]
        );
    }
}
