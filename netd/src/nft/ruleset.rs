//! The firewall as plain data: tables, chains, named counters and rules made of a small set of
//! matches. It renders to `nft` text (for `netd plan`, the benchmark's baseline and humans) and
//! is lowered to nftables netlink expressions in `batch.rs`. Nothing here talks to the kernel.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// The name of both of netd's tables (`inet backroom`, `bridge backroom`).
pub const TABLE: &str = "backroom";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A base chain's hook; regular chains have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHook {
    pub hook: Hook,
    pub nat: bool,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

/// L3 protocol of an address match: decides which header offsets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    V4,
    V6,
}

impl L3 {
    pub fn of(addr: IpAddr) -> L3 {
        match addr {
            IpAddr::V4(_) => L3::V4,
            IpAddr::V6(_) => L3::V6,
        }
    }

    fn word(self) -> &'static str {
        match self {
            L3::V4 => "ip",
            L3::V6 => "ip6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Icmp => 1,
            L4::Icmpv6 => 58,
        }
    }

    fn word(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Icmp => "icmp",
            L4::Icmpv6 => "ipv6-icmp",
        }
    }
}

/// One condition of a rule. All matches of a rule must hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    IifName(String),
    /// The input interface's name begins with this (nft's `iifname "bkt*"`).
    IifPrefix(String),
    OifName(String),
    /// The packet is of this L3 protocol (`meta nfproto` in inet, `ether type` in bridge).
    Proto(L3),
    /// Not IPv4 and not IPv6 (ARP and friends in the bridge family).
    NotIp,
    Src(IpNet),
    Dst(IpNet),
    NotSrc(IpNet),
    NotDst(IpNet),
    L4(L4),
    NotL4(L4),
    Sport(u16, u16),
    Dport(u16, u16),
    /// A TCP segment that is not a bare SYN: replies and later segments, never an opening.
    TcpNotSyn,
    CtEstablished,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Accept,
    Drop,
    /// TCP reset for TCP, ICMP administratively prohibited for the rest.
    Reject,
    Jump(String),
    Masquerade,
}

/// The longest rule comment in bytes: libnftnl keeps 128 bytes of userdata for it, two of
/// them the attribute's header and one the terminating NUL.
pub const COMMENT_MAX: usize = 125;

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub matches: Vec<Match>,
    /// A named counter object of the same table.
    pub counter: Option<String>,
    pub verdict: Verdict,
    /// Who asked for the rule: an allow rule's name or a `netd:` tag. Goes into the comment.
    pub label: String,
}

impl Rule {
    pub fn new(label: &str, matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule { matches, counter: None, verdict, label: label.to_string() }
    }

    /// The comment netd writes on the rule: the label and a digest of what the rule says, so a
    /// read-back can tell whether the kernel holds exactly this rule. A long label is cut (on a
    /// character boundary) so that the whole comment fits in [`COMMENT_MAX`] bytes: what is
    /// written is exactly what this returns, and so what the kernel gives back.
    pub fn comment(&self, chain: &str) -> String {
        let mut h = Sha256::new();
        h.update(chain.as_bytes());
        h.update([0]);
        h.update(self.body_in(Family::Inet).as_bytes());
        let d = h.finalize();
        let digest = format!(" #{}", hex::encode(&d[..5]));
        // A NUL would end the C string early: the kernel would hold less than this says.
        let label = self.label.replace('\0', "");
        let label = backroom_daemon::text::fit_bytes(&label, COMMENT_MAX - digest.len());
        format!("{label}{digest}")
    }

    /// The rule in nft syntax (as in an inet table), without its comment.
    pub fn body(&self) -> String {
        self.body_in(Family::Inet)
    }

    /// The rule in nft syntax for a table of `family`, without its comment.
    pub fn body_in(&self, family: Family) -> String {
        let mut s = String::new();
        for m in &self.matches {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&match_text(m, family));
        }
        if let Some(c) = &self.counter {
            let _ = write!(s, " counter name \"{c}\"");
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&match &self.verdict {
            Verdict::Accept => "accept".to_string(),
            Verdict::Drop => "drop".to_string(),
            Verdict::Reject => "reject with icmpx type admin-prohibited".to_string(),
            Verdict::Jump(c) => format!("jump {c}"),
            Verdict::Masquerade => "masquerade".to_string(),
        });
        s
    }
}

fn match_text(m: &Match, family: Family) -> String {
    match m {
        Match::IifName(n) => format!("iifname \"{n}\""),
        Match::IifPrefix(p) => format!("iifname \"{p}*\""),
        Match::OifName(n) => format!("oifname \"{n}\""),
        Match::Proto(l3) => match (family, l3) {
            (Family::Inet, L3::V4) => "meta nfproto ipv4".to_string(),
            (Family::Inet, L3::V6) => "meta nfproto ipv6".to_string(),
            (Family::Bridge, L3::V4) => "ether type ip".to_string(),
            (Family::Bridge, L3::V6) => "ether type ip6".to_string(),
        },
        Match::NotIp => "ether type != ip ether type != ip6".to_string(),
        Match::Src(n) => format!("{} saddr {}", L3::of(n.addr()).word(), net_text(n)),
        Match::Dst(n) => format!("{} daddr {}", L3::of(n.addr()).word(), net_text(n)),
        Match::NotSrc(n) => format!("{} saddr != {}", L3::of(n.addr()).word(), net_text(n)),
        Match::NotDst(n) => format!("{} daddr != {}", L3::of(n.addr()).word(), net_text(n)),
        Match::L4(p) => format!("meta l4proto {}", p.word()),
        Match::NotL4(p) => format!("meta l4proto != {}", p.word()),
        Match::Sport(lo, hi) => format!("th sport {}", range_text(*lo, *hi)),
        Match::Dport(lo, hi) => format!("th dport {}", range_text(*lo, *hi)),
        Match::TcpNotSyn => "tcp flags & (syn | ack) != syn".to_string(),
        Match::CtEstablished => "ct state established,related".to_string(),
    }
}

fn net_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() { n.addr().to_string() } else { n.trunc().to_string() }
}

fn range_text(lo: u16, hi: u16) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub family: Family,
    pub counters: Vec<String>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn new(family: Family) -> Table {
        Table { family, counters: Vec::new(), chains: Vec::new() }
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// Both of netd's tables.
#[derive(Clone, Debug, PartialEq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(Table::rule_count).sum()
    }
}

impl fmt::Display for Ruleset {
    /// `nft -f` input that builds the same tables (replacing them if they exist).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(f, "table {} {TABLE}", t.family.as_str())?;
            writeln!(f, "delete table {} {TABLE}", t.family.as_str())?;
            writeln!(f, "table {} {TABLE} {{", t.family.as_str())?;
            for c in &t.counters {
                writeln!(f, "\tcounter {c} {{\n\t}}")?;
            }
            for c in &t.chains {
                writeln!(f, "\tchain {} {{", c.name)?;
                if let Some(b) = c.base {
                    let kind = if b.nat { "nat" } else { "filter" };
                    writeln!(
                        f,
                        "\t\ttype {kind} hook {} priority {}; policy accept;",
                        b.hook.as_str(),
                        b.priority
                    )?;
                }
                for r in &c.rules {
                    writeln!(f, "\t\t{} comment \"{}\"", r.body_in(t.family), r.comment(&c.name))?;
                }
                writeln!(f, "\t}}")?;
            }
            writeln!(f, "}}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_nft_text_with_a_digest_comment() {
        let mut r = Rule::new(
            "pos-to-orders",
            vec![
                Match::IifName("br-pos".into()),
                Match::Proto(L3::V4),
                Match::Dst("172.30.0.10/32".parse().unwrap()),
                Match::L4(L4::Tcp),
                Match::Dport(8443, 8443),
            ],
            Verdict::Accept,
        );
        r.counter = Some("pos-to-orders".into());
        assert_eq!(
            r.body(),
            "iifname \"br-pos\" meta nfproto ipv4 ip daddr 172.30.0.10 meta l4proto tcp th dport 8443 counter name \"pos-to-orders\" accept"
        );
        let c = r.comment("allow");
        assert!(c.starts_with("pos-to-orders #"));
        assert_ne!(c, r.comment("other"));
    }

    #[test]
    fn a_long_multibyte_label_is_cut_on_a_character_and_keeps_its_digest() {
        // 'é' is two bytes: byte 100 (the old cut) falls inside one.
        let label = format!("x{}", "é".repeat(80));
        let r = Rule::new(&label, vec![Match::L4(L4::Tcp)], Verdict::Accept);
        let c = r.comment("seg-pos");
        assert!(c.len() <= COMMENT_MAX, "{} bytes", c.len());
        let (cut, digest) = c.rsplit_once(" #").unwrap();
        assert_eq!(digest.len(), 10, "the digest survives the cut");
        assert!(label.starts_with(cut) && cut.len() > 100, "{cut}");
        let other = Rule::new(&label, vec![Match::L4(L4::Udp)], Verdict::Accept);
        assert_ne!(c, other.comment("seg-pos"), "two rules with one long label still differ");
        let nul = Rule::new("a\0b", vec![], Verdict::Accept);
        assert!(nul.comment("c").starts_with("ab #"));
    }
}
