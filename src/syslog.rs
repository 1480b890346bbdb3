//! The daemon's log when it has no log file: a mount of lowers only has no
//! workdir to keep `rovl.log` in, and a daemonized rovl's stderr is
//! /dev/null, so its warnings (and a panic, which must never happen) would
//! otherwise go nowhere. Each log line becomes one syslog datagram
//! (`<PRI>rovl[PID]: line`, facility daemon) on the local syslog socket,
//! `/dev/log` or the path in `ROVL_SYSLOG`, which journald and rsyslog read.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Where the local syslog daemon listens unless `ROVL_SYSLOG` says otherwise.
const DEFAULT_SOCKET: &str = "/dev/log";

/// Longest datagram sent; a longer line (a panic's backtrace) is cut, since
/// a datagram above the socket's buffer would be refused whole.
const MAX_LINE: usize = 60 * 1024;

/// syslog's facility `daemon`, already shifted into place.
const FACILITY_DAEMON: u8 = 3 << 3;

/// The syslog socket the daemon logs to, if one answers.
#[derive(Debug)]
pub struct Syslog {
    sock: Mutex<UnixDatagram>,
    path: PathBuf,
    pid: u32,
}

impl Syslog {
    /// Connects to `ROVL_SYSLOG` or `/dev/log`; `None` when nothing listens
    /// there.
    pub fn connect() -> Option<Syslog> {
        let path = std::env::var_os("ROVL_SYSLOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Syslog::at(path, std::process::id()).ok()
    }

    /// Connected to the socket at `path`, its lines tagged with `pid`.
    fn at(path: PathBuf, pid: u32) -> io::Result<Syslog> {
        Ok(Syslog {
            sock: Mutex::new(open(&path)?),
            path,
            pid,
        })
    }

    fn line(&self, level: Level) -> Line<'_> {
        let severity = match level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(
            format!("<{}>rovl[{}]: ", FACILITY_DAEMON | severity, self.pid).as_bytes(),
        );
        Line { to: self, buf }
    }

    /// Sends one datagram, never waiting: a request handler that logs must
    /// not stall on a busy syslog daemon, so a line that does not fit in
    /// the socket's buffer is dropped. After a restart of the syslog daemon
    /// the old connection is refused: it reconnects once and keeps the new
    /// one.
    fn send(&self, msg: &[u8]) {
        let mut sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        match sock.send(msg) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                if let Ok(fresh) = open(&self.path) {
                    let _ = fresh.send(msg);
                    *sock = fresh;
                }
            }
            _ => {}
        }
    }
}

/// A non-blocking datagram socket connected to `path`.
fn open(path: &Path) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    sock.connect(path)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        self.line(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        self.line(*meta.level())
    }
}

/// One log line being formatted; sent when dropped.
#[derive(Debug)]
pub struct Line<'a> {
    to: &'a Syslog,
    buf: Vec<u8>,
}

impl io::Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        self.buf.truncate(MAX_LINE);
        self.to.send(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_line_is_one_datagram_with_priority_and_pid() {
        let (_path, server, log) = listening("syslog", 42);
        {
            let mut l = log.line(Level::WARN);
            l.write_all(b"first part, ").unwrap();
            l.write_all(b"second part\n").unwrap();
        }
        let mut got = [0u8; 256];
        let n = server.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"<28>rovl[42]: first part, second part");
        {
            let mut l = log.line(Level::ERROR);
            l.write_all(&vec![b'x'; 2 * MAX_LINE]).unwrap();
        }
        let mut big = vec![0u8; 4 * MAX_LINE];
        let n = server.recv(&mut big).unwrap();
        assert_eq!(n, MAX_LINE);
        assert!(big.starts_with(b"<27>rovl[42]: xxx"));
    }

    /// A scratch socket path, a server bound there, and a `Syslog`
    /// connected to it.
    fn listening(tag: &str, pid: u32) -> (crate::sys::Scratch, UnixDatagram, Syslog) {
        let path = crate::sys::Scratch::new("/tmp", tag);
        let server = UnixDatagram::bind(&*path).unwrap();
        let log = Syslog::at(path.to_path_buf(), pid).unwrap();
        (path, server, log)
    }

    fn send_line(log: &Syslog, text: &str) {
        let mut l = log.line(Level::INFO);
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_full_socket_drops_lines_instead_of_waiting() {
        let (_path, server, log) = listening("syslog-full", 1);
        // Nobody reads: the receive queue fills after a few hundred lines
        // (net.unix.max_dgram_qlen), and a blocking send would hang here.
        for i in 0..20_000 {
            send_line(&log, &format!("line {i}"));
        }
        server.set_nonblocking(true).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 256];
        while server.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert!(got > 0 && got < 20_000, "{got} lines queued");
    }

    #[test]
    fn it_reconnects_after_the_syslog_daemon_restarts() {
        let (path, first, log) = listening("syslog-restart", 7);
        send_line(&log, "before");
        let mut buf = [0u8; 256];
        let n = first.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>rovl[7]: before");
        drop(first);
        std::fs::remove_file(&*path).unwrap();
        let second = UnixDatagram::bind(&*path).unwrap();
        send_line(&log, "after");
        send_line(&log, "and again");
        second.set_nonblocking(true).unwrap();
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>rovl[7]: after");
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>rovl[7]: and again");
    }
}
