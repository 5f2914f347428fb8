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
//! country, basis and the catalog's provider and service), `policies` (each
//! configuration's text, from its `policy-loaded` record) and `checkpoints`
//! (signatures over the chain head).

use rusqlite::Connection;

/// Bumped when the layout changes; a store of another format is refused.
pub const FORMAT: i64 = 3;

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
    allowed  INTEGER NOT NULL,
    flagged  INTEGER NOT NULL,
    blocked  INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    PRIMARY KEY (day, tenant, role, country, basis, provider, service)
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
    dict     INTEGER
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
    resolved_seq  INTEGER
);
CREATE INDEX IF NOT EXISTS violations_state ON violations (state, id);

CREATE TABLE IF NOT EXISTS transfers ",
    transfers_table!(),
    "

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
    dst_name TEXT
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

/// Creates the index file's tables (flows only: `cols` and `tenants`).
///
/// # Errors
/// If the file cannot be written.
pub fn create_index(conn: &Connection) -> Result<(), String> {
    conn.execute_batch("PRAGMA page_size = 8192;")
        .map_err(|e| e.to_string())?;
    conn.execute_batch(PRAGMAS).map_err(|e| e.to_string())?;
    conn.execute_batch(INDEX_TABLES).map_err(|e| e.to_string())
}

/// Creates the tables if they are missing and checks the format.
///
/// # Errors
/// If the database cannot be written, or holds another format.
pub fn create(conn: &Connection) -> Result<(), String> {
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
            upgrade_from_2(conn)
        }
        Some(2) => upgrade_from_2(conn),
        Some(other) => Err(format!(
            "the store has format {other}; this build reads format {FORMAT}"
        )),
    }
}

/// Format 2 counted transfers without the destination's catalog entry:
/// the table gains `provider` and `service` in its key. Its rows count
/// under none (empty), which is exact: no build that wrote format 2 named
/// catalog entries in its records (and `verify` would say otherwise, since
/// it counts again from the bodies).
fn upgrade_from_2(conn: &Connection) -> Result<(), String> {
    conn.execute_batch(concat!(
        "BEGIN;
         ALTER TABLE transfers RENAME TO transfers_2;
         CREATE TABLE transfers ",
        transfers_table!(),
        "
         INSERT INTO transfers
             SELECT day, tenant, role, country, basis, '', '', allowed, flagged, blocked, first_ts, last_ts
             FROM transfers_2;
         DROP TABLE transfers_2;
         UPDATE meta SET value = 3 WHERE key = 'format';
         COMMIT;",
    ))
    .map_err(|e| format!("upgrading the store from format 2: {e}"))
}

/// The columns of `transfers` that name the catalog entry, as a `SELECT`
/// list: `provider, service`, or two empty strings in a store of format 1
/// or 2 that is read as it is (`verify`, before a daemon upgrades it).
///
/// # Errors
/// If the database cannot be read.
pub fn transfer_endpoint_columns(conn: &Connection) -> rusqlite::Result<&'static str> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('transfers') WHERE name = 'provider'")?
        .exists([])?;
    Ok(if has { "provider, service" } else { "'', ''" })
}
