"""Rule parsing: header, option splitting and escapes, content/pcre structure, errors."""

from __future__ import annotations

import ipaddress
import re

import pytest

from appliance.rules.parser import (
    BufferOption,
    Classification,
    Content,
    Pcre,
    RuleParseError,
    parse_classification_line,
    parse_content,
    parse_rule,
)
from appliance.rules.pcre import PcreError, parse_pcre_value, translate_pcre


def rule(options: str, header: str = "alert tcp any any -> any any") -> str:
    return f"{header} ({options})"


def fail_reason(text: str) -> str:
    with pytest.raises(RuleParseError) as info:
        parse_rule(text)
    return info.value.reason


# ---------------------------------------------------------------- content values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', b"abc"),
        ('"|41 42|C"', b"ABC"),
        ('"a|0d 0a|b"', b"a\r\nb"),
        ('"|4142|"', b"AB"),
        ('"x\\;y"', b"x;y"),
        ('"x\\"y"', b'x"y'),
        ('"x\\\\y"', b"x\\y"),
        ('"x\\:y"', b"x:y"),
        ('!"neg"', b"neg"),
        ('"caf\u00e9"', "caf\u00e9".encode()),
    ],
)
def test_parse_content(value: str, expected: bytes) -> None:
    assert parse_content(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"a|4|"', "odd number of hex digits"),
        ('"a|4g|"', "invalid hex character 'g'"),
        ('"a|41"', "unterminated hex block"),
        ('"a\\nb"', "invalid escape '\\\\n'"),
        ('""', "content is empty"),
        ("abc", "must be double quoted"),
    ],
)
def test_parse_content_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_content(value)


# ---------------------------------------------------------------- whole rules


ET_RULE = (
    'alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"ET TEST \\"quoted\\" and \\; semi"; '
    'flow:established,to_server; http.method; content:"POST"; http.uri; content:"/gate.php"; '
    'fast_pattern; endswith; http.header_names; content:!"Referer"; '
    'reference:url,example.com/a; reference:cve,2021-1234; classtype:trojan-activity; '
    "sid:2000001; rev:3; metadata:created_at 2020_01_01, tag Foo, tag Bar;)"
)


def test_full_rule_structure() -> None:
    r = parse_rule(ET_RULE, file="x.rules", line=7)
    assert (r.action, r.proto, r.direction) == ("alert", "http", "->")
    assert r.src.spec == "$HOME_NET" and r.dst.spec == "$EXTERNAL_NET"
    assert r.src.contains(ipaddress.ip_address("10.0.0.1").packed)
    assert not r.dst.contains(ipaddress.ip_address("10.0.0.1").packed)
    assert r.src_ports.is_any and r.dst_ports.is_any
    assert r.msg == 'ET TEST "quoted" and ; semi'
    assert (r.sid, r.gid, r.rev) == (2000001, 1, 3)
    assert r.classtype == "trojan-activity"
    assert r.priority == 3 and r.category is None  # no classification map given
    assert r.references == (("url", "example.com/a"), ("cve", "2021-1234"))
    assert dict(r.metadata) == {"created_at": ("2020_01_01",), "tag": ("Foo", "Bar")}
    assert r.file == "x.rules" and r.line == 7
    assert r.raw == ET_RULE
    assert [k for k, _ in r.options] == [
        "msg", "flow", "http.method", "content", "http.uri", "content", "fast_pattern",
        "endswith", "http.header_names", "content", "reference", "reference", "classtype",
        "sid", "rev", "metadata",
    ]
    assert r.option("flow") == "established,to_server"
    assert r.contents == (
        Content(b"POST", buffer="http.method"),
        Content(b"/gate.php", buffer="http.uri", fast_pattern=True, endswith=True),
        Content(b"Referer", negated=True, buffer="http.header_names"),
    )
    assert r.buffers == frozenset({"http.method", "http.uri", "http.header_names"})
    assert len({r, parse_rule(ET_RULE, file="x.rules", line=7)}) == 1  # hashable, equal


def test_modifiers_and_legacy_buffers() -> None:
    r = parse_rule(
        rule(
            'content:"GET"; http_method; content:"/a"; http_uri; nocase; depth:4; offset:1; '
            'content:"b"; distance:0; within:10; rawbytes; content:"x"; http_header; sid:5;'
        )
    )
    assert r.contents == (
        Content(b"GET", buffer="http.method"),
        Content(b"/a", buffer="http.uri", nocase=True, depth=4, offset=1),
        Content(b"b", distance=0, within=10, rawbytes=True),
        Content(b"x", buffer="http.header"),
    )
    assert r.contents[2].relative and not r.contents[1].relative


def test_pkt_data_resets_sticky_buffer_and_transforms_attach() -> None:
    r = parse_rule(
        rule(
            'dns.query; dotprefix; content:".evil.com"; endswith; pkt_data; content:"|00|"; '
            "isdataat:!1,relative; sid:6;",
            "alert dns any any -> any 53",
        )
    )
    first, second, third = r.matches
    assert first == Content(
        b".evil.com", buffer="dns.query", endswith=True, transforms=(("dotprefix", None),)
    )
    assert second == Content(b"\x00")
    assert third == BufferOption("isdataat", "!1,relative", "pkt_data")


def test_byte_extract_variable_in_modifier() -> None:
    r = parse_rule(rule('byte_extract:2,0,len,relative; content:"A"; within:len; sid:7;'))
    assert r.contents[0].within == "len"
    assert r.matches[0] == BufferOption("byte_extract", "2,0,len,relative", "pkt_data")


def test_escaped_semicolon_and_unbalanced_quote_in_pcre() -> None:
    # ET sid 2029732 has pcre:"/^["']?post/Ri": Suricata ends options at unescaped ';' only.
    r = parse_rule(rule('content:"method="; pcre:"/^["\']?post/Ri"; msg:"a\\;b"; sid:8;'))
    (p,) = r.pcres
    assert p.source == "^[\"']?post" and p.flags == "Ri" and p.relative
    assert p.regex.match(b"'POST")
    assert r.msg == "a;b"


def test_bidirectional_and_port_lists() -> None:
    r = parse_rule("alert tcp [10.0.0.0/8, !10.1.0.0/16] [1024:] <> any [80,443] (sid:9;)")
    assert r.bidirectional
    assert r.src.contains(bytes([10, 2, 0, 1]))
    assert not r.src.contains(bytes([10, 1, 0, 1]))
    assert r.src_ports.contains(5000) and not r.src_ports.contains(80)
    assert r.dst_ports.ranges == ((80, 80), (443, 443))


def test_flowbits_and_gid_priority() -> None:
    r = parse_rule(
        rule("flowbits:isset,a|b; flowbits:set,c; flowbits:noalert; gid:3; priority:1; sid:10;")
    )
    assert [(f.command, f.names) for f in r.flowbits] == [
        ("isset", ("a", "b")), ("set", ("c",)), ("noalert", ()),
    ]
    assert r.gid == 3 and r.priority == 1


def test_classification_fills_priority_and_category() -> None:
    classes = {"trojan-activity": Classification("trojan-activity", "A Network Trojan", 1)}
    r = parse_rule(ET_RULE, classifications=classes)
    assert (r.category, r.priority) == ("A Network Trojan", 1)
    explicit = parse_rule(rule("classtype:trojan-activity; priority:4; sid:1;"), None, classes)
    assert explicit.priority == 4
    with pytest.raises(RuleParseError, match="unknown classtype 'nope'"):
        parse_rule(rule("classtype:nope; sid:1;"), None, classes)


def test_classification_line() -> None:
    assert parse_classification_line(
        "config classification: bad-unknown,Potentially Bad Traffic, 2"
    ) == Classification("bad-unknown", "Potentially Bad Traffic", 2)
    assert parse_classification_line("# comment") is None
    with pytest.raises(ValueError, match="malformed classification"):
        parse_classification_line("config classification: x,y")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (rule('msg:"x"; foo:bar; sid:1;'), "unsupported keyword 'foo'"),
        (rule('msg:"x";'), "rule has no sid"),
        (rule('nocase; content:"a"; sid:1;'), "'nocase' needs a preceding content"),
        (rule('content:"a"; http.uri; nocase; sid:1;'), "'nocase' needs a preceding content"),
        (
            rule('http.uri; content:"a"; http_header; sid:1;'),
            "'http_header' seen with sticky buffer 'http.uri' still set",
        ),
        (rule('content:"a|4|"; sid:1;'), "content: odd number of hex digits in content |4|"),
        (rule("sid:1"), "option 'sid:1' is not terminated by ';'"),
        (rule("sid:abc;"), "'sid' needs a non-negative integer, got 'abc'"),
        (rule("sid:0;"), "'sid' must be greater than 0"),
        (rule("dotprefix; sid:1;"), "transform 'dotprefix' needs a sticky buffer before it"),
        (rule('content:"a"; depth:x y; sid:1;'), "invalid value 'x y' for 'depth'"),
        (rule("flowbits:frob,a; sid:1;"), "unknown flowbits command 'frob'"),
        (rule('pcre:"/a(?R)/"; sid:1;'), "pcre recursion/subroutine calls are not supported"),
        (rule('pcre:"/a/q"; sid:1;'), "unknown pcre modifier 'q'"),
        ("alert tcp $NOPE any -> any any (sid:1;)", "undefined address variable '$NOPE'"),
        ("alert tcp any any <- any any (sid:1;)", "invalid direction '<-'"),
        ("alert foo any any -> any any (sid:1;)", "unknown protocol 'foo'"),
        ("warn tcp any any -> any any (sid:1;)", "unknown action 'warn'"),
        ("alert tcp any any -> any (sid:1;)", "rule header needs 7 fields"),
        ("alert tcp any any -> any any sid:1;", "no option list"),
        ("alert tcp any any -> any any (sid:1;) x", "text after the closing ')'"),
    ],
)
def test_errors_name_the_cause(text: str, reason: str) -> None:
    assert fail_reason(text).startswith(reason)


def test_error_carries_sid_when_present() -> None:
    with pytest.raises(RuleParseError) as info:
        parse_rule(rule("bogus; sid:42;"))
    assert info.value.sid == 42
    assert info.value.reason == "unsupported keyword 'bogus'"


# ---------------------------------------------------------------- pcre


def test_pcre_buffer_flags_and_negation() -> None:
    r = parse_rule(rule('pcre:!"/^\\/admin/Ui"; pcre:"/x/P"; pcre:"/y/Q"; sid:11;'))
    p1, p2, p3 = r.pcres
    assert isinstance(p1, Pcre)
    assert (p1.negated, p1.buffer, p1.regex.flags & re.IGNORECASE) == (True, "http.uri", 2)
    assert p2.buffer == "http.request_body" and p3.buffer == "file.data"


def test_pcre_sticky_buffer_and_conflict() -> None:
    ok = parse_rule(rule('http.response_body; content:"a"; pcre:"/b/QR"; sid:1;'))
    assert ok.pcres[0].buffer == "file.data"
    assert ok.contents[0].buffer == "file.data"
    with pytest.raises(RuleParseError, match=r"selects 'http\.uri' while sticky buffer"):
        parse_rule(rule('http.header; pcre:"/b/U"; sid:1;'))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a\\z", "a\\Z"),
        ("a\\Z", "a(?=\\n?\\Z)"),
        ("(?<n>x)\\k<n>", "(?P<n>x)(?P=n)"),
        ("a{,3}", "a\\{,3}"),
        ("a{2,3}b{4}", "a{2,3}b{4}"),
        ("\\x{41}\\x9", "\\x41\\x09"),
        ("[[:digit:]x]", "[0-9x]"),
        ("\\Qa.b\\E", "a\\.b"),
        ("x(?i)y|z", "x(?i:y)|(?i:z)"),
        ("(?i)abc", "(?i)abc"),
        ("(?<!ab|c)d", "(?<!ab)(?<!c)d"),
        ("(?<=ab|c)d", "(?:(?<=ab)|(?<=c))d"),
        ("\\h+\\R", "[\\t \\xa0]+(?:\\r\\n|[\\n\\x0b\\f\\r\\x85])"),
    ],
)
def test_translate_pcre(source: str, expected: str) -> None:
    assert translate_pcre(source) == expected


def test_translation_semantics() -> None:
    # PCRE2 \Z allows a final newline, \z does not; Python's \Z is PCRE2's \z.
    assert parse_pcre_value('"/abc\\Z/"').regex.search(b"abc\n")
    assert not parse_pcre_value('"/abc\\z/"').regex.search(b"abc\n")
    # (?i) in the middle covers the rest of its alternative and the later ones only.
    mid = parse_pcre_value('"/x(?i)y|z/"').regex
    assert mid.fullmatch(b"xY") and mid.fullmatch(b"Z") and not mid.fullmatch(b"Xy")
    # G inverts greediness; E makes $ match only at the very end.
    assert parse_pcre_value('"/a.*b/G"').regex.search(b"aXbXb").group(0) == b"aXb"  # type: ignore[union-attr]
    assert not parse_pcre_value('"/a$/E"').regex.search(b"a\n")
    assert parse_pcre_value('"/a$/"').regex.search(b"a\n")
    # A is kept as a flag: the matcher anchors with match().
    assert parse_pcre_value('"/a/A"').anchored


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"/a\\K/"', "\\K (match start reset) not supported"),
        ('"/(*UTF)a/"', "backtracking verbs"),
        ('"/\\p{L}/"', "\\p (Unicode property)"),
        ('"/(?|a)/"', "branch reset"),
        ('"/(a/"', "unbalanced '('"),
        ('"/a/UH"', "pcre modifiers select two buffers"),
        ("a/", "must be double quoted"),
    ],
)
def test_pcre_errors(value: str, reason: str) -> None:
    with pytest.raises(PcreError) as info:
        parse_pcre_value(value)
    assert reason in str(info.value)


def test_unquoted_pcre_and_tcp_flags_keyword_are_accepted_like_suricata() -> None:
    rule = parse_rule('alert tcp any any -> any any (msg:"x"; pcre:/one/U; tcp.flags:S; sid:1;)')
    assert rule.pcres[0].buffer == "http.uri"
    assert rule.pcres[0].source == "one"
    assert rule.option("tcp.flags") == "S"


def test_relative_buffer_keyword_without_sticky_buffer_follows_the_last_match() -> None:
    # Suricata attaches a relative isdataat/byte_* to the previous match's buffer when no
    # sticky buffer is set; a non-relative one stays on the packet payload.
    r = parse_rule(rule('uricontent:"/c/"; isdataat:4,relative; byte_test:1,=,1,0; '
                        'content:"x"; http_raw_uri; byte_extract:1,0,v,relative; sid:8;'))
    assert r.matches[1] == BufferOption("isdataat", "4,relative", "http.uri")
    assert r.matches[2] == BufferOption("byte_test", "1,=,1,0", "pkt_data")
    assert r.matches[4] == BufferOption("byte_extract", "1,0,v,relative", "http.uri.raw")
    # A relative pcre without buffer flag stays on pkt_data (Suricata 7's pcre setup).
    r = parse_rule(rule('uricontent:"/c/"; pcre:"/d/R"; sid:9;'))
    assert r.pcres[0].buffer == "pkt_data"
