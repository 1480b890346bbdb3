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
//!
//! Running: `cargo test --release --test differential` (CI: 200 seeds of 50
//! steps), or the binary: `cargo run --release -p difftest -- --help`
//! (`--seed N` replays and shrinks one seed, `--long 2h` runs fresh seeds).
//! Debugging aids: `DIFFTEST_TRACE=1` prints every step's outcomes and
//! differences; `DIFFTEST_PAUSE=SECS` keeps both mounts up for SECS after
//! the last step (paths printed); `SEED=N cargo test -p difftest dump_seed
//! -- --ignored --nocapture` prints a seed's layers.

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
