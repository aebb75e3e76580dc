"""Rebuild the fuzz seed corpus (tests/fuzz/corpus/) deterministically.

    .venv/bin/python -m tests.fuzz.build_corpus

Sources: the project's own captures (pcaps/), excerpts of the reference captures in
../shared/data/pcaps (the first packets of a few flows of each kind), conversations
reassembled from them, conversations and datagrams of the later app-layer parsers
(MQTT, SIP, Kerberos, SNMP, NFS, QUIC) from suricata-verify's captures in
../shared/data/suricata-verify, a deterministic sample of ET Open rule lines, the bundled policy
files, and hand-written seeds for what those lack (hostile HTTP headers, DNS compression
loops, control messages). The files are committed: CI needs neither ../shared nor this
script. Rerunning it rewrites the same bytes; regression cases (`crash-*`) that the
harness added are kept.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from appliance.core.decode import Decoder
from appliance.io.pcap import PcapReader
from tests.core.app import tcp_flows, udp_payloads
from tests.fuzz.corpus_io import CORPUS, Chunk, Frame, write_conv, write_pcap, write_pcapng

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
MAX_SEED = 16 * 1024  # bytes per seed file: small seeds mutate into more varied inputs


def _frames(path: Path) -> list[Frame]:
    with PcapReader(path) as r:
        return [(p.linktype, p.ts, bytes(p.data)) for p in r]


def _flows_excerpt(path: Path, want: dict[int, int], per_flow: int,
                   max_bytes: int = MAX_SEED) -> list[list[Frame]]:
    """For each destination port in `want`, the first want[port] flows to it: their
    first `per_flow` packets (fragments and flowless packets skipped)."""
    d = Decoder()
    flows: dict[tuple[object, ...], list[Frame]] = {}
    taken: dict[int, int] = {}
    order: list[tuple[object, ...]] = []
    for lt, ts, data in _frames(path):
        p = d.decode(data, lt, ts)
        if not p.ipver or p.frag is not None:
            continue
        a, b = (p.src, p.sp), (p.dst, p.dp)
        key = (p.proto, *min(a, b), *max(a, b))
        if key not in flows:
            port = p.dp if p.dp in want else p.sp if p.sp in want else None
            if port is None or taken.get(port, 0) >= want[port]:
                continue
            taken[port] = taken.get(port, 0) + 1
            flows[key] = []
            order.append(key)
        fr = flows[key]
        if len(fr) < per_flow and sum(len(x[2]) for x in fr) + len(data) <= max_bytes:
            fr.append((lt, ts, data))
    return [flows[k] for k in order if flows[k]]


def _conv_limit(chunks: list[Chunk], limit: int = MAX_SEED) -> list[Chunk]:
    out: list[Chunk] = []
    total = 0
    for ts, data in chunks:
        if total + len(data) > limit:
            data = data[:max(0, limit - total)]
        if data:
            out.append((ts, data))
            total += len(data)
        if total >= limit:
            break
    return out


def build_packets(out: Path) -> None:
    n = 0
    for path in sorted((ROOT / "pcaps").rglob("*.pcap")):
        frames = _frames(path)
        # one file per capture, at most 48 packets, one link type
        frames = [f for f in frames if f[0] == frames[0][0]][:48] if frames else []
        if frames and sum(len(f[2]) for f in frames) <= 4 * MAX_SEED:
            rel = path.relative_to(ROOT / "pcaps").with_suffix("")
            write_pcap(out / f"local-{str(rel).replace('/', '-')}.pcap", frames)
            n += 1
    if SHARED.exists():
        ports = {80: 3, 443: 2, 53: 2, 22: 1, 25: 1, 8080: 1, 123: 1, 5353: 1}
        for name in ("http-packets", "tls2", "netflix", "ndpi-mixed"):
            for i, flow in enumerate(_flows_excerpt(SHARED / "pcaps" / f"{name}.pcap",
                                                    ports, per_flow=24)):
                write_pcap(out / f"shared-{name}-{i:02d}.pcap", flow)
                n += 1
        # fragments: the first datagrams of ip-frag, whole
        frames = _frames(SHARED / "pcaps" / "ip-frag.pcap")[:40]
        write_pcap(out / "shared-ip-frag-00.pcap", frames)
        n += 1
    print(f"packets: {n} files")


def build_conversations(out: Path) -> None:
    import dpkt  # noqa: F401  (tcp_flows needs it)

    from appliance.core.app.detect import ProtoDetector

    counts = {"http": 0, "http2": 0, "tls": 0, "dns": 0}
    limits = {"http": 8, "tls": 6}
    if SHARED.exists():
        for name in ("http-packets", "netflix", "tls2", "ndpi-mixed"):
            for f in tcp_flows(SHARED / "pcaps" / f"{name}.pcap"):
                det = ProtoDetector(f.client[1], f.server[1])
                proto = None
                for ts, data in f.chunks:
                    proto = det.feed(data, ts)
                    if proto is not None:
                        break
                if proto not in limits or counts[proto] >= limits[proto]:
                    continue
                write_conv(out / proto / f"shared-{name}-{counts[proto]:02d}.conv",
                           _conv_limit(f.chunks))
                counts[proto] += 1
        dns: list[Chunk] = []
        for name in ("netflix", "ndpi-mixed"):
            for sport, dport, payload in udp_payloads(SHARED / "pcaps" / f"{name}.pcap"):
                if 53 in (sport, dport) and len(dns) < 40:
                    dns.append((dport == 53, payload))
        for i in range(0, len(dns), 8):
            write_conv(out / "dns" / f"shared-{i // 8:02d}.conv", dns[i:i + 8])
            counts["dns"] += 1
    for proto, seeds in HAND_CONVS.items():
        for i, chunks in enumerate(seeds):
            write_conv(out / proto / f"hand-{i:02d}.conv", chunks)
            counts[proto] += 1
    print(f"conversations: {counts}")


SV = SHARED / "suricata-verify" / "tests"


def _udp_flows(path: Path, port: int) -> list[list[Chunk]]:
    """The datagrams of each UDP flow with `port` on either side, in capture order,
    oriented as the engine orients a flow: the first datagram's sender is the client."""
    import dpkt

    from tests.core.app import _iter_ip

    flows: dict[tuple[bytes, int, bytes, int], list[Chunk]] = {}
    for ip in _iter_ip(path):
        u = ip.data
        if not isinstance(u, dpkt.udp.UDP) or port not in (u.sport, u.dport) or not u.data:
            continue
        fwd = (bytes(ip.src), u.sport, bytes(ip.dst), u.dport)
        rev = (fwd[2], fwd[3], fwd[0], fwd[1])
        if rev in flows:
            flows[rev].append((False, bytes(u.data)))
        else:
            flows.setdefault(fwd, []).append((True, bytes(u.data)))
    return list(flows.values())


def _windows(chunks: list[Chunk], size: int) -> list[list[Chunk]]:
    """Consecutive runs of `size` datagrams, each within MAX_SEED bytes."""
    return [_conv_limit(chunks[i:i + size]) for i in range(0, len(chunks), size)]


def _krb5_messages(chunks: list[Chunk]) -> list[Chunk]:
    """A Kerberos-over-TCP conversation as its messages (each record without its 4-byte
    length, RFC 4120 7.2.2): the same bytes a KDC exchanges over UDP."""
    bufs = {True: b"", False: b""}
    out: list[Chunk] = []
    for ts, data in chunks:
        bufs[ts] += data
        while len(bufs[ts]) >= 4:
            n = struct.unpack_from("!I", bufs[ts])[0]
            if len(bufs[ts]) < 4 + n:
                break
            out.append((ts, bufs[ts][4:4 + n]))
            bufs[ts] = bufs[ts][4 + n:]
    return out


def _quic_plaintexts(chunks: list[Chunk]) -> list[Chunk]:
    """The decrypted payloads (frames) of a QUIC flow's Initial packets, per direction,
    as the parser itself decrypts them: seeds for its frame and CRYPTO reassembly code,
    which mutated ciphertext never reaches (the AEAD rejects it)."""
    from appliance.core.app.quic import QuicParser

    got: list[Chunk] = []

    class Tap(QuicParser):
        def _frames(self, plain: bytes, side: object) -> None:
            got.append((side is self._sides[1], bytes(plain)))
            super()._frames(plain, side)  # type: ignore[arg-type]

    p = Tap()
    for ts, data in chunks:
        p.parse_datagram(data, ts)
    return got


def build_app_conversations(out: Path) -> None:
    """Seeds of the parsers added after the first targets, from suricata-verify's
    captures (and the shared ndpi-mixed capture for QUIC): MQTT and Kerberos over TCP
    (reassembled), SIP, SNMP, NFS, QUIC and Kerberos datagrams (one chunk each)."""
    counts = dict.fromkeys(("mqtt", "sip", "krb5", "snmp", "nfs", "quic"), 0)

    def write(proto: str, name: str, chunks: list[Chunk]) -> None:
        if chunks:
            write_conv(out / proto / f"{name}.conv", chunks)
            counts[proto] += 1

    if not SV.exists():
        print("app conversations: ../shared/data/suricata-verify missing, kept as they are")
        return
    for test in ("mqtt-connect-rules", "mqtt-events-missing-connect",
                 "mqtt-events-unassigned-msgtype", "mqtt-events-unintroduced",
                 "mqtt5-excessiveproplen"):
        for i, pcap in enumerate(sorted((SV / test).glob("*.pcap"))):
            for j, f in enumerate(tcp_flows(pcap)):
                if 1883 not in (f.server[1], f.client[1]):
                    continue
                flip = f.client[1] == 1883  # picked up midstream, oriented the wrong way
                chunks = [(ts != flip, d) for ts, d in f.chunks]
                write("mqtt", f"sv-{test}-{i}{j:02d}", _conv_limit(chunks))
    krb_tcp: list[list[Chunk]] = []
    for test in ("bug-8278-krb5-03", "krb5-kerberoasting", "krb5-krb5_msg_type"):
        for pcap in sorted((SV / test).glob("*.pcap")):
            krb_tcp += [f.chunks for f in tcp_flows(pcap) if f.server[1] == 88 and f.chunks]
    for i, chunks in enumerate(krb_tcp):
        write("krb5", f"sv-tcp-{i:02d}", _conv_limit(chunks))
        write("krb5", f"sv-udp-{i:02d}", _conv_limit(_krb5_messages(chunks)))
    sip: list[Chunk] = []
    for test in ("sip-body-frames", "sip-compact-form", "sip-method"):
        for pcap in sorted((SV / test).glob("*.pcap")):
            for flow in _udp_flows(pcap, 5060):
                sip += flow
    for i, chunks in enumerate(_windows(sip, 8)[:8]):
        write("sip", f"sv-{i:02d}", chunks)
    for test in ("snmp-v2c-get", "snmp-v3-encrypted", "snmp-v3-unauth"):
        for pcap in sorted((SV / test).glob("*.pcap")):
            for i, flow in enumerate(_udp_flows(pcap, 161)):
                write("snmp", f"sv-{test}-{i}", _conv_limit(flow))
    for test in ("issue-3277-nfsv2-filestore", "nfs3-01"):
        for pcap in sorted((SV / test).glob("*.pcap")):
            for j, flow in enumerate(_udp_flows(pcap, 2049)):
                for i, chunks in enumerate(_windows(flow, 8)[:5]):
                    write("nfs", f"sv-{test}-{j}{i}", chunks)
    quic = [f for f in _udp_flows(SV / "quic-ietf-ja3" / "input.pcap", 443)]
    if (SHARED / "pcaps" / "ndpi-mixed.pcap").exists():
        from appliance.core.app.quic import looks_like_quic

        ndpi = [f for f in _udp_flows(SHARED / "pcaps" / "ndpi-mixed.pcap", 443)
                if looks_like_quic(f[0][1], 1, 443)]
        # two flows the parser decrypts (IETF versions), one it only names (gQUIC...)
        quic += [f for f in ndpi if _quic_plaintexts(f)][:2]
        quic += [f for f in ndpi if not _quic_plaintexts(f)][:1]
    for i, flow in enumerate(quic):
        write("quic", f"sv-{i:02d}", _conv_limit(flow[:8]))
        write("quic", f"plain-{i:02d}", _conv_limit(_quic_plaintexts(flow)))
    print(f"app conversations: {counts}")


def build_unit_conversations(out: Path) -> None:
    """Seeds built with the parsers' unit-test helpers (tests/core/app/test_*.py) for
    what the captures never reach: MQTT 5 properties and QoS 2,
    NFSv3 WRITE files and the open-file bound, QUIC CRYPTO frames out of order, ACK and
    PING frames (as datagrams and as the plaintext the parser decrypts)."""
    from appliance.core.app.nfs import MAX_FILES
    from tests.core.app import test_mqtt as m
    from tests.core.app import test_nfs as n
    from tests.core.app import test_quic as q

    props = b"\x11" + struct.pack("!I", 60) + b"\x26" + m.s(b"k") + m.s(b"v")
    mqtt = [
        [(True, m.connect(level=5, props=props, will=(b"wt", b"wm"), user=b"u")),
         (False, m.msg(0x20, b"\x00\x00\x03\x22\x00\x0a")),
         (True, m.publish(b"t", b"hello", qos=2, mid=7, v5=True)),
         (False, m.ack(0x50, 7, b"\x00\x00")), (True, m.ack(0x62, 7)),
         (False, m.ack(0x70, 7)), (True, m.msg(0x82, b"\x00\x09\x00" + m.s(b"a/#") + b"\x01" + m.s(b"b/+") + b"\x02")),
         (False, m.ack(0x90, 9, b"\x00\x01")), (True, m.msg(0xE0, b"\x00\x00"))],
        # (MAX_OPEN_TX is left to test_mqtt.py: a seed of 1,000 waiting PUBLISHes made
        # each input ~100 times slower)
    ]
    nfs = [
        n.lookup(1, b"file.bin") + n.read3(2, 0, b"A" * 600, False)
        + n.read3(3, 600, b"B" * 100, True) + n.write3(4, 0, b"C" * 512, 0)
        + n.write3(5, 512, b"D" * 20, 2),
        # more files open at once than MAX_FILES: reads of distinct handles, none at EOF
        [x for i in range(MAX_FILES + 2) for x in (
            (True, n.call(100 + i, 6, n.opaque(bytes([i]) * 8) + struct.pack("!QI", 0, 64))),
            (False, n.reply(100 + i, n.u32(0, 4, 0) + n.opaque(b"data"))))],
    ]
    ch, a, b, c = q.CH, q.CH[:100], q.CH[100:180], q.CH[180:]
    ack_ecn = b"\x03" + bytes([5, 0, 1, 0, 1, 1, 0, 0, 0])
    quic = [
        [(True, q.initial(q.crypto(180, c) + b"\x01", 0)), (True, q.initial(q.crypto(0, a), 1)),
         (True, q.initial(q.crypto(100, b) + q.crypto(0, a[:50]), 2)),
         (False, q.initial(b"\x02" + bytes(4) + q.crypto(0, q.SH), 0, server=True)
          + b"\xe0" + bytes(40))],
        [(True, ack_ecn + q.crypto(180, c) + b"\x01"), (True, q.crypto(0, a) + bytes(8)),
         (True, q.crypto(100, b) + q.crypto(0, a[:50])),
         (False, b"\x02" + bytes(4) + q.crypto(0, q.SH))],
        [(True, q.initial(q.crypto(0, ch), 0, version=0xFF00001D, pad_to=1200))],
    ]
    for proto, seeds in (("mqtt", mqtt), ("nfs", nfs), ("quic", quic)):
        for i, chunks in enumerate(seeds):
            write_conv(out / proto / f"unit-{i:02d}.conv", chunks)
    print(f"unit conversations: mqtt {len(mqtt)}, nfs {len(nfs)}, quic {len(quic)}")


def _dns_query(name: bytes, qtype: int = 1, txid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(x)]) + x for x in name.split(b".")) + b"\x00"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _dns_answer(name: bytes) -> bytes:
    q = _dns_query(name)
    head = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x0a\x00\x00\x01"
    return head + q[12:] + ans


_H = b"GET /index.html?a=1&b=%41 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n"


def _h2(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """An HTTP/2 frame (RFC 9113 4.1)."""
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
        "!I", stream) + payload


_PRI = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HPACK: :method GET, :scheme http, :path /, then :authority as a literal with indexing
_H2_REQ = b"\x82\x86\x84\x41\x0fwww.example.com"
HAND_CONVS: dict[str, list[list[Chunk]]] = {
    "http2": [
        [(True, _PRI + _h2(4, 0, 0, b"\x00\x03\x00\x00\x00\x64") + _h2(1, 5, 1, _H2_REQ)),
         (False, _h2(4, 0, 0, b"") + _h2(1, 4, 1, b"\x88\x5f\x09text/html")
          + _h2(0, 8, 1, b"\x02<html>" + b"\x00\x00") + _h2(0, 1, 1, b"</html>"))],
        # CONTINUATION, PRIORITY, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY
        [(True, _PRI + _h2(1, 0x20, 3, b"\x00\x00\x00\x00\x10" + _H2_REQ[:5])
          + _h2(9, 4, 3, _H2_REQ[5:]) + _h2(2, 0, 3, b"\x00\x00\x00\x00\x20")
          + _h2(8, 0, 0, b"\x00\x00\x87\x4a") + _h2(3, 0, 3, b"\x00\x00\x00\x08")
          + _h2(6, 0, 0, b"12345678") + _h2(7, 0, 0, b"\x00\x00\x00\x03\x00\x00\x00\x00"))],
        # push promise, a Huffman-coded value, gzip body, a dynamic table size update
        [(True, _PRI + _h2(1, 5, 1, b"\x3f\xe1\x1f" + _H2_REQ)),
         (False, _h2(5, 4, 1, b"\x00\x00\x00\x02\x82\x84") + _h2(
             1, 4, 1, b"\x88\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff"
             b"\x5a\x04gzip") + _h2(0, 1, 1, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
                                   b"\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x10\x36\x05\x00\x00\x00"))],
    ],
    "http": [
        [(True, _H), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")],
        [(True, b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"),
         (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")],
        # log injection: a newline, terminal escapes and invalid UTF-8 in headers
        [(True, b"GET /\x1b[31mred HTTP/1.1\r\nHost: ev\nil.example\r\nUser-Agent: \x1b]0;t"
                b"\x07\xff\xfe\xc3\x28\r\nX-A: \"}\n{\"event_type\":\"alert\"\r\n\r\n"),
         (False, b"HTTP/1.1 302 \xff\r\nLocation: /\x00\x1b[2J\r\nContent-Length: 0\r\n\r\n")],
        [(True, _H * 3), (False, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                                 b"Content-Length: 20\r\n\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00"
                                 b"\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6")],
        [(True, b"GET / HTTP/1.0\r\n\r\n"), (False, b"HTTP/1.0 200 OK\r\n\r\nbody until close")],
    ],
    "dns": [
        [(True, _dns_query(b"www.example.com")), (False, _dns_answer(b"www.example.com"))],
        [(True, _dns_query(b"a" * 63 + b"." + b"b" * 63, qtype=16))],
        # a compression pointer to itself, and one pointing past the end
        [(False, struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"),
         (False, struct.pack("!HHHHHH", 2, 0x8180, 1, 0, 0, 0) + b"\xc0\xff\x00\x01\x00\x01")],
    ],
    "smtp": [
        # no PIPELINING: DATA waits for 354; a multipart with a base64 attachment
        [(False, b"220 mx ESMTP\r\n"), (True, b"EHLO c\r\n"), (False, b"250-mx\r\n250 SIZE\r\n"),
         (True, b"MAIL FROM:<a@b> SIZE=9\r\n"), (False, b"250 ok\r\n"),
         (True, b"RCPT TO:<c@d>\r\n"), (False, b"250 ok\r\n"), (True, b"DATA\r\n"),
         (False, b"354 go\r\n"),
         (True, b"From: a <a@b>\r\nTo: c@d, \"e, f\" <e@f>\r\nSubject: hi\r\n\tthere\r\n"
                b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
                b"Content-Type: text/plain\r\n\r\nsee http://x.example/p\r\n..dot\r\n--b1\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b"Content-Disposition: attachment; filename=\"a.exe\"\r\n\r\n"
                b"TVqQAAMAAAAEAAAA//8AALgAAAA=\r\n--b1--\r\n.\r\n"),
         (False, b"250 queued\r\n"), (True, b"QUIT\r\n"), (False, b"221 bye\r\n")],
        # PIPELINING and CHUNKING: BDAT with an encapsulated message, then STARTTLS
        [(False, b"220 mx ESMTP\r\n"), (True, b"EHLO c\r\n"),
         (False, b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n"),
         (True, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 96 LAST\r\n"
                b"Content-Type: message/rfc822\r\n\r\nContent-Disposition: attachment; "
                b"filename=in.txt\r\n\r\nx=3Dy\r\n"),
         (False, b"250 ok\r\n250 ok\r\n250 ok\r\n"), (True, b"STARTTLS\r\n"),
         (False, b"220 go\r\n"), (True, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")],
        # AUTH LOGIN, a refused DATA, RSET, quoted-printable with soft breaks
        [(False, b"220-mx\r\n220 ESMTP\r\n"), (True, b"EHLO c\r\nAUTH LOGIN\r\n"),
         (False, b"250 mx\r\n334 VXNlcm5hbWU6\r\n"), (True, b"dXNlcg==\r\n"),
         (False, b"235 ok\r\n"), (True, b"MAIL FROM:<a@b>\r\nDATA\r\n"),
         (False, b"250 ok\r\n554 no recipients\r\n"), (True, b"RSET\r\n"),
         (False, b"250 ok\r\n"), (True, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"),
         (False, b"250 ok\r\n250 ok\r\n354 go\r\n"),
         (True, b"Content-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; "
                b"name=q.txt\r\n\r\nsoft=\r\nbreak =C3=A9 =ZZ\r\n.\r\n")],
    ],
    "tls": [
        # a ClientHello with SNI only
        [(True, bytes.fromhex(
            "16030100" "3f" "01" "00003b" "0303" + "11" * 32 + "00" "0002" "c02f" "0100"
            "0010" "0000" "000c" "000a" "0000" "07" "6578616d706c65"))],
    ],
}

RULES_HAND = [
    'alert tcp any any -> any any (msg:"redos"; content:"a"; pcre:"/(a+)+$/"; sid:9100001;)',
    'alert http any any -> any any (msg:"uri"; http.uri; content:"/admin"; nocase; sid:9100002;)',
    'drop tcp any any -> any 80 (msg:"bt"; content:"|00 01|"; byte_test:2,>,10,0,relative; '
    'sid:9100003;)',
    'alert dns any any -> any any (msg:"q"; dns.query; content:"example"; sid:9100004;)',
    'alert tls any any -> any any (msg:"sni"; tls.sni; content:"example.com"; sid:9100005;)',
    'alert ip any any -> any any (msg:"be"; byte_extract:1,0,n; byte_jump:1,0,relative; '
    'isdataat:n,relative; sid:9100006;)',
    'alert tcp any any -> any any (msg:"flowbits"; flowbits:set,x; flowbits:noalert; '
    'sid:9100007;)',
    'alert tcp any any -> any any (msg:"fb2"; flowbits:isset,x; content:"b"; sid:9100008;)',
    'alert udp $HOME_NET any -> ![1.2.3.4,5.6.7.0/24] [53,1000:2000] (msg:"neg"; '
    'dsize:>10; threshold:type limit,track by_src,count 1,seconds 60; sid:9100009;)',
    'alert http any any -> any any (msg:"tr"; http.header; to_lowercase; '
    'content:"x-a|3a|"; pcre:"/^x-a\\x3a\\s*\\d+$/mi"; sid:9100010;)',
]


def build_rules(out: Path) -> None:
    lines = list(RULES_HAND)
    src = SHARED / "rules" / "etopen-2024-04-21"
    if src.exists():
        every = []
        for f in sorted(src.glob("*.rules")):
            for ln in f.read_text(encoding="utf-8", errors="replace").splitlines():
                s = ln.strip()
                if s.startswith("#"):
                    s = s.lstrip("#").strip()
                if s.startswith(("alert ", "drop ", "pass ", "reject ")) and s.endswith(")"):
                    every.append(s)
        step = max(1, len(every) // 300)
        lines += every[::step][:300]
    (out / "seeds.rules").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"rules: {len(lines)} lines")


POLICY_HAND = [
    "include-builtin-roles: false\nroles:\n  web:\n    egress: [{proto: tcp, ports: [80, 443]}]\n"
    "    on-detection: {action: block, min-severity: 2, duration: 10m}\n"
    "guests:\n  - {name: a, role: web, addresses: [10.0.0.1/32], macs: ['02:00:00:00:00:01']}\n",
    "roles:\n  r:\n    overrides: [{action: drop, classtypes: [trojan-activity], min-severity: 1}]\n"
    "    heuristics: {port_scan: {threshold: 20}}\n    fail-open: yes\n"
    "guests: [{name: g, role: r, ports: [vnet0]}]\nallowlist: [10.0.0.0/8, 'fe80::/10']\n",
    "guests:\n  - name: x\n    role: desktop\n    addresses: [not-an-address]\n",
    "roles: &a\n  r: *a\n",
    "include-builtin-roles: maybe\n",
]


def build_policies(out: Path) -> None:
    n = 0
    for p in sorted([ROOT / "rules" / "lab-policy.yaml", *(ROOT / "rules" / "roles").glob(
            "*.yaml")]):
        text = p.read_text(encoding="utf-8")
        if p.parent.name == "roles":  # a role file becomes one role of a policy
            text = "roles:\n  " + p.stem + ":\n" + "".join(
                "    " + ln + "\n" for ln in text.splitlines())
        (out / f"local-{p.stem}.yaml").write_text(text, encoding="utf-8")
        n += 1
    for i, text in enumerate(POLICY_HAND):
        (out / f"hand-{i:02d}.yaml").write_text(text, encoding="utf-8")
        n += 1
    print(f"policies: {n} files")


CONTROL_HAND = [
    b'{"command": "status"}\n',
    b'{"command": "echo", "args": {"target": "desktop", "duration": 600}}\n'
    b'{"command": "status"}\n',
    b'{"command": "quarantine.add", "args": {"target": "10.0.0.1"}}\n\n\n',
    b'{"command": "boom"}\n{"command": 1}\n[1]\n{"args": []}\n',
    b'{"command": "echo", "args": {"x": "\\u0000\\ud800"}}\n',
    b'{"command": "sta',  # truncated: no newline, then end of stream
    b"\xff\xfe\n\x00\n",
]


def build_control(out: Path) -> None:
    for i, data in enumerate(CONTROL_HAND):
        (out / f"hand-{i:02d}.ctl").write_bytes(data)
    print(f"control: {len(CONTROL_HAND)} files")


def build_pcap_files(out: Path) -> None:
    """Whole capture files for the pcap-reader target (pcapng, a truncated pcap)."""
    for name in ("linktype-eth.pcapng", "truncated.pcap", "linktype-sll2.pcap"):
        shutil.copyfile(ROOT / "pcaps" / name, out / name)
    # a few more as pcapng, so block-level mutations have several files to work on
    for name in ("tcp-options.pcap", "ipv6-ext.pcap", "linktype-sll.pcap", "icmp.pcap"):
        frames = _frames(ROOT / "pcaps" / name)[:12]
        write_pcapng(out / name.replace(".pcap", ".pcapng"), frames)
    print("pcap: 7 files")


def main() -> None:
    dirs = {"packets": build_packets, "rules": build_rules, "policy": build_policies,
            "control": build_control, "pcap": build_pcap_files}
    for name, build in dirs.items():
        d = CORPUS / name
        _clear(d)
        build(d)
    for proto in ("http", "http2", "dns", "tls"):
        _clear(CORPUS / proto)
    build_conversations(CORPUS)
    if SV.exists():
        for proto in ("mqtt", "sip", "krb5", "snmp", "nfs", "quic"):
            _clear(CORPUS / proto)
    build_app_conversations(CORPUS)
    build_unit_conversations(CORPUS)


def _clear(d: Path) -> None:
    """Remove the seeds this script writes, keep the regression cases (crash-*)."""
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if f.is_file() and not f.name.startswith("crash-"):
            f.unlink()
        elif f.is_dir():
            shutil.rmtree(f)


if __name__ == "__main__":
    main()
