//! AMQP 0-9-1 behind the [`Protocol`] interface.
use super::{detect_client, AmqpConnection};
use crate::{
    event::{Direction, Role},
    protocols::{
        client_first_write, interleave, Capture, Detect, GiveUp, ParserStats, Protocol, Record,
        SegTime, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "amqp",
    detect,
    new: || Box::<AmqpConnection>::default(),
    captures,
    // Deliveries come in batches larger than the default capture; a
    // truncated tail would hide frame headers.
    whole_frames: true,
    answered: false,
};

/// A client's first write: the protocol header, whole.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    if !client_first_write(role, dir) {
        return Detect::No;
    }
    match detect_client(data) {
        Detect::Yes => Detect::Yes,
        _ => Detect::No,
    }
}

impl Protocol for AmqpConnection {
    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Vec<Record>) -> Result<(), GiveUp> {
        let mut ops = vec![];
        self.push(side == Side::Request, seg, &mut ops);
        out.extend(ops.into_iter().map(|o| Record::Messaging(Box::new(o))));
        Ok(())
    }

    fn close(&mut self, at: SegTime, out: &mut Vec<Record>) {
        let mut ops = vec![];
        AmqpConnection::close(self, at, &mut ops);
        out.extend(ops.into_iter().map(|o| Record::Messaging(Box::new(o))));
    }

    fn take_stats(&mut self) -> ParserStats {
        let now = ParserStats {
            parse_errors: self.parse_errors,
            unpaired: 0,
        };
        ParserStats::since(now, &mut self.reported)
    }

    fn heap_bytes(&self) -> usize {
        self.heap_bytes()
    }
}

/// pika against RabbitMQ (see `captures/record.py`), in the order the
/// chunks crossed the recording proxy.
pub fn captures() -> Vec<Capture> {
    let order = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/protocols/amqp/captures/session.order"
    ));
    vec![Capture {
        name: "session",
        role: Role::Client,
        turns: interleave(
            crate::capture!("amqp", "session.c2s"),
            crate::capture!("amqp", "session.s2c"),
            order,
        ),
    }]
}
