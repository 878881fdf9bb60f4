"""course_lib.sd.fallback: how lectures 7-10 pick their model (offline here, so every real model falls back)."""
import pytest
import torch

from course_lib.sd import DEFAULT_REVISION, ModelNotAvailableError
from course_lib.sd.fallback import load_model_or_tiny, tiny_model_folder


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_is_built_once_then_reused(tmp_path):
    folder = tiny_model_folder(tmp_path / "tiny-sd")
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    components, source, is_tiny = load_model_or_tiny("tiny", tiny_folder=folder)
    assert is_tiny and source == str(folder)
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp   # not rebuilt
    assert components.unet.device.type == "cpu" and components.unet.dtype == torch.float32


def test_auto_on_cpu_is_the_tiny_twin_without_trying_the_hub(tmp_path, monkeypatch, capsys):
    tried = []
    import course_lib.sd.fallback as fallback
    real_load = fallback.load_sd_components
    monkeypatch.setattr(fallback, "load_sd_components",
                        lambda where, *a, **k: tried.append(str(where)) or real_load(where, *a, **k))
    loaded = load_model_or_tiny("auto", device="cpu", tiny_folder=tmp_path / "tiny-sd")
    assert loaded.is_tiny and tried == [str(tmp_path / "tiny-sd")]
    assert capsys.readouterr().out == ""     # nothing to explain: the twin was the plan


def test_a_model_that_cannot_be_loaded_falls_back_and_says_why(tmp_path, monkeypatch, capsys):
    import course_lib.sd.fallback as fallback
    tried = []
    real_load = fallback.load_sd_components

    def offline(where, revision=None, **kwargs):
        if str(where).startswith("someone/"):
            tried.append(revision)
            raise ModelNotAvailableError(f"model_id_or_path {where!r} could not be loaded: offline. Without network")
        return real_load(where, revision, **kwargs)
    monkeypatch.setattr(fallback, "load_sd_components", offline)
    loaded = load_model_or_tiny("someone/model", None, tiny_folder=tmp_path / "tiny-sd")
    assert loaded.is_tiny and loaded.source == str(tmp_path / "tiny-sd")
    assert tried == [DEFAULT_REVISION, "main"]           # the pinned commit first, then main
    out = capsys.readouterr().out
    assert "Could not load 'someone/model'" in out and "offline" in out


@pytest.mark.parametrize("model", [None, "", 3])
def test_bad_model_names_the_argument(model):
    with pytest.raises(ValueError, match=r"model must be 'auto', 'tiny', a hub id or a folder, got"):
        load_model_or_tiny(model)
