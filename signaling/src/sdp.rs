//! The SDP check: every media section a participant sends must fit its grants. Only what the
//! check needs is parsed (media lines, ports and direction attributes); the SDP is relayed as
//! it came.

use crate::wire::Grants;

/// Why an SDP was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpError {
    /// Not an SDP this server relays (no `v=0`, an unknown media kind).
    Invalid(String),
    /// A media section asks for more than the sender's grants allow.
    NotGranted(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(attribute: &str) -> Option<Direction> {
        match attribute {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// One `m=` section: its kind, whether its port is 0, and its own direction if it has one.
struct Section<'a> {
    index: usize,
    media: &'a str,
    disabled: bool,
    direction: Option<Direction>,
}

/// Check `sdp`, sent by a participant holding `grants`, against them. Directions are read from
/// the sender's side: a section it may not send on must be `recvonly` or `inactive`, and so on.
pub fn check_sdp(sdp: &str, grants: &Grants) -> Result<(), SdpError> {
    let mut lines = sdp.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some("v=0") {
        return Err(SdpError::Invalid("an SDP starts with `v=0`".into()));
    }
    let mut session_direction = None;
    let mut sections: Vec<Section> = Vec::new();
    for line in lines {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields = media.split(' ');
            let kind = fields.next().unwrap_or_default();
            let port = fields.next().unwrap_or_default();
            let port = port.split('/').next().unwrap_or_default();
            if !matches!(kind, "audio" | "video" | "application") {
                return Err(SdpError::Invalid(format!(
                    "media section {} is `{kind}`: only audio, video and application are relayed",
                    sections.len()
                )));
            }
            sections.push(Section {
                index: sections.len(),
                media: kind,
                disabled: port == "0",
                direction: None,
            });
        } else if let Some(direction) = line.strip_prefix("a=").and_then(Direction::parse) {
            match sections.last_mut() {
                Some(section) => section.direction = Some(direction),
                None => session_direction = Some(direction),
            }
        }
    }
    for section in &sections {
        if section.disabled {
            continue;
        }
        let direction = section
            .direction
            .or(session_direction)
            .unwrap_or(Direction::SendRecv);
        let refuse = |why: &str| {
            Err(SdpError::NotGranted(format!(
                "media section {} ({} {}): {why}",
                section.index,
                section.media,
                direction.as_str()
            )))
        };
        match section.media {
            "application" if !grants.data => {
                return refuse("a data channel needs the data grant");
            }
            "application" => {}
            _ if direction.sends() && !grants.publish => {
                return refuse("sending media needs the publish grant (use recvonly)");
            }
            _ if direction.receives() && !grants.subscribe => {
                return refuse("receiving media needs the subscribe grant (use sendonly)");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(publish: bool, subscribe: bool, data: bool) -> Grants {
        Grants {
            publish,
            subscribe,
            data,
            admin: false,
        }
    }

    /// A browser-like SDP with an audio and a video section of the given directions (`None`:
    /// no direction attribute), and a data section if asked.
    fn sdp(audio: Option<&str>, video: Option<&str>, data: bool) -> String {
        let mut s = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        s += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n";
        if let Some(d) = audio {
            s += &format!("a={d}\r\n");
        }
        s += "a=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        if let Some(d) = video {
            s += &format!("a={d}\r\n");
        }
        if data {
            s += "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        }
        s
    }

    #[test]
    fn everything_fits_full_grants() {
        let all = grants(true, true, true);
        for d in ["sendrecv", "sendonly", "recvonly", "inactive"] {
            assert_eq!(check_sdp(&sdp(Some(d), Some(d), true), &all), Ok(()));
        }
        assert_eq!(check_sdp(&sdp(None, None, true), &all), Ok(()));
    }

    #[test]
    fn without_publish_only_receiving() {
        let viewer = grants(false, true, false);
        assert_eq!(
            check_sdp(&sdp(Some("recvonly"), Some("inactive"), false), &viewer),
            Ok(())
        );
        for d in ["sendrecv", "sendonly"] {
            let e = check_sdp(&sdp(Some("recvonly"), Some(d), false), &viewer).unwrap_err();
            assert!(
                matches!(&e, SdpError::NotGranted(m) if m.contains("section 1 (video")),
                "{e:?}"
            );
        }
        // No direction attribute means sendrecv.
        assert!(check_sdp(&sdp(None, Some("recvonly"), false), &viewer).is_err());
    }

    #[test]
    fn without_subscribe_only_sending() {
        let speaker = grants(true, false, true);
        assert_eq!(
            check_sdp(&sdp(Some("sendonly"), Some("inactive"), true), &speaker),
            Ok(())
        );
        for d in ["sendrecv", "recvonly"] {
            assert!(matches!(
                check_sdp(&sdp(Some(d), Some("sendonly"), false), &speaker),
                Err(SdpError::NotGranted(_))
            ));
        }
    }

    #[test]
    fn without_data_no_application_section() {
        let g = grants(true, true, false);
        assert_eq!(check_sdp(&sdp(None, None, false), &g), Ok(()));
        let e = check_sdp(&sdp(None, None, true), &g).unwrap_err();
        assert!(matches!(&e, SdpError::NotGranted(m) if m.contains("application")));
    }

    #[test]
    fn session_level_direction_is_the_default() {
        let viewer = grants(false, true, false);
        let s = sdp(None, None, false).replacen("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n", 1);
        assert_eq!(check_sdp(&s, &viewer), Ok(()));
        // A section's own attribute overrides it.
        let s =
            sdp(None, Some("sendrecv"), false).replacen("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n", 1);
        assert!(check_sdp(&s, &viewer).is_err());
    }

    #[test]
    fn rejected_sections_are_not_checked() {
        let viewer = grants(false, true, false);
        let s = sdp(Some("recvonly"), Some("sendrecv"), true)
            .replace("m=video 9 ", "m=video 0 ")
            .replace("m=application 9 ", "m=application 0 ");
        assert_eq!(check_sdp(&s, &viewer), Ok(()));
    }

    #[test]
    fn invalid_sdp() {
        let all = grants(true, true, true);
        assert!(matches!(
            check_sdp("hello", &all),
            Err(SdpError::Invalid(_))
        ));
        let s = sdp(None, None, false) + "m=text 9 RTP/AVP 98\r\n";
        assert!(matches!(check_sdp(&s, &all), Err(SdpError::Invalid(_))));
        // LF-only line ends are read too.
        let lf = sdp(Some("sendonly"), Some("sendonly"), false).replace("\r\n", "\n");
        assert!(check_sdp(&lf, &grants(false, true, false)).is_err());
        assert_eq!(check_sdp(&lf, &grants(true, false, false)), Ok(()));
    }
}
