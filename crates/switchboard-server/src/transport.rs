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
//! 1 KiB into its buffer and flushes once. A bigger payload (a snapshot)
//! goes out in two writes, its first KiB with the frame head, then the
//! rest: rare, and cheaper than a write buffer per connection (16 KiB
//! each, ~40 MiB more resident at 10,000 agents when tried).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A server connection on which h2 writes each reply in one system call.
pub struct Coalesced {
    inner: TcpStream,
}

impl Coalesced {
    pub fn new(stream: TcpStream) -> Coalesced {
        Coalesced { inner: stream }
    }
}

impl Connected for Coalesced {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Coalesced, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (Coalesced::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn says_it_cannot_write_vectors_and_keeps_the_peer_address() {
        let (server, client) = pair().await;
        assert!(!server.is_write_vectored(), "h2 must copy small payloads");
        assert_eq!(
            server.connect_info().remote_addr(),
            client.local_addr().ok()
        );
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 64 * 1024];
        let writer = async {
            server.write_all(b"HEADERS+DATA|TRAILERS").await.unwrap();
            server.write_all(&big).await.unwrap();
            server.flush().await.unwrap();
            server
        };
        let reader = async {
            let mut got = vec![0u8; 21 + big.len()];
            client.read_exact(&mut got).await.unwrap();
            client.write_all(b"reply").await.unwrap();
            (got, client)
        };
        let (mut server, (got, _client)) = tokio::join!(writer, reader);
        assert_eq!(&got[..21], b"HEADERS+DATA|TRAILERS");
        assert_eq!(&got[21..], &big[..]);
        let mut reply = [0u8; 5];
        server.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }
}
