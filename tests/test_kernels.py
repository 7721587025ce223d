"""The hot-path kernels (masking, incremental UTF-8 validation, frame headers) against
simple reference implementations, for every implementation that is importable:
``fastws._pure`` always, ``fastws._speedups`` when it was built.

The compiled kernels run the family that ``FASTWS_KERNEL_ISA`` forces, or the best one
the CPU runs: ``.ci/run`` runs this file once per family available; the last section
checks the variable itself (each family in a subprocess, the errors for bad values)."""

from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import example, given, settings, strategies as st

from _serveproc import NEUTRAL_CWD, child_env
from _wsutil import build_frame, parse_frames, scaled, xor_mask


def _implementations() -> list[str]:
    names = ["fastws._pure"]
    try:
        importlib.import_module("fastws._speedups")
    except ImportError:
        pass
    else:
        names.append("fastws._speedups")
    return names


@pytest.fixture(scope="module", params=_implementations())
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


BOUNDARY_SIZES = list(range(0, 17)) + [31, 32, 33, 63, 64, 65, 125, 126, 127, 65535, 65536, 65537]


# -- reference UTF-8 (RFC 3629), byte by byte ----------------------------------------------


def _first_range(lead: int) -> tuple[int, int, int] | None:
    """(continuation bytes needed, allowed range of the first one) for a lead byte, None if invalid."""
    if lead < 0x80:
        return 0, 0, 0
    if 0xC2 <= lead <= 0xDF:
        return 1, 0x80, 0xBF
    if lead == 0xE0:
        return 2, 0xA0, 0xBF
    if 0xE1 <= lead <= 0xEC or 0xEE <= lead <= 0xEF:
        return 2, 0x80, 0xBF
    if lead == 0xED:
        return 2, 0x80, 0x9F
    if lead == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= lead <= 0xF3:
        return 3, 0x80, 0xBF
    if lead == 0xF4:
        return 3, 0x80, 0x8F
    return None


def ref_first_error(data: bytes) -> int | None:
    """Index of the first byte after which ``data[:i+1]`` cannot start valid UTF-8; None if none."""
    need, lo, hi = 0, 0, 0
    for i, b in enumerate(data):
        if need == 0:
            r = _first_range(b)
            if r is None:
                return i
            need, lo, hi = r
        else:
            if not lo <= b <= hi:
                return i
            need -= 1
            lo, hi = 0x80, 0xBF
    return None


def ref_valid(data: bytes) -> bool:
    """Complete and valid."""
    if ref_first_error(data) is not None:
        return False
    # Valid prefix: complete unless it ends inside a sequence.
    need = 0
    for b in data:
        if need:
            need -= 1
        else:
            r = _first_range(b)
            assert r is not None
            need = r[0]
    return need == 0


def test_reference_utf8_agrees_with_python_on_samples() -> None:
    for sample in [b"", b"abc", "é€😀".encode(), b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff"]:
        try:
            sample.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert ref_valid(sample) == expected, sample


# Bytes that are likely to hit the interesting cases: sequences cut anywhere, bad leads,
# surrogates, overlongs, the limits of the code space.
_PIECES = [
    b"a",
    b"\x7f",
    "é".encode(),
    "€".encode(),
    "😀".encode(),
    "\U0010ffff".encode(),
    "\ud7ff".encode(),
    "\ue000".encode(),
    b"\xc0",
    b"\xc1\xbf",
    b"\xe0\x80",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5",
    b"\xff",
    b"\x80",
    b"\xbf",
    b"\xe2",
    b"\xe2\x82",
    b"\xf0\x9f",
    b"\xf0\x9f\x98",
]

utf8_like = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.tuples(st.text(min_size=1, max_size=100), st.integers(0, 1000), st.integers(0, 255)).map(
        lambda t: _corrupt(t[0].encode(), t[1], t[2])
    ),
)


def _corrupt(data: bytes, where: int, byte: int) -> bytes:
    i = where % (len(data) + 1)
    return data[:i] + bytes([byte]) + data[i:]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]


# -- masking -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_apply_mask_boundary_sizes(impl: ModuleType, size: int) -> None:
    data = os.urandom(size)
    key = os.urandom(4)
    assert impl.apply_mask(data, key) == xor_mask(data, key)


@pytest.mark.parametrize("size", [0, 3, 16, 127, 1000])
def test_apply_mask_accepts_bytearray_and_memoryview(impl: ModuleType, size: int) -> None:
    data = os.urandom(size)
    key = b"\x01\x80\xff\x7f"
    expected = xor_mask(data, key)
    assert bytes(impl.apply_mask(bytearray(data), key)) == expected
    assert bytes(impl.apply_mask(memoryview(data), key)) == expected
    assert bytes(impl.apply_mask(memoryview(b"xx" + data)[2:], key)) == expected  # unaligned view


def test_apply_mask_is_its_own_inverse_and_leaves_input_alone(impl: ModuleType) -> None:
    data = os.urandom(1001)
    copy = bytes(data)
    key = os.urandom(4)
    masked = impl.apply_mask(data, key)
    assert data == copy
    assert impl.apply_mask(masked, key) == data


def test_apply_mask_with_zero_key_is_identity(impl: ModuleType) -> None:
    data = os.urandom(300)
    assert impl.apply_mask(data, b"\0\0\0\0") == data


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_apply_mask_rejects_keys_that_are_not_4_bytes(impl: ModuleType, key: bytes) -> None:
    with pytest.raises(ValueError):
        impl.apply_mask(b"data", key)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), key=st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_reference(impl: ModuleType, data: bytes, key: bytes) -> None:
    assert impl.apply_mask(data, key) == xor_mask(data, key)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=500), key=st.binary(min_size=4, max_size=4), offset=st.integers(0, 499))
def test_apply_mask_resumed_with_rotated_key(impl: ModuleType, data: bytes, key: bytes, offset: int) -> None:
    # How the parser unmasks a frame that arrives in pieces: the key rotates by the offset.
    offset %= len(data)
    r = offset & 3
    rotated = key[r:] + key[:r]
    assert impl.apply_mask(data[:offset], key) + impl.apply_mask(data[offset:], rotated) == xor_mask(data, key)


# -- UTF-8 validation --------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(data=utf8_like)
@example(data=b"\xed\xa0\x80")
@example(data=b"\xf4\x90\x80\x80")
@example(data=b"\xe0\x80\x80")
@example(data=b"\xc0\xaf")
def test_utf8_one_shot_matches_reference(impl: ModuleType, data: bytes) -> None:
    v = impl.Utf8Validator()
    result = v.validate(data, True)
    assert result == ref_valid(data)
    try:
        data.decode("utf-8")
        assert result
    except UnicodeDecodeError:
        assert not result


@settings(max_examples=250, deadline=None)
@given(data=utf8_like, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_utf8_incremental_fails_at_the_first_impossible_chunk(impl: ModuleType, data: bytes, cuts: list[int]) -> None:
    v = impl.Utf8Validator()
    error = ref_first_error(data)
    pos = 0
    for chunk in _chunks(data, cuts):
        ok = v.validate(chunk)
        end = pos + len(chunk)
        expected = error is None or error >= end
        assert ok == expected, (data, pos, chunk, error)
        pos = end
    assert v.validate(b"", True) == ref_valid(data)


@settings(max_examples=200, deadline=None)
@given(data=utf8_like)
def test_utf8_byte_by_byte(impl: ModuleType, data: bytes) -> None:
    v = impl.Utf8Validator()
    error = ref_first_error(data)
    for i in range(len(data)):
        assert v.validate(data[i : i + 1]) == (error is None or error > i)
    assert v.validate(b"", True) == ref_valid(data)


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_utf8_boundary_sizes(impl: ModuleType, size: int) -> None:
    ascii_text = b"a" * size
    assert impl.Utf8Validator().validate(ascii_text, True)
    if size:
        # One bad byte at the very end, and at the very start.
        assert not impl.Utf8Validator().validate(ascii_text[:-1] + b"\xff", True)
        assert not impl.Utf8Validator().validate(b"\x80" + ascii_text[1:], True)
    if size >= 4:
        # A 4-byte character ending exactly at the end, and one cut short by a byte.
        emoji = "😀".encode()
        assert impl.Utf8Validator().validate(b"a" * (size - 4) + emoji, True)
        assert not impl.Utf8Validator().validate(b"a" * (size - 3) + emoji[:3], True)
        assert impl.Utf8Validator().validate(b"a" * (size - 3) + emoji[:3], False)
        # A surrogate right at the end.
        assert not impl.Utf8Validator().validate(b"a" * (size - 3) + b"\xed\xa0\x80", False)


@pytest.mark.parametrize("size", [15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 65536])
def test_utf8_multibyte_characters_straddling_block_boundaries(impl: ModuleType, size: int) -> None:
    for shift in range(4):
        data = b"a" * (size - shift) + "€😀é".encode() * 3
        assert impl.Utf8Validator().validate(data, True)
        bad = b"a" * (size - shift) + b"\xe2\x82\x41" + b"a" * 40
        assert not impl.Utf8Validator().validate(bad, True)
        assert not impl.Utf8Validator().validate(bad, False)


@pytest.mark.parametrize("second", [0xA0, 0xAF, 0xBF])
def test_utf8_surrogate_prefix_fails_before_its_last_byte(impl: ModuleType, second: int) -> None:
    # ED A0..BF can only start a surrogate (U+D800..U+DFFF): no valid text starts so.
    v = impl.Utf8Validator()
    assert v.validate(b"ok \xed")
    assert not v.validate(bytes([second]))


def test_utf8_failure_is_sticky_until_reset(impl: ModuleType) -> None:
    v = impl.Utf8Validator()
    assert not v.validate(b"\xff")
    assert not v.validate(b"fine")
    assert not v.validate(b"", True)
    v.reset()
    assert v.validate(b"fine", True)


def test_utf8_reset_discards_a_pending_sequence(impl: ModuleType) -> None:
    v = impl.Utf8Validator()
    assert v.validate(b"\xe2\x82")
    v.reset()
    assert v.validate(b"x", True)
    v.reset()
    assert not v.validate(b"\xac")  # a continuation byte with nothing to continue


def test_utf8_accepts_bytearray_and_memoryview(impl: ModuleType) -> None:
    data = "snow ☃ man".encode()
    assert impl.Utf8Validator().validate(bytearray(data), True)
    assert impl.Utf8Validator().validate(memoryview(data), True)
    assert not impl.Utf8Validator().validate(memoryview(b"\xff" + data), True)


# -- frame headers and encoding ------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 65537, 2**32])
@pytest.mark.parametrize("masked", [False, True])
def test_frame_header_matches_reference(impl: ModuleType, length: int, masked: bool) -> None:
    header = impl.frame_header(2, length, True, False, masked)
    b1 = (0x80 if masked else 0)
    if length < 126:
        expected = bytes([0x82, b1 | length])
    elif length < 65536:
        expected = bytes([0x82, b1 | 126]) + struct.pack("!H", length)
    else:
        expected = bytes([0x82, b1 | 127]) + struct.pack("!Q", length)
    assert header == expected


@pytest.mark.parametrize("fin, rsv1, opcode, b0", [(True, False, 1, 0x81), (False, False, 0, 0x00), (False, True, 2, 0x42), (True, True, 1, 0xC1)])
def test_frame_header_first_byte(impl: ModuleType, fin: bool, rsv1: bool, opcode: int, b0: int) -> None:
    assert impl.frame_header(opcode, 5, fin, rsv1, False)[0] == b0


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_encode_frame_unmasked_equals_reference(impl: ModuleType, size: int) -> None:
    payload = os.urandom(size)
    assert impl.encode_frame(2, payload) == build_frame(2, payload, mask=False)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65536])
def test_encode_frame_masked_round_trips_with_fresh_keys(impl: ModuleType, size: int) -> None:
    payload = os.urandom(size)
    frames, rest = parse_frames(b"".join(impl.encode_frame(1, payload, True, False, True) for _ in range(8)))
    assert rest == b""
    assert all(f.masked and f.payload == payload and f.opcode == 1 and f.fin for f in frames)
    assert len({f.key for f in frames}) == 8


# -- kernel family: FASTWS_KERNEL_ISA --------------------------------------------------------

try:
    _SPEEDUPS: ModuleType | None = importlib.import_module("fastws._speedups")
except ImportError:
    _SPEEDUPS = None
needs_extension = pytest.mark.skipif(_SPEEDUPS is None, reason="the compiled extension is not built")
AVAILABLE_ISAS: tuple[str, ...] = _SPEEDUPS.KERNEL_ISAS_AVAILABLE if _SPEEDUPS is not None else ()

# A child prints what it runs; FASTWS_EXTENSION=1 so that the pure-Python pass of the suite
# still asks the compiled path (and cannot fall back to pure Python).
_REPORT = "import fastws._speedups as s; from fastws.cli import version_text; print(s.KERNEL_ISA, s.KERNEL_ISA_FORCED); print(version_text())"


def _run_child(code: str, isa: str | None, extension: str | None = "1") -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.pop("FASTWS_KERNEL_ISA", None)
    env.pop("FASTWS_EXTENSION", None)
    if isa is not None:
        env["FASTWS_KERNEL_ISA"] = isa
    if extension is not None:
        env["FASTWS_EXTENSION"] = extension
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60), env=env, cwd=NEUTRAL_CWD)


@needs_extension
def test_families_known_and_available() -> None:
    assert _SPEEDUPS is not None
    assert _SPEEDUPS.KERNEL_ISAS == ("scalar", "sse2", "ssse3", "avx2")
    # Weakest first, and a CPU that runs a family runs every one before it.
    assert AVAILABLE_ISAS == _SPEEDUPS.KERNEL_ISAS[: len(AVAILABLE_ISAS)]
    assert AVAILABLE_ISAS[0] == "scalar"


@needs_extension
def test_this_process_runs_the_family_its_environment_asks_for() -> None:
    # What makes the per-family runs of this file and tests/test_differential.py in .ci/run
    # test what they claim.
    assert _SPEEDUPS is not None
    requested = os.environ.get("FASTWS_KERNEL_ISA", "").strip()
    assert _SPEEDUPS.KERNEL_ISA == (requested or AVAILABLE_ISAS[-1])
    assert _SPEEDUPS.KERNEL_ISA_FORCED == bool(requested)


@pytest.mark.parametrize("isa", AVAILABLE_ISAS)
def test_fastws_kernel_isa_selects_the_family(isa: str) -> None:
    result = _run_child(_REPORT, isa)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{isa} True"
    assert f"hot path: compiled extension (cython, kernels: {isa}, forced by FASTWS_KERNEL_ISA)" in lines


@needs_extension
@pytest.mark.parametrize("value", ["", "  "])
def test_fastws_kernel_isa_empty_means_the_best_family(value: str) -> None:
    result = _run_child(_REPORT, value)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{AVAILABLE_ISAS[-1]} False"
    assert f"hot path: compiled extension (cython, kernels: {AVAILABLE_ISAS[-1]})" in lines


@needs_extension
@pytest.mark.parametrize("value", ["neon", "AVX2", "avx512", "sse4.2", "auto"])
@pytest.mark.parametrize("extension", ["1", None])
def test_fastws_kernel_isa_unknown_value_fails_at_import(value: str, extension: str | None) -> None:
    # With FASTWS_EXTENSION unset too: an error, not a quiet fall back to pure Python.
    result = _run_child("import fastws; print(fastws._accel.IMPLEMENTATION)", value, extension)
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ValueError: FASTWS_KERNEL_ISA={value!r}: unknown value;"), last
    assert "valid values: scalar, sse2, ssse3, avx2 or empty for automatic" in last
    assert f"this CPU runs: {', '.join(AVAILABLE_ISAS)}" in last


@needs_extension
def test_a_family_the_cpu_lacks_is_refused() -> None:
    # No CPU here lacks SSE2, so the check behind the import is called with a smaller set.
    assert _SPEEDUPS is not None
    check = _SPEEDUPS._check_kernel_isa
    with pytest.raises(ValueError) as info:
        check("avx2", ("scalar", "sse2"))
    assert str(info.value) == (
        "FASTWS_KERNEL_ISA='avx2': this CPU cannot run it; valid values: scalar, sse2, ssse3, avx2 "
        "or empty for automatic; this CPU runs: scalar, sse2"
    )
    with pytest.raises(ValueError, match="this CPU cannot run it"):
        check("ssse3", ("scalar",))
    check("sse2", ("scalar", "sse2"))
    check("", ("scalar",))


def test_fastws_kernel_isa_is_ignored_on_the_pure_python_path() -> None:
    result = _run_child("import fastws; print(fastws._accel.IMPLEMENTATION)", "neon", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"


def test_fastws_kernel_isa_without_the_extension_is_an_import_error() -> None:
    # Kernels were asked for and there are none: no quiet fall back to pure Python.
    code = "import sys; sys.modules['fastws._speedups'] = None; import fastws"
    result = _run_child(code, "scalar", None)
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: FASTWS_KERNEL_ISA=scalar but the compiled extension fastws._speedups is missing"), last
