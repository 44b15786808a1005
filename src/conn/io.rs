//! Socket reads and writes reduced to a small outcome, so the state machine never interprets errno.

use std::io::{self, IoSlice, Read, Write};

/// What one read or write did.
#[derive(Debug)]
pub enum IoOutcome {
    /// This many bytes moved (never 0).
    Progress(usize),
    /// The socket has nothing (read) or no room (write) now.
    WouldBlock,
    /// The peer closed or reset the connection.
    Closed,
    /// Any other failure.
    Error(io::Error),
}

fn classify(error: io::Error) -> IoOutcome {
    match error.kind() {
        io::ErrorKind::WouldBlock => IoOutcome::WouldBlock,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => IoOutcome::Closed,
        _ => IoOutcome::Error(error),
    }
}

/// Reads into `buf` (which must not be empty), retrying on EINTR.
pub fn read<S: Transport>(socket: &mut S, buf: &mut [u8]) -> IoOutcome {
    loop {
        match socket.receive(buf) {
            Ok(0) => return IoOutcome::Closed,
            Ok(n) => return IoOutcome::Progress(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return classify(error),
        }
    }
}

/// Writes `slices` with one vectored send, retrying on EINTR.
pub fn write_vectored<S: SendVectored>(socket: &mut S, slices: &[IoSlice<'_>]) -> IoOutcome {
    loop {
        match socket.send_vectored(slices) {
            Ok(0) => return IoOutcome::Error(io::ErrorKind::WriteZero.into()),
            Ok(n) => return IoOutcome::Progress(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return classify(error),
        }
    }
}

/// Vectored sends. On a socket this is sendmsg(2), which goes straight to
/// the socket layer (writev(2) passes through the file layer first: a few
/// hundred nanoseconds per call, measurable when every delivery is a call).
pub trait SendVectored: Write {
    /// Sends as much of `slices` as the socket takes.
    fn send_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(slices)
    }
}

impl SendVectored for mio::net::TcpStream {
    fn send_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut no_control = rustix::net::SendAncillaryBuffer::default();
        rustix::net::sendmsg(&*self, slices, &mut no_control, rustix::net::SendFlags::NOSIGNAL)
            .map_err(io::Error::from)
    }
}

impl SendVectored for Vec<u8> {}

/// A byte stream herald can serve: a TCP socket, or a scripted one in tests.
pub trait Transport: Read + SendVectored {
    /// Reads what has arrived (recv(2) on a socket).
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    /// Half-closes the sending side (TCP FIN) while reading goes on.
    fn shutdown_write(&self) -> io::Result<()>;

    /// The peer's address, where there is one.
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        None
    }
}

impl Transport for mio::net::TcpStream {
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::net::recv(&*self, buf, rustix::net::RecvFlags::empty())
            .map(|(received, _)| received)
            .map_err(io::Error::from)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer_addr().ok().map(|addr| addr.ip())
    }
}
