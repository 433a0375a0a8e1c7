//! netd's own DHCPv4 client for segments with `address: dhcp`, behind the [`Dhcp`] trait: the
//! real [`KernelDhcp`] makes an exchange on the segment's bridge (DISCOVER, OFFER, REQUEST, ACK;
//! with a known address it first asks for it again directly), messages encoded by `dhcproto`;
//! [`MemDhcp`] answers from a table, for unit tests. The lease is kept in `dhcp.json`; netd puts
//! the address and the router's default route on the bridge itself; `netd serve` renews at half
//! the lease time and drops the address when a lease runs out. The client asks for broadcast
//! replies, so it needs no address and no raw socket.
//!
//! An exchange blocks for seconds when no server answers: the engine only plans which segments
//! need one ([`DhcpRequest`]); the exchange runs without the engine's lock, and the lease is
//! recorded afterwards.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backroom_daemon::Backoff;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub address: IpNet,
    pub router: Option<IpAddr>,
    pub server: IpAddr,
    pub lease_seconds: u32,
    pub obtained_unix: i64,
    pub renew_at: i64,
    pub expires_at: i64,
}

impl Lease {
    pub fn valid_at(&self, now: i64) -> bool {
        now < self.expires_at
    }
}

/// Leases by segment.
pub type Leases = BTreeMap<String, Lease>;

/// One segment that needs a lease: planned under the engine's lock, carried out without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpRequest {
    pub segment: String,
    pub bridge: String,
    pub mac: [u8; 6],
    /// The lease being renewed (its address is asked for again first).
    pub previous: Option<Lease>,
}

/// A DHCP client: one blocking exchange per call.
pub trait Dhcp: Send + Sync {
    /// Gets a lease for `req`; `now_unix` stamps it.
    fn obtain(&self, req: &DhcpRequest, now_unix: i64) -> Result<Lease>;
}

/// How long to wait for answers to each DISCOVER: 2 s, 4 s, 6 s (about 12 s with no server).
pub const DISCOVER_WAITS: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(6));
pub const DISCOVER_TRIES: u32 = 3;

/// The real client, on a UDP socket bound to the bridge.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelDhcp;

fn message(
    xid: u32,
    mac: [u8; 6],
    kind: MessageType,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> v4::Message {
    let any = Ipv4Addr::UNSPECIFIED;
    let mut m = v4::Message::new_with_id(xid, any, any, any, any, &mac);
    // Broadcast replies: the client has no address yet.
    m.set_flags(v4::Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    let mut id = vec![1u8];
    id.extend_from_slice(&mac);
    o.insert(DhcpOption::ClientIdentifier(id));
    if let Some(a) = requested {
        o.insert(DhcpOption::RequestedIpAddress(a));
    }
    if let Some(s) = server {
        o.insert(DhcpOption::ServerIdentifier(s));
    }
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    m
}

fn encode(m: &v4::Message, bridge: &str) -> Result<Vec<u8>> {
    m.to_vec().map_err(|source| Error::DhcpEncode { bridge: bridge.to_string(), source })
}

/// What netd takes from a server's reply.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reply {
    kind: Option<MessageType>,
    yiaddr: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    lease: Option<u32>,
}

/// A reply to our transaction `xid` for `mac`; anything else on the wire is `None`.
fn parse(buf: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    let m = v4::Message::from_bytes(buf).ok()?;
    if m.opcode() != v4::Opcode::BootReply || m.xid() != xid || m.chaddr().get(..6)? != mac {
        return None;
    }
    let o = m.opts();
    let yiaddr = Some(m.yiaddr()).filter(|a| !a.is_unspecified());
    Some(Reply {
        kind: o.msg_type(),
        yiaddr,
        mask: match o.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(a)) => Some(*a),
            _ => None,
        },
        router: match o.get(OptionCode::Router) {
            Some(DhcpOption::Router(v)) => v.first().copied(),
            _ => None,
        },
        server: match o.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
            _ => None,
        },
        lease: match o.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(s)) => Some(*s),
            _ => None,
        },
    })
}

fn socket(ifname: &str) -> Result<UdpSocket> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let fail = |e: std::io::Error| {
        Error::kernel(format!("cannot open a DHCP client socket on {ifname}"), e)
    };
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| fail(e.into()))?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(|e| fail(e.into()))?;
    sockopt::set_socket_broadcast(&fd, true).map_err(|e| fail(e.into()))?;
    // rustix has no SO_BINDTODEVICE: the one raw call here.
    // SAFETY: setsockopt on a socket we own, with a pointer and length that match.
    if unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail(std::io::Error::last_os_error()));
    }
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68));
    rustix::net::bind(&fd, &any).map_err(|e| fail(e.into()))?;
    Ok(UdpSocket::from(fd))
}

struct Exchange<'a> {
    sock: UdpSocket,
    ifname: &'a str,
    xid: u32,
    mac: [u8; 6],
}

impl Exchange<'_> {
    /// Sends `msg` and waits up to `wait` for a reply of one of the `want`ed kinds.
    fn ask(&self, msg: &[u8], want: &[MessageType], wait: Duration) -> Result<Option<Reply>> {
        let dst = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
        let ifname = self.ifname;
        self.sock
            .send_to(msg, dst)
            .map_err(|e| Error::kernel(format!("cannot send a DHCP request on {ifname}"), e))?;
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while let Some(left) =
            deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
        {
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| Error::kernel(format!("cannot set a DHCP timeout on {ifname}"), e))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    if let Some(r) = parse(&buf[..n], self.xid, self.mac)
                        && r.kind.is_some_and(|k| want.contains(&k))
                    {
                        return Ok(Some(r));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    return Err(Error::kernel(format!("cannot read DHCP replies on {ifname}"), e));
                }
            }
        }
        Ok(None)
    }
}

fn lease_from(r: &Reply, now: i64) -> Option<Lease> {
    let addr = r.yiaddr?;
    let mask = r.mask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    let prefix = u32::from(mask).leading_ones() as u8;
    let secs = r.lease.unwrap_or(3600).max(30);
    Some(Lease {
        address: IpNet::V4(Ipv4Net::new(addr, prefix).ok()?),
        router: r.router.map(IpAddr::V4),
        server: IpAddr::V4(r.server?),
        lease_seconds: secs,
        obtained_unix: now,
        renew_at: now + i64::from(secs / 2),
        expires_at: now + i64::from(secs),
    })
}

impl Dhcp for KernelDhcp {
    /// Asks for the previous address first, then starts over with DISCOVER.
    fn obtain(&self, req: &DhcpRequest, now: i64) -> Result<Lease> {
        let (ifname, mac) = (req.bridge.as_str(), req.mac);
        let xid = rand::random::<u32>();
        let x = Exchange { sock: socket(ifname)?, ifname, xid, mac };
        let acked = [MessageType::Ack, MessageType::Nak];
        if let Some(IpNet::V4(prev)) = req.previous.as_ref().map(|l| l.address) {
            let m =
                encode(&message(xid, mac, MessageType::Request, Some(prev.addr()), None), ifname)?;
            if let Some(r) = x.ask(&m, &acked, DISCOVER_WAITS.initial)?
                && r.kind == Some(MessageType::Ack)
                && let Some(l) = lease_from(&r, now)
            {
                return Ok(l);
            }
        }
        let discover = encode(&message(xid, mac, MessageType::Discover, None, None), ifname)?;
        for attempt in 1..=DISCOVER_TRIES {
            let wait = DISCOVER_WAITS.delay(attempt);
            let Some(offer) = x.ask(&discover, &[MessageType::Offer], wait)? else { continue };
            let m = encode(
                &message(xid, mac, MessageType::Request, offer.yiaddr, offer.server),
                ifname,
            )?;
            if let Some(r) = x.ask(&m, &acked, wait)?
                && r.kind == Some(MessageType::Ack)
                && let Some(l) = lease_from(&r, now)
            {
                return Ok(l);
            }
        }
        Err(Error::NoDhcpServer {
            segment: req.segment.clone(),
            bridge: req.bridge.clone(),
            tries: DISCOVER_TRIES,
        })
    }
}

/// What a [`MemDhcp`] server hands out: address, router, lease seconds.
pub type MemOffer = (IpNet, Option<IpAddr>, u32);

/// DHCP as a table, for unit tests: a bridge with an entry answers with that address.
#[derive(Debug, Default)]
pub struct MemDhcp {
    /// Bridge → what its server hands out.
    pub servers: Mutex<BTreeMap<String, MemOffer>>,
    exchanges: AtomicUsize,
}

impl MemDhcp {
    /// A server on `bridge` that hands out `address`.
    pub fn serve(&self, bridge: &str, address: IpNet, router: Option<IpAddr>, secs: u32) {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bridge.to_string(), (address, router, secs));
    }

    pub fn exchanges(&self) -> usize {
        self.exchanges.load(Ordering::SeqCst)
    }
}

impl Dhcp for MemDhcp {
    fn obtain(&self, req: &DhcpRequest, now: i64) -> Result<Lease> {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let Some((address, router, secs)) = servers.get(&req.bridge).copied() else {
            return Err(Error::NoDhcpServer {
                segment: req.segment.clone(),
                bridge: req.bridge.clone(),
                tries: DISCOVER_TRIES,
            });
        };
        Ok(Lease {
            address,
            router,
            server: router.unwrap_or(address.addr()),
            lease_seconds: secs,
            obtained_unix: now,
            renew_at: now + i64::from(secs / 2),
            expires_at: now + i64::from(secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_options_and_replies_parse() {
        let mac = [2, 0x42, 1, 2, 3, 4];
        let wire = encode(&message(7, mac, MessageType::Discover, None, None), "br-x").unwrap();
        // BOOTREQUEST, Ethernet, broadcast flag, the magic cookie, then DHCPDISCOVER first.
        assert_eq!((wire[0], wire[1], wire[10] & 0x80), (1, 1, 0x80));
        assert_eq!(&wire[28..34], &mac);
        assert_eq!(&wire[236..240], &[99, 130, 83, 99]);
        let back = v4::Message::from_bytes(&wire).unwrap();
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));

        // A server's ACK, built with the same encoder.
        let mut ack = message(7, mac, MessageType::Ack, None, None);
        ack.set_opcode(v4::Opcode::BootReply).set_yiaddr(Ipv4Addr::new(10, 9, 0, 50));
        let o = ack.opts_mut();
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 9, 0, 1)]));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 1)));
        o.insert(DhcpOption::AddressLeaseTime(120));
        let r = ack.to_vec().unwrap();
        let rep = parse(&r, 7, mac).unwrap();
        let l = lease_from(&rep, 1_000).unwrap();
        assert_eq!(l.address.to_string(), "10.9.0.50/24");
        assert_eq!(l.router, Some("10.9.0.1".parse().unwrap()));
        assert_eq!((l.obtained_unix, l.renew_at, l.expires_at), (1_000, 1_060, 1_120));
        assert!(parse(&r, 8, mac).is_none(), "another transaction's reply is ignored");
        assert!(parse(&wire, 7, mac).is_none(), "a request is no reply");
        assert!(parse(&r[..100], 7, mac).is_none(), "a cut message is ignored");
    }

    #[test]
    fn discover_waits_grow_and_stay_bounded() {
        let waits: Vec<u64> =
            (1..=DISCOVER_TRIES).map(|a| DISCOVER_WAITS.delay(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 6]);
    }
}
