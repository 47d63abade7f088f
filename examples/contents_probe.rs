//! Measures the contents index on a real layer file:
//! `cargo run --release --example contents_probe -- LAYER.tar.gz [FILES_TO_READ]`
//! Prints the pass time, entries, spans, index size on disk (and its share of
//! the uncompressed size), then reads a few files through a counting source
//! (bytes of the blob fetched per file, time per read).

use std::cell::Cell;
use std::io::{self, BufReader};
use std::sync::Arc;
use std::time::Instant;

use regfs::contents::{FileSource, Kind, LayerIndex, Limits, Rootfs, SpanSource};
use sha2::{Digest as _, Sha256};

struct Counting {
    inner: FileSource,
    fetched: Cell<u64>,
}

impl SpanSource for Counting {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.fetched.set(self.fetched.get() + len);
        self.inner.read_at(offset, len)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: contents_probe LAYER [N]");
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);

    let t = Instant::now();
    let mut hasher = Sha256::new();
    io::copy(&mut BufReader::new(std::fs::File::open(&path)?), &mut hasher)?;
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    println!("sha256 of the blob alone: {:.2}s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let index = LayerIndex::build(
        &digest,
        None,
        BufReader::new(std::fs::File::open(&path)?),
        &Limits::default(),
    )?;
    let pass = t.elapsed().as_secs_f64();
    println!(
        "pass: {pass:.2}s, {} entries, {} spans, {} -> {} bytes ({:?}), problems: {}",
        index.entries.len(),
        index.span_count(),
        index.blob_size,
        index.uncompressed_size,
        index.compression,
        index.problems.count
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("index");
    let t = Instant::now();
    index.save(&file)?;
    let size = std::fs::metadata(&file)?.len();
    println!(
        "index on disk: {size} bytes = {:.3}% of uncompressed (save {:.2}s)",
        100.0 * size as f64 / index.uncompressed_size.max(1) as f64,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let index = Arc::new(LayerIndex::load(&file, &digest)?);
    println!("load: {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let fs = Rootfs::layer(index.clone());
    println!("tree: {:.3}s", t.elapsed().as_secs_f64());

    // Files spread over the layer, a fresh tree (no span cache) per read.
    let files: Vec<usize> = (0..index.entries.len())
        .filter(|&i| index.entries[i].kind == Kind::File && index.entries[i].size > 0)
        .collect();
    for k in 0..n {
        let i = files[(k * 2 + 1) * files.len() / (2 * n)];
        let e = &index.entries[i];
        let fresh = Arc::new(LayerIndex::load(&file, &digest)?);
        let tree = Rootfs::layer(fresh);
        let node = tree.lookup_path(&e.path).expect("in the tree");
        let src = Counting {
            inner: FileSource::open(std::path::Path::new(&path))?,
            fetched: Cell::new(0),
        };
        let t = Instant::now();
        let data = tree.read(node, 0, e.size, &src)?;
        println!(
            "read {} ({} bytes): fetched {} bytes of the blob, {:.1} ms",
            e.path,
            data.len(),
            src.fetched.get(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    drop(fs);
    Ok(())
}
