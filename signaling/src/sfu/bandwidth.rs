//! Fitting what each subscriber receives to the bandwidth estimated towards it (with
//! [`RoomConfig::bandwidth_estimation`]).
//!
//! Every [`SELECT_INTERVAL`] the room allocates each subscriber's estimate: audio first, then
//! video in rounds, so every shown track gets its lowest layer before any gets a higher one,
//! and within a round the active speakers, then the larger elements, go first. A track whose
//! lowest layer does not fit is paused (the subscriber is told through
//! [`Room::poll_paused`]) and resumes, at a keyframe, once the estimate allows. Moving up a
//! layer, or resuming, needs headroom, so a bitrate near the estimate does not make it flap.
//!
//! What the allocation leaves out is not written to the subscriber's session; and a
//! [`Budget`] per session bounds what waits in it to a short burst at the estimate, so the
//! session's pacer (which sends at about the estimate) never builds a backlog: the session is
//! fed what it sends, plus that burst.
//!
//! The estimate alone never pauses a video that flows: delay-based estimates fall when a
//! subscriber's machine is busy and reports arrival times late, with nothing lost on the way.
//! Until a subscriber's link loses packets ([`PAUSE_LOSS`] of them within [`LOSS_MEMORY`]),
//! every video it receives keeps at least its lowest layer, and an estimate below what those
//! layers take is raised to it (the session's pacer sends at about its estimate). Once the
//! link loses packets, the estimate decides alone, and pauses what does not fit.
//!
//! The estimate only grows while there is something to discover: each session probes for
//! what its subscriber would receive without a limit (the layers its elements need, at the
//! publishers' measured bitrates, with headroom for the next layer up), capped by
//! [`RoomConfig::max_bitrate`], and pads up to the next step of the allocation.

use super::*;
use std::cmp::Reverse;

/// A subscriber moves up a layer, or resumes a paused track, only when its bandwidth left
/// exceeds the layer's bitrate by this factor (in quarters).
pub(super) const UPGRADE_MARGIN_QUARTERS: u64 = 5;
/// The part of the estimate (in percent) allocated to media: the rest covers packet headers,
/// retransmissions and the measurement's lag.
const USABLE_PERCENT: u64 = 95;
/// How much media may wait in a session to be sent, in time at its estimate.
const BURST: Duration = Duration::from_millis(250);
/// The least burst, so a frame of a low layer always fits a low estimate.
const MIN_BURST_BYTES: u64 = 16_000;
/// The share of packets lost towards a subscriber (over str0m's last second) that shows its
/// link congested: from then on, for [`LOSS_MEMORY`], its estimate may pause videos.
pub(super) const PAUSE_LOSS: f32 = 0.05;
/// How long a subscriber's link counts as lossy after losing [`PAUSE_LOSS`] of its packets.
pub(super) const LOSS_MEMORY: Duration = Duration::from_secs(10);
/// The least time between two raises of a session's estimate to what its videos keep.
const RAISE_INTERVAL: Duration = Duration::from_secs(1);
/// A session's probing target is changed only when it moves by more than this (in percent),
/// so measurement noise does not reconfigure the estimator every interval.
const RETARGET_PERCENT: u64 = 10;

/// What one video track may send to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Demand {
    /// The layers it may get (indices into [`LAYERS`], lowest first, up to the one its
    /// element needs) and their bitrates in bits per second.
    pub(super) layers: Vec<(usize, u64)>,
    /// The layer it gets now (none: paused, or not started).
    pub(super) current: Option<usize>,
    /// It keeps its lowest layer whatever the budget: the subscriber's link lost nothing of
    /// late, and the track was not paused for bandwidth before.
    pub(super) keep: bool,
}

impl Demand {
    /// The bitrate of the highest layer it may get: what it takes without a limit.
    fn full(&self) -> u64 {
        self.layers.last().map_or(0, |&(_, bitrate)| bitrate)
    }
}

/// Allocate `budget` bits per second (none: no limit) among `demands`, in priority order:
/// the layer (index into [`LAYERS`]) each gets, none for paused. The tracks that `keep` their
/// lowest layer get it first, even beyond the budget.
pub(super) fn allocate(demands: &[Demand], budget: Option<u64>) -> Vec<Option<usize>> {
    let Some(mut left) = budget else {
        return (demands.iter())
            .map(|d| d.layers.last().map(|&(layer, _)| layer))
            .collect();
    };
    // The place in its `layers` each got.
    let mut got: Vec<Option<usize>> = (demands.iter())
        .map(|d| {
            let lowest = d.layers.first().filter(|_| d.keep)?;
            left = left.saturating_sub(lowest.1);
            Some(0)
        })
        .collect();
    for round in 0..LAYERS.len() {
        for (d, got) in demands.iter().zip(got.iter_mut()) {
            let next = got.map_or(0, |g| g + 1);
            if next != round {
                continue;
            }
            let Some(&(layer, bitrate)) = d.layers.get(next) else {
                continue;
            };
            let before = got.map_or(0, |g| d.layers[g].1);
            let cost = bitrate.saturating_sub(before);
            let needed = match d.current.is_none_or(|c| layer > c) {
                true => (bitrate * UPGRADE_MARGIN_QUARTERS / 4).saturating_sub(before),
                false => cost,
            };
            if needed <= left {
                left -= cost;
                *got = Some(next);
            }
        }
    }
    (demands.iter().zip(got))
        .map(|(d, g)| g.map(|g| d.layers[g].0))
        .collect()
}

/// What a session's estimator should look for: `(minimum, desired)` in bits per second. The
/// desired rate is what the subscriber would take without a limit (`audio` plus the highest
/// layer of each of `demands`) with headroom for moving up; the minimum, sustained with padding
/// while media sends less, is what the next step of `allocated` would need, or nothing when
/// every track has all it may get.
pub(super) fn probe_target(
    demands: &[Demand],
    allocated: &[Option<usize>],
    audio: u64,
    max: u64,
) -> (u64, u64) {
    let full: u64 = audio + demands.iter().map(Demand::full).sum::<u64>();
    let desired = (full * UPGRADE_MARGIN_QUARTERS / 4).min(max);
    let now = audio + allocated_bitrate(demands, allocated);
    // The cheapest step up of any track.
    let step = (demands.iter().zip(allocated))
        .filter_map(|(d, a)| {
            let at = a.and_then(|a| d.layers.iter().position(|(l, _)| *l == a));
            let next = at.map_or(0, |i| i + 1);
            let before = at.map_or(0, |i| d.layers[i].1);
            (d.layers.get(next))
                .map(|&(_, b)| (b * UPGRADE_MARGIN_QUARTERS / 4).saturating_sub(before))
        })
        .min();
    let minimum = step
        .map_or(0, |s| (now + s) * 100 / USABLE_PERCENT)
        .min(desired);
    (minimum, desired)
}

/// The bitrate of the layers `allocated` to `demands`.
fn allocated_bitrate(demands: &[Demand], allocated: &[Option<usize>]) -> u64 {
    (demands.iter().zip(allocated))
        .filter_map(|(d, a)| a.and_then(|a| d.layers.iter().find(|(l, _)| *l == a)))
        .map(|&(_, bitrate)| bitrate)
        .sum()
}

/// Whether the estimator's target moved enough from `asked` to `target` to be changed.
fn retarget(asked: (u64, u64), target: (u64, u64)) -> bool {
    let far = |a: u64, b: u64| a.abs_diff(b) * 100 > a.max(1) * RETARGET_PERCENT;
    far(asked.0, target.0) || far(asked.1, target.1)
}

/// Bounds what waits in one session to be sent: the media payload written to it and not yet
/// sent (str0m paces a session at about its estimate and queues the rest). Video is written
/// only while that backlog is within a burst at the estimate, so what the session is fed
/// keeps to what it sends plus the burst, however the estimate event lags the pacer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Budget {
    /// Payload bytes written and not yet seen sent.
    queued: u64,
}

impl Budget {
    /// Whether a video frame may be written with the session's estimate `rate` (bits per
    /// second): the backlog is within the burst (so one frame larger than the burst still
    /// passes when nothing waits).
    pub(super) fn admits(&self, rate: u64) -> bool {
        let burst = ((rate / 8) as u128 * BURST.as_millis() / 1000) as u64;
        self.queued < burst.max(MIN_BURST_BYTES)
    }

    /// `bytes` of payload were written to the session.
    pub(super) fn written(&mut self, bytes: usize) {
        self.queued += bytes as u64;
    }

    /// An RTP datagram of `bytes` left the session. Counting its headers as payload (and
    /// padding and retransmissions as sent media) errs towards a smaller backlog, never a
    /// growing one.
    pub(super) fn sent(&mut self, bytes: usize) {
        self.queued = self.queued.saturating_sub(bytes as u64);
    }
}

/// A subscriber's track was paused or resumed for lack of bandwidth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub participant: String,
    pub track: String,
    pub paused: bool,
}

impl Room {
    /// The next change of the tracks paused for a subscriber's bandwidth.
    pub fn poll_paused(&mut self) -> Option<Paused> {
        let ((participant, track), paused) = self.paused.pop_first()?;
        Some(Paused {
            participant,
            track,
            paused,
        })
    }

    /// The bandwidth estimated towards `participant`, in bits per second (none with
    /// estimation off).
    pub fn estimate(&self, participant: &str) -> Option<u64> {
        self.sessions.get(participant).and_then(|s| s.estimate)
    }

    /// Allocate `subscriber`'s estimate among the video tracks it shows: set each one's
    /// target layer (or pause it), and the estimator's probing target. Returns the tracks
    /// whose target changed, with whether the subscriber now waits for a keyframe of it.
    pub(super) fn allocate(&mut self, subscriber: &str) -> Vec<(String, bool)> {
        let Some(session) = self.sessions.get(subscriber) else {
            return Vec::new();
        };
        let speakers = self.speakers.ranked();
        let mut audio = 0;
        let lossy = session.lossy_until.is_some_and(|until| until > self.now);
        // (priority, track, demand), for the video tracks it shows.
        let mut wants: Vec<(_, &String, Demand)> = Vec::new();
        for (sid, t) in &self.tracks {
            if !t.subscribers.contains_key(subscriber) {
                continue;
            }
            if t.kind == TrackKind::Audio {
                audio += t.simulcast.bitrate();
                continue;
            }
            if session.is_hidden(sid) {
                continue;
            }
            let size = session.layouts.get(sid).copied();
            let demand = t.simulcast.demand(size, t.forwards.get(subscriber), !lossy);
            let speaking = speakers.iter().position(|s| *s == t.owner);
            let area = size.map_or(u64::MAX, |(w, h)| u64::from(w) * u64::from(h));
            wants.push(((speaking.unwrap_or(usize::MAX), Reverse(area)), sid, demand));
        }
        wants.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
        let demands: Vec<Demand> = wants.iter().map(|(_, _, d)| d.clone()).collect();
        let tracks: Vec<String> = wants.into_iter().map(|(_, sid, _)| sid.clone()).collect();
        let budget = (session.estimate).map(|e| (e * USABLE_PERCENT / 100).saturating_sub(audio));
        let allocated = allocate(&demands, budget);
        let target = probe_target(&demands, &allocated, audio, self.config.max_bitrate);
        let session = self.sessions.get_mut(subscriber).expect("checked above");
        // What the kept layers take beyond the estimate: raise the estimate (and so the
        // pacer's rate) to it.
        let needed = (audio + allocated_bitrate(&demands, &allocated)) * 100 / USABLE_PERCENT;
        if let Some(estimate) = session.estimate
            && estimate < needed
            && !lossy
            && session
                .raised
                .is_none_or(|at| self.now >= at + RAISE_INTERVAL)
        {
            session.raised = Some(self.now);
            session.estimate = Some(needed);
            session.rtc.bwe().reset(Bitrate::bps(needed));
        }
        // Until media is measured, it keeps probing for the most it may take.
        let measured = target.1 > 0;
        if measured && session.estimate.is_some() && retarget(session.asked, target) {
            session.asked = target;
            (session.rtc.bwe()).set_bitrate(Bitrate::bps(target.0), Bitrate::bps(target.1));
        }
        let mut changed = Vec::new();
        for (track, layer) in tracks.into_iter().zip(allocated) {
            let Some(t) = self.tracks.get_mut(&track) else {
                continue;
            };
            // A track that starts paused is told as paused.
            let (was_paused, switch) = match t.forwards.get_mut(subscriber) {
                Some(forward) if forward.target == layer => continue,
                Some(forward) => (forward.target.is_none(), forward.retarget(layer)),
                None => {
                    let forward = simulcast::Forward::new(layer);
                    t.forwards.insert(subscriber.to_string(), forward);
                    (false, layer.is_some())
                }
            };
            if was_paused != layer.is_none() {
                let key = (subscriber.to_string(), track.clone());
                // A change back before it was polled cancels out.
                if self.paused.remove(&key).is_none() {
                    self.paused.insert(key, layer.is_none());
                }
            }
            changed.push((track, switch));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(layers: &[(usize, u64)], current: Option<usize>) -> Demand {
        Demand {
            layers: layers.to_vec(),
            current,
            keep: false,
        }
    }

    const THREE: [(usize, u64); 3] = [(0, 100_000), (1, 400_000), (2, 1_500_000)];

    #[test]
    fn every_track_gets_its_lowest_layer_before_any_gets_more() {
        let d = [demand(&THREE, Some(0)), demand(&THREE, Some(0))];
        assert_eq!(allocate(&d, None), [Some(2), Some(2)]);
        assert_eq!(allocate(&d, Some(3_000_000)), [Some(2), Some(1)]);
        assert_eq!(allocate(&d, Some(900_000)), [Some(1), Some(1)]);
        assert_eq!(allocate(&d, Some(600_000)), [Some(1), Some(0)]);
        assert_eq!(allocate(&d, Some(500_000)), [Some(0), Some(0)]);
        assert_eq!(allocate(&d, Some(150_000)), [Some(0), None]);
        // Staying needs no headroom, going up (or resuming) does.
        let d = [demand(&THREE, Some(1))];
        assert_eq!(allocate(&d, Some(400_000)), [Some(1)]);
        let d = [demand(&THREE, Some(0))];
        assert_eq!(allocate(&d, Some(400_000)), [Some(0)]);
        assert_eq!(allocate(&d, Some(500_000)), [Some(1)]);
        let d = [demand(&[(0, 400_000)], None)];
        assert_eq!(allocate(&d, Some(450_000)), [None]);
        assert_eq!(allocate(&d, Some(500_000)), [Some(0)]);
        // A track limited to a lower layer by its element leaves the rest to the others.
        let d = [demand(&THREE[..1], Some(0)), demand(&THREE, Some(2))];
        assert_eq!(allocate(&d, Some(1_600_000)), [Some(0), Some(2)]);
    }

    #[test]
    fn kept_tracks_get_their_lowest_layer_beyond_the_budget() {
        let keep = |current| Demand {
            keep: true,
            ..demand(&THREE, current)
        };
        let d = [keep(Some(1)), keep(Some(0))];
        assert_eq!(allocate(&d, Some(150_000)), [Some(0), Some(0)]);
        assert_eq!(allocate(&d, Some(0)), [Some(0), Some(0)]);
        // What the lowest layers leave goes up as usual.
        assert_eq!(allocate(&d, Some(600_000)), [Some(1), Some(0)]);
        // Not kept: paused.
        let d = [keep(Some(0)), demand(&THREE, Some(0))];
        assert_eq!(allocate(&d, Some(150_000)), [Some(0), None]);
    }

    #[test]
    fn the_estimator_looks_for_what_would_be_received_without_a_limit() {
        let d = [demand(&THREE, Some(0)), demand(&THREE[..2], Some(0))];
        // Unconstrained: 1.5 + 0.4 Mbit/s and audio, with headroom; nothing more to pad for.
        let all = [Some(2), Some(1)];
        assert_eq!(probe_target(&d, &all, 100_000, 10_000_000), (0, 2_500_000));
        assert_eq!(probe_target(&d, &all, 100_000, 2_000_000), (0, 2_000_000));
        // Held to the low layers: pad up to the cheapest next step (the second track's).
        let low = [Some(0), Some(0)];
        let (minimum, desired) = probe_target(&d, &low, 100_000, 10_000_000);
        assert_eq!(desired, 2_500_000);
        assert_eq!(minimum, (300_000 + 400_000) * 100 / USABLE_PERCENT);
        assert!(!retarget((0, 2_500_000), (0, 2_600_000)));
        assert!(retarget((0, 2_500_000), (0, 3_000_000)));
    }

    #[test]
    fn the_budget_holds_video_while_a_burst_waits() {
        let mut budget = Budget::default();
        let rate = 800_000; // 100 kB/s: a burst of 25 kB
        assert!(budget.admits(rate));
        // A frame larger than the burst passes when nothing waits; then nothing more until it
        // is sent.
        budget.written(30_000);
        assert!(!budget.admits(rate));
        budget.sent(6_000);
        assert!(budget.admits(rate));
        budget.written(1_000);
        budget.sent(100_000);
        assert_eq!(budget.queued, 0);
        // A low estimate still lets frames of a low layer through.
        budget.written(15_000);
        assert!(budget.admits(100_000));
        budget.written(1_000);
        assert!(!budget.admits(100_000));
    }
}
