//! FUSE passthrough (Linux ≥ 6.9, fuser's `open_backing`): an open of a blob
//! whose cache file is complete and verified is answered with that file as
//! its backing file, and the kernel then reads it directly — no request per
//! read through the daemon, no copy through user space.
//!
//! The kernel keeps one I/O mode per inode: while any open of an inode goes
//! through the daemon (cached mode), a passthrough open of it fails (and the
//! reverse). So an inode's opens are counted here, and a blob goes
//! passthrough only when no cached open of that inode is live; one backing
//! id per inode is shared by all its passthrough opens and closed with the
//! last of them.
//!
//! Registering a backing file needs CAP_SYS_ADMIN: a daemon run as an
//! ordinary user, a kernel without the feature, or `REGFS_NO_PASSTHROUGH=1`
//! (to measure without it) leaves every read going through the daemon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, ReplyOpen};

use crate::stats::Stats;
use crate::store::BlobFile;

#[derive(Default)]
struct InodeIo {
    /// The inode's backing file, while `passthrough > 0`.
    backing: Option<Arc<BackingId>>,
    passthrough: usize,
    cached: usize,
}

#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    inodes: Mutex<HashMap<u64, InodeIo>>,
    /// Blob file handles → (inode, served by passthrough).
    handles: Mutex<HashMap<u64, (u64, bool)>>,
}

impl Passthrough {
    /// Should the mount ask the kernel for passthrough?
    pub fn wanted() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && std::env::var_os("REGFS_NO_PASSTHROUGH").is_none_or(|v| v.is_empty() || v == "0")
    }

    /// The kernel agreed to passthrough (FUSE init).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Record the open `fh` of inode `ino` reading `file`; the backing id to
    /// answer it with when it goes passthrough.
    pub fn open(&self, ino: u64, fh: u64, file: &BlobFile, reply: &ReplyOpen, stats: &Stats) -> Option<Arc<BackingId>> {
        let mut inodes = self.inodes.lock().unwrap();
        let io = inodes.entry(ino).or_default();
        let eligible = self.enabled.load(Ordering::Acquire)
            && (io.passthrough > 0 || (io.cached == 0 && file.verified_cache_file().is_some()));
        let backing = if !eligible {
            None
        } else if let Some(b) = &io.backing {
            Some(b.clone())
        } else {
            let registered = file.verified_cache_file().map(|f| reply.open_backing(f));
            match registered {
                Some(Ok(b)) => {
                    let b = Arc::new(b);
                    io.backing = Some(b.clone());
                    tracing::debug!(digest = %file.digest, ino, "FUSE passthrough: reads go straight to the cache file");
                    Some(b)
                }
                Some(Err(e)) => {
                    tracing::warn!("FUSE passthrough unavailable ({e}); reads go through the daemon");
                    self.enabled.store(false, Ordering::Release);
                    None
                }
                None => None,
            }
        };
        if backing.is_some() {
            io.passthrough += 1;
            Stats::inc(&stats.fuse_passthrough_opens);
        } else {
            io.cached += 1;
        }
        self.handles.lock().unwrap().insert(fh, (ino, backing.is_some()));
        backing
    }

    /// The handle `fh` was released (any handle; blob handles are counted).
    pub fn release(&self, fh: u64) {
        let Some((ino, passthrough)) = self.handles.lock().unwrap().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock().unwrap();
        let Some(io) = inodes.get_mut(&ino) else { return };
        if passthrough {
            io.passthrough -= 1;
            if io.passthrough == 0 {
                io.backing = None; // closes the backing id
            }
        } else {
            io.cached -= 1;
        }
        if io.passthrough == 0 && io.cached == 0 {
            inodes.remove(&ino);
        }
    }
}
