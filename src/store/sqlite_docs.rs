//! [`DocStore`] on the embedded SQLite store: the same writer thread and group commit as the
//! rest of [`SqliteStore`], so an appended update is durable when `append_doc_update` returns.

use super::sqlite::{SqliteStore, backend, is_constraint};
use super::{DocContent, DocRecord, DocStore, StoreError, StoreResult};
use rusqlite::{OptionalExtension, Row, ffi, params};

/// Migration 3. A document's content is its snapshot (`docs.snapshot`, the merged updates up to
/// `docs.snapshot_seq`) plus the rows of `doc_updates` after it.
pub(super) const SCHEMA: &str = "
    CREATE TABLE docs (
        id TEXT PRIMARY KEY,
        space TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        snapshot BLOB,
        snapshot_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX docs_by_space ON docs(space, id);
    CREATE TABLE doc_updates (
        doc TEXT NOT NULL REFERENCES docs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (doc, seq)
    ) WITHOUT ROWID;
";

fn doc_row(row: &Row<'_>) -> rusqlite::Result<DocRecord> {
    Ok(DocRecord {
        id: row.get(0)?,
        space: row.get(1)?,
        created_by: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

#[async_trait::async_trait]
impl DocStore for SqliteStore {
    async fn create_doc(&self, doc: DocRecord) -> StoreResult<()> {
        self.call(move |txn| {
            let inserted = txn.execute(
                "INSERT INTO docs (id, space, created_by, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![doc.id, doc.space, doc.created_by, doc.created_ms],
            );
            match inserted {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    Err(StoreError::AlreadyExists(format!("document {}", doc.id)))
                }
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                    Err(StoreError::NotFound(format!("space {}", doc.space)))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn doc(&self, id: &str) -> StoreResult<Option<DocRecord>> {
        let id = id.to_owned();
        self.call(move |txn| {
            txn.prepare_cached("SELECT id, space, created_by, created_ms FROM docs WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], doc_row).optional())
                .map_err(backend)
        })
        .await
    }

    async fn docs_in(&self, space: &str) -> StoreResult<Vec<DocRecord>> {
        let space = space.to_owned();
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(
                    "SELECT id, space, created_by, created_ms FROM docs WHERE space = ?1
                     ORDER BY id",
                )
                .map_err(backend)?;
            s.query_map([space], doc_row)
                .and_then(Iterator::collect)
                .map_err(backend)
        })
        .await
    }

    async fn delete_doc(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.call(move |txn| {
            txn.execute("DELETE FROM docs WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await
    }

    async fn load_doc(&self, id: &str) -> StoreResult<DocContent> {
        let id = id.to_owned();
        self.call(move |txn| {
            let head: Option<(Option<Vec<u8>>, i64)> = txn
                .prepare_cached("SELECT snapshot, snapshot_seq FROM docs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(backend)?;
            let Some((snapshot, snapshot_seq)) = head else {
                return Err(StoreError::NotFound(format!("document {id}")));
            };
            let mut s = txn
                .prepare_cached(
                    "SELECT seq, body FROM doc_updates WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(backend)?;
            let rows: Vec<(i64, Vec<u8>)> = s
                .query_map(params![id, snapshot_seq], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(backend)?;
            let last_seq = rows.last().map_or(snapshot_seq, |(seq, _)| *seq);
            Ok(DocContent {
                snapshot,
                updates: rows.into_iter().map(|(_, body)| body).collect(),
                last_seq,
            })
        })
        .await
    }

    async fn append_doc_update(&self, id: &str, update: Vec<u8>) -> StoreResult<i64> {
        let id = id.to_owned();
        self.call(move |txn| {
            let seq: Option<i64> = txn
                .prepare_cached(
                    "SELECT max(snapshot_seq, coalesce(
                         (SELECT max(seq) FROM doc_updates WHERE doc = ?1), 0)) + 1
                     FROM docs WHERE id = ?1",
                )
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)).optional())
                .map_err(backend)?;
            let seq = seq.ok_or_else(|| StoreError::NotFound(format!("document {id}")))?;
            txn.prepare_cached("INSERT INTO doc_updates (doc, seq, body) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![id, seq, update]))
                .map_err(backend)?;
            Ok(seq)
        })
        .await
    }

    async fn compact_doc(&self, id: &str, snapshot: Vec<u8>, upto_seq: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.call(move |txn| {
            let n = txn
                .prepare_cached("UPDATE docs SET snapshot = ?2, snapshot_seq = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, snapshot, upto_seq]))
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("document {id}")));
            }
            txn.prepare_cached("DELETE FROM doc_updates WHERE doc = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![id, upto_seq]))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
