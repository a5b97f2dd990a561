"""Issue 19 item 7: load errors name the user's file and point to the control that helps."""
from __future__ import annotations

from pathlib import Path

import pytest

import core
import core.loading
from ui.model_view import load_error_message

UPLOAD = "/tmp/sampling-lab-uploads/0123456789abcdef01234567.pth"


def test_offline_gpt2_points_to_the_local_checkpoint_picker() -> None:
    error = core.ModelUnavailableError("gpt2 needs its weights ... load_model('/path/to/folder') ...")
    text = load_error_message(error, "gpt2", "GPT-2 124M", "GPT-2 124M")
    assert "“Local checkpoint…”" in text and "load_model" not in text
    assert text.startswith("GPT-2 124M downloads its weights from the Hugging Face Hub")


def test_upload_is_named_by_the_users_file_name() -> None:
    error = core.WeightsError(f"{UPLOAD} is not a loadable PyTorch state_dict: not a PyTorch checkpoint, "
                              "or a damaged one (IndexError: pop from empty list)")
    text = load_error_message(error, UPLOAD, "my_model.pth", "Local checkpoint…")
    assert text == "Could not load my_model.pth: it is not a PyTorch checkpoint (.pth), or the file is damaged."


def test_other_core_messages_keep_their_detail_under_the_users_name() -> None:
    error = core.WeightsError(f"{UPLOAD}: 'blocks.0.att.qkv.weight' has shape (32, 5), expected (96, 32)")
    text = load_error_message(error, UPLOAD, "mine.pth", "Local checkpoint…")
    assert text == "Could not load mine.pth: 'blocks.0.att.qkv.weight' has shape (32, 5), expected (96, 32)"
    assert "Local checkpoint" not in text


def test_real_core_errors_read_plainly(tmp_path: Path) -> None:
    """Through core itself, so a change of core's wording that breaks the mapping shows here."""
    garbage = tmp_path / "abc.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(core.WeightsError) as e:
        core.load_model(str(garbage))
    text = load_error_message(e.value, str(garbage), "holiday photos.pth", "Local checkpoint…")
    assert text == "Could not load holiday photos.pth: it is not a PyTorch checkpoint (.pth), or the file is damaged."
    with pytest.raises(core.WeightsError) as e:
        core.load_model(str(tmp_path / "nope.pth"))
    assert load_error_message(e.value, str(tmp_path / "nope.pth"), "nope.pth", "Local checkpoint…") == \
        "Could not load nope.pth: there is no such file or folder on the machine that runs this app."


def test_offline_gpt2_in_the_app(open_page, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name, progress=None):
        raise core.ModelUnavailableError(f"{name} needs its weights from the Hugging Face Hub ... "
                                         "load_model('/path/to/folder') ...")
    monkeypatch.setattr(core.loading, "download_gpt2", offline)
    app = open_page("next_token.py")
    app.selectbox(key="model_label").set_value("GPT-2 124M").run()
    assert not app.exception
    errors = [e.value.replace("\\", "") for e in app.error]
    assert len(errors) == 1 and "choose “Local checkpoint…” in the Model menu" in errors[0], errors
    assert "load_model" not in errors[0]
    assert app.session_state["prompt"] == "Every effort moves you"
