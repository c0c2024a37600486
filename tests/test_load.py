"""Loading through libbpf: verifier rejections carry the verifier's words and the C line."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapath.errors import LoadError, VerifierError
from datapath.objects import load

pytestmark = pytest.mark.kernel
BPF = Path(__file__).parent / "bpf"


def test_out_of_bounds_read_is_rejected_with_message_and_source_line() -> None:
    with pytest.raises(VerifierError) as info:
        load(BPF / "oob_read.c")
    err = info.value
    assert err.report.program == "oob_read"
    assert "invalid access to packet" in err.report.message
    assert err.report.source_line is not None
    assert err.report.source_line.startswith("oob_read.c:14:")
    assert "data[100]" in err.report.source_line
    assert err.report.instructions and all(": (" in i for i in err.report.instructions)
    assert "processed" in err.log  # the full log is kept for --verbose
    assert "oob_read.c:14" in str(err)


def test_good_object_lists_programs_and_maps() -> None:
    with load(BPF / "maps.c") as obj:
        assert set(obj.programs) == {"use_maps"}
        assert {"flows", "slots", "pcpu", "routes", "recent", "shared"} <= set(obj.maps)
        with pytest.raises(LoadError, match="no map 'nope'"):
            obj.map("nope")


def test_non_bpf_file_is_a_load_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(LoadError, match="junk.o"):
        load(junk)
