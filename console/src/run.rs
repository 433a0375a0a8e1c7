//! The terminal loop: keys in, [`App`] decides, effects carried out as tasks whose results come
//! back as messages, the screen drawn after each.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use crate::app::{App, Effect, Key, Msg};
use crate::backend::Backend;

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the facts are read again.
    pub refresh: Duration,
    /// The program that attaches a terminal to a VM's serial console, and its arguments
    /// (the VM's name is appended), e.g. `vmd --libvirt-uri qemu:///system console`.
    pub serial_command: Vec<String>,
}

/// The key a terminal event stands for.
pub fn key_of(e: &Event) -> Option<Key> {
    match e {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
            Some(match k.code {
                KeyCode::Char('l') if ctrl => Key::Redraw,
                KeyCode::Char('c') if ctrl => Key::Interrupt,
                KeyCode::Char(_) if ctrl => return None,
                KeyCode::Char(c) => Key::Char(c),
                KeyCode::Enter => Key::Enter,
                KeyCode::Esc => Key::Esc,
                KeyCode::Up => Key::Up,
                KeyCode::Down => Key::Down,
                KeyCode::Tab => Key::Tab,
                KeyCode::BackTab => Key::BackTab,
                KeyCode::Backspace => Key::Backspace,
                KeyCode::PageUp => Key::PageUp,
                KeyCode::PageDown => Key::PageDown,
                _ => return None,
            })
        }
        // A new size: draw everything again.
        Event::Resize(..) => Some(Key::Redraw),
        _ => None,
    }
}

/// Runs the console on this terminal until the person leaves it.
pub async fn run<B: Backend>(backend: Arc<B>, opts: Options) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the console needs a terminal (run it on a screen, a serial line or SSH)");
    }
    serial_line_size();
    let mut terminal = ratatui::init();
    let r = main_loop(&mut terminal, backend, opts).await;
    ratatui::restore();
    r
}

/// A serial line has no size (the kernel says 0x0 until someone sets one), and a console of no
/// size draws nothing: give it the 80x24 every terminal has.
fn serial_line_size() {
    let out = std::io::stdout();
    match rustix::termios::tcgetwinsize(&out) {
        Ok(w) if w.ws_row > 0 && w.ws_col > 0 => {}
        _ => {
            let w = rustix::termios::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
            if let Err(e) = rustix::termios::tcsetwinsize(&out, w) {
                tracing::warn!(error = %e, "the terminal has no size and none can be set");
            }
        }
    }
}

async fn main_loop<B: Backend>(
    terminal: &mut ratatui::DefaultTerminal,
    backend: Arc<B>,
    opts: Options,
) -> anyhow::Result<()> {
    let (keys_tx, mut keys) = mpsc::channel::<Key>(64);
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (paused, stop) = (paused.clone(), stop.clone());
        std::thread::Builder::new().name("keys".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {
                        if let Ok(e) = event::read()
                            && let Some(k) = key_of(&e)
                            && keys_tx.blocking_send(k).is_err()
                        {
                            return;
                        }
                    }
                    Ok(false) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })?;
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let mut app = App::new(backroom_session::now_ms());
    let mut tick = tokio::time::interval(opts.refresh);
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    let refreshing = Arc::new(AtomicBool::new(false));
    let mut log_task: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        terminal.draw(|f| crate::view::draw(f, &app))?;
        let effects = tokio::select! {
            Some(k) = keys.recv() => app.key(k),
            Some(m) = rx.recv() => app.update(m),
            _ = tick.tick() => vec![Effect::Refresh],
            _ = clock.tick() => app.update(Msg::Tick(backroom_session::now_ms())),
        };
        for e in effects {
            match e {
                Effect::Quit => {}
                Effect::Redraw => terminal.clear()?,
                Effect::Refresh => {
                    if !refreshing.swap(true, Ordering::SeqCst) {
                        let (b, tx, flag) = (backend.clone(), tx.clone(), refreshing.clone());
                        tokio::spawn(async move {
                            let f = b.facts().await;
                            flag.store(false, Ordering::SeqCst);
                            let _ = tx.send(Msg::Facts(Box::new(f))).await;
                        });
                    }
                }
                Effect::Unlock(code) => {
                    let (b, tx) = (backend.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Msg::Unlocked(b.unlock(code).await)).await;
                    });
                }
                Effect::Act { code, action } => {
                    let (b, tx) = (backend.clone(), tx.clone());
                    tokio::spawn(async move {
                        let result = b.act(code, action.clone()).await;
                        let _ = tx.send(Msg::Done { action, result }).await;
                    });
                }
                Effect::Check(kind) => {
                    let (b, tx, facts) = (backend.clone(), tx.clone(), app.facts.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Msg::Check(b.check(kind, &facts).await)).await;
                    });
                }
                Effect::FollowLog(name) => {
                    if let Some(t) = log_task.take() {
                        t.abort();
                    }
                    let vm = app.is_vm(&name);
                    let mut s = backend.log(name, vm);
                    let tx = tx.clone();
                    log_task = Some(tokio::spawn(async move {
                        use futures::StreamExt;
                        while let Some(c) = s.next().await {
                            let m = match c {
                                Ok(t) => Msg::Log(t),
                                Err(e) => Msg::LogEnded(e),
                            };
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(Msg::LogEnded("the log ended".into())).await;
                    }));
                }
                Effect::StopLog => {
                    if let Some(t) = log_task.take() {
                        t.abort();
                    }
                }
                Effect::Serial(name) => {
                    paused.store(true, Ordering::SeqCst);
                    ratatui::restore();
                    let mut argv = opts.serial_command.clone();
                    argv.push(name.clone());
                    println!(
                        "\r\nThe serial console of {name}: Ctrl-] comes back to the Backroom console.\r"
                    );
                    let st = tokio::task::spawn_blocking(move || {
                        std::process::Command::new(&argv[0]).args(&argv[1..]).status()
                    })
                    .await;
                    *terminal = ratatui::init();
                    terminal.clear()?;
                    paused.store(false, Ordering::SeqCst);
                    app.note = match st {
                        Ok(Ok(s)) if s.success() => format!("left the serial console of {name}"),
                        Ok(Ok(s)) => format!("the serial console of {name} ended: {s}"),
                        Ok(Err(e)) => format!("cannot attach to {name}: {e}"),
                        Err(e) => format!("cannot attach to {name}: {e}"),
                    };
                }
            }
        }
        if app.quit {
            break Ok(());
        }
    };
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = log_task.take() {
        t.abort();
    }
    result
}
