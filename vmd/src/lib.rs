//! vmd: the store's legacy VMs on libvirt.
//!
//! It will own the `kind: vm` workloads of a profile: domain XML, base images and overlays,
//! cloud-init seeds, lifecycle and restart policy, adoption. Not built yet (issue 4).
