//! An in-memory network for the room: str0m `Rtc`s act as clients, datagrams are handed over
//! directly and time is simulated in steps. The room's unit tests drive it, and so does the
//! forwarding bench (feature `sim`), which reads how long the room itself worked on datagrams,
//! timers and transmits (`room_busy`: the only clock reading here, around those calls).

use super::*;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{MediaTime, Pt};

/// The server's address in the simulated network.
pub const SERVER: &str = "10.0.0.1:5000";
/// How far one step moves time.
pub const STEP: Duration = Duration::from_millis(5);
/// The most sending time a limited link queues; datagrams beyond are dropped.
pub const MAX_LINK_QUEUE: Duration = Duration::from_millis(200);

/// A client's downlink limited to `rate` bits per second: the room's datagrams to it queue
/// behind each other, each arriving once the ones before and itself are sent.
pub struct Link {
    pub rate: u64,
    /// When what is queued is sent.
    busy_until: Instant,
    /// Datagrams with the time they arrive.
    queue: VecDeque<(Instant, Transmit)>,
    /// Datagrams dropped because the queue was full.
    pub dropped: usize,
}

/// A participant's WebRTC peer.
pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    /// The lines of the last offer it answered.
    pub media: Vec<MediaLine>,
    /// Frames received, by mid.
    pub frames: Vec<(Mid, Vec<u8>)>,
    pub keyframe_requests: usize,
    pub datagrams_in: usize,
}

impl Client {
    /// A client at `addr` that has received nothing yet.
    pub fn new(rtc: Rtc, addr: SocketAddr) -> Client {
        Client {
            rtc,
            addr,
            media: Vec::new(),
            frames: Vec::new(),
            keyframe_requests: 0,
            datagrams_in: 0,
        }
    }

    pub fn mid_of(&self, track: &str) -> Mid {
        let line = (self.media.iter())
            .find(|l| l.track == track)
            .expect("a line for the track");
        Mid::from(line.mid.as_str())
    }

    pub fn frames_of(&self, mid: Mid) -> Vec<Vec<u8>> {
        (self.frames.iter())
            .filter(|(m, _)| *m == mid)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

/// The room, its clients, and the simulated clock.
pub struct Net {
    pub room: Room,
    pub clients: BTreeMap<String, Client>,
    /// Clients whose participant left: they send nothing, and count what still reaches them.
    pub gone: BTreeMap<String, Client>,
    pub now: Instant,
    pub start: Instant,
    pub server: SocketAddr,
    /// Wall-clock time spent inside the room's methods.
    pub room_busy: Duration,
    pub next_host: u8,
    /// RTP datagrams from the room to drop before they reach a client, by client name: the
    /// next `n` are lost on the way.
    pub lose_rtp: BTreeMap<String, usize>,
    /// Limited downlinks, by client name.
    pub links: BTreeMap<String, Link>,
}

impl Net {
    pub fn new(config: RoomConfig) -> Net {
        let now = Instant::now();
        let server: SocketAddr = SERVER.parse().unwrap();
        let config = RoomConfig {
            candidates: vec![server],
            ..config
        };
        Net {
            room: Room::new(config, now),
            clients: BTreeMap::new(),
            gone: BTreeMap::new(),
            now,
            start: now,
            server,
            room_busy: Duration::ZERO,
            next_host: 10,
            lose_rtp: BTreeMap::new(),
            links: BTreeMap::new(),
        }
    }

    /// Limit `name`'s downlink to `rate` bits per second, or lift the limit (what its link
    /// queued arrives now).
    pub fn limit(&mut self, name: &str, rate: Option<u64>) {
        match rate {
            Some(rate) => {
                let link = (self.links.entry(name.to_string())).or_insert_with(|| Link {
                    rate,
                    busy_until: self.now,
                    queue: VecDeque::new(),
                    dropped: 0,
                });
                link.rate = rate;
            }
            None => {
                if let Some(link) = self.links.remove(name) {
                    for (_, t) in link.queue {
                        self.deliver(name, t);
                    }
                }
            }
        }
    }

    /// A datagram from the room reaches client `name` (unless the test loses it).
    fn deliver(&mut self, name: &str, t: Transmit) {
        if is_rtp(&t.contents)
            && let Some(n) = self.lose_rtp.get_mut(name)
            && *n > 0
        {
            *n -= 1;
            return;
        }
        let client = self.clients.get_mut(name).expect("a client of that name");
        client.datagrams_in += 1;
        let input = Input::Receive(
            self.now,
            Receive {
                proto: Protocol::Udp,
                source: t.source,
                destination: t.destination,
                contents: t.contents.as_slice().try_into().unwrap(),
            },
        );
        client.rtc.handle_input(input).unwrap();
    }

    /// Put a datagram for `name` on its limited link; it comes back if there is none.
    fn enqueue(&mut self, name: &str, t: Transmit) -> Option<Transmit> {
        let Some(link) = self.links.get_mut(name) else {
            return Some(t);
        };
        let start = link.busy_until.max(self.now);
        if start >= self.now + MAX_LINK_QUEUE {
            link.dropped += 1;
            return None;
        }
        let micros = t.contents.len() as u64 * 8 * 1_000_000 / link.rate.max(1);
        link.busy_until = start + Duration::from_micros(micros);
        link.queue.push_back((link.busy_until, t));
        None
    }

    /// Deliver what the limited links have sent by now. True if anything was.
    fn deliver_due(&mut self) -> bool {
        let mut due = Vec::new();
        for (name, link) in &mut self.links {
            while link.queue.front().is_some_and(|(at, _)| *at <= self.now) {
                let (_, t) = link.queue.pop_front().expect("checked above");
                due.push((name.clone(), t));
            }
        }
        let any = !due.is_empty();
        for (name, t) in due {
            self.deliver(&name, t);
        }
        any
    }

    /// A participant joins: the room makes its session and the client answers its offer.
    pub fn join(&mut self, name: &str) {
        let addr: SocketAddr = format!("10.0.0.{}:6000", self.next_host).parse().unwrap();
        self.next_host += 1;
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        self.clients
            .insert(name.to_string(), Client::new(rtc, addr));
        self.room.add_participant(name).unwrap();
        self.settle();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let started = Instant::now();
        let transmit = self.room.poll_transmit();
        self.room_busy += started.elapsed();
        transmit
    }

    /// Answer every offer and exchange datagrams until nobody has anything to send.
    pub fn settle(&mut self) {
        loop {
            let mut busy = self.deliver_due();
            while let Some(offer) = self.room.poll_offer() {
                busy = true;
                let client = self.clients.get_mut(&offer.participant).unwrap();
                let parsed = SdpOffer::from_sdp_string(&offer.sdp).unwrap();
                let answer = client.rtc.sdp_api().accept_offer(parsed).unwrap();
                client.media = offer.media;
                self.room
                    .handle_answer(&offer.participant, &answer.to_sdp_string())
                    .unwrap();
            }
            for client in self.clients.values_mut() {
                loop {
                    match client.rtc.poll_output().unwrap() {
                        Output::Timeout(_) => break,
                        Output::Transmit(t) => {
                            busy = true;
                            let started = Instant::now();
                            let taken = (self.room).handle_datagram(
                                self.now,
                                t.source,
                                t.destination,
                                &t.contents,
                            );
                            self.room_busy += started.elapsed();
                            assert!(taken, "the room takes every client datagram");
                        }
                        Output::Event(Event::MediaData(data)) => {
                            client.frames.push((data.mid, data.data.to_vec()));
                        }
                        Output::Event(Event::KeyframeRequest(_)) => client.keyframe_requests += 1,
                        Output::Event(_) => {}
                    }
                }
            }
            while let Some(t) = self.poll_transmit() {
                busy = true;
                assert_eq!(t.source, self.server);
                if let Some(gone) = self.gone.values_mut().find(|c| c.addr == t.destination) {
                    gone.datagrams_in += 1;
                    continue;
                }
                let name = (self.clients.iter())
                    .find(|(_, c)| c.addr == t.destination)
                    .map(|(name, _)| name.clone())
                    .expect("a datagram to a known address");
                if let Some(t) = self.enqueue(&name, t) {
                    self.deliver(&name, t);
                }
            }
            if !busy {
                break;
            }
        }
    }

    /// Move time on by `steps` steps, running every timer.
    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.now += STEP;
            let started = Instant::now();
            self.room.handle_timeout(self.now);
            self.room_busy += started.elapsed();
            for client in self.clients.values_mut() {
                client.rtc.handle_input(Input::Timeout(self.now)).unwrap();
            }
            self.settle();
        }
    }

    /// Run until every named client is connected, within a generous simulated deadline.
    pub fn connect(&mut self, names: &[&str]) {
        for _ in 0..2000 {
            if names
                .iter()
                .all(|n| self.clients[*n].rtc.is_connected() && self.room.is_connected(n))
            {
                return;
            }
            self.run(1);
        }
        panic!("{names:?} did not connect");
    }

    /// `name`'s participant leaves the room, and its client stops.
    pub fn leave(&mut self, name: &str) {
        self.room.remove_participant(name);
        let client = self.clients.remove(name).unwrap();
        self.gone.insert(name.to_string(), client);
    }

    /// `publisher`'s client, its line of `track`, the payload type of `codec` on it, and the
    /// media time now.
    fn line(
        &mut self,
        publisher: &str,
        track: &str,
        codec: Codec,
    ) -> (&mut Client, Mid, Pt, MediaTime) {
        let time: MediaTime = self.now.duration_since(self.start).into();
        let client = self.clients.get_mut(publisher).unwrap();
        let mid = client.mid_of(track);
        let pt = (client.rtc.codec_config())
            .find(|p| p.spec().codec == codec)
            .unwrap()
            .pt();
        (client, mid, pt, time)
    }

    /// `publisher` sends one video frame on its line of `track`.
    pub fn send_frame(&mut self, publisher: &str, track: &str, payload: &[u8]) {
        let now = self.now;
        let (client, mid, pt, time) = self.line(publisher, track, Codec::Vp8);
        client
            .rtc
            .writer(mid)
            .expect("the publisher's line")
            .write(pt, now, time, payload.to_vec())
            .unwrap();
        self.run(2);
    }

    /// `publisher` sends one frame of each layer `layers` names (indices into [`LAYERS`]) on
    /// its simulcast line of `track`: keyframes (of the layer's width) or delta frames.
    pub fn send_layers(
        &mut self,
        publisher: &str,
        track: &str,
        layers: &[usize],
        key: bool,
        i: u8,
    ) {
        let now = self.now;
        let (client, mid, pt, time) = self.line(publisher, track, Codec::Vp8);
        for &layer in layers {
            let writer = client.rtc.writer(mid).expect("the publisher's line");
            let payload = layer_frame(layer, key, i);
            (writer.rid(LAYERS[layer].into()))
                .write(pt, now, time, payload)
                .unwrap();
        }
        self.run(6);
    }

    /// `publisher` sends a frame of each simulcast layer on its line of `video`, of
    /// `sizes[layer]` bytes (keyframes when `key`, see [`layer_frame`]), and an Opus packet on
    /// its line of `audio`; then 30 ms pass.
    pub fn send_media(
        &mut self,
        publisher: &str,
        (video, audio): (&str, &str),
        sizes: [usize; 3],
        key: bool,
        i: u8,
    ) {
        let now = self.now;
        let (client, mid, pt, time) = self.line(publisher, video, Codec::Vp8);
        for (layer, size) in sizes.into_iter().enumerate() {
            let writer = client.rtc.writer(mid).expect("the publisher's line");
            let mut payload = layer_frame(layer, key, i);
            payload.resize(size, 0);
            (writer.rid(LAYERS[layer].into()))
                .write(pt, now, time, payload)
                .unwrap();
        }
        let (client, mid, pt, time) = self.line(publisher, audio, Codec::Opus);
        (client.rtc.writer(mid).expect("the publisher's line"))
            .write(pt, now, time, vec![0xfc, 0xff, 0xfe])
            .unwrap();
        self.run(6);
    }

    /// `publisher` sends one Opus packet on its line of `track`, with audio level `dbov`
    /// (-dBov), then 20 ms pass.
    pub fn send_audio(&mut self, publisher: &str, track: &str, dbov: u8) {
        let now = self.now;
        let (client, mid, pt, time) = self.line(publisher, track, Codec::Opus);
        let level = -(dbov.min(127) as i8);
        (client.rtc.writer(mid).expect("the publisher's line"))
            .audio_level(level, dbov < 127)
            .write(pt, now, time, vec![0xfc, 0xff, 0xfe])
            .unwrap();
        self.run(4);
    }

    /// `publisher` sends `n` frames on `track`, one every 30 ms.
    pub fn stream(&mut self, publisher: &str, track: &str, n: u8) {
        for i in 0..n {
            self.send_frame(publisher, track, &frame(i));
            self.run(4);
        }
    }
}

/// A VP8 frame of simulcast layer `layer` (whose width is 320 << layer), numbered `i`: a
/// keyframe's header gives the width. Byte 10 is the layer, 11 the number.
pub fn layer_frame(layer: usize, key: bool, i: u8) -> Vec<u8> {
    let width = (320u16 << layer).to_le_bytes();
    let height = (180u16 << layer).to_le_bytes();
    match key {
        true => vec![
            0x10,
            0x02,
            0x00,
            0x9d,
            0x01,
            0x2a,
            width[0],
            width[1],
            height[0],
            height[1],
            layer as u8,
            i,
        ],
        false => vec![0x11, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, layer as u8, i],
    }
}

/// A small VP8 keyframe-like payload, distinct per `i`.
pub fn frame(i: u8) -> Vec<u8> {
    vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, i, i]
}
