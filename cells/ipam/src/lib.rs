//! cilium-ipam (being written)
