//! Simulcast: a publisher sends a video track in up to three layers ([`LAYERS`], lowest
//! first) and each subscriber gets one of them, the smallest that covers the size it reports
//! for the track's video element ([`Room::set_layout`]), as far as the bandwidth the server
//! estimates towards it allows (see `bandwidth`). A subscriber moves to another layer only at a keyframe of
//! that layer (one is requested when it is picked), and its media times are shifted so it
//! sees one continuous stream. Layers that no subscriber needs, except the lowest (kept so a
//! new subscriber starts at once and a congested one has a fallback), are paused: the room
//! tells the publisher through [`Room::poll_layers`].

use super::*;
use str0m::media::{MediaTime, Rid, Simulcast, SimulcastLayer};

/// The rids of a video track's layers, lowest first, as the room's offers ask for them.
pub const LAYERS: [&str; 3] = ["q", "h", "f"];
/// The widths assumed for the layers until a keyframe of each tells its real width.
const NOMINAL_WIDTHS: [u32; 3] = [320, 640, 1280];
/// The largest width or height a subscriber may report, in CSS pixels times the device
/// pixel ratio.
pub const MAX_LAYOUT_PIXELS: u32 = 16_384;
/// How often layer bitrates are measured and every subscriber's layer picked again.
pub const SELECT_INTERVAL: Duration = Duration::from_millis(300);
/// The media time step put between the last frame of a layer and the first of the next one.
const SWITCH_STEP_90KHZ: u64 = 3_000;

/// The simulcast offer for a publisher's video line: receive every layer.
pub(super) fn recv_layers() -> Simulcast {
    let mut simulcast = Simulcast::new();
    for rid in LAYERS {
        simulcast.add_recv_layer(SimulcastLayer::new(rid));
    }
    simulcast
}

/// The layer a frame belongs to: its rid's place in [`LAYERS`], 0 without a rid (a publisher
/// that does not simulcast has one layer).
pub(super) fn layer_of(rid: Option<Rid>) -> Option<usize> {
    match rid {
        None => Some(0),
        Some(rid) => LAYERS.iter().position(|l| Rid::from(*l) == rid),
    }
}

/// What the room knows of one layer of a published track.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Layer {
    /// A frame of it came.
    seen: bool,
    /// Its width, from its last VP8 keyframe.
    width: Option<u32>,
    /// Payload bytes received since the last measurement.
    bytes: u64,
    /// Its bitrate at the last measurement, in bits per second.
    bitrate: u64,
}

/// The forwarding of one track to one subscriber.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forward {
    /// The layer written to the subscriber now; none until a keyframe of `target` starts it.
    pub(super) current: Option<usize>,
    /// The layer it should get; none: paused (its bandwidth does not allow the lowest).
    pub(super) target: Option<usize>,
    /// Added to the media time of each frame written (in the frame's clock), so a switch
    /// continues the media time of the layer before.
    offset: i64,
    /// The media time of the last frame written.
    last: Option<MediaTime>,
}

impl Forward {
    pub(super) fn new(target: Option<usize>) -> Forward {
        Forward {
            current: None,
            target,
            offset: 0,
            last: None,
        }
    }

    /// It should get `target` from now on (none: nothing, from now). True when that needs a
    /// keyframe (the target is not the layer it gets).
    pub(super) fn retarget(&mut self, target: Option<usize>) -> bool {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
        target.is_some() && self.current != target
    }

    /// A frame could not be written: nothing more until a keyframe of the target.
    pub(super) fn interrupt(&mut self) {
        self.current = None;
    }

    /// Whether a frame of `layer` goes to the subscriber; a keyframe of the target layer
    /// switches to it. Returns the media time to write it with.
    pub(super) fn admit(
        &mut self,
        layer: usize,
        keyframe: bool,
        time: MediaTime,
    ) -> Option<MediaTime> {
        if self.current != Some(layer) {
            if self.target != Some(layer) || !keyframe {
                return None;
            }
            if let Some(last) = self.last {
                let step = MediaTime::new(SWITCH_STEP_90KHZ, str0m::media::Frequency::NINETY_KHZ)
                    .rebase(time.frequency());
                let next = last.rebase(time.frequency()).numer() + step.numer();
                self.offset = next as i64 - time.numer() as i64;
            }
            self.current = Some(layer);
        }
        let numer = (time.numer() as i64).saturating_add(self.offset).max(0) as u64;
        let shifted = MediaTime::new(numer, time.frequency());
        self.last = Some(shifted);
        Some(shifted)
    }
}

/// The state of simulcast of one published video track.
#[derive(Debug, Clone, Default)]
pub(super) struct Layers {
    pub(super) layers: [Layer; 3],
    /// Frames come with rids: the publisher simulcasts (its answer may have declined it, and
    /// a client that does not simulcast sends without).
    rids: bool,
    /// The layers the publisher was last told to send (all of them until told otherwise).
    told: Option<Vec<usize>>,
}

impl Layers {
    /// A frame of `layer` came: count it, and learn the layer's width from a VP8 keyframe
    /// (of a `video` track). True when it is the layer's first frame.
    pub(super) fn record(&mut self, layer: usize, data: &MediaData, video: bool) -> bool {
        self.rids |= data.rid.is_some();
        let l = &mut self.layers[layer];
        let first = !l.seen;
        l.seen = true;
        l.bytes += data.data.len() as u64;
        if video
            && data.is_keyframe()
            && let Some(width) = vp8_keyframe_width(&data.data)
        {
            l.width = Some(width);
        }
        first
    }

    /// The bitrate of every layer together at the last measurement (of a track that does
    /// not simulcast, its bitrate).
    pub(super) fn bitrate(&self) -> u64 {
        self.layers.iter().map(|l| l.bitrate).sum()
    }

    fn width(&self, layer: usize) -> u32 {
        self.layers[layer].width.unwrap_or(NOMINAL_WIDTHS[layer])
    }

    /// The layer a subscriber's element needs: the smallest covering `size` (the highest
    /// without a size). Once layers were seen, one of them: the highest not above that, else
    /// the lowest (a publisher may send fewer layers than asked).
    fn pick(&self, size: Option<(u32, u32)>) -> usize {
        let chosen = self.fit(size);
        let seen = |i: &usize| self.layers[*i].seen;
        ((0..=chosen).rev().find(seen))
            .or_else(|| (chosen..LAYERS.len()).find(seen))
            .unwrap_or(chosen)
    }

    /// What a subscriber showing the track at `size`, forwarded as `forward`, may get: the
    /// layers seen up to the one its element needs (only the lowest when the publisher does
    /// not simulcast), and the bitrates measured.
    /// What the track asks of a subscriber showing it at `size`; `keep` is whether it keeps
    /// its lowest layer whatever the estimate (see [`bandwidth::Demand::keep`]).
    pub(super) fn demand(
        &self,
        size: Option<(u32, u32)>,
        forward: Option<&Forward>,
        keep: bool,
    ) -> bandwidth::Demand {
        let top = if self.rids { self.pick(size) } else { 0 };
        let layers = (0..=top)
            .filter(|&i| i == top || self.layers[i].seen)
            .map(|i| (i, self.layers[i].bitrate))
            .collect();
        bandwidth::Demand {
            layers,
            current: forward.and_then(|f| f.current),
            // A track paused for bandwidth comes back only when the estimate allows.
            keep: keep && forward.is_none_or(|f| f.target.is_some()),
        }
    }

    fn fit(&self, size: Option<(u32, u32)>) -> usize {
        match size {
            None => LAYERS.len() - 1,
            Some((width, height)) => {
                // Video is mostly 16:9: a tall element needs the width that fills its height.
                let need = width.max(height.saturating_mul(16) / 9);
                (0..LAYERS.len())
                    .find(|&i| self.width(i) >= need)
                    .unwrap_or(LAYERS.len() - 1)
            }
        }
    }

    /// Measure the layers' bitrates over the `elapsed` time since the last measurement.
    fn measure(&mut self, elapsed: Duration) {
        let millis = elapsed.as_millis().max(1) as u64;
        for l in &mut self.layers {
            l.bitrate = l.bytes * 8 * 1000 / millis;
            l.bytes = 0;
        }
    }
}

/// The width in a VP8 keyframe's header (RFC 6386 section 9.1), if `frame` is one.
fn vp8_keyframe_width(frame: &[u8]) -> Option<u32> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff))
}

/// The publisher of `track` should send only the layers `active` (rids, lowest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerChange {
    pub participant: String,
    pub track: String,
    pub active: Vec<String>,
}

impl Room {
    /// `participant` shows `track` in an element of `width` by `height` pixels; 0 for either
    /// means hidden: nothing of the track is forwarded to it until it is shown again.
    pub fn set_layout(
        &mut self,
        participant: &str,
        track: &str,
        width: u32,
        height: u32,
    ) -> Result<(), RoomError> {
        if width > MAX_LAYOUT_PIXELS || height > MAX_LAYOUT_PIXELS {
            return Err(RoomError::Invalid(format!(
                "a layout is at most {MAX_LAYOUT_PIXELS} pixels wide and high"
            )));
        }
        let session = (self.sessions.get_mut(participant))
            .ok_or_else(|| RoomError::NotFound(format!("no session for {participant}")))?;
        if !session.subscriptions.contains(track) {
            return Err(RoomError::NotFound(format!(
                "{participant} does not receive {track}"
            )));
        }
        if self
            .tracks
            .get(track)
            .is_some_and(|t| t.kind != TrackKind::Video)
        {
            return Err(RoomError::Invalid(format!("{track} is not a video track")));
        }
        let was_hidden = session.is_hidden(track);
        session.layouts.insert(track.to_string(), (width, height));
        let shown = was_hidden && !session.is_hidden(track);
        if shown && let Some(t) = self.tracks.get_mut(track) {
            // Shown again: it starts over at a keyframe, asked for now.
            t.forwards.remove(participant);
        }
        self.select(track);
        if shown {
            self.request_keyframe(track);
        }
        Ok(())
    }

    /// The publisher of video track `track` sends it in simulcast layers: the line it sends
    /// on asks for them (from the next offer that adds the line: call it before the offers
    /// are polled after publishing).
    pub fn simulcast(&mut self, track: &str) -> Result<(), RoomError> {
        let t = (self.tracks.get_mut(track))
            .ok_or_else(|| RoomError::NotFound(format!("no track {track}")))?;
        if t.kind != TrackKind::Video {
            return Err(RoomError::Invalid(format!(
                "{track} is not a video track: only video is sent in layers"
            )));
        }
        t.layered = true;
        Ok(())
    }

    /// The next change of the layers a publisher should send.
    pub fn poll_layers(&mut self) -> Option<LayerChange> {
        self.layer_changes.pop_front()
    }

    /// Measure every track's bitrates, and allocate every subscriber's bandwidth again.
    pub(super) fn select_all(&mut self, elapsed: Duration) {
        for t in self.tracks.values_mut() {
            t.simulcast.measure(elapsed);
        }
        let subscribers: Vec<String> = self.sessions.keys().cloned().collect();
        self.reallocate(subscribers, None);
    }

    /// Allocate the bandwidth of every subscriber of `track` again (its layers, or its
    /// subscribers' sizes, changed).
    pub(super) fn select(&mut self, track: &str) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        let subscribers: Vec<String> = t.subscribers.keys().cloned().collect();
        self.reallocate(subscribers, Some(track));
    }

    /// Allocate the bandwidth of `subscribers`; then tell each publisher the layers needed of
    /// its tracks (every video track's, or only those touched and `track`'s), and ask for a
    /// keyframe where a subscriber's target changed.
    fn reallocate(&mut self, subscribers: Vec<String>, track: Option<&str>) {
        // Track, and whether a subscriber waits for a keyframe of a new target.
        let mut touched: BTreeMap<String, bool> = BTreeMap::new();
        for subscriber in subscribers {
            for (track, switch) in self.allocate(&subscriber) {
                *touched.entry(track).or_default() |= switch;
            }
        }
        let tracks: Vec<String> = match track {
            None => (self.tracks.iter())
                .filter(|(_, t)| t.kind == TrackKind::Video)
                .map(|(sid, _)| sid.clone())
                .collect(),
            Some(track) => (touched.keys().cloned())
                .chain(std::iter::once(track.to_string()))
                .collect(),
        };
        for track in tracks {
            self.tell_layers(&track);
            if touched.get(&track) == Some(&true) {
                self.request_keyframe(&track);
            }
        }
    }

    /// Tell the publisher of `track` which layers its subscribers need, if that changed: the
    /// targets and the layers still written (a switch waits for a keyframe), and the lowest.
    fn tell_layers(&mut self, track: &str) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if t.kind != TrackKind::Video || !t.simulcast.rids {
            return;
        }
        let sessions = &self.sessions;
        t.forwards.retain(|sub, _| t.subscribers.contains_key(sub));
        let mut needed = BTreeSet::from([0]);
        for (subscriber, forward) in &t.forwards {
            if sessions.get(subscriber).is_none_or(|s| s.is_hidden(track)) {
                continue;
            }
            needed.extend(forward.target);
            needed.extend(forward.current);
        }
        let needed: Vec<usize> = needed.into_iter().collect();
        if t.simulcast.told.as_ref() == Some(&needed) {
            return;
        }
        t.simulcast.told = Some(needed.clone());
        self.layer_changes.push_back(LayerChange {
            participant: t.owner.clone(),
            track: track.to_string(),
            active: needed.iter().map(|&i| LAYERS[i].to_string()).collect(),
        });
    }

    /// The rids to ask for a keyframe on `track`'s line: the layers seen and being sent, or
    /// none when the publisher does not simulcast.
    pub(super) fn keyframe_rids(&self, track: &str) -> Vec<Option<Rid>> {
        let Some(layers) = self.tracks.get(track).map(|t| &t.simulcast) else {
            return Vec::new();
        };
        if !layers.rids {
            return vec![None];
        }
        (0..LAYERS.len())
            .filter(|i| layers.layers[*i].seen)
            .filter(|i| layers.told.as_ref().is_none_or(|told| told.contains(i)))
            .map(|i| Some(Rid::from(LAYERS[i])))
            .collect()
    }
}

impl Session {
    /// Whether the participant hides `track` (reported a zero size for its element).
    pub(super) fn is_hidden(&self, track: &str) -> bool {
        (self.layouts.get(track)).is_some_and(|&(w, h)| w == 0 || h == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_picked_by_size() {
        let mut layers = Layers::default();
        assert_eq!(layers.pick(None), 2);
        assert_eq!(layers.pick(Some((160, 90))), 0);
        assert_eq!(layers.pick(Some((400, 225))), 1);
        assert_eq!(layers.pick(Some((4000, 2250))), 2);
        // A tall element needs the width its height fills.
        assert_eq!(layers.pick(Some((100, 300))), 1);
        // A keyframe tells a layer's real width.
        layers.layers[0].width = Some(480);
        assert_eq!(layers.pick(Some((400, 225))), 0);
        // Once layers are seen, only those: the nearest below, else the lowest above.
        layers.layers[1].seen = true;
        assert_eq!(layers.pick(None), 1);
        assert_eq!(layers.pick(Some((100, 50))), 1);
        layers.layers[2].seen = true;
        assert_eq!(layers.pick(None), 2);
    }

    #[test]
    fn a_demand_lists_the_layers_seen_up_to_the_one_needed() {
        let mut layers = Layers::default();
        // Without simulcast, one layer.
        assert_eq!(layers.demand(None, None, true).layers, [(0, 0)]);
        layers.rids = true;
        for (i, bitrate) in [100_000, 400_000, 1_500_000].into_iter().enumerate() {
            layers.layers[i].bitrate = bitrate;
        }
        layers.layers[0].seen = true;
        layers.layers[2].seen = true;
        let mut forward = Forward::new(Some(0));
        forward.current = Some(0);
        let demand = layers.demand(None, Some(&forward), true);
        assert_eq!(demand.layers, [(0, 100_000), (2, 1_500_000)]);
        assert_eq!(demand.current, Some(0));
        assert!(demand.keep);
        let new = layers.demand(Some((320, 180)), None, true);
        assert_eq!((new.layers, new.keep), (vec![(0, 100_000)], true));
        // Paused for bandwidth, or on a lossy link: the estimate decides alone.
        assert!(!layers.demand(None, Some(&Forward::new(None)), true).keep);
        assert!(!layers.demand(None, Some(&forward), false).keep);
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_and_keeps_media_time_going() {
        let t = |n: u64| MediaTime::new(n, str0m::media::Frequency::NINETY_KHZ);
        let mut f = Forward::new(Some(0));
        assert_eq!(f.admit(0, false, t(1000)), None);
        assert_eq!(f.admit(1, true, t(1000)), None);
        assert_eq!(f.admit(0, true, t(1000)), Some(t(1000)));
        assert_eq!(f.admit(0, false, t(4000)), Some(t(4000)));
        assert!(f.retarget(Some(1)));
        // The old layer goes on until the new one has a keyframe.
        assert_eq!(f.admit(1, false, t(50_000)), None);
        assert_eq!(f.admit(0, false, t(7000)), Some(t(7000)));
        assert_eq!(f.admit(1, true, t(56_000)), Some(t(10_000)));
        assert_eq!(f.admit(0, false, t(10_000)), None);
        assert_eq!(f.admit(1, false, t(59_000)), Some(t(13_000)));
        // Paused: nothing, keyframes included; resumed: from a keyframe, time going on.
        assert!(!f.retarget(None));
        assert_eq!(f.admit(1, true, t(62_000)), None);
        assert!(f.retarget(Some(1)));
        assert_eq!(f.admit(1, false, t(65_000)), None);
        assert_eq!(f.admit(1, true, t(90_000)), Some(t(16_000)));
    }

    #[test]
    fn vp8_keyframes_tell_their_width() {
        let key = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        assert_eq!(vp8_keyframe_width(&key), Some(640));
        let mut delta = key;
        delta[0] |= 1;
        assert_eq!(vp8_keyframe_width(&delta), None);
        assert_eq!(vp8_keyframe_width(&key[..8]), None);
    }
}
