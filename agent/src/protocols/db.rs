//! What every database parser produces: one call per request/response.
use super::{GiveUp, ParserStats, Protocol, Record, SegTime, Segment, Side};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSystem {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
}

impl DbSystem {
    /// The `db.system.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
            DbSystem::Mariadb => "mariadb",
            DbSystem::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// SQLSTATE (PostgreSQL, MySQL when sent), error number, or Redis prefix.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbCall {
    pub system: DbSystem,
    pub namespace: Option<String>,
    pub operation: String,
    pub collection: Option<String>,
    /// Sanitized: literals are `?`, Redis arguments after the key dropped.
    pub query_text: String,
    /// Rows returned or affected, when the protocol says.
    pub rows: Option<u64>,
    pub error: Option<DbError>,
    /// The syscall that sent the request's first byte...
    pub first: SegTime,
    /// ...and the one that received the response's last byte.
    pub last: SegTime,
}

/// What the database parsers share; one [`Protocol`] impl serves them all.
pub trait DbParser: Send + 'static {
    /// Feeds the client side (`requests`) or the server side.
    fn push(
        &mut self,
        requests: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), GiveUp>;
    /// Running totals: (parse errors, requests or replies left unpaired).
    fn counters(&self) -> (u64, u64);
    fn heap_bytes(&self) -> usize;
}

/// A database parser behind the [`Protocol`] interface.
pub struct DbProtocol<P> {
    parser: P,
    reported: ParserStats,
}

impl<P: DbParser> DbProtocol<P> {
    pub fn boxed(parser: P) -> Box<dyn Protocol> {
        Box::new(DbProtocol {
            parser,
            reported: ParserStats::default(),
        })
    }
}

impl<P: DbParser> Protocol for DbProtocol<P> {
    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Vec<Record>) -> Result<(), GiveUp> {
        let mut calls = vec![];
        let res = self.parser.push(side == Side::Request, seg, &mut calls);
        out.extend(calls.into_iter().map(|c| Record::Db(Box::new(c))));
        res
    }

    fn close(&mut self, _at: SegTime, _out: &mut Vec<Record>) {}

    fn take_stats(&mut self) -> ParserStats {
        let (parse_errors, unpaired) = self.parser.counters();
        ParserStats::since(
            ParserStats {
                parse_errors,
                unpaired,
            },
            &mut self.reported,
        )
    }

    fn heap_bytes(&self) -> usize {
        self.parser.heap_bytes()
    }
}
