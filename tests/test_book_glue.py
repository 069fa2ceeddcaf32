"""ddpm_tutor.book.glue: what a chapter glues is what myst-nb records, and bad names are refused."""

import pytest

from ddpm_tutor.book import glue


def test_glue_records_the_value_for_myst_nb(monkeypatch):
    import myst_nb

    seen = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.append((name, value, display)))
    assert glue("p1_count", 674) == 674
    assert seen == [("p1_count", 674, False)]  # display=False: the number appears only where the prose cites it


def test_glue_without_myst_nb_returns_the_value(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_myst(name, *args, **kwargs):
        if name.startswith("myst_nb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_myst)
    assert glue("x", 0.5) == 0.5


@pytest.mark.parametrize("name", ["", "has space", "a-b", 3])
def test_glue_refuses_names_prose_cannot_cite(name):
    with pytest.raises(ValueError, match="glue name"):
        glue(name, 1)
