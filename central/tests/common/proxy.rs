//! A TCP proxy between a node and central that can lose a reply on the way: for one
//! connection, it forwards the TLS handshake and everything the node sends (so central gets
//! the request and answers it), withholds whatever central sends after the handshake, and then
//! cuts the connection. To the node that is a call that broke after central did its work: a
//! reply lost on the WAN.
//!
//! The handshake's end is seen from outside: the node's first encrypted record (TLS 1.3 record
//! type 23, application data) is its Finished (or its certificate), which it sends only after
//! central's whole first flight; what central sends after that is the reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: SocketAddr,
    lose: Arc<AtomicUsize>,
    /// Connections whose reply was lost so far.
    pub lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long after the node's request the connection is cut (central answers within it).
const CUT_AFTER: Duration = Duration::from_millis(1500);

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lose = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let (l, n) = (Arc::clone(&lose), Arc::clone(&lost));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let lossy = l
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                    .is_ok();
                tokio::spawn(pump(client, server, lossy, Arc::clone(&n)));
            }
        });
        Proxy { addr, lose, lost, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next `n` connections lose central's reply.
    pub fn lose_replies(&self, n: usize) {
        self.lose.store(n, Ordering::SeqCst);
    }
}

async fn pump(client: TcpStream, server: TcpStream, lossy: bool, lost: Arc<AtomicUsize>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let hold = Arc::new(AtomicBool::new(false));
    let h = Arc::clone(&hold);
    // Node → central, a TLS record at a time, so the first encrypted one is seen.
    let up = async move {
        let mut head = [0u8; 5];
        loop {
            if cr.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
            let mut body = vec![0u8; len];
            if cr.read_exact(&mut body).await.is_err() {
                return;
            }
            if lossy && head[0] == 23 {
                h.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&head).await.is_err() || sw.write_all(&body).await.is_err() {
                return;
            }
        }
    };
    let h = Arc::clone(&hold);
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if h.load(Ordering::SeqCst) {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let cut = async {
        if !lossy {
            return std::future::pending::<()>().await;
        }
        while !hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(CUT_AFTER).await;
        lost.fetch_add(1, Ordering::SeqCst);
    };
    // Whichever ends first ends the connection (both halves are dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}
