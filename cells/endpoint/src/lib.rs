//! cilium-endpoint (being written)
