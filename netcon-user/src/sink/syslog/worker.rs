//! The syslog forwarder's worker task: connects (and reconnects, with backoff) and delivers
//! the queued messages over UDP or TCP.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::{QUEUE_MESSAGES, Transport, frame_octet_counted};
use crate::sink::worker::DeliveryCounters;

/// First wait before reconnecting after a failed connection: 200 ms, doubled after every further
/// failure up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts: 30 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long one TCP connection attempt may take: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest write the TCP worker gathers from the queue at once: 64 KiB.
pub const TCP_BATCH_BYTES: usize = 64 * 1024;

/// Counters shared with the worker: `sent` counts messages handed to the socket (for TCP:
/// written to the kernel's send buffer), `failed` messages taken from the queue that could not
/// be sent, `errors` failed connections, failed sends and connections lost.
pub(super) type Counters = DeliveryCounters;

/// Exponential backoff between [`RECONNECT_MIN`] and [`RECONNECT_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: RECONNECT_MIN,
        }
    }

    fn reset(&mut self) {
        self.next = RECONNECT_MIN;
    }

    /// The wait before the next attempt; doubles the one after it.
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        wait
    }
}

/// Why sending stopped.
enum Outcome {
    /// The queue is closed and empty: all done.
    QueueClosed,
    /// The connection broke: reconnect.
    Broken,
}

/// An open transport.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// What the worker thread runs.
pub(super) struct Task {
    pub(super) url: String,
    pub(super) transport: Transport,
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) counters: Arc<Counters>,
}

impl Task {
    /// Connects (again and again, with backoff) and delivers until the queue is closed and
    /// empty.
    pub(super) async fn serve(&self, queue: &mut mpsc::Receiver<String>) {
        let mut backoff = Backoff::new();
        // Whether a failure was logged since the last connection: log changes, not every
        // retry.
        let mut down = false;
        loop {
            let link = match self.connect().await {
                Ok(link) => link,
                Err(error) => {
                    self.counters.count_error();
                    let wait = backoff.step();
                    if down {
                        tracing::debug!(url = %self.url, %error, ?wait, "still cannot connect");
                    } else {
                        tracing::warn!(
                            url = %self.url,
                            %error,
                            queue = QUEUE_MESSAGES,
                            "cannot connect to the syslog server; queueing and retrying"
                        );
                    }
                    down = true;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if down {
                tracing::info!(url = %self.url, "connected to the syslog server again");
            }
            backoff.reset();
            let outcome = match link {
                Link::Udp(socket) => self.send_udp(&socket, queue).await,
                Link::Tcp(stream) => self.send_tcp(stream, queue).await,
            };
            match outcome {
                Outcome::QueueClosed => return,
                // Logged where it broke; the next connection is logged as a recovery.
                Outcome::Broken => down = true,
            }
        }
    }

    /// Sends one datagram per message until the queue is closed. UDP has no connection to
    /// lose: a failed send loses that message only.
    async fn send_udp(&self, socket: &UdpSocket, queue: &mut mpsc::Receiver<String>) -> Outcome {
        let mut failing = false;
        while let Some(message) = queue.recv().await {
            match send_datagram(socket, message.as_bytes()).await {
                Ok(()) => {
                    self.counters.count_sent(1);
                    if failing {
                        failing = false;
                        tracing::info!(url = %self.url, "sending to the syslog server again");
                    }
                }
                Err(error) => {
                    self.counters.count_failed(1);
                    self.counters.count_error();
                    if !failing {
                        failing = true;
                        tracing::warn!(
                            url = %self.url,
                            %error,
                            "cannot send to the syslog server; dropping messages"
                        );
                    }
                }
            }
        }
        Outcome::QueueClosed
    }

    /// Writes octet-counted messages, several per write when they are queued, until the queue
    /// is closed (then closes the connection cleanly) or the connection breaks.
    async fn send_tcp(&self, mut stream: TcpStream, queue: &mut mpsc::Receiver<String>) -> Outcome {
        let mut batch = Vec::with_capacity(TCP_BATCH_BYTES);
        let mut probe = [0u8; 64];
        loop {
            let first = tokio::select! {
                // Checked first: a message written after the server closed would be lost
                // without an error, so a close must be noticed before the next write.
                biased;
                read = stream.read(&mut probe) => {
                    // A syslog server never talks: readable means closed or broken (and any
                    // bytes it does send mean nothing here).
                    if matches!(read, Ok(n) if n > 0) {
                        continue;
                    }
                    self.counters.count_error();
                    tracing::warn!(
                        url = %self.url,
                        "the syslog server closed the connection; reconnecting"
                    );
                    return Outcome::Broken;
                }
                message = queue.recv() => message,
            };
            let Some(first) = first else {
                let _ = stream.shutdown().await;
                return Outcome::QueueClosed;
            };
            batch.clear();
            frame_octet_counted(first.as_bytes(), &mut batch);
            let mut count = 1;
            while batch.len() < TCP_BATCH_BYTES {
                let Ok(message) = queue.try_recv() else {
                    break;
                };
                frame_octet_counted(message.as_bytes(), &mut batch);
                count += 1;
            }
            if let Err(error) = stream.write_all(&batch).await {
                // Part of the batch may have arrived; none of it is counted as sent.
                self.counters.count_failed(count);
                self.counters.count_error();
                tracing::warn!(
                    url = %self.url,
                    %error,
                    "lost the connection to the syslog server; reconnecting"
                );
                return Outcome::Broken;
            }
            self.counters.count_sent(count);
        }
    }

    async fn connect(&self) -> io::Result<Link> {
        match self.transport {
            Transport::Udp => {
                let &target = self
                    .addrs
                    .first()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))?;
                let local: SocketAddr = match target {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).await?;
                // Connected, so that the kernel reports the server's ICMP errors on later sends.
                socket.connect(target).await?;
                Ok(Link::Udp(socket))
            }
            Transport::Tcp => {
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addrs[..]))
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                // Batching is done here; a crash's last lines should not wait for Nagle.
                stream.set_nodelay(true)?;
                Ok(Link::Tcp(stream))
            }
        }
    }
}

/// Sends one datagram. A connected UDP socket reports an earlier datagram's ICMP "port
/// unreachable" on the next send, which is then not sent: try that one once more.
async fn send_datagram(socket: &UdpSocket, message: &[u8]) -> io::Result<()> {
    match socket.send(message).await {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            socket.send(message).await.map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut b = Backoff::new();
        assert_eq!(b.step(), RECONNECT_MIN);
        assert_eq!(b.step(), RECONNECT_MIN * 2);
        for _ in 0..20 {
            b.step();
        }
        assert_eq!(b.step(), RECONNECT_MAX);
        b.reset();
        assert_eq!(b.step(), RECONNECT_MIN);
    }
}
