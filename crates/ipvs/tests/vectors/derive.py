#!/usr/bin/env python3
"""Derives the IPVS netlink test vectors from the kernel's uapi layout, independently of the
Rust encoder: every byte here comes from `struct nlmsghdr`, `struct genlmsghdr`,
`struct nlattr` (linux/netlink.h, linux/genetlink.h) and the IPVS enums and structs of
include/uapi/linux/ip_vs.h, written out with Python's `struct` module.

Run it from anywhere (`python3 derive.py`); it rewrites the *.hex files next to it. The
Rust tests (tests/vectors.rs) compare the encoder's output and the decoder's input with them.
Host-order fields are little-endian (x86-64, aarch64), as the kernel under test is.
"""

import ipaddress
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Fixed values of the vectors: a family id as the kernel might assign it (it is dynamic),
# the requests' sequence numbers, and the port id the kernel addresses its answers to.
FAMILY = 0x0022
PORT_ID = 4242

# linux/netlink.h
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
GENL_ID_CTRL = 0x10

# linux/genetlink.h
CTRL_CMD_NEWFAMILY, CTRL_CMD_GETFAMILY = 1, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION = 1, 2, 3
CTRL_ATTR_HDRSIZE, CTRL_ATTR_MAXATTR = 4, 5

# ip_vs.h: commands
(NEW_SERVICE, SET_SERVICE, DEL_SERVICE, GET_SERVICE,
 NEW_DEST, SET_DEST, DEL_DEST, GET_DEST) = range(1, 9)
SET_CONFIG, GET_CONFIG, FLUSH = 12, 13, 17
# first-level attributes
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
CMD_ATTR_TIMEOUT_TCP, CMD_ATTR_TIMEOUT_TCP_FIN, CMD_ATTR_TIMEOUT_UDP = 4, 5, 6
# service attributes
(SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK, SVC_SCHED_NAME, SVC_FLAGS,
 SVC_TIMEOUT, SVC_NETMASK, SVC_STATS, SVC_PE_NAME, SVC_STATS64) = range(1, 13)
# destination attributes
(D_ADDR, D_PORT, D_FWD, D_WEIGHT, D_U_THRESH, D_L_THRESH, D_ACTIVE, D_INACT, D_PERSIST,
 D_STATS, D_ADDR_FAMILY, D_STATS64, D_TUN_TYPE, D_TUN_PORT, D_TUN_FLAGS) = range(1, 16)

AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP = 6, 17, 132
F_PERSISTENT, F_HASHED, F_SCHED1, F_SCHED2 = 0x1, 0x2, 0x8, 0x10
FWD_MASQ, FWD_TUNNEL = 0, 2
TUN_GUE, TUN_F_CSUM = 1, 1


class Hex:
    """Bytes with a comment per piece, written as annotated hex."""

    def __init__(self):
        self.lines = []
        self.data = b""

    def add(self, data, comment, depth=0):
        self.lines.append(("  " * depth) + data.hex(" ") + "  # " + comment)
        self.data += data


def pad(b):
    return b + b"\0" * (-len(b) % 4)


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def be16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def inet(addr):
    """union nf_inet_addr: 16 bytes, IPv4 in the first four."""
    a = ipaddress.ip_address(addr)
    return a.packed + b"\0" * (16 - len(a.packed))


def attr(kind, value, name, depth):
    """One struct nlattr {u16 nla_len; u16 nla_type;} + value, padded to 4."""
    h = Hex()
    h.add(struct.pack("<HH", 4 + len(value), kind), f"nlattr len={4 + len(value)} {name}", depth)
    if value:
        h.add(pad(value), f"  value {value.hex()}", depth)
    return h


def nest(kind, children, name, depth, nested_flag=True):
    body = b"".join(c.data for c in children)
    t = kind | (NLA_F_NESTED if nested_flag else 0)
    h = Hex()
    h.add(struct.pack("<HH", 4 + len(body), t), f"nlattr len={4 + len(body)} {name} (nested)", depth)
    for c in children:
        h.lines += c.lines
        h.data += c.data
    return h


def message(msg_type, flags, seq, pid, cmd, version, attrs, what):
    """struct nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid;} + genlmsghdr."""
    body = b"".join(a.data for a in attrs)
    length = 16 + 4 + len(body)
    h = Hex()
    h.add(struct.pack("<IHHII", length, msg_type, flags, seq, pid),
          f"nlmsghdr len={length} type={msg_type:#x} flags={flags:#06x} seq={seq} pid={pid}  [{what}]")
    h.add(struct.pack("<BBH", cmd, version, 0), f"genlmsghdr cmd={cmd} version={version}")
    for a in attrs:
        h.lines += a.lines
        h.data += a.data
    return h


def ipvs(cmd, flags, seq, attrs, what, pid=0):
    return message(FAMILY, flags, seq, pid, cmd, 1, attrs, what)


REQ = NLM_F_REQUEST | NLM_F_ACK


# === services ===

def svc_key(proto, addr, port, depth):
    af = AF_INET6 if ":" in addr else AF_INET
    return [
        attr(SVC_AF, u16(af), f"IPVS_SVC_ATTR_AF {af}", depth),
        attr(SVC_PROTOCOL, u16(proto), f"IPVS_SVC_ATTR_PROTOCOL {proto}", depth),
        attr(SVC_ADDR, inet(addr), f"IPVS_SVC_ATTR_ADDR {addr}", depth),
        attr(SVC_PORT, be16(port), f"IPVS_SVC_ATTR_PORT {port} (network order)", depth),
    ]


def netmask(af, prefix):
    if af == AF_INET:
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        return struct.pack(">I", mask)  # __be32 mask
    return u32(prefix)  # IPv6: prefix length, host order


def svc_full(proto, addr, port, sched, flags, timeout, prefix, depth, nested_flag=True):
    af = AF_INET6 if ":" in addr else AF_INET
    if prefix is None:
        prefix = 128 if af == AF_INET6 else 32
    children = svc_key(proto, addr, port, depth + 1) + [
        attr(SVC_SCHED_NAME, sched.encode() + b"\0", f"IPVS_SVC_ATTR_SCHED_NAME {sched!r}", depth + 1),
        attr(SVC_FLAGS, u32(flags) + u32(0xFFFFFFFF),
             f"IPVS_SVC_ATTR_FLAGS {{flags={flags:#x}, mask=0xffffffff}}", depth + 1),
        attr(SVC_TIMEOUT, u32(timeout), f"IPVS_SVC_ATTR_TIMEOUT {timeout}", depth + 1),
        attr(SVC_NETMASK, netmask(af, prefix), f"IPVS_SVC_ATTR_NETMASK /{prefix}", depth + 1),
    ]
    return nest(CMD_ATTR_SERVICE, children, "IPVS_CMD_ATTR_SERVICE", depth, nested_flag)


def svc_key_nest(proto, addr, port, depth=0):
    return nest(CMD_ATTR_SERVICE, svc_key(proto, addr, port, depth + 1), "IPVS_CMD_ATTR_SERVICE", depth)


# === destinations ===

def dest_key(addr, port, depth):
    af = AF_INET6 if ":" in addr else AF_INET
    return [
        attr(D_ADDR_FAMILY, u16(af), f"IPVS_DEST_ATTR_ADDR_FAMILY {af}", depth),
        attr(D_ADDR, inet(addr), f"IPVS_DEST_ATTR_ADDR {addr}", depth),
        attr(D_PORT, be16(port), f"IPVS_DEST_ATTR_PORT {port} (network order)", depth),
    ]


def dest_full(addr, port, fwd, weight, tunnel=None, depth=0):
    children = dest_key(addr, port, depth + 1) + [
        attr(D_FWD, u32(fwd), f"IPVS_DEST_ATTR_FWD_METHOD {fwd}", depth + 1),
        attr(D_WEIGHT, u32(weight), f"IPVS_DEST_ATTR_WEIGHT {weight}", depth + 1),
        attr(D_U_THRESH, u32(0), "IPVS_DEST_ATTR_U_THRESH 0", depth + 1),
        attr(D_L_THRESH, u32(0), "IPVS_DEST_ATTR_L_THRESH 0", depth + 1),
    ]
    if tunnel:
        kind, tport, tflags = tunnel
        children += [
            attr(D_TUN_TYPE, u8(kind), f"IPVS_DEST_ATTR_TUN_TYPE {kind}", depth + 1),
            attr(D_TUN_PORT, be16(tport), f"IPVS_DEST_ATTR_TUN_PORT {tport} (network order)", depth + 1),
            attr(D_TUN_FLAGS, u16(tflags), f"IPVS_DEST_ATTR_TUN_FLAGS {tflags}", depth + 1),
        ]
    return nest(CMD_ATTR_DEST, children, "IPVS_CMD_ATTR_DEST", depth)


# === kernel replies ===

def stats(kind, counters, depth, wide):
    """ip_vs_genl_fill_stats (u32 counters, u64 bytes) or _stats64 (all u64); no PAD on x86-64."""
    names = ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS"]
    children = []
    for i, (n, v) in enumerate(zip(names, counters), start=1):
        is64 = wide or n in ("INBYTES", "OUTBYTES")
        children.append(attr(i, u64(v) if is64 else u32(v), f"IPVS_STATS_ATTR_{n} {v}", depth + 1))
    name = "STATS64" if wide else "STATS"
    return nest(kind, children, f"IPVS_*_ATTR_{name}", depth, nested_flag=False)


def kernel_service(proto, addr, port, sched, flags, timeout, prefix, counters):
    """ip_vs_genl_fill_service: AF, PROTOCOL, ADDR, PORT, SCHED_NAME, FLAGS (mask ~0),
    TIMEOUT, NETMASK, STATS, STATS64; nests without NLA_F_NESTED (nla_nest_start_noflag)."""
    af = AF_INET6 if ":" in addr else AF_INET
    children = svc_key(proto, addr, port, 1) + [
        attr(SVC_SCHED_NAME, sched.encode() + b"\0", f"IPVS_SVC_ATTR_SCHED_NAME {sched!r}", 1),
        attr(SVC_FLAGS, u32(flags) + u32(0xFFFFFFFF), f"IPVS_SVC_ATTR_FLAGS {{flags={flags:#x}, mask=0xffffffff}}", 1),
        attr(SVC_TIMEOUT, u32(timeout), f"IPVS_SVC_ATTR_TIMEOUT {timeout}", 1),
        attr(SVC_NETMASK, netmask(af, prefix), f"IPVS_SVC_ATTR_NETMASK /{prefix}", 1),
        stats(SVC_STATS, counters, 1, wide=False),
        stats(SVC_STATS64, counters, 1, wide=True),
    ]
    return nest(CMD_ATTR_SERVICE, children, "IPVS_CMD_ATTR_SERVICE", 0, nested_flag=False)


def kernel_dest(addr, port, weight, active, inact, persist, counters):
    """ip_vs_genl_fill_dest: ADDR, PORT, FWD_METHOD, WEIGHT, TUN_TYPE, TUN_PORT, TUN_FLAGS,
    U_THRESH, L_THRESH, ACTIVE_CONNS, INACT_CONNS, PERSIST_CONNS, ADDR_FAMILY, STATS, STATS64."""
    af = AF_INET6 if ":" in addr else AF_INET
    children = [
        attr(D_ADDR, inet(addr), f"IPVS_DEST_ATTR_ADDR {addr}", 1),
        attr(D_PORT, be16(port), f"IPVS_DEST_ATTR_PORT {port}", 1),
        attr(D_FWD, u32(FWD_MASQ), "IPVS_DEST_ATTR_FWD_METHOD 0 (masq)", 1),
        attr(D_WEIGHT, u32(weight), f"IPVS_DEST_ATTR_WEIGHT {weight}", 1),
        attr(D_TUN_TYPE, u8(0), "IPVS_DEST_ATTR_TUN_TYPE 0", 1),
        attr(D_TUN_PORT, be16(0), "IPVS_DEST_ATTR_TUN_PORT 0", 1),
        attr(D_TUN_FLAGS, u16(0), "IPVS_DEST_ATTR_TUN_FLAGS 0", 1),
        attr(D_U_THRESH, u32(0), "IPVS_DEST_ATTR_U_THRESH 0", 1),
        attr(D_L_THRESH, u32(0), "IPVS_DEST_ATTR_L_THRESH 0", 1),
        attr(D_ACTIVE, u32(active), f"IPVS_DEST_ATTR_ACTIVE_CONNS {active}", 1),
        attr(D_INACT, u32(inact), f"IPVS_DEST_ATTR_INACT_CONNS {inact}", 1),
        attr(D_PERSIST, u32(persist), f"IPVS_DEST_ATTR_PERSIST_CONNS {persist}", 1),
        attr(D_ADDR_FAMILY, u16(af), f"IPVS_DEST_ATTR_ADDR_FAMILY {af}", 1),
        stats(D_STATS, counters, 1, wide=False),
        stats(D_STATS64, counters, 1, wide=True),
    ]
    return nest(CMD_ATTR_DEST, children, "IPVS_CMD_ATTR_DEST", 0, nested_flag=False)


def done(seq):
    h = Hex()
    h.add(struct.pack("<IHHII", 20, NLMSG_DONE, NLM_F_MULTI, seq, PORT_ID),
          f"nlmsghdr len=20 type=NLMSG_DONE flags=NLM_F_MULTI seq={seq} pid={PORT_ID}")
    h.add(struct.pack("<i", 0), "int 0 (dump_done_errno)")
    return h


def error(errno, request, capped):
    """netlink_ack: struct nlmsgerr {int error; struct nlmsghdr msg;} + the request's payload
    unless NETLINK_CAP_ACK (then NLM_F_CAPPED); an ack (error 0) is always capped."""
    req_len, _, _, seq, _ = struct.unpack_from("<IHHII", request)
    echoed = request[:16] if capped else request[:req_len]
    length = 16 + 4 + len(echoed)
    flags = NLM_F_CAPPED if capped else 0
    h = Hex()
    h.add(struct.pack("<IHHII", length, NLMSG_ERROR, flags, seq, PORT_ID),
          f"nlmsghdr len={length} type=NLMSG_ERROR flags={flags:#06x} seq={seq} pid={PORT_ID}")
    h.add(struct.pack("<i", -errno), f"error -{errno}")
    h.add(echoed[:16], "the request's nlmsghdr")
    if len(echoed) > 16:
        h.add(echoed[16:], "the request's payload")
    return h


def concat(*parts):
    h = Hex()
    for p in parts:
        h.lines += p.lines
        h.data += p.data
    return h


def write(name, h, title):
    with open(os.path.join(HERE, name + ".hex"), "w") as f:
        f.write(f"# {title}\n# {len(h.data)} bytes; derived by derive.py from the uapi layout\n")
        for line in h.lines:
            f.write(line + "\n")


def main():
    v = {}

    # --- family resolution ---
    v["family_request"] = (message(GENL_ID_CTRL, REQ, 1, 0, CTRL_CMD_GETFAMILY, 2, [
        attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0", "CTRL_ATTR_FAMILY_NAME 'IPVS'", 0),
    ], "CTRL_CMD_GETFAMILY"), "resolve the IPVS family id (genl controller, version 2 as netlink-packet-generic sends)")
    v["reply_family"] = (concat(
        message(GENL_ID_CTRL, 0, 1, PORT_ID, CTRL_CMD_NEWFAMILY, 2, [
            attr(CTRL_ATTR_FAMILY_ID, u16(FAMILY), f"CTRL_ATTR_FAMILY_ID {FAMILY:#x}", 0),
            attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0", "CTRL_ATTR_FAMILY_NAME 'IPVS'", 0),
            attr(CTRL_ATTR_VERSION, u32(1), "CTRL_ATTR_VERSION 1", 0),
            attr(CTRL_ATTR_HDRSIZE, u32(0), "CTRL_ATTR_HDRSIZE 0", 0),
            attr(CTRL_ATTR_MAXATTR, u32(6), "CTRL_ATTR_MAXATTR 6", 0),
        ], "CTRL_CMD_NEWFAMILY"),
        error(0, v["family_request"][0].data, capped=True),
    ), "the controller's answer (ops, policy and mcast attributes left out) and its ack")

    # --- services ---
    v["new_service_tcp4_rr"] = (ipvs(NEW_SERVICE, REQ, 1, [
        svc_full(IPPROTO_TCP, "10.96.0.10", 80, "rr", 0, 0, None, 0),
    ], "IPVS_CMD_NEW_SERVICE"), "ipvsadm -A -t 10.96.0.10:80 -s rr")
    v["new_service_udp6_persistent"] = (ipvs(NEW_SERVICE, REQ, 2, [
        svc_full(IPPROTO_UDP, "fd00::10", 53, "rr", F_PERSISTENT, 10800, 128, 0),
    ], "IPVS_CMD_NEW_SERVICE"), "ipvsadm -A -u [fd00::10]:53 -s rr -p 10800 (ClientIP affinity)")
    v["new_service_sctp4_sh"] = (ipvs(NEW_SERVICE, REQ, 3, [
        svc_full(IPPROTO_SCTP, "10.96.0.20", 9000, "sh", F_SCHED1 | F_SCHED2, 0, None, 0),
    ], "IPVS_CMD_NEW_SERVICE"), "ipvsadm -A --sctp-service 10.96.0.20:9000 -s sh -b sh-fallback,sh-port")
    v["new_service_fwmark"] = (ipvs(NEW_SERVICE, REQ, 4, [
        nest(CMD_ATTR_SERVICE, [
            attr(SVC_AF, u16(AF_INET), "IPVS_SVC_ATTR_AF 2", 1),
            attr(SVC_FWMARK, u32(7), "IPVS_SVC_ATTR_FWMARK 7", 1),
            attr(SVC_SCHED_NAME, b"wlc\0", "IPVS_SVC_ATTR_SCHED_NAME 'wlc'", 1),
            attr(SVC_FLAGS, u32(0) + u32(0xFFFFFFFF), "IPVS_SVC_ATTR_FLAGS {flags=0, mask=0xffffffff}", 1),
            attr(SVC_TIMEOUT, u32(0), "IPVS_SVC_ATTR_TIMEOUT 0", 1),
            attr(SVC_NETMASK, netmask(AF_INET, 32), "IPVS_SVC_ATTR_NETMASK /32", 1),
        ], "IPVS_CMD_ATTR_SERVICE", 0),
    ], "IPVS_CMD_NEW_SERVICE"), "ipvsadm -A -f 7 -s wlc")
    v["set_service_tcp4_wrr_persistent"] = (ipvs(SET_SERVICE, REQ, 5, [
        svc_full(IPPROTO_TCP, "10.96.0.10", 80, "wrr", F_PERSISTENT, 300, 24, 0),
    ], "IPVS_CMD_SET_SERVICE"), "ipvsadm -E -t 10.96.0.10:80 -s wrr -p 300 -M 255.255.255.0")
    v["del_service_tcp4"] = (ipvs(DEL_SERVICE, REQ, 6, [
        svc_key_nest(IPPROTO_TCP, "10.96.0.10", 80),
    ], "IPVS_CMD_DEL_SERVICE"), "ipvsadm -D -t 10.96.0.10:80 (identifying attributes only)")

    # --- destinations ---
    v["new_dest_masq"] = (ipvs(NEW_DEST, REQ, 7, [
        svc_key_nest(IPPROTO_TCP, "10.96.0.10", 80),
        dest_full("10.244.1.5", 8080, FWD_MASQ, 1),
    ], "IPVS_CMD_NEW_DEST"), "ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1")
    v["set_dest_weight0"] = (ipvs(SET_DEST, REQ, 8, [
        svc_key_nest(IPPROTO_TCP, "10.96.0.10", 80),
        dest_full("10.244.1.5", 8080, FWD_MASQ, 0),
    ], "IPVS_CMD_SET_DEST"), "ipvsadm -e -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 0 (graceful termination)")
    v["del_dest"] = (ipvs(DEL_DEST, REQ, 9, [
        svc_key_nest(IPPROTO_TCP, "10.96.0.10", 80),
        nest(CMD_ATTR_DEST, dest_key("10.244.1.5", 8080, 1), "IPVS_CMD_ATTR_DEST", 0),
    ], "IPVS_CMD_DEL_DEST"), "ipvsadm -d -t 10.96.0.10:80 -r 10.244.1.5:8080")
    v["new_dest_v6_tunnel_gue"] = (ipvs(NEW_DEST, REQ, 10, [
        svc_key_nest(IPPROTO_UDP, "fd00::10", 53),
        dest_full("fd00:244::7", 53, FWD_TUNNEL, 3, tunnel=(TUN_GUE, 6080, TUN_F_CSUM)),
    ], "IPVS_CMD_NEW_DEST"), "ipvsadm -a -u [fd00::10]:53 -r [fd00:244::7]:53 -i --tun-type gue --tun-port 6080 --tun-csum -w 3")

    # --- dumps, config, flush ---
    v["get_services_dump"] = (ipvs(GET_SERVICE, REQ | NLM_F_DUMP, 11, [], "IPVS_CMD_GET_SERVICE"),
                              "ipvsadm -Ln (service dump, no attributes)")
    v["get_dests_dump"] = (ipvs(GET_DEST, REQ | NLM_F_DUMP, 12, [
        svc_key_nest(IPPROTO_TCP, "10.96.0.10", 80),
    ], "IPVS_CMD_GET_DEST"), "destinations of tcp 10.96.0.10:80 (dump)")
    v["get_config"] = (ipvs(GET_CONFIG, REQ, 13, [], "IPVS_CMD_GET_CONFIG"), "ipvsadm -L --timeout")
    v["set_config"] = (ipvs(SET_CONFIG, REQ, 14, [
        attr(CMD_ATTR_TIMEOUT_TCP, u32(900), "IPVS_CMD_ATTR_TIMEOUT_TCP 900", 0),
        attr(CMD_ATTR_TIMEOUT_TCP_FIN, u32(120), "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN 120", 0),
        attr(CMD_ATTR_TIMEOUT_UDP, u32(300), "IPVS_CMD_ATTR_TIMEOUT_UDP 300", 0),
    ], "IPVS_CMD_SET_CONFIG"), "ipvsadm --set 900 120 300")
    v["flush"] = (ipvs(FLUSH, REQ, 15, [], "IPVS_CMD_FLUSH"), "ipvsadm -C")

    # --- the kernel's answers ---
    v["reply_services_dump"] = (concat(
        ipvs(NEW_SERVICE, NLM_F_MULTI, 11, [
            kernel_service(IPPROTO_TCP, "10.96.0.10", 80, "rr", F_HASHED, 0, 32,
                           [5, 50, 40, 3000, 2000, 0, 0, 0, 0, 0]),
        ], "IPVS_CMD_NEW_SERVICE", pid=PORT_ID),
        ipvs(NEW_SERVICE, NLM_F_MULTI, 11, [
            kernel_service(IPPROTO_UDP, "fd00::10", 53, "rr", F_HASHED | F_PERSISTENT, 10800, 128,
                           [1, 2, 2, 120, 240, 0, 0, 0, 0, 0]),
        ], "IPVS_CMD_NEW_SERVICE", pid=PORT_ID),
        done(11),
    ), "answer to get_services_dump: two services, then NLMSG_DONE")
    v["reply_dests_dump"] = (concat(
        ipvs(NEW_DEST, NLM_F_MULTI, 12, [
            kernel_dest("10.244.1.5", 8080, 1, 3, 1, 0, [4, 40, 30, 2000, 1500, 1, 2, 3, 4, 5]),
        ], "IPVS_CMD_NEW_DEST", pid=PORT_ID),
        ipvs(NEW_DEST, NLM_F_MULTI, 12, [
            kernel_dest("10.244.2.9", 8080, 0, 1, 0, 0, [1, 10, 10, 500, 700, 0, 0, 0, 0, 0]),
        ], "IPVS_CMD_NEW_DEST", pid=PORT_ID),
        done(12),
    ), "answer to get_dests_dump: one live and one quiesced (weight 0) real server, then NLMSG_DONE")
    v["reply_config"] = (concat(
        ipvs(SET_CONFIG, 0, 13, [
            attr(CMD_ATTR_TIMEOUT_TCP, u32(900), "IPVS_CMD_ATTR_TIMEOUT_TCP 900", 0),
            attr(CMD_ATTR_TIMEOUT_TCP_FIN, u32(120), "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN 120", 0),
            attr(CMD_ATTR_TIMEOUT_UDP, u32(300), "IPVS_CMD_ATTR_TIMEOUT_UDP 300", 0),
        ], "IPVS_CMD_SET_CONFIG (reply)", pid=PORT_ID),
        error(0, v["get_config"][0].data, capped=True),
    ), "answer to get_config: the timeouts, then the ack")
    v["reply_ack"] = (error(0, v["new_dest_masq"][0].data, capped=True), "ack of new_dest_masq")
    v["reply_error_eexist"] = (error(17, v["new_service_tcp4_rr"][0].data, capped=True),
                               "EEXIST for new_service_tcp4_rr, with NETLINK_CAP_ACK (header only)")
    v["reply_error_esrch"] = (error(3, v["del_service_tcp4"][0].data, capped=False),
                              "ESRCH for del_service_tcp4, without NETLINK_CAP_ACK (whole request echoed)")
    v["reply_error_enoent"] = (error(2, v["del_dest"][0].data, capped=True),
                               "ENOENT for del_dest (no such real server)")

    for name, (h, title) in v.items():
        write(name, h, title)


if __name__ == "__main__":
    main()
