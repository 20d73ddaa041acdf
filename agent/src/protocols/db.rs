//! What every database parser produces: one call per request/response.
use super::SegTime;

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
