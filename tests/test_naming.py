"""Final file names: client metadata made into one safe path segment, and the
final-name template rendered from it."""

from __future__ import annotations

import pytest

from tusserver import naming

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
LONG_STEM = "é" * 200  # 400 bytes of UTF-8


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("report.pdf", "report.pdf", id="ordinary name kept"),
        pytest.param("a/b/c.txt", "c.txt", id="posix folders dropped"),
        pytest.param("..\\evil", "evil", id="windows traversal dropped"),
        pytest.param("C:\\Users\\me\\x.txt", "x.txt", id="windows path"),
        pytest.param("../../x", "x", id="posix traversal"),
        pytest.param("..", "", id="dot dot"),
        pytest.param(".", "", id="dot"),
        pytest.param("a/b/", "", id="trailing separator"),
        pytest.param(".hidden", "hidden", id="hidden file made visible"),
        pytest.param("name. . ", "name", id="trailing dots and spaces"),
        pytest.param("a\x00b\nc\x7f.txt", "a_b_c_.txt", id="control chars"),
        pytest.param('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt", id="windows-unsafe chars"),
        pytest.param("CON.txt", "_CON.txt", id="windows reserved with extension"),
        pytest.param("con", "_con", id="windows reserved lowercase"),
        pytest.param("LPT1", "_LPT1", id="windows reserved device"),
        pytest.param("CONSOLE.txt", "CONSOLE.txt", id="reserved prefix is fine"),
        pytest.param("e\u0301.txt", "\u00e9.txt", id="NFC normalized"),
    ],
)
def test_sanitize_filename_yields_one_safe_segment(raw: str, expected: str) -> None:
    assert naming.sanitize_filename(raw) == expected


@pytest.mark.parametrize(
    ("raw", "extension"),
    [
        pytest.param(LONG_STEM + ".pdf", ".pdf", id="two-byte chars with extension"),
        pytest.param("x" * 300 + ".tar", ".tar", id="ascii with extension"),
        pytest.param("€" * 100, "", id="three-byte chars without extension"),
    ],
)
def test_sanitize_filename_truncates_long_utf8_names_under_240_bytes_keeping_extension(
    raw: str, extension: str
) -> None:
    name = naming.sanitize_filename(raw)
    encoded = name.encode("utf-8")
    assert 200 < len(encoded) <= 240
    assert name.endswith(extension)
    assert raw.startswith(name[: len(name) - len(extension)])
    assert "\ufffd" not in name


def test_a_long_name_keeps_an_extension_of_up_to_16_bytes_only() -> None:
    kept = naming.sanitize_filename("a" * 300 + "." + "e" * 16)
    dropped = naming.sanitize_filename("a" * 300 + "." + "e" * 17)

    assert kept == "a" * (240 - 17) + "." + "e" * 16
    # Longer, it is no extension (a dotted sentence): the name is cut as a whole.
    assert set(dropped) == {"a"} and len(dropped) <= 240


@pytest.mark.parametrize(
    ("template", "metadata", "expected"),
    [
        pytest.param("{id}", {}, UPLOAD_ID, id="id"),
        pytest.param("{id}", {"filename": b"a.txt"}, UPLOAD_ID, id="id ignores metadata"),
        pytest.param("{filename}", {"filename": b"a.txt"}, "a.txt", id="filename"),
        pytest.param("{filename}", {"name": b"n.txt"}, "n.txt", id="uppy name"),
        pytest.param(
            "{filename}", {"filename": b"f.txt", "name": b"n.txt"}, "f.txt", id="filename wins"
        ),
        pytest.param("{filename}", {}, UPLOAD_ID, id="no filename: id"),
        pytest.param("{filename}", {"filename": b""}, UPLOAD_ID, id="empty filename: id"),
        pytest.param("{filename}", {"filename": b".."}, UPLOAD_ID, id="nothing left: id"),
        pytest.param("{filename}", {"filename": b"../../x"}, "x", id="traversal sanitized"),
        pytest.param(
            "{id}-{filename}", {"filename": b"dir/y.txt"}, f"{UPLOAD_ID}-y.txt", id="both"
        ),
        pytest.param("{filename}", {"filename": b"{id}"}, "{id}", id="no template injection"),
        pytest.param(
            "{filename}", {"filename": b"caf\xc3\xa9.txt"}, "café.txt", id="utf-8 filename"
        ),
    ],
)
def test_final_name_renders_template_from_sanitized_metadata(
    template: str, metadata: dict[str, bytes], expected: str
) -> None:
    assert naming.final_name(template, UPLOAD_ID, metadata) == expected
