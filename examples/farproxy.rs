//! farproxy — a TCP proxy on loopback that makes a local registry look far away,
//! for `scripts/bench.sh` (this machine has no netem).
//!
//!     farproxy --upstream 127.0.0.1:5000 [--listen 127.0.0.1:0] [--rtt-ms 40]
//!              [--connect-ms 40] [--mbps 25] [--stats FILE]
//!
//! The model, per connection:
//! * every byte from the client reaches the upstream `--rtt-ms` later (a delay
//!   line: a whole round trip added on the way out), so each request/response
//!   exchange costs one extra round trip while a long upload keeps its rate;
//! * a new connection waits `--connect-ms` before its first byte is relayed (the
//!   TCP handshake of a far server; add a TLS handshake by raising it);
//! * each direction of each connection is capped at `--mbps` MB/s (10^6 bytes
//!   per second; 0 = no cap), the way object-storage-backed registries serve
//!   one stream.
//!
//! It prints `listening on ADDR` on stdout once it accepts connections. With
//! `--stats FILE` it rewrites FILE (`connections N`, `requests_bytes_up N`,
//! `bytes_down N`) as connections open and close. Only loopback addresses are
//! accepted for both ends. It runs until killed.
//! Plain threads and std only: a benchmark sees a few dozen connections.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy)]
struct Settings {
    upstream: SocketAddr,
    rtt: Duration,
    connect: Duration,
    /// Bytes per second per direction per connection; 0 = no cap.
    rate: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

fn usage(msg: &str) -> ! {
    eprintln!("farproxy: {msg}");
    eprintln!(
        "usage: farproxy --upstream HOST:PORT [--listen 127.0.0.1:0] [--rtt-ms 40] [--connect-ms 40] [--mbps 25] [--stats FILE]"
    );
    exit(2)
}

fn loopback(addr: &str, what: &str) -> SocketAddr {
    let a: SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| usage(&format!("{what}: not an IP:PORT: {addr}")));
    if !a.ip().is_loopback() {
        usage(&format!("{what}: only loopback addresses are allowed: {addr}"));
    }
    a
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut upstream = None;
    let (mut rtt_ms, mut connect_ms, mut mbps) = (40.0_f64, 40.0_f64, 25.0_f64);
    let mut stats_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: String| {
            v.parse::<f64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--listen" => listen = value(),
            "--upstream" => upstream = Some(value()),
            "--rtt-ms" => rtt_ms = number(value()),
            "--connect-ms" => connect_ms = number(value()),
            "--mbps" => mbps = number(value()),
            "--stats" => stats_file = Some(value()),
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    let settings = Settings {
        upstream: loopback(
            &upstream.unwrap_or_else(|| usage("--upstream is required")),
            "--upstream",
        ),
        rtt: Duration::from_secs_f64(rtt_ms.max(0.0) / 1000.0),
        connect: Duration::from_secs_f64(connect_ms.max(0.0) / 1000.0),
        rate: (mbps.max(0.0) * 1e6) as u64,
    };
    let listener = TcpListener::bind(loopback(&listen, "--listen")).unwrap_or_else(|e| usage(&format!("bind: {e}")));
    println!("listening on {}", listener.local_addr().expect("local address"));
    std::io::stdout().flush().ok();

    let counters = Arc::new(Counters::default());
    let stats_lock = Arc::new(Mutex::new(()));
    let write_stats = {
        let counters = counters.clone();
        move || {
            if let Some(path) = &stats_file {
                let _guard = stats_lock.lock();
                let text = format!(
                    "connections {}\nbytes_up {}\nbytes_down {}\n",
                    counters.connections.load(Ordering::Relaxed),
                    counters.bytes_up.load(Ordering::Relaxed),
                    counters.bytes_down.load(Ordering::Relaxed)
                );
                let tmp = format!("{path}.tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    std::fs::rename(&tmp, path).ok();
                }
            }
        }
    };
    let write_stats = Arc::new(write_stats);
    write_stats();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        write_stats();
        let (counters, write_stats) = (counters.clone(), write_stats.clone());
        thread::spawn(move || {
            if let Err(e) = relay(client, settings, &counters) {
                eprintln!("farproxy: connection: {e}");
            }
            write_stats();
        });
    }
}

/// One client connection: handshake delay, then both directions until both end.
fn relay(client: TcpStream, s: Settings, counters: &Arc<Counters>) -> std::io::Result<()> {
    let accepted = Instant::now();
    client.set_nodelay(true)?;
    let server = TcpStream::connect(s.upstream)?;
    server.set_nodelay(true)?;
    // Nothing is relayed before the simulated handshake is over.
    thread::sleep(s.connect.saturating_sub(accepted.elapsed()));

    let down = {
        let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
        let counters = counters.clone();
        thread::spawn(move || {
            let mut pace = Pacer::new(s.rate);
            let mut buf = vec![0; CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pace.wait(n);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            to.shutdown(Shutdown::Write).ok();
            from.shutdown(Shutdown::Read).ok();
        })
    };

    // Upstream direction: a reader stamps each chunk with its due time, a writer
    // releases it then. The bounded queue keeps memory small (4 MiB) while
    // holding more than rate × rtt bytes, so the delay does not cut the rate.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(64);
    let up_writer = {
        let mut to = server.try_clone()?;
        let counters = counters.clone();
        thread::spawn(move || {
            let mut pace = Pacer::new(s.rate);
            let mut failed = false;
            for (due, chunk) in rx {
                if failed {
                    continue; // drain so the reader never blocks on a dead peer
                }
                thread::sleep(due.saturating_duration_since(Instant::now()));
                pace.wait(chunk.len());
                failed = to.write_all(&chunk).is_err();
                counters.bytes_up.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            to.shutdown(Shutdown::Write).ok();
        })
    };
    let mut from = client;
    let mut buf = vec![0; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + s.rtt, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    up_writer.join().ok();
    down.join().ok();
    Ok(())
}

/// Caps one direction at `rate` bytes per second: each chunk may leave once the
/// previous ones have had their time on the wire. Idle time is not banked, so
/// there are no bursts above the rate after a pause.
struct Pacer {
    rate: u64,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            next: Instant::now(),
        }
    }

    /// Sleep until `n` more bytes may be sent.
    fn wait(&mut self, n: usize) {
        if self.rate == 0 {
            return;
        }
        let now = Instant::now();
        self.next = self.next.max(now);
        thread::sleep(self.next - now);
        self.next += Duration::from_secs_f64(n as f64 / self.rate as f64);
    }
}
