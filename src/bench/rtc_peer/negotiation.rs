//! The negotiation of a meeting peer, without the peer connection.
//!
//! In a mesh, `Negotiation` is perfect negotiation with one remote participant, as the browser
//! SDK does it (`sdk/js/meeting.js`, `docs/protocol.md` 15.6): it tracks the signalling state
//! the shell's own calls produce and says what to do with each description and candidate. The
//! polite side (the greater `sid`) rolls its offer back on a collision; the impolite side
//! ignores the other's offer. Candidates that come before the remote description wait in a
//! bounded queue.
//!
//! In SFU mode (`docs/protocol.md` 15.7) the server always offers, so there is no glare:
//! `SfuNegotiation` reads each `meeting.offer`'s media list and says which lines carry this
//! participant's own tracks (to send on) and which bring another participant's track.

use rtc::rtp_transceiver::RTCRtpTransceiverDirection as Direction;
use signaling::wire::{Candidate, Grants, MediaLine, SignalKind};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Candidates kept while no remote description is set (as the SDK keeps them).
pub const MAX_QUEUED_CANDIDATES: usize = 256;

/// The signalling state (W3C `RTCSignalingState`, without the provisional answers Chorus
/// peers never send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signaling {
    Stable,
    HaveLocalOffer,
    HaveRemoteOffer,
}

/// What to do with a remote offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDescription {
    /// Drop it: an offer colliding with ours on the impolite side, or an answer to no offer.
    Ignore,
    /// Set it as the remote description, after rolling our offer back if `rollback`; then,
    /// for an offer, answer.
    Apply { rollback: bool },
}

/// What to do with a remote candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCandidate {
    /// Add it now.
    Add(Candidate),
    /// Kept until the remote description is set.
    Queued,
    /// The end of candidates (nothing to add), or the queue is full.
    Dropped,
}

#[derive(Debug, Clone)]
pub struct Negotiation {
    polite: bool,
    state: Signaling,
    /// Whether a remote description was ever set (candidates can be added).
    has_remote: bool,
    /// The last remote offer was ignored: its candidates may fail to apply.
    ignoring_offer: bool,
    /// A change of ours waits for the state to be stable again before it can be offered.
    offer_wanted: bool,
    queued: VecDeque<Candidate>,
    dropped: u64,
}

impl Negotiation {
    /// Negotiation between `own` and `remote` (participant sids).
    pub fn new(own: &str, remote: &str) -> Negotiation {
        Negotiation {
            polite: own > remote,
            state: Signaling::Stable,
            has_remote: false,
            ignoring_offer: false,
            offer_wanted: false,
            queued: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn polite(&self) -> bool {
        self.polite
    }

    pub fn state(&self) -> Signaling {
        self.state
    }

    /// Whether the last remote offer was ignored (failures to add its candidates are expected).
    pub fn ignoring_offer(&self) -> bool {
        self.ignoring_offer
    }

    /// Candidates dropped because the queue was full.
    pub fn dropped_candidates(&self) -> u64 {
        self.dropped
    }

    /// Our side changed (a track added): returns whether to make an offer now; otherwise it is
    /// made once the state is stable again (`take_wanted_offer`).
    pub fn negotiation_needed(&mut self) -> bool {
        if self.state == Signaling::Stable {
            true
        } else {
            self.offer_wanted = true;
            false
        }
    }

    /// Our offer is the local description.
    pub fn local_offer_set(&mut self) {
        self.offer_wanted = false;
        self.state = Signaling::HaveLocalOffer;
    }

    /// A remote offer or answer arrived.
    pub fn description(&mut self, kind: SignalKind) -> OnDescription {
        match kind {
            SignalKind::Offer => {
                let collision = self.state != Signaling::Stable;
                self.ignoring_offer = collision && !self.polite;
                if self.ignoring_offer {
                    return OnDescription::Ignore;
                }
                if collision {
                    // What our rolled-back offer carried still has to be negotiated.
                    self.offer_wanted = true;
                }
                OnDescription::Apply {
                    rollback: collision,
                }
            }
            SignalKind::Answer if self.state == Signaling::HaveLocalOffer => {
                OnDescription::Apply { rollback: false }
            }
            SignalKind::Answer | SignalKind::Candidate => OnDescription::Ignore,
        }
    }

    /// The remote description of `kind` is set; returns the queued candidates to add now.
    pub fn remote_set(&mut self, kind: SignalKind) -> Vec<Candidate> {
        self.has_remote = true;
        self.state = match kind {
            SignalKind::Offer => Signaling::HaveRemoteOffer,
            _ => Signaling::Stable,
        };
        self.queued.drain(..).collect()
    }

    /// Our answer is the local description: the state is stable again.
    pub fn local_answer_set(&mut self) {
        self.state = Signaling::Stable;
    }

    /// Whether a change waits to be offered now that the state is stable; clears the wish.
    pub fn take_wanted_offer(&mut self) -> bool {
        if self.state == Signaling::Stable && self.offer_wanted {
            self.offer_wanted = false;
            true
        } else {
            false
        }
    }

    /// A remote candidate arrived (`None`: the end of candidates).
    pub fn candidate(&mut self, candidate: Option<Candidate>) -> OnCandidate {
        let Some(candidate) = candidate else {
            return OnCandidate::Dropped;
        };
        if self.has_remote {
            return OnCandidate::Add(candidate);
        }
        if self.queued.len() >= MAX_QUEUED_CANDIDATES {
            self.dropped += 1;
            return OnCandidate::Dropped;
        }
        self.queued.push_back(candidate);
        OnCandidate::Queued
    }
}

/// What one `meeting.offer` changes for this participant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferPlan {
    /// Lines of our own published tracks that no local track sends on yet: `(mid, cid)`.
    pub send: Vec<(String, String)>,
    /// Lines of other participants' tracks that the previous offer did not have.
    pub receive: Vec<MediaLine>,
}

/// A participant's side of the negotiation with the server in an SFU meeting: the tracks the
/// server accepted from it, and the media lines of the last offer.
#[derive(Debug, Clone)]
pub struct SfuNegotiation {
    own: String,
    /// Our tracks the server accepted: track sid → cid.
    published: HashMap<String, String>,
    /// The lines of the last offer, by mid.
    lines: BTreeMap<String, MediaLine>,
    /// Mids a local track sends on.
    sending: BTreeSet<String>,
}

impl SfuNegotiation {
    /// The negotiation of participant `own` (its sid).
    pub fn new(own: &str) -> SfuNegotiation {
        SfuNegotiation {
            own: own.to_string(),
            published: HashMap::new(),
            lines: BTreeMap::new(),
            sending: BTreeSet::new(),
        }
    }

    /// The server accepted our track `cid` as `track` (`meeting.publish` answered): a later
    /// offer carries a line to send it on.
    pub fn published(&mut self, track: &str, cid: &str) {
        self.published.insert(track.to_string(), cid.to_string());
    }

    /// A `meeting.offer` with `media`, every line of the session once answered. Lines of our
    /// own tracks come back in `send` until `sending` says a local track took them.
    pub fn offer(&mut self, media: Vec<MediaLine>) -> OfferPlan {
        let lines: BTreeMap<String, MediaLine> =
            media.into_iter().map(|l| (l.mid.clone(), l)).collect();
        let mut plan = OfferPlan::default();
        for (mid, line) in &lines {
            if line.participant == self.own {
                if let Some(cid) = self.published.get(&line.track)
                    && !self.sending.contains(mid)
                {
                    plan.send.push((mid.clone(), cid.clone()));
                }
            } else if self
                .lines
                .get(mid)
                .is_none_or(|old| old.track != line.track)
            {
                plan.receive.push(line.clone());
            }
        }
        // A mid that left the session is free; the server never reuses one for another track,
        // but forgetting it keeps the set bounded by the lines there are.
        self.sending.retain(|mid| lines.contains_key(mid));
        self.lines = lines;
        plan
    }

    /// A local track sends on line `mid` now.
    pub fn sending(&mut self, mid: &str) {
        self.sending.insert(mid.to_string());
    }

    /// The line that brings remote track `track` (its sid), if the last offer has one.
    pub fn remote(&self, track: &str) -> Option<&MediaLine> {
        self.lines
            .values()
            .find(|l| l.track == track && l.participant != self.own)
    }
}

/// The direction a transceiver may have under `grants`, as the SDK's `fitDirections`: it sends
/// only with `publish` and receives only with `subscribe`, so every SDP fits the server's check
/// (`docs/protocol.md` 15.2).
pub fn fit_direction(direction: Direction, grants: &Grants) -> Direction {
    let (send, recv) = match direction {
        Direction::Sendrecv => (true, true),
        Direction::Sendonly => (true, false),
        Direction::Recvonly => (false, true),
        _ => return direction,
    };
    match (send && grants.publish, recv && grants.subscribe) {
        (true, true) => Direction::Sendrecv,
        (true, false) => Direction::Sendonly,
        (false, true) => Direction::Recvonly,
        (false, false) => Direction::Inactive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::wire::TrackKind;

    fn candidate(n: u32) -> Candidate {
        Candidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        }
    }

    #[test]
    fn the_greater_sid_is_polite() {
        assert!(Negotiation::new("p-2", "p-1").polite());
        assert!(!Negotiation::new("p-1", "p-2").polite());
    }

    #[test]
    fn plain_offer_and_answer() {
        let mut offerer = Negotiation::new("p-1", "p-2");
        let mut answerer = Negotiation::new("p-2", "p-1");
        assert!(offerer.negotiation_needed());
        offerer.local_offer_set();
        assert_eq!(
            answerer.description(SignalKind::Offer),
            OnDescription::Apply { rollback: false }
        );
        answerer.remote_set(SignalKind::Offer);
        assert_eq!(answerer.state(), Signaling::HaveRemoteOffer);
        answerer.local_answer_set();
        assert_eq!(
            offerer.description(SignalKind::Answer),
            OnDescription::Apply { rollback: false }
        );
        offerer.remote_set(SignalKind::Answer);
        assert_eq!(
            (offerer.state(), answerer.state()),
            (Signaling::Stable, Signaling::Stable)
        );
        assert!(!offerer.take_wanted_offer() && !answerer.take_wanted_offer());
        // An answer to no offer is dropped.
        assert_eq!(
            offerer.description(SignalKind::Answer),
            OnDescription::Ignore
        );
    }

    #[test]
    fn collision_polite_rolls_back_impolite_ignores() {
        let mut impolite = Negotiation::new("p-1", "p-2");
        let mut polite = Negotiation::new("p-2", "p-1");
        assert!(impolite.negotiation_needed() && polite.negotiation_needed());
        impolite.local_offer_set();
        polite.local_offer_set();
        // Each gets the other's offer.
        assert_eq!(
            impolite.description(SignalKind::Offer),
            OnDescription::Ignore
        );
        assert!(impolite.ignoring_offer());
        assert_eq!(
            polite.description(SignalKind::Offer),
            OnDescription::Apply { rollback: true }
        );
        polite.remote_set(SignalKind::Offer);
        polite.local_answer_set();
        impolite.remote_set(SignalKind::Answer);
        assert!(!impolite.take_wanted_offer());
        // The polite side's own changes go in a new offer, which the impolite side takes.
        assert!(polite.take_wanted_offer());
        polite.local_offer_set();
        assert_eq!(
            impolite.description(SignalKind::Offer),
            OnDescription::Apply { rollback: false }
        );
        assert!(!impolite.ignoring_offer());
    }

    #[test]
    fn a_change_during_an_exchange_waits_for_stable() {
        let mut n = Negotiation::new("p-1", "p-2");
        n.description(SignalKind::Offer);
        n.remote_set(SignalKind::Offer);
        assert!(!n.negotiation_needed());
        assert!(!n.take_wanted_offer());
        n.local_answer_set();
        assert!(n.take_wanted_offer());
        assert!(!n.take_wanted_offer());
    }

    #[test]
    fn candidates_wait_for_the_remote_description() {
        let mut n = Negotiation::new("p-1", "p-2");
        assert_eq!(n.candidate(Some(candidate(1))), OnCandidate::Queued);
        assert_eq!(n.candidate(None), OnCandidate::Dropped);
        assert_eq!(n.candidate(Some(candidate(2))), OnCandidate::Queued);
        n.description(SignalKind::Offer);
        assert_eq!(
            n.remote_set(SignalKind::Offer),
            vec![candidate(1), candidate(2)]
        );
        assert_eq!(
            n.candidate(Some(candidate(3))),
            OnCandidate::Add(candidate(3))
        );
    }

    #[test]
    fn the_candidate_queue_is_bounded() {
        let mut n = Negotiation::new("p-1", "p-2");
        for i in 0..MAX_QUEUED_CANDIDATES as u32 {
            assert_eq!(n.candidate(Some(candidate(i))), OnCandidate::Queued);
        }
        assert_eq!(n.candidate(Some(candidate(999))), OnCandidate::Dropped);
        assert_eq!(n.dropped_candidates(), 1);
        assert_eq!(
            n.remote_set(SignalKind::Answer).len(),
            MAX_QUEUED_CANDIDATES
        );
    }

    fn line(mid: &str, track: &str, participant: &str, kind: TrackKind) -> MediaLine {
        MediaLine {
            mid: mid.into(),
            track: track.into(),
            participant: participant.into(),
            kind,
        }
    }

    #[test]
    fn sfu_offers_say_where_to_send_and_what_comes() {
        let mut n = SfuNegotiation::new("p-me");
        // The first offer: only the data channel, nothing to send or receive.
        assert_eq!(n.offer(Vec::new()), OfferPlan::default());
        // Our publish is answered while another participant's track is offered.
        n.published("t-1", "cam");
        n.published("t-2", "mic");
        let theirs = line("0", "t-9", "p-other", TrackKind::Video);
        let plan = n.offer(vec![
            theirs.clone(),
            line("1", "t-1", "p-me", TrackKind::Video),
            line("2", "t-2", "p-me", TrackKind::Audio),
        ]);
        assert_eq!(plan.receive, vec![theirs.clone()]);
        assert_eq!(
            plan.send,
            vec![("1".into(), "cam".into()), ("2".into(), "mic".into())]
        );
        assert_eq!(n.remote("t-9"), Some(&theirs));
        // Our own tracks are never remote.
        assert_eq!(n.remote("t-1"), None);
        // A line no local track took yet is offered again; one taken is not.
        n.sending("1");
        let plan = n.offer(vec![
            theirs.clone(),
            line("1", "t-1", "p-me", TrackKind::Video),
            line("2", "t-2", "p-me", TrackKind::Audio),
            line("3", "t-8", "p-third", TrackKind::Audio),
        ]);
        assert_eq!(plan.send, vec![("2".into(), "mic".into())]);
        assert_eq!(
            plan.receive,
            vec![line("3", "t-8", "p-third", TrackKind::Audio)]
        );
    }

    #[test]
    fn sfu_lines_of_unknown_own_tracks_and_gone_lines() {
        let mut n = SfuNegotiation::new("p-me");
        // A line of ours for a track we did not see accepted is left alone.
        let plan = n.offer(vec![line("0", "t-1", "p-me", TrackKind::Audio)]);
        assert!(plan.send.is_empty() && plan.receive.is_empty());
        n.published("t-1", "mic");
        n.sending("0");
        // The track's line leaves the session: the mid is forgotten, and a track of another
        // participant on a new mid is new.
        let plan = n.offer(vec![line("1", "t-5", "p-other", TrackKind::Audio)]);
        assert_eq!(plan.receive.len(), 1);
        assert!(n.remote("t-1").is_none());
        let plan = n.offer(vec![
            line("1", "t-5", "p-other", TrackKind::Audio),
            line("0", "t-1", "p-me", TrackKind::Audio),
        ]);
        assert_eq!(plan.send, vec![("0".into(), "mic".into())]);
        assert!(plan.receive.is_empty());
    }

    #[test]
    fn directions_fit_the_grants() {
        let g = |publish, subscribe| Grants {
            publish,
            subscribe,
            data: publish,
            admin: false,
        };
        use Direction::*;
        assert_eq!(fit_direction(Sendrecv, &g(true, true)), Sendrecv);
        assert_eq!(fit_direction(Sendrecv, &g(true, false)), Sendonly);
        assert_eq!(fit_direction(Sendrecv, &g(false, true)), Recvonly);
        assert_eq!(fit_direction(Recvonly, &g(true, false)), Inactive);
        assert_eq!(fit_direction(Sendonly, &g(false, true)), Inactive);
        assert_eq!(fit_direction(Inactive, &g(true, true)), Inactive);
        assert_eq!(fit_direction(Recvonly, &g(true, true)), Recvonly);
    }
}
