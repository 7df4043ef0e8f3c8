//! cilium-datapath (being written)
