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

/// Everything a session may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    CreateSpace,
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
}

/// Why an action was refused. The message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The space does not exist or the caller may not know it does.
    #[error("no such space")]
    NoSuchSpace,
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
    let space = space.ok_or(Denied::NoSuchSpace)?;
    let org_admin = claims.has(Grant::Admin) && claims.org == space.org;
    // A space is invisible to everyone but its members and its organisation's admins.
    if space.role.is_none() && !org_admin {
        return Err(Denied::NoSuchSpace);
    }
    let manager = org_admin || space.role == Some(Role::Owner);
    match action {
        Action::CreateSpace => unreachable!("handled above"),
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
}
