//! nodeagent: the node's brain.
//!
//! It will run a whole store profile on one node (networks through netd, VMs through vmd,
//! containers on containerd), keep durable desired state and talk to central. Not built yet
//! (issues 5 and 6).
