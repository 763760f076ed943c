//! Reading ahead on an accepted socket without taking the bytes: listener filters look at the
//! first bytes (MSG_PEEK) and leave them for the filter chain, unless they own them.

use std::io;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Socket;

/// The bytes seen so far at the head of one connection's receive queue.
#[derive(Debug, Default)]
pub struct Peek {
    /// A second descriptor for the socket, for `peek` (std's is safe; tokio's would spin on a
    /// queue that holds bytes but not enough of them).
    dup: Option<std::net::TcpStream>,
    buf: Vec<u8>,
    len: usize,
}

impl Peek {
    /// The bytes seen so far.
    pub fn seen(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Waits until more than `seen` bytes are queued (or `max` are), and returns them all, up to
    /// `max`. An error once the peer has closed or half-closed: Envoy closes a socket whose peer
    /// shuts down while its listener filters still wait, whatever bytes came before.
    pub async fn more<'a>(
        &'a mut self,
        stream: &'a mut Socket,
        seen: usize,
        max: usize,
    ) -> io::Result<&'a [u8]> {
        match stream {
            Socket::Tcp(t) => self.more_tcp(t, seen, max).await,
            Socket::Internal(i) => i.peek(seen, max).await,
        }
    }

    /// Takes the first `n` bytes (already seen) off the connection: only a filter that owns
    /// them, such as a PROXY protocol header, does this. Later filters peek afresh.
    pub async fn consume(&mut self, stream: &mut Socket, n: usize) -> io::Result<()> {
        match stream {
            Socket::Tcp(t) => self.consume_tcp(t, n).await,
            Socket::Internal(i) => i.consume(n),
        }
    }

    /// [`Peek::more`] on a TCP socket: MSG_PEEK, the bytes stay in the kernel's queue.
    async fn more_tcp(&mut self, stream: &TcpStream, seen: usize, max: usize) -> io::Result<&[u8]> {
        if self.len > seen || self.len >= max {
            return Ok(&self.buf[..self.len.min(max)]);
        }
        if self.buf.len() < max {
            self.buf.resize(max, 0);
        }
        if self.dup.is_none() {
            self.dup = Some(std::net::TcpStream::from(
                stream.as_fd().try_clone_to_owned()?,
            ));
        }
        let Some(dup) = self.dup.as_ref() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        loop {
            let ready = stream.ready(Interest::READABLE).await?;
            if ready.is_read_closed() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let buf = &mut self.buf[..max];
            // Returning WouldBlock clears the readiness, so the next wait is for new bytes.
            let peeked = stream.try_io(Interest::READABLE, || match dup.peek(buf)? {
                0 => Ok(0),
                n if n <= seen && n < max => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            });
            match peeked {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.len = n;
                    return Ok(&self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Peek::consume`] on a TCP socket.
    async fn consume_tcp(&mut self, stream: &TcpStream, n: usize) -> io::Result<()> {
        if n > self.len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut done = 0;
        while done < n {
            match stream.try_read(&mut self.buf[done..n]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
                Err(e) => return Err(e),
            }
        }
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    #[tokio::test]
    async fn waits_for_new_bytes_and_leaves_them_queued() {
        let (mut c, s) = pair().await;
        let mut p = Peek::default();
        c.write_all(b"ab").await.expect("write");
        let got = p.more_tcp(&s, 0, 16).await.expect("peek").to_vec();
        assert_eq!(got, b"ab");
        // Nothing new yet: the wait must not return the same two bytes again.
        let more =
            tokio::time::timeout(std::time::Duration::from_millis(50), p.more_tcp(&s, 2, 16));
        assert!(more.await.is_err(), "returned without new bytes");
        c.write_all(b"cd").await.expect("write");
        assert_eq!(p.more_tcp(&s, 2, 16).await.expect("peek"), b"abcd");
        // Full buffer: returns at once.
        assert_eq!(p.more_tcp(&s, 4, 3).await.expect("peek"), b"abc");
        p.consume_tcp(&s, 1).await.expect("consume");
        assert_eq!(p.more_tcp(&s, 0, 16).await.expect("peek"), b"bcd");
        let mut rest = [0u8; 3];
        let mut s = s;
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut rest)
            .await
            .expect("read");
        assert_eq!(&rest, b"bcd");
    }

    #[tokio::test]
    async fn peer_half_close_is_an_error_even_with_bytes_queued() {
        let (mut c, s) = pair().await;
        let mut p = Peek::default();
        c.write_all(b"x").await.expect("write");
        assert_eq!(p.more_tcp(&s, 0, 16).await.expect("peek"), b"x");
        c.shutdown().await.expect("shutdown");
        let err = p.more_tcp(&s, 1, 16).await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let (mut c, s) = pair().await;
        let mut p = Peek::default();
        c.write_all(b"y").await.expect("write");
        c.shutdown().await.expect("shutdown");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let err = p.more_tcp(&s, 0, 16).await.expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
