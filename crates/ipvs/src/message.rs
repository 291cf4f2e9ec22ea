//! The IPVS generic netlink message: a command and its first-level attributes, the payload
//! of a [`GenlMessage`](netlink_packet_generic::GenlMessage) whose family is `"IPVS"`,
//! version 1 (`IPVS_GENL_NAME`, `IPVS_GENL_VERSION`). The family id is assigned by the
//! kernel when `ip_vs` loads; resolve it with [`crate::request::family_request`].

use netlink_packet_core::{DecodeError, Emitable, ErrorContext, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::nla::CmdAttr;

/// `IPVS_GENL_NAME`.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const FAMILY_VERSION: u8 = 1;

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Command {
    /// `IPVS_CMD_NEW_SERVICE` (1); also the command of every service in a reply.
    NewService,
    /// `IPVS_CMD_SET_SERVICE` (2).
    SetService,
    /// `IPVS_CMD_DEL_SERVICE` (3).
    DelService,
    /// `IPVS_CMD_GET_SERVICE` (4): one service (doit) or all (dump).
    GetService,
    /// `IPVS_CMD_NEW_DEST` (5); also the command of every destination in a dump.
    NewDest,
    /// `IPVS_CMD_SET_DEST` (6).
    SetDest,
    /// `IPVS_CMD_DEL_DEST` (7).
    DelDest,
    /// `IPVS_CMD_GET_DEST` (8): dump only.
    GetDest,
    /// `IPVS_CMD_SET_CONFIG` (12); also the command of the `GET_CONFIG` reply.
    SetConfig,
    /// `IPVS_CMD_GET_CONFIG` (13).
    GetConfig,
    /// `IPVS_CMD_FLUSH` (17): deletes every service and destination of the namespace.
    Flush,
    /// Any other command (sync daemon 9–11, `SET_INFO` 14, `GET_INFO` 15, `ZERO` 16).
    Other(u8),
}

impl Command {
    /// The command number.
    pub fn number(self) -> u8 {
        match self {
            Command::NewService => 1,
            Command::SetService => 2,
            Command::DelService => 3,
            Command::GetService => 4,
            Command::NewDest => 5,
            Command::SetDest => 6,
            Command::DelDest => 7,
            Command::GetDest => 8,
            Command::SetConfig => 12,
            Command::GetConfig => 13,
            Command::Flush => 17,
            Command::Other(n) => n,
        }
    }

    /// The command of a number.
    pub fn from_number(n: u8) -> Command {
        match n {
            1 => Command::NewService,
            2 => Command::SetService,
            3 => Command::DelService,
            4 => Command::GetService,
            5 => Command::NewDest,
            6 => Command::SetDest,
            7 => Command::DelDest,
            8 => Command::GetDest,
            12 => Command::SetConfig,
            13 => Command::GetConfig,
            17 => Command::Flush,
            n => Command::Other(n),
        }
    }

    /// The `ipvsadm`-like name used in errors (`"add service"`, `"delete destination"`…).
    pub fn describe(self) -> &'static str {
        match self {
            Command::NewService => "add service",
            Command::SetService => "edit service",
            Command::DelService => "delete service",
            Command::GetService => "get service",
            Command::NewDest => "add destination",
            Command::SetDest => "edit destination",
            Command::DelDest => "delete destination",
            Command::GetDest => "list destinations",
            Command::SetConfig => "set timeouts",
            Command::GetConfig => "get timeouts",
            Command::Flush => "flush",
            Command::Other(_) => "IPVS command",
        }
    }
}

/// An IPVS message: the payload after the generic netlink header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command (`genlmsghdr.cmd`).
    pub command: Command,
    /// First-level attributes, in order.
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.command.number()
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let command = Command::from_number(header.cmd);
        Ok(IpvsMessage {
            command,
            attrs: CmdAttr::parse_all(buf)
                .with_context(|| format!("parsing IPVS {} message", command.describe()))?,
        })
    }
}
