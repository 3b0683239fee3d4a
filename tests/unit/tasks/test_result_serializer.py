"""Issue #27: a failing task's exception goes through the project's result serializer ('sage-json'), which Prefect uses
to persist a failed state's result: Prefect warned "Failed to serialize object of type 'TaskError' with serializer
'sage-json'" on the console. An exception is stored as its type's name and a one-line message (no code named to
import) and comes back as an error of the same builtin kind."""

from __future__ import annotations

import pytest

from tasks.common import ManifestSerializer, StoredError


@pytest.mark.parametrize(("exc", "kind", "base"), [
    (__import__("sage_core.prompts.task", fromlist=["TaskError"]).TaskError("task 'ioi' has no attribute 'x';\n"
                                                                           "  choose one of ['io']"),
     "TaskError", ValueError),
    (FileNotFoundError(2, "No such file or directory"), "FileNotFoundError", OSError),
    (RuntimeError(""), "RuntimeError", RuntimeError),
    (KeyboardInterrupt(), "KeyboardInterrupt", BaseException),
])
def test_an_exception_round_trips_as_its_kind_and_one_line(exc, kind, base):
    s = ManifestSerializer()
    blob = s.dumps(exc)
    assert b"sage_core" not in blob and b"\\n" not in blob  # names no module; one line
    back = s.loads(blob)
    assert isinstance(back, StoredError) and isinstance(back, base) and back.kind == kind
    assert "\n" not in str(back) and (str(back) == " ".join(str(exc).split()) or str(back) == kind)


def test_prefect_persists_a_failed_tasks_exception_with_the_project_serializer():
    """What Prefect does with a failed task run's exception (`exception_to_failed_state`): a result record, with the
    task's serializer, written to the result store."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

    from sage_core.prompts.task import TaskError

    record = ResultRecord(result=TaskError("bad task"),
                          metadata=ResultRecordMetadata(serializer=ManifestSerializer(), storage_key="k"))
    again = ResultRecord.deserialize(record.serialize())
    assert isinstance(again.result, ValueError) and str(again.result) == "bad task"


def test_references_and_plain_values_are_unchanged():
    s = ManifestSerializer()
    value = {"a": [1, 2.5, "x", None], "b": {"c": True}}
    assert s.loads(s.dumps(value)) == value
