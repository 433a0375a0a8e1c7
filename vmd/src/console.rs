//! `vmd console NAME`: the VM's serial console, interactive, through libvirt's console stream
//! (so it works the same whether libvirtd runs in the host namespace or elsewhere). The
//! terminal goes raw while attached; Ctrl-] detaches.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virt::connect::Connect;
use virt::stream::Stream;

use crate::error::{Error, Result};

/// Ctrl-]
pub const ESCAPE: u8 = 0x1d;

struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: termios calls on fd 0 with a zeroed, then filled, struct.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal { saved: Some(saved) }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores what tcgetattr gave.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Attaches the terminal to VM `vm`'s serial console until Ctrl-] or the VM stops.
pub fn attach(uri: &str, vm: &str) -> Result<()> {
    virt::error::clear_error_callback();
    let conn =
        Connect::open(Some(uri)).map_err(|e| Error::libvirt(format!("connecting to {uri}"), e))?;
    let name = crate::xml::domain_name(vm);
    let dom = conn
        .lookup_domain_by_name(&name)
        .map_err(|e| Error::libvirt(format!("looking up {name}"), e))?;
    let stream =
        Arc::new(Stream::new(&conn, 0).map_err(|e| Error::libvirt("opening a stream", e))?);
    dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)
        .map_err(|e| Error::libvirt(format!("opening the console of {name}"), e))?;
    eprintln!("connected to the serial console of {vm} (Ctrl-] leaves)\r");
    let raw = RawTerminal::enter();
    let done = Arc::new(AtomicBool::new(false));
    {
        let (stream, done) = (stream.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || done.load(Ordering::SeqCst) {
                    break;
                }
                let (data, quit) = match buf[..n].iter().position(|&b| b == ESCAPE) {
                    Some(i) => (&buf[..i], true),
                    None => (&buf[..n], false),
                };
                if !data.is_empty() && stream.send(data).is_err() {
                    break;
                }
                if quit {
                    break;
                }
            }
            done.store(true, Ordering::SeqCst);
            // Ending the stream wakes the reader below.
            let _ = unsafe { virt::sys::virStreamAbort(stream.as_ptr()) };
        });
    }
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    while !done.load(Ordering::SeqCst) {
        match stream.recv(&mut buf) {
            Ok(n) if n > 0 => {
                let _ = out.write_all(&buf[..n as usize]);
                let _ = out.flush();
            }
            _ => break,
        }
    }
    done.store(true, Ordering::SeqCst);
    drop(raw);
    eprintln!("\ndisconnected from {vm}");
    Ok(())
}
