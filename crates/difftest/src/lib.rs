//! Differential testing of rovl against kernel overlayfs.
//!
//! Kernel overlayfs (`redirect_dir=on,index=off,metacopy=off`) is the
//! reference: random seeded operation sequences run on a rovl mount and on
//! a kernel mount over identical lower layers (rovl's in every on-disk form
//! of SPEC §2, the kernel's a twin in the forms it reads), and after every
//! step the two must show the same thing: results and errnos, names,
//! types, modes, owners, sizes, contents, symlink targets, xattrs, link
//! counts, times set on purpose, and which names share an inode. Then each
//! upper layer must show the same view under the other implementation. A
//! divergence is shrunk to a minimal case and printed as a Rust test.
//!
//! Needs root, /dev/fuse and overlayfs.

pub mod check;
pub mod drive;
pub mod known;
pub mod opgen;
pub mod ops;
pub mod repro;
pub mod rng;
pub mod run;
pub mod shrink;
pub mod snap;
pub mod spec;
pub mod sys;

pub use run::{Case, Config, Failure, Tmpfs, Workspace};
