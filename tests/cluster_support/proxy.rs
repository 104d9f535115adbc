//! A TCP proxy the test controls, between one node and PostgreSQL: cutting it drops every
//! connection through it and refuses new ones, which is a node cut off from its database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy's switch.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Cancelled to drop every open connection at once; replaced when the link is restored.
    connections: std::sync::Mutex<CancellationToken>,
}

impl Proxy {
    /// Starts proxying 127.0.0.1:<port> to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let proxy = Arc::new(Proxy {
            port: listener.local_addr().expect("addr").port(),
            cut: Arc::new(AtomicBool::new(false)),
            connections: std::sync::Mutex::new(CancellationToken::new()),
        });
        let serving = Arc::clone(&proxy);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if serving.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cancel = serving.connections.lock().expect("proxy").clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Cuts the link: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut connections = self.connections.lock().expect("proxy");
        connections.cancel();
        *connections = CancellationToken::new();
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
