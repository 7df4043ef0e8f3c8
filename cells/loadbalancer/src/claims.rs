//! Which service holds which frontend address and node port: the writer's bookkeeping,
//! shared with the Service kind so that `ciliumctl apply` can reject a conflicting request
//! at once, naming the service that holds it.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::model::{L3n4Addr, L4Proto, ServiceName};

#[derive(Debug, Default)]
struct Inner {
    frontends: HashMap<L3n4Addr, ServiceName>,
    node_ports: HashMap<(u16, L4Proto), ServiceName>,
    ips: HashMap<std::net::Ipv4Addr, u32>,
}

/// Frontend and node port ownership, injected as `Arc<Claims>`. Written only by the
/// [`crate::Writer`].
#[derive(Debug, Default)]
pub struct Claims {
    inner: RwLock<Inner>,
}

impl Claims {
    /// The service holding the frontend `addr`.
    pub fn frontend_owner(&self, addr: &L3n4Addr) -> Option<ServiceName> {
        self.inner.read().frontends.get(addr).cloned()
    }

    /// The service holding node port `port`/`proto`.
    pub fn node_port_owner(&self, port: u16, proto: L4Proto) -> Option<ServiceName> {
        self.inner.read().node_ports.get(&(port, proto)).cloned()
    }

    /// True when `port`/`proto` is held by nobody.
    pub(crate) fn node_port_free(&self, port: u16, proto: L4Proto) -> bool {
        !self.inner.read().node_ports.contains_key(&(port, proto))
    }

    /// Record what `owner` holds now.
    pub(crate) fn claim(
        &self,
        owner: &ServiceName,
        frontends: &[L3n4Addr],
        node_ports: &[(u16, L4Proto)],
    ) {
        let mut g = self.inner.write();
        for f in frontends {
            if g.frontends.insert(*f, owner.clone()).is_none() {
                *g.ips.entry(f.address).or_default() += 1;
            }
        }
        for np in node_ports {
            g.node_ports.insert(*np, owner.clone());
        }
    }

    /// Drop what `owner` holds of `frontends` and `node_ports`; true if anything was held.
    pub(crate) fn release(
        &self,
        owner: &ServiceName,
        frontends: &[L3n4Addr],
        node_ports: &[(u16, L4Proto)],
    ) -> bool {
        let mut g = self.inner.write();
        let mut any = false;
        for f in frontends {
            if g.frontends.get(f) == Some(owner) {
                g.frontends.remove(f);
                if let Some(n) = g.ips.get_mut(&f.address) {
                    *n -= 1;
                    if *n == 0 {
                        g.ips.remove(&f.address);
                    }
                }
                any = true;
            }
        }
        for np in node_ports {
            if g.node_ports.get(np) == Some(owner) {
                g.node_ports.remove(np);
                any = true;
            }
        }
        any
    }

    /// Forget everything (before a full recomputation).
    pub(crate) fn clear(&self) {
        let mut g = self.inner.write();
        g.frontends.clear();
        g.node_ports.clear();
        g.ips.clear();
    }

    /// True when some frontend uses `ip`.
    pub(crate) fn ip_used(&self, ip: std::net::Ipv4Addr) -> bool {
        self.inner.read().ips.contains_key(&ip)
    }

    /// Number of held frontends and node ports.
    pub fn len(&self) -> (usize, usize) {
        let g = self.inner.read();
        (g.frontends.len(), g.node_ports.len())
    }
}
