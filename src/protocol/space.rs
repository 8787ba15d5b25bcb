//! `space.*` requests: create spaces and manage their members.

use super::RequestId;
use crate::access::Role;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum SpaceRequest {
    #[serde(rename = "space.create")]
    Create {
        id: RequestId,
        /// The new space's id; generated when absent.
        #[serde(default)]
        space: Option<String>,
        name: String,
    },
    #[serde(rename = "space.list")]
    List { id: RequestId },
    #[serde(rename = "space.members")]
    Members { id: RequestId, space: String },
    #[serde(rename = "space.add_member")]
    AddMember {
        id: RequestId,
        space: String,
        user: String,
        org: String,
        #[serde(default)]
        role: Option<Role>,
    },
    #[serde(rename = "space.remove_member")]
    RemoveMember {
        id: RequestId,
        space: String,
        user: String,
    },
}

impl SpaceRequest {
    /// Every `type` of this service.
    pub const TYPES: &[&str] = &[
        "space.create",
        "space.list",
        "space.members",
        "space.add_member",
        "space.remove_member",
    ];

    pub fn id(&self) -> RequestId {
        match self {
            SpaceRequest::Create { id, .. }
            | SpaceRequest::List { id }
            | SpaceRequest::Members { id, .. }
            | SpaceRequest::AddMember { id, .. }
            | SpaceRequest::RemoveMember { id, .. } => *id,
        }
    }
}
