//! The store's `SQLite` schema.
//!
//! Two files. `evidence.db` holds the chain: `records` has one row per
//! record, its canonical bytes (`body`, compressed against the dictionary
//! `dict` names, see `codec`) and chain hash, plus columns derived from the
//! body, in sequence order with no secondary index, so that appending
//! costs one B-tree insert. `index.db` holds the indexes the
//! API filters flows by; a second thread builds it from `records`, behind
//! the writer by one batch, so the two B-tree workloads run on two cores.
//! Everything but `records` is derived state that can be rebuilt from the
//! chain: the index file (delete it and it is rebuilt at start),
//! `violations` (their lifecycle; every transition is also a record),
//! `transfers` (per-day counts for the data-flow map, by tenant, role,
//! country, basis, the catalog's provider and service, and the Kubernetes
//! namespace), `policies` (each
//! configuration's text, from its `policy-loaded` record) and `checkpoints`
//! (signatures over the chain head).

use rusqlite::{Connection, OptionalExtension as _};

/// Bumped when the layout changes; a store of another format is refused.
pub const FORMAT: i64 = 5;

/// Settings of every connection: WAL so that readers never block the
/// writer, `synchronous = NORMAL` (a commit survives a crash of the process;
/// after a power loss the last transactions may roll back, never corrupt).
pub const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = OFF;
PRAGMA busy_timeout = 5000;
PRAGMA cache_size = -65536;
PRAGMA temp_store = MEMORY;
PRAGMA mmap_size = 1073741824;
";

/// The columns of `transfers`, one definition for the schema and for the
/// upgrade that rebuilds the table.
macro_rules! transfers_table {
    () => {
        "(
    day      INTEGER NOT NULL,
    tenant   TEXT NOT NULL,
    role     TEXT NOT NULL,
    country  TEXT NOT NULL,
    basis    TEXT NOT NULL,
    provider TEXT NOT NULL,
    service  TEXT NOT NULL,
    namespace TEXT NOT NULL,
    allowed  INTEGER NOT NULL,
    flagged  INTEGER NOT NULL,
    blocked  INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    bytes_in  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant, role, country, basis, provider, service, namespace)
) WITHOUT ROWID;"
    };
}

const TABLES: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    ts       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    verdict  TEXT,
    workload TEXT,
    role     TEXT,
    tenants  TEXT,
    country  TEXT,
    dst_ip   TEXT,
    dst_name TEXT,
    basis    TEXT,
    policy   TEXT,
    boot_ns  INTEGER,
    body     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    dict     INTEGER,
    namespace TEXT,
    pod      TEXT
);
CREATE TABLE IF NOT EXISTS dicts (
    id         INTEGER PRIMARY KEY,
    from_seq   INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    bytes      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq       INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,
    head      BLOB NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL,
    reason    TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS violations (
    id            INTEGER PRIMARY KEY,
    state         TEXT NOT NULL,
    verdict       TEXT NOT NULL,
    workload      TEXT,
    role          TEXT,
    tenants       TEXT,
    country       TEXT,
    dst_ip        TEXT,
    dst_port      INTEGER,
    dst_name      TEXT,
    rule          TEXT,
    basis         TEXT,
    count         INTEGER NOT NULL,
    first_seq     INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    first_ts      INTEGER NOT NULL,
    last_ts       INTEGER NOT NULL,
    aware_ts      INTEGER NOT NULL,
    ack_ts        INTEGER,
    ack_by        TEXT,
    ack_note      TEXT,
    ack_seq       INTEGER,
    resolved_ts   INTEGER,
    resolved_by   TEXT,
    resolved_note TEXT,
    resolved_seq  INTEGER,
    namespace     TEXT,
    pod           TEXT
);
CREATE INDEX IF NOT EXISTS violations_state ON violations (state, id);

CREATE TABLE IF NOT EXISTS transfers ",
    transfers_table!(),
    "

CREATE TABLE IF NOT EXISTS flow_totals (
    flow_id     TEXT PRIMARY KEY,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL,
    bytes_in    INTEGER NOT NULL,
    packets_out INTEGER NOT NULL,
    packets_in  INTEGER NOT NULL,
    calls       INTEGER NOT NULL,
    ended       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS policies (
    hash      TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    loaded_ts INTEGER NOT NULL,
    source    TEXT,
    text      TEXT
) WITHOUT ROWID;
"
);

const INDEX_TABLES: &str = "
CREATE TABLE IF NOT EXISTS ix_meta (
    key   TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS cols (
    seq      INTEGER PRIMARY KEY,
    ts       INTEGER NOT NULL,
    verdict  TEXT,
    workload TEXT,
    role     TEXT,
    country  TEXT,
    dst_ip   TEXT,
    dst_name TEXT,
    namespace TEXT,
    pod      TEXT
);
CREATE INDEX IF NOT EXISTS cols_ts ON cols (ts);
CREATE INDEX IF NOT EXISTS cols_country ON cols (country, seq);
CREATE INDEX IF NOT EXISTS cols_workload ON cols (workload, seq);
CREATE INDEX IF NOT EXISTS cols_dst_ip ON cols (dst_ip, seq);
CREATE INDEX IF NOT EXISTS cols_dst_name ON cols (dst_name, seq) WHERE dst_name IS NOT NULL;

CREATE TABLE IF NOT EXISTS tenants (
    tenant  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    country TEXT,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tenants_country ON tenants (tenant, country, seq);
";

/// The pod indexes of `cols`: made after the columns exist, which in an
/// index file of a format-3 store they do only once added.
const POD_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS cols_namespace ON cols (namespace, seq) WHERE namespace IS NOT NULL;
CREATE INDEX IF NOT EXISTS cols_pod ON cols (pod, seq) WHERE pod IS NOT NULL;
";

/// Creates the index file's tables (flows only: `cols` and `tenants`).
///
/// An index file of a format-3 store has no `namespace` and `pod`
/// columns: they are added, empty, which is exact (no build that wrote
/// format 3 named pods).
///
/// # Errors
/// If the file cannot be written.
pub fn create_index(conn: &Connection) -> Result<(), String> {
    conn.execute_batch("PRAGMA page_size = 8192;")
        .map_err(|e| e.to_string())?;
    conn.execute_batch(PRAGMAS).map_err(|e| e.to_string())?;
    conn.execute_batch(INDEX_TABLES)
        .map_err(|e| e.to_string())?;
    if !has_column(conn, "cols", "namespace").map_err(|e| e.to_string())? {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE cols ADD COLUMN namespace TEXT;
             ALTER TABLE cols ADD COLUMN pod TEXT;
             COMMIT;",
        )
        .map_err(|e| format!("adding the pod columns to the index: {e}"))?;
    }
    conn.execute_batch(POD_INDEXES).map_err(|e| e.to_string())
}

/// Whether `table` (of the main database, or `ix.cols`-style
/// `schema.table`) has `column`.
///
/// # Errors
/// If the database cannot be read.
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let (schema, table) = table.split_once('.').unwrap_or(("main", table));
    conn.prepare("SELECT 1 FROM pragma_table_info(?1, ?2) WHERE name = ?3")?
        .exists([table, schema, column])
}

/// Creates the tables if they are missing and checks the format.
///
/// # Errors
/// If the database cannot be written, or holds another format.
pub fn create(conn: &Connection) -> Result<(), String> {
    create_tables(conn)?;
    // Only on a store of this format: one this build refuses is left as
    // it is.
    gap_index(conn).map_err(|e| format!("indexing the gap records: {e}"))
}

fn create_tables(conn: &Connection) -> Result<(), String> {
    // 8 KiB pages: fewer, fuller pages for ~1 KiB records. Only takes
    // effect on a new database.
    conn.execute_batch("PRAGMA page_size = 8192;")
        .map_err(|e| e.to_string())?;
    conn.execute_batch(PRAGMAS).map_err(|e| e.to_string())?;
    conn.execute_batch(TABLES).map_err(|e| e.to_string())?;
    let format: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .ok();
    match format {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('format', ?1)",
                [FORMAT],
            )
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        Some(FORMAT) => Ok(()),
        Some(4) => upgrade_from_4(conn),
        // Format 1 kept every body as it was: add the dictionary column
        // (NULL: stored as is) and table, then go on as format 2.
        Some(1) => {
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE records ADD COLUMN dict INTEGER;
                 UPDATE meta SET value = 2 WHERE key = 'format';
                 COMMIT;",
            )
            .map_err(|e| format!("upgrading the store from format 1: {e}"))?;
            upgrade_from_2(conn)?;
            upgrade_from_3(conn)?;
            upgrade_from_4(conn)
        }
        Some(2) => {
            upgrade_from_2(conn)?;
            upgrade_from_3(conn)?;
            upgrade_from_4(conn)
        }
        Some(3) => {
            upgrade_from_3(conn)?;
            upgrade_from_4(conn)
        }
        Some(other) => Err(format!(
            "the store has format {other}; this build reads format {FORMAT}"
        )),
    }
}

/// The partial index of the gap records (a few among millions), made
/// again if the set of gap kinds has changed since it was made.
fn gap_index(conn: &Connection) -> rusqlite::Result<()> {
    let want = format!(
        "CREATE INDEX records_gaps ON records (seq) WHERE {}",
        crate::query::gap_kinds()
    );
    let have: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'records_gaps'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if have.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    conn.execute_batch(&format!("DROP INDEX IF EXISTS records_gaps; {want};"))
}

/// Format 2 counted transfers without the destination's catalog entry:
/// the table gains `provider` and `service` in its key. Its rows count
/// under none (empty), which is exact: no build that wrote format 2 named
/// catalog entries in its records (and `verify` would say otherwise, since
/// it counts again from the bodies).
fn upgrade_from_2(conn: &Connection) -> Result<(), String> {
    // The format-3 table, which the format-4 upgrade then rebuilds.
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE transfers RENAME TO transfers_2;
         CREATE TABLE transfers (
             day      INTEGER NOT NULL,
             tenant   TEXT NOT NULL,
             role     TEXT NOT NULL,
             country  TEXT NOT NULL,
             basis    TEXT NOT NULL,
             provider TEXT NOT NULL,
             service  TEXT NOT NULL,
             allowed  INTEGER NOT NULL,
             flagged  INTEGER NOT NULL,
             blocked  INTEGER NOT NULL,
             first_ts INTEGER NOT NULL,
             last_ts  INTEGER NOT NULL,
             PRIMARY KEY (day, tenant, role, country, basis, provider, service)
         ) WITHOUT ROWID;
         INSERT INTO transfers
             SELECT day, tenant, role, country, basis, '', '', allowed, flagged, blocked, first_ts, last_ts
             FROM transfers_2;
         DROP TABLE transfers_2;
         UPDATE meta SET value = 3 WHERE key = 'format';
         COMMIT;",
    )
    .map_err(|e| format!("upgrading the store from format 2: {e}"))
}

/// Format 3 knew no pods: `records` and `violations` gain `namespace`
/// and `pod` columns (NULL: none), and `transfers` gains `namespace` in
/// its key, its rows counting under none (empty). Both are exact: no
/// build that wrote format 3 named pods in its records (and `verify`
/// would say otherwise, since it derives the columns and counts again
/// from the bodies). Every record, and so the chain, is kept as it is.
fn upgrade_from_3(conn: &Connection) -> Result<(), String> {
    let upgrade = || -> rusqlite::Result<()> {
        for table in ["records", "violations"] {
            // (A store someone began to upgrade by hand may have them.)
            if !has_column(conn, table, "namespace")? {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN namespace TEXT;
                     ALTER TABLE {table} ADD COLUMN pod TEXT;"
                ))?;
            }
        }
        conn.execute_batch(concat!(
            "ALTER TABLE transfers RENAME TO transfers_3;
             CREATE TABLE transfers ",
            transfers_table!(),
            "
             INSERT INTO transfers (day, tenant, role, country, basis, provider, service,
                                    namespace, allowed, flagged, blocked, first_ts, last_ts)
                 SELECT day, tenant, role, country, basis, provider, service, '',
                        allowed, flagged, blocked, first_ts, last_ts
                 FROM transfers_3;
             DROP TABLE transfers_3;
             UPDATE meta SET value = 4 WHERE key = 'format';",
        ))
    };
    conn.execute_batch("BEGIN;")
        .and_then(|()| upgrade())
        .and_then(|()| conn.execute_batch("COMMIT;"))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK;");
            format!("upgrading the store from format 3: {e}")
        })
}

/// Format 4 counted no bytes: `transfers` gains `bytes_out` and
/// `bytes_in` (0), which is exact: no build that wrote format 4 followed
/// flows (and `verify` would say otherwise, since it adds the bytes up
/// again from the bodies). `flow_totals` is made with the other tables.
fn upgrade_from_4(conn: &Connection) -> Result<(), String> {
    let upgrade = || -> rusqlite::Result<()> {
        // (The format-3 upgrade made the table with them already.)
        if !has_column(conn, "transfers", "bytes_out")? {
            conn.execute_batch(
                "ALTER TABLE transfers ADD COLUMN bytes_out INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE transfers ADD COLUMN bytes_in INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        conn.execute_batch("UPDATE meta SET value = 5 WHERE key = 'format';")
    };
    conn.execute_batch("BEGIN;")
        .and_then(|()| upgrade())
        .and_then(|()| conn.execute_batch("COMMIT;"))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK;");
            format!("upgrading the store from format 4: {e}")
        })
}

/// The byte columns of `transfers` as a `SELECT` list, or zeros in a
/// store of format 4 or earlier that is read as it is.
///
/// # Errors
/// If the database cannot be read.
pub fn transfer_byte_columns(conn: &Connection) -> rusqlite::Result<&'static str> {
    Ok(if has_column(conn, "transfers", "bytes_out")? {
        "bytes_out, bytes_in"
    } else {
        "0, 0"
    })
}

/// The columns of `transfers` that later formats added to its key, as a
/// `SELECT` list: `provider, service, namespace`, with empty strings for
/// those a store of an earlier format lacks when it is read as it is
/// (`verify`, before a daemon upgrades it).
///
/// # Errors
/// If the database cannot be read.
pub fn transfer_added_columns(conn: &Connection) -> rusqlite::Result<&'static str> {
    let endpoint = has_column(conn, "transfers", "provider")?;
    let namespace = has_column(conn, "transfers", "namespace")?;
    Ok(match (endpoint, namespace) {
        (true, true) => "provider, service, namespace",
        (true, false) => "provider, service, ''",
        (false, _) => "'', '', ''",
    })
}

/// The pod columns of a table as a `SELECT` list: `namespace, pod`, or
/// NULLs in a store (or index file) of format 3 or earlier that is read
/// as it is.
///
/// # Errors
/// If the database cannot be read.
pub fn pod_columns(conn: &Connection, table: &str) -> rusqlite::Result<&'static str> {
    Ok(if has_column(conn, table, "namespace")? {
        "namespace, pod"
    } else {
        "NULL, NULL"
    })
}

/// A flow's counts as the tables keep them (`INTEGER`): bytes out and
/// in, packets out and in, calls.
pub(crate) fn counts_row(c: &residency_record::FlowCounts) -> [i64; 5] {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    [
        n(c.bytes_out),
        n(c.bytes_in),
        n(c.packets_out),
        n(c.packets_in),
        n(c.calls),
    ]
}
