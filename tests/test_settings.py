"""Environment settings: one table in caltech_core/settings.py, the same table in README."""

from __future__ import annotations

from pathlib import Path

import pytest

from caltech_core import settings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def test_readme_lists_every_environment_variable_as_settings_defines_it() -> None:
    text = README.read_text()
    for var in settings.ALL:
        assert f"| `{var.name}` | {var.meaning} | {var.default} |" in text, var.name
    assert len({v.name for v in settings.ALL}) == len(settings.ALL)


def test_no_module_reads_the_environment_itself() -> None:
    library = Path(settings.__file__).parent
    readers = [p for p in library.rglob("*.py") if p != Path(settings.__file__)
               and ("os.environ" in p.read_text() or "getenv(" in p.read_text())]
    assert readers == []


def test_readers_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(settings.HOME.name, str(tmp_path / "home"))
    monkeypatch.setenv(settings.DATASET_ROOT.name, " ")
    monkeypatch.setenv(settings.THREADS.name, "3")
    monkeypatch.setenv(settings.OFFLINE.name, "no")
    assert settings.studio_home() == tmp_path / "home"
    assert settings.dataset_root() is None  # blank counts as unset
    assert settings.thread_limit() == 3
    assert not settings.offline()
    monkeypatch.setenv(settings.THREADS.name, "many")
    with pytest.raises(ValueError, match=settings.THREADS.name):
        settings.thread_limit()
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, " ONNXRuntime ")
    assert settings.feature_runtime() == "onnxruntime"
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, "openvino-gpu")
    with pytest.raises(ValueError, match=settings.FEATURE_RUNTIME.name):
        settings.feature_runtime()
    monkeypatch.delenv(settings.FEATURE_RUNTIME.name)
    assert settings.feature_runtime() == "auto"
    monkeypatch.delenv(settings.HOME.name)
    assert settings.studio_home() == Path.home() / ".caltech_studio"


def test_make_run_starts_the_dashboard_with_one_malloc_arena() -> None:
    """The Makefile cannot import settings: its `run` line spells ONE_MALLOC_ARENA itself, and this keeps them equal."""
    recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert f"GLIBC_TUNABLES=$${{GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}}{settings.ONE_MALLOC_ARENA} " in recipe
    assert "streamlit run streamlit_app.py" in recipe


def test_one_malloc_arena_is_read_from_glibc_tunables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.MALLOC.name, raising=False)
    assert not settings.one_malloc_arena()
    env = settings.with_one_malloc_arena({"PATH": "/bin", settings.MALLOC.name: "glibc.malloc.arena_max=4:"
                                          "glibc.malloc.trim_threshold=1"})
    assert env == {"PATH": "/bin", settings.MALLOC.name: "glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=1"}
    monkeypatch.setenv(settings.MALLOC.name, env[settings.MALLOC.name])
    assert settings.one_malloc_arena()
    monkeypatch.setenv(settings.MALLOC.name, "glibc.malloc.arena_max=16")
    assert not settings.one_malloc_arena()
