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
pub fn read<S: Read>(socket: &mut S, buf: &mut [u8]) -> IoOutcome {
    loop {
        match socket.read(buf) {
            Ok(0) => return IoOutcome::Closed,
            Ok(n) => return IoOutcome::Progress(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return classify(error),
        }
    }
}

/// Writes `slices` with one vectored write, retrying on EINTR.
pub fn write_vectored<S: Write>(socket: &mut S, slices: &[IoSlice<'_>]) -> IoOutcome {
    loop {
        match socket.write_vectored(slices) {
            Ok(0) => return IoOutcome::Error(io::ErrorKind::WriteZero.into()),
            Ok(n) => return IoOutcome::Progress(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return classify(error),
        }
    }
}

/// A byte stream herald can serve: a TCP socket, or a scripted one in tests.
pub trait Transport: Read + Write {
    /// Half-closes the sending side (TCP FIN) while reading goes on.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Transport for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}
