//! Lowers a [`Ruleset`] to one nftables transaction (libnftnl messages in an `nftnl::Batch`):
//! for each table, add it, delete it, add it again, then its counters, chains and rules. The
//! kernel applies the whole batch or none of it.

use std::ffi::{CStr, CString, c_void};
use std::net::IpAddr;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, FinalizedBatch, MsgType, NlMsg, ProtoFamily};

use super::ruleset::{Chain, Family, Hook, L3, L4, Match, Rule, Ruleset, TABLE, Table, Verdict};

const REG1: u32 = libc::NFT_REG_1 as u32;

/// An nftables expression built from its libnftnl name and attributes.
struct Raw {
    name: &'static CStr,
    attrs: Vec<(u32, Val)>,
}

enum Val {
    U32(u32),
    Str(CString),
    Data(Vec<u8>),
}

impl Raw {
    fn new(name: &'static CStr) -> Raw {
        Raw { name, attrs: Vec::new() }
    }

    fn u32(mut self, attr: u32, v: u32) -> Raw {
        self.attrs.push((attr, Val::U32(v)));
        self
    }

    fn str(mut self, attr: u32, v: &str) -> Raw {
        // Names come from validated profile text and netd's own labels: no NUL inside.
        let c = CString::new(v.replace('\0', "")).unwrap_or_default();
        self.attrs.push((attr, Val::Str(c)));
        self
    }

    fn data(mut self, attr: u32, v: Vec<u8>) -> Raw {
        self.attrs.push((attr, Val::Data(v)));
        self
    }
}

impl Expression for Raw {
    fn to_expr(&self, _rule: &nftnl::Rule<'_>) -> NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl copies every attribute value; the pointers live across each call.
        unsafe {
            let Some(e) = NonNull::new(sys::nftnl_expr_alloc(self.name.as_ptr())) else {
                std::process::abort();
            };
            for (attr, v) in &self.attrs {
                let attr = *attr as u16;
                match v {
                    Val::U32(x) => sys::nftnl_expr_set_u32(e.as_ptr(), attr, *x),
                    Val::Str(s) => {
                        sys::nftnl_expr_set_str(e.as_ptr(), attr, s.as_ptr());
                    }
                    Val::Data(d) => {
                        sys::nftnl_expr_set(
                            e.as_ptr(),
                            attr,
                            d.as_ptr() as *const c_void,
                            d.len() as u32,
                        );
                    }
                }
            }
            e
        }
    }
}

fn meta(key: i32) -> Raw {
    Raw::new(c"meta").u32(sys::NFTNL_EXPR_META_KEY, key as u32).u32(sys::NFTNL_EXPR_META_DREG, REG1)
}

fn payload(base: i32, offset: u32, len: u32) -> Raw {
    Raw::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, REG1)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base as u32)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

fn cmp(op: i32, data: Vec<u8>) -> Raw {
    Raw::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, REG1)
        .u32(sys::NFTNL_EXPR_CMP_OP, op as u32)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

fn bitwise(mask: Vec<u8>) -> Raw {
    let xor = vec![0u8; mask.len()];
    Raw::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG1)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG1)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .data(sys::NFTNL_EXPR_BITWISE_XOR, xor)
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The expressions that check one match.
fn lower_match(m: &Match, family: Family, out: &mut Vec<Raw>) {
    use libc::{
        NFT_CMP_EQ as EQ, NFT_CMP_GTE as GTE, NFT_CMP_LTE as LTE, NFT_CMP_NEQ as NEQ,
        NFT_PAYLOAD_NETWORK_HEADER as NET, NFT_PAYLOAD_TRANSPORT_HEADER as TH,
    };
    let ethertype = |l3: L3| -> Vec<u8> {
        match l3 {
            L3::V4 => 0x0800u16.to_be_bytes().to_vec(),
            L3::V6 => 0x86ddu16.to_be_bytes().to_vec(),
        }
    };
    let mut addr = |net: &ipnet::IpNet, src: bool, op: i32| {
        let (off, len) = match (net.addr(), src) {
            (IpAddr::V4(_), true) => (12, 4),
            (IpAddr::V4(_), false) => (16, 4),
            (IpAddr::V6(_), true) => (8, 16),
            (IpAddr::V6(_), false) => (24, 16),
        };
        out.push(payload(NET, off, len));
        if net.prefix_len() != net.max_prefix_len() {
            out.push(bitwise(addr_bytes(net.netmask())));
        }
        out.push(cmp(op, addr_bytes(net.trunc().addr())));
    };
    match m {
        Match::IifName(n) => {
            out.push(meta(libc::NFT_META_IIFNAME));
            out.push(cmp(EQ, ifname(n)));
        }
        Match::IifPrefix(p) => {
            // Compares only the prefix's bytes (no terminating NUL): a wildcard.
            out.push(meta(libc::NFT_META_IIFNAME));
            out.push(cmp(EQ, p.as_bytes().to_vec()));
        }
        Match::OifName(n) => {
            out.push(meta(libc::NFT_META_OIFNAME));
            out.push(cmp(EQ, ifname(n)));
        }
        Match::Proto(l3) if family == Family::Inet => {
            out.push(meta(libc::NFT_META_NFPROTO));
            let v = match l3 {
                L3::V4 => libc::NFPROTO_IPV4,
                L3::V6 => libc::NFPROTO_IPV6,
            };
            out.push(cmp(EQ, vec![v as u8]));
        }
        Match::Proto(l3) => {
            out.push(payload(libc::NFT_PAYLOAD_LL_HEADER, 12, 2));
            out.push(cmp(EQ, ethertype(*l3)));
        }
        Match::NotIp => {
            out.push(payload(libc::NFT_PAYLOAD_LL_HEADER, 12, 2));
            out.push(cmp(NEQ, ethertype(L3::V4)));
            out.push(cmp(NEQ, ethertype(L3::V6)));
        }
        Match::Src(n) => addr(n, true, EQ),
        Match::Dst(n) => addr(n, false, EQ),
        Match::NotSrc(n) => addr(n, true, NEQ),
        Match::NotDst(n) => addr(n, false, NEQ),
        Match::L4(p) => {
            out.push(meta(libc::NFT_META_L4PROTO));
            out.push(cmp(EQ, vec![p.number()]));
        }
        Match::NotL4(p) => {
            out.push(meta(libc::NFT_META_L4PROTO));
            out.push(cmp(NEQ, vec![p.number()]));
        }
        Match::Sport(lo, hi) | Match::Dport(lo, hi) => {
            let off = if matches!(m, Match::Sport(..)) { 0 } else { 2 };
            out.push(payload(TH, off, 2));
            if lo == hi {
                out.push(cmp(EQ, lo.to_be_bytes().to_vec()));
            } else {
                out.push(cmp(GTE, lo.to_be_bytes().to_vec()));
                out.push(cmp(LTE, hi.to_be_bytes().to_vec()));
            }
        }
        Match::TcpNotSyn => {
            out.push(payload(TH, 13, 1));
            out.push(bitwise(vec![0x12]));
            out.push(cmp(NEQ, vec![0x02]));
        }
        Match::CtEstablished => {
            out.push(
                Raw::new(c"ct")
                    .u32(sys::NFTNL_EXPR_CT_KEY, libc::NFT_CT_STATE as u32)
                    .u32(sys::NFTNL_EXPR_CT_DREG, REG1),
            );
            // ESTABLISHED (bit 1) | RELATED (bit 2), host byte order as the kernel keeps it.
            out.push(bitwise(6u32.to_ne_bytes().to_vec()));
            out.push(cmp(NEQ, 0u32.to_ne_bytes().to_vec()));
        }
    }
}

fn verdict(code: i32) -> Raw {
    Raw::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_VERDICT as u32)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32)
}

/// The expressions of a whole rule, the verdict last. A reject becomes a TCP reset rule for
/// TCP plus an ICMP(x) one for the rest, as `nft`'s bare `reject` does.
fn lower_rule(r: &Rule, family: Family) -> Vec<Vec<Raw>> {
    let mut base = Vec::new();
    for m in &r.matches {
        lower_match(m, family, &mut base);
    }
    if let Some(c) = &r.counter {
        base.push(
            Raw::new(c"objref")
                .u32(sys::NFTNL_EXPR_OBJREF_IMM_TYPE, 1) // NFT_OBJECT_COUNTER
                .str(sys::NFTNL_EXPR_OBJREF_IMM_NAME, c),
        );
    }
    match &r.verdict {
        Verdict::Accept => base.push(verdict(libc::NF_ACCEPT)),
        Verdict::Drop => base.push(verdict(libc::NF_DROP)),
        Verdict::Jump(c) => {
            base.push(verdict(libc::NFT_JUMP).str(sys::NFTNL_EXPR_IMM_CHAIN, c));
        }
        Verdict::Masquerade => base.push(Raw::new(c"masq")),
        Verdict::Reject => {
            // NFT_REJECT_ICMPX_UNREACH = 2, NFT_REJECT_ICMPX_ADMIN_PROHIBITED = 3
            base.push(
                Raw::new(c"reject")
                    .u32(sys::NFTNL_EXPR_REJECT_TYPE, 2)
                    .u32(sys::NFTNL_EXPR_REJECT_CODE, 3),
            );
        }
    }
    vec![base]
}

fn proto_family(f: Family) -> ProtoFamily {
    match f {
        Family::Inet => ProtoFamily::Inet,
        Family::Bridge => ProtoFamily::Bridge,
    }
}

/// A named counter object (`NFT_MSG_NEWOBJ`), which the nftnl crate has no wrapper for.
struct CounterObj {
    table: CString,
    name: CString,
    family: u16,
    packets: u64,
    bytes: u64,
}

// SAFETY: `write` builds one message into a buffer the batch sized for the largest message.
unsafe impl NlMsg for CounterObj {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWOBJ, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELOBJ, libc::NLM_F_ACK),
        };
        // SAFETY: per the trait contract `buf` is large enough; the object is freed below.
        unsafe {
            let obj = sys::nftnl_obj_alloc();
            if obj.is_null() {
                std::process::abort();
            }
            sys::nftnl_obj_set_str(obj, sys::NFTNL_OBJ_TABLE as u16, self.table.as_ptr());
            sys::nftnl_obj_set_str(obj, sys::NFTNL_OBJ_NAME as u16, self.name.as_ptr());
            sys::nftnl_obj_set_u32(obj, sys::NFTNL_OBJ_TYPE as u16, 1);
            sys::nftnl_obj_set_u32(obj, sys::NFTNL_OBJ_FAMILY as u16, u32::from(self.family));
            sys::nftnl_obj_set_u64(obj, sys::NFTNL_OBJ_CTR_PKTS as u16, self.packets);
            sys::nftnl_obj_set_u64(obj, sys::NFTNL_OBJ_CTR_BYTES as u16, self.bytes);
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf as *mut libc::c_char,
                ty as u16,
                self.family,
                flags as u16,
                seq,
            );
            sys::nftnl_obj_nlmsg_build_payload(nlh, obj);
            sys::nftnl_obj_free(obj);
        }
    }
}

/// Counter values to carry over into the new tables: (family, name) → (packets, bytes).
pub type CounterSeed = std::collections::HashMap<(Family, String), (u64, u64)>;

/// One batch that replaces both tables with `rs`.
pub fn replace(rs: &Ruleset, seed: &CounterSeed) -> FinalizedBatch {
    let mut batch = Batch::new();
    for t in &rs.tables {
        add_table(&mut batch, t, seed);
    }
    batch.finalize()
}

/// One batch that deletes the named tables (those that exist: deleting a missing table fails).
pub fn delete(families: &[Family]) -> FinalizedBatch {
    let mut batch = Batch::new();
    for f in families {
        let table = nftnl::Table::new(c_name(TABLE), proto_family(*f));
        batch.add(&table, MsgType::Del);
    }
    batch.finalize()
}

fn c_name(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// One batch that adds table `backroom_probe` with `t`'s chains and rules. (Deleting it in the
/// same batch would skip the kernel's hook validation of the rules: see [`probe_cleanup`].)
pub fn probe_batch(t: &Table) -> FinalizedBatch {
    let mut batch = Batch::new();
    let table = nftnl::Table::new(c"backroom_probe", proto_family(t.family));
    batch.add(&table, MsgType::Add);
    let chains: Vec<nftnl::Chain<'_>> = t.chains.iter().map(|c| make_chain(&table, c)).collect();
    for ch in &chains {
        batch.add(ch, MsgType::Add);
    }
    for (spec, ch) in t.chains.iter().zip(&chains) {
        add_rules(&mut batch, ch, spec, t.family);
    }
    batch.finalize()
}

/// Deletes table `backroom_probe` (adding it first, so the batch never fails on its absence).
pub fn probe_cleanup(family: Family) -> FinalizedBatch {
    let mut batch = Batch::new();
    let table = nftnl::Table::new(c"backroom_probe", proto_family(family));
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.finalize()
}

fn add_table(batch: &mut Batch, t: &Table, seed: &CounterSeed) {
    let table = nftnl::Table::new(c_name(TABLE), proto_family(t.family));
    // Add first so the delete never fails on a missing table; then start from empty.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    for c in &t.counters {
        let (packets, bytes) = seed.get(&(t.family, c.clone())).copied().unwrap_or((0, 0));
        let obj = CounterObj {
            table: c_name(TABLE),
            name: c_name(c),
            family: proto_family(t.family) as u16,
            packets,
            bytes,
        };
        batch.add(&obj, MsgType::Add);
    }
    let chains: Vec<nftnl::Chain<'_>> = t.chains.iter().map(|c| make_chain(&table, c)).collect();
    for ch in &chains {
        batch.add(ch, MsgType::Add);
    }
    for (spec, ch) in t.chains.iter().zip(&chains) {
        add_rules(batch, ch, spec, t.family);
    }
}

fn make_chain<'a>(table: &'a nftnl::Table, c: &Chain) -> nftnl::Chain<'a> {
    let mut ch = nftnl::Chain::new(c_name(&c.name), table);
    if let Some(b) = c.base {
        let hook = match b.hook {
            Hook::Input => nftnl::Hook::In,
            Hook::Forward => nftnl::Hook::Forward,
            Hook::Output => nftnl::Hook::Out,
            Hook::Postrouting => nftnl::Hook::PostRouting,
        };
        ch.set_hook(hook, b.priority);
        ch.set_type(if b.nat { nftnl::ChainType::Nat } else { nftnl::ChainType::Filter });
        ch.set_policy(nftnl::Policy::Accept);
    }
    ch
}

fn add_rules(batch: &mut Batch, ch: &nftnl::Chain<'_>, spec: &Chain, family: Family) {
    for r in &spec.rules {
        for exprs in lower_rule(r, family) {
            let mut rule = nftnl::Rule::new(ch);
            for e in &exprs {
                rule.add_expr(e);
            }
            // `comment` fits libnftnl's limit by construction, and is what a read-back compares.
            let _ = rule.set_comment(c_name(&r.comment(&spec.name)));
            batch.add(&rule, MsgType::Add);
        }
    }
}

/// The L4 protocols an ICMP port spec stands for, per address family.
pub fn icmp_for(l3: L3) -> L4 {
    match l3 {
        L3::V4 => L4::Icmp,
        L3::V6 => L4::Icmpv6,
    }
}
