//! A deterministic cpio "newc" archive writer (the initramfs format): fixed owner and mtime,
//! inode numbers in write order, so the same inputs give the same bytes.

use std::io::{self, Write};

pub struct Writer<W: Write> {
    out: W,
    written: u64,
    ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            ino: 1,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, nlink: u32) -> io::Result<()> {
        self.header_dev(name, mode, size, nlink, (0, 0))
    }

    fn header_dev(
        &mut self,
        name: &str,
        mode: u32,
        size: usize,
        nlink: u32,
        (rmaj, rmin): (u32, u32),
    ) -> io::Result<()> {
        let ino = self.ino;
        self.ino += 1;
        let name_len = name.len() + 1;
        let h = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{name_len:08x}{check:08x}",
            uid = 0, gid = 0, mtime = 0, dmaj = 0, dmin = 0, check = 0,
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..rem])
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, 0o040000 | perm, 0, 2)
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, 0o100000 | perm, data.len(), 1)?;
        self.put(data)?;
        self.pad()
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, 0o120777, target.len(), 1)?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node (the kernel needs /dev/console before devtmpfs is mounted).
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header_dev(name, 0o020000 | perm, 0, 1, (major, minor))
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_are_aligned_and_deterministic() {
        let build = || {
            let mut w = super::Writer::new(Vec::new());
            w.dir("etc", 0o755).expect("dir");
            w.file("etc/hostname", 0o644, b"tiny\n").expect("file");
            w.symlink("init", "bin/busybox").expect("link");
            w.finish().expect("finish")
        };
        let a = build();
        assert_eq!(a, build());
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("etc/hostname") && text.contains("tiny\n"));
        assert!(text.contains("TRAILER!!!"));
    }
}
