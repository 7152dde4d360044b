//! The zstd:chunked writer. Tar headers (and the padding before them) go into header frames;
//! each regular file's content is cut into chunks on a fixed grid from the file's start (so equal
//! files give equal chunks, whatever layer or image they are in), each chunk its own frame.
//!
//! Frames are compressed on a pool of threads and written in order by a writer thread that
//! records where each landed; the TOC is built from those offsets at the end. Memory holds at
//! most a few chunks per thread, whatever the layer size.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use p2p_node::{Digest, Hasher};

use super::{ANNOTATION_CHECKSUM, ANNOTATION_POSITION, SKIPPABLE_MAGIC};
use crate::tar::{TarEntry, BLOCK};
use crate::toc::{Kind, RawEntry, RawToc};
use crate::Error;

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level (the `zstd` tool's default is 3).
    pub level: i32,
    /// Content is cut into chunks of this many bytes (the last one shorter).
    pub chunk_size: u64,
    /// Compression threads.
    pub threads: usize,
    /// Files smaller than this share frames (with the headers around them) up to `chunk_size`,
    /// each found by its frame and an `innerOffset`, each verified by its own digest: one frame
    /// per small file would cost a quarter more than plain zstd on a rootfs of small files.
    /// 0: every file gets its own frames, as containers/storage writes them.
    pub pack_below: u64,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions {
            level: 3,
            chunk_size: 1 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            pack_below: 128 << 10,
        }
    }
}

/// What a finished layer is.
#[derive(Debug, Clone)]
pub struct Written {
    /// sha256 of the compressed layer (its descriptor digest) and its size.
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the uncompressed tar (the config's diff_id) and its size.
    pub diff_id: Digest,
    pub uncompressed: u64,
    /// sha256 of the compressed TOC (the manifest-checksum annotation).
    pub toc_digest: Digest,
    /// The layer descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
    pub files: u64,
    pub chunks: u64,
    pub prefetch_chunks: u64,
}

struct Job {
    seq: u64,
    data: Vec<u8>,
}

struct Done {
    seq: u64,
    frame: Result<Vec<u8>, String>,
    digest: Digest,
}

/// Where each frame landed and what its uncompressed bytes hash to.
#[derive(Default)]
struct Placed {
    frames: HashMap<u64, (Range<u64>, Digest)>,
}

struct OutputState<W> {
    out: W,
    hasher: Hasher,
    written: u64,
    placed: Placed,
}

struct PendingChunk {
    seq: u64,
    file_offset: u64,
    size: u64,
    /// Where the chunk starts in its frame's uncompressed bytes (packed small files).
    inner_offset: u64,
    prefetch: bool,
}

struct PendingEntry {
    raw: RawEntry,
    chunks: Vec<PendingChunk>,
}

/// Writes one zstd:chunked layer: [`ChunkedWriter::add`] each entry, then [`ChunkedWriter::finish`].
pub struct ChunkedWriter<W: Write + Send + 'static> {
    opts: WriteOptions,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<OutputState<W>, Error>>>,
    next_seq: u64,
    /// Tar bytes waiting to be written in the next header frame.
    header: Vec<u8>,
    diff: Hasher,
    uncompressed: u64,
    entries: Vec<PendingEntry>,
    /// Entries whose content sits in `header`, waiting for that frame's sequence number.
    packed: Vec<usize>,
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, done: SyncSender<Done>, level: i32) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        let frame = zstd::bulk::compress(&job.data, level).map_err(|e| e.to_string());
        let digest = Digest::of(&job.data);
        if done.send(Done { seq: job.seq, frame, digest }).is_err() {
            return;
        }
    }
}

fn write_ordered<W: Write>(mut out: W, done: Receiver<Done>) -> Result<OutputState<W>, Error> {
    let (mut hasher, mut written, mut placed) = (Hasher::new(), 0u64, Placed::default());
    let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0u64;
    for d in done {
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&next) {
            let frame = d.frame.map_err(|e| Error::io("compressing a frame", std::io::Error::other(e)))?;
            out.write_all(&frame).map_err(|e| Error::io("writing the layer", e))?;
            hasher.update(&frame);
            placed.frames.insert(d.seq, (written..written + frame.len() as u64, d.digest));
            written += frame.len() as u64;
            next += 1;
        }
    }
    if !waiting.is_empty() {
        return Err(Error::io("writing the layer", std::io::Error::other("a compression thread stopped early")));
    }
    Ok(OutputState { out, hasher, written, placed })
}

impl<W: Write + Send + 'static> ChunkedWriter<W> {
    pub fn new(out: W, opts: WriteOptions) -> ChunkedWriter<W> {
        let threads = opts.threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx, level) = (job_rx.clone(), done_tx.clone(), opts.level);
                std::thread::spawn(move || worker(rx, tx, level))
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || write_ordered(out, done_rx));
        ChunkedWriter {
            opts,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
            next_seq: 0,
            header: Vec::new(),
            diff: Hasher::new(),
            uncompressed: 0,
            entries: Vec::new(),
            packed: Vec::new(),
        }
    }

    fn emit(&mut self, data: Vec<u8>) -> Result<u64, Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(Job { seq, data }).is_ok());
        if !sent {
            return Err(self.abort());
        }
        Ok(seq)
    }

    /// The writer thread's error after a failed send (it stopped, so the workers did too).
    fn abort(&mut self) -> Error {
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => Error::io("writing the layer", std::io::Error::other("the writer thread stopped")),
        }
    }

    fn tar_bytes(&mut self, bytes: &[u8]) {
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
    }

    fn flush_header(&mut self) -> Result<(), Error> {
        if !self.header.is_empty() {
            let h = std::mem::take(&mut self.header);
            let seq = self.emit(h)?;
            for i in std::mem::take(&mut self.packed) {
                self.entries[i].chunks[0].seq = seq;
            }
        }
        Ok(())
    }

    /// Adds one entry: its raw header bytes, then (for a regular file) `entry.size` bytes read from
    /// `content`. Chunks overlapping a `prefetch` range are marked for prefetch.
    pub fn add(&mut self, entry: &TarEntry, content: &mut dyn Read, prefetch: &[Range<u64>]) -> Result<(), Error> {
        let kind = entry.kind.ok_or_else(|| Error::malformed("tar stream", format!("entry {:?} has no type", entry.path)))?;
        self.tar_bytes(&entry.header_bytes);
        if self.header.len() as u64 >= self.opts.chunk_size {
            self.flush_header()?;
        }
        self.header.extend_from_slice(&entry.header_bytes);
        let mut raw = RawEntry {
            kind: kind.as_str().to_string(),
            name: entry.path.clone(),
            link_name: entry.link_name.clone(),
            mode: i64::from(entry.mode),
            size: if kind == Kind::Reg { entry.size as i64 } else { 0 },
            uid: entry.uid as i64,
            gid: entry.gid as i64,
            modtime: entry.mtime.to_rfc3339(),
            dev_major: i64::from(entry.dev_major),
            dev_minor: i64::from(entry.dev_minor),
            xattrs: entry.xattrs.iter().map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.encode(v))).collect(),
            ..RawEntry::default()
        };
        let mut chunks = Vec::new();
        if kind == Kind::Reg && entry.size > 0 && entry.size < self.opts.pack_below {
            let mut buf = vec![0u8; entry.size as usize];
            content.read_exact(&mut buf).map_err(|e| Error::io(format!("reading the content of {}", entry.path), e))?;
            self.tar_bytes(&buf);
            raw.digest = Digest::of(&buf).to_string();
            if self.next_seq == 0 {
                // Content never shares the layer's first frame: offset 0 means "none" in a TOC.
                self.flush_header()?;
            }
            let inner_offset = self.header.len() as u64;
            self.header.extend_from_slice(&buf);
            let prefetch = prefetch.iter().any(|p| p.start < entry.size);
            chunks.push(PendingChunk { seq: u64::MAX, file_offset: 0, size: entry.size, inner_offset, prefetch });
            let pad = vec![0u8; (entry.size.div_ceil(BLOCK) * BLOCK - entry.size) as usize];
            self.tar_bytes(&pad);
            self.header.extend_from_slice(&pad);
            self.packed.push(self.entries.len());
            self.entries.push(PendingEntry { raw, chunks });
            if self.header.len() as u64 >= self.opts.chunk_size {
                self.flush_header()?;
            }
            return Ok(());
        }
        if kind == Kind::Reg && entry.size > 0 {
            self.flush_header()?;
            let mut whole = Hasher::new();
            let mut file_offset = 0u64;
            while file_offset < entry.size {
                let len = self.opts.chunk_size.min(entry.size - file_offset);
                let mut buf = vec![0u8; len as usize];
                content.read_exact(&mut buf).map_err(|e| Error::io(format!("reading the content of {}", entry.path), e))?;
                whole.update(&buf);
                self.tar_bytes(&buf);
                let range = file_offset..file_offset + len;
                let marked = prefetch.iter().any(|p| p.start < range.end && range.start < p.end);
                let seq = self.emit(buf)?;
                chunks.push(PendingChunk { seq, file_offset, size: len, inner_offset: 0, prefetch: marked });
                file_offset += len;
            }
            raw.digest = whole.finish().to_string();
            let pad = vec![0u8; (entry.size.div_ceil(BLOCK) * BLOCK - entry.size) as usize];
            self.tar_bytes(&pad);
            self.header.extend_from_slice(&pad);
        }
        self.entries.push(PendingEntry { raw, chunks });
        Ok(())
    }

    /// Writes the end-of-archive marker, the TOC and the footer; returns what was written.
    pub fn finish(mut self) -> Result<(W, Written), Error> {
        let trailer = [0u8; 2 * BLOCK as usize];
        self.tar_bytes(&trailer);
        self.header.extend_from_slice(&trailer);
        self.flush_header()?;
        self.jobs = None; // workers end when the queue is drained
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        let writer = self.writer.take().ok_or_else(|| Error::io("writing the layer", std::io::Error::other("no writer thread")))?;
        let mut state =
            writer.join().map_err(|_| Error::io("writing the layer", std::io::Error::other("the writer thread panicked")))??;

        let mut toc = RawToc { version: 1, ..RawToc::default() };
        let (mut files, mut chunk_count, mut prefetch_chunks) = (0u64, 0u64, 0u64);
        for PendingEntry { mut raw, chunks } in std::mem::take(&mut self.entries) {
            let placed = |seq: u64| {
                state.placed.frames.get(&seq).cloned().ok_or_else(|| Error::io("placing a frame", std::io::Error::other("missing frame")))
            };
            if raw.kind == "reg" {
                files += 1;
            }
            match chunks.len() {
                0 => toc.entries.push(raw),
                1 => {
                    let (range, _) = placed(chunks[0].seq)?;
                    raw.offset = range.start as i64;
                    raw.end_offset = range.end as i64;
                    raw.inner_offset = chunks[0].inner_offset as i64;
                    raw.prefetch = chunks[0].prefetch;
                    chunk_count += 1;
                    prefetch_chunks += u64::from(chunks[0].prefetch);
                    toc.entries.push(raw);
                }
                _ => {
                    // containers/storage's shape: the reg entry carries the first chunk, then one
                    // "chunk" entry per further chunk; every one names its frame and digest.
                    raw.end_offset = placed(chunks[chunks.len() - 1].seq)?.0.end as i64;
                    let mut group = vec![raw];
                    for _ in 1..chunks.len() {
                        group.push(RawEntry { kind: "chunk".into(), name: group[0].name.clone(), ..RawEntry::default() });
                    }
                    for (e, c) in group.iter_mut().zip(&chunks) {
                        let (range, digest) = placed(c.seq)?;
                        e.offset = range.start as i64;
                        e.chunk_offset = c.file_offset as i64;
                        e.chunk_size = c.size as i64;
                        e.chunk_digest = digest.to_string();
                        e.prefetch = c.prefetch;
                        chunk_count += 1;
                        prefetch_chunks += u64::from(c.prefetch);
                    }
                    toc.entries.extend(group);
                }
            }
        }
        let json = serde_json::to_vec(&toc).map_err(|e| Error::malformed("TOC", e.to_string()))?;
        let compressed = zstd::bulk::compress(&json, self.opts.level).map_err(|e| Error::io("compressing the TOC", e))?;
        let toc_digest = Digest::of(&compressed);
        let toc_offset = state.written + 8;
        let mut tail = Vec::with_capacity(compressed.len() + 8 + 72);
        tail.extend_from_slice(&SKIPPABLE_MAGIC);
        tail.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        tail.extend_from_slice(&compressed);
        tail.extend_from_slice(&SKIPPABLE_MAGIC);
        tail.extend_from_slice(&64u32.to_le_bytes());
        for n in [toc_offset, compressed.len() as u64, json.len() as u64, 1, 0, 0, 0] {
            tail.extend_from_slice(&n.to_le_bytes());
        }
        tail.extend_from_slice(b"GNUlInUx");
        state.out.write_all(&tail).map_err(|e| Error::io("writing the layer", e))?;
        state.out.flush().map_err(|e| Error::io("writing the layer", e))?;
        state.hasher.update(&tail);
        let size = state.written + tail.len() as u64;
        let annotations = BTreeMap::from([
            (ANNOTATION_CHECKSUM.to_string(), toc_digest.to_string()),
            (ANNOTATION_POSITION.to_string(), format!("{toc_offset}:{}:{}:1", compressed.len(), json.len())),
        ]);
        let written = Written {
            digest: state.hasher.finish(),
            size,
            diff_id: std::mem::take(&mut self.diff).finish(),
            uncompressed: self.uncompressed,
            toc_digest,
            annotations,
            files,
            chunks: chunk_count,
            prefetch_chunks,
        };
        Ok((state.out, written))
    }
}

impl<W: Write + Send + 'static> Drop for ChunkedWriter<W> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Converts a whole tar stream, in its order.
pub fn write_tar<W: Write + Send + 'static>(tar: impl Read, out: W, opts: WriteOptions) -> Result<(W, Written), Error> {
    let mut reader = crate::tar::TarReader::new(tar);
    let mut w = ChunkedWriter::new(out, opts);
    while let Some(entry) = reader.next_entry()? {
        let mut content = ContentReader { tar: &mut reader };
        w.add(&entry, &mut content, &[])?;
    }
    w.finish()
}

/// The current entry's content of a [`crate::tar::TarReader`] as `Read`.
pub struct ContentReader<'a, R> {
    pub tar: &'a mut crate::tar::TarReader<R>,
}

impl<R: Read> Read for ContentReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tar.content(buf).map_err(std::io::Error::other)
    }
}
