//! The write path: each loop turn, every connection with pending bytes is written once, and on
//! the io_uring path all of those writes go to the kernel in ONE `io_uring_enter`.
//!
//! glommio 0.9 writes TCP with a plain `send(2)` per call and uses io_uring only to wait for
//! readiness (GLOMMIO-NOTES.md, section 1), so each core owns a second, small ring here used
//! only for `IORING_OP_SEND`. Every send carries `MSG_DONTWAIT`: a socket whose buffer is full
//! completes at once with `-EAGAIN` instead of parking inside the kernel, so a batch never has
//! completions outstanding across loop turns and the buffers only need to live for the call.
//! A connection that gets `-EAGAIN` or a short write is handed back to the caller, which waits
//! for writability the ordinary glommio way.
//!
//! Each connection's socket is registered in the ring's sparse file table at its slab slot
//! ([`Writer::register`]), so a send names it by index and the kernel skips the file lookup and
//! reference count it pays per SQE otherwise (`fget`, 3.5 % of the gateway's CPU at 10,000
//! subscribers); a slot past the table (or a kernel that refuses) sends by descriptor.
//!
//! [`WritePath::Send`] keeps the coalesced `send(2)` baseline behind the same interface.
//! May not: know about connections, frames or topics; it writes byte slices to fds.

use crate::config::WritePath;
use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// One write: all pending bytes of one connection.
#[derive(Debug, Clone, Copy)]
pub struct SendOp<'a> {
    /// The connection's socket.
    pub fd: RawFd,
    /// Its index in the ring's registered files ([`Writer::register`]), when it has one: the
    /// kernel then skips looking the file up (and counting a reference) for each send.
    pub fixed: Option<u32>,
    /// Its pending bytes, contiguous.
    pub buf: &'a [u8],
}

/// Writes batches of [`SendOp`]s through io_uring or `send(2)`.
pub struct Writer {
    ring: Option<IoUring>,
    /// Sends per submit (the ring's SQ size).
    batch: usize,
    /// Slots of the registered (sparse) file table; 0 when there is none.
    fixed_slots: u32,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &if self.ring.is_some() { "uring" } else { "send" })
            .field("batch", &self.batch)
            .finish()
    }
}

const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

impl Writer {
    /// Builds the writer on the calling thread (the core's own thread: the ring is created with
    /// SINGLE_ISSUER where the kernel supports it).
    pub fn new(path: WritePath, entries: u32) -> io::Result<Writer> {
        match path {
            WritePath::Send => Ok(Writer {
                ring: None,
                batch: entries as usize,
                fixed_slots: 0,
            }),
            WritePath::Uring => {
                let ring = IoUring::builder()
                    .setup_single_issuer()
                    .setup_coop_taskrun()
                    .build(entries)
                    .or_else(|_| IoUring::new(entries))?;
                let batch = ring.params().sq_entries() as usize;
                Ok(Writer {
                    ring: Some(ring),
                    batch,
                    fixed_slots: 0,
                })
            }
        }
    }

    /// Registers a sparse table of `slots` files with the ring (io_uring path only; the kernel
    /// caps it at RLIMIT_NOFILE). Without it, or when the kernel refuses, sends name plain
    /// descriptors.
    pub fn with_fixed_files(mut self, slots: u32) -> Writer {
        if let Some(ring) = &self.ring {
            if slots > 0 && ring.submitter().register_files_sparse(slots).is_ok() {
                self.fixed_slots = slots;
            }
        }
        self
    }

    /// Puts `fd` at `slot` of the registered files; true when it is there (then the caller
    /// must [`Writer::unregister`] it before the descriptor is closed for good: the table holds
    /// a reference to the socket).
    pub fn register(&mut self, slot: u32, fd: RawFd) -> bool {
        match &self.ring {
            Some(ring) if slot < self.fixed_slots => {
                ring.submitter().register_files_update(slot, &[fd]).is_ok()
            }
            _ => false,
        }
    }

    /// Empties `slot` of the registered files.
    pub fn unregister(&mut self, slot: u32) {
        if let Some(ring) = &self.ring {
            if slot < self.fixed_slots {
                let _ = ring.submitter().register_files_update(slot, &[-1]);
            }
        }
    }

    /// Which path this writer takes.
    pub fn path(&self) -> WritePath {
        if self.ring.is_some() {
            WritePath::Uring
        } else {
            WritePath::Send
        }
    }

    /// Writes each op once. `results[i]` is the byte count written for `ops[i]` (possibly short),
    /// or `-errno` (`-EAGAIN` when the socket buffer is full). One `io_uring_enter` per
    /// `batch` ops on the io_uring path; one `send(2)` per op otherwise.
    pub fn write_batch(&mut self, ops: &[SendOp<'_>], results: &mut Vec<i32>) -> io::Result<()> {
        results.clear();
        results.resize(ops.len(), 0);
        let Some(ring) = self.ring.as_mut() else {
            for (op, res) in ops.iter().zip(results.iter_mut()) {
                *res = send_now(op);
            }
            return Ok(());
        };
        for (chunk_no, chunk) in ops.chunks(self.batch).enumerate() {
            let base = chunk_no * self.batch;
            {
                let mut sq = ring.submission();
                for (i, op) in chunk.iter().enumerate() {
                    let len = op.buf.len().min(u32::MAX as usize) as u32;
                    let sqe = match op.fixed {
                        Some(idx) => opcode::Send::new(types::Fixed(idx), op.buf.as_ptr(), len),
                        None => opcode::Send::new(types::Fd(op.fd), op.buf.as_ptr(), len),
                    }
                    .flags(SEND_FLAGS)
                    .build()
                    .user_data((base + i) as u64);
                    // SAFETY: the SQE points into `op.buf`, which is borrowed for the whole call,
                    // and this function does not return before every SQE of the chunk has
                    // completed (the loop below waits for exactly `chunk.len()` CQEs), so the
                    // kernel never reads the buffer after it is released. The SQ has room:
                    // chunks are at most `sq_entries` long and the SQ is empty on entry.
                    unsafe { sq.push(&sqe) }.expect("chunk fits in an empty submission queue");
                }
            }
            let mut done = 0usize;
            while done < chunk.len() {
                match ring.submit_and_wait(chunk.len() - done) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(e),
                }
                for cqe in ring.completion() {
                    results[cqe.user_data() as usize] = cqe.result();
                    done += 1;
                }
            }
        }
        Ok(())
    }
}

fn send_now(op: &SendOp<'_>) -> i32 {
    // SAFETY: `op.buf` is a valid slice for the duration of the call; send(2) only reads it.
    let n = unsafe { libc::send(op.fd, op.buf.as_ptr().cast(), op.buf.len(), SEND_FLAGS) };
    if n < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        n as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn roundtrip(path: WritePath) {
        let mut w = Writer::new(path, 8).unwrap();
        assert_eq!(w.path(), path);
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..20).map(|_| UnixStream::pair().unwrap()).collect();
        let bufs: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 100 + i]).collect();
        let ops: Vec<SendOp<'_>> = pairs
            .iter()
            .zip(&bufs)
            .map(|((a, _), b)| SendOp {
                fd: a.as_raw_fd(),
                fixed: None,
                buf: b,
            })
            .collect();
        let mut results = Vec::new();
        w.write_batch(&ops, &mut results).unwrap();
        for (i, ((_, mut b), buf)) in pairs.into_iter().zip(&bufs).enumerate() {
            assert_eq!(results[i], buf.len() as i32);
            let mut got = vec![0u8; buf.len()];
            b.read_exact(&mut got).unwrap();
            assert_eq!(&got, buf);
        }
    }

    #[test]
    fn uring_batches_more_sends_than_the_ring_holds() {
        roundtrip(WritePath::Uring);
    }

    #[test]
    fn send_path_writes_the_same_bytes() {
        roundtrip(WritePath::Send);
    }

    #[test]
    fn a_full_socket_reports_eagain_not_a_hang() {
        let mut w = Writer::new(WritePath::Uring, 8).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let big = vec![7u8; 1 << 20];
        let mut results = Vec::new();
        let mut total = 0i64;
        for _ in 0..64 {
            w.write_batch(
                &[SendOp {
                    fd: a.as_raw_fd(),
                    fixed: None,
                    buf: &big,
                }],
                &mut results,
            )
            .unwrap();
            if results[0] == -libc::EAGAIN {
                assert!(total > 0);
                return;
            }
            assert!(results[0] > 0, "{}", results[0]);
            total += i64::from(results[0]);
        }
        panic!("never saw EAGAIN after {total} bytes");
    }

    #[test]
    fn registered_files_carry_the_same_bytes_and_slots_are_reused() {
        let mut w = Writer::new(WritePath::Uring, 8)
            .unwrap()
            .with_fixed_files(4);
        let (a, mut b) = UnixStream::pair().unwrap();
        assert!(w.register(2, a.as_raw_fd()));
        assert!(
            !w.register(4, a.as_raw_fd()),
            "past the table: plain descriptor"
        );
        let mut results = Vec::new();
        let op = |fixed| SendOp {
            fd: a.as_raw_fd(),
            fixed,
            buf: b"hello",
        };
        w.write_batch(&[op(Some(2)), op(None)], &mut results)
            .unwrap();
        assert_eq!(results, vec![5, 5]);
        let mut got = [0u8; 10];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hellohello");
        // Emptied, the slot names nothing (EBADF), and takes another socket.
        w.unregister(2);
        w.write_batch(&[op(Some(2))], &mut results).unwrap();
        assert_eq!(results[0], -libc::EBADF);
        let (c, mut d) = UnixStream::pair().unwrap();
        assert!(w.register(2, c.as_raw_fd()));
        w.write_batch(
            &[SendOp {
                fd: c.as_raw_fd(),
                fixed: Some(2),
                buf: b"again",
            }],
            &mut results,
        )
        .unwrap();
        let mut got = [0u8; 5];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        let mut w = Writer::new(WritePath::Uring, 8).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut results = Vec::new();
        w.write_batch(
            &[SendOp {
                fd: a.as_raw_fd(),
                fixed: None,
                buf: b"x",
            }],
            &mut results,
        )
        .unwrap();
        assert_eq!(results[0], -libc::EPIPE);
    }
}
