//! `Errno`: range, names, and the conversions at the `std::io` edge.
#![cfg(not(loom))]

use errseq::Errno;
use std::io;

#[test]
fn range_is_one_to_max() {
    assert_eq!(Errno::new(0), None);
    assert_eq!(Errno::new(-1), None);
    assert_eq!(Errno::new(i32::MIN), None);
    assert_eq!(Errno::new(Errno::MAX + 1), None);
    assert_eq!(Errno::new(i32::MAX), None);
    assert_eq!(Errno::new(1).map(Errno::get), Some(1));
    assert_eq!(Errno::new(Errno::MAX).map(Errno::get), Some(4095));
    assert_eq!(Errno::EIO.get(), 5);
    assert_eq!(Errno::ENOSPC.get(), 28);
    assert_eq!(i32::from(Errno::ENOSPC), 28);
}

#[test]
fn is_small() {
    assert_eq!(size_of::<Errno>(), 2);
    assert_eq!(size_of::<Option<Errno>>(), 2);
    assert_eq!(size_of::<Result<(), Errno>>(), 2);
}

#[test]
fn every_name_round_trips() {
    for raw in 1..=Errno::MAX {
        let e = Errno::new(raw).unwrap();
        let name = e.name();
        assert!(name.starts_with('E'), "{name}");
        assert_eq!(Errno::from_name(&name), Some(e), "{name}");
        assert_eq!(e.to_string(), name.as_str());
    }
}

#[test]
fn numbered_names() {
    let e = Errno::new(4095).unwrap();
    assert_eq!(e.name(), "E4095");
    assert_eq!(Errno::new(1000).unwrap().name(), "E1000");
    assert_eq!(Errno::from_name("E4095"), Some(e));
    for bad in [
        "",
        "E",
        "E0",
        "E05",
        "E4096",
        "E99999",
        "E-5",
        "E+5",
        "E 5",
        "e5",
        "eio",
        "EIO ",
        "X5",
        "E5x",
        "EWOULDBLOCK",
    ] {
        assert_eq!(Errno::from_name(bad), None, "{bad:?}");
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[test]
fn linux_names() {
    let named = |raw| Errno::new(raw).unwrap().name().as_str().to_owned();
    assert_eq!(named(1), "EPERM");
    assert_eq!(named(5), "EIO");
    assert_eq!(named(11), "EAGAIN");
    assert_eq!(named(28), "ENOSPC");
    assert_eq!(named(30), "EROFS");
    assert_eq!(named(41), "E41");
    assert_eq!(named(58), "E58");
    assert_eq!(named(95), "EOPNOTSUPP");
    assert_eq!(named(116), "ESTALE");
    assert_eq!(named(117), "EUCLEAN");
    assert_eq!(named(122), "EDQUOT");
    assert_eq!(named(133), "EHWPOISON");
    assert_eq!(named(134), "E134");
    assert_eq!(Errno::from_name("EDQUOT").map(Errno::get), Some(122));
}

/// The name table agrees with what the standard library knows about the
/// platform's errno values.
#[cfg(target_os = "linux")]
#[test]
fn names_agree_with_std_error_kinds() {
    use io::ErrorKind::*;
    let cases = [
        ("EPERM", PermissionDenied),
        ("ENOENT", NotFound),
        ("EINTR", Interrupted),
        ("EAGAIN", WouldBlock),
        ("ENOMEM", OutOfMemory),
        ("EACCES", PermissionDenied),
        ("EBUSY", ResourceBusy),
        ("EEXIST", AlreadyExists),
        ("EXDEV", CrossesDevices),
        ("ENOTDIR", NotADirectory),
        ("EISDIR", IsADirectory),
        ("EINVAL", InvalidInput),
        ("ETXTBSY", ExecutableFileBusy),
        ("EFBIG", FileTooLarge),
        ("ENOSPC", StorageFull),
        ("ESPIPE", NotSeekable),
        ("EROFS", ReadOnlyFilesystem),
        ("EMLINK", TooManyLinks),
        ("EPIPE", BrokenPipe),
        ("EDEADLK", Deadlock),
        ("ENAMETOOLONG", InvalidFilename),
        ("ENOSYS", Unsupported),
        ("ENOTEMPTY", DirectoryNotEmpty),
        ("ECONNRESET", ConnectionReset),
        ("ENOTCONN", NotConnected),
        ("ETIMEDOUT", TimedOut),
        ("ECONNREFUSED", ConnectionRefused),
        ("EHOSTUNREACH", HostUnreachable),
        ("ESTALE", StaleNetworkFileHandle),
        ("EDQUOT", QuotaExceeded),
    ];
    for (name, kind) in cases {
        let e = Errno::from_name(name).unwrap_or_else(|| panic!("{name} not known"));
        assert_eq!(io::Error::from(e).kind(), kind, "{name} = {}", e.get());
    }
}

#[test]
fn io_error_edges() {
    let err: io::Error = Errno::EIO.into();
    assert_eq!(err.raw_os_error(), Some(5));
    assert_eq!(Errno::from_io_error(&err), Some(Errno::EIO));
    assert_eq!(Errno::from_io_error(&io::Error::other("synthetic")), None);
    assert_eq!(
        Errno::from_io_error(&io::Error::from(io::ErrorKind::StorageFull)),
        None
    );
    assert_eq!(Errno::from_io_error(&io::Error::from_raw_os_error(0)), None);
    assert_eq!(
        Errno::from_io_error(&io::Error::from_raw_os_error(5000)),
        None
    );
}

#[test]
fn formatting() {
    assert_eq!(format!("{}", Errno::EIO), "EIO");
    assert_eq!(format!("{:?}", Errno::EIO), "Errno(5, \"EIO\")");
    assert_eq!(format!("{:?}", Errno::EIO.name()), "\"EIO\"");
    let name = Errno::new(4000).unwrap().name();
    assert_eq!(format!("{name}"), "E4000");
    assert_eq!(name.len(), 5); // through Deref<Target = str>
    let as_ref: &str = name.as_ref();
    assert_eq!(as_ref, "E4000");
    let boxed: Box<dyn std::error::Error> = Box::new(Errno::ENOSPC);
    assert_eq!(boxed.to_string(), "ENOSPC");
}
