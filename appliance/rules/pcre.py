"""Suricata ``pcre`` values: split the option, map Suricata's modifiers, translate PCRE2 to ``re``.

Suricata compiles ``pcre`` with PCRE2 in non-UTF mode (detect-pcre.c); this module turns the
pattern into a Python ``re`` bytes pattern with the same meaning, or explains why it cannot.

Translated (PCRE2 construct -> Python):

- ``\\z`` -> ``\\Z`` (absolute end); ``\\Z`` -> ``(?=\\n?\\Z)`` (end or before a final newline);
- ``$`` with the ``E`` flag (dollar-end-only, ignored with ``m`` as in PCRE2) -> ``\\Z``;
- ``\\h \\H \\v \\V \\R \\N \\e \\cX \\x{hh} \\xH \\o{ooo}`` -> explicit classes or bytes (Python's
  ``\\v`` is the VT character, PCRE2's is the vertical-whitespace class);
- ``\\Q...\\E`` -> escaped literal; ``\\g{n}``/``\\gn`` -> ``(?:\\n)``; ``\\k<n>``/``\\k{n}``/``\\k'n'``
  -> ``(?P=n)``; ``(?<n>...)``/``(?'n'...)`` -> ``(?P<n>...)``;
- POSIX classes ``[:alpha:]`` inside brackets -> ASCII ranges;
- an inline option group ``(?i)`` after the start of the pattern -> a scoped ``(?i:...)`` that
  covers the rest of its alternative and the following alternatives of the same group, which is
  PCRE2's scope rule (Python 3.11 rejects global flags that are not at the start);
- ``{`` that does not open a valid ``{n}``, ``{n,}``, ``{n,m}`` quantifier -> literal ``\\{``
  (PCRE2 before 10.43 reads ``{,n}`` literally; Python reads it as a quantifier);
- the ``G`` flag (ungreedy) -> every quantifier's greediness inverted.

Not translatable (the rule is reported, not loaded): recursion and subroutine calls
(``(?R)``, ``(?1)``, ``(?&n)``, ``(?P>n)``), branch reset ``(?|``, backtracking verbs
``(*VERB)``, ``\\K``, ``\\G``, ``\\X``, ``\\C``, Unicode properties ``\\p``/``\\P``, relative back
references ``\\g{-1}``, negated POSIX classes, option letters Python lacks (``U``, ``J``, ``n``),
and lookbehinds whose alternatives differ in length (Python needs one fixed width).

Known small differences that remain: with ``m``, PCRE2's ``^`` does not match after a newline
that ends the subject, Python's does; ``x`` mode comments are passed through untranslated.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

# Suricata 7 detect-pcre.c: which buffer each buffer-selecting modifier inspects.
PCRE_BUFFER_FLAGS: dict[str, str] = {
    "U": "http.uri",
    "I": "http.uri.raw",
    "P": "http.request_body",
    "Q": "file.data",
    "H": "http.header",
    "D": "http.header.raw",
    "M": "http.method",
    "C": "http.cookie",
    "S": "http.stat_code",
    "Y": "http.stat_msg",
    "V": "http.user_agent",
    "W": "http.host",
    "Z": "http.host.raw",
}
# PCRE2 compile options Suricata accepts, and Suricata's own non-buffer modifiers.
_PCRE_OPTION_FLAGS = frozenset("AEGimsx")
_SURICATA_FLAGS = frozenset("RBO")

_RE_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}

# ASCII POSIX classes, as PCRE2's default ("C" locale) character tables define them.
_POSIX_CLASSES: dict[str, str] = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": "\\t\\n\\x0b\\f\\r ",
    "blank": "\\t ",
    "punct": "!-/:-@\\[-`{-~",
    "print": " -~",
    "graph": "!-~",
    "cntrl": "\\x00-\\x1f\\x7f",
    "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_",
    "ascii": "\\x00-\\x7f",
}
_H_CHARS = "\\t \\xa0"  # PCRE2 non-UTF \h: tab, space, NBSP
_V_CHARS = "\\n\\x0b\\f\\r\\x85"  # PCRE2 non-UTF \v: LF, VT, FF, CR, NEL
_QUANT_BRACE = re.compile(r"\{(\d+)(,(\d*))?\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INLINE_FLAGS = re.compile(r"\(\?([A-Za-z]*)(?:-([A-Za-z]*))?([:)])")


class PcreError(ValueError):
    """The pcre value is malformed or cannot be expressed with Python's ``re``."""


@dataclass(frozen=True, slots=True)
class PcreSpec:
    """A parsed ``pcre`` value before buffer assignment."""

    source: str  # the regex as written between the slashes
    flags: str
    negated: bool
    relative: bool
    anchored: bool  # PCRE2_ANCHORED ('A'): the matcher must use match(), not search()
    buffer_flag_buffer: str | None  # buffer chosen by U/I/P/... or None
    rawbytes: bool
    captures: str | None  # Suricata's ", pkt:name,flow:name" capture list, kept as text
    pattern: bytes  # translated Python pattern
    re_flags: int
    regex: re.Pattern[bytes]


def parse_pcre_value(value: str) -> PcreSpec:
    """Parse a ``pcre`` option value (``[!]"/regex/flags[, captures]"``)."""
    text = value.strip()
    negated = False
    if text.startswith("!"):
        negated = True
        text = text[1:].lstrip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    elif not text.startswith("/"):
        raise PcreError("pcre value must be double quoted")
    # Suricata also accepts an unquoted /regex/flags (DetectPcreParse strips quotes only
    # when present).
    if not text.startswith("/"):
        raise PcreError("pcre value must start with '/'")
    end = text.rfind("/")
    if end == 0:
        raise PcreError("pcre value has no closing '/'")
    source = text[1:end]
    tail = text[end + 1 :]
    flags, sep, captures = tail.partition(",")
    flags = flags.strip()
    buffer: str | None = None
    for flag in flags:
        if flag in PCRE_BUFFER_FLAGS:
            chosen = PCRE_BUFFER_FLAGS[flag]
            if buffer is not None and buffer != chosen:
                raise PcreError(f"pcre modifiers select two buffers ({buffer} and {chosen})")
            buffer = chosen
        elif flag not in _PCRE_OPTION_FLAGS and flag not in _SURICATA_FLAGS:
            raise PcreError(f"unknown pcre modifier '{flag}'")
    rawbytes = "B" in flags
    if rawbytes and buffer is not None:
        raise PcreError("pcre modifier 'B' inconsistent with a buffer modifier")
    re_flags = 0
    for flag, bit in _RE_FLAGS.items():
        if flag in flags:
            re_flags |= bit
    pattern = translate_pcre(
        source, ungreedy="G" in flags, dollar_endonly="E" in flags and "m" not in flags
    )
    encoded = pattern.encode("utf-8", "surrogateescape")
    try:
        with warnings.catch_warnings():
            # Python warns about '[' and '--' inside classes that PCRE2 reads literally.
            warnings.simplefilter("ignore", FutureWarning)
            regex = re.compile(encoded, re_flags)
    except re.error as exc:
        raise PcreError(f"pcre not compilable by Python re: {exc}") from None
    return PcreSpec(
        source=source,
        flags=flags,
        negated=negated,
        relative="R" in flags,
        anchored="A" in flags,
        buffer_flag_buffer=buffer,
        rawbytes=rawbytes,
        captures=captures.strip() if sep else None,
        pattern=encoded,
        re_flags=re_flags,
        regex=regex,
    )


class _Group:
    """Translator state for one open group: scoped inline flags to re-open per alternative."""

    __slots__ = ("open_scopes", "pending_flags")

    def __init__(self) -> None:
        self.pending_flags: list[str] = []
        self.open_scopes = 0


def translate_pcre(source: str, *, ungreedy: bool = False, dollar_endonly: bool = False) -> str:
    """Translate a PCRE2 pattern to Python ``re`` syntax; raise PcreError if impossible."""
    out: list[str] = []
    groups: list[_Group] = [_Group()]
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\":
            i = _escape(source, i, out, in_class=False)
            continue
        if ch == "[":
            i = _char_class(source, i, out)
            continue
        if ch == "(":
            i = _open_group(source, i, out, groups)
            continue
        if ch == ")":
            group = groups.pop() if len(groups) > 1 else None
            if group is None:
                raise PcreError("pcre has an unbalanced ')'")
            out.append(")" * group.open_scopes)
            out.append(")")
            i += 1
            i = _quantifier_suffix(source, i, out, ungreedy, quantified=False)
            continue
        if ch == "|":
            group = groups[-1]
            out.append(")" * group.open_scopes)
            out.append("|")
            group.open_scopes = 0
            for flags in group.pending_flags:
                out.append(f"(?{flags}:")
                group.open_scopes += 1
            i += 1
            continue
        if ch in "*+?":
            out.append(ch)
            i = _quantifier_suffix(source, i + 1, out, ungreedy, quantified=True)
            continue
        if ch == "{":
            m = _QUANT_BRACE.match(source, i)
            if m is None:
                out.append("\\{")
                i += 1
                continue
            out.append(m.group(0))
            i = _quantifier_suffix(source, m.end(), out, ungreedy, quantified=True)
            continue
        if ch == "$" and dollar_endonly:
            out.append("\\Z")
            i += 1
            continue
        out.append(ch)
        i += 1
    if len(groups) != 1:
        raise PcreError("pcre has an unbalanced '('")
    out.append(")" * groups[0].open_scopes)
    return "".join(out)


def _quantifier_suffix(source: str, i: int, out: list[str], ungreedy: bool, quantified: bool) -> int:
    """After a quantifier: copy its lazy/possessive suffix, inverting greediness under G."""
    if not quantified:
        return i
    suffix = source[i] if i < len(source) else ""
    if suffix == "+":
        out.append("+")
        return i + 1
    if suffix == "?":
        if not ungreedy:
            out.append("?")
        return i + 1
    if ungreedy:
        out.append("?")
    return i


def _open_group(source: str, i: int, out: list[str], groups: list[_Group]) -> int:
    if source.startswith("(*", i):
        raise PcreError("pcre backtracking verbs '(*...)' are not supported by Python re")
    if not source.startswith("(?", i):
        out.append("(")
        groups.append(_Group())
        return i + 1
    rest = source[i + 2 : i + 4]
    if rest in ("<=", "<!"):
        end, bars = _scan_group(source, i + 4)
        if bars:
            return _split_lookbehind(source, i, end, bars, out, negative=rest == "<!")
    if rest[:1] in (":", "=", "!", ">") or rest in ("<=", "<!"):
        out.append(source[i : i + 2 + (2 if rest in ("<=", "<!") else 1)])
        groups.append(_Group())
        return i + 2 + (2 if rest in ("<=", "<!") else 1)
    if rest[:1] == "#":
        end = source.find(")", i)
        if end < 0:
            raise PcreError("pcre comment group is not closed")
        return end + 1
    if rest[:1] in ("<", "'") or source.startswith("(?P<", i):
        start = i + (4 if source.startswith("(?P<", i) else 3)
        m = _NAME.match(source, start)
        close = ">" if rest[:1] != "'" else "'"
        if m is None or not source.startswith(close, m.end()):
            raise PcreError("pcre has a malformed group name")
        out.append(f"(?P<{m.group(0)}>")
        groups.append(_Group())
        return m.end() + 1
    if source.startswith("(?P=", i):
        end = source.find(")", i)
        if end < 0:
            raise PcreError("pcre back reference is not closed")
        out.append(source[i : end + 1])
        return end + 1
    if rest[:1] == "(":
        # Conditional group: Python supports (?(1)...) and (?(name)...) only.
        m = re.compile(r"\(\?\((\d+|[A-Za-z_]\w*)\)").match(source, i)
        if m is None:
            raise PcreError("pcre conditional form not supported by Python re")
        out.append(m.group(0))
        groups.append(_Group())
        return m.end()
    if rest[:1] == "|":
        raise PcreError("pcre branch reset '(?|' is not supported by Python re")
    if rest[:1] in ("R", "&", "+") or rest[:1].isdigit() or source.startswith("(?P>", i) or (
        rest[:1] == "-" and rest[1:2].isdigit()
    ):
        raise PcreError("pcre recursion/subroutine calls are not supported by Python re")
    m = _INLINE_FLAGS.match(source, i)
    if m is None:
        raise PcreError(f"pcre group syntax {source[i:i + 4]!r} not supported by Python re")
    on, off, kind = m.group(1), m.group(2) or "", m.group(3)
    for letter in on + off:
        if letter not in "imsx":
            raise PcreError(f"pcre inline option '{letter}' not supported by Python re")
    flags = on + ("-" + off if off else "")
    if kind == ":":
        out.append(f"(?{flags}:")
        groups.append(_Group())
        return m.end()
    # "(?i)" alone: global at the very start (Python allows it there, unless it turns
    # options off), otherwise scoped to the rest of the alternative and the next ones.
    if not out and len(groups) == 1 and not off and on:
        out.append(f"(?{on})")
        return m.end()
    group = groups[-1]
    group.pending_flags.append(flags)
    out.append(f"(?{flags}:")
    group.open_scopes += 1
    return m.end()


def _scan_group(source: str, start: int) -> tuple[int, list[int]]:
    """From just inside a group, find its closing ')' and the '|' at its own level."""
    depth = 0
    bars: list[int] = []
    i = start
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\":
            if source.startswith("Q", i + 1):
                end = source.find("\\E", i + 2)
                i = n if end < 0 else end + 2
            else:
                i += 2
            continue
        if ch == "[":
            i = _char_class(source, i, [])
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return i, bars
            depth -= 1
        elif ch == "|" and depth == 0:
            bars.append(i)
        i += 1
    raise PcreError("pcre has an unbalanced '('")


def _split_lookbehind(
    source: str, i: int, end: int, bars: list[int], out: list[str], *, negative: bool
) -> int:
    """PCRE2 lets each alternative of a lookbehind have its own fixed length; Python needs
    one width for the whole lookbehind. Rewrite ``(?<!a|bc)`` as ``(?<!a)(?<!bc)`` and
    ``(?<=a|bc)`` as ``(?:(?<=a)|(?<=bc))``, which mean the same."""
    bounds = [i + 4, *[b + 1 for b in bars]]
    stops = [*bars, end]
    parts = [translate_pcre(source[lo:hi]) for lo, hi in zip(bounds, stops, strict=True)]
    if negative:
        out.append("".join(f"(?<!{p})" for p in parts))
    else:
        out.append("(?:" + "|".join(f"(?<={p})" for p in parts) + ")")
    return end + 1


def _char_class(source: str, i: int, out: list[str]) -> int:
    """Copy a bracket expression starting at ``source[i] == '['``."""
    out.append("[")
    i += 1
    n = len(source)
    if i < n and source[i] == "^":
        out.append("^")
        i += 1
    if i < n and source[i] == "]":
        out.append("\\]")  # a leading ']' is a literal in PCRE2
        i += 1
    while i < n:
        ch = source[i]
        if ch == "]":
            out.append("]")
            return i + 1
        if ch == "\\":
            i = _escape(source, i, out, in_class=True)
            continue
        if ch == "[":
            m = re.compile(r"\[:(\^?)([a-z]+):\]").match(source, i)
            if m is not None:
                if m.group(1):
                    raise PcreError("negated POSIX class not supported by Python re")
                name = m.group(2)
                if name not in _POSIX_CLASSES:
                    raise PcreError(f"unknown POSIX class [:{name}:]")
                out.append(_POSIX_CLASSES[name])
                i = m.end()
                continue
            out.append("\\[")
            i += 1
            continue
        out.append(ch)
        i += 1
    raise PcreError("pcre character class is not closed")


_SIMPLE_ESCAPES = frozenset("dDsSwWbBAnrtfa0123456789")
_UNSUPPORTED_ESCAPES = {
    "K": "\\K (match start reset)",
    "G": "\\G (first match position)",
    "X": "\\X (extended grapheme)",
    "C": "\\C (single code unit)",
    "p": "\\p (Unicode property)",
    "P": "\\P (Unicode property)",
}


def _hex_byte(value: int) -> str:
    if value > 0xFF:
        raise PcreError(f"pcre code point {value:#x} does not fit a byte (non-UTF mode)")
    return f"\\x{value:02x}"


def _escape(source: str, i: int, out: list[str], *, in_class: bool) -> int:
    """Translate the escape sequence at ``source[i] == '\\\\'``; return the next index."""
    if i + 1 >= len(source):
        raise PcreError("pcre ends with a lone backslash")
    c = source[i + 1]
    if c in _UNSUPPORTED_ESCAPES:
        raise PcreError(f"pcre {_UNSUPPORTED_ESCAPES[c]} not supported by Python re")
    if c == "x":
        if source.startswith("{", i + 2):
            end = source.find("}", i + 3)
            if end < 0:
                raise PcreError("pcre \\x{...} is not closed")
            try:
                out.append(_hex_byte(int(source[i + 3 : end], 16)))
            except ValueError:
                raise PcreError("pcre \\x{...} holds no hex number") from None
            return end + 1
        m = re.compile(r"[0-9A-Fa-f]{1,2}").match(source, i + 2)
        if m is not None and len(m.group(0)) == 2:
            out.append(source[i : m.end()])  # already Python syntax: keep it as written
            return m.end()
        out.append(_hex_byte(int(m.group(0), 16)) if m else "\\x00")
        return m.end() if m else i + 2
    if c == "o" and source.startswith("{", i + 2):
        end = source.find("}", i + 3)
        try:
            out.append(_hex_byte(int(source[i + 3 : end], 8)))
        except ValueError:
            raise PcreError("pcre \\o{...} is malformed") from None
        return end + 1
    if c == "e":
        out.append("\\x1b")
        return i + 2
    if c == "c":
        if i + 2 >= len(source):
            raise PcreError("pcre \\c at end of pattern")
        out.append(_hex_byte(ord(source[i + 2].upper()) ^ 0x40))
        return i + 3
    if c == "Q":
        end = source.find("\\E", i + 2)
        literal = source[i + 2 :] if end < 0 else source[i + 2 : end]
        out.append(re.escape(literal))
        return len(source) if end < 0 else end + 2
    if c == "E":
        return i + 2  # a stray \E is ignored by PCRE2
    if c in "hv":
        chars = _H_CHARS if c == "h" else _V_CHARS
        out.append(chars if in_class else f"[{chars}]")
        return i + 2
    if c in "HV":
        if in_class:
            raise PcreError(f"pcre \\{c} inside a character class not supported by Python re")
        out.append(f"[^{_H_CHARS if c == 'H' else _V_CHARS}]")
        return i + 2
    if in_class:
        if c in "RNzZ" or (c.isalpha() and c not in _SIMPLE_ESCAPES):
            raise PcreError(f"pcre escape \\{c} not valid in a character class")
        out.append(source[i : i + 2])
        return i + 2
    if c == "z":
        out.append("\\Z")
        return i + 2
    if c == "Z":
        out.append("(?=\\n?\\Z)")
        return i + 2
    if c == "R":
        out.append(f"(?:\\r\\n|[{_V_CHARS}])")
        return i + 2
    if c == "N":
        out.append("[^\\n]")
        return i + 2
    if c == "g":
        m = re.compile(r"\\g(?:\{(-?\d+)\}|(-?\d+)|\{([A-Za-z_]\w*)\})").match(source, i)
        if m is None:
            raise PcreError("pcre \\g reference is malformed")
        if m.group(3):
            out.append(f"(?P={m.group(3)})")
        else:
            number = int(m.group(1) or m.group(2))
            if number <= 0:
                raise PcreError("pcre relative back reference not supported by Python re")
            out.append(f"(?:\\{number})")
        return m.end()
    if c == "k":
        m = re.compile(r"\\k(?:<([A-Za-z_]\w*)>|\{([A-Za-z_]\w*)\}|'([A-Za-z_]\w*)')").match(
            source, i
        )
        if m is None:
            raise PcreError("pcre \\k reference is malformed")
        out.append(f"(?P={m.group(1) or m.group(2) or m.group(3)})")
        return m.end()
    if c.isalpha() and c not in _SIMPLE_ESCAPES:
        raise PcreError(f"pcre escape \\{c} not supported")
    out.append(source[i : i + 2])
    return i + 2
