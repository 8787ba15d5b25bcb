//! `chat.*` requests: rooms, their members, messages, history and resume. Room streams are
//! delivered as `message` frames on `room:<space>/<room>` channels (see `docs/protocol.md`).

use super::RequestId;
use crate::access::Role;
use crate::store::MeetingSetting;
use serde::{Deserialize, Serialize};

/// How a message body is to be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    #[default]
    Text,
    Markdown,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Text => "text",
            BodyFormat::Markdown => "markdown",
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum ChatRequest {
    #[serde(rename = "chat.create_room")]
    CreateRoom {
        id: RequestId,
        space: String,
        /// The new room's id within the space; generated when absent.
        #[serde(default)]
        room: Option<String>,
        name: String,
        #[serde(default)]
        private: bool,
    },
    #[serde(rename = "chat.open_direct")]
    OpenDirect {
        id: RequestId,
        space: String,
        /// The other members (the caller is one anyway).
        users: Vec<String>,
    },
    #[serde(rename = "chat.rooms")]
    Rooms { id: RequestId, space: String },
    #[serde(rename = "chat.rename_room")]
    RenameRoom {
        id: RequestId,
        space: String,
        room: String,
        name: String,
    },
    /// Owners and managers: how the room's meetings carry media (`docs/protocol.md` 15.7).
    #[serde(rename = "chat.set_meeting_mode")]
    SetMeetingMode {
        id: RequestId,
        space: String,
        room: String,
        meeting_mode: MeetingSetting,
    },
    #[serde(rename = "chat.archive_room")]
    ArchiveRoom {
        id: RequestId,
        space: String,
        room: String,
        /// `false` unarchives.
        #[serde(default = "yes")]
        archived: bool,
    },
    #[serde(rename = "chat.join")]
    Join {
        id: RequestId,
        space: String,
        room: String,
    },
    #[serde(rename = "chat.leave")]
    Leave {
        id: RequestId,
        space: String,
        room: String,
    },
    #[serde(rename = "chat.invite")]
    Invite {
        id: RequestId,
        space: String,
        room: String,
        user: String,
        #[serde(default)]
        role: Option<Role>,
    },
    #[serde(rename = "chat.remove_member")]
    RemoveMember {
        id: RequestId,
        space: String,
        room: String,
        user: String,
    },
    #[serde(rename = "chat.members")]
    Members {
        id: RequestId,
        space: String,
        room: String,
    },
    #[serde(rename = "chat.send")]
    Send {
        id: RequestId,
        space: String,
        room: String,
        /// Chosen by the client, unique per (room, author): a retry with the same id is
        /// answered with the original acknowledgement and appends nothing.
        client_id: String,
        body: String,
        #[serde(default)]
        format: BodyFormat,
        /// Reply in the thread of this root message (by offset).
        #[serde(default)]
        thread: Option<u64>,
    },
    #[serde(rename = "chat.edit")]
    Edit {
        id: RequestId,
        space: String,
        room: String,
        /// The message's offset.
        offset: u64,
        body: String,
        #[serde(default)]
        format: BodyFormat,
    },
    #[serde(rename = "chat.delete")]
    Delete {
        id: RequestId,
        space: String,
        room: String,
        offset: u64,
    },
    #[serde(rename = "chat.history")]
    History {
        id: RequestId,
        space: String,
        room: String,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
        /// Page the replies of this thread root instead of the top-level messages.
        #[serde(default)]
        thread: Option<u64>,
    },
    #[serde(rename = "chat.sync")]
    Sync {
        id: RequestId,
        space: String,
        room: String,
        /// The epoch the client's `after` belongs to; a different one gets a reset.
        #[serde(default)]
        epoch: Option<u64>,
        after: u64,
        #[serde(default)]
        limit: Option<usize>,
    },
    #[serde(rename = "chat.react")]
    React {
        id: RequestId,
        space: String,
        room: String,
        offset: u64,
        emoji: String,
    },
    #[serde(rename = "chat.unreact")]
    Unreact {
        id: RequestId,
        space: String,
        room: String,
        offset: u64,
        emoji: String,
    },
    #[serde(rename = "chat.mark_read")]
    MarkRead {
        id: RequestId,
        space: String,
        room: String,
        /// The offset read up to.
        offset: u64,
    },
    #[serde(rename = "chat.unread")]
    Unread { id: RequestId, space: String },
    #[serde(rename = "chat.receipts")]
    Receipts {
        id: RequestId,
        space: String,
        room: String,
    },
    #[serde(rename = "chat.search")]
    Search {
        id: RequestId,
        space: String,
        /// Words that must all occur in a message.
        query: String,
        /// Only this room (default: every room of the space the caller may read).
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        author: Option<String>,
        /// Only messages created at or after `from_ms` and before `until_ms` (Unix ms).
        #[serde(default)]
        from_ms: Option<i64>,
        #[serde(default)]
        until_ms: Option<i64>,
        #[serde(default)]
        limit: Option<usize>,
        /// Hits to skip: the next page starts after the hits already seen.
        #[serde(default)]
        skip: Option<usize>,
    },
    #[serde(rename = "chat.revisions")]
    Revisions {
        id: RequestId,
        space: String,
        room: String,
        offset: u64,
    },
}

impl ChatRequest {
    /// Every `type` of this service.
    pub const TYPES: &[&str] = &[
        "chat.create_room",
        "chat.rooms",
        "chat.rename_room",
        "chat.set_meeting_mode",
        "chat.archive_room",
        "chat.join",
        "chat.leave",
        "chat.invite",
        "chat.remove_member",
        "chat.members",
        "chat.send",
        "chat.edit",
        "chat.delete",
        "chat.history",
        "chat.sync",
        "chat.revisions",
        "chat.mark_read",
        "chat.unread",
        "chat.receipts",
        "chat.react",
        "chat.unreact",
        "chat.open_direct",
        "chat.search",
    ];

    pub fn id(&self) -> RequestId {
        match self {
            ChatRequest::CreateRoom { id, .. }
            | ChatRequest::Rooms { id, .. }
            | ChatRequest::RenameRoom { id, .. }
            | ChatRequest::SetMeetingMode { id, .. }
            | ChatRequest::ArchiveRoom { id, .. }
            | ChatRequest::Join { id, .. }
            | ChatRequest::Leave { id, .. }
            | ChatRequest::Invite { id, .. }
            | ChatRequest::RemoveMember { id, .. }
            | ChatRequest::Members { id, .. }
            | ChatRequest::Send { id, .. }
            | ChatRequest::Edit { id, .. }
            | ChatRequest::Delete { id, .. }
            | ChatRequest::History { id, .. }
            | ChatRequest::Sync { id, .. }
            | ChatRequest::Revisions { id, .. }
            | ChatRequest::MarkRead { id, .. }
            | ChatRequest::Unread { id, .. }
            | ChatRequest::Receipts { id, .. }
            | ChatRequest::React { id, .. }
            | ChatRequest::Unreact { id, .. }
            | ChatRequest::OpenDirect { id, .. }
            | ChatRequest::Search { id, .. } => *id,
        }
    }
}
