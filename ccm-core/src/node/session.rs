//! The initial session (step 410): one TCP connection per interconnect, carrying framed control messages.
//!
//! TCP on the interconnect's own IP address is the transport: it needs nothing but the addresses in the
//! configuration, is up in well under a millisecond, and gives the ordered, reliable stream the manager's
//! handshake needs. Once the control VI is slam connected and *confirmed* (a message arrived on it),
//! heartbeats move to the control VI, so they travel the RDMA path whose health they report.
//!
//! Sockets are non-blocking; the event loop polls their fds. Reads are decoded with
//! [`Message::decode`]; a frame that does not decode is reported once and the session is refused.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

use crate::wire::{DecodeError, Message, HEADER_LEN, MAX_PAYLOAD};

/// What a read of the socket produced.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Zero or more complete messages were decoded (pushed to the output vector).
    Open,
    /// The peer closed the stream, or it broke.
    Closed,
    /// Bytes that are not a frame: the session must be refused.
    Malformed(DecodeError),
}

/// One TCP session: a non-blocking stream with its receive and send buffers.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_sent: usize,
}

impl TcpSession {
    /// Wrap a connected stream (made non-blocking, Nagle off: control messages are small and urgent).
    pub fn new(stream: TcpStream) -> std::io::Result<TcpSession> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(TcpSession {
            stream,
            rx: Vec::with_capacity(4096),
            tx: Vec::with_capacity(4096),
            tx_sent: 0,
        })
    }

    /// The socket, for polling.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether queued bytes wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.tx_sent < self.tx.len()
    }

    /// Queue a message and try to send it now.
    pub fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        msg.encode(&mut self.tx);
        self.flush()
    }

    /// Send what the socket takes now.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while self.tx_sent < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
        Ok(())
    }

    /// Read what the socket has and decode every complete frame into `out`.
    pub fn read(&mut self, out: &mut Vec<Message>) -> ReadOutcome {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return self.decode_into(out).unwrap_or(ReadOutcome::Closed),
                Ok(n) => {
                    self.rx.extend_from_slice(&buf[..n]);
                    if self.rx.len() > HEADER_LEN + MAX_PAYLOAD + buf.len() {
                        // decode_into below refuses oversize frames; this bounds the buffer regardless.
                        if let Some(bad) = self.decode_into(out) {
                            return bad;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return ReadOutcome::Closed,
            }
        }
        self.decode_into(out).unwrap_or(ReadOutcome::Open)
    }

    /// Decode complete frames; `Some` when the stream is malformed.
    fn decode_into(&mut self, out: &mut Vec<Message>) -> Option<ReadOutcome> {
        let mut used = 0;
        let result = loop {
            match Message::decode(&self.rx[used..]) {
                Ok((msg, n)) => {
                    out.push(msg);
                    used += n;
                }
                Err(DecodeError::Incomplete { .. }) => break None,
                Err(e) => break Some(ReadOutcome::Malformed(e)),
            }
        };
        self.rx.drain(..used);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Heartbeat;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn pair() -> (TcpSession, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (TcpSession::new(s).unwrap(), c)
    }

    fn read_until(s: &mut TcpSession, out: &mut Vec<Message>, want: usize) -> ReadOutcome {
        let t = Instant::now();
        loop {
            let r = s.read(out);
            if !matches!(r, ReadOutcome::Open)
                || out.len() >= want
                || t.elapsed() > Duration::from_secs(5)
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let (mut s, mut c) = pair();
        let m = Message::Heartbeat(Heartbeat { seq: 7, time_ns: 9 });
        let bytes = m.to_bytes();
        c.write_all(&bytes[..5]).unwrap();
        let mut out = vec![];
        assert!(matches!(s.read(&mut out), ReadOutcome::Open));
        assert!(out.is_empty());
        c.write_all(&bytes[5..]).unwrap();
        c.write_all(&bytes).unwrap();
        read_until(&mut s, &mut out, 2);
        assert_eq!(out, vec![m.clone(), m]);
    }

    #[test]
    fn garbage_is_reported_as_malformed_not_a_panic() {
        let (mut s, mut c) = pair();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut out = vec![];
        assert!(matches!(
            read_until(&mut s, &mut out, 1),
            ReadOutcome::Malformed(_)
        ));
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (mut s, c) = pair();
        drop(c);
        let mut out = vec![];
        assert!(matches!(
            read_until(&mut s, &mut out, 1),
            ReadOutcome::Closed
        ));
    }
}
