"""Control replies (homie.control.replies): the dataclasses are the schema the
daemon builds and the client checks; a reply that does not fit is a clear
ProtocolError, never a KeyError later."""

import dataclasses

import pytest

from homie.control import replies
from homie.errors import ProtocolError
from homie.wire import messages


def ended(**over):
    body = dict(job_id="ab12", state="done", exit_code=0, code=0, signal=None, reason=None, message=None,
                peer="raj", results=["out.txt"], results_dir="/tmp/r", offset=120, terminal=True)
    body.update(over)
    return body


def test_every_control_request_has_its_replies():
    requests = {t for t in messages.CONTROL if t not in ("reply", "event", "fail")}
    assert requests == set(replies.FOR)


def test_a_built_reply_passes_its_own_check():
    r = replies.Ended(**ended(), extra={"attempt": 2})
    body = r.body()
    assert body["attempt"] == 2 and body["job_id"] == "ab12"
    assert replies.check("follow", body) is body
    assert replies.parse("follow", body) == r


def test_run_may_end_three_ways():
    assert isinstance(replies.parse("run", {"job_id": "x", "detached": True}), replies.Detached)
    assert isinstance(replies.parse("run", ended()), replies.Ended)
    assert isinstance(replies.parse("run", {"chosen": None, "verdict": "wait", "why": "busy", "peers": []}),
                      replies.Explained)


@pytest.mark.parametrize("body, what", [
    (ended(offset="12"), "'offset' is str"),
    (ended(terminal=1), "'terminal' is int"),
    (ended(exit_code=True), "'exit_code' is bool"),
    ({k: v for k, v in ended().items() if k != "state"}, "no 'state'"),
])
def test_a_reply_that_does_not_fit_names_the_field(body, what):
    with pytest.raises(ProtocolError) as e:
        replies.check("follow", body)
    assert what in str(e.value) and "another version" in str(e.value)


def test_numbers_where_floats_are_declared_may_be_ints():
    assert replies.check("ps", {"now": 1700000000})
    with pytest.raises(ProtocolError):
        replies.check("ps", {"now": None})


def test_not_an_object_and_unknown_requests():
    with pytest.raises(ProtocolError):
        replies.check("status", ["running"])
    with pytest.raises(ProtocolError):
        replies.check("nonsense", {})


def test_replies_are_frozen():
    r = replies.Forgotten(forgotten="ab12")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.forgotten = "cd34"  # type: ignore[misc]


def test_the_clients_table_is_what_the_classes_declare():
    """homie.control.shapes (what `homie run` checks, without importing dataclasses)
    must say exactly what the reply classes declare."""
    from homie.control import shapes

    derived = {req: tuple((cls.__name__, replies._schema(cls)) for cls in classes)
               for req, classes in replies.FOR.items()}
    assert shapes.TABLE == derived, "homie/control/shapes.py is out of date with homie/control/replies.py"


def test_checking_a_reply_does_not_import_dataclasses():
    import subprocess
    import sys

    code = ("import sys; from homie.control import shapes; shapes.check('forget', {'forgotten': 'x'});"
            " print('dataclasses' in sys.modules, 'homie.control.replies' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out
