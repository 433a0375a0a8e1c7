//! A small synchronous netlink socket: one request, its acknowledgement or its dump. Blocking on
//! purpose: netd's kernel work runs on a dedicated thread (or `spawn_blocking`), and a socket
//! belongs to the network namespace of the thread that opened it, which is how netd works inside
//! another namespace without moving any tokio worker.

use std::io;

use netlink_sys::{Socket, SocketAddr};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;

pub struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// One message of a reply: its type, flags, sequence number and payload (after the header).
pub struct Reply {
    pub ty: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket for `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) in the calling
    /// thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Large batches (a thousand rules) and dumps need room; root may force the sizes.
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            let size: libc::c_int = 8 << 20;
            // SAFETY: a plain setsockopt on a socket we own, with a c_int value.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let _ = sock.set_ext_ack(true);
        Ok(NlSocket { sock, seq: 1, buf: vec![0; 1 << 20] })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let n = self.sock.send(bytes, 0)?;
        if n != bytes.len() {
            return Err(io::Error::other("netlink message was sent only in part"));
        }
        Ok(())
    }

    /// Reads one datagram and splits it into messages.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<Vec<Reply>> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let n = {
            let mut slice = &mut self.buf[..];
            self.sock.recv(&mut slice, flags)?
        };
        Ok(split(&self.buf[..n]))
    }

    /// Sends one request with `NLM_F_ACK` and waits for its acknowledgement.
    pub fn request_ack(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&message(ty, flags | NLM_F_REQUEST | NLM_F_ACK, seq, payload))?;
        loop {
            for r in self.recv(false)? {
                if r.seq != seq {
                    continue;
                }
                if r.ty == NLMSG_ERROR {
                    return match error_code(&r.payload) {
                        0 => Ok(()),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
            }
        }
    }

    /// Sends one request and returns the payload of its one answer (a GET by name or index).
    pub fn request(&mut self, ty: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
        let seq = self.next_seq();
        self.send(&message(ty, NLM_F_REQUEST, seq, payload))?;
        loop {
            for r in self.recv(false)? {
                if r.seq != seq {
                    continue;
                }
                if r.ty == NLMSG_ERROR {
                    let code = error_code(&r.payload);
                    return Err(io::Error::from_raw_os_error(if code == 0 {
                        libc::EIO
                    } else {
                        -code
                    }));
                }
                return Ok(r.payload);
            }
        }
    }

    /// Sends a dump request and returns every message of the reply.
    pub fn dump(&mut self, ty: u16, payload: &[u8]) -> io::Result<Vec<Reply>> {
        let seq = self.next_seq();
        self.send(&message(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, payload))?;
        let mut out = Vec::new();
        loop {
            for r in self.recv(false)? {
                if r.seq != seq {
                    continue;
                }
                match r.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match error_code(&r.payload) {
                        0 => return Ok(out),
                        code => return Err(io::Error::from_raw_os_error(-code)),
                    },
                    _ => out.push(r),
                }
            }
        }
    }
}

impl std::os::fd::AsRawFd for NlSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

/// The errno (negative) of an `NLMSG_ERROR` payload; 0 is an acknowledgement.
pub fn error_code(payload: &[u8]) -> i32 {
    payload.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-libc::EIO)
}

pub fn is_error(r: &Reply) -> bool {
    r.ty == NLMSG_ERROR
}

/// A netlink message: header and payload.
pub fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut v = Vec::with_capacity(align(len));
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align(len), 0);
    v
}

fn split(mut buf: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        out.push(Reply { ty, seq, payload: buf[16..len].to_vec() });
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

pub fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes (type, value) of a payload, nested flag bits masked off.
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

/// Appends one attribute to `out`.
pub fn put_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align(out.len()), 0);
}

pub fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

pub fn be_u32(v: &[u8]) -> u32 {
    v.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
}

pub fn be_u64(v: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(b) = v.get(..8) {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}
