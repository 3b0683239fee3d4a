"""SAE spec forms are a registry: each form is one class (`@spec_form`) that matches, loads, checks, names and hashes
its specs; the entry points only try the forms in their order."""

from __future__ import annotations

import pytest

from storage import sae_sources as ss
from storage.home import SageHome
from storage.sae_names import SAESpecError


def test_the_forms_in_the_order_a_spec_is_tried():
    assert [f.kind for f in ss.SPEC_FORMS] == ["zoo", "py", "hf", "dir", "registry"]


def test_a_new_form_is_one_class(monkeypatch, tmp_path):
    monkeypatch.setattr(ss, "SPEC_FORMS", list(ss.SPEC_FORMS))
    loaded = []

    @ss.spec_form
    class Lab(ss._Prefixed):  # e.g. a lab's own store of SAEs
        kind, prefix = "lab", "lab:"

        def load(self, what, home, model_name):
            loaded.append(what)
            return "an SAE"

        def check(self, what, home, model_name, zoo_names):
            if what != "good":
                raise SAESpecError(f"lab SAE {what!r} does not exist")

        def name(self, what, home, model_name):
            return f"lab-{what}", f"lab:{what}"

    assert [f.kind for f in ss.SPEC_FORMS] == ["zoo", "py", "hf", "lab", "dir", "registry"]  # before `<release>:<id>`
    h = SageHome(tmp_path)
    assert ss.load_sae_spec("lab:good", h) == "an SAE" and loaded == ["good"]
    ss.check_specs(["lab:good"], h, None, ())
    with pytest.raises(SAESpecError, match="lab SAE 'bad' does not exist"):
        ss.check_specs(["lab:bad"], h, None, ())
    assert ss.distinct_specs(["lab:good", "lab:good"], h, None) == ["lab:good"]
    with pytest.raises(ValueError, match="registered twice"):
        ss.spec_form(Lab)
