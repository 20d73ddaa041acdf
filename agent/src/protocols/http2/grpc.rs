//! gRPC over HTTP/2: the call's name from its path, its status from the
//! trailers, and its messages counted from their length prefixes.

/// What a stream's headers and trailers say of a gRPC call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcCall {
    /// `package.Service` and `Method`, from `:path` = `/package.Service/Method`.
    pub service: String,
    pub method: String,
    /// `grpc-status` (None: the stream ended without one, e.g. reset).
    pub status: Option<u32>,
    pub message: Option<String>,
    /// Length-prefixed messages each way, when every prefix was captured.
    pub sent: Option<u64>,
    pub received: Option<u64>,
}

/// Whether a `content-type` names gRPC (`application/grpc`, `+proto`, ...).
pub fn is_grpc(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    ct == "application/grpc"
        || ct.starts_with("application/grpc+")
        || ct.starts_with("application/grpc;")
}

/// `/package.Service/Method` -> (`package.Service`, `Method`).
pub fn split_path(path: &str) -> Option<(String, String)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service.to_string(), method.to_string()))
}

/// Counts gRPC messages in one direction of a stream: each is a 1-byte
/// compression flag, a 4-byte length and that many bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageCounter {
    count: u64,
    prefix: [u8; 5],
    have: u8,
    left: u64,
    lost: bool,
}

impl MessageCounter {
    pub fn bytes(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.lost {
            if self.left > 0 {
                let take = self.left.min(b.len() as u64);
                self.left -= take;
                b = &b[take as usize..];
                continue;
            }
            let take = (5 - self.have as usize).min(b.len());
            self.prefix[self.have as usize..self.have as usize + take].copy_from_slice(&b[..take]);
            self.have += take as u8;
            b = &b[take..];
            if self.have == 5 {
                self.have = 0;
                self.count += 1;
                self.left = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as u64;
            }
        }
    }

    /// Uncaptured bytes: harmless inside a message, fatal to the count if
    /// they may hold a prefix.
    pub fn lost(&mut self, n: u64) {
        if n <= self.left && self.have == 0 {
            self.left -= n;
        } else {
            self.lost = true;
        }
    }

    /// Padding or anything else that breaks the framing.
    pub fn give_up(&mut self) {
        self.lost = true;
    }

    pub fn count(&self) -> Option<u64> {
        (!self.lost && self.have == 0 && self.left == 0).then_some(self.count)
    }
}
