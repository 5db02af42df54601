//! The accepted TCP connections, wrapped so that HTTP/2 writes a reply in
//! one system call.
//!
//! h2 keeps a DATA frame's payload out of its write buffer whenever the
//! socket says it can write vectors and the payload is 256 bytes or more,
//! and it then flushes the socket before it encodes the next frame. A
//! unary gRPC reply is HEADERS, DATA and the trailers, so every reply of
//! ours (300-odd bytes) went out in two writes: HEADERS and DATA, then a
//! 10-byte write of the trailers, each one waking the client once more.
//! Told that the socket does not write vectors, h2 copies payloads under
//! 1 KiB into its buffer and flushes once; the [`BufWriter`] underneath
//! turns the frame head and payload of a bigger frame into one write too.
//! h2 flushes at the end of every poll of the connection, so nothing waits
//! in the buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Write buffer per connection: one HTTP/2 frame of the default size
/// (16 KiB) and its head, so h2's own buffer drains in one write.
const WRITE_BUFFER: usize = 16 * 1024 + 64;

/// A server connection that writes each flush in one system call.
pub struct Coalesced {
    inner: BufWriter<TcpStream>,
}

impl Coalesced {
    pub fn new(stream: TcpStream) -> Coalesced {
        Coalesced {
            inner: BufWriter::with_capacity(WRITE_BUFFER, stream),
        }
    }
}

impl Connected for Coalesced {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.get_ref().connect_info()
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// The point of the wrapper: see the module documentation.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Coalesced, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (Coalesced::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_together() {
        let (mut server, mut client) = pair().await;
        assert!(!server.is_write_vectored(), "h2 must copy small payloads");
        assert_eq!(
            server.connect_info().local_addr(),
            server.inner.get_ref().local_addr().ok()
        );

        server.write_all(b"HEADERS+DATA").await.unwrap();
        server.write_all(b"|TRAILERS").await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "nothing may reach the peer before the flush"
        );

        server.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 21 {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HEADERS+DATA|TRAILERS");
    }

    #[tokio::test]
    async fn reads_and_frames_bigger_than_the_buffer_pass_through() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 3 * WRITE_BUFFER];
        let writer = async {
            server.write_all(&big).await.unwrap();
            server.flush().await.unwrap();
            server
        };
        let reader = async {
            let mut got = vec![0u8; big.len()];
            client.read_exact(&mut got).await.unwrap();
            client.write_all(b"reply").await.unwrap();
            (got, client)
        };
        let (mut server, (got, _client)) = tokio::join!(writer, reader);
        assert_eq!(got, big);
        let mut reply = [0u8; 5];
        server.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }
}
