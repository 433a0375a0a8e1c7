//! A small synchronous netlink socket: one request, its acknowledgement or its dump, framed by
//! `netlink-packet-core` (`NetlinkMessage<T>`, `T` the family's messages: `netlink-packet-route`'s
//! for rtnetlink, [`NfMessage`] for nftables). Blocking on purpose: netd's kernel work runs on a
//! dedicated thread (or `spawn_blocking`), and a socket belongs to the network namespace of the
//! thread that opened it, which is how netd works inside another namespace without moving any
//! tokio worker.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlaBuffer, NlasIterator,
};
use netlink_sys::{Socket, SocketAddr};

pub struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Every message in one datagram that parses as `NetlinkMessage<T>`, in order. A message of
/// the family that this netd's crate cannot parse (a newer kernel's) is skipped, not fatal.
fn split<T: NetlinkDeserializable>(mut buf: &[u8]) -> Vec<NetlinkMessage<T>> {
    let mut out = Vec::new();
    while let Ok(b) = NetlinkBuffer::new_checked(buf) {
        let len = b.length() as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Ok(m) = NetlinkMessage::<T>::deserialize(&buf[..len]) {
            out.push(m);
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// What an acknowledgement or error says: `Ok` for an ACK, the errno otherwise.
fn ack(e: &netlink_packet_core::ErrorMessage) -> io::Result<()> {
    match e.code {
        None => Ok(()),
        Some(_) => Err(e.to_io()),
    }
}

impl NlSocket {
    /// Opens a socket for `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) in the calling
    /// thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Large batches (a thousand rules) and dumps need room; root may force the sizes, and
        // without the force the defaults still work for smaller stores.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(&sock, 8 << 20);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, 8 << 20);
        let _ = sock.set_ext_ack(true);
        Ok(NlSocket { sock, seq: 1, buf: vec![0; 1 << 20] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends bytes that are already netlink messages (an nftables batch).
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let n = self.sock.send(bytes, 0)?;
        if n != bytes.len() {
            return Err(io::Error::other("netlink message was sent only in part"));
        }
        Ok(())
    }

    fn send<T: NetlinkSerializable>(&mut self, msg: T, flags: u16) -> io::Result<u32> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut bytes = vec![0u8; m.buffer_len()];
        m.serialize(&mut bytes);
        self.send_raw(&bytes)?;
        Ok(seq)
    }

    /// Reads one datagram and splits it into messages.
    pub fn recv<T: NetlinkDeserializable>(
        &mut self,
        nonblocking: bool,
    ) -> io::Result<Vec<NetlinkMessage<T>>> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let n = {
            let mut slice = &mut self.buf[..];
            self.sock.recv(&mut slice, flags)?
        };
        Ok(split(&self.buf[..n.min(self.buf.len())]))
    }

    /// Sends one request with `NLM_F_ACK` and waits for its acknowledgement.
    pub fn request_ack<T>(&mut self, msg: T, flags: u16) -> io::Result<()>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        loop {
            for r in self.recv::<T>(false)? {
                if r.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = &r.payload {
                    return ack(e);
                }
            }
        }
    }

    /// Sends one request and returns its one answer (a GET by name or index).
    pub fn request<T>(&mut self, msg: T) -> io::Result<T>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, 0)?;
        loop {
            for r in self.recv::<T>(false)? {
                if r.header.sequence_number != seq {
                    continue;
                }
                match r.payload {
                    NetlinkPayload::InnerMessage(m) => return Ok(m),
                    NetlinkPayload::Error(e) => {
                        ack(&e)?;
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends a dump request and returns every message of the reply.
    pub fn dump<T>(&mut self, msg: T) -> io::Result<Vec<T>>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for r in self.recv::<T>(false)? {
                if r.header.sequence_number != seq {
                    continue;
                }
                match r.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        ack(&e)?;
                        return Ok(out);
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

/// An nftables message as bytes after the netlink header (its `nfgenmsg` and attributes), with
/// its type (`NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`). netd builds its batches with libnftnl
/// and reads the kernel's answers attribute by attribute ([`attrs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfMessage {
    pub ty: u16,
    pub body: Vec<u8>,
}

impl NfMessage {
    /// The attributes after the 4-byte `nfgenmsg`.
    pub fn attrs(&self) -> Vec<(u16, &[u8])> {
        attrs(self.body.get(4..).unwrap_or(&[]))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not an nftables message")]
pub struct NotNftables;

impl NetlinkSerializable for NfMessage {
    fn message_type(&self) -> u16 {
        self.ty
    }

    fn buffer_len(&self) -> usize {
        self.body.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.body);
    }
}

impl NetlinkDeserializable for NfMessage {
    type Error = NotNftables;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(NfMessage { ty: header.message_type, body: payload.to_vec() })
    }
}

/// Netlink attributes (type, value) of a payload, the nested and byte-order flags masked off.
pub fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    NlasIterator::new(buf)
        .map_while(Result::ok)
        .map(|a: NlaBuffer<&[u8]>| {
            let (kind, len) = (a.kind(), usize::from(a.length()));
            (kind, a.into_inner().get(4..len).unwrap_or(&[]))
        })
        .collect()
}

/// One attribute, as bytes to append to a message body.
pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    use netlink_packet_core::Emitable;
    let nla = netlink_packet_core::DefaultNla::new(kind, value.to_vec());
    let mut out = vec![0u8; nla.buffer_len()];
    nla.emit(&mut out);
    out
}

pub fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

pub fn be_u32(v: &[u8]) -> u32 {
    netlink_packet_core::parse_u32_be(v).unwrap_or(0)
}

pub fn be_u64(v: &[u8]) -> u64 {
    netlink_packet_core::parse_u64_be(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_messages_split() {
        let mut body = vec![1, 0, 0, 0];
        body.extend(attr(1, b"backroom\0"));
        body.extend(attr(3, &7u64.to_be_bytes()));
        let m = NfMessage { ty: (10 << 8) | 7, body };
        let a = m.attrs();
        assert_eq!(cstr(a[0].1), "backroom");
        assert_eq!((a[1].0, be_u64(a[1].1)), (3, 7));
        let mut header = NetlinkHeader::default();
        header.sequence_number = 9;
        let mut wire = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m.clone()));
        wire.finalize();
        let mut bytes = vec![0u8; wire.buffer_len() * 2];
        wire.serialize(&mut bytes[..wire.buffer_len()]);
        let n = wire.buffer_len();
        bytes.copy_within(0..n, n);
        let got = split::<NfMessage>(&bytes);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].header.sequence_number, 9);
        assert!(matches!(&got[0].payload, NetlinkPayload::InnerMessage(x) if *x == m));
        assert!(split::<NfMessage>(&bytes[..10]).is_empty(), "a cut datagram yields nothing");
    }
}
