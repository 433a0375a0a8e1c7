//! Drawing: one function per screen, from [`App`] only. Plain ASCII and the eight basic
//! colours, so it reads the same on the Linux text console, a vt100 serial line and SSH; it fits
//! 80x24 and uses more room when there is more.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::border;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::app::{App, MENU, Modal, Screen};
use crate::checks::Outcome;
use crate::model::{
    Link, Severity, clock_hm, clock_hms, first_line, gib, short_rev, span, state_words,
    workload_severity, workloads_worst_first,
};

/// Borders in ASCII: a serial terminal may have no line-drawing characters.
pub const ASCII: border::Set<'static> = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

fn block(title: &str) -> Block<'_> {
    Block::bordered().border_set(ASCII).title(format!(" {title} "))
}

fn color(s: Severity) -> Style {
    match s {
        Severity::Bad => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warn => Style::new().fg(Color::Yellow),
        Severity::Busy => Style::new().fg(Color::Cyan),
        Severity::Good => Style::new().fg(Color::Green),
    }
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub fn draw(f: &mut Frame<'_>, app: &App) {
    let area = f.area();
    let [body, note, keys] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1), Constraint::Length(1)])
            .areas(area);
    match app.screen {
        Screen::Board => board(f, body, app),
        Screen::Workload => workload(f, body, app),
        Screen::Network => network(f, body, app),
        Screen::Actions => actions(f, body, app),
    }
    let lock = match app.grant() {
        Some(g) => format!("unlocked: {} until {} UTC", g.role, clock_hm(g.expires_ms)),
        None => "locked: actions need a code from HQ".into(),
    };
    let note_text = if app.note.is_empty() { String::new() } else { format!(" {}", app.note) };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!(" {lock}"), Style::new().fg(Color::Yellow)),
            Span::raw(if note_text.is_empty() { "" } else { " |" }),
            Span::raw(note_text),
        ])),
        note,
    );
    f.render_widget(
        Paragraph::new(Line::styled(keys_line(app), Style::new().add_modifier(Modifier::REVERSED))),
        keys,
    );
    if let Some(m) = &app.modal {
        modal(f, area, app, m);
    }
}

/// The keys of what is on screen: every screen shows its keys.
pub fn keys_line(app: &App) -> String {
    let s = match &app.modal {
        Some(Modal::Code { .. }) => "type the code HQ reads to you | Enter check | Esc cancel",
        Some(Modal::Confirm(_)) => "y yes, do it | n no",
        Some(Modal::Form(_)) => "Tab next field | Enter go on | Esc cancel",
        Some(Modal::Pick { .. }) => "Up/Down choose | Enter restart it | Esc cancel",
        Some(Modal::Busy(_)) => "working, please wait...",
        Some(Modal::Message { .. }) => "any key: close",
        Some(Modal::Quit) => "y leave the console | n stay",
        None => match app.screen {
            Screen::Board => {
                "Up/Down choose | Enter app details | n network | a actions | u unlock | q quit"
            }
            Screen::Workload if app.is_vm(&app.workload) => {
                "Esc back | f follow | Up/Dn scroll | r restart | s serial console | a actions"
            }
            Screen::Workload => {
                "Esc back | f follow on/off | Up/Down scroll | r restart | a actions"
            }
            Screen::Network => {
                "Esc back | 1 gateway | 2 central | 3 registry | o override | k keep | x end"
            }
            Screen::Actions => "Up/Down choose | Enter or 1-9 do it | u unlock | l lock | Esc back",
        },
    };
    format!(" {s}")
}

fn title_line(app: &App) -> Line<'static> {
    let (store, profile) = match &app.facts.agent {
        Some(s) => (
            if s.store_id.is_empty() {
                "store (not enrolled)".to_string()
            } else {
                s.store_id.clone()
            },
            format!("{} {}", s.profile_name, s.profile_version),
        ),
        None if !app.facts.store_id.is_empty() => (app.facts.store_id.clone(), String::new()),
        None => ("store (unknown)".to_string(), String::new()),
    };
    Line::from(vec![
        Span::styled(" BACKROOM ", Style::new().add_modifier(Modifier::REVERSED)),
        Span::styled(format!(" {store} "), bold()),
        Span::raw(format!(" {profile}")),
        Span::raw(format!("   {} UTC", clock_hms(app.now_ms))),
    ])
}

fn central_line(app: &App) -> Line<'static> {
    let (sev, text) = match app.facts.link() {
        Link::Online => (Severity::Good, "online".to_string()),
        Link::Standalone => (Severity::Warn, "not used (standalone node)".to_string()),
        Link::NotEnrolled(why) => (Severity::Bad, format!("not enrolled: {}", first_line(&why))),
        Link::Unknown => (Severity::Bad, "unknown (nodeagent does not answer)".to_string()),
        Link::Offline { since_ms, last_contact_ms, why } => {
            let last = if last_contact_ms > 0 {
                format!(", last answer {}", clock_hm(last_contact_ms))
            } else {
                String::new()
            };
            (
                Severity::Warn,
                format!(
                    "OFFLINE {} (since {}{last}): {why}",
                    span(app.now_ms - since_ms),
                    clock_hm(since_ms)
                ),
            )
        }
    };
    Line::from(vec![Span::styled(" Central  ", bold()), Span::styled(text, color(sev))])
}

fn uplink_text(app: &App) -> (Severity, String) {
    let u = &app.facts.uplink;
    if u.interface.is_empty() {
        return (Severity::Warn, "unknown".into());
    }
    let cable = match u.carrier {
        Some(true) => "cable in",
        Some(false) => "NO CABLE (unplugged?)",
        None => "MISSING (not found)",
    };
    let addr = if u.addresses.is_empty() { "no address".into() } else { u.addresses.join(" ") };
    let gw = if u.gateway.is_empty() { "no gateway".into() } else { format!("gw {}", u.gateway) };
    let dns = if u.dns.is_empty() { "no DNS".into() } else { format!("DNS {}", u.dns.join(" ")) };
    let sev = if u.carrier == Some(true) && !u.addresses.is_empty() && !u.gateway.is_empty() {
        Severity::Good
    } else {
        Severity::Bad
    };
    (sev, format!("{} {cable}, {addr}, {gw}, {dns}", u.interface))
}

fn host_text(app: &App) -> String {
    let h = &app.facts.host;
    let cpu = h.cpu_percent.map_or("-".to_string(), |c| format!("{c}%"));
    format!(
        "cpu {cpu}  memory {}/{} GiB  disk {}/{} GiB",
        gib(h.mem_used),
        gib(h.mem_total),
        gib(h.disk_used),
        gib(h.disk_total)
    )
}

fn board(f: &mut Frame<'_>, area: Rect, app: &App) {
    let [head, apps, nets, events] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Min(4),
        Constraint::Length(4),
        Constraint::Length(6),
    ])
    .areas(area);
    let (sev, headline) = app.facts.headline();
    let word = match sev {
        Severity::Good => "OK",
        Severity::Bad => "PROBLEM",
        Severity::Warn => "NOTE",
        Severity::Busy => "BUSY",
    };
    let revs = match &app.facts.agent {
        Some(s) => format!(
            "applied {}  desired {}  last good {}",
            short_rev(&s.applied_revision),
            short_rev(&s.desired_revision),
            short_rev(&s.last_known_good)
        ),
        None => format!("unknown: {}", first_line(&app.facts.agent_error)),
    };
    let (usev, utext) = uplink_text(app);
    let lines = vec![
        title_line(app),
        Line::from(vec![
            Span::styled(format!(" {word}: "), color(sev)),
            Span::styled(headline, color(sev)),
        ]),
        central_line(app),
        Line::from(vec![Span::styled(" Profile  ", bold()), Span::raw(revs)]),
        Line::from(vec![Span::styled(" Uplink   ", bold()), Span::styled(utext, color(usev))]),
        Line::from(vec![Span::styled(" Host     ", bold()), Span::raw(host_text(app))]),
    ];
    f.render_widget(Paragraph::new(lines), head);

    // Apps, worst first.
    let mut rows = vec![];
    match &app.facts.agent {
        Some(s) if s.workloads.is_empty() => rows.push(Line::raw(" no apps in the profile")),
        Some(s) => {
            for (i, w) in workloads_worst_first(s).iter().enumerate() {
                let mark = if i == app.selected { ">" } else { " " };
                let since = if w.since_unix > 0 {
                    format!("since {}", clock_hm(w.since_unix * 1000))
                } else {
                    String::new()
                };
                let style = color(workload_severity(w));
                let style =
                    if i == app.selected { style.add_modifier(Modifier::REVERSED) } else { style };
                rows.push(Line::from(vec![
                    Span::raw(mark.to_string()),
                    Span::styled(
                        format!(
                            "{:<14} {:<9} {:<3} {:<11} {}",
                            cut(&w.name, 14),
                            w.kind,
                            w.restarts,
                            since,
                            state_words(w)
                        ),
                        style,
                    ),
                ]));
            }
        }
        None => rows.push(Line::styled(
            format!(" nodeagent does not answer: {}", first_line(&app.facts.agent_error)),
            color(Severity::Bad),
        )),
    }
    // Keep the selected row in view.
    let inner = apps.height.saturating_sub(2) as usize;
    let skip = app.selected.saturating_sub(inner.saturating_sub(1));
    let rows: Vec<Line<'_>> = rows.into_iter().skip(skip).collect();
    f.render_widget(
        Paragraph::new(rows).block(block("Apps (worst first): name, kind, restarts, since, state")),
        apps,
    );

    f.render_widget(
        Paragraph::new(segments_line(app))
            .wrap(Wrap { trim: true })
            .block(block("Networks: segment and host address")),
        nets,
    );

    let mut ev = vec![];
    if let Some(s) = &app.facts.agent {
        for p in &s.problems {
            ev.push(Line::styled(
                format!(
                    " {} failing since {}: {}",
                    p.subject,
                    clock_hm(p.since_unix_ms),
                    first_line(&p.message)
                ),
                color(Severity::Bad),
            ));
        }
        for e in app.facts.events.iter().filter(|e| !matches!(e.kind.as_str(), "health" | "state"))
        {
            let who =
                if e.workload.is_empty() { String::new() } else { format!("{} ", e.workload) };
            ev.push(Line::raw(format!(
                " {} {who}{}",
                clock_hm(e.at_unix_ms),
                first_line(&e.message)
            )));
        }
        for a in s.actions.iter().filter(|_| app.facts.events.is_empty()) {
            ev.push(Line::styled(
                format!(
                    " {} {} {}{}",
                    clock_hm(a.at_unix_ms),
                    if a.ok { "ok  " } else { "FAIL" },
                    a.action,
                    if a.ok || a.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", first_line(&a.message))
                    }
                ),
                if a.ok { Style::new() } else { color(Severity::Warn) },
            ));
        }
    } else {
        ev.push(Line::styled(
            " nodeagent does not answer: its problems and actions are not known now",
            color(Severity::Warn),
        ));
        for (d, st) in &app.facts.daemons {
            ev.push(Line::raw(format!(" service {d}: {st}")));
        }
    }
    if ev.is_empty() {
        ev.push(Line::raw(" nothing is failing; no recent actions"));
    }
    f.render_widget(Paragraph::new(ev).block(block("Problems, then what happened lately")), events);
}

fn segments_line(app: &App) -> Line<'static> {
    let Some(n) = &app.facts.net else {
        return Line::styled(
            format!(" netd does not answer: {}", first_line(&app.facts.net_error)),
            color(Severity::Bad),
        );
    };
    let mut spans = vec![];
    for s in &n.segments {
        let (sev, state) = if s.present {
            (Severity::Good, s.addresses.first().cloned().unwrap_or_else(|| "up".into()))
        } else {
            (Severity::Bad, "DOWN".into())
        };
        spans.push(Span::raw(format!("{} ", s.name)));
        spans.push(Span::styled(state, color(sev)));
        spans.push(Span::raw("  "));
    }
    if spans.is_empty() {
        spans.push(Span::raw(" no networks applied yet"));
    }
    Line::from(spans)
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn workload(f: &mut Frame<'_>, area: Rect, app: &App) {
    let w = app
        .facts
        .agent
        .as_ref()
        .and_then(|s| s.workloads.iter().find(|w| w.name == app.workload))
        .cloned()
        .unwrap_or_default();
    let [head, log] = Layout::vertical([Constraint::Length(8), Constraint::Min(3)]).areas(area);
    let sev = workload_severity(&w);
    let short_digest = w.image_digest.get(..19).unwrap_or(&w.image_digest);
    let lines = vec![
        title_line(app),
        Line::from(vec![
            Span::styled(format!(" {} ", app.workload), bold()),
            Span::raw(format!("({}) ", w.kind)),
            Span::styled(state_words(&w), color(sev)),
        ]),
        Line::raw(format!(
            " health   {} {}",
            w.health,
            if w.health_reason.is_empty() {
                String::new()
            } else {
                format!("({})", w.health_reason)
            }
        )),
        Line::raw(format!(
            " restarts {}   since {}   revision {}",
            w.restarts,
            if w.since_unix > 0 { clock_hm(w.since_unix * 1000) } else { "-".into() },
            short_rev(&w.revision)
        )),
        Line::raw(format!(" image    {} {}", w.image, short_digest)),
        Line::raw(format!(" address  {}", w.addresses.join(" "))),
        Line::raw(format!(
            " {}",
            if w.container_id.is_empty() {
                String::new()
            } else {
                format!("container {}", w.container_id)
            }
        )),
        Line::raw(""),
    ];
    f.render_widget(Paragraph::new(lines), head);
    let title = match (app.is_vm(&app.workload), app.follow) {
        (true, true) => "Serial console output (following) - s: type into it, Ctrl-] to leave",
        (true, false) => "Serial console output (stopped) - s: type into it",
        (false, true) => "Log (following)",
        (false, false) => "Log (stopped: f follows again)",
    };
    let inner = log.height.saturating_sub(2) as usize;
    let end = app.log.len().saturating_sub(app.scroll);
    let start = end.saturating_sub(inner);
    let lines: Vec<Line<'_>> = app.log.range(start..end).map(|l| Line::raw(sanitize(l))).collect();
    f.render_widget(Paragraph::new(lines).block(block(title)), log);
}

/// What an app writes may hold escape sequences: the console shows them as text.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect()
}

fn network(f: &mut Frame<'_>, area: Rect, app: &App) {
    let [head, segs, checks] =
        Layout::vertical([Constraint::Length(8), Constraint::Min(4), Constraint::Length(5)])
            .areas(area);
    let u = &app.facts.uplink;
    let (usev, _) = uplink_text(app);
    let ov = app.facts.net.as_ref().and_then(|n| n.r#override.clone());
    let pending = app.facts.net.as_ref().map(|n| n.confirm_deadline_unix).unwrap_or(0);
    let mut lines = vec![
        title_line(app),
        Line::from(vec![
            Span::styled(" Uplink   ", bold()),
            Span::styled(
                format!(
                    "{}: {}",
                    if u.interface.is_empty() { "?" } else { &u.interface },
                    match u.carrier {
                        Some(true) => "cable in",
                        Some(false) => "NO CABLE",
                        None => "NOT FOUND",
                    }
                ),
                color(usev),
            ),
        ]),
        Line::raw(format!(
            " Address  {}",
            if u.addresses.is_empty() { "none".into() } else { u.addresses.join(" ") }
        )),
        Line::raw(format!(
            " Gateway  {}    DNS {}",
            if u.gateway.is_empty() { "none" } else { &u.gateway },
            if u.dns.is_empty() { "none".into() } else { u.dns.join(" ") }
        )),
        central_line(app),
    ];
    lines.push(match &ov {
        Some(o) => Line::styled(
            format!(
                " Override {} on {} via {} until {} UTC",
                o.address,
                o.segment,
                o.gateway,
                clock_hm(o.expires_unix * 1000),
            ),
            color(Severity::Warn),
        ),
        None => Line::raw(" Override none (o sets one when the store's DHCP is broken)"),
    });
    if pending > 0 && ov.is_some() {
        lines.push(Line::styled(
            format!(
                " NOT KEPT YET: press k before {} UTC, or it goes back by itself",
                clock_hms(pending * 1000)
            ),
            color(Severity::Bad),
        ));
    } else if pending > 0 {
        lines.push(Line::styled(
            format!(
                " A network change waits for its confirmation until {}",
                clock_hms(pending * 1000)
            ),
            color(Severity::Warn),
        ));
    }
    f.render_widget(Paragraph::new(lines), head);

    let mut rows = vec![Line::styled(
        format!(
            " {:<10} {:<9} {:<10} {:<7} {}",
            "segment", "vlan", "bridge", "state", "host address"
        ),
        bold(),
    )];
    let profile = app.facts.agent.as_ref().map(|s| s.segments.clone()).unwrap_or_default();
    let observed = app.facts.net.as_ref().map(|n| n.segments.clone()).unwrap_or_default();
    for p in &profile {
        let o = observed.iter().find(|o| o.name == p.name);
        let (sev, state) = match o {
            Some(o) if o.present => (Severity::Good, "up"),
            Some(_) => (Severity::Bad, "DOWN"),
            None => (Severity::Warn, "-"),
        };
        let have = o.map(|o| o.addresses.join(" ")).unwrap_or_default();
        rows.push(Line::from(vec![
            Span::raw(format!(
                " {:<10} {:<9} {:<10} ",
                p.name,
                p.vlan,
                o.map(|o| o.bridge.clone()).unwrap_or_else(|| format!("br-{}", p.name))
            )),
            Span::styled(format!("{state:<7}"), color(sev)),
            Span::raw(format!(
                " {}{}",
                if have.is_empty() { "-".to_string() } else { have },
                if ov.as_ref().is_some_and(|o| o.segment == p.name) {
                    " (override)"
                } else if p.address == "dhcp" {
                    " (dhcp)"
                } else {
                    ""
                }
            )),
        ]));
    }
    if profile.is_empty() {
        rows.push(Line::raw(match &app.facts.net {
            Some(_) => " the profile has no networks".to_string(),
            None => format!(" netd does not answer: {}", first_line(&app.facts.net_error)),
        }));
    }
    f.render_widget(Paragraph::new(rows).block(block("Segments")), segs);

    let mut c = vec![];
    for r in &app.checks {
        let (sev, word) = match r.outcome {
            Outcome::Running => (Severity::Busy, "...."),
            Outcome::Passed => (Severity::Good, "ok  "),
            Outcome::Failed => (Severity::Bad, "FAIL"),
        };
        c.push(Line::from(vec![
            Span::styled(format!(" {word} "), color(sev)),
            Span::raw(format!("{}: {}", r.kind.label(), r.text)),
        ]));
    }
    if c.is_empty() {
        c.push(Line::raw(" press 1, 2 or 3 to run a check"));
    }
    f.render_widget(Paragraph::new(c).block(block("Checks")), checks);
}

fn actions(f: &mut Frame<'_>, area: Rect, app: &App) {
    let agent = app.facts.agent.is_some();
    let mut lines = vec![title_line(app), Line::raw("")];
    lines.push(match app.grant() {
        Some(g) => Line::styled(
            format!(" Unlocked for a {} until {} UTC.", g.role, clock_hm(g.expires_ms)),
            color(Severity::Good),
        ),
        None => Line::styled(
            " Locked. Ask HQ for a console code, press u and type it.",
            color(Severity::Warn),
        ),
    });
    if !agent {
        lines.push(Line::styled(
            " nodeagent is not running: only 6 and 7 can be done; 7 starts it again.",
            color(Severity::Bad),
        ));
    }
    lines.push(Line::raw(""));
    for (i, m) in MENU.iter().enumerate() {
        let off = m.needs_nodeagent() && !agent;
        let sel = i == app.menu;
        let mut style = if off { Style::new().fg(Color::DarkGray) } else { Style::new() };
        if sel {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let role = if m.role().is_empty() { String::new() } else { format!("[{}]", m.role()) };
        lines.push(Line::styled(
            format!(" {} {}  {:<46} {}", if sel { ">" } else { " " }, i + 1, m.label(), role),
            style,
        ));
    }
    if !agent && !app.facts.daemons.is_empty() {
        lines.push(Line::raw(""));
        let d: Vec<String> = app.facts.daemons.iter().map(|(d, s)| format!("{d} {s}")).collect();
        lines.push(Line::raw(format!(" Services: {}", d.join(", "))));
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn modal(f: &mut Frame<'_>, area: Rect, app: &App, m: &Modal) {
    let (title, text, h): (&str, Text<'_>, u16) = match m {
        Modal::Code { input, then, error } => {
            let what = match then {
                Some(a) => format!(" To do this you need a {} code from HQ.", a.needs()),
                None => " Type the code HQ reads to you.".into(),
            };
            let mut t = vec![
                Line::raw(what),
                Line::raw(""),
                Line::from(vec![Span::raw(" Code: "), Span::styled(format!("{input}_"), bold())]),
            ];
            if !error.is_empty() {
                t.push(Line::raw(""));
                t.push(Line::styled(format!(" {error}"), color(Severity::Bad)));
            }
            ("Console code", Text::from(t), 9)
        }
        Modal::Confirm(a) => (
            "Are you sure?",
            Text::from(vec![
                Line::raw(format!(" {}", a.question(&app.facts))),
                Line::raw(""),
                Line::raw(" y: yes    n: no"),
            ]),
            7,
        ),
        Modal::Pick { selected } => {
            let mut t = vec![Line::raw(" Which app?")];
            for (i, n) in app.workload_names().iter().enumerate() {
                let s = if i == *selected {
                    Style::new().add_modifier(Modifier::REVERSED)
                } else {
                    Style::new()
                };
                t.push(Line::styled(format!(" {} {n}", if i == *selected { ">" } else { " " }), s));
            }
            let h = (t.len() as u16 + 2).min(area.height);
            ("Restart an app", Text::from(t), h)
        }
        Modal::Form(form) => {
            let mut t = vec![];
            for (i, fl) in form.fields.iter().enumerate() {
                let focus = i == form.focus;
                t.push(Line::from(vec![
                    Span::raw(format!(" {:<8} ", fl.label)),
                    Span::styled(
                        format!("{}{}", fl.value, if focus { "_" } else { "" }),
                        if focus {
                            bold().add_modifier(Modifier::UNDERLINED)
                        } else {
                            Style::new()
                        },
                    ),
                ]));
                t.push(Line::styled(
                    format!("          {}", fl.hint),
                    Style::new().fg(Color::DarkGray),
                ));
            }
            if !form.error.is_empty() {
                t.push(Line::styled(format!(" {}", form.error), color(Severity::Bad)));
            }
            let h = (t.len() as u16 + 2).min(area.height);
            let title = match form.kind {
                crate::app::FormKind::Override => "Uplink override (management network)",
                crate::app::FormKind::Reenroll => "Enroll again",
            };
            (title, Text::from(t), h)
        }
        Modal::Quit => {
            ("Leave?", Text::from(vec![Line::raw(" Leave the console? y: yes    n: no")]), 3)
        }
        Modal::Busy(s) => ("Working", Text::from(vec![Line::raw(format!(" {s}"))]), 3),
        Modal::Message { ok, text } => (
            if *ok { "Done" } else { "Did not work" },
            Text::from(
                text.lines()
                    .map(|l| {
                        Line::styled(
                            format!(" {l}"),
                            if *ok { Style::new() } else { color(Severity::Bad) },
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            8,
        ),
    };
    let r = centered(area, 76, h);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }).block(block(title)), r);
}
