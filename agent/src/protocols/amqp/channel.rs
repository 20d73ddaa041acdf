//! A channel's state: content being assembled, publishes awaiting their
//! confirm, consumers, and the deliveries read and not yet acknowledged,
//! with the tag bookkeeping that names deliveries the capture lost.
use foldhash::HashMap;
use std::collections::VecDeque;

use super::{Message, SegTime};

/// A publish awaiting its confirm: (seq, message, first and last segment,
/// the Basic.Return that came for it).
pub(super) type Unconfirmed = (u64, Message, SegTime, SegTime, Option<(u16, String)>);

/// Content being assembled on a channel.
#[derive(Debug)]
pub(super) enum Incoming {
    Publish {
        msg: Message,
        first: SegTime,
    },
    Deliver {
        msg: Message,
        tag: u64,
        redelivered: bool,
        consumer: String,
    },
    GetOk {
        msg: Message,
        tag: u64,
    },
    Return {
        code: u16,
        text: String,
    },
}

#[derive(Default)]
pub(super) struct Channel {
    /// Content expected after a method: (what, body bytes left, header seen).
    pub(super) client_content: Option<(Incoming, u64, bool)>,
    pub(super) server_content: Option<(Incoming, u64, bool)>,
    pub(super) confirms: bool,
    pub(super) next_seq: u64,
    /// Publishes awaiting the broker's confirm: seq -> publish.
    pub(super) unconfirmed: VecDeque<Unconfirmed>,
    pub(super) pending_consumes: VecDeque<(String, bool)>,
    /// Consumer tag -> (queue, no-ack).
    pub(super) consumers: HashMap<String, (String, bool)>,
    /// Deliveries read and not yet acknowledged, by tag, with no-ack.
    pub(super) open_deliveries: VecDeque<(u64, bool)>,
    /// The highest delivery tag known to be delivered (tags count up by
    /// one per delivery or Get-Ok on a channel).
    pub(super) max_tag: u64,
    /// Since frames were lost, deliveries beyond `max_tag` may have come
    /// unseen; the next delivery seen tells which (`ghosts`).
    pub(super) unsure: bool,
    /// Tags delivered but never seen, not yet acknowledged.
    pub(super) ghosts: std::collections::BTreeSet<u64>,
    pub(super) pending_gets: VecDeque<(String, SegTime)>,
}

pub(super) const MAX_QUEUED: usize = 4096;

/// Delivery `tag` was seen on `ch`: the tags between the highest known and
/// it were delivered unseen (frames lost), and stay ghosts until acked.
pub(super) fn delivered(ch: &mut Channel, tag: u64) {
    ch.unsure = false;
    unseen_before(ch, tag);
    ch.max_tag = ch.max_tag.max(tag);
}

/// Tags after `max_tag` and before `tag` came unseen. Too many to hold:
/// the channel stays unsure (blind until it closes).
fn unseen_before(ch: &mut Channel, tag: u64) {
    let from = ch.max_tag + 1;
    if tag <= from {
        return;
    }
    if tag - from > MAX_QUEUED as u64 || ch.ghosts.len() >= MAX_QUEUED {
        ch.unsure = true;
        return;
    }
    ch.ghosts.extend(from..tag);
}

/// An ack (nack, reject) of `tag` (`multiple`: and every tag before it; tag
/// 0: all): whether it finished a delivery that was never seen.
pub(super) fn ghost_finished(ch: &mut Channel, tag: u64, multiple: bool) -> bool {
    let mut unseen = false;
    if tag > ch.max_tag {
        unseen_before(ch, tag);
        ch.max_tag = tag;
        unseen = true;
    }
    if multiple {
        let before = ch.ghosts.len();
        if tag == 0 {
            ch.ghosts.clear();
        } else {
            ch.ghosts = ch.ghosts.split_off(&(tag + 1));
        }
        unseen |= ch.ghosts.len() != before;
    } else {
        unseen |= ch.ghosts.remove(&tag);
    }
    unseen
}

/// Ends every delivery open on channel `id` with `outcome`.
pub(super) fn end_deliveries(
    id: u16,
    ch: &mut Channel,
    outcome: super::Outcome,
    at: SegTime,
    out: &mut Vec<super::AmqpOut>,
) {
    for (tag, _) in ch.open_deliveries.drain(..) {
        out.push(super::AmqpOut::DeliveryFinished {
            channel: id,
            delivery_tag: tag,
            outcome,
            at,
        });
    }
}

pub(super) fn bounded_push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= MAX_QUEUED {
        q.pop_front();
    }
    q.push_back(v);
}
