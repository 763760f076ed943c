//! A tcp_proxy tunnel in an HTTP/1.1 POST (`tunneling_config.use_post`): the client's bytes go
//! up as chunks of the request body (the last chunk when the client ends its side), and the
//! upstream's come back from the response body in whatever framing its head named.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The response body's framing.
#[derive(Debug)]
pub enum Framing {
    /// Until the connection closes.
    Close,
    /// `content-length`: this many bytes left.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked(Chunked),
}

impl Framing {
    /// Chunked, before the first chunk.
    pub fn chunked() -> Self {
        Framing::Chunked(Chunked::default())
    }
}

/// Where a chunked body's reader is.
#[derive(Debug, Default)]
pub struct Chunked {
    /// The chunk-size line read so far.
    line: Vec<u8>,
    /// Data bytes left in the current chunk.
    left: u64,
    /// The CRLF after a chunk's data is due.
    crlf: u8,
    /// The last chunk was read: only trailers (up to an empty line) remain.
    trailers: bool,
    done: bool,
}

/// One step of a chunked decoder over `input`: how many input bytes it used, and the data it
/// found (a range of `input`).
fn step(c: &mut Chunked, input: &[u8]) -> io::Result<(usize, std::ops::Range<usize>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked body");
    let mut i = 0;
    while i < input.len() && !c.done {
        if c.left > 0 {
            let n = (c.left as usize).min(input.len() - i);
            c.left -= n as u64;
            if c.left == 0 {
                c.crlf = 2;
            }
            return Ok((i + n, i..i + n));
        }
        if c.crlf > 0 {
            c.crlf -= 1;
            i += 1;
            continue;
        }
        let b = input[i];
        i += 1;
        if b != b'\n' {
            if c.line.len() > 4096 {
                return Err(bad());
            }
            c.line.push(b);
            continue;
        }
        let line = std::mem::take(&mut c.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if c.trailers {
            c.done = line.is_empty();
            continue;
        }
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(bad)?;
        if size == 0 {
            c.trailers = true;
        } else {
            c.left = size;
        }
    }
    Ok((i, 0..0))
}

/// Decodes a whole chunked body (bytes split anywhere): its data, and whether its end (the last
/// chunk and the trailers' empty line) was seen.
pub fn decode_chunked(mut input: &[u8]) -> io::Result<(Vec<u8>, bool)> {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    while !input.is_empty() && !c.done {
        let (used, found) = step(&mut c, input)?;
        data.extend_from_slice(&input[found]);
        input = &input[used..];
    }
    Ok((data, c.done))
}

/// Encodes `data` as one chunk (none for no data), as the tunnel writes it.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The tunnel over a POST.
pub struct PostTunnel<S> {
    inner: S,
    framing: Framing,
    /// Raw response bytes read but not decoded yet.
    raw: Vec<u8>,
    /// Chunk framing waiting to be written.
    out: Vec<u8>,
    /// The last chunk was queued.
    ended: bool,
}

impl<S> PostTunnel<S> {
    /// The tunnel over `inner`, whose response body has `framing`.
    pub fn new(inner: S, framing: Framing) -> Self {
        PostTunnel {
            inner,
            framing,
            raw: Vec::new(),
            out: Vec::new(),
            ended: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> PostTunnel<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PostTunnel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.framing {
                Framing::Close => return Pin::new(&mut this.inner).poll_read(cx, out),
                Framing::Length(0) => return Poll::Ready(Ok(())),
                Framing::Length(left) => {
                    let want = (*left).min(out.remaining() as u64) as usize;
                    let mut limited = ReadBuf::new(out.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                    let n = limited.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    out.advance(n);
                    *left -= n as u64;
                    return Poll::Ready(Ok(()));
                }
                Framing::Chunked(c) => {
                    if c.done {
                        return Poll::Ready(Ok(()));
                    }
                    if !this.raw.is_empty() {
                        let (used, data) = step(c, &this.raw)?;
                        let found = data.len();
                        let n = found.min(out.remaining());
                        out.put_slice(&this.raw[data.start..data.start + n]);
                        // Data that did not fit is left for the next read.
                        let used = used - (found - n);
                        if n < found {
                            c.left += (found - n) as u64;
                            c.crlf = 0;
                        }
                        this.raw.drain(..used);
                        if n > 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let mut chunk = [0u8; 8192];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    this.raw.extend_from_slice(rb.filled());
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PostTunnel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(64 * 1024);
        encode_chunk(&buf[..n], &mut this.out);
        // The chunk is taken; it goes out now if it can, else before the next write.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            this.out.extend_from_slice(b"0\r\n\r\n");
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_chunked_response_is_read_as_its_data() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = PostTunnel::new(a, Framing::chunked());
        b.write_all(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nt: v\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        t.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn a_length_ends_the_body() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = PostTunnel::new(a, Framing::Length(4));
        b.write_all(b"abcdefgh").await.expect("write");
        let mut got = Vec::new();
        t.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"abcd");
    }

    #[tokio::test]
    async fn writes_go_up_as_chunks_and_the_end_as_the_last() {
        let (a, mut b) = tokio::io::duplex(256);
        let mut t = PostTunnel::new(a, Framing::Close);
        t.write_all(b"through the tunnel").await.expect("write");
        t.shutdown().await.expect("shutdown");
        drop(t);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"12\r\nthrough the tunnel\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_bad_chunk_size_is_an_error() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = PostTunnel::new(a, Framing::chunked());
        b.write_all(b"zz\r\n").await.expect("write");
        let mut got = Vec::new();
        assert!(t.read_to_end(&mut got).await.is_err());
    }
}
