//! nftables in the kernel: the [`Firewall`] trait, its netlink implementation, and an
//! in-memory one for unit tests. Read-back is what lets a second apply write nothing: every rule
//! netd writes carries a comment with a digest of its text, so comparing the kernel's chains and
//! rule comments with the desired ones tells whether anything differs.

use std::collections::HashMap;
use std::io;

use netlink_packet_core::NetlinkPayload;

use super::batch::{self, CounterSeed};
use super::ruleset::{Family, Hook, Ruleset, TABLE};
use crate::error::{Error, Result};
use crate::nl::{self, NfMessage, NlSocket};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETOBJ: u16 = 19;

/// A chain as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenChain {
    pub name: String,
    /// (hook number, priority) of a base chain.
    pub hook: Option<(u32, i32)>,
}

/// A rule as the kernel holds it: where it is, its handle and its comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRule {
    pub chain: String,
    pub handle: u64,
    pub comment: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenTable {
    pub chains: Vec<SeenChain>,
    pub rules: Vec<SeenRule>,
}

/// What netd's two tables hold now (`None`: the table does not exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub inet: Option<SeenTable>,
    pub bridge: Option<SeenTable>,
}

impl Seen {
    pub fn table(&self, f: Family) -> Option<&SeenTable> {
        match f {
            Family::Inet => self.inet.as_ref(),
            Family::Bridge => self.bridge.as_ref(),
        }
    }

    pub fn handles(&self) -> Vec<u64> {
        let mut v: Vec<u64> = [&self.inet, &self.bridge]
            .into_iter()
            .flatten()
            .flat_map(|t| t.rules.iter().map(|r| r.handle))
            .collect();
        v.sort_unstable();
        v
    }
}

/// What the kernel's nftables can do beyond the basics (probed once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `ct state` works in the bridge family (nf_conntrack_bridge).
    pub bridge_conntrack: bool,
    /// `reject` works in the bridge family.
    pub bridge_reject: bool,
}

pub trait Firewall {
    fn read(&mut self) -> Result<Seen>;
    /// Replaces netd's tables with `rs` in one transaction.
    fn replace(&mut self, rs: &Ruleset, seed: &CounterSeed) -> Result<()>;
    /// Deletes netd's tables that exist.
    fn delete(&mut self) -> Result<Vec<String>>;
    /// Named counters: (family, name) → (packets, bytes).
    fn counters(&mut self) -> Result<CounterSeed>;
    fn caps(&mut self) -> Result<Caps>;
}

/// What differs between the desired ruleset and the kernel's, one sentence per difference.
pub fn differences(rs: &Ruleset, seen: &Seen) -> Vec<String> {
    let mut out = Vec::new();
    for t in &rs.tables {
        let fam = t.family.as_str();
        let Some(s) = seen.table(t.family) else {
            out.push(format!("table {fam} {TABLE} is missing"));
            continue;
        };
        for c in &t.chains {
            let want_hook = c.base.map(|b| (hook_number(b.hook), b.priority));
            match s.chains.iter().find(|x| x.name == c.name) {
                None => out.push(format!("chain {fam} {TABLE} {} is missing", c.name)),
                Some(x) if x.hook != want_hook => {
                    out.push(format!("chain {fam} {TABLE} {} has another hook", c.name));
                }
                Some(_) => {}
            }
            let want: Vec<String> = c.rules.iter().map(|r| r.comment(&c.name)).collect();
            let have: Vec<&str> =
                s.rules.iter().filter(|r| r.chain == c.name).map(|r| r.comment.as_str()).collect();
            if want.len() != have.len() || want.iter().zip(&have).any(|(a, b)| a != b) {
                let foreign = have.iter().filter(|h| !want.iter().any(|w| w == *h)).count();
                let missing = want.iter().filter(|w| !have.contains(&w.as_str())).count();
                out.push(format!(
                    "chain {fam} {TABLE} {} differs: {missing} rule(s) missing, {foreign} rule(s) not netd's, {} expected, {} present",
                    c.name,
                    want.len(),
                    have.len()
                ));
            }
        }
        for x in &s.chains {
            if t.chain(&x.name).is_none() {
                out.push(format!("chain {fam} {TABLE} {} is not netd's", x.name));
            }
        }
    }
    out
}

pub fn hook_number(h: Hook) -> u32 {
    match h {
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

/// nftables through netlink, in the namespace of the thread that made it.
pub struct NetlinkFirewall {
    sock: NlSocket,
    caps: Option<Caps>,
}

impl NetlinkFirewall {
    pub fn open() -> Result<NetlinkFirewall> {
        let sock = NlSocket::open(NETLINK_NETFILTER)
            .map_err(|e| Error::kernel("cannot open a netfilter netlink socket", e))?;
        Ok(NetlinkFirewall { sock, caps: None })
    }

    fn dump(
        &mut self,
        msg: u16,
        family: Family,
        table_attr: Option<u16>,
    ) -> io::Result<Vec<NfMessage>> {
        // nfgenmsg: family, version 0, resource id 0.
        let mut body = vec![nfproto(family), 0, 0, 0];
        if let Some(a) = table_attr {
            body.extend(nl::attr(a, b"backroom\0"));
        }
        match self.sock.dump(NfMessage { ty: (NFNL_SUBSYS_NFTABLES << 8) | msg, body }) {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn read_table(&mut self, family: Family) -> io::Result<Option<SeenTable>> {
        let mut t = SeenTable::default();
        let mut exists = false;
        for m in self.dump(NFT_MSG_GETCHAIN, family, Some(1))? {
            let mut table = String::new();
            let mut c = SeenChain { name: String::new(), hook: None };
            for (ty, v) in m.attrs() {
                match ty {
                    1 => table = nl::cstr(v),
                    3 => c.name = nl::cstr(v),
                    4 => {
                        let mut num = 0;
                        let mut prio = 0;
                        for (hty, hv) in nl::attrs(v) {
                            match hty {
                                1 => num = nl::be_u32(hv),
                                2 => prio = nl::be_u32(hv) as i32,
                                _ => {}
                            }
                        }
                        c.hook = Some((num, prio));
                    }
                    _ => {}
                }
            }
            if table == TABLE {
                exists = true;
                t.chains.push(c);
            }
        }
        for m in self.dump(NFT_MSG_GETRULE, family, Some(1))? {
            let mut table = String::new();
            let mut r = SeenRule { chain: String::new(), handle: 0, comment: String::new() };
            for (ty, v) in m.attrs() {
                match ty {
                    1 => table = nl::cstr(v),
                    2 => r.chain = nl::cstr(v),
                    3 => r.handle = nl::be_u64(v),
                    7 => r.comment = udata_comment(v),
                    _ => {}
                }
            }
            if table == TABLE {
                exists = true;
                t.rules.push(r);
            }
        }
        if !exists {
            // A table with no chains: ask for its counters to tell it from a missing one.
            exists = !self.dump(NFT_MSG_GETOBJ, family, Some(1))?.is_empty()
                || self.table_exists(family)?;
        }
        Ok(exists.then_some(t))
    }

    fn table_exists(&mut self, family: Family) -> io::Result<bool> {
        // NFT_MSG_GETTABLE = 1; NFTA_TABLE_NAME = 1
        for m in self.dump(1, family, None)? {
            for (ty, v) in m.attrs() {
                if ty == 1 && nl::cstr(v) == TABLE {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn send_batch(&mut self, b: &nftnl::FinalizedBatch, what: &str) -> Result<()> {
        let mut bytes = Vec::new();
        for part in b {
            bytes.extend_from_slice(part);
        }
        self.sock
            .send_raw(&bytes)
            .map_err(|e| Error::kernel(format!("cannot send the nftables batch that {what}"), e))?;
        // The kernel handles a batch inside the send: every reply is queued when it returns.
        let mut failures = Vec::new();
        loop {
            match self.sock.recv::<NfMessage>(true) {
                Ok(replies) => {
                    for r in replies {
                        if let NetlinkPayload::Error(e) = &r.payload
                            && e.code.is_some()
                        {
                            failures.push((r.header.sequence_number, e.to_io()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(Error::kernel(
                        format!("cannot read the kernel's answer to the batch that {what}"),
                        e,
                    ));
                }
            }
        }
        match failures.into_iter().next() {
            None => Ok(()),
            Some((seq, e)) => Err(Error::kernel(
                format!(
                    "the kernel refused the nftables batch that {what} (message {seq} of the batch; nothing of it was applied)"
                ),
                e,
            )),
        }
    }

    fn probe(&mut self, rule: crate::nft::ruleset::Rule) -> bool {
        use crate::nft::ruleset::{BaseHook, Chain, Table};
        // A throwaway table with one base chain on the forward hook, deleted right after.
        let mut t = Table::new(Family::Bridge);
        t.chains.push(Chain {
            name: "probe".into(),
            base: Some(BaseHook { hook: Hook::Forward, nat: false, priority: 0 }),
            rules: vec![rule],
        });
        let ok = self.send_batch(&batch::probe_batch(&t), "probes the kernel").is_ok();
        let _ = self.send_batch(&batch::probe_cleanup(Family::Bridge), "removes the probe table");
        ok
    }
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Inet => libc::NFPROTO_INET as u8,
        Family::Bridge => libc::NFPROTO_BRIDGE as u8,
    }
}

/// The comment inside a rule's userdata (nft's TLV format: type 0 is the comment).
fn udata_comment(mut v: &[u8]) -> String {
    while v.len() >= 2 {
        let (ty, len) = (v[0], v[1] as usize);
        let Some(val) = v.get(2..2 + len) else { break };
        if ty == 0 {
            return nl::cstr(val);
        }
        v = &v[2 + len..];
    }
    String::new()
}

impl Firewall for NetlinkFirewall {
    fn read(&mut self) -> Result<Seen> {
        let rd = |s: &mut Self, f: Family| {
            s.read_table(f)
                .map_err(|e| Error::kernel(format!("cannot read table {} {TABLE}", f.as_str()), e))
        };
        Ok(Seen { inet: rd(self, Family::Inet)?, bridge: rd(self, Family::Bridge)? })
    }

    fn replace(&mut self, rs: &Ruleset, seed: &CounterSeed) -> Result<()> {
        let b = batch::replace(rs, seed);
        let names: Vec<String> =
            rs.tables.iter().map(|t| format!("{} {TABLE}", t.family.as_str())).collect();
        self.send_batch(&b, &format!("replaces table(s) {}", names.join(" and ")))
    }

    fn delete(&mut self) -> Result<Vec<String>> {
        let seen = self.read()?;
        let mut fams = Vec::new();
        if seen.inet.is_some() {
            fams.push(Family::Inet);
        }
        if seen.bridge.is_some() {
            fams.push(Family::Bridge);
        }
        if fams.is_empty() {
            return Ok(Vec::new());
        }
        self.send_batch(&batch::delete(&fams), "deletes netd's tables")?;
        Ok(fams.iter().map(|f| format!("table {} {TABLE}", f.as_str())).collect())
    }

    fn counters(&mut self) -> Result<CounterSeed> {
        let mut out = HashMap::new();
        for f in [Family::Inet, Family::Bridge] {
            let msgs = self.dump(NFT_MSG_GETOBJ, f, Some(1)).map_err(|e| {
                Error::kernel(
                    format!("cannot read the counters of table {} {TABLE}", f.as_str()),
                    e,
                )
            })?;
            for m in msgs {
                let (mut table, mut name, mut pk, mut by) = (String::new(), String::new(), 0, 0);
                for (ty, v) in m.attrs() {
                    match ty {
                        1 => table = nl::cstr(v),
                        2 => name = nl::cstr(v),
                        4 => {
                            for (cty, cv) in nl::attrs(v) {
                                match cty {
                                    1 => by = nl::be_u64(cv),
                                    2 => pk = nl::be_u64(cv),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if table == TABLE {
                    out.insert((f, name), (pk, by));
                }
            }
        }
        Ok(out)
    }

    fn caps(&mut self) -> Result<Caps> {
        use crate::nft::ruleset::{Match, Rule, Verdict};
        if let Some(c) = self.caps {
            return Ok(c);
        }
        let c = Caps {
            bridge_conntrack: self.probe(Rule::new(
                "probe",
                vec![Match::CtEstablished],
                Verdict::Accept,
            )),
            bridge_reject: self.probe(Rule::new("probe", vec![], Verdict::Reject)),
        };
        self.caps = Some(c);
        Ok(c)
    }
}

/// nftables as a value, for unit tests of the layers above.
#[derive(Default)]
pub struct MemFirewall {
    pub tables: Option<Ruleset>,
    pub writes: usize,
    pub caps: Option<Caps>,
    next_handle: u64,
    handles: Vec<u64>,
}

impl Firewall for MemFirewall {
    fn read(&mut self) -> Result<Seen> {
        let mut seen = Seen::default();
        let mut h = self.handles.iter();
        if let Some(rs) = &self.tables {
            for t in &rs.tables {
                let mut st = SeenTable::default();
                for c in &t.chains {
                    st.chains.push(SeenChain {
                        name: c.name.clone(),
                        hook: c.base.map(|b| (hook_number(b.hook), b.priority)),
                    });
                    for r in &c.rules {
                        st.rules.push(SeenRule {
                            chain: c.name.clone(),
                            handle: h.next().copied().unwrap_or(0),
                            comment: r.comment(&c.name),
                        });
                    }
                }
                match t.family {
                    Family::Inet => seen.inet = Some(st),
                    Family::Bridge => seen.bridge = Some(st),
                }
            }
        }
        Ok(seen)
    }

    fn replace(&mut self, rs: &Ruleset, _seed: &CounterSeed) -> Result<()> {
        self.writes += 1;
        self.handles = (0..rs.rule_count())
            .map(|_| {
                self.next_handle += 1;
                self.next_handle
            })
            .collect();
        self.tables = Some(rs.clone());
        Ok(())
    }

    fn delete(&mut self) -> Result<Vec<String>> {
        self.writes += 1;
        Ok(self
            .tables
            .take()
            .map(|rs| {
                rs.tables.iter().map(|t| format!("table {} {TABLE}", t.family.as_str())).collect()
            })
            .unwrap_or_default())
    }

    fn counters(&mut self) -> Result<CounterSeed> {
        Ok(HashMap::new())
    }

    fn caps(&mut self) -> Result<Caps> {
        Ok(self.caps.unwrap_or(Caps { bridge_conntrack: false, bridge_reject: false }))
    }
}
