//! AMQP 0-9-1 field values and the content-header property list, decoded
//! over a bounded cursor: every read checks its length, nothing panics.

#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Decimal: scale, unscaled value.
    Decimal(u8, i32),
    Str(String),
    Bytes(Vec<u8>),
    Array(Vec<Field>),
    Timestamp(u64),
    Table(Vec<(String, Field)>),
    Void,
}

/// A read-only cursor over a byte slice.
pub struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    }
    pub fn shortstr(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        self.take(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
    pub fn longstr(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A field table.
    pub fn table(&mut self, depth: u8) -> Option<Vec<(String, Field)>> {
        let mut c = Cursor::new(self.longstr()?);
        let mut out = vec![];
        while !c.b.is_empty() {
            let k = c.shortstr()?;
            let v = c.field(depth)?;
            out.push((k, v));
        }
        Some(out)
    }

    /// One typed field value (RabbitMQ's type letters).
    fn field(&mut self, depth: u8) -> Option<Field> {
        if depth > 16 {
            return None;
        }
        Some(match self.u8()? {
            b't' => Field::Bool(self.u8()? != 0),
            b'b' => Field::Int(self.u8()? as i8 as i64),
            b'B' => Field::UInt(self.u8()? as u64),
            b's' | b'U' => Field::Int(self.u16()? as i16 as i64),
            b'u' => Field::UInt(self.u16()? as u64),
            b'I' => Field::Int(self.u32()? as i32 as i64),
            b'i' => Field::UInt(self.u32()? as u64),
            b'l' | b'L' => Field::Int(self.u64()? as i64),
            b'f' => Field::Float(f32::from_bits(self.u32()?) as f64),
            b'd' => Field::Float(f64::from_bits(self.u64()?)),
            b'D' => Field::Decimal(self.u8()?, self.u32()? as i32),
            b'S' => Field::Str(String::from_utf8_lossy(self.longstr()?).into_owned()),
            b'x' => Field::Bytes(self.longstr()?.to_vec()),
            b'A' => {
                let mut c = Cursor::new(self.longstr()?);
                let mut v = vec![];
                while !c.b.is_empty() {
                    v.push(c.field(depth + 1)?);
                }
                Field::Array(v)
            }
            b'T' => Field::Timestamp(self.u64()?),
            b'F' => Field::Table(self.table(depth + 1)?),
            b'V' => Field::Void,
            _ => return None,
        })
    }
}

/// Basic content-header properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Vec<(String, Field)>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
}

impl Properties {
    /// A string header (traceparent, tracestate).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match v {
                Field::Str(s) => Some(s.clone()),
                Field::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
    }

    /// Decodes the flag word(s) and the properties they announce.
    pub fn parse(c: &mut Cursor<'_>) -> Option<Properties> {
        let mut flags = c.u16()?;
        // Continuation flag words (bit 0) carry no properties in 0-9-1.
        let mut cont = flags;
        while cont & 1 == 1 {
            cont = c.u16()?;
        }
        flags &= !1;
        let mut p = Properties::default();
        let bit = |n: u8| flags & (1 << n) != 0;
        if bit(15) {
            p.content_type = Some(c.shortstr()?);
        }
        if bit(14) {
            p.content_encoding = Some(c.shortstr()?);
        }
        if bit(13) {
            p.headers = c.table(0)?;
        }
        if bit(12) {
            p.delivery_mode = Some(c.u8()?);
        }
        if bit(11) {
            p.priority = Some(c.u8()?);
        }
        if bit(10) {
            p.correlation_id = Some(c.shortstr()?);
        }
        if bit(9) {
            p.reply_to = Some(c.shortstr()?);
        }
        if bit(8) {
            p.expiration = Some(c.shortstr()?);
        }
        if bit(7) {
            p.message_id = Some(c.shortstr()?);
        }
        if bit(6) {
            p.timestamp = Some(c.u64()?);
        }
        if bit(5) {
            p.kind = Some(c.shortstr()?);
        }
        if bit(4) {
            p.user_id = Some(c.shortstr()?);
        }
        if bit(3) {
            p.app_id = Some(c.shortstr()?);
        }
        if bit(2) {
            let _cluster_id = c.shortstr()?;
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_type_decodes() {
        let mut t = vec![];
        let mut add = |k: &str, v: &[u8]| {
            t.push(k.len() as u8);
            t.extend_from_slice(k.as_bytes());
            t.extend_from_slice(v);
        };
        add("b", b"t\x01");
        add("i8", b"b\xff");
        add("s", b"s\xff\xfe");
        add("I", b"I\xff\xff\xff\xfe");
        add("l", b"l\x00\x00\x00\x00\x00\x00\x01\x00");
        add(
            "d",
            &[b"d".as_slice(), &1.5f64.to_bits().to_be_bytes()].concat(),
        );
        add("D", b"D\x02\x00\x00\x01\x00");
        add("S", b"S\x00\x00\x00\x02hi");
        add("x", b"x\x00\x00\x00\x01\x07");
        add("A", b"A\x00\x00\x00\x04b\x01b\x02");
        add("T", b"T\x00\x00\x00\x00\x00\x00\x00\x09");
        add("F", b"F\x00\x00\x00\x03\x01zV");
        add("V", b"V");
        let mut buf = (t.len() as u32).to_be_bytes().to_vec();
        buf.extend(t);
        let table = Cursor::new(&buf).table(0).unwrap();
        let get = |k: &str| table.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("b"), Field::Bool(true));
        assert_eq!(get("i8"), Field::Int(-1));
        assert_eq!(get("s"), Field::Int(-2));
        assert_eq!(get("I"), Field::Int(-2));
        assert_eq!(get("l"), Field::Int(256));
        assert_eq!(get("d"), Field::Float(1.5));
        assert_eq!(get("D"), Field::Decimal(2, 256));
        assert_eq!(get("S"), Field::Str("hi".into()));
        assert_eq!(get("x"), Field::Bytes(vec![7]));
        assert_eq!(get("A"), Field::Array(vec![Field::Int(1), Field::Int(2)]));
        assert_eq!(get("T"), Field::Timestamp(9));
        assert_eq!(get("F"), Field::Table(vec![("z".into(), Field::Void)]));
        // Truncated anywhere: None, never a panic.
        for i in 0..buf.len() {
            let mut b = buf[..i].to_vec();
            if b.len() >= 4 {
                b[..4].copy_from_slice(&((i - 4) as u32).to_be_bytes());
            }
            let _ = Cursor::new(&b).table(0);
        }
    }
}
