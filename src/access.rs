//! Identity and access: the verified claims of a session, and the one authorizer that decides
//! every access to a space and its channels. Pure functions of their inputs (sans-IO).

use serde::{Deserialize, Serialize};

/// What an access token lets its holder do, beyond being a member of spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Receive messages on channels of the spaces the user belongs to.
    Subscribe,
    /// Publish on channels of the spaces the user belongs to.
    Publish,
    /// Create spaces owned by the user's organisation.
    CreateSpaces,
    /// Administer every space of the user's organisation (members, settings).
    Admin,
    /// A grant this server version does not know; it allows nothing.
    #[serde(other)]
    Unknown,
}

impl Grant {
    /// The grants a token gets when none are named: everything but administration.
    pub const DEFAULT: [Grant; 3] = [Grant::Subscribe, Grant::Publish, Grant::CreateSpaces];
}

/// The verified claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id, unique across organisations.
    pub sub: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's home organisation.
    pub org: String,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    pub fn has(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// A member's role in a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the space's members; always of the owning organisation.
    Owner,
    /// A member of the owning organisation.
    Member,
    /// A member from another organisation.
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }
}

/// What the authorizer knows about a space when deciding: its owner and the caller's role in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceView<'a> {
    pub org: &'a str,
    pub role: Option<Role>,
}

/// What the authorizer knows about a chat room: its kind and state and the caller's role in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomView {
    /// Private rooms are visible to their members (and the space's managers) only.
    pub private: bool,
    /// Archived rooms are read-only.
    pub archived: bool,
    /// Direct messages: a private room with a fixed set of members that nobody manages, and
    /// invisible to everyone else (the space's managers too).
    pub direct: bool,
    /// The caller's role in the room, if they are a member of it.
    pub role: Option<Role>,
}

/// What may be done to or in a chat room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAction<'a> {
    /// Create a room in the space (the room does not exist yet).
    Create,
    /// Open a direct conversation with members of the space.
    CreateDirect,
    /// Know the room exists: list it, see its members.
    See,
    /// Read its messages: history, resume, subscribe to its channel.
    Read,
    /// Become a member of a public room.
    Join,
    /// Send messages, and edit or delete one's own.
    Send,
    /// Delete other members' messages.
    Moderate,
    /// Add a member of the space with `role`; `guest` says whether they are a guest of the space.
    Invite { role: Role, guest: bool },
    /// Remove `user` from the room (oneself: leave).
    Remove { user: &'a str },
    /// Rename, archive or unarchive the room.
    Manage,
}

/// Everything a session may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    CreateSpace,
    /// Watch the presence of a list of users (the presence core shows only those who share a
    /// space with the caller).
    WatchUsers,
    /// See the space, its channels' names and its member list.
    ReadSpace,
    Subscribe,
    Publish,
    /// Add `user` of `org` with `role`, or change their role.
    AddMember {
        org: &'a str,
        role: Role,
    },
    /// Remove `user` from the space.
    RemoveMember {
        user: &'a str,
    },
    /// Subscribe to the personal channel of `user` of `org` (no space involved).
    SubscribePersonal {
        org: &'a str,
        user: &'a str,
    },
    /// Act on a chat room of the space; `room` is `None` when it does not exist.
    Room {
        room: Option<RoomView>,
        action: RoomAction<'a>,
    },
}

/// Why an action was refused. The message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The space does not exist or the caller may not know it does.
    #[error("no such space")]
    NoSuchSpace,
    /// The room does not exist or the caller may not know it does.
    #[error("no such room")]
    NoSuchRoom,
    #[error("{0}")]
    Forbidden(&'static str),
}

/// The one authorizer. `space` is `None` when the space does not exist.
pub fn authorize(claims: &Claims, action: Action, space: Option<SpaceView>) -> Result<(), Denied> {
    use Denied::Forbidden;
    if let Action::CreateSpace = action {
        return if claims.has(Grant::CreateSpaces) {
            Ok(())
        } else {
            Err(Forbidden("the token lacks the create_spaces grant"))
        };
    }
    if let Action::WatchUsers = action {
        return if claims.has(Grant::Subscribe) {
            Ok(())
        } else {
            Err(Forbidden("the token lacks the subscribe grant"))
        };
    }
    if let Action::SubscribePersonal { org, user } = action {
        return if org != claims.org || user != claims.sub {
            Err(Forbidden("a personal channel is for its own user only"))
        } else if !claims.has(Grant::Subscribe) {
            Err(Forbidden("the token lacks the subscribe grant"))
        } else {
            Ok(())
        };
    }
    let space = space.ok_or(Denied::NoSuchSpace)?;
    let org_admin = claims.has(Grant::Admin) && claims.org == space.org;
    // A space is invisible to everyone but its members and its organisation's admins.
    if space.role.is_none() && !org_admin {
        return Err(Denied::NoSuchSpace);
    }
    let manager = org_admin || space.role == Some(Role::Owner);
    match action {
        Action::CreateSpace | Action::WatchUsers | Action::SubscribePersonal { .. } => {
            unreachable!("handled above")
        }
        Action::ReadSpace => Ok(()),
        Action::Subscribe if !claims.has(Grant::Subscribe) => {
            Err(Forbidden("the token lacks the subscribe grant"))
        }
        Action::Publish if !claims.has(Grant::Publish) => {
            Err(Forbidden("the token lacks the publish grant"))
        }
        Action::Subscribe | Action::Publish if space.role.is_none() => {
            Err(Forbidden("only members of the space may use its channels"))
        }
        Action::Subscribe | Action::Publish => Ok(()),
        Action::AddMember { .. } if !manager => Err(Forbidden(
            "only the space's owners and its organisation's admins manage members",
        )),
        Action::AddMember { org, role } => match (org == space.org, role) {
            (true, Role::Guest) => Err(Forbidden(
                "members of the owning organisation are not guests",
            )),
            (false, Role::Owner | Role::Member) => {
                Err(Forbidden("members of other organisations join as guests"))
            }
            _ => Ok(()),
        },
        Action::RemoveMember { user } if user == claims.sub => Ok(()),
        Action::RemoveMember { .. } if manager => Ok(()),
        Action::RemoveMember { .. } => Err(Forbidden(
            "only the space's owners and its organisation's admins remove members",
        )),
        Action::Room { room, action } => authorize_room(claims, space.role, manager, room, action),
    }
}

/// Rooms, once the space is known to be visible to the caller. `manager`: an owner of the space
/// or an admin of its organisation, who may manage every room but reads only as a member.
fn authorize_room(
    claims: &Claims,
    space_role: Option<Role>,
    manager: bool,
    room: Option<RoomView>,
    action: RoomAction,
) -> Result<(), Denied> {
    use Denied::Forbidden;
    match action {
        RoomAction::Create => {
            return match space_role {
                Some(Role::Owner | Role::Member) => Ok(()),
                Some(Role::Guest) => Err(Forbidden("guests do not create rooms")),
                None => Err(Forbidden("only members of the space create rooms")),
            };
        }
        RoomAction::CreateDirect => {
            return if space_role.is_none() {
                Err(Forbidden("only members of the space message its members"))
            } else if !claims.has(Grant::Publish) {
                Err(Forbidden("the token lacks the publish grant"))
            } else {
                Ok(())
            };
        }
        _ => {}
    }
    let room = room.ok_or(Denied::NoSuchRoom)?;
    // A room role counts only while its holder is a member of the space.
    let role = space_role.and(room.role);
    if (room.private || room.direct) && role.is_none() && (room.direct || !manager) {
        return Err(Denied::NoSuchRoom);
    }
    let fixed = Err(Forbidden("direct messages have a fixed set of members"));
    if room.direct
        && matches!(
            action,
            RoomAction::Join
                | RoomAction::Invite { .. }
                | RoomAction::Remove { .. }
                | RoomAction::Manage
        )
    {
        return fixed;
    }
    let room_manager = !room.direct && (manager || role == Some(Role::Owner));
    let writable = if room.archived {
        Err(Forbidden("the room is archived"))
    } else {
        Ok(())
    };
    match action {
        RoomAction::Create | RoomAction::CreateDirect => unreachable!("handled above"),
        RoomAction::See => Ok(()),
        RoomAction::Read if !claims.has(Grant::Subscribe) => {
            Err(Forbidden("the token lacks the subscribe grant"))
        }
        RoomAction::Read if space_role.is_none() => {
            Err(Forbidden("only members of the space read its rooms"))
        }
        RoomAction::Read if room.private && role.is_none() => {
            Err(Forbidden("only members of a private room read it"))
        }
        RoomAction::Read => Ok(()),
        RoomAction::Join if space_role.is_none() => {
            Err(Forbidden("only members of the space join its rooms"))
        }
        RoomAction::Join if room.private && role.is_none() => {
            Err(Forbidden("private rooms are joined by invitation"))
        }
        RoomAction::Join => writable,
        RoomAction::Send if !claims.has(Grant::Publish) => {
            Err(Forbidden("the token lacks the publish grant"))
        }
        RoomAction::Send if role.is_none() => Err(Forbidden("join the room to send to it")),
        RoomAction::Send => writable,
        RoomAction::Moderate if !room_manager => Err(Forbidden(
            "only the room's owners and the space's managers delete others' messages",
        )),
        RoomAction::Moderate => writable,
        RoomAction::Invite { .. }
            if !(manager || matches!(role, Some(Role::Owner | Role::Member))) =>
        {
            Err(Forbidden("only members of the room (not guests) invite"))
        }
        RoomAction::Invite {
            role: Role::Owner, ..
        } if !room_manager => Err(Forbidden("only the room's owners make owners")),
        RoomAction::Invite { role, guest } if guest != (role == Role::Guest) => Err(Forbidden(
            "guests of the space join rooms as guests, and only they do",
        )),
        RoomAction::Invite { .. } => writable,
        RoomAction::Remove { user } if user == claims.sub => Ok(()),
        RoomAction::Remove { .. } if room_manager => Ok(()),
        RoomAction::Remove { .. } => Err(Forbidden(
            "only the room's owners and the space's managers remove members",
        )),
        RoomAction::Manage if room_manager => Ok(()),
        RoomAction::Manage => Err(Forbidden(
            "only the room's owners and the space's managers manage it",
        )),
    }
}

/// The role a new member gets when the caller names none.
pub fn default_role(space_org: &str, member_org: &str) -> Role {
    if space_org == member_org {
        Role::Member
    } else {
        Role::Guest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(user: &str, org: &str, grants: &[Grant]) -> Claims {
        Claims {
            sub: user.into(),
            name: None,
            org: org.into(),
            grants: grants.to_vec(),
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn view(role: Option<Role>) -> Option<SpaceView<'static>> {
        Some(SpaceView { org: "acme", role })
    }

    #[test]
    fn non_members_see_nothing() {
        let bob = claims("bob", "globex", &Grant::DEFAULT);
        for action in [Action::ReadSpace, Action::Subscribe, Action::Publish] {
            assert_eq!(
                authorize(&bob, action, view(None)),
                Err(Denied::NoSuchSpace)
            );
        }
        // An admin of another organisation is no admin here.
        let admin = claims("eve", "globex", &[Grant::Admin, Grant::Subscribe]);
        assert_eq!(
            authorize(&admin, Action::Subscribe, view(None)),
            Err(Denied::NoSuchSpace)
        );
    }

    #[test]
    fn guests_use_channels_but_do_not_manage() {
        let bob = claims("bob", "globex", &Grant::DEFAULT);
        assert_eq!(
            authorize(&bob, Action::Subscribe, view(Some(Role::Guest))),
            Ok(())
        );
        assert_eq!(
            authorize(&bob, Action::Publish, view(Some(Role::Guest))),
            Ok(())
        );
        let add = Action::AddMember {
            org: "globex",
            role: Role::Guest,
        };
        assert!(authorize(&bob, add, view(Some(Role::Guest))).is_err());
        let leave = Action::RemoveMember { user: "bob" };
        assert_eq!(authorize(&bob, leave, view(Some(Role::Guest))), Ok(()));
    }

    #[test]
    fn grants_are_enforced() {
        let reader = claims("ann", "acme", &[Grant::Subscribe]);
        assert_eq!(
            authorize(&reader, Action::Subscribe, view(Some(Role::Member))),
            Ok(())
        );
        assert!(matches!(
            authorize(&reader, Action::Publish, view(Some(Role::Member))),
            Err(Denied::Forbidden(_))
        ));
        assert!(authorize(&reader, Action::CreateSpace, None).is_err());
        assert_eq!(authorize(&reader, Action::WatchUsers, None), Ok(()));
        let writer = claims("bo", "acme", &[Grant::Publish]);
        assert!(authorize(&writer, Action::WatchUsers, None).is_err());
    }

    #[test]
    fn owners_and_org_admins_manage_members() {
        let owner = claims("ann", "acme", &Grant::DEFAULT);
        let guest = Action::AddMember {
            org: "globex",
            role: Role::Guest,
        };
        assert_eq!(authorize(&owner, guest, view(Some(Role::Owner))), Ok(()));
        let foreign_owner = Action::AddMember {
            org: "globex",
            role: Role::Owner,
        };
        assert!(authorize(&owner, foreign_owner, view(Some(Role::Owner))).is_err());
        let admin = claims("root", "acme", &[Grant::Admin]);
        assert_eq!(authorize(&admin, guest, view(None)), Ok(()));
        let member = claims("joe", "acme", &Grant::DEFAULT);
        assert!(authorize(&member, guest, view(Some(Role::Member))).is_err());
    }

    #[test]
    fn personal_channels_are_their_users_own() {
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let own = Action::SubscribePersonal {
            org: "acme",
            user: "ann",
        };
        assert_eq!(authorize(&ann, own, None), Ok(()));
        for (org, user) in [("acme", "bob"), ("globex", "ann")] {
            let other = Action::SubscribePersonal { org, user };
            assert!(authorize(&ann, other, None).is_err());
        }
        let no_grant = claims("ann", "acme", &[Grant::Publish]);
        assert!(authorize(&no_grant, own, None).is_err());
    }

    fn room(private: bool, archived: bool, role: Option<Role>) -> Option<RoomView> {
        Some(RoomView {
            private,
            archived,
            direct: false,
            role,
        })
    }

    #[test]
    fn direct_messages_are_for_their_members_only() {
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let dm = |role| {
            Some(RoomView {
                private: true,
                archived: false,
                direct: true,
                role,
            })
        };
        let owner_of_space = view(Some(Role::Owner));
        // Not even the space's owners see someone else's conversation.
        assert_eq!(
            authorize(&ann, on_room(dm(None), RoomAction::See), owner_of_space),
            Err(Denied::NoSuchRoom)
        );
        let member = view(Some(Role::Member));
        assert_eq!(
            authorize(
                &ann,
                on_room(dm(Some(Role::Member)), RoomAction::Send),
                member
            ),
            Ok(())
        );
        for action in [
            RoomAction::Join,
            RoomAction::Manage,
            RoomAction::Moderate,
            RoomAction::Remove { user: "ann" },
            RoomAction::Invite {
                role: Role::Member,
                guest: false,
            },
        ] {
            assert!(
                authorize(
                    &ann,
                    on_room(dm(Some(Role::Member)), action),
                    owner_of_space
                )
                .is_err(),
                "{action:?}"
            );
        }
        let guest = claims("gus", "globex", &Grant::DEFAULT);
        assert_eq!(
            authorize(
                &guest,
                on_room(None, RoomAction::CreateDirect),
                view(Some(Role::Guest))
            ),
            Ok(())
        );
        assert!(authorize(&ann, on_room(None, RoomAction::CreateDirect), view(None)).is_err());
    }

    fn on_room(room: Option<RoomView>, action: RoomAction<'_>) -> Action<'_> {
        Action::Room { room, action }
    }

    #[test]
    fn public_rooms_are_read_by_the_space_and_written_by_members() {
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let space = view(Some(Role::Member));
        let public = room(false, false, None);
        for action in [RoomAction::See, RoomAction::Read, RoomAction::Join] {
            assert_eq!(authorize(&ann, on_room(public, action), space), Ok(()));
        }
        assert!(matches!(
            authorize(&ann, on_room(public, RoomAction::Send), space),
            Err(Denied::Forbidden(_))
        ));
        let joined = room(false, false, Some(Role::Member));
        assert_eq!(
            authorize(&ann, on_room(joined, RoomAction::Send), space),
            Ok(())
        );
        // A room role is void without the space membership: the space is invisible.
        assert_eq!(
            authorize(&ann, on_room(joined, RoomAction::Read), view(None)),
            Err(Denied::NoSuchSpace)
        );
        assert_eq!(
            authorize(&ann, on_room(None, RoomAction::Read), space),
            Err(Denied::NoSuchRoom)
        );
    }

    #[test]
    fn private_rooms_are_invisible_to_non_members() {
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let space = view(Some(Role::Member));
        let private = room(true, false, None);
        for action in [
            RoomAction::See,
            RoomAction::Read,
            RoomAction::Join,
            RoomAction::Send,
        ] {
            assert_eq!(
                authorize(&ann, on_room(private, action), space),
                Err(Denied::NoSuchRoom)
            );
        }
        // The space's owner sees it and manages it, but reads only as a member.
        let owner = view(Some(Role::Owner));
        assert_eq!(
            authorize(&ann, on_room(private, RoomAction::Manage), owner),
            Ok(())
        );
        assert!(matches!(
            authorize(&ann, on_room(private, RoomAction::Read), owner),
            Err(Denied::Forbidden(_))
        ));
        let member = room(true, false, Some(Role::Member));
        assert_eq!(
            authorize(&ann, on_room(member, RoomAction::Read), space),
            Ok(())
        );
    }

    #[test]
    fn archived_rooms_are_read_only() {
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let space = view(Some(Role::Member));
        let archived = room(false, true, Some(Role::Owner));
        assert_eq!(
            authorize(&ann, on_room(archived, RoomAction::Read), space),
            Ok(())
        );
        for action in [
            RoomAction::Send,
            RoomAction::Join,
            RoomAction::Moderate,
            RoomAction::Invite {
                role: Role::Member,
                guest: false,
            },
        ] {
            assert!(authorize(&ann, on_room(archived, action), space).is_err());
        }
        assert_eq!(
            authorize(&ann, on_room(archived, RoomAction::Manage), space),
            Ok(())
        );
    }

    #[test]
    fn room_roles() {
        let bob = claims("bob", "globex", &Grant::DEFAULT);
        let guest_space = view(Some(Role::Guest));
        assert!(authorize(&bob, on_room(None, RoomAction::Create), guest_space).is_err());
        let as_guest = room(false, false, Some(Role::Guest));
        assert_eq!(
            authorize(&bob, on_room(as_guest, RoomAction::Send), guest_space),
            Ok(())
        );
        let invite = RoomAction::Invite {
            role: Role::Member,
            guest: false,
        };
        assert!(authorize(&bob, on_room(as_guest, invite), guest_space).is_err());
        let ann = claims("ann", "acme", &Grant::DEFAULT);
        let space = view(Some(Role::Member));
        let member = room(false, false, Some(Role::Member));
        assert_eq!(authorize(&ann, on_room(member, invite), space), Ok(()));
        let as_owner = RoomAction::Invite {
            role: Role::Owner,
            guest: false,
        };
        assert!(authorize(&ann, on_room(member, as_owner), space).is_err());
        let guest_as_member = RoomAction::Invite {
            role: Role::Member,
            guest: true,
        };
        assert!(authorize(&ann, on_room(member, guest_as_member), space).is_err());
        let kick = RoomAction::Remove { user: "carl" };
        assert!(authorize(&ann, on_room(member, kick), space).is_err());
        let leave = RoomAction::Remove { user: "ann" };
        assert_eq!(authorize(&ann, on_room(member, leave), space), Ok(()));
        let owner = room(false, false, Some(Role::Owner));
        assert_eq!(authorize(&ann, on_room(owner, kick), space), Ok(()));
        assert_eq!(
            authorize(&ann, on_room(owner, RoomAction::Moderate), space),
            Ok(())
        );
        assert!(authorize(&ann, on_room(member, RoomAction::Moderate), space).is_err());
    }
}
