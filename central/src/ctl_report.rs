//! How `centralctl` shows what central says: plain tables a person reads at a glance.

use std::fmt::Write as _;

use backroom_api::operator::{
    ApiTokenInfo, AuditRecord, CommandInfo, CreateConsoleCodeReply, EnrollTokenInfo, GetStoreReply,
    ListAlertsReply, StoreEvent, StoreSummary,
};

/// "3m ago", "2h ago", "never".
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn short(rev: &str) -> &str {
    if rev.is_empty() { "-" } else { backroom_daemon::text::short(rev, 12) }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |x| x.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, x)| format!("{x:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub fn stores(list: &[StoreSummary], now_ms: i64) -> String {
    let mut rows = vec![vec![
        "STORE".into(),
        "REGION".into(),
        "STATE".into(),
        "LAST SEEN".into(),
        "DESIRED".into(),
        "APPLIED".into(),
        "HEALTHY".into(),
        "AGENT".into(),
    ]];
    for s in list {
        let state = match (s.enrolled, s.online) {
            (false, _) => "not enrolled",
            (true, true) => "online",
            (true, false) => "offline",
        };
        let applied = if !s.last_apply_error.is_empty() {
            format!("{} (last apply failed)", short(&s.applied_revision))
        } else if s.applied_revision != s.desired_revision && !s.desired_revision.is_empty() {
            format!("{} (behind)", short(&s.applied_revision))
        } else {
            short(&s.applied_revision).to_string()
        };
        rows.push(vec![
            s.store_id.clone(),
            if s.region.is_empty() { "-".into() } else { s.region.clone() },
            state.into(),
            ago(now_ms, s.last_seen_unix_ms),
            short(&s.desired_revision).into(),
            applied,
            format!("{}/{}", s.workloads_healthy, s.workloads_total),
            if s.agent_version.is_empty() { "-".into() } else { s.agent_version.clone() },
        ]);
    }
    table(&rows)
}

pub fn store(r: &GetStoreReply, now_ms: i64) -> String {
    let mut out = String::new();
    if let Some(s) = &r.summary {
        out.push_str(&stores(std::slice::from_ref(s), now_ms));
        if !s.last_apply_error.is_empty() {
            let _ = writeln!(out, "last apply failed: {}", s.last_apply_error);
        }
    }
    let _ = writeln!(out, "\nworkloads:");
    let mut rows = vec![vec![
        "NAME".into(),
        "KIND".into(),
        "STATE".into(),
        "HEALTH".into(),
        "SINCE".into(),
        "RESTARTS".into(),
        "ADDRESS".into(),
        "REASON".into(),
    ]];
    for w in &r.workloads {
        rows.push(vec![
            w.name.clone(),
            w.kind.clone(),
            w.state.clone(),
            if w.healthy { "healthy".into() } else { "unhealthy".into() },
            ago(now_ms, w.since_unix_ms),
            w.restarts.to_string(),
            w.addresses.join(","),
            w.reason.clone(),
        ]);
    }
    out.push_str(&indent(&table(&rows)));
    if !r.problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        let mut rows = vec![vec![
            "SUBJECT".into(),
            "SOURCE".into(),
            "SINCE".into(),
            "FAILURES".into(),
            "MESSAGE".into(),
        ]];
        for p in &r.problems {
            rows.push(vec![
                p.subject.clone(),
                if p.source.is_empty() { "-".into() } else { p.source.clone() },
                ago(now_ms, p.since_unix_ms),
                p.failures.to_string(),
                p.message.clone(),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    let _ = writeln!(out, "\nrecent events:");
    for e in &r.events {
        let wl = if e.workload.is_empty() { String::new() } else { format!(" {}", e.workload) };
        let subject =
            if e.subject.is_empty() { String::new() } else { format!(" [{}]", e.subject) };
        let _ = writeln!(
            out,
            "  #{:<6} {:>9}  {}{}{}: {}",
            e.seq,
            ago(now_ms, e.at_unix_ms),
            e.kind,
            wl,
            subject,
            e.message
        );
    }
    if !r.commands.is_empty() {
        let _ = writeln!(out, "\ncommands:");
        for c in &r.commands {
            out.push_str(&indent(&command(c, now_ms)));
        }
    }
    out.push_str(&local_console(&r.console, now_ms));
    out
}

/// `store get`'s "Local console" section: what was done at the store's recovery console, newest
/// first (issue 12). Times are UTC, as HQ reads them back to the store.
pub fn local_console(events: &[StoreEvent], now_ms: i64) -> String {
    let mut out = String::from("\nLocal console:\n");
    if events.is_empty() {
        out.push_str("  nothing done at the store's console\n");
        return out;
    }
    for e in events {
        let what = match e.kind.as_str() {
            "console_unlocked" => "unlocked",
            "console_refused" => "refused",
            "console_action" => "action",
            other => other,
        };
        let _ = writeln!(
            out,
            "  {:<20} {:>9}  {what:<8}  {}",
            utc_time(now_ms, e.at_unix_ms),
            ago(now_ms, e.at_unix_ms),
            e.message
        );
    }
    out
}

/// `K7QMX-2HD9P  technician code for store-0042, valid until 14:05 UTC (1h)`.
pub fn console_code(
    store_id: &str,
    r: &CreateConsoleCodeReply,
    ttl_ms: u64,
    now_ms: i64,
) -> String {
    let ttl = crate::console_codes::human(std::time::Duration::from_millis(ttl_ms));
    format!(
        "{}  {} code for {store_id}, valid until {} ({ttl})",
        r.code,
        r.role,
        utc_time(now_ms, r.expires_unix_ms)
    )
}

/// `14:05 UTC` on the same day as `now_ms`, `2026-12-05 14:05 UTC` on another.
pub fn utc_time(now_ms: i64, at_ms: i64) -> String {
    let at = backroom_daemon::clock::rfc3339(at_ms);
    let now = backroom_daemon::clock::rfc3339(now_ms);
    let (date, hm) = (at.get(..10).unwrap_or(""), at.get(11..16).unwrap_or(""));
    if now.get(..10) == Some(date) { format!("{hm} UTC") } else { format!("{date} {hm} UTC") }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// "in 3h", "2d ago": a time that may be ahead.
fn when(now_ms: i64, at_ms: i64) -> String {
    if at_ms > now_ms {
        format!("in {}", ago(at_ms, now_ms).trim_end_matches(" ago"))
    } else {
        ago(now_ms, at_ms)
    }
}

/// `centralctl token list`: ids, stores and states, never the tokens themselves.
pub fn enroll_tokens(list: &[EnrollTokenInfo], now_ms: i64) -> String {
    let mut rows = vec![vec![
        "ID".into(),
        "STORE".into(),
        "REGION".into(),
        "STATE".into(),
        "CREATED".into(),
        "EXPIRES".into(),
        "BY".into(),
    ]];
    for t in list {
        let state = match t.state.as_str() {
            "used" => format!("used {}", ago(now_ms, t.used_unix_ms)),
            "revoked" => format!("revoked {}", ago(now_ms, t.revoked_unix_ms)),
            other => other.to_string(),
        };
        rows.push(vec![
            t.id.clone(),
            t.store_id.clone(),
            if t.region.is_empty() { "-".into() } else { t.region.clone() },
            state,
            ago(now_ms, t.created_unix_ms),
            when(now_ms, t.expires_unix_ms),
            t.created_by.clone(),
        ]);
    }
    if list.is_empty() {
        return "no enrollment tokens\n".into();
    }
    table(&rows)
}

/// `centralctl api-token list`.
pub fn api_tokens(list: &[ApiTokenInfo], now_ms: i64) -> String {
    let mut rows =
        vec![vec!["ID".into(), "NAME".into(), "ROLE".into(), "CREATED".into(), "STATE".into()]];
    for t in list {
        rows.push(vec![
            t.id.clone(),
            t.name.clone(),
            t.role.clone(),
            ago(now_ms, t.created_unix_ms),
            if t.revoked {
                format!("revoked {}", ago(now_ms, t.revoked_unix_ms))
            } else {
                "active".into()
            },
        ]);
    }
    table(&rows)
}

pub fn command(c: &CommandInfo, now_ms: i64) -> String {
    let target = if c.workload.is_empty() { String::new() } else { format!(" {}", c.workload) };
    let result = if c.result.is_empty() { String::new() } else { format!(": {}", c.result) };
    format!(
        "{}  {} {}{}  {} ({}){}\n",
        c.id,
        c.kind,
        c.store_id,
        target,
        c.state,
        ago(now_ms, c.created_unix_ms),
        result
    )
}

pub fn alerts(r: &ListAlertsReply, now_ms: i64) -> String {
    if r.groups.is_empty() {
        return "no open alerts\n".into();
    }
    let mut out = String::new();
    for g in &r.groups {
        let stores: std::collections::BTreeSet<&str> =
            g.alerts.iter().map(|a| a.store_id.as_str()).collect();
        let _ = writeln!(out, "{} ({} in {} stores)", g.title, g.alerts.len(), stores.len());
        for a in &g.alerts {
            let subject =
                if a.subject.is_empty() { String::new() } else { format!("/{}", a.subject) };
            let state = if a.resolved {
                format!(" [resolved {}]", ago(now_ms, a.resolved_unix_ms))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {}{}  since {}: {}{}",
                a.store_id,
                subject,
                ago(now_ms, a.since_unix_ms),
                a.message,
                state
            );
        }
    }
    out
}

/// The audit trail, newest first.
pub fn audit(records: &[AuditRecord], now_ms: i64) -> String {
    if records.is_empty() {
        return "no audit records match\n".into();
    }
    let mut rows =
        vec![vec!["WHEN".into(), "ACTOR".into(), "ACTION".into(), "STORE".into(), "DETAIL".into()]];
    for a in records {
        rows.push(vec![
            format!(
                "{} ({})",
                backroom_daemon::clock::rfc3339(a.at_unix_ms),
                ago(now_ms, a.at_unix_ms)
            ),
            a.actor.clone(),
            a.action.clone(),
            if a.store_id.is_empty() { "-".into() } else { a.store_id.clone() },
            a.detail.clone(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(10_000, 0), "never");
        assert_eq!(ago(70_000, 10_000), "1m ago");
        assert_eq!(ago(10_000, 9_000), "1s ago");
    }

    #[test]
    fn store_table_shows_state_and_revisions() {
        let s = StoreSummary {
            store_id: "store-0042".into(),
            region: "us-west".into(),
            online: false,
            enrolled: true,
            last_seen_unix_ms: 1000,
            desired_revision: "a".repeat(64),
            applied_revision: "b".repeat(64),
            workloads_healthy: 2,
            workloads_total: 3,
            ..Default::default()
        };
        let t = stores(&[s], 181_000);
        assert!(t.contains("store-0042  us-west  offline  3m ago"), "{t}");
        assert!(t.contains("bbbbbbbbbbbb (behind)  2/3"), "{t}");
        // Revisions come from outside: a short or multi-byte one is cut by characters.
        let odd = StoreSummary { applied_revision: "é".repeat(20), ..Default::default() };
        assert!(stores(&[odd], 0).contains(&"é".repeat(12)));
    }

    #[test]
    fn store_shows_problems_and_event_subjects() {
        let r = GetStoreReply {
            problems: vec![backroom_api::common::Problem {
                subject: "uplink eno1".into(),
                message: "the link eno1 does not exist".into(),
                since_unix_ms: 1000,
                failures: 3,
                source: "netd".into(),
            }],
            events: vec![backroom_api::operator::StoreEvent {
                seq: 7,
                at_unix_ms: 1000,
                kind: "failing".into(),
                subject: "uplink eno1".into(),
                message: "uplink eno1: the link eno1 does not exist".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = store(&r, 61_000);
        assert!(t.contains("problems:"), "{t}");
        assert!(
            t.contains("uplink eno1  netd    1m ago  3         the link eno1 does not exist"),
            "{t}"
        );
        assert!(t.contains("failing [uplink eno1]: uplink eno1: the link"), "{t}");
    }

    #[test]
    fn the_local_console_section_lists_newest_first_with_utc_times() {
        // 2026-12-03T09:42:24Z and an hour before.
        let now = 1_796_290_944_000;
        let ev = |seq, at, kind: &str, msg: &str| StoreEvent {
            seq,
            at_unix_ms: at,
            kind: kind.into(),
            message: msg.into(),
            ..Default::default()
        };
        let events = vec![
            ev(
                9,
                now - 60_000,
                "console_action",
                "restart orders by technician: ok, task 4242 → 4390",
            ),
            ev(8, now - 3_600_000, "console_unlocked", "technician until 10:50 UTC"),
            ev(7, now - 86_400_000, "console_refused", "wrong code"),
        ];
        let t = local_console(&events, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "Local console:", "{t}");
        assert!(lines[2].starts_with("  09:41 UTC") && lines[2].contains("1m ago"), "{t}");
        assert!(
            lines[2].contains("action    restart orders by technician: ok, task 4242 → 4390"),
            "{t}"
        );
        assert!(lines[3].contains("08:42 UTC") && lines[3].contains("unlocked"), "{t}");
        assert!(lines[4].contains("2026-12-02 09:42 UTC") && lines[4].contains("refused"), "{t}");
        assert!(local_console(&[], now).contains("nothing done at the store's console"));
        let r = GetStoreReply { console: events, ..Default::default() };
        assert!(store(&r, now).contains("Local console:\n  09:41 UTC"), "{}", store(&r, now));
    }
}
