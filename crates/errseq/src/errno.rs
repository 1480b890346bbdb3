//! [`Errno`], the error an [`ErrSeq`](crate::ErrSeq) records, and its name.

use core::fmt;
use core::num::NonZeroU16;

/// A positive `errno` value, small enough to live in an [`ErrSeq`](crate::ErrSeq) word.
///
/// The value is in `1..=`[`Errno::MAX`] (4095, the kernel's `MAX_ERRNO`); every
/// errno a Linux system call returns is far below that. It is two bytes, `Copy`,
/// and `Option<Errno>` and `Result<(), Errno>` are two bytes as well.
///
/// At the edges it converts to and from [`std::io::Error`] (with the default
/// `std` feature) and to and from its name, such as `"EIO"`, for logs and
/// journals ([`Errno::name`], [`Errno::from_name`]).
///
/// ```
/// use errseq::Errno;
///
/// let e = Errno::new(28).unwrap();
/// assert_eq!(e, Errno::ENOSPC);
/// assert_eq!(e.get(), 28);
/// assert_eq!(Errno::new(0), None);
/// assert_eq!(Errno::new(-5), None);
/// assert_eq!(Errno::new(4096), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(NonZeroU16);

impl Errno {
    /// The largest value an `Errno` can hold: 4095, the kernel's `MAX_ERRNO`
    /// (it fits the 12 errno bits of an [`ErrSeq`](crate::ErrSeq) word).
    pub const MAX: i32 = 4095;

    /// `EIO` (5): input/output error, the usual writeback error. Its number is
    /// the same on every Unix.
    pub const EIO: Errno = Errno::new_const(5);

    /// `ENOSPC` (28): no space left on device, the other usual writeback error.
    /// Its number is the same on every Unix.
    pub const ENOSPC: Errno = Errno::new_const(28);

    const fn new_const(raw: u16) -> Errno {
        match NonZeroU16::new(raw) {
            Some(n) => Errno(n),
            None => panic!("an errno is never zero"),
        }
    }

    /// The `Errno` for a raw value, or `None` unless `1 <= raw <= Errno::MAX`.
    ///
    /// A negative kernel-style return (`-EIO`) is not accepted: negate it first.
    #[must_use]
    pub const fn new(raw: i32) -> Option<Errno> {
        if raw < 1 || raw > Errno::MAX {
            return None;
        }
        // In range 1..=4095, so the cast is lossless and the value non-zero.
        match NonZeroU16::new(raw as u16) {
            Some(n) => Some(Errno(n)),
            None => None,
        }
    }

    /// The raw value, in `1..=Errno::MAX`.
    #[must_use]
    pub const fn get(self) -> i32 {
        self.0.get() as i32
    }

    /// The value as the 12 low bits of a word (crate-internal).
    pub(crate) const fn bits(self) -> u32 {
        self.0.get() as u32
    }

    /// The `Errno` held in the 12 low bits of a word, if they are not zero
    /// (crate-internal; the caller masks the word).
    pub(crate) const fn from_bits(bits: u32) -> Option<Errno> {
        debug_assert!(bits <= Errno::MAX as u32);
        match NonZeroU16::new(bits as u16) {
            Some(n) => Some(Errno(n)),
            None => None,
        }
    }

    /// The errno carried by an I/O error, or `None` if it carries none (an
    /// error made from an [`ErrorKind`](std::io::ErrorKind) or a message) or
    /// one outside `1..=Errno::MAX`.
    ///
    /// ```
    /// use errseq::Errno;
    /// use std::io;
    ///
    /// let os = io::Error::from_raw_os_error(5);
    /// assert_eq!(Errno::from_io_error(&os), Some(Errno::EIO));
    ///
    /// let synthetic = io::Error::new(io::ErrorKind::Other, "not from the OS");
    /// assert_eq!(Errno::from_io_error(&synthetic), None);
    /// ```
    #[cfg(feature = "std")]
    #[must_use]
    pub fn from_io_error(err: &std::io::Error) -> Option<Errno> {
        err.raw_os_error().and_then(Errno::new)
    }

    /// The symbolic name, such as `"EIO"` or `"ENOSPC"`, or `"E<number>"` for
    /// a value without a known name. Allocation-free.
    ///
    /// Names follow the Linux numbering. The full table (1 to 133, as in the
    /// kernel's `asm-generic` headers) is used on Linux architectures that use
    /// those numbers (x86, Arm, RISC-V, `LoongArch`, s390x, `PowerPC`); on other
    /// Linux architectures only 1 to 34, which are the same everywhere; on other
    /// systems every value reads `"E<number>"`. Either way
    /// [`Errno::from_name`] turns the name back into the same `Errno`.
    ///
    /// ```
    /// use errseq::Errno;
    ///
    /// assert_eq!(Errno::EIO.name(), "EIO");
    /// assert_eq!(Errno::new(4000).unwrap().name().as_str(), "E4000");
    /// assert_eq!(format!("{}", Errno::ENOSPC), "ENOSPC");
    /// ```
    #[must_use]
    pub fn name(self) -> ErrnoName {
        match known_name(self.0.get()) {
            Some(name) => ErrnoName(Repr::Known(name)),
            None => ErrnoName(Repr::Numbered(numbered(self.0.get()))),
        }
    }

    /// The `Errno` for a name as [`Errno::name`] writes it: a known symbolic
    /// name (`"EIO"`) or `"E"` followed by the decimal value without leading
    /// zeros (`"E5"`, `"E4000"`). Anything else is `None`.
    ///
    /// ```
    /// use errseq::Errno;
    ///
    /// assert_eq!(Errno::from_name("EIO"), Some(Errno::EIO));
    /// assert_eq!(Errno::from_name("E28"), Some(Errno::ENOSPC));
    /// assert_eq!(Errno::from_name("E0"), None);
    /// assert_eq!(Errno::from_name("eio"), None);
    /// let e = Errno::new(4000).unwrap();
    /// assert_eq!(Errno::from_name(&e.name()), Some(e));
    /// ```
    #[must_use]
    pub fn from_name(name: &str) -> Option<Errno> {
        if let Some(raw) = NAMES
            .iter()
            .take(TABLE_LEN)
            .position(|n| !n.is_empty() && *n == name)
        {
            return Errno::new(i32::try_from(raw).ok()?);
        }
        let digits = name.strip_prefix('E')?;
        if digits.is_empty()
            || digits.len() > 4
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Errno::new(digits.parse().ok()?)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Errno")
            .field(&self.get())
            .field(&self.name().as_str())
            .finish()
    }
}

/// Writes the name, as [`Errno::name`] gives it: `EIO`.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().as_str())
    }
}

impl core::error::Error for Errno {}

impl From<Errno> for i32 {
    fn from(e: Errno) -> i32 {
        e.get()
    }
}

/// An OS error with this errno ([`std::io::Error::from_raw_os_error`]).
#[cfg(feature = "std")]
impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.get())
    }
}

/// The name of an [`Errno`], as returned by [`Errno::name`]: a `str` that
/// needs no allocation. It dereferences to `str` and displays as itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrnoName(Repr);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Repr {
    /// A name from the table.
    Known(&'static str),
    /// `E` and up to four digits, as ASCII; unused bytes at the end are zero.
    Numbered([u8; 5]),
}

impl ErrnoName {
    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Known(name) => name,
            Repr::Numbered(buf) => {
                let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                // Only ASCII is ever written into the buffer.
                core::str::from_utf8(&buf[..len]).unwrap_or("E?")
            }
        }
    }
}

/// `E` followed by the decimal digits of `raw` (at most 4095, so at most 4 digits).
fn numbered(raw: u16) -> [u8; 5] {
    let mut buf = [0u8; 5];
    buf[0] = b'E';
    let mut digits = [0u8; 4];
    let mut n = raw;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[1 + i] = *d;
    }
    buf
}

impl core::ops::Deref for ErrnoName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ErrnoName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for ErrnoName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrnoName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn known_name(raw: u16) -> Option<&'static str> {
    let name = *NAMES
        .get(usize::from(raw))
        .filter(|_| usize::from(raw) < TABLE_LEN)?;
    (!name.is_empty()).then_some(name)
}

/// How much of [`NAMES`] is valid on this target (see [`Errno::name`]).
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv32",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x",
        target_arch = "powerpc",
        target_arch = "powerpc64",
    )
))]
const TABLE_LEN: usize = NAMES.len();
/// How much of [`NAMES`] is valid on this target (see [`Errno::name`]).
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv32",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x",
        target_arch = "powerpc",
        target_arch = "powerpc64",
    ))
))]
const TABLE_LEN: usize = 35;
/// How much of [`NAMES`] is valid on this target (see [`Errno::name`]).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const TABLE_LEN: usize = 0;

/// Linux errno names by number (`asm-generic/errno-base.h` and
/// `asm-generic/errno.h`); `""` where no name has that number.
/// Aliases (`EWOULDBLOCK`, `EDEADLOCK`, `ENOTSUP`) are left out: each number
/// has one name.
const NAMES: [&str; 134] = [
    "",
    "EPERM",
    "ENOENT",
    "ESRCH",
    "EINTR",
    "EIO",
    "ENXIO",
    "E2BIG",
    "ENOEXEC",
    "EBADF",
    "ECHILD",
    "EAGAIN",
    "ENOMEM",
    "EACCES",
    "EFAULT",
    "ENOTBLK",
    "EBUSY",
    "EEXIST",
    "EXDEV",
    "ENODEV",
    "ENOTDIR",
    "EISDIR",
    "EINVAL",
    "ENFILE",
    "EMFILE",
    "ENOTTY",
    "ETXTBSY",
    "EFBIG",
    "ENOSPC",
    "ESPIPE",
    "EROFS",
    "EMLINK",
    "EPIPE",
    "EDOM",
    "ERANGE",
    "EDEADLK",
    "ENAMETOOLONG",
    "ENOLCK",
    "ENOSYS",
    "ENOTEMPTY",
    "ELOOP",
    "",
    "ENOMSG",
    "EIDRM",
    "ECHRNG",
    "EL2NSYNC",
    "EL3HLT",
    "EL3RST",
    "ELNRNG",
    "EUNATCH",
    "ENOCSI",
    "EL2HLT",
    "EBADE",
    "EBADR",
    "EXFULL",
    "ENOANO",
    "EBADRQC",
    "EBADSLT",
    "",
    "EBFONT",
    "ENOSTR",
    "ENODATA",
    "ETIME",
    "ENOSR",
    "ENONET",
    "ENOPKG",
    "EREMOTE",
    "ENOLINK",
    "EADV",
    "ESRMNT",
    "ECOMM",
    "EPROTO",
    "EMULTIHOP",
    "EDOTDOT",
    "EBADMSG",
    "EOVERFLOW",
    "ENOTUNIQ",
    "EBADFD",
    "EREMCHG",
    "ELIBACC",
    "ELIBBAD",
    "ELIBSCN",
    "ELIBMAX",
    "ELIBEXEC",
    "EILSEQ",
    "ERESTART",
    "ESTRPIPE",
    "EUSERS",
    "ENOTSOCK",
    "EDESTADDRREQ",
    "EMSGSIZE",
    "EPROTOTYPE",
    "ENOPROTOOPT",
    "EPROTONOSUPPORT",
    "ESOCKTNOSUPPORT",
    "EOPNOTSUPP",
    "EPFNOSUPPORT",
    "EAFNOSUPPORT",
    "EADDRINUSE",
    "EADDRNOTAVAIL",
    "ENETDOWN",
    "ENETUNREACH",
    "ENETRESET",
    "ECONNABORTED",
    "ECONNRESET",
    "ENOBUFS",
    "EISCONN",
    "ENOTCONN",
    "ESHUTDOWN",
    "ETOOMANYREFS",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "EHOSTDOWN",
    "EHOSTUNREACH",
    "EALREADY",
    "EINPROGRESS",
    "ESTALE",
    "EUCLEAN",
    "ENOTNAM",
    "ENAVAIL",
    "EISNAM",
    "EREMOTEIO",
    "EDQUOT",
    "ENOMEDIUM",
    "EMEDIUMTYPE",
    "ECANCELED",
    "ENOKEY",
    "EKEYEXPIRED",
    "EKEYREVOKED",
    "EKEYREJECTED",
    "EOWNERDEAD",
    "ENOTRECOVERABLE",
    "ERFKILL",
    "EHWPOISON",
];
