//! What the AMQP parser hands to correlation: messages, and the messaging
//! operations they take part in.
use super::{table::Properties, SegTime};

/// A message as seen on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub props: Properties,
    pub body_size: u64,
    pub body_prefix: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack,
    Reject,
    /// No-ack consumer: processing ended at the next read of the channel.
    AutoAck,
    /// Channel or connection closed before any acknowledgement.
    Closed,
    /// The capture lost its place on the connection (truncated frames):
    /// how it ended is unknown.
    Lost,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AmqpOut {
    /// A publish completed: sent (no confirms) or confirmed/nacked by the broker.
    Published {
        channel: u16,
        msg: Message,
        first: SegTime,
        last: SegTime,
        confirmed: Option<bool>,
        /// Basic.Return before the confirm: (reply code, text).
        returned: Option<(u16, String)>,
        seq: Option<u64>,
    },
    /// A publish on a confirm channel was written: its `Published` comes
    /// with the broker's confirm, possibly after a consumer already got
    /// the message. Correlation fixes the publish's context now.
    PublishSent {
        channel: u16,
        seq: u64,
        msg: Message,
        first: SegTime,
        last: SegTime,
    },
    /// A delivery was read: processing starts now.
    DeliveryStarted {
        channel: u16,
        delivery_tag: u64,
        queue: Option<String>,
        redelivered: bool,
        msg: Message,
        at: SegTime,
    },
    /// Its processing ended.
    DeliveryFinished {
        channel: u16,
        delivery_tag: u64,
        outcome: Outcome,
        at: SegTime,
    },
    /// The consumer's channels may hold deliveries that were not seen
    /// (`true`: frames were lost), or every delivery is accounted for again.
    Blind { blind: bool },
    /// A delivery that was never seen was acknowledged (or rejected).
    GhostFinished { channel: u16, at: SegTime },
    /// A Basic.Get answered (None: GetEmpty).
    Received {
        channel: u16,
        queue: String,
        msg: Option<Message>,
        delivery_tag: Option<u64>,
        first: SegTime,
        last: SegTime,
    },
}
