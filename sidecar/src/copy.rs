//! Copying both ways between two streams (the relay of opaque TCP, HTTP relay ports and the
//! outbound side) without holding buffers while a connection is idle.
//!
//! `tokio::io::copy_bidirectional` owns one buffer per direction for the connection's whole life:
//! 2 × 16 KiB per relayed connection, idle or not. Here every read goes into one scratch buffer
//! per thread and is written on at once; only bytes the other side cannot take yet are copied into
//! a buffer of the connection's own, which is freed as soon as it has been written. An idle
//! connection holds no relay buffer at all, and a busy one costs a copy only when its writer
//! pushes back.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved per read: the largest TLS record's plaintext, so one read decrypts one full
/// record and one write encrypts one (tokio's default, 8 KiB, halves both).
pub const CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where every relay on this thread reads into. It is only borrowed within one poll, which
    /// never polls another relay, so no two borrows overlap.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// One direction of the copy.
#[derive(Default)]
struct Half {
    /// Read but not yet written (the writer pushed back); empty and unallocated otherwise.
    pending: Vec<u8>,
    written: usize,
    /// The reader reached EOF: shut the writer down once `pending` is written.
    read_done: bool,
    /// Written since the last flush.
    unflushed: bool,
    done: bool,
    amount: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.amount += n as u64;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                // Written out: give the memory back rather than keep it for the next burst.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        self.read_done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => Poll::Ready(self.write_now(cx, w, buf.filled())),
                }
            });
            match read {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // Nothing to read: what was written must not wait in the writer's buffer
                    // (a TLS writer holds whole records until flushed).
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Writes `data` (in the scratch buffer) as far as the writer takes it now and keeps the rest.
    fn write_now<W>(&mut self, cx: &mut Context<'_>, w: &mut W, mut data: &[u8]) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        while !data.is_empty() {
            match Pin::new(&mut *w).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    data = &data[n..];
                    self.amount += n as u64;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    // The writer registered this task's waker; the rest waits in our own buffer.
                    self.pending = data.to_vec();
                    self.written = 0;
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions reached EOF (each passed on as a
/// shutdown of the other side's writer), or either fails. Returns the bytes moved each way.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Half::default(), Half::default());
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, a, b)?;
        let back = b_to_a.poll_copy(cx, b, a)?;
        match (forward, back) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((a_to_b.amount, b_to_a.amount))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_both_ways_with_backpressure_and_half_closes() {
        // Tiny pipes: almost every write pushes back, so the pending path carries most bytes.
        let (mut client, mut near) = tokio::io::duplex(64);
        let (mut far, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { bidirectional(&mut near, &mut far).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut rd, mut wr) = tokio::io::split(&mut server);
            let (read, ()) = tokio::join!(rd.read_to_end(&mut got), async {
                wr.write_all(&down2).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            read.unwrap();
            got
        });
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let mut got = Vec::new();
        let (read, ()) = tokio::join!(rd.read_to_end(&mut got), async {
            wr.write_all(&up2).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        read.unwrap();
        assert_eq!(got, down, "server → client intact");
        assert_eq!(server_side.await.unwrap(), up, "client → server intact");
        let (to_b, to_a) = relay.await.unwrap().unwrap();
        assert_eq!((to_b, to_a), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn bytes_the_writer_refused_are_held_only_until_written() {
        let (mut client, mut r) = tokio::io::duplex(64 * 1024);
        let (mut w, mut server) = tokio::io::duplex(1024);
        client.write_all(&[7u8; 8192]).await.unwrap();
        let mut half = Half::default();
        let once =
            |half: &mut Half, r: &mut tokio::io::DuplexStream, w: &mut tokio::io::DuplexStream| {
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                half.poll_copy(&mut cx, r, w)
            };
        assert!(once(&mut half, &mut r, &mut w).is_pending());
        assert_eq!(
            half.pending.len() - half.written,
            8192 - 1024,
            "the pipe took 1 KiB"
        );
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < 8192 {
            got += server.read(&mut buf).await.unwrap();
            let _ = once(&mut half, &mut r, &mut w);
        }
        assert!(
            once(&mut half, &mut r, &mut w).is_pending(),
            "waiting to read again"
        );
        assert_eq!(half.pending.capacity(), 0, "nothing held once written");
        assert_eq!(half.amount, 8192);
        // EOF from the reader is passed on as a shutdown once everything is written.
        drop(client);
        assert!(once(&mut half, &mut r, &mut w).is_ready());
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
