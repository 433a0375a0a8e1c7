//! Backroom's wire APIs: the protobuf files in `api/proto/` and their generated tonic code.
//!
//! Owns the messages and services between nodes and central, operators and central, and
//! nodeagent and the local daemons. It holds no logic: conversions to and from the domain types
//! live beside those types.

#![allow(clippy::all, missing_docs)]

pub mod common {
    tonic::include_proto!("backroom.common.v1");
}

/// netd's local API (issue 3).
pub mod netd {
    tonic::include_proto!("backroom.netd.v1");
}

/// vmd's local API (issue 4).
pub mod vmd {
    tonic::include_proto!("backroom.vmd.v1");
}

/// Node ↔ central (issue 6).
pub mod node {
    tonic::include_proto!("backroom.node.v1");
}

/// Operators ↔ central (issue 6).
pub mod operator {
    tonic::include_proto!("backroom.operator.v1");
}

/// nodeagent's local API (issue 5), used by nodectl.
pub mod nodeagent {
    tonic::include_proto!("backroom.nodeagent.v1");
}

/// How large a message each end of the node ↔ central link decodes, in one place so the two
/// ends cannot drift apart: central refuses at push a profile a node could not receive.
pub mod limits {
    /// What central decodes from a node (an event batch of 500 events with long messages).
    pub const NODE_MESSAGE_MAX: usize = 16 << 20;
    /// What a node decodes from central (a desired revision carries its whole profile).
    pub const CENTRAL_MESSAGE_MAX: usize = 4 << 20;
    /// The largest rendered store profile central accepts at push. It stays well below
    /// [`CENTRAL_MESSAGE_MAX`], and equals the largest document the profile parser reads (the
    /// node parses what it receives again), so a pushed profile always reaches the node whole.
    pub const PROFILE_MAX: usize = 1 << 20;
}
