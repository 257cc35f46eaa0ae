//! Owned sockets: each core's TCP sockets are plain non-blocking descriptors, read and written
//! with `recv(2)`/`send(2)` (and the write ring, [`crate::uring`]), waiting for readiness
//! through one small io_uring per core ([`Poller`]).
//!
//! Why not glommio's `TcpStream`: it costs about 1.5 KB of RSS per connection (its `Source`
//! state, armed as soon as the stream exists; GLOMMIO-NOTES.md section 7), and it reads and
//! writes exactly this way anyway (`recv`/`send` with `MSG_DONTWAIT`, then a one-shot
//! `IORING_OP_POLL_ADD` after `EAGAIN`, section 1). Here a socket is its descriptor and a
//! 48-byte slot in its core's [`Poller`]: an idle connection holds no armed poll until a read
//! finds nothing to read, exactly as before, and nothing else.
//!
//! How a wait works: `recv` says `EAGAIN`, the socket queues a one-shot `POLL_ADD` (POLLIN, or
//! POLLOUT for a write) on the poller's ring tagged with its slot and the slot's generation, and
//! parks the task's waker in the slot. All polls queued during one pass of the executor go to
//! the kernel in one `io_uring_enter` ([`Poller::submitter`]). The ring signals an eventfd
//! whenever it posts a completion; glommio itself reads that eventfd (an ordinary file read on
//! its own ring, [`Poller::doorbell`]), so a parked core wakes up for it like for any other I/O,
//! and the doorbell task reaps the completions and wakes their tasks. A completion whose slot
//! has been freed or reused since (its generation differs) is ignored.
//!
//! Closing: a socket with an armed poll queues `POLL_REMOVE` for it before its descriptor is
//! closed (the kernel's poll holds a reference to the file, which would keep it open).
//!
//! May touch: descriptors and wakers. May not: know about connections, frames or topics.

use io_uring::{opcode, types, IoUring};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Which way a socket waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read = 0,
    Write = 1,
}

/// One socket's waits.
#[derive(Debug, Default)]
struct Slot {
    /// Bumped when the slot is freed: completions tagged with an older one are stale.
    gen: u32,
    /// The parked waker per direction (`Dir as usize`), and whether a poll is armed for it.
    waker: [Option<Waker>; 2],
    armed: [bool; 2],
}

/// Generations are compared in this many low bits (a tag's top bit stays clear, so no tag is
/// [`REMOVE_TAG`]).
const GEN_MASK: u32 = 0x3fff_ffff;

/// `user_data` of a poll: slot, direction and generation. `POLL_REMOVE` completions carry
/// [`REMOVE_TAG`].
fn tag(slot: u32, dir: Dir, gen: u32) -> u64 {
    (u64::from(gen & GEN_MASK) << 33) | ((dir as u64) << 32) | u64::from(slot)
}

fn untag(data: u64) -> (u32, Dir, u32) {
    let dir = if data >> 32 & 1 == 0 {
        Dir::Read
    } else {
        Dir::Write
    };
    (data as u32, dir, (data >> 33) as u32)
}

const REMOVE_TAG: u64 = u64::MAX;

/// One core's readiness ring. `!Send`: it lives on its core, like the sockets it serves.
pub struct Poller {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Polls queued on the ring and not yet handed to the kernel.
    queued: Cell<u32>,
    /// The submitter task, parked while nothing is queued.
    submitter_waker: RefCell<Option<Waker>>,
    /// The eventfd the ring signals on every completion (read by [`Poller::doorbell`]).
    bell: RawFd,
    /// Wakers taken by a reap, kept between reaps so a reap does not allocate.
    woken: RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field(
                "sockets",
                &(self.slots.borrow().len() - self.free.borrow().len()),
            )
            .finish()
    }
}

impl Poller {
    /// A ring of `entries` submission slots (completions beyond the completion queue are
    /// kept by the kernel, `IORING_FEAT_NODROP`), and its eventfd. Call on the core's thread;
    /// then spawn [`Poller::submitter`] and [`Poller::doorbell`] on its executor.
    pub fn new(entries: u32) -> io::Result<Rc<Poller>> {
        Poller::with_completions(entries, entries.saturating_mul(8).max(1024))
    }

    /// [`Poller::new`] with a completion queue of `cq_entries` (a power of two).
    fn with_completions(entries: u32, cq_entries: u32) -> io::Result<Rc<Poller>> {
        let ring = IoUring::builder().setup_cqsize(cq_entries).build(entries)?;
        // Blocking (no EFD_NONBLOCK): glommio's read of it then waits in the kernel.
        // SAFETY: eventfd(2) has no memory arguments; the result is checked below.
        let bell = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if bell < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Err(e) = ring.submitter().register_eventfd(bell) {
            // SAFETY: `bell` is the eventfd created above and owned by no one else.
            unsafe { libc::close(bell) };
            return Err(e);
        }
        Ok(Rc::new(Poller {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            queued: Cell::new(0),
            submitter_waker: RefCell::new(None),
            bell,
            woken: RefCell::new(Vec::new()),
        }))
    }

    /// Sockets open on this core.
    pub fn sockets(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    fn take_slot(&self) -> u32 {
        if let Some(s) = self.free.borrow_mut().pop() {
            return s;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(Slot::default());
        u32::try_from(slots.len() - 1).expect("fewer than 2^32 sockets per core")
    }

    /// Frees `slot` (its socket is closing): pending polls are removed, late completions
    /// ignored.
    fn release(&self, slot: u32) {
        let armed = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            let armed = s.armed.map(|a| a.then_some(s.gen));
            s.waker = [None, None];
            s.armed = [false, false];
            s.gen = s.gen.wrapping_add(1);
            armed
        };
        let mut removed = false;
        for (dir, gen) in [Dir::Read, Dir::Write].into_iter().zip(armed) {
            if let Some(gen) = gen {
                let sqe = opcode::PollRemove::new(tag(slot, dir, gen))
                    .build()
                    .user_data(REMOVE_TAG);
                self.push(&sqe);
                removed = true;
            }
        }
        if removed {
            // Now, not at the end of the pass: until the removal is in, the kernel's poll
            // keeps the socket open (a listener closed at shutdown would go on taking
            // connections), and the submitter may already be gone at shutdown.
            self.submit_now();
        }
        self.free.borrow_mut().push(slot);
    }

    /// Hands everything queued to the kernel now.
    pub fn submit_now(&self) {
        self.queued.set(0);
        let _ = self.ring.borrow().submit();
    }

    /// Parks `cx`'s waker on `slot` for `dir` and makes sure a poll is armed for it.
    fn wait(&self, slot: u32, fd: RawFd, dir: Dir, cx: &Context<'_>) {
        let gen = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            let d = dir as usize;
            match &mut s.waker[d] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            if s.armed[d] {
                return;
            }
            s.armed[d] = true;
            s.gen
        };
        let mask = match dir {
            Dir::Read => libc::POLLIN | libc::POLLRDHUP,
            Dir::Write => libc::POLLOUT,
        };
        let sqe = opcode::PollAdd::new(types::Fd(fd), mask as u32)
            .build()
            .user_data(tag(slot, dir, gen));
        self.push(&sqe);
    }

    /// Queues `sqe`; the submitter hands it to the kernel at the end of this executor pass
    /// (now, when the queue is full).
    fn push(&self, sqe: &io_uring::squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: poll and poll-remove entries reference no user memory.
        while unsafe { ring.submission().push(sqe) }.is_err() {
            let _ = ring.submit();
            self.queued.set(0);
        }
        drop(ring);
        self.queued.set(self.queued.get() + 1);
        if let Some(w) = self.submitter_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wakes the tasks whose polls completed.
    fn reap(&self) {
        let mut woken = std::mem::take(&mut *self.woken.borrow_mut());
        loop {
            let mut ring = self.ring.borrow_mut();
            let mut slots = self.slots.borrow_mut();
            for cqe in ring.completion() {
                let data = cqe.user_data();
                if data == REMOVE_TAG {
                    continue;
                }
                let (slot, dir, gen) = untag(data);
                let Some(s) = slots.get_mut(slot as usize) else {
                    continue;
                };
                if s.gen & GEN_MASK != gen {
                    continue; // the socket closed (and the slot may serve another now)
                }
                s.armed[dir as usize] = false;
                if let Some(w) = s.waker[dir as usize].take() {
                    woken.push(w);
                }
            }
            // More completions than the completion queue holds (thousands of peers closing at
            // once) wait in the kernel's overflow list, which only an enter flushes: without
            // it their tasks would sleep until some other socket happened to arm a poll.
            if !ring.submission().cq_overflow() {
                break;
            }
            let _ = ring.submit();
        }
        woken.drain(..).for_each(Waker::wake);
        *self.woken.borrow_mut() = woken;
    }

    /// Task: hands queued polls to the kernel, one `io_uring_enter` per executor pass that
    /// queued any (it runs after the tasks that were ready before it).
    pub async fn submitter(self: Rc<Self>) {
        loop {
            futures_lite::future::poll_fn(|cx| {
                if self.queued.get() > 0 {
                    Poll::Ready(())
                } else {
                    *self.submitter_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            // Let the other tasks of this pass queue theirs first.
            futures_lite::future::yield_now().await;
            self.submit_now();
            self.reap();
        }
    }

    /// Task: waits (through glommio's own ring) for the eventfd the ring signals, then wakes
    /// the tasks whose polls completed. Runs until the executor ends.
    pub async fn doorbell(self: Rc<Self>) {
        // SAFETY: a duplicate of the eventfd, owned by the file from here on (the original
        // stays registered with the ring and is closed with the poller).
        let dup = unsafe { libc::dup(self.bell) };
        if dup < 0 {
            tracing::error!(
                "poller: dup(eventfd) failed: {}",
                io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else.
        let bell = unsafe { glommio::io::BufferedFile::from_raw_fd(dup) };
        loop {
            // Consume the count first, then reap: a completion posted after the reap signals
            // the eventfd again, so the next read returns at once (no wake-up is lost).
            if let Err(e) = bell.read_at(0, 8).await {
                tracing::error!("poller: reading its eventfd failed: {e}");
                return;
            }
            self.reap();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.ring.get_mut().submitter().unregister_eventfd();
        // SAFETY: `bell` is the poller's own eventfd, closed only here.
        unsafe { libc::close(self.bell) };
    }
}

/// A non-blocking TCP socket (or listener) owned by one core, waiting through its
/// [`Poller`]. Closed (its polls removed first) on drop.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    slot: u32,
    poller: Rc<Poller>,
}

impl Socket {
    /// Takes ownership of `fd` (non-blocking already, or made so here).
    pub fn new(fd: OwnedFd, poller: &Rc<Poller>) -> io::Result<Socket> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Socket {
            fd,
            slot: poller.take_slot(),
            poller: poller.clone(),
        })
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Runs `call` (a non-blocking syscall returning a count or -1) until it is not
    /// interrupted; on `EAGAIN` parks the task until the socket is ready for `dir`.
    fn poll_io(
        &self,
        cx: &Context<'_>,
        dir: Dir,
        mut call: impl FnMut() -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = call();
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => {
                    self.poller.wait(self.slot, self.fd(), dir, cx);
                    return Poll::Pending;
                }
                e => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads into `buf` (`Ok(0)`: the peer closed), waiting for data.
    pub fn poll_read(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        self.poll_io(cx, Dir::Read, || {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
            unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) }
        })
    }

    /// Writes from `buf` (some of it), waiting for room.
    pub fn poll_write(&self, cx: &Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        self.poll_io(cx, Dir::Write, || {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
            unsafe {
                libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        })
    }

    /// Reads once into `buf`, waiting for data.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = futures_lite::future::poll_fn(|cx| self.poll_write(cx, bytes)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.fd)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(on)
    }

    /// Accepts the next connection of a listening socket, waiting for one (the new socket is
    /// non-blocking already: `SOCK_NONBLOCK`).
    pub async fn accept(&self) -> io::Result<Socket> {
        let fd = self.fd();
        let n = futures_lite::future::poll_fn(|cx| {
            self.poll_io(cx, Dir::Read, || {
                // SAFETY: null address pointers are allowed (the peer address is not wanted).
                let fd = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                fd as isize
            })
        })
        .await?;
        // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(n as RawFd) };
        Ok(Socket {
            fd,
            slot: self.poller.take_slot(),
            poller: self.poller.clone(),
        })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Its armed polls are removed first (an armed poll holds a reference to the file, so
        // the socket would stay open), then `fd` closes. The removal finds a poll by its tag,
        // not by the descriptor number (which may be handed out again at once).
        self.poller.release(self.slot);
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    type TestFn<T> = Box<
        dyn FnOnce(Rc<Poller>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send,
    >;

    /// Runs `f` on a glommio executor with a poller and its two tasks.
    fn with_poller<T: Send + 'static>(
        f: impl FnOnce(Rc<Poller>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> T {
        with_poller_cq(1024, Box::new(f))
    }

    /// [`with_poller`] with a completion queue of `cq` entries.
    fn with_poller_cq<T: Send + 'static>(cq: u32, f: TestFn<T>) -> T {
        glommio::LocalExecutorBuilder::default()
            .io_memory(64 * 1024)
            .spawn(move || async move {
                let poller = Poller::with_completions(8, cq).unwrap();
                glommio::spawn_local(poller.clone().submitter()).detach();
                glommio::spawn_local(poller.clone().doorbell()).detach();
                f(poller).await
            })
            .unwrap()
            .join()
            .unwrap()
    }

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn a_read_waits_for_data_that_comes_later_and_sees_the_close() {
        let (mut client, server) = pair();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            client.write_all(b"hello").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            drop(client);
        });
        let (got, end) = with_poller(move |p| {
            Box::pin(async move {
                let s = Socket::new(server.into(), &p).unwrap();
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).await.unwrap();
                let got = buf[..n].to_vec();
                let end = s.read(&mut buf).await.unwrap();
                (got, end)
            })
        });
        writer.join().unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(end, 0, "the peer's close reads as 0");
    }

    #[test]
    fn a_full_socket_waits_for_room_and_every_byte_arrives_in_order() {
        let (mut client, server) = pair();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        const TOTAL: usize = 4 << 20;
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200)); // let the writer fill the socket
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        with_poller(move |p| {
            Box::pin(async move {
                let s = Socket::new(server.into(), &p).unwrap();
                let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
                s.write_all(&data).await.unwrap();
            })
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), TOTAL);
        assert!(all.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    #[test]
    fn a_closed_socket_releases_its_poll_and_its_slot_serves_the_next_one() {
        let (c1, s1) = pair();
        let (mut c2, s2) = pair();
        let (peer_saw_close, got) = with_poller(move |p| {
            Box::pin(async move {
                let first = Socket::new(s1.into(), &p).unwrap();
                let slot = first.slot;
                // Arm a read poll on it, then close it with the poll armed.
                let mut buf = [0u8; 8];
                let waiting = futures_lite::future::poll_once(first.read(&mut buf)).await;
                assert!(waiting.is_none());
                drop(first);
                // The removal went in: the peer sees the socket closed at once (an armed poll
                // would hold the file open).
                let mut c1 = c1;
                c1.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let saw = c1.read(&mut [0u8; 1]).map(|n| n == 0).unwrap_or(false);
                let second = Socket::new(s2.into(), &p).unwrap();
                assert_eq!(second.slot, slot, "the slot is reused");
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    c2.write_all(b"x").unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                });
                let n = second.read(&mut buf).await.unwrap();
                assert_eq!(p.sockets(), 1);
                (saw, buf[..n].to_vec())
            })
        });
        assert!(
            peer_saw_close,
            "closing with an armed poll closes the socket"
        );
        assert_eq!(got, b"x");
    }

    #[test]
    fn accept_waits_for_a_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let connector = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(addr).unwrap()
        });
        let ok = with_poller(move |p| {
            Box::pin(async move {
                let listener = Socket::new(l.into(), &p).unwrap();
                let accepted = listener.accept().await.unwrap();
                accepted.peer_addr().is_ok()
            })
        });
        connector.join().unwrap();
        assert!(ok);
    }

    /// More completions at once than the completion queue holds (16 here): every waiting task
    /// is still woken (the overflow is flushed), none sleeps until some other poll.
    #[test]
    fn more_completions_at_once_than_the_queue_holds_wake_every_task() {
        const N: usize = 200;
        let pairs: Vec<_> = (0..N).map(|_| pair()).collect();
        let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            go_rx.recv().unwrap();
            let mut clients = clients;
            for c in &mut clients {
                c.write_all(b"z").unwrap();
            }
            clients
        });
        let woken = with_poller_cq(
            16,
            Box::new(move |p| {
                Box::pin(async move {
                    let done = Rc::new(Cell::new(0usize));
                    for s in servers {
                        let s = Socket::new(s.into(), &p).unwrap();
                        let done = done.clone();
                        glommio::spawn_local(async move {
                            let mut b = [0u8; 1];
                            if s.read(&mut b).await.unwrap() == 1 {
                                done.set(done.get() + 1);
                            }
                        })
                        .detach();
                    }
                    // Let every task arm its poll and the submitter hand them in.
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    go_tx.send(()).unwrap();
                    // Hold the core while all the completions arrive, so they pile up.
                    std::thread::sleep(Duration::from_millis(500));
                    let t0 = std::time::Instant::now();
                    while done.get() < N && t0.elapsed() < Duration::from_secs(5) {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    done.get()
                })
            }),
        );
        drop(writer.join().unwrap());
        assert_eq!(woken, N);
    }

    #[test]
    fn tags_round_trip() {
        for (slot, dir, gen) in [
            (0, Dir::Read, 0),
            (u32::MAX, Dir::Write, GEN_MASK),
            (7, Dir::Write, 3),
        ] {
            assert_eq!(untag(tag(slot, dir, gen)), (slot, dir, gen));
            assert_ne!(tag(slot, dir, gen), REMOVE_TAG);
        }
    }
}
