//! Record bodies at rest: zstd against a dictionary trained on the store's
//! own records.
//!
//! A record's canonical bytes are what the chain hashes, what the API
//! serves and what an export carries; none of that changes here. Only the
//! `body` column holds them compressed, with `dict` naming the dictionary
//! (a row of `dicts`), or NULL for bytes kept as they are.
//!
//! Why: flow documents repeat their keys, the policy hash, the process's
//! command line and cgroup path, so against a dictionary of 16 KiB a record
//! of 1-2 KiB is stored in tens of bytes. At 50k records a second the store
//! otherwise writes every body twice (`SQLite`'s log, then the database
//! file), and on a 2-core host that copying competed with the pipeline
//! (measured: a third of all CPU time in `copy_folio_from_iter`, see
//! BENCHMARKS.md "Evidence store").
//!
//! The writer keeps raw bytes until a dictionary exists: it collects the
//! first records as samples and trains on another thread, so the commit
//! path never waits for training. It watches the ratio it gets and trains
//! again when the records have drifted from the dictionary. Dictionaries
//! are never changed or deleted, so every stored body stays readable.
//! Tampering with a dictionary changes what its records decode to, and the
//! chain hash catches that like any other edit.

use std::{
    borrow::Cow,
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
};

use rusqlite::{Connection, OptionalExtension as _};
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

/// Largest dictionary trained.
pub const DICT_BYTES: usize = 16 * 1024;
/// Samples (records) a dictionary is trained on.
pub const SAMPLES: usize = 4000;
/// Records longer than this are not taken as samples.
const MAX_SAMPLE: usize = 16 * 1024;
/// zstd level: higher levels cost the writer time and gain little on
/// records this small.
const LEVEL: i32 = 3;
/// Bodies larger than this are kept raw, and a stored frame that claims
/// more is damage: a reader never inflates more than this per record.
pub const MAX_BODY: u64 = 1 << 20;
/// Nor more than this many times the stored size: a few bytes that claim a
/// megabyte of zeros are damage, not a record (the writer keeps raw what
/// would compress further).
pub const MAX_RATIO: u64 = 1024;
/// A dictionary row larger than this is damage.
const MAX_DICT: i64 = 4 * 16 * 1024;
/// At most this many bytes of samples are held (zstd advises about a
/// hundred times the dictionary's size).
const MAX_SAMPLE_BYTES: usize = 128 * DICT_BYTES;
/// Training that fails this often is given up until the next start.
const MAX_FAILURES: u32 = 4;
/// Records per window over which the writer measures its ratio.
const WINDOW: u64 = 65_536;

/// The writer's side: compresses each body with the newest dictionary, and
/// collects samples and trains when there is none, or when the records
/// have drifted from it.
pub struct Compressor {
    cctx: CCtx<'static>,
    current: Option<(i64, CDict<'static>)>,
    out: Vec<u8>,
    samples_wanted: usize,
    samples: Vec<Vec<u8>>,
    sample_bytes: usize,
    sampling: bool,
    training: Option<mpsc::Receiver<Result<Vec<u8>, String>>>,
    failures: u32,
    /// Records, raw bytes and stored bytes in the current window.
    window: (u64, u64, u64),
    window_records: u64,
    baseline: Option<f64>,
}

impl Compressor {
    /// Starts with the store's newest dictionary (id and bytes), if any;
    /// without one it samples the next `samples` records and trains.
    #[must_use]
    pub fn new(newest: Option<(i64, Vec<u8>)>, samples: usize) -> Self {
        let current =
            newest.and_then(|(id, bytes)| CDict::try_create(&bytes, LEVEL).map(|d| (id, d)));
        let sampling = current.is_none();
        Compressor {
            cctx: CCtx::create(),
            current,
            out: Vec::new(),
            samples_wanted: samples.max(8),
            samples: Vec::new(),
            sample_bytes: 0,
            sampling,
            training: None,
            failures: 0,
            window: (0, 0, 0),
            window_records: WINDOW,
            baseline: None,
        }
    }

    /// The bytes to store for `body`, and the dictionary they need (None:
    /// stored as they are).
    pub fn encode<'a>(&'a mut self, body: &'a [u8]) -> (Option<i64>, &'a [u8]) {
        if self.sampling && body.len() <= MAX_SAMPLE {
            self.samples.push(body.to_vec());
            self.sample_bytes += body.len();
            if self.samples.len() >= self.samples_wanted || self.sample_bytes >= MAX_SAMPLE_BYTES {
                self.train();
            }
        }
        let Some((id, dict)) = &self.current else {
            return (None, body);
        };
        if body.len() as u64 > MAX_BODY {
            return (None, body);
        }
        self.out.clear();
        self.out.reserve(zstd_safe::compress_bound(body.len()));
        let id = *id;
        let compressed = self
            .cctx
            .compress_using_cdict(&mut self.out, body, dict)
            .is_ok()
            && self.out.len() < body.len()
            // What a reader would refuse to inflate stays raw.
            && (body.len() as u64) <= self.out.len() as u64 * MAX_RATIO;
        self.window.0 += 1;
        self.window.1 += body.len() as u64;
        self.window.2 += if compressed {
            self.out.len()
        } else {
            body.len()
        } as u64;
        if self.window.0 >= self.window_records {
            self.judge_window();
        }
        if compressed {
            (Some(id), &self.out[..])
        } else {
            (None, body)
        }
    }

    /// After a full window: remember the ratio a new dictionary gets, and
    /// train again once records compress far worse than that.
    fn judge_window(&mut self) {
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let ratio = self.window.2 as f64 / self.window.1.max(1) as f64;
        self.window = (0, 0, 0);
        match self.baseline {
            None => self.baseline = Some(ratio),
            Some(base) if !self.sampling && self.training.is_none() => {
                // Twice the bytes, and more than noise.
                if ratio > (base * 2.0).max(base + 0.02) {
                    tracing::info!(
                        baseline = base,
                        now = ratio,
                        "evidence records compress worse than when the dictionary was trained; training a new one"
                    );
                    self.sampling = true;
                }
            }
            Some(_) => {}
        }
    }

    fn train(&mut self) {
        self.sampling = false;
        let samples = std::mem::take(&mut self.samples);
        let total = std::mem::take(&mut self.sample_bytes);
        // zstd needs samples many times the dictionary's size.
        let size = DICT_BYTES.min(total / 8).max(256);
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("evidence-dict".into())
            .spawn(move || {
                let dict = zstd::dict::from_samples(&samples, size).map_err(|e| e.to_string());
                let _ = tx.send(dict);
            });
        match spawned {
            Ok(_) => self.training = Some(rx),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// Training (or storing its result) failed: try again on more records,
    /// a few times, then keep records as they are until the next start.
    pub fn failed(&mut self, why: &str) {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            tracing::warn!(
                "cannot train a dictionary for the evidence store ({why}; {} tries): new records are stored uncompressed until the next start",
                self.failures
            );
            self.sampling = false;
            return;
        }
        tracing::warn!(
            "cannot train a dictionary for the evidence store ({why}); trying again on later records"
        );
        self.samples_wanted = self.samples_wanted.saturating_mul(2).min(SAMPLES * 4);
        self.sampling = true;
    }

    /// A dictionary that finished training, to be stored (its row id then
    /// goes to [`Compressor::adopt`]).
    pub fn trained(&mut self) -> Option<Vec<u8>> {
        let rx = self.training.as_ref()?;
        match rx.try_recv() {
            Ok(Ok(dict)) => {
                self.training = None;
                Some(dict)
            }
            Ok(Err(why)) => {
                self.training = None;
                self.failed(&why);
                None
            }
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.training = None;
                self.failed("the training thread stopped");
                None
            }
        }
    }

    /// Uses dictionary `id` (already stored) from the next record on.
    pub fn adopt(&mut self, id: i64, dict: &[u8]) {
        match CDict::try_create(dict, LEVEL) {
            Some(d) => {
                self.current = Some((id, d));
                self.baseline = None;
                self.window = (0, 0, 0);
            }
            None => self.failed("zstd refused the trained dictionary"),
        }
    }
}

thread_local! {
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// The readers' side: dictionaries by id, loaded once, shared by every
/// connection of a reader.
#[derive(Default)]
pub struct Dicts {
    cache: Mutex<HashMap<i64, Arc<DDict<'static>>>>,
}

impl Dicts {
    /// A record's canonical bytes, from what `body` and `dict` hold.
    ///
    /// # Errors
    /// If the dictionary is missing, or the bytes do not decompress with
    /// it: damage, which `evidence verify` reports.
    pub fn decode<'b>(
        &self,
        conn: &Connection,
        dict: Option<i64>,
        stored: &'b [u8],
    ) -> Result<Cow<'b, [u8]>, String> {
        let Some(id) = dict else {
            return Ok(Cow::Borrowed(stored));
        };
        let prepared = self.get(conn, id)?;
        let bound = MAX_BODY.min(stored.len() as u64 * MAX_RATIO);
        let size = match zstd_safe::get_frame_content_size(stored) {
            Ok(Some(n)) if n <= bound => n,
            Ok(Some(n)) => {
                return Err(format!(
                    "it claims {n} bytes from {} stored, more than the store ever compresses",
                    stored.len()
                ));
            }
            Ok(None) => return Err("its size is not recorded".into()),
            Err(_) => return Err("it is not a zstd frame".into()),
        };
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        DCTX.with(|d| {
            d.borrow_mut()
                .decompress_using_ddict(&mut out, stored, &prepared)
                .map_err(|code| {
                    format!(
                        "it does not decompress with dictionary {id} ({})",
                        zstd_safe::get_error_name(code)
                    )
                })
        })?;
        if out.len() as u64 != size {
            return Err(format!(
                "it decompresses to {} bytes, not {size}",
                out.len()
            ));
        }
        Ok(Cow::Owned(out))
    }

    fn get(&self, conn: &Connection, id: i64) -> Result<Arc<DDict<'static>>, String> {
        if let Some(d) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(d);
        }
        let read = |sql| {
            conn.query_row(sql, [id], |r| r.get::<_, rusqlite::types::Value>(0))
                .optional()
                .map_err(|e| format!("dictionary {id} cannot be read: {e}"))
        };
        match read("SELECT length(bytes) FROM dicts WHERE id = ?1")? {
            None => return Err(format!("its dictionary {id} is missing")),
            Some(rusqlite::types::Value::Integer(n)) if n <= MAX_DICT => {}
            Some(_) => return Err(format!("its dictionary {id} is damaged (not a dictionary)")),
        }
        let Some(rusqlite::types::Value::Blob(bytes)) =
            read("SELECT bytes FROM dicts WHERE id = ?1")?
        else {
            return Err(format!("its dictionary {id} is damaged (not a dictionary)"));
        };
        let ddict = Arc::new(
            DDict::try_create(&bytes).ok_or_else(|| format!("its dictionary {id} is damaged"))?,
        );
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id, ddict.clone());
        }
        Ok(ddict)
    }
}

/// The newest dictionary in the store, to compress with after a restart.
///
/// # Errors
/// If the database cannot be read.
pub fn newest(conn: &Connection) -> rusqlite::Result<Option<(i64, Vec<u8>)>> {
    conn.query_row(
        "SELECT id, bytes FROM dicts ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Stores a trained dictionary; returns its id.
///
/// # Errors
/// If the database cannot be written.
pub fn store(conn: &Connection, dict: &[u8], from_seq: u64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO dicts (from_seq, created_ts, bytes) VALUES (?1, ?2, ?3)",
        rusqlite::params![
            i64::try_from(from_seq).unwrap_or(i64::MAX),
            crate::clock::now_ns(),
            dict
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Vec<u8> {
        format!(
            r#"{{"@timestamp":"2026-11-22T10:00:{:02}.{i:09}Z","event":{{"kind":"event","action":"connect"}},"destination":{{"ip":"10.0.{}.{}","port":443}},"process":{{"pid":{},"name":"worker","command_line":"/usr/bin/worker --tenant acme --shard {}"}},"residency":{{"verdict":"allowed","policy":{{"hash":"98175d27684a31622379f50da12f390cce3413601c38019e5af9a3dc0274c31b"}}}}}}"#,
            i % 60,
            i % 200,
            i % 250,
            1000 + i % 17,
            i % 5
        )
        .into_bytes()
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE dicts (id INTEGER PRIMARY KEY, from_seq INTEGER NOT NULL, created_ts INTEGER NOT NULL, bytes BLOB NOT NULL);",
        )
        .unwrap();
        c
    }

    /// Waits (up to 30 s) for the training under way, stores and adopts
    /// its dictionary; returns its id.
    fn wait_trained(c: &Connection, comp: &mut Compressor, from_seq: u64) -> i64 {
        assert!(comp.training.is_some(), "no training under way");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(d) = comp.trained() {
                let id = store(c, &d, from_seq).unwrap();
                comp.adopt(id, &d);
                return id;
            }
            assert!(comp.training.is_some(), "training failed");
            assert!(
                std::time::Instant::now() < deadline,
                "training took over 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Feeds `records` through, storing and adopting each dictionary once
    /// its training is done; returns the ids adopted.
    fn feed(
        c: &Connection,
        comp: &mut Compressor,
        records: impl Iterator<Item = Vec<u8>>,
    ) -> Vec<i64> {
        let mut adopted = Vec::new();
        for (n, body) in records.enumerate() {
            let _ = comp.encode(&body);
            if comp.training.is_some() {
                adopted.push(wait_trained(c, comp, n as u64));
            }
        }
        adopted
    }

    /// Raw until a dictionary is trained on the first records; later ones
    /// take far fewer bytes, and every one decodes to exactly what went in.
    #[test]
    fn records_round_trip_and_shrink_once_a_dictionary_is_trained() {
        let c = db();
        let mut comp = Compressor::new(None, 200);
        let dicts = Dicts::default();
        for i in 0..200 {
            let body = record(i);
            let (dict, bytes) = comp.encode(&body);
            assert_eq!((dict, bytes), (None, &body[..]), "kept as it is");
        }
        wait_trained(&c, &mut comp, 200);
        let (mut raw, mut stored) = (0, 0);
        for i in 200..2000 {
            let body = record(i);
            let (dict, bytes) = comp.encode(&body);
            assert!(dict.is_some(), "record {i} not compressed");
            raw += body.len();
            stored += bytes.len();
            let bytes = bytes.to_vec();
            assert_eq!(dicts.decode(&c, dict, &bytes).unwrap().as_ref(), &body[..]);
        }
        assert!(
            stored * 4 < raw,
            "compressed {stored} of {raw} bytes: less than 4x"
        );
    }

    /// A few bytes that claim a megabyte are refused, not inflated.
    #[test]
    fn a_frame_claiming_more_than_the_store_compresses_is_refused() {
        let c = db();
        let mut comp = Compressor::new(None, 50);
        for i in 0..50 {
            let _ = comp.encode(&record(i));
        }
        let id = wait_trained(&c, &mut comp, 50);
        // What the writer would do with a megabyte of zeros: keep it raw.
        let zeros = vec![0u8; 1 << 20];
        assert_eq!(comp.encode(&zeros).0, None);
        // A forged frame of it, compressed with the store's dictionary.
        let dict: Vec<u8> = c
            .query_row("SELECT bytes FROM dicts WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        let mut bomb = Vec::with_capacity(zstd_safe::compress_bound(zeros.len()));
        CCtx::create()
            .compress_using_cdict(&mut bomb, &zeros, &CDict::create(&dict, 3))
            .unwrap();
        assert!(bomb.len() < 200, "{}", bomb.len());
        let e = Dicts::default().decode(&c, Some(id), &bomb).unwrap_err();
        assert!(e.contains("more than the store ever compresses"), "{e}");
        // A dictionary row that is too large to be one.
        c.execute(
            "UPDATE dicts SET bytes = zeroblob(1 << 20) WHERE id = ?1",
            [id],
        )
        .unwrap();
        let one = record(1);
        let small = comp.encode(&one).1.to_vec();
        let e = Dicts::default().decode(&c, Some(id), &small).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
    }

    /// Records unlike those the dictionary was trained on compress worse;
    /// the writer notices over a window and trains a new dictionary.
    #[test]
    fn drifted_records_get_a_new_dictionary() {
        let c = db();
        let mut comp = Compressor::new(None, 200);
        comp.window_records = 500;
        let first = feed(&c, &mut comp, (0..2000).map(record));
        assert_eq!(first.len(), 1, "one dictionary for one kind of record");
        let other = |i: usize| {
            format!(
                r#"{{"when":{i},"kind":"dns","query":{{"name":"host-{}.example.net","type":"AAAA"}},"answers":["2001:db8::{:x}","2001:db8:1::{:x}"],"resolver":"[2001:db8:53::{}]:53"}}"#,
                i * 7919 % 100_003,
                i * 31 % 65_521,
                i * 17 % 4093,
                i % 3
            )
            .into_bytes()
        };
        let second = feed(&c, &mut comp, (0..6000).map(other));
        assert_eq!(second.len(), 1, "the drift was not noticed: {second:?}");
        let dicts = Dicts::default();
        let body = other(6001);
        let (dict, bytes) = comp.encode(&body);
        assert_eq!(dict, second.first().copied());
        assert_eq!(dicts.decode(&c, dict, bytes).unwrap().as_ref(), &body[..]);
        // Records of the first kind still decode with the first dictionary.
        let (mut old, body) = (
            Compressor::new(Some((first[0], dict_bytes(&c, first[0]))), 200),
            record(5),
        );
        let (dict, bytes) = old.encode(&body);
        assert_eq!(dict, Some(first[0]));
        assert_eq!(dicts.decode(&c, dict, bytes).unwrap().as_ref(), &body[..]);
    }

    fn dict_bytes(c: &Connection, id: i64) -> Vec<u8> {
        c.query_row("SELECT bytes FROM dicts WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let c = db();
        let mut comp = Compressor::new(None, 50);
        for i in 0..50 {
            let _ = comp.encode(&record(i));
        }
        let id = wait_trained(&c, &mut comp, 50);
        let body = record(7);
        let (dict, bytes) = comp.encode(&body);
        assert_eq!(dict, Some(id));
        let mut bytes = bytes.to_vec();
        let dicts = Dicts::default();
        assert!(
            dicts
                .decode(&c, Some(id + 1), &bytes)
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            dicts
                .decode(&c, Some(id), b"{\"plain\":1}")
                .unwrap_err()
                .contains("not a zstd frame")
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        bytes[last / 2] ^= 0xa5;
        match dicts.decode(&c, Some(id), &bytes) {
            Ok(out) => assert_ne!(out.as_ref(), &body[..], "damage went unnoticed"),
            Err(e) => assert!(!e.is_empty()),
        }
        // A damaged dictionary: decoding fails or yields other bytes.
        let (_, good) = comp.encode(&body);
        let good = good.to_vec();
        c.execute("UPDATE dicts SET bytes = zeroblob(64) WHERE id = ?1", [id])
            .unwrap();
        match Dicts::default().decode(&c, Some(id), &good) {
            Ok(out) => assert_ne!(out.as_ref(), &body[..]),
            Err(e) => assert!(!e.is_empty()),
        }
    }
}
