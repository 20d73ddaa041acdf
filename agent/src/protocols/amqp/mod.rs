//! AMQP 0-9-1 (RabbitMQ) client connections.
//!
//! Frames (method, content header, body, heartbeat) are framed per direction
//! and assembled per channel: a Basic.Publish / Deliver / GetOk method is
//! followed by a content header (properties, body size) and body frames
//! until the body size is reached; channels interleave freely. Out come the
//! messaging operations spans are made of: publishes (with their publisher
//! confirm and return), deliveries starting and finishing (ack, nack,
//! reject, or auto-ack), and Basic.Get receives.
mod channel;
mod frame;
pub mod protocol;
mod records;
pub mod table;

pub use protocol::SPEC;
pub use records::{AmqpOut, Message, Outcome};

use foldhash::{HashMap, HashMapExt};

use channel::{
    bounded_push, delivered, end_deliveries, ghost_finished, Channel, Incoming, MAX_QUEUED,
};
use frame::{Frame, Framer, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use table::{Cursor, Properties};

use super::{Detect, SegTime, Segment};

const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
pub const BODY_PREFIX: usize = 256;

pub fn detect_client(data: &[u8]) -> Detect {
    let n = data.len().min(PROTOCOL_HEADER.len());
    if data[..n] != PROTOCOL_HEADER[..n] {
        Detect::No
    } else if n < 4 {
        Detect::NeedMore
    } else {
        Detect::Yes
    }
}

pub struct AmqpConnection {
    client: Framer,
    server: Framer,
    channels: HashMap<u16, Channel>,
    pub vhost: Option<String>,
    pub parse_errors: u64,
    /// Whether `Blind { blind: true }` was the last said.
    blind: bool,
    /// Counters already handed out by `take_stats`.
    reported: crate::protocols::ParserStats,
}

impl Default for AmqpConnection {
    fn default() -> Self {
        AmqpConnection {
            client: Framer::after_header(PROTOCOL_HEADER.len()),
            server: Framer::default(),
            channels: HashMap::new(),
            vhost: None,
            parse_errors: 0,
            blind: false,
            reported: Default::default(),
        }
    }
}

const MAX_CHANNELS: usize = 2048;
impl AmqpConnection {
    pub fn push(&mut self, client: bool, seg: Segment<'_>, out: &mut Vec<AmqpOut>) {
        let t = seg.time();
        let framer = if client {
            &mut self.client
        } else {
            &mut self.server
        };
        if framer.lost {
            // Resync on a segment that starts with a method frame.
            if seg.data.first() != Some(&FRAME_METHOD) {
                return;
            }
            *framer = Framer::default();
        }
        let mut frames = vec![];
        let ok =
            framer.feed(seg.data, t, &mut frames).is_ok() && framer.skip(seg.gap(), &mut frames);
        if !ok {
            *framer = Framer::lost();
            self.parse_errors += 1;
        }
        for f in frames {
            self.on_frame(client, f, out);
        }
        if !ok {
            self.lost_place(t, out);
        }
        self.say_blind(out);
    }

    /// A direction's frames were lost: the acks or deliveries in them are
    /// unknown. Open deliveries end (`Lost`), and every consuming channel
    /// is unsure until its next delivery shows which tags came unseen.
    fn lost_place(&mut self, at: SegTime, out: &mut Vec<AmqpOut>) {
        for (&channel, ch) in self.channels.iter_mut() {
            if ch.consumers.is_empty() && ch.max_tag == 0 && ch.open_deliveries.is_empty() {
                continue; // a publisher's channel
            }
            ch.unsure = true;
            end_deliveries(channel, ch, Outcome::Lost, at, out);
        }
    }

    /// Says when the connection becomes blind (a channel unsure, or with
    /// unseen deliveries) or sees again.
    fn say_blind(&mut self, out: &mut Vec<AmqpOut>) {
        let blind = self
            .channels
            .values()
            .any(|c| c.unsure || !c.ghosts.is_empty());
        if blind != self.blind {
            self.blind = blind;
            out.push(AmqpOut::Blind { blind });
        }
    }

    /// Heap bytes held: partial frames, channels and their queues.
    pub fn heap_bytes(&self) -> usize {
        let queued = |c: &Channel| {
            c.unconfirmed.len()
                * std::mem::size_of::<(u64, Message, SegTime, SegTime, Option<(u16, String)>)>()
                + c.open_deliveries.len() * 16
                + c.ghosts.len() * 32
                + (c.pending_consumes.len() + c.consumers.len() + c.pending_gets.len()) * 64
        };
        self.client.heap_bytes()
            + self.server.heap_bytes()
            + self
                .channels
                .values()
                .map(|c| std::mem::size_of::<Channel>() + queued(c))
                .sum::<usize>()
    }

    /// The connection closed: open deliveries end unacknowledged.
    pub fn close(&mut self, at: SegTime, out: &mut Vec<AmqpOut>) {
        for (&channel, ch) in self.channels.iter_mut() {
            end_deliveries(channel, ch, Outcome::Closed, at, out);
        }
    }

    fn channel(&mut self, id: u16) -> Option<&mut Channel> {
        if !self.channels.contains_key(&id) && self.channels.len() >= MAX_CHANNELS {
            return None;
        }
        Some(self.channels.entry(id).or_default())
    }

    fn on_frame(&mut self, client: bool, f: Frame, out: &mut Vec<AmqpOut>) {
        let channel = f.channel;
        match f.kind {
            FRAME_METHOD => {
                let mut c = Cursor::new(&f.payload);
                let (Some(class), Some(method)) = (c.u16(), c.u16()) else {
                    self.parse_errors += 1;
                    return;
                };
                // Auto-ack deliveries end at the next activity on their channel.
                if !client {
                    self.finish_auto_acked(channel, f.first, out);
                }
                if client {
                    self.on_client_method(channel, class, method, c, &f, out);
                } else {
                    self.on_server_method(channel, class, method, c, &f, out);
                }
            }
            FRAME_HEADER | FRAME_BODY => self.on_content(client, &f, out),
            _ => {} // heartbeat
        }
    }

    fn finish_auto_acked(&mut self, channel: u16, at: SegTime, out: &mut Vec<AmqpOut>) {
        if let Some(ch) = self.channels.get_mut(&channel) {
            while let Some(&(tag, true)) = ch.open_deliveries.front() {
                ch.open_deliveries.pop_front();
                out.push(AmqpOut::DeliveryFinished {
                    channel,
                    delivery_tag: tag,
                    outcome: Outcome::AutoAck,
                    at,
                });
            }
        }
    }

    fn on_client_method(
        &mut self,
        id: u16,
        class: u16,
        method: u16,
        mut c: Cursor<'_>,
        f: &Frame,
        out: &mut Vec<AmqpOut>,
    ) {
        match (class, method) {
            (10, 40) => {
                self.vhost = c.shortstr();
            }
            (60, 40) => {
                let _reserved = c.u16();
                let (Some(exchange), Some(routing_key)) = (c.shortstr(), c.shortstr()) else {
                    return;
                };
                if let Some(ch) = self.channel(id) {
                    let msg = Message {
                        exchange,
                        routing_key,
                        ..Default::default()
                    };
                    ch.client_content = Some((
                        Incoming::Publish {
                            msg,
                            first: f.first,
                        },
                        0,
                        false,
                    ));
                }
            }
            (60, 20) => {
                let _reserved = c.u16();
                let queue = c.shortstr().unwrap_or_default();
                let _tag = c.shortstr();
                let bits = c.u8().unwrap_or(0);
                if let Some(ch) = self.channel(id) {
                    bounded_push(&mut ch.pending_consumes, (queue, bits & 0b10 != 0));
                }
            }
            (60, 70) => {
                let _reserved = c.u16();
                let queue = c.shortstr().unwrap_or_default();
                if let Some(ch) = self.channel(id) {
                    bounded_push(&mut ch.pending_gets, (queue, f.first));
                }
            }
            (60, 80) | (60, 120) | (60, 90) => {
                let tag = c.u64().unwrap_or(0);
                let bits = c.u8().unwrap_or(0);
                let (outcome, multiple) = match method {
                    80 => (Outcome::Ack, bits & 1 != 0),
                    120 => (Outcome::Nack, bits & 1 != 0),
                    _ => (Outcome::Reject, false),
                };
                if let Some(ch) = self.channels.get_mut(&id) {
                    if ghost_finished(ch, tag, multiple) {
                        out.push(AmqpOut::GhostFinished {
                            channel: id,
                            at: f.first,
                        });
                    }
                    let done: Vec<u64> = ch
                        .open_deliveries
                        .iter()
                        .filter(|(t, _)| {
                            if multiple {
                                *t <= tag || tag == 0
                            } else {
                                *t == tag
                            }
                        })
                        .map(|(t, _)| *t)
                        .collect();
                    ch.open_deliveries.retain(|(t, _)| !done.contains(t));
                    for t in done {
                        out.push(AmqpOut::DeliveryFinished {
                            channel: id,
                            delivery_tag: t,
                            outcome,
                            at: f.first,
                        });
                    }
                }
            }
            (85, 10) => {
                if let Some(ch) = self.channel(id) {
                    ch.confirms = true;
                    ch.next_seq = 1;
                }
            }
            (20, 40) | (20, 41) => self.close_channel(id, f.first, out),
            _ => {}
        }
    }

    fn close_channel(&mut self, id: u16, at: SegTime, out: &mut Vec<AmqpOut>) {
        if let Some(mut ch) = self.channels.remove(&id) {
            end_deliveries(id, &mut ch, Outcome::Closed, at, out);
            for (seq, msg, first, last, returned) in ch.unconfirmed.drain(..) {
                out.push(AmqpOut::Published {
                    channel: id,
                    msg,
                    first,
                    last,
                    confirmed: None,
                    returned,
                    seq: Some(seq),
                });
            }
        }
    }

    fn on_server_method(
        &mut self,
        id: u16,
        class: u16,
        method: u16,
        mut c: Cursor<'_>,
        f: &Frame,
        out: &mut Vec<AmqpOut>,
    ) {
        match (class, method) {
            (60, 21) => {
                let tag = c.shortstr().unwrap_or_default();
                if let Some(ch) = self.channel(id) {
                    if let Some((queue, no_ack)) = ch.pending_consumes.pop_front() {
                        if ch.consumers.len() < MAX_QUEUED {
                            ch.consumers.insert(tag, (queue, no_ack));
                        }
                    }
                }
            }
            (60, 60) => {
                let consumer = c.shortstr().unwrap_or_default();
                let tag = c.u64().unwrap_or(0);
                let redelivered = c.u8().unwrap_or(0) & 1 != 0;
                let (Some(exchange), Some(routing_key)) = (c.shortstr(), c.shortstr()) else {
                    return;
                };
                if let Some(ch) = self.channel(id) {
                    let msg = Message {
                        exchange,
                        routing_key,
                        ..Default::default()
                    };
                    ch.server_content = Some((
                        Incoming::Deliver {
                            msg,
                            tag,
                            redelivered,
                            consumer,
                        },
                        0,
                        false,
                    ));
                }
            }
            (60, 71) => {
                let tag = c.u64().unwrap_or(0);
                let _redelivered = c.u8();
                let (Some(exchange), Some(routing_key)) = (c.shortstr(), c.shortstr()) else {
                    return;
                };
                if let Some(ch) = self.channel(id) {
                    let msg = Message {
                        exchange,
                        routing_key,
                        ..Default::default()
                    };
                    ch.server_content = Some((Incoming::GetOk { msg, tag }, 0, false));
                }
            }
            (60, 72) => {
                if let Some(ch) = self.channels.get_mut(&id) {
                    if let Some((queue, first)) = ch.pending_gets.pop_front() {
                        out.push(AmqpOut::Received {
                            channel: id,
                            queue,
                            msg: None,
                            delivery_tag: None,
                            first,
                            last: f.last,
                        });
                    }
                }
            }
            (60, 50) => {
                let code = c.u16().unwrap_or(0);
                let text = c.shortstr().unwrap_or_default();
                if let Some(ch) = self.channel(id) {
                    ch.server_content = Some((Incoming::Return { code, text }, 0, false));
                }
            }
            (60, 80) | (60, 120) => {
                // Publisher confirms.
                let tag = c.u64().unwrap_or(0);
                let multiple = c.u8().unwrap_or(0) & 1 != 0;
                let ok = method == 80;
                if let Some(ch) = self.channels.get_mut(&id) {
                    while let Some(front) = ch.unconfirmed.front() {
                        let covered = if multiple {
                            front.0 <= tag
                        } else {
                            front.0 == tag
                        };
                        if !covered {
                            if !multiple && front.0 < tag {
                                // A lone confirm past older publishes: keep looking.
                                let pos = ch.unconfirmed.iter().position(|u| u.0 == tag);
                                if let Some(p) = pos {
                                    let (seq, msg, first, _, returned) =
                                        ch.unconfirmed.remove(p).expect("position");
                                    out.push(AmqpOut::Published {
                                        channel: id,
                                        msg,
                                        first,
                                        last: f.last,
                                        confirmed: Some(ok),
                                        returned,
                                        seq: Some(seq),
                                    });
                                }
                            }
                            break;
                        }
                        let (seq, msg, first, _, returned) =
                            ch.unconfirmed.pop_front().expect("front");
                        out.push(AmqpOut::Published {
                            channel: id,
                            msg,
                            first,
                            last: f.last,
                            confirmed: Some(ok),
                            returned,
                            seq: Some(seq),
                        });
                    }
                }
            }
            (20, 40) | (20, 41) => self.close_channel(id, f.first, out),
            _ => {}
        }
    }

    fn on_content(&mut self, client: bool, f: &Frame, out: &mut Vec<AmqpOut>) {
        let Some(ch) = self.channels.get_mut(&f.channel) else {
            return;
        };
        let slot = if client {
            &mut ch.client_content
        } else {
            &mut ch.server_content
        };
        let Some((incoming, left, header_seen)) = slot.as_mut() else {
            return;
        };
        let msg = match incoming {
            Incoming::Publish { msg, .. }
            | Incoming::Deliver { msg, .. }
            | Incoming::GetOk { msg, .. } => Some(msg),
            Incoming::Return { .. } => None,
        };
        if f.kind == FRAME_HEADER {
            let mut c = Cursor::new(&f.payload);
            let (_class, _weight, size) = (c.u16(), c.u16(), c.u64());
            let Some(size) = size else {
                self.parse_errors += 1;
                *slot = None;
                return;
            };
            if let Some(m) = msg {
                m.body_size = size;
                m.props = Properties::parse(&mut c).unwrap_or_default();
            }
            *left = size;
            *header_seen = true;
        } else {
            if !*header_seen {
                return;
            }
            if let Some(m) = msg {
                let room = BODY_PREFIX.saturating_sub(m.body_prefix.len());
                m.body_prefix
                    .extend_from_slice(&f.payload[..f.payload.len().min(room)]);
            }
            *left = left.saturating_sub(f.size as u64);
        }
        if *header_seen && *left == 0 {
            let (incoming, _, _) = slot.take().expect("some");
            self.complete(f.channel, incoming, f.last, out);
        }
    }

    fn complete(&mut self, id: u16, incoming: Incoming, last: SegTime, out: &mut Vec<AmqpOut>) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        match incoming {
            Incoming::Publish { msg, first } => {
                if ch.confirms {
                    let seq = ch.next_seq;
                    ch.next_seq += 1;
                    out.push(AmqpOut::PublishSent {
                        channel: id,
                        seq,
                        msg: msg.clone(),
                        first,
                        last,
                    });
                    bounded_push(&mut ch.unconfirmed, (seq, msg, first, last, None));
                } else {
                    out.push(AmqpOut::Published {
                        channel: id,
                        msg,
                        first,
                        last,
                        confirmed: None,
                        returned: None,
                        seq: None,
                    });
                }
            }
            Incoming::Deliver {
                msg,
                tag,
                redelivered,
                consumer,
            } => {
                let (queue, no_ack) = match ch.consumers.get(&consumer) {
                    Some((q, n)) => (Some(q.clone()), *n),
                    None => (None, false),
                };
                delivered(ch, tag);
                bounded_push(&mut ch.open_deliveries, (tag, no_ack));
                out.push(AmqpOut::DeliveryStarted {
                    channel: id,
                    delivery_tag: tag,
                    queue,
                    redelivered,
                    msg,
                    at: last,
                });
            }
            Incoming::GetOk { msg, tag } => {
                // A pull says nothing of a consumer's unseen deliveries.
                ch.max_tag = ch.max_tag.max(tag);
                // A Get-Ok whose Basic.Get was not seen (capture started
                // in between) starts when it arrives, never at time zero.
                let (queue, first) = ch
                    .pending_gets
                    .pop_front()
                    .unwrap_or_else(|| (String::new(), last));
                out.push(AmqpOut::Received {
                    channel: id,
                    queue,
                    msg: Some(msg),
                    delivery_tag: Some(tag),
                    first,
                    last,
                });
            }
            Incoming::Return { code, text } => {
                // Unroutable: the oldest unconfirmed publish it answers.
                if let Some(u) = ch.unconfirmed.iter_mut().find(|u| u.4.is_none()) {
                    u.4 = Some((code, text));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
