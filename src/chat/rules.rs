//! The rules of chat that need no IO: what a valid message, room and page look like, and who a
//! message mentions. Pure functions of their inputs (sans-IO); the service applies them.

use crate::channel::is_id;

/// Chat limits; `max_body_bytes` is the `chat_max_body_bytes` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    /// Largest message body, in bytes of UTF-8.
    pub max_body_bytes: usize,
}

impl Default for ChatLimits {
    fn default() -> Self {
        ChatLimits {
            max_body_bytes: 16 * 1024,
        }
    }
}

/// Messages per history page when the request names no limit.
pub const DEFAULT_PAGE: usize = 50;
/// The most messages one history page returns; larger limits are reduced to it.
pub const MAX_PAGE: usize = 200;
/// Events per `chat.sync` page when the request names no limit.
pub const DEFAULT_SYNC: usize = 200;
/// The most events one `chat.sync` page returns; larger limits are reduced to it.
pub const MAX_SYNC: usize = 1000;
/// The most missed events a resuming `subscribe` replays from the store. Further behind, the
/// client pages through `chat.sync` first.
pub const MAX_REPLAY: usize = 1000;
/// The longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 200;
/// The longest user id, in bytes.
pub const MAX_USER_ID: usize = 200;

/// Why a request is invalid; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// A room id chosen by the client: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn check_room_id(id: &str) -> Result<(), Invalid> {
    if is_id(id) {
        Ok(())
    } else {
        Err(invalid(format!(
            "`{id}` is not a valid room id: 1 to 64 of A-Z a-z 0-9 - _ ."
        )))
    }
}

pub fn check_room_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() || name.len() > MAX_ROOM_NAME {
        Err(invalid(format!(
            "a room name is 1 to {MAX_ROOM_NAME} bytes, not only spaces"
        )))
    } else {
        Ok(())
    }
}

pub fn check_user(user: &str) -> Result<(), Invalid> {
    if user.is_empty() || user.len() > MAX_USER_ID {
        Err(invalid(format!("a user id is 1 to {MAX_USER_ID} bytes")))
    } else {
        Ok(())
    }
}

/// The id a client gives a send so that a retry is recognised: 1 to 64 of `A-Z a-z 0-9 - _ .`
/// (a UUID or ULID fits).
pub fn check_client_id(id: &str) -> Result<(), Invalid> {
    if is_id(id) {
        Ok(())
    } else {
        Err(invalid(
            "`client_id` is 1 to 64 of A-Z a-z 0-9 - _ . (e.g. a UUID)",
        ))
    }
}

/// A message body: not blank, at most `max_body_bytes`.
pub fn check_body(body: &str, limits: &ChatLimits) -> Result<(), Invalid> {
    if body.trim().is_empty() {
        return Err(invalid("a message body is not empty or only whitespace"));
    }
    if body.len() > limits.max_body_bytes {
        return Err(invalid(format!(
            "a message body is at most {} bytes, this one has {}",
            limits.max_body_bytes,
            body.len()
        )));
    }
    Ok(())
}

/// The most other users in one direct conversation.
pub const MAX_DIRECT: usize = 8;

/// The other members of a direct conversation (distinct, without the caller): 1 to 8 user ids.
pub fn check_direct(others: &[&str]) -> Result<(), Invalid> {
    if others.is_empty() || others.len() > MAX_DIRECT {
        return Err(invalid(format!(
            "a direct conversation has 1 to {MAX_DIRECT} other users"
        )));
    }
    others.iter().try_for_each(|u| check_user(u))
}

/// The key that names a direct conversation in its space: its members as (org, user), in any
/// order. The same set always gives the same key, and different sets different keys.
pub fn direct_key<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut members: Vec<(&str, &str)> = members.into_iter().collect();
    members.sort_unstable();
    members.dedup();
    serde_json::to_string(&members).expect("strings serialize")
}

/// A direct conversation's name: its members' ids, within the room name limit.
pub fn direct_name<'a>(users: impl IntoIterator<Item = &'a str>) -> String {
    let mut name = users.into_iter().collect::<Vec<_>>().join(", ");
    if name.len() > MAX_ROOM_NAME {
        let mut end = MAX_ROOM_NAME - 3;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name.push_str("...");
    }
    name
}

/// The most words a search looks for.
pub const MAX_SEARCH_TERMS: usize = 16;
/// Search hits per page when the request names no limit, and the most.
pub const DEFAULT_HITS: usize = 20;
pub const MAX_HITS: usize = 100;
/// The most hits a search pages through.
pub const MAX_SKIP: usize = 1000;

/// The words of a search query: split at whitespace, those with a letter or digit, each
/// matched as a whole word. At least one, at most 16, each at most 100 bytes.
pub fn search_terms(query: &str) -> Result<Vec<String>, Invalid> {
    let terms: Vec<String> = query
        .split_whitespace()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .map(str::to_string)
        .collect();
    if terms.is_empty() {
        return Err(invalid("a search needs a word to look for"));
    }
    if terms.len() > MAX_SEARCH_TERMS || terms.iter().any(|t| t.len() > 100) {
        return Err(invalid(format!(
            "a search is at most {MAX_SEARCH_TERMS} words of at most 100 bytes"
        )));
    }
    Ok(terms)
}

/// The longest reaction, in bytes.
pub const MAX_EMOJI: usize = 64;

/// A reaction: an emoji or a short name (`+1`, `tada`), 1 to 64 bytes without whitespace or
/// control characters.
pub fn check_emoji(emoji: &str) -> Result<(), Invalid> {
    if emoji.is_empty()
        || emoji.len() > MAX_EMOJI
        || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(invalid(format!(
            "a reaction is 1 to {MAX_EMOJI} bytes without spaces"
        )))
    } else {
        Ok(())
    }
}

/// The page size to use for a requested `limit`: the default when absent, at most `max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> usize {
    limit.unwrap_or(default).min(max)
}

/// The users a body mentions: every `@name` where `name` is a run of `A-Z a-z 0-9 - _ .` not
/// ending in `.`, and the `@` starts the body or follows a character that cannot be part of a
/// name or an e-mail address. Each user once, in order of first mention.
pub fn mentions(body: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    let mut found: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (i, c) in body.char_indices() {
        let starts = c == '@' && previous.is_none_or(|p| !is_name(p) && p != '@');
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &body[i + 1..];
        let end = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        let name = rest[..end].trim_end_matches('.');
        if !name.is_empty() && name.len() <= MAX_USER_ID && !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let limits = ChatLimits { max_body_bytes: 8 };
        assert!(check_body("hello", &limits).is_ok());
        assert!(check_body("12345678", &limits).is_ok());
        assert!(check_body("123456789", &limits).is_err());
        // Bytes, not characters: four two-byte characters fit, five do not.
        assert!(check_body("éééé", &limits).is_ok());
        assert!(check_body("ééééé", &limits).is_err());
        for blank in ["", " ", "\n\t "] {
            assert!(check_body(blank, &limits).is_err(), "{blank:?}");
        }
    }

    #[test]
    fn ids_and_names() {
        assert!(check_client_id("0b5e4c3a-8d7f-4e8a-9b1c-2d3e4f5a6b7c").is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("a b").is_err());
        assert!(check_client_id(&"x".repeat(65)).is_err());
        assert!(check_room_id("general").is_ok());
        assert!(check_room_id("gen/eral").is_err());
        assert!(check_room_name("General").is_ok());
        assert!(check_room_name("  ").is_err());
        assert!(check_room_name(&"x".repeat(201)).is_err());
        assert!(check_user("bob").is_ok() && check_user("").is_err());
        for good in ["👍", "+1", "tada", "🏳️‍🌈"] {
            assert!(check_emoji(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "x\n", &"x".repeat(65)] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn direct_conversations() {
        assert!(check_direct(&["bob"]).is_ok());
        assert!(check_direct(&[]).is_err());
        assert!(check_direct(&["a"; 9]).is_err());
        let key = direct_key([("acme", "bob"), ("acme", "alice")]);
        assert_eq!(key, direct_key([("acme", "alice"), ("acme", "bob")]));
        assert_ne!(key, direct_key([("acme", "alice"), ("globex", "bob")]));
        // No separator can be forged inside an id.
        assert_ne!(
            direct_key([("acme", "a\",\"b")]),
            direct_key([("acme", "a"), ("acme", "b")])
        );
        assert_eq!(direct_name(["alice", "bob"]), "alice, bob");
        let long = direct_name(["é".repeat(150).as_str(), "x"]);
        assert!(long.len() <= MAX_ROOM_NAME && long.ends_with("..."));
    }

    #[test]
    fn search_queries() {
        assert_eq!(
            search_terms("  deploy  Friday ").unwrap(),
            ["deploy", "Friday"]
        );
        assert_eq!(search_terms("\"why?\" - ok").unwrap(), ["\"why?\"", "ok"]);
        for bad in ["", "   ", "- * ()"] {
            assert!(search_terms(bad).is_err(), "{bad:?}");
        }
        assert!(search_terms(&"w ".repeat(17)).is_err());
        assert!(search_terms(&"w".repeat(101)).is_err());
    }

    #[test]
    fn page_limits() {
        assert_eq!(page_limit(None, DEFAULT_PAGE, MAX_PAGE), DEFAULT_PAGE);
        assert_eq!(page_limit(Some(5), DEFAULT_PAGE, MAX_PAGE), 5);
        assert_eq!(page_limit(Some(0), DEFAULT_PAGE, MAX_PAGE), 0);
        assert_eq!(page_limit(Some(10_000), DEFAULT_PAGE, MAX_PAGE), MAX_PAGE);
    }

    #[test]
    fn finds_mentions() {
        assert_eq!(mentions("@alice hi @bob."), ["alice", "bob"]);
        assert_eq!(mentions("(@carol) and @carol again"), ["carol"]);
        assert_eq!(mentions("mail me at dan@example.com"), Vec::<String>::new());
        assert_eq!(mentions("@@eve @ @. x@y"), Vec::<String>::new());
        assert_eq!(mentions("cc:@a.b-c_d, @é"), ["a.b-c_d"]);
        assert_eq!(mentions("ends with @frank"), ["frank"]);
    }
}
