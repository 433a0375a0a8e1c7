//! netd's own DHCPv4 client for segments with `address: dhcp`: a real exchange on the
//! segment's bridge (DISCOVER, OFFER, REQUEST, ACK; with a known address it first asks for it
//! again directly), the lease kept in `dhcp.json`. netd puts the address and the router's
//! default route on the bridge itself; `netd serve` renews at half the lease time and drops the
//! address when a lease runs out. The client asks for broadcast replies, so it needs no address
//! and no raw socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::engine::now_unix;
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

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

fn packet(
    xid: u32,
    mac: [u8; 6],
    kind: u8,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast replies: we have no address yet
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, kind]);
    p.extend_from_slice(&[61, 7, 1]);
    p.extend_from_slice(&mac);
    if let Some(a) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&a.octets());
    }
    if let Some(s) = server {
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&s.octets());
    }
    p.extend_from_slice(&[55, 4, 1, 3, 51, 54]);
    p.push(255);
    p
}

#[derive(Debug, Default)]
struct Reply {
    kind: u8,
    yiaddr: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    lease: Option<u32>,
}

fn parse(buf: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    if buf.len() < 240
        || buf[0] != 2
        || buf[4..8] != xid.to_be_bytes()
        || buf[28..34] != mac
        || buf[236..240] != [99, 130, 83, 99]
    {
        return None;
    }
    let ip = |b: &[u8]| -> Option<Ipv4Addr> {
        (b.len() >= 4).then(|| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    };
    let mut r = Reply { yiaddr: ip(&buf[16..20]), ..Reply::default() };
    let mut o = &buf[240..];
    while let Some(&code) = o.first() {
        if code == 255 {
            break;
        }
        if code == 0 {
            o = &o[1..];
            continue;
        }
        let len = *o.get(1)? as usize;
        let v = o.get(2..2 + len)?;
        match code {
            53 => r.kind = *v.first()?,
            1 => r.mask = ip(v),
            3 => r.router = ip(v),
            54 => r.server = ip(v),
            51 => r.lease = (v.len() >= 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            _ => {}
        }
        o = &o[2 + len..];
    }
    Some(r)
}

fn socket(ifname: &str) -> Result<UdpSocket> {
    let fail = |e: std::io::Error| {
        Error::kernel(format!("cannot open a DHCP client socket on {ifname}"), e)
    };
    // SAFETY: plain socket calls on a descriptor we own; the option values are valid.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own from here on.
    let sock: UdpSocket = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let set = |opt: libc::c_int, val: *const libc::c_void, len: usize| -> std::io::Result<()> {
        // SAFETY: setsockopt with a pointer and length that match.
        if unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, val, len as libc::socklen_t)
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4).map_err(fail)?;
    set(libc::SO_BROADCAST, (&one as *const libc::c_int).cast(), 4).map_err(fail)?;
    set(libc::SO_BINDTODEVICE, ifname.as_ptr().cast(), ifname.len()).map_err(fail)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 68u16.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: bind with a sockaddr_in of the right size.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(sock)
}

fn exchange(
    sock: &UdpSocket,
    ifname: &str,
    msg: &[u8],
    xid: u32,
    mac: [u8; 6],
    want: &[u8],
    wait: Duration,
) -> Result<Option<Reply>> {
    let dst = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    sock.send_to(msg, dst)
        .map_err(|e| Error::kernel(format!("cannot send a DHCP request on {ifname}"), e))?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    {
        sock.set_read_timeout(Some(left))
            .map_err(|e| Error::kernel("cannot set a DHCP timeout", e))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(r) = parse(&buf[..n], xid, mac)
                    && want.contains(&r.kind)
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

fn lease_from(r: &Reply) -> Option<Lease> {
    let addr = r.yiaddr?;
    let mask = r.mask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    let prefix = u32::from(mask).leading_ones() as u8;
    let secs = r.lease.unwrap_or(3600).max(30);
    let now = now_unix();
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

/// Gets a lease on `ifname` for `mac`: asks for the previous address first, then starts over.
pub fn obtain(ifname: &str, mac: [u8; 6], previous: Option<&Lease>) -> Result<Lease> {
    let sock = socket(ifname)?;
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ (now_unix() as u32);
    if let Some(IpNet::V4(prev)) = previous.map(|l| l.address) {
        let req = packet(xid, mac, REQUEST, Some(prev.addr()), None);
        if let Some(r) =
            exchange(&sock, ifname, &req, xid, mac, &[ACK, NAK], Duration::from_secs(2))?
            && r.kind == ACK
            && let Some(l) = lease_from(&r)
        {
            return Ok(l);
        }
    }
    for attempt in 0..3u64 {
        let wait = Duration::from_secs(2 + attempt * 2);
        let Some(offer) = exchange(
            &sock,
            ifname,
            &packet(xid, mac, DISCOVER, None, None),
            xid,
            mac,
            &[OFFER],
            wait,
        )?
        else {
            continue;
        };
        let req = packet(xid, mac, REQUEST, offer.yiaddr, offer.server);
        if let Some(r) = exchange(&sock, ifname, &req, xid, mac, &[ACK, NAK], wait)?
            && r.kind == ACK
            && let Some(l) = lease_from(&r)
        {
            return Ok(l);
        }
    }
    Err(Error::Rejected(format!("no DHCP server answered on {ifname} (3 tries)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_options_and_replies_parse() {
        let mac = [2, 0x42, 1, 2, 3, 4];
        let p = packet(7, mac, DISCOVER, None, None);
        assert_eq!(&p[236..243], &[99, 130, 83, 99, 53, 1, DISCOVER]);
        let mut r = p.clone();
        r[0] = 2;
        r[16..20].copy_from_slice(&[10, 9, 0, 50]);
        r.truncate(240);
        r.extend_from_slice(&[
            53, 1, ACK, 1, 4, 255, 255, 255, 0, 3, 4, 10, 9, 0, 1, 54, 4, 10, 9, 0, 1, 51, 4, 0, 0,
            0, 120, 255,
        ]);
        let rep = parse(&r, 7, mac).unwrap();
        let l = lease_from(&rep).unwrap();
        assert_eq!(l.address.to_string(), "10.9.0.50/24");
        assert_eq!(l.router, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(l.renew_at - l.obtained_unix, 60);
        assert!(parse(&r, 8, mac).is_none(), "another transaction's reply is ignored");
    }
}
