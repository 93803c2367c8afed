"""Messages are dataclasses (homie.wire.classes, homie.wire.schema): the table the decoder checks is
derived from them, and a validated message turns into its class."""

import dataclasses

import pytest

from homie.errors import ProtocolError
from homie.wire import classes, messages, schema
from homie.wire.protocol import Message


def test_every_message_has_a_frozen_class_and_a_schema():
    for t, table in messages.ALL.items():
        cls = schema._CLASSES[t]
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, t
        assert set(table) == {f.name for f in dataclasses.fields(cls)}, t


def test_required_means_no_default_and_absent_or_refuses_null():
    schema = messages.ALL["submit"]
    assert schema["job_id"] == ((str,), True)
    assert schema["executor"] == ((str,), False)  # may be left out, never null
    assert schema["interpreter"] == ((str, type(None)), False)  # may be null
    assert schema["timeout"] == ((int, float, type(None)), False)
    with pytest.raises(ProtocolError, match="'offset' must be int"):
        messages.validate("attach", {"job_id": "a", "offset": None})
    with pytest.raises(ProtocolError, match="'executor' must be str"):
        messages.validate("submit", {"job_id": "a", "script": "x.py", "args": [], "files": [], "submitter": "s",
                                     "executor": None})


def test_typed_gives_the_class_with_absent_fields_defaulted_and_unknown_ones_dropped():
    body = {"job_id": "j1", "offset": 42, "from_the_future": 1}
    messages.validate("attach", body)
    a = schema.typed(Message("attach", body))
    assert isinstance(a, classes.Attach)
    assert (a.job_id, a.offset, a.token) == ("j1", 42, None)
    assert not hasattr(a, "from_the_future")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(AssertionError):
        @schema.message("attach")
        @dataclasses.dataclass(frozen=True)
        class Again:
            pass


def test_the_decoders_table_is_what_the_classes_declare():
    """homie.wire.messages validates against a plain table (the CLI must not build every
    class at start-up): it must say exactly what homie.wire.classes declares."""
    assert messages.ALL == classes.ALL, "regenerate the tables in homie/wire/messages.py from homie/wire/classes.py"
    assert messages.PEER.keys() == classes.PEER.keys()


def test_validating_a_message_does_not_import_dataclasses():
    import subprocess
    import sys

    code = ("import sys; from homie.wire import messages; messages.validate('attach', {'job_id': 'a', 'offset': 0});"
            " print('dataclasses' in sys.modules, 'homie.wire.classes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out

