//! Channel names: the hub's unit of fan-out. Each name says which space (or, for a personal
//! channel, which user) it belongs to, so the authorizer can decide on it. Grammar:
//! `topic:<space>/<topic>`, `room:<space>/<room>`, `user:<org>/<user>`; later services add their
//! kinds (`presence:`, `doc:`, `meeting:`).

/// The longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 200;

/// A parsed channel name, borrowing from the string it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRef<'a> {
    /// Free-form pub/sub among the members of a space.
    Topic { space: &'a str, topic: &'a str },
    /// A chat room's stream. The space is part of the name, so deciding access needs no lookup
    /// to find the room's space (room ids are unique within their space only).
    Room { space: &'a str, room: &'a str },
    /// A user's personal events (mentions, read state), for their own devices only. The
    /// organisation is part of the name: a user id means a user only within it.
    User { org: &'a str, user: &'a str },
}

impl<'a> ChannelRef<'a> {
    pub fn parse(name: &'a str) -> Result<ChannelRef<'a>, String> {
        if name.len() > MAX_CHANNEL_LEN {
            return Err(format!("channel names are at most {MAX_CHANNEL_LEN} bytes"));
        }
        let (kind, rest) = name
            .split_once(':')
            .ok_or_else(|| format!("`{name}` is not of the form `kind:...`"))?;
        match kind {
            "topic" => {
                let (space, topic) = rest
                    .split_once('/')
                    .ok_or_else(|| "a topic channel is `topic:<space>/<topic>`".to_string())?;
                if !is_id(space) {
                    return Err(format!("`{space}` is not a valid space id"));
                }
                if topic.is_empty() || !topic.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("a topic is one or more printable ASCII characters".into());
                }
                Ok(ChannelRef::Topic { space, topic })
            }
            "room" => {
                let (space, room) = rest
                    .split_once('/')
                    .ok_or_else(|| "a room channel is `room:<space>/<room>`".to_string())?;
                if !is_id(space) || !is_id(room) {
                    return Err(format!(
                        "`{rest}` is not a valid `<space>/<room>` pair of ids"
                    ));
                }
                Ok(ChannelRef::Room { space, room })
            }
            "user" => {
                let (org, user) = rest
                    .split_once('/')
                    .ok_or_else(|| "a user channel is `user:<org>/<user>`".to_string())?;
                if !is_id(org) || user.is_empty() {
                    return Err(format!("`{rest}` is not a valid `<org>/<user>` pair"));
                }
                Ok(ChannelRef::User { org, user })
            }
            _ => Err(format!("unknown channel kind `{kind}`")),
        }
    }

    /// The space whose members may use this channel; `None` for personal channels.
    pub fn space(&self) -> Option<&'a str> {
        match self {
            ChannelRef::Topic { space, .. } | ChannelRef::Room { space, .. } => Some(space),
            ChannelRef::User { .. } => None,
        }
    }
}

/// Ids of spaces (and later rooms and documents): 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topics() {
        assert_eq!(
            ChannelRef::parse("topic:acme-eng/deploys/prod"),
            Ok(ChannelRef::Topic {
                space: "acme-eng",
                topic: "deploys/prod"
            })
        );
        assert_eq!(ChannelRef::parse("topic:s/x").unwrap().space(), Some("s"));
        for bad in [
            "topic:",
            "topic:s",
            "topic:s/",
            "topic:/x",
            "topic:s p/x",
            "room",
            "weird:x",
            "topic:s/a b",
        ] {
            assert!(ChannelRef::parse(bad).is_err(), "{bad}");
        }
        assert!(ChannelRef::parse(&format!("topic:s/{}", "x".repeat(300))).is_err());
    }

    #[test]
    fn parses_rooms() {
        assert_eq!(
            ChannelRef::parse("room:acme-eng/general"),
            Ok(ChannelRef::Room {
                space: "acme-eng",
                room: "general"
            })
        );
        assert_eq!(ChannelRef::parse("room:s/r").unwrap().space(), Some("s"));
        for bad in [
            "room:",
            "room:s",
            "room:s/",
            "room:/r",
            "room:s/r/x",
            "room:s/a b",
        ] {
            assert!(ChannelRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_personal_channels() {
        assert_eq!(
            ChannelRef::parse("user:acme/alice@example.com"),
            Ok(ChannelRef::User {
                org: "acme",
                user: "alice@example.com"
            })
        );
        assert_eq!(ChannelRef::parse("user:acme/a/b").unwrap().space(), None);
        for bad in [
            "user:",
            "user:acme",
            "user:acme/",
            "user:/alice",
            "user:a c/x",
        ] {
            assert!(ChannelRef::parse(bad).is_err(), "{bad}");
        }
    }
}
