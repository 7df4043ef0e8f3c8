//! cilium-ipcache (being written)
