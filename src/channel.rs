//! Channel names: the hub's unit of fan-out. Each name says which space it belongs to, so the
//! authorizer can decide on it. Grammar: `topic:<space>/<topic>`; later services add their kinds
//! (`room:`, `presence:`, `doc:`, `meeting:`, `user:`).

/// The longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 200;

/// A parsed channel name, borrowing from the string it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRef<'a> {
    /// Free-form pub/sub among the members of a space.
    Topic { space: &'a str, topic: &'a str },
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
            _ => Err(format!("unknown channel kind `{kind}`")),
        }
    }

    /// The space whose members may use this channel.
    pub fn space(&self) -> &'a str {
        match self {
            ChannelRef::Topic { space, .. } => space,
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
        assert_eq!(ChannelRef::parse("topic:s/x").unwrap().space(), "s");
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
}
