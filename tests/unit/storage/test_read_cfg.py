"""A cfg.json read from a hub cache, a registry release or a watched folder: anything that is not an SAE config is
one ValueError line (the source reports it and goes on), never a crash."""

from __future__ import annotations

import pytest

from storage.sae_hub import read_cfg


@pytest.mark.parametrize(("text", "why"), [
    ("[" * 50000, "nested too deeply"),
    ('{"a": ' * 20000 + "1" + "}" * 20000, "nested too deeply"),
    (b"\xff\xfe{", "not JSON"),
    ("[1, 2]", "JSON list, not an object"),
    ("x" * 2_000_000, "bytes, not an SAE config"),
])
def test_what_is_not_a_config_is_one_value_error_line(text, why):
    with pytest.raises(ValueError, match=why) as e:
        read_cfg(text)
    assert "\n" not in str(e.value)


def test_a_config_is_read():
    assert read_cfg('{"d_in": 8, "metadata": {"hook_name": "h"}}')["metadata"] == {"hook_name": "h"}
