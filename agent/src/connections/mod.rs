//! Stage 3: the connection table. Maps (pid, fd) to a connection with its
//! tuple, role, process and container, and turns kernel records into an
//! ordered stream of open / data / close events per connection.
pub mod cgroup;
pub mod pipes;
pub mod process;
pub mod procnet;
pub mod table;

pub use table::{ConnInfo, ConnTable, StreamEvent};
