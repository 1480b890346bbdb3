//! Kernel overlayfs mounts.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::sys::{self, MountGuard};

/// A kernel overlayfs mount, unmounted on drop (lazily if busy).
#[derive(Debug)]
pub struct KernelOverlay {
    mount: MountGuard,
}

/// Escapes `\`, `:` and `,` in a path for an overlay mount option
/// (`lowerdir=`, `upperdir=`, `workdir=`), for kernel overlayfs, rovl and
/// fuse-overlayfs alike.
pub fn escape_option_path(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `-o` string for an overlay of `lowers` (leftmost on top).
pub(crate) fn overlay_options(
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    extra: &str,
) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| escape_option_path(p)).collect();
    let mut opts = vec![format!("lowerdir={}", lower.join(":"))];
    if let Some(u) = upper {
        opts.push(format!("upperdir={}", escape_option_path(u)));
    }
    if let Some(w) = work {
        opts.push(format!("workdir={}", escape_option_path(w)));
    }
    opts.extend(
        extra
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string),
    );
    opts.join(",")
}

impl KernelOverlay {
    /// `mount -t overlay overlay -o lowerdir=L1:L2,upperdir=U,workdir=W,EXTRA AT`
    /// (leftmost lower on top; `extra_opts` comma-separated, may be empty;
    /// `ro`, `nodev`, `noatime`... are honoured as mount flags). On
    /// failure the error carries the kernel's errno; the reason is in
    /// dmesg.
    pub fn mount(
        lowers: &[&Path],
        upper: Option<&Path>,
        work: Option<&Path>,
        extra_opts: &str,
        at: &Path,
    ) -> io::Result<KernelOverlay> {
        crate::sweep::sweep_once();
        let at = at.canonicalize()?;
        let opts = overlay_options(lowers, upper, work, extra_opts);
        let mount = MountGuard::mount("overlay", &at, "overlay", &opts)?;
        Ok(KernelOverlay { mount })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount.path
    }

    /// Its mountinfo line (superblock options show what the kernel took).
    pub fn entry(&self) -> Option<sys::MountEntry> {
        self.mount.entry()
    }

    /// Unmounts now, reporting errors; returns whether it had to be done
    /// lazily because the mount was busy.
    pub fn unmount(mut self) -> io::Result<bool> {
        self.mount.unmount(Duration::from_secs(2))
    }
}

/// Lets `&overlay` be used where a path is expected.
impl AsRef<Path> for KernelOverlay {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_escape_separators() {
        let o = overlay_options(
            &[Path::new("/a:b"), Path::new("/c")],
            Some(Path::new("/u,v")),
            Some(Path::new("/w")),
            "volatile,,index=off",
        );
        assert_eq!(
            o,
            "lowerdir=/a\\:b:/c,upperdir=/u\\,v,workdir=/w,volatile,index=off"
        );
    }
}
