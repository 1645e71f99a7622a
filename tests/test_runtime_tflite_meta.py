"""The struct-only TFLite metadata reader against files built with the real schema."""

import json
import struct

import pytest

from edgecnn.config import ArtifactMetadata, sidecar_path
from edgecnn.errors import EdgecnnError
from edgecnn.runtime import read_metadata
from edgecnn.runtime.tflite_meta import read_tflite_metadata, verify_tflite


def test_reads_the_embedded_record_exactly_as_the_schema_does(tiny_artifacts):
    from ai_edge_litert import schema_py_generated as schema

    data = tiny_artifacts["int8.tflite"].read_bytes()
    entries = read_tflite_metadata(data)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    expected = {m.name.decode(): bytes(model.buffers[m.buffer].data) for m in model.metadata}
    assert entries == expected and set(entries) == {"edgecnn"}
    record = ArtifactMetadata.from_json(entries["edgecnn"].decode())
    assert record.precision == "int8" and record.preprocessing.layout == "NHWC"
    assert record.input_quant.scale > 0 and record.output_quant.scale > 0


@pytest.mark.parametrize("name", ["fp32.tflite", "int8.tflite"])
def test_every_truncation_is_one_clear_error_naming_the_file(tiny_artifacts, name):
    data = tiny_artifacts[name].read_bytes()
    verify_tflite(data, "model.tflite")
    for cut in range(len(data)):
        with pytest.raises(EdgecnnError, match=r"^model\.tflite: (not a TFLite model|corrupt "
                                               r"or truncated TFLite model)"):
            verify_tflite(data[:cut], "model.tflite")


def test_out_of_range_indices_are_caught(tiny_artifacts):
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(tiny_artifacts["fp32.tflite"].read_bytes())
    model = schema.Model.GetRootAsModel(data, 0)
    op = model.Subgraphs(0).Operators(1)
    opcode_pos = op._tab.Offset(4) + op._tab.Pos  # Operator.opcode_index
    struct.pack_into("<I", data, opcode_pos, 7)
    with pytest.raises(EdgecnnError, match=r"operator 1 uses opcode 7 of 2"):
        verify_tflite(bytes(data), "model.tflite")


def test_other_formats_and_models_without_metadata(tiny_artifacts, tmp_path):
    with pytest.raises(EdgecnnError, match="no 'TFL3' identifier"):
        read_tflite_metadata(tiny_artifacts["fp32.onnx"].read_bytes(), "x.tflite")
    from tflite_writer import write_tflite
    from tiny_models import digits_classifier

    bare = write_tflite(digits_classifier(), tmp_path / "bare.tflite", metadata=False)
    assert read_tflite_metadata(bare.read_bytes()) == {}
    assert read_metadata(bare) is None


def test_sidecar_is_the_fallback_and_embedded_wins(tiny_artifacts, tmp_path):
    from tflite_writer import write_tflite
    from tiny_models import digits_classifier, metadata_json

    model = digits_classifier()
    bare = write_tflite(model, tmp_path / "bare.tflite", metadata=False)
    sidecar_path(bare).write_text(metadata_json(model, "NHWC", precision="from-sidecar"))
    assert read_metadata(bare).precision == "from-sidecar"
    embedded = tiny_artifacts["int8.tflite"]
    sidecar = sidecar_path(embedded)
    sidecar.write_text(metadata_json(model, "NHWC", precision="from-sidecar"))
    try:
        assert read_metadata(embedded).precision == "int8"
    finally:
        sidecar.unlink()
    sidecar_path(bare).write_text(json.dumps({"preprocessing": {"input_size": [8, 8]}}))
    with pytest.raises(EdgecnnError, match=r"bare\.tflite\.json: invalid edgecnn metadata.*lacks"):
        read_metadata(bare)
