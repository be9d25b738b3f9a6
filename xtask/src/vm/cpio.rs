//! A writer for the `newc` cpio format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`):
//! per entry a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name, the data, each padded to 4 bytes; then
//! a `TRAILER!!!` entry. Uncompressed: the kernel accepts that as it is.

use std::{
    fs::File,
    io::{self, Write},
    path::Path,
};

use anyhow::Context as _;

/// Streams entries into `W`; call [`Writer::finish`] at the end.
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written so far (for the 4-byte alignment).
    offset: u64,
    next_ino: u32,
}

/// What one entry is.
pub enum Kind<'a> {
    Directory,
    /// A regular file whose data is copied from a host file.
    FileFrom(&'a Path),
    /// A regular file with these bytes.
    File(&'a [u8]),
    /// A symbolic link to this target.
    Symlink(&'a str),
    /// A character device `(major, minor)`.
    CharDevice(u32, u32),
}

// === impl Writer ===

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// Add `name` (a path inside the archive, without a leading `/`) with
    /// permission bits `perm`.
    pub fn add(&mut self, name: &str, kind: Kind<'_>, perm: u32) -> anyhow::Result<()> {
        let (format, size, rdev) = match &kind {
            Kind::Directory => (S_IFDIR, 0, (0, 0)),
            Kind::FileFrom(path) => (
                S_IFREG,
                path.metadata()
                    .with_context(|| format!("reading {}", path.display()))?
                    .len(),
                (0, 0),
            ),
            Kind::File(data) => (S_IFREG, data.len() as u64, (0, 0)),
            Kind::Symlink(target) => (S_IFLNK, target.len() as u64, (0, 0)),
            Kind::CharDevice(major, minor) => (S_IFCHR, 0, (*major, *minor)),
        };
        let size = u32::try_from(size).with_context(|| format!("{name}: too large for cpio"))?;
        self.header(name, format | (perm & 0o7777), size, rdev)?;
        match kind {
            Kind::FileFrom(path) => {
                let mut file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let copied = io::copy(&mut file, &mut self.out)?;
                anyhow::ensure!(
                    copied == u64::from(size),
                    "{} changed size while being archived",
                    path.display()
                );
                self.offset += copied;
            }
            Kind::File(data) => self.write(data)?,
            Kind::Symlink(target) => self.write(target.as_bytes())?,
            Kind::Directory | Kind::CharDevice(..) => {}
        }
        self.pad()?;
        Ok(())
    }

    /// Write the trailer and flush; returns the inner writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.pad()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let name_size = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }
}

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[cfg(test)]
mod tests {
    use super::{Kind, Writer};

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut w = Writer::new(Vec::new());
        w.add("bin", Kind::Directory, 0o755).unwrap();
        w.add("bin/hello", Kind::File(b"hi\n"), 0o644).unwrap();
        w.add("bin/sh", Kind::Symlink("busybox"), 0o777).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        // Second entry: mode 0100644, size 3, name size 10.
        let second = &text[text.find("bin/hello").unwrap() - 110..];
        assert_eq!(&second[14..22], "000081a4");
        assert_eq!(&second[54..62], "00000003");
        assert_eq!(&second[94..102], "0000000a");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(text.matches("070701").count(), 4);
    }
}
