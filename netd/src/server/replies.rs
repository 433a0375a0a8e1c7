//! Engine results as the API answers them (also `netd show`'s and `netd attach`'s output).

use backroom_api::netd as pb;

use super::overrides;
use crate::endpoints::Endpoint;
use crate::engine::Observation;

fn interface(i: &crate::endpoints::Iface) -> pb::Interface {
    pb::Interface {
        name: i.name.clone(),
        segment: i.segment.clone(),
        bridge: i.bridge.clone(),
        mac: i.mac.clone(),
        address: i.address.map(|a| a.to_string()).unwrap_or_default(),
        gateway: i.gateway.map(|g| g.to_string()).unwrap_or_default(),
        temporary: i.temporary,
        host_veth: i.host_veth.clone().unwrap_or_default(),
    }
}

pub fn attach_reply(ep: &Endpoint) -> pb::AttachReply {
    pb::AttachReply {
        netns_path: ep.netns_path(),
        interfaces: ep.interfaces.iter().map(interface).collect(),
    }
}

/// An observation as the API answers it; `problems` is the daemon's to fill (a one-shot
/// `netd show` has no loops, so none).
pub fn observe_reply(o: Observation) -> pb::ObserveReply {
    pb::ObserveReply {
        problems: Vec::new(),
        r#override: o.segment_override.as_ref().map(overrides::to_pb),
        override_dns: o.override_dns,
        applied_revision: o.applied_revision,
        pending_revision: o.pending_revision,
        confirm_deadline_unix: o.confirm_deadline_unix,
        unconfirmed_kept: o.unconfirmed_kept,
        segments: o
            .segments
            .into_iter()
            .map(|s| pb::SegmentState {
                name: s.name,
                bridge: s.bridge,
                present: s.present,
                addresses: s.addresses,
                ports: s.ports,
            })
            .collect(),
        rules: o
            .counters
            .into_iter()
            .map(|(rule, packets, bytes)| pb::RuleCounter { rule, packets, bytes })
            .collect(),
        drift: o.drift,
        endpoints: o
            .endpoints
            .iter()
            .map(|e| pb::EndpointState {
                workload: e.workload.clone(),
                instance: e.instance.clone(),
                netns_path: e.netns_path(),
                interfaces: e.interfaces.iter().map(interface).collect(),
            })
            .collect(),
    }
}
