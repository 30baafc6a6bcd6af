"""The tus vocabulary as pure functions: parsing the protocol's headers, upload ids."""

from __future__ import annotations

import re

import pytest

from tests.helpers import b64
from tusserver import protocol
from tusserver.errors import TusError

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
METADATA_LIMIT = 1024


# --- Upload-Metadata ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("", {}, id="empty header (tuspy without metadata)"),
        pytest.param("   ", {}, id="only spaces"),
        pytest.param("filename", {"filename": b""}, id="key without value"),
        pytest.param("filename ", {"filename": b""}, id="key, space, empty value (tus-js-client)"),
        pytest.param(
            f"filename {b64(b'a.txt')},is_confidential",
            {"filename": b"a.txt", "is_confidential": b""},
            id="key without value after a pair",
        ),
        pytest.param(
            f"  a {b64(b'one')} ,  b {b64(b'two')}  ",
            {"a": b"one", "b": b"two"},
            id="spaces around pairs",
        ),
        pytest.param(f"a {b64(b'x')},,b {b64(b'y')}", {"a": b"x", "b": b"y"}, id="empty pair"),
        pytest.param("a YQ", {"a": b"a"}, id="missing double padding"),
        pytest.param("a YWI", {"a": b"ab"}, id="missing single padding"),
        pytest.param("a YWJj", {"a": b"abc"}, id="no padding needed"),
        pytest.param(
            f"relativePath {b64(b'null')},name {b64('résumé.pdf'.encode())}",
            {"relativePath": b"null", "name": "résumé.pdf".encode()},
            id="uppy fields with utf-8 value",
        ),
    ],
)
def test_parse_metadata_accepts_what_real_clients_send(
    header: str, expected: dict[str, bytes]
) -> None:
    assert protocol.parse_metadata(header, METADATA_LIMIT) == expected


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param("a !!!!", "invalid_upload_metadata", id="invalid base64 characters"),
        pytest.param("a Y", "invalid_upload_metadata", id="impossible base64 length"),
        pytest.param("a YQ==x", "invalid_upload_metadata", id="data after padding"),
        pytest.param("a YQ== Yg==", "invalid_upload_metadata", id="two values for one key"),
        pytest.param("a YQ==,a Yg==", "invalid_upload_metadata", id="duplicate key"),
        pytest.param("a\x01b YQ==", "invalid_upload_metadata", id="control char in key"),
        pytest.param("a\tb YQ==", "invalid_upload_metadata", id="tab in key"),
        pytest.param("ké YQ==", "invalid_upload_metadata", id="non-ascii key"),
        pytest.param(
            "k " + "A" * METADATA_LIMIT, "upload_metadata_too_large", id="larger than the cap"
        ),
    ],
)
def test_parse_metadata_refuses_malformed_or_oversize_header_with_400(
    header: str, code: str
) -> None:
    with pytest.raises(TusError) as caught:
        protocol.parse_metadata(header, METADATA_LIMIT)
    assert caught.value.status == 400
    assert caught.value.code == code
    assert caught.value.retryable is False


def test_parse_metadata_accepts_a_header_of_exactly_the_cap() -> None:
    header = "kkk " + "QUFB" * 255
    assert len(header) == METADATA_LIMIT
    assert protocol.parse_metadata(header, METADATA_LIMIT) == {"kkk": b"AAA" * 255}


# --- Upload-Offset / Upload-Length -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("1048576", 1048576),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_parse_non_negative_accepts_plain_decimal_digits(text: str, expected: int) -> None:
    assert protocol.parse_non_negative(text, "Upload-Offset") == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("-1", id="negative"),
        pytest.param("+1", id="explicit sign"),
        pytest.param(" 1", id="leading space"),
        pytest.param("1 ", id="trailing space"),
        pytest.param("1\n", id="trailing newline"),
        pytest.param("1.0", id="decimal point"),
        pytest.param("1e3", id="exponent"),
        pytest.param("0x10", id="hex"),
        pytest.param("", id="empty"),
        pytest.param("١٢", id="non-ascii digits"),
        pytest.param("1_000", id="underscore"),
        pytest.param(str(2**63), id="above int64"),
        pytest.param("12345678901234567890", id="20 digits"),
        pytest.param("9" * 40, id="40 digits"),
    ],
)
def test_parse_non_negative_refuses_anything_but_an_int64_in_digits_with_400(text: str) -> None:
    with pytest.raises(TusError) as caught:
        protocol.parse_non_negative(text, "Upload-Length")
    assert caught.value.status == 400
    assert caught.value.code == "invalid_header"
    assert "Upload-Length" in caught.value.message


@pytest.mark.parametrize("text", ["0", "2", "true", "", "1.0"])
def test_parse_defer_length_refuses_anything_but_1_with_400(text: str) -> None:
    with pytest.raises(TusError) as caught:
        protocol.parse_defer_length(text)
    assert caught.value.status == 400
    assert "Upload-Defer-Length" in caught.value.message


def test_parse_defer_length_accepts_1() -> None:
    assert protocol.parse_defer_length("1") is True


# --- Tus-Resumable -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "tus_resumable_missing"),
        ("0.2.2", "tus_version_unsupported"),
        ("1.0", "tus_version_unsupported"),
        ("", "tus_version_unsupported"),
    ],
)
def test_check_tus_resumable_refuses_missing_or_unsupported_version_with_412(
    value: str | None, code: str
) -> None:
    with pytest.raises(TusError) as caught:
        protocol.check_tus_resumable(value)
    assert caught.value.status == 412
    assert caught.value.code == code


@pytest.mark.parametrize("value", ["1.0.0", " 1.0.0 "], ids=["exact", "with spaces"])
def test_check_tus_resumable_accepts_1_0_0(value: str) -> None:
    # Accepted: no 412 raised (the check has nothing to return).
    assert protocol.check_tus_resumable(value) is None


# --- Content-Type ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("application/offset+octet-stream", "application/offset+octet-stream"),
        ("Application/Offset+Octet-Stream", "application/offset+octet-stream"),
        ("application/offset+octet-stream; charset=binary", "application/offset+octet-stream"),
        ("application/octet-stream", "application/octet-stream"),
    ],
)
def test_parse_content_type_drops_parameters_and_case(
    value: str | None, expected: str | None
) -> None:
    assert protocol.parse_content_type(value) == expected


# --- Upload ids --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        pytest.param(UPLOAD_ID, True, id="32 lowercase hex"),
        pytest.param(UPLOAD_ID.upper(), False, id="uppercase hex"),
        pytest.param("invoice-2024_0001", True, id="chosen by a hook"),
        pytest.param("a" * 64, True, id="64 characters"),
        pytest.param("a" * 65, False, id="65 characters"),
        pytest.param("abcdefg", False, id="7 characters"),
        pytest.param("-abcdefgh", False, id="leading dash"),
        pytest.param("Invoice-2024", False, id="uppercase letter"),
        pytest.param("tus{x}yz-123", False, id="hash tag braces"),
        pytest.param("abc.defgh", False, id="dot"),
        pytest.param(UPLOAD_ID + "\n", False, id="trailing newline"),
        pytest.param("../../etc", False, id="path traversal"),
        pytest.param("ABC", False, id="short uppercase"),
        pytest.param("", False, id="empty"),
        pytest.param(UPLOAD_ID[:16] + "/" + UPLOAD_ID[17:], False, id="slash inside"),
    ],
)
def test_is_upload_id_accepts_8_to_64_lowercase_letters_digits_dashes_underscores(
    text: str, valid: bool
) -> None:
    assert protocol.is_upload_id(text) is valid


def test_new_upload_ids_are_128_random_bits_in_32_lowercase_hex_digits() -> None:
    ids = {protocol.new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch("[0-9a-f]{32}", upload_id) for upload_id in ids)
    assert all(protocol.is_upload_id(upload_id) for upload_id in ids)


# --- Upload-Concat -----------------------------------------------------------

OTHER_ID = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    ("header", "request_path", "uploads_path", "ids"),
    [
        pytest.param(f"final;/files/{UPLOAD_ID}", "/files/", "/files/", (UPLOAD_ID,), id="path"),
        pytest.param(
            f"final; https://a.example/files/{UPLOAD_ID}  //b.example/files/{OTHER_ID}",
            "/files/",
            "/files/",
            (UPLOAD_ID, OTHER_ID),
            id="absolute and network-path URLs, extra spaces",
        ),
        pytest.param(f"final;{UPLOAD_ID}", "/files/", "/files/", (UPLOAD_ID,), id="bare id"),
        pytest.param(
            f"final;../files/{UPLOAD_ID}", "/files/x", "/files/", (UPLOAD_ID,), id="dot segments"
        ),
        pytest.param(
            f"final;/api/v1/{UPLOAD_ID}?t=1",
            "/api/v1",
            "/api/v1/",
            (UPLOAD_ID,),
            id="mounted, query dropped",
        ),
    ],
)
def test_parse_upload_concat_takes_ids_from_the_paths_of_final_part_urls(
    header: str, request_path: str, uploads_path: str, ids: tuple[str, ...]
) -> None:
    parsed = protocol.parse_upload_concat(header, request_path, uploads_path)

    assert parsed.is_final
    assert parsed.ids == ids
    assert parsed.urls == tuple(header.removeprefix("final;").split())


def test_parse_upload_concat_accepts_exactly_the_maximum_number_of_parts() -> None:
    ids = tuple(f"{number:032x}" for number in range(protocol.MAX_CONCAT_PARTS))
    header = "final;" + " ".join(f"/files/{upload_id}" for upload_id in ids)

    parsed = protocol.parse_upload_concat(header, "/files/", "/files/")

    assert protocol.MAX_CONCAT_PARTS == 1000
    assert parsed.ids == ids


@pytest.mark.parametrize(
    ("parts", "number"),
    [
        pytest.param(["/other/x"], 1, id="first of one"),
        pytest.param([f"/files/{UPLOAD_ID}", "/other/x"], 2, id="second of two"),
        pytest.param([f"/files/{UPLOAD_ID}", f"/files/{OTHER_ID}", "/files/"], 3, id="third"),
    ],
)
def test_a_refused_concat_part_is_named_by_its_position_counting_from_1(
    parts: list[str], number: int
) -> None:
    with pytest.raises(TusError) as raised:
        protocol.parse_upload_concat("final;" + " ".join(parts), "/files/", "/files/")

    assert raised.value.code == "invalid_concat_part"
    assert raised.value.message.startswith(f"Part {number} of Upload-Concat ")


def test_parse_upload_concat_recognizes_partial() -> None:
    parsed = protocol.parse_upload_concat(" partial ", "/files/", "/files/")

    assert parsed == protocol.UploadConcat(protocol.CONCAT_PARTIAL)
    assert not parsed.is_final


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param("Partial", "invalid_header", id="case"),
        pytest.param("final", "invalid_header", id="final without semicolon"),
        pytest.param(f"final /files/{UPLOAD_ID}", "invalid_header", id="space, no semicolon"),
        pytest.param("final;", "concat_without_parts", id="no parts"),
        pytest.param(f"final;/files/{UPLOAD_ID}/", "invalid_concat_part", id="trailing slash"),
        pytest.param(f"final;/other/{UPLOAD_ID}", "invalid_concat_part", id="other base path"),
        pytest.param("final;/files/", "invalid_concat_part", id="no id"),
        pytest.param("final;/files/../../etc/passwd", "invalid_concat_part", id="traversal"),
        pytest.param("final;http://[::1/files/x", "invalid_concat_part", id="unparsable URL"),
        pytest.param("final;" + " x" * 1001, "too_many_concat_parts", id="too many parts"),
    ],
)
def test_parse_upload_concat_refuses_malformed_values_with_400(header: str, code: str) -> None:
    with pytest.raises(TusError) as raised:
        protocol.parse_upload_concat(header, "/files/", "/files/")

    assert raised.value.status == 400
    assert raised.value.code == code


# --- Upload-Checksum ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "algorithm", "digest"),
    [
        pytest.param("sha1 " + b64(bytes(20)), "sha1", bytes(20), id="sha1 (spec's required one)"),
        pytest.param("SHA256 " + b64(bytes(32)), "sha256", bytes(32), id="algorithm in capitals"),
        pytest.param("md5  " + b64(bytes(16)) + " ", "md5", bytes(16), id="extra spaces"),
        pytest.param("crc32 " + b64(b"\x01\x02\x03\x04"), "crc32", b"\x01\x02\x03\x04", id="crc32"),
        pytest.param("sha512 " + b64(bytes(64)), "sha512", bytes(64), id="sha512"),
    ],
)
def test_upload_checksum_is_parsed(header: str, algorithm: str, digest: bytes) -> None:
    assert protocol.parse_checksum(header) == protocol.Checksum(algorithm, digest)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param("sha3 " + b64(bytes(32)), "unsupported_checksum_algorithm", id="unknown"),
        pytest.param("", "unsupported_checksum_algorithm", id="empty"),
        pytest.param("sha1", "invalid_header", id="no digest"),
        pytest.param("sha1 " + b64(bytes(19)), "invalid_header", id="digest one byte short"),
        pytest.param("sha1 " + b64(bytes(20))[:-1], "invalid_header", id="broken base64"),
        pytest.param("sha1 " + bytes(20).hex(), "invalid_header", id="hex instead of base64"),
        pytest.param(
            "sha1 " + b64(bytes(20))[:8] + "*" + b64(bytes(20))[8:],
            "invalid_header",
            id="a character outside base64 in the digest",
        ),
    ],
)
def test_bad_upload_checksum_is_a_400(header: str, code: str) -> None:
    with pytest.raises(TusError) as raised:
        protocol.parse_checksum(header)
    assert (raised.value.status, raised.value.code) == (400, code)


def test_a_malformed_metadata_value_is_named_by_the_first_40_characters_of_its_key() -> None:
    key = "k" * 60
    with pytest.raises(TusError) as refused:
        protocol.parse_metadata(f"{key} not*base64", 1000)

    assert repr("k" * 40) in refused.value.message
    assert repr("k" * 41) not in refused.value.message


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("k" * 60 + "\x01 YQ==", id="not a token"),
        pytest.param("k" * 60 + " YQ==," + "k" * 60 + " Yg==", id="repeated"),
    ],
)
def test_a_refused_metadata_key_is_named_by_its_first_40_characters(header: str) -> None:
    with pytest.raises(TusError) as refused:
        protocol.parse_metadata(header, 1000)

    assert refused.value.code == "invalid_upload_metadata"
    assert repr("k" * 40) in refused.value.message
    assert repr("k" * 39) not in refused.value.message
    assert repr("k" * 41) not in refused.value.message
