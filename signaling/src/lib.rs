//! The sans-IO core of Chorus meetings: signalling between participants (join, tracks,
//! offer/answer, trickle ICE, mute, leave) and the SFU room that forwards their media. It never
//! touches sockets, clocks or runtimes: the server feeds it events with the current time and
//! carries out what it returns.
//!
//! * [`Meeting`] is one meeting's state machine: participants with their grants, tracks and
//!   versions, the relay of signals and data, reconnecting participants and their grace
//!   period. Requests are method calls with `now` passed in; frames come out of
//!   [`Meeting::poll_output`], the next deadline out of [`Meeting::poll_timeout`].
//! * [`sfu::Room`] is the media of a meeting in SFU mode: a `str0m` session per participant,
//!   published tracks forwarded to subscribers without decoding, the server offering every
//!   change. A meeting made [`Meeting::with_sfu`] drives it from its requests; a mesh
//!   meeting turns into one live with [`Meeting::switch_to_sfu`] (never back).
//! * [`wire`] holds the messages as they travel (requests, frames, participants, tracks).
//! * [`sdp`] checks an SDP's media directions against a participant's grants.
//! * [`turn`] mints time-limited TURN credentials.
//!
//! ```
//! use signaling::{Config, Joiner, Meeting, Output, wire::Grants};
//!
//! let mut meeting = Meeting::new("_acme", "standup", "x1", Config::default());
//! let grants = Grants { publish: true, subscribe: true, data: true, admin: false };
//! let joiner = |user: &str| Joiner {
//!     user: user.into(), org: "acme".into(), name: None, default_name: user.into(), grants,
//! };
//! let now = 1_700_000_000_000;
//! meeting.join(1, joiner("alice"), None, now).unwrap();
//! let bob = meeting.join(2, joiner("bob"), None, now).unwrap();
//! assert_eq!(bob.participants[0].user, "alice");
//! // The shell drains the outputs after every input, and runs timers by `poll_timeout`.
//! while let Some(output) = meeting.poll_output() {
//!     match output {
//!         Output::Send { conn, frame } => { /* encode, queue to `conn` */ }
//!         Output::Broadcast { conns, frame } => { /* encode once, queue to each */ }
//!         Output::Presence { conn, in_meeting } => { /* tell presence */ }
//!         Output::Route { ufrag, open } => { /* SFU mode: route its datagrams here */ }
//!         Output::SwitchToSfu => { /* give it a `sfu::Room` with `switch_to_sfu`, if one runs */ }
//!     }
//! }
//! ```

mod meeting;
pub mod sdp;
pub mod sfu;
pub mod turn;
pub mod wire;

pub use meeting::{
    Config, ConnId, Error, Joiner, MAX_CANDIDATE_BYTES, MAX_NAME_CHARS, MAX_PAYLOAD_BYTES,
    MAX_SDP_BYTES, MAX_TRACKS, Meeting, Millis, Output,
};
/// The WebRTC library the SFU room is built on, for shells and test clients to use the same.
pub use str0m;
pub use wire::{MeetingFrame, MeetingRequest};

#[cfg(test)]
mod tests;
