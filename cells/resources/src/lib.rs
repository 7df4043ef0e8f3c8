//! cilium-resources (being written)
