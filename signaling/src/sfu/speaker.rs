//! Active speaker detection from the audio level each audio packet carries (RFC 6464: the
//! level in -dBov, 0 the loudest, 127 silence). Sans-IO: levels and time come in, the ranked
//! list of speakers goes out when it changed, at most once per interval.
//!
//! A participant's level is the mean loudness of its packets over the last window (packets
//! that stopped coming count as silence once they leave it). It starts speaking when that mean
//! reaches the threshold and stops only when it falls a margin below, so a voice hovering at
//! the threshold does not flap. Levels are reported in steps, and speakers are ranked by
//! level, then by their previous rank: small changes neither reorder nor resend the list.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How a room detects speakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// The time over which a participant's level is averaged.
    pub window: Duration,
    /// How often the list may be sent.
    pub interval: Duration,
    /// The audio level (in -dBov) from which a participant speaks.
    pub threshold_dbov: u8,
    /// How much quieter (in dB) than the threshold a speaker must get to stop speaking.
    pub hysteresis_db: u8,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            window: Duration::from_millis(1_000),
            interval: Duration::from_millis(300),
            threshold_dbov: 50,
            hysteresis_db: 10,
        }
    }
}

/// Levels kept per participant at most (a second of 20 ms packets is 50).
const MAX_SAMPLES: usize = 128;
/// Reported levels are multiples of this, from 0 to 100.
const LEVEL_STEP: u8 = 10;

/// A participant speaking, with its level from 0 (the threshold) to 100 (the loudest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    pub participant: String,
    pub level: u8,
}

#[derive(Debug, Default)]
struct Voice {
    /// Loudness (127 minus the -dBov level) of recent packets, oldest first.
    samples: VecDeque<(Instant, u8)>,
    sum: u32,
    speaking: bool,
}

impl Voice {
    fn expire(&mut self, before: Instant) {
        while let Some(&(at, loudness)) = self.samples.front() {
            if at >= before && self.samples.len() <= MAX_SAMPLES {
                break;
            }
            self.samples.pop_front();
            self.sum -= u32::from(loudness);
        }
    }

    /// Mean loudness of the packets in the window.
    fn mean(&self) -> u8 {
        let n = self.samples.len().max(1) as u32;
        (self.sum / n) as u8
    }
}

/// The detector of one room.
#[derive(Debug)]
pub struct Speakers {
    config: SpeakerConfig,
    voices: BTreeMap<String, Voice>,
    /// The list as last sent.
    sent: Vec<Speaker>,
    next: Option<Instant>,
    ready: Option<Vec<Speaker>>,
}

impl Speakers {
    pub fn new(config: SpeakerConfig) -> Speakers {
        Speakers {
            config,
            voices: BTreeMap::new(),
            sent: Vec::new(),
            next: None,
            ready: None,
        }
    }

    /// `participant` sent an audio packet at `now` with level `dbov` (-dBov, 0 to 127).
    pub fn handle_level(&mut self, participant: &str, dbov: u8, now: Instant) {
        let loudness = 127 - dbov.min(127);
        let voice = match self.voices.get_mut(participant) {
            Some(voice) => voice,
            None => self.voices.entry(participant.to_string()).or_default(),
        };
        voice.samples.push_back((now, loudness));
        voice.sum += u32::from(loudness);
        voice.expire(now.checked_sub(self.config.window).unwrap_or(now));
        if self.next.is_none() {
            self.next = Some(now + self.config.interval);
        }
    }

    /// `participant` left at `now`: it speaks no more.
    pub fn remove(&mut self, participant: &str, now: Instant) {
        if self.voices.remove(participant).is_some() && self.next.is_none() {
            self.next = Some(now);
        }
    }

    /// Time passed: rank the speakers, once per interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_none_or(|next| now < next) {
            return;
        }
        let on = 127 - self.config.threshold_dbov.min(127);
        let off = on.saturating_sub(self.config.hysteresis_db);
        let window_start = now.checked_sub(self.config.window).unwrap_or(now);
        let mut ranked: Vec<(u8, usize, String)> = Vec::new();
        for (participant, voice) in &mut self.voices {
            voice.expire(window_start);
            let mean = voice.mean();
            voice.speaking = if voice.speaking {
                mean >= off
            } else {
                mean >= on
            };
            if voice.speaking {
                let level = level(mean, off);
                let previous = (self.sent.iter())
                    .position(|s| s.participant == *participant)
                    .unwrap_or(usize::MAX);
                ranked.push((level, previous, participant.clone()));
            }
        }
        self.voices.retain(|_, v| !v.samples.is_empty());
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let list: Vec<Speaker> = (ranked.into_iter())
            .map(|(level, _, participant)| Speaker { participant, level })
            .collect();
        if list != self.sent {
            self.sent = list.clone();
            self.ready = Some(list);
        }
        self.next = (!self.voices.is_empty() || !self.sent.is_empty())
            .then_some(now + self.config.interval);
    }

    /// When `handle_timeout` has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The participants speaking now, loudest first (as last listed).
    pub fn ranked(&self) -> Vec<String> {
        self.sent.iter().map(|s| s.participant.clone()).collect()
    }

    /// The ranked speakers, loudest first, when the list changed.
    pub fn poll_speakers(&mut self) -> Option<Vec<Speaker>> {
        self.ready.take()
    }
}

impl super::Room {
    /// The active speakers as last listed, loudest first.
    pub fn speakers(&self) -> &[Speaker] {
        &self.speakers.sent
    }
}

/// Loudness `mean` (at least `floor`, where speaking stops) as a level from 0 to 100 in steps.
fn level(mean: u8, floor: u8) -> u8 {
    let span = u32::from(127 - floor).max(1);
    let scaled = u32::from(mean.saturating_sub(floor)) * 100 / span;
    (scaled as u8 / LEVEL_STEP) * LEVEL_STEP
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Duration = Duration::from_millis(20);

    /// Each participant of `levels` sends packets at its level for `time`, the detector
    /// running all along; returns the lists it produced.
    fn talk(
        s: &mut Speakers,
        now: &mut Instant,
        levels: &[(&str, u8)],
        time: Duration,
    ) -> Vec<Vec<Speaker>> {
        let mut lists = Vec::new();
        let end = *now + time;
        while *now < end {
            *now += PACKET;
            for (p, dbov) in levels {
                s.handle_level(p, *dbov, *now);
            }
            s.handle_timeout(*now);
            lists.extend(s.poll_speakers());
        }
        lists
    }

    fn names(list: &[Speaker]) -> Vec<&str> {
        list.iter().map(|s| s.participant.as_str()).collect()
    }

    #[test]
    fn speakers_are_ranked_by_level_and_sent_when_they_change() {
        let mut s = Speakers::new(SpeakerConfig::default());
        let mut now = Instant::now();
        // Silence and murmur below the threshold: nobody speaks, nothing is sent.
        let lists = talk(
            &mut s,
            &mut now,
            &[("a", 127), ("b", 70)],
            Duration::from_secs(2),
        );
        assert!(lists.is_empty(), "{lists:?}");
        // b speaks up: one list, then nothing while it stays the same.
        let lists = talk(
            &mut s,
            &mut now,
            &[("a", 127), ("b", 20)],
            Duration::from_secs(3),
        );
        assert!(!lists.is_empty());
        assert_eq!(names(lists.last().unwrap()), ["b"]);
        assert!(lists.len() <= 4, "{lists:?}");
        let level = lists.last().unwrap()[0].level;
        assert!(
            (50..=100).contains(&level) && level.is_multiple_of(10),
            "{level}"
        );
        // a speaks louder: it comes first.
        let lists = talk(
            &mut s,
            &mut now,
            &[("a", 5), ("b", 20)],
            Duration::from_secs(2),
        );
        assert_eq!(names(lists.last().unwrap()), ["a", "b"]);
        // Both stop sending: after the window, the list empties.
        let lists = talk(&mut s, &mut now, &[], Duration::from_secs(2));
        assert_eq!(lists.last().unwrap(), &Vec::new());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_voice_at_the_threshold_does_not_flap() {
        let mut s = Speakers::new(SpeakerConfig::default());
        let mut now = Instant::now();
        talk(&mut s, &mut now, &[("a", 40)], Duration::from_secs(2));
        // Hovering around the threshold, within the margin below it: still speaking, and
        // the list is not resent as the level wobbles across it.
        let mut lists = Vec::new();
        for _ in 0..10 {
            lists.extend(talk(
                &mut s,
                &mut now,
                &[("a", 48)],
                Duration::from_millis(500),
            ));
            lists.extend(talk(
                &mut s,
                &mut now,
                &[("a", 56)],
                Duration::from_millis(500),
            ));
        }
        assert!(lists.iter().all(|l| names(l) == ["a"]), "{lists:?}");
        assert!(lists.len() <= 2, "{lists:?}");
        // Well below: it stops.
        let lists = talk(&mut s, &mut now, &[("a", 90)], Duration::from_secs(2));
        assert_eq!(lists.last().unwrap(), &Vec::new());
    }

    #[test]
    fn a_participant_that_leaves_stops_speaking() {
        let mut s = Speakers::new(SpeakerConfig::default());
        let mut now = Instant::now();
        let lists = talk(&mut s, &mut now, &[("a", 10)], Duration::from_secs(1));
        assert_eq!(names(lists.last().unwrap()), ["a"]);
        s.remove("a", now);
        now += Duration::from_secs(1);
        s.handle_timeout(now);
        assert_eq!(s.poll_speakers(), Some(Vec::new()));
    }
}
