//! `doc.*` requests: co-edited documents over the session protocol. A document's frames are
//! the y-websocket messages of `/yjs/` (`docs/protocol.md` section 14), carried as `data`:
//! base64 in JSON, binary in MessagePack.

use super::RequestId;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum DocRequest {
    /// Open a document (created as on `/yjs/` if it does not exist): the reply says whether
    /// it is read-only, then `doc` frames follow, starting with the server's sync step 1.
    #[serde(rename = "doc.open")]
    Open {
        id: RequestId,
        doc: String,
        /// Where a new document is created (default: the organisation's home space).
        #[serde(default)]
        space: Option<String>,
    },
    /// One y-websocket message for an open document.
    #[serde(rename = "doc.sync")]
    Sync {
        id: RequestId,
        doc: String,
        data: DocData,
    },
    #[serde(rename = "doc.close")]
    Close { id: RequestId, doc: String },
    /// Create a document without opening it; `already_exists` if the id is taken.
    #[serde(rename = "doc.create")]
    Create {
        id: RequestId,
        /// Default: a random id.
        #[serde(default)]
        doc: Option<String>,
        #[serde(default)]
        space: Option<String>,
    },
    /// The documents of a space.
    #[serde(rename = "doc.list")]
    List { id: RequestId, space: String },
    /// Delete a document (its creator, the space's owner, or an admin of its organisation).
    #[serde(rename = "doc.delete")]
    Delete { id: RequestId, doc: String },
}

impl DocRequest {
    /// Every `type` of this service.
    pub const TYPES: &[&str] = &[
        "doc.open",
        "doc.sync",
        "doc.close",
        "doc.create",
        "doc.list",
        "doc.delete",
    ];

    pub fn id(&self) -> RequestId {
        match self {
            DocRequest::Open { id, .. }
            | DocRequest::Sync { id, .. }
            | DocRequest::Close { id, .. }
            | DocRequest::Create { id, .. }
            | DocRequest::List { id, .. }
            | DocRequest::Delete { id, .. } => *id,
        }
    }
}

/// A y-websocket message: base64 text in JSON, binary in MessagePack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocData(pub Bytes);

impl Serialize for DocData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&STANDARD.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for DocData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DocData;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a y-websocket message: base64 text or binary")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DocData, E> {
                STANDARD
                    .decode(v)
                    .map(|b| DocData(b.into()))
                    .map_err(|_| E::custom("`data` is not base64"))
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<DocData, E> {
                Ok(DocData(Bytes::copy_from_slice(v)))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<DocData, E> {
                Ok(DocData(v.into()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Encoding, ServerFrame, encode_server};

    #[test]
    fn data_is_base64_in_json_and_binary_in_messagepack() {
        let json = br#"{"type":"doc.sync","id":3,"doc":"d","data":"AAEA"}"#;
        let want = DocRequest::Sync {
            id: 3,
            doc: "d".into(),
            data: DocData(Bytes::from_static(&[0, 1, 0])),
        };
        assert_eq!(serde_json::from_slice::<DocRequest>(json).unwrap(), want);
        let bad = br#"{"type":"doc.sync","id":3,"doc":"d","data":"not base64!"}"#;
        let e = serde_json::from_slice::<DocRequest>(bad).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");

        let frame = ServerFrame::Doc {
            doc: "d".into(),
            data: DocData(Bytes::from_static(&[1, 1, 0])),
        };
        let text = encode_server(&frame, Encoding::Json);
        assert_eq!(&text[..], br#"{"type":"doc","doc":"d","data":"AQEA"}"#);
        let packed = encode_server(&frame, Encoding::Msgpack);
        assert!(packed.windows(5).any(|w| w == [0xc4, 3, 1, 1, 0]), "bin 8");
        let back: ServerFrame = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back, frame);
        // A client's `doc.sync` in MessagePack carries `data` as binary too.
        #[derive(Serialize)]
        struct Sync<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            id: u64,
            doc: &'a str,
            data: DocData,
        }
        let sync = Sync {
            kind: "doc.sync",
            id: 3,
            doc: "d",
            data: DocData(Bytes::from_static(&[0, 1, 0])),
        };
        let packed = rmp_serde::to_vec_named(&sync).unwrap();
        assert!(packed.windows(5).any(|w| w == [0xc4, 3, 0, 1, 0]), "bin 8");
        assert_eq!(rmp_serde::from_slice::<DocRequest>(&packed).unwrap(), want);
    }
}
