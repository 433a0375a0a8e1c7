//! The console as a state machine: [`App::key`] turns a key into [`Effect`]s for the runtime to
//! carry out, and [`App::update`] takes their results back as [`Msg`]s. Nothing here does I/O,
//! so every screen and every key is tested without a terminal or a node.

use std::collections::VecDeque;

use backroom_session::console_code::Role;

use crate::checks::{CheckKind, CheckResult};
use crate::model::{Facts, workloads_worst_first};

/// After this long without a key, an unlocked console locks itself.
pub const IDLE_LOCK_MS: i64 = 15 * 60 * 1000;
/// How many log lines the workload screen keeps.
pub const LOG_LINES: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Board,
    Workload,
    Network,
    Actions,
}

/// A key, as the terminal reports it (no mouse: the Linux console and serial lines have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Up,
    Down,
    Tab,
    BackTab,
    Backspace,
    PageUp,
    PageDown,
    /// Ctrl-L: draw the whole screen again (after line noise on a serial line).
    Redraw,
    /// Ctrl-C.
    Interrupt,
}

/// What the console may do to the node. Each needs a [`Role`] ([`Action::needs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Restart(String),
    Rollback,
    Reconcile,
    /// A new enrollment token; empty: read it from the USB stick.
    Reenroll(String),
    Override(OverrideInput),
    ClearOverride,
    ConfirmOverride,
    /// A support bundle on the USB stick (the console writes it itself).
    Bundle,
    /// `systemctl restart` of netd, vmd and nodeagent (the console does it itself).
    RestartDaemons,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverrideInput {
    pub address: String,
    pub gateway: String,
    pub dns: Vec<String>,
    pub vlan: u32,
    pub minutes: u32,
}

impl Action {
    pub fn needs(&self) -> Role {
        match self {
            Action::Restart(_) => Role::Staff,
            _ => Role::Technician,
        }
    }

    /// Whether nodeagent carries it out (else the console does, and it works with nodeagent
    /// down).
    pub fn through_nodeagent(&self) -> bool {
        !matches!(self, Action::Bundle | Action::RestartDaemons)
    }

    /// What the confirmation asks.
    pub fn question(&self, facts: &Facts) -> String {
        let lkg = facts.agent.as_ref().map(|s| s.last_known_good.clone()).unwrap_or_default();
        match self {
            Action::Restart(w) => format!("Restart {w}? It stops and starts again."),
            Action::Rollback => format!(
                "Go back to the last revision that worked ({})?",
                crate::model::short_rev(&lkg)
            ),
            Action::Reconcile => "Apply the store's profile again?".into(),
            Action::Reenroll(t) if t.is_empty() => {
                "Enroll again with the token on the USB stick? The node gets a new identity.".into()
            }
            Action::Reenroll(_) => {
                "Enroll again with this token? The node gets a new identity.".into()
            }
            Action::Override(o) => format!(
                "Use {} via {} on the management network for {}? It goes back by itself.",
                o.address,
                o.gateway,
                crate::model::span(i64::from(o.minutes) * 60_000)
            ),
            Action::ClearOverride => "End the uplink override now?".into(),
            Action::ConfirmOverride => "Keep the uplink override (the network works)?".into(),
            Action::Bundle => "Write a support bundle to the USB stick?".into(),
            Action::RestartDaemons => "Restart netd, vmd and nodeagent? Apps keep running.".into(),
        }
    }
}

/// The entries of the Actions screen, in order.
pub const MENU: [MenuItem; 9] = [
    MenuItem::Restart,
    MenuItem::Rollback,
    MenuItem::Reconcile,
    MenuItem::Override,
    MenuItem::ClearOverride,
    MenuItem::Bundle,
    MenuItem::RestartDaemons,
    MenuItem::Reenroll,
    MenuItem::Lock,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuItem {
    Restart,
    Rollback,
    Reconcile,
    Override,
    ClearOverride,
    Bundle,
    RestartDaemons,
    Reenroll,
    Lock,
}

impl MenuItem {
    pub fn label(self) -> &'static str {
        match self {
            MenuItem::Restart => "Restart an app",
            MenuItem::Rollback => "Roll back to the last revision that worked",
            MenuItem::Reconcile => "Apply the profile again",
            MenuItem::Override => "Uplink override (the store's DHCP is broken)",
            MenuItem::ClearOverride => "End the uplink override",
            MenuItem::Bundle => "Support bundle to the USB stick",
            MenuItem::RestartDaemons => "Restart the Backroom services",
            MenuItem::Reenroll => "Enroll again with a new token",
            MenuItem::Lock => "Lock the console",
        }
    }

    /// The role it needs ("" for none).
    pub fn role(self) -> &'static str {
        match self {
            MenuItem::Restart => "staff",
            MenuItem::Lock => "",
            _ => "technician",
        }
    }

    /// Whether it needs nodeagent to answer.
    pub fn needs_nodeagent(self) -> bool {
        !matches!(self, MenuItem::Bundle | MenuItem::RestartDaemons | MenuItem::Lock)
    }
}

/// Access granted by a code from HQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub expires_ms: i64,
    /// Sent again with each action (the node checks it each time).
    pub code: String,
}

/// A text field of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub label: &'static str,
    pub value: String,
    pub hint: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    Override,
    Reenroll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub kind: FormKind,
    pub fields: Vec<Field>,
    pub focus: usize,
    /// Why the last submit was refused.
    pub error: String,
}

/// What sits over the screen, taking the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    /// Typing a code; the action waits for it (None: just unlock).
    Code {
        input: String,
        then: Option<Action>,
        error: String,
    },
    Confirm(Action),
    Form(Form),
    /// Choosing which workload to restart.
    Pick {
        selected: usize,
    },
    Busy(String),
    Message {
        ok: bool,
        text: String,
    },
    /// "Leave the console?" (a stray `q` from line noise must not end it).
    Quit,
}

/// What the runtime does for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Refresh,
    Unlock(String),
    Act {
        code: String,
        action: Action,
    },
    FollowLog(String),
    StopLog,
    Check(CheckKind),
    /// Leave the full screen for the VM's serial console; back when it ends.
    Serial(String),
    /// Clear the terminal and draw everything again.
    Redraw,
    Quit,
}

/// Results coming back from the runtime.
#[derive(Debug, Clone)]
pub enum Msg {
    Facts(Box<Facts>),
    Unlocked(Result<Grant, String>),
    Done {
        action: Action,
        result: Result<String, String>,
    },
    Log(String),
    LogEnded(String),
    Check(CheckResult),
    /// The clock moved (expiry of a grant, idle lock).
    Tick(i64),
}

#[derive(Debug, Clone)]
pub struct App {
    pub facts: Facts,
    pub screen: Screen,
    /// The selected row of the board's workload list (worst first).
    pub selected: usize,
    /// The workload the workload screen shows.
    pub workload: String,
    pub log: VecDeque<String>,
    pub follow: bool,
    /// How far the log view is scrolled back from its end, in lines.
    pub scroll: usize,
    pub menu: usize,
    pub modal: Option<Modal>,
    pub grant: Option<Grant>,
    pub checks: Vec<CheckResult>,
    pub now_ms: i64,
    pub last_key_ms: i64,
    /// The line at the bottom after an action: what happened.
    pub note: String,
    pub quit: bool,
}

impl App {
    pub fn new(now_ms: i64) -> App {
        App {
            facts: Facts { at_ms: now_ms, ..Facts::default() },
            screen: Screen::Board,
            selected: 0,
            workload: String::new(),
            log: VecDeque::new(),
            follow: true,
            scroll: 0,
            menu: 0,
            modal: None,
            grant: None,
            checks: Vec::new(),
            now_ms,
            last_key_ms: now_ms,
            note: String::new(),
            quit: false,
        }
    }

    /// The workload names in the board's order.
    pub fn workload_names(&self) -> Vec<String> {
        self.facts
            .agent
            .as_ref()
            .map(|s| workloads_worst_first(s).into_iter().map(|w| w.name).collect())
            .unwrap_or_default()
    }

    pub fn is_vm(&self, name: &str) -> bool {
        self.facts
            .agent
            .as_ref()
            .and_then(|s| s.workloads.iter().find(|w| w.name == name))
            .is_some_and(|w| w.kind == "vm")
    }

    /// The grant, if it is still good now.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref().filter(|g| g.expires_ms >= self.now_ms)
    }

    /// Takes one key.
    pub fn key(&mut self, k: Key) -> Vec<Effect> {
        self.last_key_ms = self.now_ms;
        match k {
            Key::Redraw => return vec![Effect::Redraw],
            Key::Interrupt => {
                // Ctrl-C closes what is open; on the board it quits.
                if self.modal.take().is_some() {
                    return vec![];
                }
                if self.screen == Screen::Board {
                    self.quit = true;
                    return vec![Effect::Quit];
                }
                return self.back();
            }
            _ => {}
        }
        if let Some(m) = self.modal.take() {
            return self.modal_key(m, k);
        }
        match self.screen {
            Screen::Board => self.board_key(k),
            Screen::Workload => self.workload_key(k),
            Screen::Network => self.network_key(k),
            Screen::Actions => self.actions_key(k),
        }
    }

    fn back(&mut self) -> Vec<Effect> {
        let was = self.screen;
        self.screen = Screen::Board;
        if was == Screen::Workload { vec![Effect::StopLog] } else { vec![] }
    }

    fn global(&mut self, k: Key) -> Option<Vec<Effect>> {
        Some(match k {
            Key::Char('u' | 'U') => {
                self.modal =
                    Some(Modal::Code { input: String::new(), then: None, error: String::new() });
                vec![]
            }
            Key::Char('n' | 'N') => {
                let mut e = self.back();
                self.screen = Screen::Network;
                e.push(Effect::Refresh);
                e
            }
            Key::Char('a' | 'A') => {
                let e = self.back();
                self.screen = Screen::Actions;
                e
            }
            Key::Char('b' | 'B') => self.back(),
            _ => return None,
        })
    }

    fn board_key(&mut self, k: Key) -> Vec<Effect> {
        let n = self.workload_names().len();
        match k {
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down if n > 0 => self.selected = (self.selected + 1).min(n - 1),
            Key::Enter => {
                if let Some(name) = self.workload_names().get(self.selected) {
                    return self.open_workload(name.clone());
                }
            }
            Key::Char('r' | 'R') => return vec![Effect::Refresh],
            Key::Char('q' | 'Q') => self.modal = Some(Modal::Quit),
            other => return self.global(other).unwrap_or_default(),
        }
        vec![]
    }

    fn open_workload(&mut self, name: String) -> Vec<Effect> {
        self.screen = Screen::Workload;
        self.workload = name.clone();
        self.log.clear();
        self.scroll = 0;
        self.follow = true;
        vec![Effect::FollowLog(name)]
    }

    fn workload_key(&mut self, k: Key) -> Vec<Effect> {
        match k {
            Key::Esc | Key::Backspace => return self.back(),
            Key::Char('f' | 'F') => {
                self.follow = !self.follow;
                self.scroll = 0;
                return if self.follow {
                    self.log.clear();
                    vec![Effect::FollowLog(self.workload.clone())]
                } else {
                    vec![Effect::StopLog]
                };
            }
            Key::PageUp | Key::Up => {
                let step = if k == Key::Up { 1 } else { 10 };
                self.scroll = (self.scroll + step).min(self.log.len().saturating_sub(1));
            }
            Key::PageDown | Key::Down => {
                let step = if k == Key::Down { 1 } else { 10 };
                self.scroll = self.scroll.saturating_sub(step);
            }
            Key::Char('r' | 'R') => return self.ask(Action::Restart(self.workload.clone())),
            Key::Char('s' | 'S') if self.is_vm(&self.workload) => {
                return vec![Effect::Serial(self.workload.clone())];
            }
            other => return self.global(other).unwrap_or_default(),
        }
        vec![]
    }

    fn network_key(&mut self, k: Key) -> Vec<Effect> {
        let check = match k {
            Key::Esc | Key::Backspace => return self.back(),
            Key::Char('1') => CheckKind::Gateway,
            Key::Char('2') => CheckKind::Central,
            Key::Char('3') => CheckKind::Registry,
            Key::Char('o' | 'O') => {
                self.modal = Some(Modal::Form(override_form()));
                return vec![];
            }
            Key::Char('k' | 'K') => return self.ask(Action::ConfirmOverride),
            Key::Char('x' | 'X') => return self.ask(Action::ClearOverride),
            Key::Char('r' | 'R') => return vec![Effect::Refresh],
            other => return self.global(other).unwrap_or_default(),
        };
        self.checks.retain(|c| c.kind != check);
        self.checks.push(CheckResult::running(check));
        vec![Effect::Check(check)]
    }

    fn actions_key(&mut self, k: Key) -> Vec<Effect> {
        match k {
            Key::Esc | Key::Backspace => return self.back(),
            Key::Up => self.menu = self.menu.saturating_sub(1),
            Key::Down => self.menu = (self.menu + 1).min(MENU.len() - 1),
            Key::Char(c @ '1'..='9') => {
                let i = c as usize - '1' as usize;
                if i < MENU.len() {
                    self.menu = i;
                    return self.choose(MENU[i]);
                }
            }
            Key::Enter => return self.choose(MENU[self.menu]),
            Key::Char('l' | 'L') => return self.choose(MenuItem::Lock),
            other => return self.global(other).unwrap_or_default(),
        }
        vec![]
    }

    fn choose(&mut self, item: MenuItem) -> Vec<Effect> {
        if item.needs_nodeagent() && self.facts.agent.is_none() {
            self.modal = Some(Modal::Message {
                ok: false,
                text: "nodeagent is not running, so this cannot be done now. Restart the \
                       Backroom services first (action 7)."
                    .into(),
            });
            return vec![];
        }
        match item {
            MenuItem::Restart => {
                self.modal = Some(Modal::Pick { selected: 0 });
                vec![]
            }
            MenuItem::Rollback => self.ask(Action::Rollback),
            MenuItem::Reconcile => self.ask(Action::Reconcile),
            MenuItem::Override => {
                self.modal = Some(Modal::Form(override_form()));
                vec![]
            }
            MenuItem::ClearOverride => self.ask(Action::ClearOverride),
            MenuItem::Bundle => self.ask(Action::Bundle),
            MenuItem::RestartDaemons => self.ask(Action::RestartDaemons),
            MenuItem::Reenroll => {
                self.modal = Some(Modal::Form(Form {
                    kind: FormKind::Reenroll,
                    fields: vec![Field {
                        label: "Token",
                        value: String::new(),
                        hint: "empty: read it from the USB stick",
                    }],
                    focus: 0,
                    error: String::new(),
                }));
                vec![]
            }
            MenuItem::Lock => {
                self.grant = None;
                self.note = "locked".into();
                vec![]
            }
        }
    }

    /// An action was asked for: a code first if the grant does not allow it, then a
    /// confirmation.
    fn ask(&mut self, action: Action) -> Vec<Effect> {
        let allowed = self.grant().is_some_and(|g| g.role.allows(action.needs()));
        self.modal = Some(if allowed {
            Modal::Confirm(action)
        } else {
            let error = match self.grant() {
                Some(g) => format!("this needs a {} code (you have {})", action.needs(), g.role),
                None => String::new(),
            };
            Modal::Code { input: String::new(), then: Some(action), error }
        });
        vec![]
    }

    fn modal_key(&mut self, m: Modal, k: Key) -> Vec<Effect> {
        match m {
            Modal::Code { mut input, then, error } => match k {
                Key::Esc => vec![],
                Key::Enter if !input.trim().is_empty() => {
                    let code = input.clone();
                    self.modal = Some(Modal::Code { input, then, error: String::new() });
                    vec![Effect::Unlock(code)]
                }
                Key::Backspace => {
                    input.pop();
                    self.modal = Some(Modal::Code { input, then, error });
                    vec![]
                }
                Key::Char(c) if (c.is_ascii_alphanumeric() || c == '-') && input.len() < 24 => {
                    input.push(c.to_ascii_uppercase());
                    self.modal = Some(Modal::Code { input, then, error });
                    vec![]
                }
                _ => {
                    self.modal = Some(Modal::Code { input, then, error });
                    vec![]
                }
            },
            Modal::Confirm(action) => match k {
                Key::Char('y' | 'Y') => {
                    let Some(g) = self.grant().cloned() else {
                        return self.ask(action);
                    };
                    self.modal = Some(Modal::Busy(format!("{}…", busy_words(&action))));
                    vec![Effect::Act { code: g.code, action }]
                }
                Key::Char('n' | 'N') | Key::Esc => vec![],
                _ => {
                    self.modal = Some(Modal::Confirm(action));
                    vec![]
                }
            },
            Modal::Pick { mut selected } => {
                let names = self.workload_names();
                match k {
                    Key::Esc => return vec![],
                    Key::Up => selected = selected.saturating_sub(1),
                    Key::Down if !names.is_empty() => {
                        selected = (selected + 1).min(names.len() - 1)
                    }
                    Key::Enter => {
                        if let Some(n) = names.get(selected) {
                            return self.ask(Action::Restart(n.clone()));
                        }
                    }
                    _ => {}
                }
                self.modal = Some(Modal::Pick { selected });
                vec![]
            }
            Modal::Form(mut f) => match k {
                Key::Esc => vec![],
                Key::Tab | Key::Down => {
                    f.focus = (f.focus + 1) % f.fields.len();
                    self.modal = Some(Modal::Form(f));
                    vec![]
                }
                Key::BackTab | Key::Up => {
                    f.focus = (f.focus + f.fields.len() - 1) % f.fields.len();
                    self.modal = Some(Modal::Form(f));
                    vec![]
                }
                Key::Backspace => {
                    f.fields[f.focus].value.pop();
                    self.modal = Some(Modal::Form(f));
                    vec![]
                }
                Key::Char(c) if !c.is_control() && f.fields[f.focus].value.len() < 400 => {
                    f.fields[f.focus].value.push(c);
                    self.modal = Some(Modal::Form(f));
                    vec![]
                }
                Key::Enter => match form_action(&f) {
                    Ok(a) => self.ask(a),
                    Err(e) => {
                        f.error = e;
                        self.modal = Some(Modal::Form(f));
                        vec![]
                    }
                },
                _ => {
                    self.modal = Some(Modal::Form(f));
                    vec![]
                }
            },
            // Busy: nothing to do but wait; any key leaves it on screen.
            Modal::Busy(s) => {
                self.modal = Some(Modal::Busy(s));
                vec![]
            }
            Modal::Message { .. } => vec![],
            Modal::Quit => match k {
                Key::Char('y' | 'Y') => {
                    self.quit = true;
                    vec![Effect::Quit]
                }
                Key::Char('n' | 'N') | Key::Esc => vec![],
                _ => {
                    self.modal = Some(Modal::Quit);
                    vec![]
                }
            },
        }
    }

    /// Takes a result back.
    pub fn update(&mut self, m: Msg) -> Vec<Effect> {
        match m {
            Msg::Facts(f) => {
                self.now_ms = self.now_ms.max(f.at_ms);
                self.facts = *f;
                let n = self.workload_names().len();
                self.selected = self.selected.min(n.saturating_sub(1));
            }
            Msg::Unlocked(r) => {
                let Some(Modal::Code { input, then, .. }) = self.modal.take() else {
                    // The code box was closed meanwhile: keep the grant, ask nothing.
                    if let Ok(g) = r {
                        self.grant = Some(g);
                    }
                    return vec![];
                };
                match r {
                    Ok(g) => {
                        self.note = format!(
                            "unlocked: {} until {} UTC",
                            g.role,
                            crate::model::clock_hm(g.expires_ms)
                        );
                        let allows = then.as_ref().map(|a| g.role.allows(a.needs()));
                        self.grant = Some(g);
                        match (then, allows) {
                            (Some(a), Some(true)) => self.modal = Some(Modal::Confirm(a)),
                            (Some(a), _) => {
                                self.modal = Some(Modal::Code {
                                    input: String::new(),
                                    error: format!("this needs a {} code", a.needs()),
                                    then: Some(a),
                                })
                            }
                            (None, _) => {}
                        }
                    }
                    Err(e) => self.modal = Some(Modal::Code { input, then, error: e }),
                }
            }
            Msg::Done { action, result } => {
                let (ok, text) = match result {
                    Ok(t) => (true, t),
                    Err(e) => (false, e),
                };
                self.note = format!("{}: {}", busy_words(&action), crate::model::first_line(&text));
                self.modal = Some(Modal::Message { ok, text });
                return vec![Effect::Refresh];
            }
            Msg::Log(chunk) => {
                for line in chunk.lines() {
                    if self.log.len() == LOG_LINES {
                        self.log.pop_front();
                    }
                    self.log.push_back(line.to_string());
                }
            }
            Msg::LogEnded(why) => {
                self.follow = false;
                if !why.is_empty() {
                    self.log.push_back(format!("-- {why}"));
                }
            }
            Msg::Check(r) => {
                self.checks.retain(|c| c.kind != r.kind);
                self.checks.push(r);
                self.checks.sort_by_key(|c| c.kind);
            }
            Msg::Tick(now) => {
                self.now_ms = now;
                if let Some(g) = &self.grant {
                    if g.expires_ms < now {
                        self.grant = None;
                        self.note = "the code expired: the console is locked".into();
                    } else if now - self.last_key_ms > IDLE_LOCK_MS {
                        self.grant = None;
                        self.note = "locked after 15 minutes without a key".into();
                    }
                }
            }
        }
        vec![]
    }
}

fn busy_words(a: &Action) -> String {
    match a {
        Action::Restart(w) => format!("restarting {w}"),
        Action::Rollback => "rolling back".into(),
        Action::Reconcile => "applying the profile again".into(),
        Action::Reenroll(_) => "enrolling again".into(),
        Action::Override(_) => "setting the uplink override".into(),
        Action::ClearOverride => "ending the uplink override".into(),
        Action::ConfirmOverride => "keeping the uplink override".into(),
        Action::Bundle => "writing the support bundle".into(),
        Action::RestartDaemons => "restarting the Backroom services".into(),
    }
}

fn override_form() -> Form {
    let f = |label, hint| Field { label, value: String::new(), hint };
    Form {
        kind: FormKind::Override,
        fields: vec![
            f("Address", "e.g. 192.168.1.50/24"),
            f("Gateway", "e.g. 192.168.1.1"),
            f("DNS", "e.g. 192.168.1.1, 1.1.1.1 (optional)"),
            f("VLAN", "empty: the profile's"),
            f("Hours", "empty: 4 (then it goes back by itself)"),
        ],
        focus: 0,
        error: String::new(),
    }
}

/// The action a filled form asks for, or what is wrong with it.
pub fn form_action(f: &Form) -> Result<Action, String> {
    let v = |i: usize| f.fields[i].value.trim().to_string();
    match f.kind {
        FormKind::Reenroll => Ok(Action::Reenroll(v(0))),
        FormKind::Override => {
            let address = v(0);
            let ok_cidr = address.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::Ipv4Addr>().is_ok() && matches!(len.parse::<u8>(), Ok(1..=32))
            });
            if !ok_cidr {
                return Err("Address: an IPv4 address with its prefix, e.g. 192.168.1.50/24".into());
            }
            let gateway = v(1);
            if gateway.parse::<std::net::Ipv4Addr>().is_err() {
                return Err("Gateway: an IPv4 address, e.g. 192.168.1.1".into());
            }
            let mut dns = Vec::new();
            for d in v(2).split([',', ' ']).filter(|d| !d.is_empty()) {
                if d.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!("DNS: {d} is not an IP address"));
                }
                dns.push(d.to_string());
            }
            let vlan = match v(3).as_str() {
                "" => 0,
                s => match s.parse::<u32>() {
                    Ok(n @ 1..=4094) => n,
                    _ => return Err("VLAN: 1 to 4094, or empty for the profile's".into()),
                },
            };
            let minutes = match v(4).as_str() {
                "" => 240,
                s => match s.parse::<f64>() {
                    Ok(h) if h > 0.0 && h <= 24.0 => (h * 60.0).round() as u32,
                    _ => return Err("Hours: more than 0 and at most 24".into()),
                },
            };
            Ok(Action::Override(OverrideInput { address, gateway, dns, vlan, minutes }))
        }
    }
}
